//! How the daemon is told to stop or to rescan: flags set by signal handlers (or by an embedding program),
//! plus a self-pipe that wakes the daemon's event loop.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The daemon's end.
pub struct Control {
    wake: UnixStream,
    flags: Arc<Flags>,
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
}

/// What the daemon was asked since it last looked.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Requests {
    pub stop: bool,
    pub rescan: bool,
}

pub fn new() -> std::io::Result<(Control, Handle)> {
    let (read, write) = UnixStream::pair()?;
    read.set_nonblocking(true)?;
    write.set_nonblocking(true)?;
    let flags = Arc::new(Flags::default());
    Ok((Control { wake: read, flags: Arc::clone(&flags) }, Handle { wake: Arc::new(write), flags }))
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
        }
    }
}

impl AsRawFd for Control {
    fn as_raw_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}
