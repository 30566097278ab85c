//! The daemon: wires discovery, the registry, the registration thread and the event loop together.
//!
//! Threads: this one (the event loop: filesystem events, signals, periodic rescans), the registration thread
//! (`lifecycle`), one per ListAndWatch stream, and grpcio's (one completion queue plus gRPC core's pool).

use crate::control::Control;
use crate::discovery::{self, Backend, Roots};
use crate::lifecycle::{self, Event};
use crate::registry::{self, Registry, SharedRegistry};
use crate::watch::{self, Inotify};
use crate::{api, endpoint};
use crossbeam_channel::Sender;
use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything the daemon needs to know; `cli` builds it from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub backend: Backend,
    pub resource_name: String,
    pub device_plugin_path: PathBuf,
    pub roots: Roots,
    pub scan_interval: Duration,
}

#[derive(Debug)]
pub enum Error {
    /// The device-plugins directory leaves no room for a socket name: a configuration that can never work.
    Config(endpoint::DirTooLong),
    Setup(&'static str, std::io::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Config(e) => write!(f, "{e}"),
            Error::Setup(what, e) => write!(f, "cannot {what}: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// Runs until `control` asks to stop; then stops serving, removes our socket and returns. While another
/// instance serves the same socket, it waits for that one to stop (see `instance`).
pub fn run(settings: Settings, control: Control) -> Result<(), Error> {
    let socket_name =
        endpoint::socket_name(&settings.device_plugin_path, &settings.resource_name).map_err(Error::Config)?;

    let registry = Registry::shared();
    let mut scanner = Scanner {
        backend: settings.backend,
        roots: settings.roots.clone(),
        registry: Arc::clone(&registry),
        reported: HashSet::new(),
    };
    scanner.scan();

    // One completion queue is plenty for a handful of calls per pod start; each extra one is a thread.
    let env = Arc::new(grpcio::EnvBuilder::new().cq_count(1).name_prefix("grpc").build());
    let (events, lifecycle) = lifecycle::spawn(
        env,
        lifecycle::Settings {
            dir: settings.device_plugin_path.clone(),
            resource_name: settings.resource_name.clone(),
            socket_name: socket_name.clone(),
        },
        Arc::clone(&registry),
    )
    .map_err(|e| Error::Setup("start the registration thread", e))?;

    let inotify = Inotify::new().map_err(|e| Error::Setup("create an inotify instance", e))?;
    let mut watches = Watches::default();
    let result = event_loop(&settings, &socket_name, &control, &inotify, &mut watches, &mut scanner, &events);

    let _ = events.send(Event::Shutdown);
    let _ = lifecycle.join();
    result
}

/// The two directories we follow. A directory that cannot be watched (yet) is retried every tick.
#[derive(Default)]
struct Watches {
    plugins: Watch,
    dev: Watch,
}

#[derive(Default)]
struct Watch {
    wd: Option<i32>,
    /// Whether the failure to watch was logged already: once per outage, not every tick.
    warned: bool,
}

impl Watch {
    fn is(&self, wd: i32) -> bool {
        self.wd == Some(wd)
    }

    fn ensure(&mut self, inotify: &Inotify, dir: &Path) {
        if self.wd.is_some() {
            return;
        }
        match inotify.add(dir, watch::DIR_CHANGES) {
            Ok(wd) => {
                log::debug!("watching {}", dir.display());
                self.wd = Some(wd);
                self.warned = false;
            }
            Err(e) if !self.warned => {
                log::warn!("cannot watch {}: {e}; checking it every scan interval instead", dir.display());
                self.warned = true;
            }
            Err(_) => {}
        }
    }

    fn lost(&mut self, dir: &Path) {
        log::warn!("{} went away; watching it again when it is back", dir.display());
        self.wd = None;
    }
}

impl Watches {
    fn ensure(&mut self, inotify: &Inotify, settings: &Settings) {
        self.plugins.ensure(inotify, &settings.device_plugin_path);
        if settings.backend.is_dynamic() {
            self.dev.ensure(inotify, &settings.roots.dev);
        }
    }
}

fn event_loop(
    settings: &Settings,
    own_socket: &str,
    control: &Control,
    inotify: &Inotify,
    watches: &mut Watches,
    scanner: &mut Scanner,
    events: &Sender<Event>,
) -> Result<(), Error> {
    watches.ensure(inotify, settings);
    let mut next_tick = Instant::now() + settings.scan_interval;
    loop {
        let timeout = next_tick.saturating_duration_since(Instant::now());
        let mut fds = [
            libc::pollfd { fd: control.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: inotify.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        let ms = i32::try_from(timeout.as_millis() + 1).unwrap_or(i32::MAX);
        // SAFETY: fds is a valid array of pollfd for its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::Setup("wait for events", e));
            }
        }

        let requests = control.take();
        if requests.stop {
            log::info!("stopping");
            return Ok(());
        }
        let mut rescan = false;
        if requests.rescan {
            log::info!("SIGHUP: rescanning and registering again");
            rescan = true;
            let _ = events.send(Event::Reregister);
        }

        for event in inotify.read() {
            if event.mask & libc::IN_Q_OVERFLOW != 0 {
                // Events were dropped: look at everything again rather than guess what was missed.
                log::warn!("inotify queue overflowed; rescanning and checking the registration");
                rescan = true;
                let _ = events.send(Event::Tick);
                continue;
            }
            if event.mask & (libc::IN_IGNORED | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0 {
                if watches.plugins.is(event.wd) {
                    watches.plugins.lost(&settings.device_plugin_path);
                } else if watches.dev.is(event.wd) {
                    watches.dev.lost(&settings.roots.dev);
                }
                continue;
            }
            let appeared = event.mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0;
            let vanished = event.mask & (libc::IN_DELETE | libc::IN_MOVED_FROM) != 0;
            if watches.plugins.is(event.wd) {
                if appeared && event.name == api::KUBELET_SOCKET {
                    let _ = events.send(Event::KubeletSocketCreated);
                } else if vanished && event.name == own_socket {
                    let _ = events.send(Event::OwnSocketDeleted);
                }
            } else if watches.dev.is(event.wd) && discovery::is_device_node_name(&event.name) {
                log::debug!("{}/{} changed", settings.roots.dev.display(), event.name);
                rescan = true;
            }
        }

        if Instant::now() >= next_tick {
            next_tick = Instant::now() + settings.scan_interval;
            watches.ensure(inotify, settings);
            let _ = events.send(Event::Tick);
            rescan |= settings.backend.is_dynamic();
        }
        if rescan {
            scanner.scan();
        }
    }
}

/// Runs discovery and publishes the result, logging what changed and each new problem once.
struct Scanner {
    backend: Backend,
    roots: Roots,
    registry: SharedRegistry,
    /// Problems already logged; one that goes away and comes back is logged again.
    reported: HashSet<String>,
}

impl Scanner {
    fn scan(&mut self) {
        let scan = discovery::scan(self.backend, &self.roots);
        let mut problems: HashSet<String> = scan.problems.into_iter().collect();
        let ids: Vec<&str> = scan.devices.iter().map(|d| d.id.as_str()).collect();
        if let Some(most) = crate::allocation::most_units_per_container(&ids) {
            problems.insert(format!(
                "{} devices are advertised, but a container can be given at most {most} of them: more would make its \
                 {} longer than the {} bytes Linux passes to a program, and Allocate refuses that",
                ids.len(),
                crate::allocation::ENV_UNITS,
                crate::allocation::MAX_ENV_STRING
            ));
        }
        for p in problems.difference(&self.reported) {
            log::warn!("{p}");
        }
        self.reported = problems;
        let count = scan.devices.len();
        let changes = registry::publish(&self.registry, scan.devices);
        if changes.is_empty() {
            return;
        }
        // A long list (the aws backend) is summarised rather than logged device by device.
        if changes.added.len() > 16 {
            log::info!("{} devices appeared", changes.added.len());
        } else {
            for d in &changes.added {
                let numa = d.numa_node.map(|n| format!(", NUMA node {n}")).unwrap_or_default();
                match &d.health {
                    crate::device::Health::Unhealthy(why) => {
                        log::warn!("device {} appeared, Unhealthy: {why}{numa}", d.id)
                    }
                    _ => log::info!("device {} appeared, Healthy{numa}", d.id),
                }
            }
        }
        for id in &changes.removed {
            log::info!("device {id} vanished");
        }
        for d in &changes.health {
            match &d.health {
                crate::device::Health::Unhealthy(why) => log::warn!("device {} is now Unhealthy: {why}", d.id),
                _ => log::info!("device {} is Healthy again", d.id),
            }
        }
        log::info!("advertising {count} devices");
    }
}
