//! The daemon: wires discovery, routing, the registries, the registration thread and the event loop
//! together. Data flows one way: sysfs → discovery → routing → one registry per resource → its server.
//!
//! Threads: this one (the event loop: filesystem events, signals, health passes, periodic full rescans), the
//! registration thread (`lifecycle`, for every resource), one per ListAndWatch stream, and grpcio's (one
//! completion queue plus gRPC core's pool).

use crate::control::Control;
use crate::discovery::{self, Backend, Roots};
use crate::lifecycle::{self, Event, Resource};
use crate::registry::{self, Registry, SharedRegistry};
use crate::routing::Routes;
use crate::watch::{self, Inotify};
use crate::{api, endpoint};
use crossbeam_channel::Sender;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything the daemon needs to know; `cli` builds it from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub backend: Backend,
    /// Which resource each device goes to: `--resource-name` and `--afu-resource`.
    pub routes: Routes,
    pub device_plugin_path: PathBuf,
    /// `--cdi-spec-dir`: where to keep a CDI spec per resource; None: no CDI.
    pub cdi_spec_dir: Option<PathBuf>,
    pub roots: Roots,
    /// `--scan-interval`: the period of full discovery (besides device-node events and SIGHUP).
    pub scan_interval: Duration,
    /// `--health-interval`: the period of the health pass over the Intel ports and AWS slots the last
    /// discovery found.
    pub health_interval: Duration,
}

#[derive(Debug)]
pub enum Error {
    /// A configuration that can never work: the device-plugins directory leaves no room for a socket name,
    /// or two resources would share one.
    Config(String),
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

/// Runs until `control` asks to stop; then stops serving, removes our sockets and returns. While another
/// instance serves one of our sockets, that resource waits for it to stop (see `instance`).
pub fn run(settings: Settings, control: Control) -> Result<(), Error> {
    let dir = &settings.device_plugin_path;
    let mut sockets: BTreeMap<String, String> = BTreeMap::new();
    for resource in settings.routes.fixed() {
        let name = endpoint::socket_name(dir, &resource).map_err(|e| Error::Config(e.to_string()))?;
        if let Some((other, _)) = sockets.iter().find(|(_, n)| **n == name) {
            return Err(Error::Config(format!("{resource} and {other} would share the socket {name}")));
        }
        sockets.insert(resource, name);
    }

    let mut scanner = Scanner {
        backend: settings.backend,
        roots: settings.roots.clone(),
        routes: settings.routes.clone(),
        dir: dir.clone(),
        known: settings.routes.fixed(),
        registries: BTreeMap::new(),
        placed: HashMap::new(),
        reported: HashSet::new(),
        events: None,
        wake: control.handle(),
        cdi_dir: settings.cdi_spec_dir.clone(),
        cdi_files: BTreeMap::new(),
        cdi_stale_left: settings.cdi_spec_dir.is_some(),
        cdi_stale_failing: HashSet::new(),
        found: Vec::new(),
        cache: discovery::intel::Cache::default(),
        files: Vec::new(),
        ports: Vec::new(),
        slots: Vec::new(),
        found_problems: Vec::new(),
        retry: false,
    };
    scanner.scan();

    // Watched before the registration thread starts: a kubelet.sock created from then on is an event.
    let inotify = Inotify::new().map_err(|e| Error::Setup("create an inotify instance", e))?;
    let mut watches = Watches::default();
    watches.ensure(&inotify, &settings);

    // One completion queue is plenty for a handful of calls per pod start; each extra one is a thread.
    let env = Arc::new(grpcio::EnvBuilder::new().cq_count(1).name_prefix("grpc").build());
    let resources = scanner.resources();
    let (events, lifecycle) = lifecycle::spawn(env, dir.clone(), settings.routes.default.clone(), resources)
        .map_err(|e| Error::Setup("start the registration thread", e))?;
    scanner.events = Some(events.clone());

    let result = event_loop(&settings, &control, &inotify, &mut watches, &mut scanner, &events);

    let _ = events.send(Event::Shutdown);
    let _ = lifecycle.join();
    result
}

/// How soon the event loop checks what inotify may have missed (our socket and `kubelet.sock`, through the
/// registration thread; the two watches; the CDI spec files, and stale ones) once something is pending: a
/// watch not in place, a full discovery to repeat (a port half-created when it was scanned heals within
/// this long), a CDI spec file not written, stale spec files left. At most `--scan-interval` where there are
/// full discoveries (Intel ports, AWS slots). A condition that lasts is looked at less and less often (see
/// `CheckSchedule`).
const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The same check when nothing is pending. It is a backstop, not a path events take: inotify reports
/// `kubelet.sock` created and our socket deleted as they happen, a dropped event (`IN_Q_OVERFLOW`) makes
/// the registration thread check at once and starts a full discovery, and a watch lost (`IN_IGNORED`)
/// makes the next check come within `CHECK_INTERVAL`. A minute keeps an idle plugin from waking for
/// nothing (AWS units: it never wakes otherwise). What only this check sees (the lock directory is not
/// watched): a lock file removed by hand is made and locked again at the next check, so that for up to
/// this long a second instance could lock a file of its own (it still finds our socket live and waits).
const IDLE_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// What makes the fallback check come sooner than its idle pace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Pending {
    /// A directory we follow is not watched (yet): the device-plugins directory before the kubelet makes it.
    watch: bool,
    /// A full discovery to repeat (`discovery::Scan::retry`).
    discovery: bool,
    /// A CDI spec file to write, or stale ones to remove.
    cdi: bool,
}

impl Pending {
    fn of(watches: &Watches, settings: &Settings, scanner: &Scanner) -> Pending {
        Pending { watch: watches.missing(settings), discovery: scanner.retry, cdi: scanner.cdi_pending() }
    }

    fn any(&self) -> bool {
        self.watch || self.discovery || self.cdi
    }

    /// What is pending, for the debug line that says when it changes.
    fn names(&self) -> Vec<&'static str> {
        let all = [
            (self.watch, "a directory to watch"),
            (self.discovery, "a discovery to repeat"),
            (self.cdi, "a CDI spec file to write, or stale ones to look for"),
        ];
        all.iter().filter(|(on, _)| *on).map(|(_, name)| *name).collect()
    }
}

/// When the fallback check comes: `CHECK_INTERVAL` after something becomes pending, then twice as long after
/// each check that finds it still pending, up to the idle interval (5, 10, 20, 40, then every 60 s; never
/// longer than `--scan-interval` where there are full discoveries, so 30 s for Intel ports and AWS slots at
/// the default flags). A condition that heals in seconds (a port half-created, a DMA driver still probing)
/// is seen within 5 s; one that lasts (a CDI directory left read-only, an AWS slot whose driver never makes
/// nodes, a stale spec that another deployment keeps) costs a look per idle interval, as an idle plugin
/// does. Something newly pending starts again from 5 s. A directory not watched is looked for every 5 s for
/// as long as it is missing: it costs one `inotify_add_watch`, and the device-plugins directory appears when
/// a kubelet starts, which the plugin must not be a minute late for.
struct CheckSchedule {
    /// When the last check ran, or when something newly pending started the schedule again.
    last: Instant,
    /// When the last check ran: however often the schedule starts again, a check comes at least once per
    /// idle interval.
    checked_at: Instant,
    /// How many checks in a row found something still pending.
    lasting: u32,
    /// The idle interval: `IDLE_CHECK_INTERVAL`, or `--scan-interval` if shorter where there are full
    /// discoveries.
    idle: Duration,
}

impl CheckSchedule {
    fn new(now: Instant, idle: Duration) -> CheckSchedule {
        CheckSchedule { last: now, checked_at: now, lasting: 0, idle }
    }

    /// When the next check comes.
    fn next(&self, pending: &Pending) -> Instant {
        let interval = if pending.any() {
            // 5 s × 2^lasting, written so that it cannot overflow: the shift stops at 16 × 5 s.
            CHECK_INTERVAL.saturating_mul(1 << self.lasting.min(4))
        } else {
            self.idle
        };
        (self.last + interval.min(self.idle)).min(self.checked_at + self.idle)
    }

    /// A check ran at `now`; `pending`: what is still pending after it.
    fn checked(&mut self, now: Instant, pending: &Pending) {
        self.last = now;
        self.checked_at = now;
        self.lasting = if pending.any() && !pending.watch { self.lasting.saturating_add(1) } else { 0 };
    }

    /// Something newly pending at `now`: the next check comes `CHECK_INTERVAL` from now.
    fn restart(&mut self, now: Instant) {
        self.last = now;
        self.lasting = 0;
    }
}

/// The event loop's periodic work: full discoveries and health passes (Intel ports, AWS slots; AWS units
/// never change, so they have neither), and the fallback check (`CheckSchedule`).
struct Timers {
    /// Whether there are full discoveries and health passes.
    dynamic: bool,
    scan_interval: Duration,
    health_interval: Duration,
    next_scan: Instant,
    next_health: Instant,
    check: CheckSchedule,
}

/// What falls due at a wake-up.
#[derive(Debug, PartialEq, Eq)]
struct Due {
    /// The periodic full discovery (`--scan-interval`).
    scan: bool,
    /// The health pass (`--health-interval`); a full discovery at the same wake-up stands in for it.
    health: bool,
    /// The check, and the time it counts as done at: when it was due, if that is later than now (done
    /// early), so that it keeps its period and stays with the discovery it came with.
    check: Option<Instant>,
}

impl Timers {
    /// `dynamic`: whether there are full discoveries and health passes (`Backend::is_dynamic`).
    fn new(dynamic: bool, scan_interval: Duration, health_interval: Duration, now: Instant) -> Timers {
        let idle = if dynamic { IDLE_CHECK_INTERVAL.min(scan_interval) } else { IDLE_CHECK_INTERVAL };
        Timers {
            dynamic,
            scan_interval,
            health_interval,
            next_scan: now + scan_interval,
            next_health: now + health_interval,
            check: CheckSchedule::new(now, idle),
        }
    }

    /// When the next periodic work falls due.
    fn deadline(&self, pending: &Pending) -> Instant {
        let check = self.check.next(pending);
        if self.dynamic {
            check.min(self.next_scan).min(self.next_health)
        } else {
            check
        }
    }

    /// What falls due at `now`, and the next full discovery and health pass scheduled as if done now. A
    /// discovery or check due up to a health interval (and at most a second) after a health pass that is
    /// due now is done with it, that much early and keeping its period: one wake-up for both, so that at
    /// the default flags the event loop wakes once a second. Nothing is ever put off.
    fn take_due(&mut self, now: Instant, pending: &Pending) -> Due {
        let health = self.dynamic && now >= self.next_health;
        let early = if health { self.health_interval.min(Duration::from_secs(1)) } else { Duration::ZERO };
        let check = self.check.next(pending);
        let due = Due {
            scan: self.dynamic && now + early >= self.next_scan,
            health,
            check: (now + early >= check).then(|| check.max(now)),
        };
        if due.scan {
            // Done early: the next one keeps its period rather than moving earlier each time.
            let from = if self.next_scan > now { self.next_scan } else { now };
            self.next_scan = from + self.scan_interval;
        }
        if due.scan || due.health {
            self.next_health = now + self.health_interval;
        }
        due
    }

    /// A full discovery ended at `end`: it read the health too. `periodic`: it was the one `take_due` said
    /// was due, whose period is kept; any other (a node event, SIGHUP, something half-made looked at again)
    /// puts the periodic one a whole `--scan-interval` after it, rather than a second one moments later.
    /// One that took longer than `--scan-interval` is not followed by another at once.
    fn scanned(&mut self, end: Instant, periodic: bool) {
        self.next_health = end + self.health_interval;
        if !periodic || self.next_scan <= end {
            self.next_scan = end + self.scan_interval;
        }
    }
}

/// How long a burst of device-node events may go on before the discovery it starts: it runs once the dev
/// root has been quiet for `quiet`, and at the latest `longest` after the burst's first event.
struct Settle {
    quiet: Duration,
    longest: Duration,
}

/// Intel ports: at once (a port has one node). AWS slots: a DMA driver makes dozens of nodes as it probes
/// (27 for XDMA), so that one discovery sees them all rather than one per node.
fn node_settle(backend: Backend) -> Settle {
    match backend {
        Backend::AwsFpga => Settle { quiet: Duration::from_millis(20), longest: Duration::from_millis(250) },
        _ => Settle { quiet: Duration::ZERO, longest: Duration::ZERO },
    }
}

/// The two directories we follow. A directory that cannot be watched (yet) is retried at every check (every
/// 5 s while it is missing: see `CheckSchedule`).
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
                log::warn!("cannot watch {}: {e}; checking it every 5 s instead", dir.display());
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
    /// Whether a directory we follow is not watched (yet).
    fn missing(&self, settings: &Settings) -> bool {
        self.plugins.wd.is_none() || (settings.backend.is_dynamic() && self.dev.wd.is_none())
    }

    fn ensure(&mut self, inotify: &Inotify, settings: &Settings) {
        self.plugins.ensure(inotify, &settings.device_plugin_path);
        if settings.backend.is_dynamic() {
            self.dev.ensure(inotify, &settings.roots.dev);
        }
    }
}

fn event_loop(
    settings: &Settings,
    control: &Control,
    inotify: &Inotify,
    watches: &mut Watches,
    scanner: &mut Scanner,
    events: &Sender<Event>,
) -> Result<(), Error> {
    let (scan, health) = (settings.scan_interval, settings.health_interval);
    let mut timers = Timers::new(settings.backend.is_dynamic(), scan, health, Instant::now());
    let mut was_pending = None;
    // Device-node events not acted on yet: (first, last) of the burst (see `Settle`).
    let mut nodes_changed: Option<(Instant, Instant)> = None;
    let settle = node_settle(settings.backend);
    loop {
        let pending = Pending::of(watches, settings, scanner);
        if was_pending.as_ref() != Some(&pending) {
            if pending.any() {
                log::debug!("pending: {}; checking again within {CHECK_INTERVAL:?}", pending.names().join(", "));
            } else {
                log::debug!("nothing pending: checking for missed events every {:?}", timers.check.idle);
            }
            was_pending = Some(pending.clone());
        }
        let mut deadline = timers.deadline(&pending);
        if let Some((first, last)) = nodes_changed {
            deadline = deadline.min((last + settle.quiet).min(first + settle.longest));
        }
        let timeout = deadline.saturating_duration_since(Instant::now());
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
        // One time for everything this wake-up does, so that what falls due together stays together.
        let now = Instant::now();

        let requests = control.take();
        if requests.stop {
            log::info!("stopping");
            return Ok(());
        }
        if requests.check {
            timers.check.restart(now);
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
                    timers.check.restart(now);
                } else if watches.dev.is(event.wd) {
                    watches.dev.lost(&settings.roots.dev);
                    timers.check.restart(now);
                }
                continue;
            }
            let appeared = event.mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0;
            let vanished = event.mask & (libc::IN_DELETE | libc::IN_MOVED_FROM) != 0;
            if watches.plugins.is(event.wd) {
                if appeared && event.name == api::KUBELET_SOCKET {
                    let _ = events.send(Event::KubeletSocketCreated);
                } else if vanished && endpoint::is_ours(&event.name) {
                    let _ = events.send(Event::SocketDeleted(event.name));
                }
            } else if watches.dev.is(event.wd) && discovery::is_device_node_name(settings.backend, &event.name) {
                log::debug!("{}/{} changed", settings.roots.dev.display(), event.name);
                nodes_changed = Some((nodes_changed.map_or(now, |(first, _)| first), now));
            }
        }

        if let Some((first, last)) = nodes_changed {
            if now >= last + settle.quiet || now >= first + settle.longest {
                nodes_changed = None;
                rescan = true;
            }
        }
        let due = timers.take_due(now, &pending);
        rescan |= due.scan;
        if due.check.is_some() {
            watches.ensure(inotify, settings);
            let _ = events.send(Event::Tick);
            scanner.check_cdi_specs();
            // A port half-created when it was discovered (its `id` not there yet, a dangling link), or an
            // AWS slot whose driver has made no node yet, is looked at again soon, not at the next full
            // discovery.
            rescan |= settings.backend.is_dynamic() && scanner.retry;
        }
        // The health pass falls back on a full discovery when a port's directory is gone or a slot changed.
        let discovered = (rescan || (due.health && !scanner.health_pass())).then(|| discover(scanner));
        if discovered.is_some() {
            timers.scanned(Instant::now(), due.scan);
        }
        if let Some(at) = due.check {
            timers.check.checked(at, &Pending::of(watches, settings, scanner));
        }
        // Something newly found half-made gets a whole `CHECK_INTERVAL` to finish before it is looked at
        // again.
        if discovered == Some(true) {
            timers.check.restart(now);
        }
    }
}

/// A full discovery; true if it found something newly half-made (a problem that may heal that the last
/// one did not report).
fn discover(scanner: &mut Scanner) -> bool {
    let before = scanner.retry.then(|| scanner.found_problems.clone());
    scanner.scan();
    scanner.retry && before.as_ref() != Some(&scanner.found_problems)
}

/// Runs discovery, routes the devices to their resources and publishes each resource's list, logging what
/// changed and each new problem once.
struct Scanner {
    backend: Backend,
    roots: Roots,
    routes: Routes,
    dir: PathBuf,
    /// Every resource served so far: the fixed ones, and the auto ones of every AFU seen.
    known: BTreeSet<String>,
    registries: BTreeMap<String, SharedRegistry>,
    /// The resource and AFU of each device ID at the last scan: to log a port that moves, and to keep a port
    /// whose `afu_id` could not be read this time (EBUSY in a reset) where it was.
    placed: HashMap<String, (String, Option<String>)>,
    /// Problems already logged; one that goes away and comes back is logged again.
    reported: HashSet<String>,
    /// Where to announce a new resource, once the registration thread runs.
    events: Option<Sender<Event>>,
    /// Wakes the event loop for a check soon: a CDI spec write failed on another thread.
    wake: crate::control::Handle,
    /// `--cdi-spec-dir`, and the spec file of each resource.
    cdi_dir: Option<PathBuf>,
    cdi_files: BTreeMap<String, Arc<crate::cdi::SpecFile>>,
    /// Whether spec files of ours that this process does not keep may still be in the CDI directory: looked
    /// for at every check until none is left (an older instance may still serve them at first).
    cdi_stale_left: bool,
    /// Stale files that could not be removed: logged once, retried at every check.
    cdi_stale_failing: HashSet<String>,
    /// What the last full discovery found, as it found it.
    found: Vec<crate::device::Device>,
    /// The paths a health pass reads for each of `found` (Intel ports: the same order, one each).
    ports: Vec<discovery::intel::PortPaths>,
    /// What a health pass looks at for each AWS FPGA slot found.
    slots: Vec<discovery::aws_fpga::SlotPaths>,
    /// The attribute files of `ports`, kept open from one health pass to the next (two per port).
    files: Vec<discovery::intel::PortFiles>,
    /// The problems the last full discovery reported.
    found_problems: Vec<String>,
    /// Whether the last full discovery found something that may heal soon (`discovery::Scan::retry`).
    retry: bool,
    /// What full discoveries keep from one to the next.
    cache: discovery::intel::Cache,
}

impl Scanner {
    /// Every resource with its socket name and registry, for the registration thread.
    fn resources(&self) -> Vec<Resource> {
        self.registries.iter().filter_map(|(name, registry)| self.resource(name, registry)).collect()
    }

    fn resource(&self, name: &str, registry: &SharedRegistry) -> Option<Resource> {
        match endpoint::socket_name(&self.dir, name) {
            Ok(socket_name) => Some(Resource {
                name: name.to_string(),
                socket_name,
                registry: Arc::clone(registry),
                cdi: self.cdi_files.get(name).cloned(),
            }),
            Err(e) => {
                log::error!("cannot serve {name}: {e}");
                None
            }
        }
    }

    /// A full discovery, then `publish`.
    fn scan(&mut self) {
        let scan = discovery::scan_with(self.backend, &self.roots, &mut self.cache);
        self.found = scan.devices.clone();
        self.ports = scan.ports;
        self.slots = scan.slots;
        // Opened again at the next health pass, for the ports this discovery found.
        self.files.clear();
        self.found_problems = scan.problems;
        self.retry = scan.retry;
        self.publish(scan.devices);
    }

    /// Reads the health and AFU of every port the last discovery found, through the paths it remembered,
    /// and publishes what changed. False when a port's directory is gone, or an AWS slot's application PF
    /// changed: the caller runs a full discovery, which treats it as a hot-remove or finds the new nodes.
    fn health_pass(&mut self) -> bool {
        // An AWS slot changes only by its application PF coming, going or being replaced (an image load) or
        // by its driver: then its nodes are found again by a full discovery.
        if let Some(slot) = self.slots.iter().find(|slot| discovery::aws_fpga::changed(slot)) {
            log::debug!("the application PF of slot {} changed since the last discovery: rediscovering", slot.id);
            return false;
        }
        if self.files.len() != self.ports.len() {
            // Two descriptors per port, for as many ports as the descriptor limit leaves room for; the others
            // are read through their paths.
            let kept = descriptors_to_spare() / 2;
            self.files = (self.ports.iter().enumerate())
                .map(|(i, port)| if i < kept { discovery::intel::PortFiles::open(port) } else { Default::default() })
                .collect();
        }
        let mut changed = false;
        for ((device, port), files) in self.found.iter_mut().zip(&self.ports).zip(&self.files) {
            let Some((afu_id, health)) = discovery::intel::health(port, files) else {
                log::debug!("{} is gone since the last discovery: rediscovering", port.dir.display());
                return false;
            };
            if device.health != health || device.afu_id != afu_id {
                device.health = health;
                device.afu_id = afu_id;
                changed = true;
            }
        }
        if self.files.iter().any(discovery::intel::PortFiles::is_stale) {
            self.files.clear();
        }
        if changed {
            self.publish(self.found.clone());
        }
        true
    }

    /// Routes `devices` to their resources and publishes each resource's list (and CDI spec), logging what
    /// changed and each new problem once.
    fn publish(&mut self, mut devices: Vec<crate::device::Device>) {
        for d in &mut devices {
            if d.afu_id.is_none() && matches!(d.health, crate::device::Health::Unknown(_)) {
                d.afu_id = self.placed.get(&d.id).and_then(|(_, afu)| afu.clone());
            }
        }
        let mut problems: HashSet<String> = self.found_problems.iter().cloned().collect();
        let routed = self.routes.route(devices, &mut self.known);
        let single = routed.len() == 1;
        for (resource, devices) in &routed {
            let ids: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
            if let Some(most) = crate::allocation::most_units_per_container(&ids) {
                let of = if single { String::new() } else { format!(" of {resource}") };
                problems.insert(format!(
                    "{} devices{of} are advertised, but a container can be given at most {most} of them: more \
                     would make its {} longer than the {} bytes Linux passes to a program, and Allocate refuses that",
                    ids.len(),
                    crate::allocation::ENV_UNITS,
                    crate::allocation::MAX_ENV_STRING
                ));
            }
        }
        for p in problems.difference(&self.reported) {
            log::warn!("{p}");
        }
        self.reported = problems;

        // A port whose AFU changed leaves one resource and joins another: one line, not vanished + appeared.
        let mut placed = HashMap::new();
        let mut moved = HashSet::new();
        let mut losing = HashSet::new();
        for (resource, devices) in &routed {
            for d in devices {
                if let Some((old, _)) = self.placed.get(&d.id).filter(|(old, _)| old != resource) {
                    let afu = d.afu_id.as_deref().unwrap_or("none");
                    let health = match &d.health {
                        crate::device::Health::Unhealthy(why) => format!(", Unhealthy: {why}"),
                        _ => String::new(),
                    };
                    let level = if d.health.is_healthy() { log::Level::Info } else { log::Level::Warn };
                    log::log!(level, "port {} moved from {old} to {resource} (its AFU is now {afu}{health})", d.id);
                    moved.insert(d.id.clone());
                    losing.insert(old.clone());
                }
                placed.insert(d.id.clone(), (resource.clone(), d.afu_id.clone()));
            }
        }
        self.placed = placed;

        // The lists that lose a port first: a moving port is never in two lists at once.
        let mut routed: Vec<(String, Vec<crate::device::Device>)> = routed.into_iter().collect();
        routed.sort_by_key(|(resource, _)| !losing.contains(resource));
        for (resource, devices) in routed {
            let (registry, new) = match self.registries.get(&resource) {
                Some(registry) => (Arc::clone(registry), false),
                None => {
                    let registry = Registry::shared();
                    self.registries.insert(resource.clone(), Arc::clone(&registry));
                    (registry, true)
                }
            };
            let count = devices.len();
            // The spec before the list: a container given a device must find it in the spec.
            self.write_cdi_spec(&resource, &devices);
            registry::publish(&registry, devices, |changes| {
                // A NUMA node alone changes the list, not what is logged: still say it is sent.
                if !changes.is_empty() {
                    let of = if single { String::new() } else { format!(" of {resource}") };
                    log_changes(changes, &moved, &of);
                    if changes.visible {
                        let devices = if count == 1 { "device" } else { "devices" };
                        log::info!("advertising {count} {devices}{of}");
                    }
                }
            });
            // Announced once its list is in place, so that its first ListAndWatch is not empty.
            if let (true, Some(events)) = (new, &self.events) {
                if let Some(r) = self.resource(&resource, &registry) {
                    log::info!("new resource {resource}: its AFU appeared");
                    let _ = events.send(Event::Serve(r));
                }
            }
        }
    }
}

impl Scanner {
    /// Keeps `resource`'s CDI spec file in step with its devices (with `--cdi-spec-dir`): see `cdi::SpecFile`.
    fn write_cdi_spec(&mut self, resource: &str, devices: &[crate::device::Device]) {
        let Some(dir) = &self.cdi_dir else { return };
        let Ok(socket) = endpoint::socket_name(&self.dir, resource) else { return };
        let file = self.cdi_files.entry(resource.to_string()).or_insert_with(|| {
            let wake = self.wake.clone();
            Arc::new(crate::cdi::SpecFile::new(dir, &socket, resource, move || wake.check()))
        });
        file.set(crate::cdi::spec(resource, devices));
    }
}

impl Scanner {
    /// Whether a CDI spec file or a stale one needs another look soon (see `CHECK_INTERVAL`).
    fn cdi_pending(&self) -> bool {
        self.cdi_stale_left || !self.cdi_stale_failing.is_empty() || self.cdi_files.values().any(|f| f.pending())
    }

    /// Rewrites a spec file removed or changed by someone else, retries one that could not be written, and
    /// looks for stale ones (see `cdi::SpecFile`).
    fn check_cdi_specs(&mut self) {
        for spec in self.cdi_files.values() {
            spec.check();
        }
        if self.cdi_stale_left {
            self.remove_stale_cdi_specs();
        }
    }

    /// Removes the spec files of ours that this process does not keep and no running instance serves (their
    /// socket's lock is free): a resource of an earlier configuration, a temporary file left by a crash. One
    /// that another instance still serves (a rolling update) is looked at again at the next check.
    fn remove_stale_cdi_specs(&mut self) {
        let Some(dir) = &self.cdi_dir else { return };
        // Not before this process serves: during a rolling update the old instance's files are its own.
        if !self.cdi_files.get(&self.routes.default).is_some_and(|f| f.owned()) {
            return;
        }
        let sockets: Vec<String> =
            self.registries.keys().filter_map(|r| endpoint::socket_name(&self.dir, r).ok()).collect();
        let current: Vec<String> = sockets.iter().map(|socket| crate::cdi::file_name(socket)).collect();
        let mut left = false;
        for (file, socket) in crate::cdi::stale(dir, &current) {
            let path = dir.join(&file);
            let ours = self.cdi_files.values().find(|f| f.socket_name() == socket);
            let (result, why) = match ours {
                // A temporary file of one of our own specs: removed under the spec's lock, once it is ours.
                Some(spec) if spec.owned() => (spec.remove_leftover(), "a temporary file left by a crash".into()),
                // Another socket's file waits while its lock is held (see `instance::is_held`).
                Some(_) => {
                    left = true;
                    continue;
                }
                None if crate::instance::is_held(&self.dir, &socket) => {
                    left = true;
                    continue;
                }
                None => (crate::cdi::remove(dir, &file), format!("no running instance serves {socket}")),
            };
            match result {
                Ok(true) => log::info!("removed {}: {why}", path.display()),
                Ok(false) => {}
                Err(e) => {
                    left = true;
                    if self.cdi_stale_failing.insert(file.clone()) {
                        log::warn!("cannot remove the stale CDI spec {}: {e}; retrying", path.display());
                    }
                }
            }
        }
        self.cdi_stale_left = left;
    }
}

/// Descriptors that the health pass may keep open: at most half the soft `RLIMIT_NOFILE` (see
/// `raise_descriptor_limit`), and never the last 256, so that sockets, streams (which grow with resources),
/// gRPC core and discovery's own opens always have room.
fn descriptors_to_spare() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    let soft = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
    (soft / 2).min(soft.saturating_sub(256))
}

/// Raises the soft limit on open descriptors to the hard one, as the Go runtime does for every program: the
/// health pass keeps two per port, and the usual soft limit (1024) would leave a large node's ports to be
/// read through their paths. Returns the new soft limit; a failure leaves the limit as it was.
pub fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read or write only the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// "27 device nodes", "1 device node", "no device node" (an AWS slot with no driver bound, or whose
/// application PF is missing).
fn node_count(n: usize) -> String {
    match n {
        0 => "no device node".into(),
        1 => "1 device node".into(),
        n => format!("{n} device nodes"),
    }
}

/// Logs a registry update: `of` names the resource when there are several (empty otherwise).
fn log_changes(changes: &registry::Changes, moved: &HashSet<String>, of: &str) {
    // A long list (the aws backend) is summarised rather than logged device by device.
    if changes.added.len() > 16 {
        log::info!("{} devices appeared{of}", changes.added.len());
    } else {
        for d in changes.added.iter().filter(|d| !moved.contains(&d.id)) {
            let mut numa = d.numa_node.map(|n| format!(", NUMA node {n}")).unwrap_or_default();
            // An AWS slot: which function it is and what its driver gives (Intel ports: the ID says it).
            if let Some(address) = &d.pci_address {
                numa.push_str(&format!(", application PF {address}, {}", node_count(d.nodes.len())));
            }
            match &d.health {
                crate::device::Health::Unhealthy(why) => {
                    log::warn!("device {}{of} appeared, Unhealthy: {why}{numa}", d.id)
                }
                _ => log::info!("device {}{of} appeared, Healthy{numa}", d.id),
            }
        }
    }
    for id in changes.removed.iter().filter(|id| !moved.contains(*id)) {
        log::info!("device {id}{of} vanished");
    }
    for d in &changes.health {
        match &d.health {
            crate::device::Health::Unhealthy(why) => log::warn!("device {}{of} is now Unhealthy: {why}", d.id),
            _ => log::info!("device {}{of} is Healthy again", d.id),
        }
    }
    for d in changes.nodes.iter().filter(|d| d.pci_address.is_some()) {
        log::info!("device {}{of} now has {}", d.id, node_count(d.nodes.len()));
    }
    for d in &changes.reasons {
        if let crate::device::Health::Unhealthy(why) = &d.health {
            log::warn!("device {}{of} is still Unhealthy, now: {why}", d.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = IDLE_CHECK_INTERVAL;

    /// The gaps between checks while `pending` lasts, starting from a fresh schedule.
    fn gaps(pending: &Pending, idle: Duration, n: usize) -> Vec<u64> {
        let mut schedule = CheckSchedule::new(Instant::now(), idle);
        (0..n)
            .map(|_| {
                let at = schedule.next(pending);
                let gap = at.duration_since(schedule.last).as_secs();
                schedule.checked(at, pending);
                gap
            })
            .collect()
    }

    #[test]
    fn a_lasting_condition_is_checked_less_and_less_often_down_to_the_idle_pace() {
        let cdi = Pending { cdi: true, ..Pending::default() };
        assert_eq!(gaps(&cdi, MINUTE, 8), [5, 10, 20, 40, 60, 60, 60, 60]);
        let discovery = Pending { discovery: true, ..Pending::default() };
        assert_eq!(gaps(&discovery, MINUTE, 6), [5, 10, 20, 40, 60, 60]);
        // Never later than a full discovery would come.
        assert_eq!(gaps(&discovery, Duration::from_secs(15), 5), [5, 10, 15, 15, 15]);
        // Nothing pending: the idle pace.
        assert_eq!(gaps(&Pending::default(), MINUTE, 3), [60, 60, 60]);
        // A missing directory: every 5 s for as long as it is missing.
        let watch = Pending { watch: true, cdi: true, ..Pending::default() };
        assert_eq!(gaps(&watch, MINUTE, 4), [5, 5, 5, 5]);
    }

    #[test]
    fn something_newly_pending_or_healed_starts_the_schedule_again_but_never_stops_the_checks() {
        let cdi = Pending { cdi: true, ..Pending::default() };
        let mut schedule = CheckSchedule::new(Instant::now(), MINUTE);
        for _ in 0..6 {
            let at = schedule.next(&cdi);
            schedule.checked(at, &cdi);
        }
        assert_eq!(schedule.next(&cdi) - schedule.last, MINUTE);
        let checked = schedule.last;
        let now = checked + Duration::from_secs(7);
        schedule.restart(now);
        assert_eq!(schedule.next(&cdi), now + CHECK_INTERVAL);
        // Started again every 4 s (a flapping condition): the check still comes a minute after the last.
        for i in 1..30 {
            schedule.restart(now + Duration::from_secs(4 * i));
        }
        assert_eq!(schedule.next(&cdi), checked + MINUTE);
        // Lasting, then healed at a check, then pending again: 5 s again.
        schedule.checked(checked + MINUTE, &cdi);
        assert_eq!(schedule.lasting, 1);
        schedule.checked(checked + MINUTE, &Pending::default());
        assert_eq!(schedule.next(&cdi), checked + MINUTE + CHECK_INTERVAL);
    }

    /// What the event loop's timers do over `span` with nothing pending and no events, each wake-up `lag`
    /// after its deadline (as poll's): (wake-ups, full discoveries, health passes, checks). Asserts on the
    /// way that nothing is done later than it was due, and that no wake-up is for nothing.
    fn run(dynamic: bool, scan: Duration, health: Duration, span: Duration, lag: Duration) -> (u32, u32, u32, u32) {
        let start = Instant::now();
        let mut timers = Timers::new(dynamic, scan, health, start);
        let none = Pending::default();
        let (mut wakes, mut scans, mut passes, mut checks) = (0, 0, 0, 0);
        loop {
            let now = timers.deadline(&none) + lag;
            if now > start + span {
                return (wakes, scans, passes, checks);
            }
            let (scan_at, check_at) = (timers.next_scan, timers.check.next(&none));
            let due = timers.take_due(now, &none);
            assert!(due.scan || due.health || due.check.is_some(), "woke for nothing");
            assert!(!due.scan || now <= scan_at + lag, "a discovery put off");
            assert!(due.check.is_none() || now <= check_at + lag, "a check put off");
            if dynamic && scan > health {
                // Whatever the lag, discoveries and checks only ever come with a health pass.
                assert!(due.health, "a wake-up of its own at {:?}: {due:?}", now - start);
            }
            wakes += 1;
            if due.scan {
                scans += 1;
                timers.scanned(now, true);
            } else if due.health {
                passes += 1;
            }
            if let Some(at) = due.check {
                checks += 1;
                timers.check.checked(at, &none);
            }
        }
    }

    #[test]
    fn a_discovery_for_another_reason_puts_the_periodic_one_a_period_after_it() {
        let start = Instant::now();
        let (scan, health) = (Duration::from_secs(30), Duration::from_secs(1));
        let mut timers = Timers::new(true, scan, health, start);
        // Something half-made looked at again 25 s in: the periodic discovery comes 30 s after that one.
        let end = start + Duration::from_secs(25);
        timers.scanned(end, false);
        assert_eq!((timers.next_scan, timers.next_health), (end + scan, end + health));
        // A periodic one keeps its period, unless it ran past the next one.
        let due = timers.next_scan;
        assert!(timers.take_due(due, &Pending::default()).scan);
        timers.scanned(due, true);
        assert_eq!(timers.next_scan, due + scan);
        assert!(timers.take_due(due + scan, &Pending::default()).scan);
        let end = due + scan + Duration::from_secs(31);
        timers.scanned(end, true);
        assert_eq!(timers.next_scan, end + scan);
    }

    #[test]
    fn discoveries_and_checks_join_the_health_pass_and_keep_their_period() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // Defaults: once a second, a discovery every 30 s standing in for a health pass, a check with it.
        assert_eq!(run(true, s(30), s(1), s(300), Duration::ZERO), (300, 10, 290, 10));
        // Between one and two health intervals: every 1.5 s on average, on health-pass wake-ups only.
        assert_eq!(run(true, ms(1500), s(1), s(30), Duration::ZERO), (30, 20, 10, 20));
        // Each wake-up late (as poll's are): the health passes drift with it, the rest keeps its period
        // and still comes with them (`run` asserts it), with no wake-up of its own.
        for lag in [ms(1), ms(3)] {
            let (wakes, scans, passes, checks) = run(true, s(30), s(1), s(3000), lag);
            assert_eq!((scans, checks, wakes), (100, 100, scans + passes), "lag {lag:?}");
            let (wakes, scans, passes, _) = run(true, ms(1500), s(1), s(300), lag);
            assert_eq!((scans, wakes), (200, scans + passes), "lag {lag:?}");
        }
        // Discoveries more often than health passes: every one of them, health read by each, the check with
        // each (never later than a discovery).
        assert_eq!(run(true, ms(50), s(1), s(10), Duration::ZERO), (200, 200, 0, 200));
        // Long intervals: the check every minute, nothing pulled far forward.
        assert_eq!(run(true, s(3600), s(3600), s(3 * 3600), Duration::ZERO), (180, 3, 0, 180));
        // AWS units: the check alone, once a minute.
        assert_eq!(run(false, s(30), s(1), s(600), Duration::ZERO), (10, 0, 0, 10));
    }
}
