//! One process per socket. A second process for the same resource and directory (a DaemonSet rolling update
//! with `maxSurge`, a second unit started by hand) must neither steal the socket nor crash-loop: it waits,
//! and takes over when the first one stops.
//!
//! Ownership is an exclusive `flock(2)` on `<device-plugins dir>/k8s-accel-locks/<socket stem>.lock`. The
//! kernel releases it when its holder exits, however it exits (SIGKILL and OOM included), and it works across
//! containers because they share the host directory's inode. A process that owns the lock still waits while
//! the socket answers: that is an older version of this plugin, which takes no lock.

use crate::endpoint;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often a waiting process checks whether a lock-less older instance still answers on the socket.
pub const LEGACY_POLL: Duration = Duration::from_secs(1);

/// An owned socket: held until dropped (or the process ends).
#[derive(Debug)]
pub struct Ownership {
    file: File,
    path: PathBuf,
}

impl Ownership {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the lock file at our path is still the one we locked (someone may have removed the lock
    /// directory by hand).
    pub fn intact(&self) -> bool {
        match (std::fs::metadata(&self.path), self.file.metadata()) {
            (Ok(on_disk), Ok(ours)) => (on_disk.dev(), on_disk.ino()) == (ours.dev(), ours.ino()),
            _ => false,
        }
    }
}

/// Opens (creating it and its directory if needed) the lock file for `socket_name` in `dir`.
fn open(dir: &Path, socket_name: &str) -> io::Result<(File, PathBuf)> {
    let path = endpoint::lock_path(dir, socket_name);
    if let Some(lock_dir) = path.parent() {
        match std::fs::DirBuilder::new().mode(0o755).create(lock_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("cannot create {}: {e}", lock_dir.display()))),
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))?;
    Ok((file, path))
}

/// `flock(LOCK_EX)`, blocking or not. Ok(false): another process holds it.
fn lock(file: &File, block: bool) -> io::Result<bool> {
    let op = if block { libc::LOCK_EX } else { libc::LOCK_EX | libc::LOCK_NB };
    loop {
        // SAFETY: plain syscall on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// What a claim found.
#[derive(Debug)]
pub enum Claim {
    /// Ours: serve.
    Owned(Ownership),
    /// Another process of ours holds the lock.
    Locked,
    /// We hold the lock, but a process answers on the socket: an older version that takes no lock.
    Answering(Ownership),
}

/// Tries to own `<dir>/<socket_name>` without waiting. Errors are I/O errors on the lock file (the directory
/// is missing or read-only): they can heal, so the caller retries.
pub fn claim(dir: &Path, socket_name: &str) -> io::Result<Claim> {
    let (file, path) = open(dir, socket_name)?;
    if !lock(&file, false)? {
        return Ok(Claim::Locked);
    }
    let owned = Ownership { file, path };
    if endpoint::is_live(&dir.join(socket_name)) {
        return Ok(Claim::Answering(owned));
    }
    Ok(Claim::Owned(owned))
}

/// Blocks until this process owns `<dir>/<socket_name>`: the lock is free and nobody answers on the socket.
/// Costs no wake-up while another process of ours holds the lock (the kernel wakes us when it is released);
/// polls every [`LEGACY_POLL`] only while an older, lock-less instance answers.
pub fn wait(dir: &Path, socket_name: &str) -> io::Result<Ownership> {
    let (file, path) = open(dir, socket_name)?;
    lock(&file, true)?;
    let socket = dir.join(socket_name);
    while endpoint::is_live(&socket) {
        std::thread::sleep(LEGACY_POLL);
    }
    Ok(Ownership { file, path })
}

/// Whether another process holds the lock of the socket named `socket_name` in `dir`; None when there is no
/// lock file (a socket of an older version, or of nobody).
pub fn held_elsewhere(dir: &Path, socket_name: &str) -> Option<bool> {
    let path = endpoint::lock_path(dir, socket_name);
    let file = OpenOptions::new().read(true).open(path).ok()?;
    // Locking and dropping at once: if we got it, nobody held it.
    lock(&file, false).ok().map(|got| !got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::TempDir;

    #[test]
    fn one_owner_at_a_time_and_the_next_takes_over() {
        let dir = TempDir::new("lock").unwrap();
        let first = match claim(dir.path(), "k8s-accel-x.sock").unwrap() {
            Claim::Owned(o) => o,
            other => panic!("{other:?}"),
        };
        assert!(first.intact());
        assert!(matches!(claim(dir.path(), "k8s-accel-x.sock").unwrap(), Claim::Locked));
        assert_eq!(held_elsewhere(dir.path(), "k8s-accel-x.sock"), Some(true));
        assert_eq!(held_elsewhere(dir.path(), "k8s-accel-y.sock"), None);
        // Another socket is another lock.
        assert!(matches!(claim(dir.path(), "k8s-accel-y.sock").unwrap(), Claim::Owned(_)));

        let (d, name) = (dir.path().to_path_buf(), "k8s-accel-x.sock");
        let waiter = std::thread::spawn(move || wait(&d, name).map(|o| o.path().to_path_buf()));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiter.is_finished(), "waits while the lock is held");
        drop(first);
        let path = waiter.join().unwrap().unwrap();
        assert_eq!(path, dir.path().join("k8s-accel-locks/k8s-accel-x.lock"));
    }

    #[test]
    fn a_socket_that_answers_without_a_lock_is_respected() {
        let dir = TempDir::new("lock").unwrap();
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("k8s-accel-x.sock")).unwrap();
        assert!(matches!(claim(dir.path(), "k8s-accel-x.sock").unwrap(), Claim::Answering(_)));
        drop(listener);
        // A socket nobody listens on is stale: ours.
        assert!(matches!(claim(dir.path(), "k8s-accel-x.sock").unwrap(), Claim::Owned(_)));
    }

    #[test]
    fn a_missing_directory_is_an_error_that_names_the_path() {
        let dir = TempDir::new("lock").unwrap();
        let missing = dir.path().join("absent");
        let e = claim(&missing, "k8s-accel-x.sock").unwrap_err();
        assert!(e.to_string().contains("absent/k8s-accel-locks"), "{e}");
    }
}
