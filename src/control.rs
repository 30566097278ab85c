//! How the daemon is told to stop, to rescan or to check again soon: flags set by signal handlers, by an
//! embedding program or by the daemon's other threads, plus a self-pipe that wakes the daemon's event loop.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The daemon's end.
pub struct Control {
    wake: UnixStream,
    flags: Arc<Flags>,
    /// For the daemon's own threads (see [`Control::handle`]).
    handle: Handle,
}

/// The end that asks; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Handle {
    wake: Arc<UnixStream>,
    flags: Arc<Flags>,
}

#[derive(Default)]
struct Flags {
    stop: Arc<AtomicBool>,
    rescan: Arc<AtomicBool>,
    check: AtomicBool,
}

/// What the daemon was asked since it last looked.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Requests {
    pub stop: bool,
    pub rescan: bool,
    /// Something may need the daemon's fallback check soon (a CDI spec write failed on another thread).
    pub check: bool,
}

pub fn new() -> std::io::Result<(Control, Handle)> {
    let (read, write) = UnixStream::pair()?;
    read.set_nonblocking(true)?;
    write.set_nonblocking(true)?;
    let flags = Arc::new(Flags::default());
    let handle = Handle { wake: Arc::new(write), flags: Arc::clone(&flags) };
    Ok((Control { wake: read, flags, handle: handle.clone() }, handle))
}

impl Handle {
    pub fn stop(&self) {
        self.flags.stop.store(true, Ordering::SeqCst);
        self.wake();
    }

    pub fn rescan(&self) {
        self.flags.rescan.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Something failed that the daemon's fallback check retries: it comes again soon (5 s) rather than at
    /// its idle pace (a minute).
    pub fn check(&self) {
        self.flags.check.store(true, Ordering::SeqCst);
        self.wake();
    }

    fn wake(&self) {
        let _ = (&*self.wake).write(&[1]);
    }

    /// Routes SIGTERM and SIGINT to `stop`, SIGHUP to `rescan`.
    pub fn register_signals(&self) -> std::io::Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        for (signal, flag) in [(SIGTERM, &self.flags.stop), (SIGINT, &self.flags.stop), (SIGHUP, &self.flags.rescan)] {
            signal_hook::flag::register(signal, Arc::clone(flag))?;
            signal_hook::low_level::pipe::register(signal, self.wake.try_clone()?)?;
        }
        Ok(())
    }
}

impl Control {
    /// Drains the wake-up pipe and returns the pending requests.
    pub fn take(&self) -> Requests {
        let mut buf = [0u8; 64];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        Requests {
            stop: self.flags.stop.swap(false, Ordering::SeqCst),
            rescan: self.flags.rescan.swap(false, Ordering::SeqCst),
            check: self.flags.check.swap(false, Ordering::SeqCst),
        }
    }

    /// A handle for the daemon's own threads, to ask for a check.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }
}

impl AsRawFd for Control {
    fn as_raw_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}
