//! One process per socket. A second process for the same resource and directory (a DaemonSet rolling update
//! with `maxSurge`, a second unit started by hand) must neither steal the socket nor crash-loop: it waits,
//! and takes over when the first one stops.
//!
//! Ownership is an exclusive `flock(2)` on `<device-plugins dir>/k8s-accel-locks/<socket stem>.lock`. The
//! kernel releases it when its holder exits, however it exits (SIGKILL and OOM included), and it works across
//! containers because they share the host directory's inode. A process that gets the lock still waits while
//! the socket answers (or the socket name versions before 0.2 used): that is an older version of this
//! plugin, which takes no lock.

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
    /// The lock was free, but a process answers on the socket (or on the name versions before 0.2 gave it):
    /// an older version, which takes no lock.
    Answering,
}

/// Whether a process answers on our socket, or on the socket name of versions before 0.2.
fn answering(dir: &Path, socket_name: &str, resource_name: &str) -> bool {
    let legacy = endpoint::legacy_socket_name(resource_name);
    endpoint::is_live(&dir.join(socket_name)) || (legacy != socket_name && endpoint::is_live(&dir.join(legacy)))
}

/// Tries to own `<dir>/<socket_name>` (for `resource_name`) without waiting. Errors are I/O errors on the
/// lock file (the directory is missing or read-only): they can heal, so the caller retries.
pub fn claim(dir: &Path, socket_name: &str, resource_name: &str) -> io::Result<Claim> {
    let (file, path) = open(dir, socket_name)?;
    if !lock(&file, false)? {
        return Ok(Claim::Locked);
    }
    if answering(dir, socket_name, resource_name) {
        return Ok(Claim::Answering);
    }
    Ok(Claim::Owned(Ownership { file, path }))
}

/// Blocks until this process owns `<dir>/<socket_name>`: the lock is free and nobody answers on the socket.
/// Costs no wake-up while another process of ours holds the lock: the kernel wakes us when it is released.
/// A process that just died may release its lock a moment before its socket stops answering, so the socket
/// is checked every 10 ms for a short while, then every [`LEGACY_POLL`] (an older, lock-less instance).
pub fn wait(dir: &Path, socket_name: &str, resource_name: &str) -> io::Result<Ownership> {
    let (file, path) = open(dir, socket_name)?;
    lock(&file, true)?;
    let mut checks = 0u32;
    while answering(dir, socket_name, resource_name) {
        checks += 1;
        std::thread::sleep(if checks <= 20 { Duration::from_millis(10) } else { LEGACY_POLL });
    }
    Ok(Ownership { file, path })
}

/// Locks a new lock file for a socket we serve, after ours was removed (e.g. the lock directory was deleted
/// by hand). Ok(None): another process locked the new file first; it waits while our socket answers.
pub fn relock(dir: &Path, socket_name: &str) -> io::Result<Option<Ownership>> {
    let (file, path) = open(dir, socket_name)?;
    Ok(lock(&file, false)?.then_some(Ownership { file, path }))
}

/// Whether the socket named `socket_name` in `dir` has a lock file: it belongs to a version that takes
/// locks, whose owner (or next owner) removes it; only lock-less sockets are cleaned up by others.
pub fn has_lock_file(dir: &Path, socket_name: &str) -> bool {
    endpoint::lock_path(dir, socket_name).exists()
}

/// Whether some process holds the lock of `socket_name` in `dir` now (a missing lock file: nobody does). It
/// tries a shared lock without waiting and drops it at once; a lock file it cannot open counts as held, so
/// that what cannot be checked is left alone.
pub fn is_held(dir: &Path, socket_name: &str) -> bool {
    let file = match File::open(endpoint::lock_path(dir, socket_name)) {
        Ok(file) => file,
        Err(e) => return e.kind() != io::ErrorKind::NotFound,
    };
    loop {
        // SAFETY: plain syscall on a descriptor we own; closing it (drop) releases the lock.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
            return false;
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::TempDir;

    #[test]
    fn one_owner_at_a_time_and_the_next_takes_over() {
        let dir = TempDir::new("lock").unwrap();
        let first = match claim(dir.path(), "k8s-accel-x.sock", "e.com/x").unwrap() {
            Claim::Owned(o) => o,
            other => panic!("{other:?}"),
        };
        assert!(first.intact());
        assert!(matches!(claim(dir.path(), "k8s-accel-x.sock", "e.com/x").unwrap(), Claim::Locked));
        assert!(has_lock_file(dir.path(), "k8s-accel-x.sock"));
        assert!(!has_lock_file(dir.path(), "k8s-accel-y.sock"));
        assert!(is_held(dir.path(), "k8s-accel-x.sock"));
        assert!(!is_held(dir.path(), "k8s-accel-y.sock"), "no lock file: nobody");
        // Another socket is another lock.
        assert!(matches!(claim(dir.path(), "k8s-accel-y.sock", "e.com/y").unwrap(), Claim::Owned(_)));

        let (d, name) = (dir.path().to_path_buf(), "k8s-accel-x.sock");
        let waiter = std::thread::spawn(move || wait(&d, name, "e.com/x").map(|o| o.path().to_path_buf()));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiter.is_finished(), "waits while the lock is held");
        drop(first);
        let path = waiter.join().unwrap().unwrap();
        assert_eq!(path, dir.path().join("k8s-accel-locks/k8s-accel-x.lock"));
        // The waiter's ownership was dropped with its thread: the file is there, and free.
        assert!(!is_held(dir.path(), "k8s-accel-x.sock"));
    }

    #[test]
    fn a_socket_that_answers_without_a_lock_is_respected() {
        let dir = TempDir::new("lock").unwrap();
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("k8s-accel-x.sock")).unwrap();
        assert!(matches!(claim(dir.path(), "k8s-accel-x.sock", "e.com/x").unwrap(), Claim::Answering));
        drop(listener);
        // A socket nobody listens on is stale: ours.
        assert!(matches!(claim(dir.path(), "k8s-accel-x.sock", "e.com/x").unwrap(), Claim::Owned(_)));
        // An older version serving the same resource under the name it gave the socket.
        let old = std::os::unix::net::UnixListener::bind(dir.path().join("k8s-accel-e.com_x.sock")).unwrap();
        assert!(matches!(claim(dir.path(), "k8s-accel-x.sock", "e.com/x").unwrap(), Claim::Answering));
        drop(old);
    }

    #[test]
    fn a_removed_lock_file_is_replaced_while_serving() {
        let dir = TempDir::new("lock").unwrap();
        let Claim::Owned(first) = claim(dir.path(), "k8s-accel-x.sock", "e.com/x").unwrap() else { panic!() };
        std::fs::remove_dir_all(dir.path().join(endpoint::LOCK_DIR)).unwrap();
        assert!(!first.intact());
        let second = relock(dir.path(), "k8s-accel-x.sock").unwrap().expect("the new file is free");
        assert!(second.intact());
        assert!(relock(dir.path(), "k8s-accel-x.sock").unwrap().is_none(), "and now locked");
    }

    #[test]
    fn a_missing_directory_is_an_error_that_names_the_path() {
        let dir = TempDir::new("lock").unwrap();
        let missing = dir.path().join("absent");
        let e = claim(&missing, "k8s-accel-x.sock", "e.com/x").unwrap_err();
        assert!(e.to_string().contains("absent/k8s-accel-locks"), "{e}");
    }
}
