//! A minimal inotify wrapper (through `libc`): directory watches whose events name the file concerned.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub struct Inotify {
    fd: OwnedFd,
}

/// One event: which watch, what happened, and to which name in the watched directory.
#[derive(Debug)]
pub struct WatchEvent {
    pub wd: i32,
    pub mask: u32,
    pub name: String,
}

/// Files appearing or disappearing in a directory, and the directory itself going away.
pub const DIR_CHANGES: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_ATTRIB
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;

impl Inotify {
    pub fn new() -> io::Result<Inotify> {
        // SAFETY: plain syscall; the returned fd is owned below.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        Ok(Inotify { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    pub fn add(&self, dir: &Path, mask: u32) -> io::Result<i32> {
        let path = CString::new(dir.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: valid fd and NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr(), mask | libc::IN_ONLYDIR) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(wd)
    }

    /// Reads every pending event without blocking.
    pub fn read(&self) -> Vec<WatchEvent> {
        let mut events = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: buf is valid for its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return events;
            }
            let header = std::mem::size_of::<libc::inotify_event>();
            let mut at = 0usize;
            let n = n as usize;
            while at + header <= n {
                // SAFETY: the kernel wrote a whole inotify_event header at `at`; read_unaligned copes with
                // the byte buffer's alignment.
                let event: libc::inotify_event = unsafe { std::ptr::read_unaligned(buf.as_ptr().add(at).cast()) };
                let name_start = at + header;
                let name_end = (name_start + event.len as usize).min(n);
                let raw = &buf[name_start..name_end];
                let raw = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
                events.push(WatchEvent {
                    wd: event.wd,
                    mask: event.mask,
                    name: OsStr::from_bytes(raw).to_string_lossy().into_owned(),
                });
                at = name_end;
            }
        }
    }
}

impl AsRawFd for Inotify {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
