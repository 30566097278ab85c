//! The registration thread: keeps our sockets alive and the kubelet aware of them, one endpoint per
//! resource.
//!
//! For each resource it claims the socket (waiting while another instance owns it, see `instance`), then
//! (re)starts the server on a fresh socket and registers whenever the kubelet comes back (`kubelet.sock`
//! recreated: every resource), the resource's socket is deleted, a kubelet that stays up drops the
//! resource's last ListAndWatch stream, or SIGHUP asks for it (every resource). Register calls run
//! asynchronously, so this thread never blocks on a kubelet that does not answer and always handles shutdown
//! at once; a Register that a restart supersedes is cancelled.

use crate::api;
use crate::instance::{self, Claim, Ownership};
use crate::kubelet::{self, PendingRegister};
use crate::registry::SharedRegistry;
use crate::server::PluginServer;
use crossbeam_channel::{at, never, select, unbounded, Receiver, Sender};
use grpcio::Environment;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the rest of the daemon tells this thread.
#[derive(Debug)]
pub enum Event {
    /// `kubelet.sock` was created: a kubelet (re)started.
    KubeletSocketCreated,
    /// A file with one of our socket names (`endpoint::is_ours`) was deleted.
    SocketDeleted(String),
    /// The kubelet closed the last ListAndWatch stream of the resource's server of this generation.
    StreamsGone {
        resource: String,
        generation: u64,
    },
    /// A resource to serve from now on (the auto resource of an AFU that appeared).
    Serve(Resource),
    /// SIGHUP.
    Reregister,
    /// Periodic check, in case a filesystem event was missed.
    Tick,
    Shutdown,
}

/// A resource to serve: its name, its socket's file name in the device-plugins directory (see
/// `endpoint::socket_name`) and its registry.
#[derive(Clone)]
pub struct Resource {
    pub name: String,
    pub socket_name: String,
    pub registry: SharedRegistry,
    /// With `--cdi-spec-dir`: the resource's spec file, written once the socket is ours; containers then
    /// get CDI devices.
    pub cdi: Option<Arc<crate::cdi::SpecFile>>,
}

impl std::fmt::Debug for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Resource({}, {})", self.name, self.socket_name)
    }
}

/// A kubelet restart is a burst of events (streams cut, sockets deleted, kubelet.sock created): they are
/// gathered for this long and answered with one restart. Restarting once per event would replace our socket
/// while the kubelet may be dialing it, and a failed dial costs a kubelet a second of reconnect backoff.
const SETTLE: Duration = Duration::from_millis(15);

/// A closed stream alone waits longer: a kubelet going down closes its streams a moment before its socket
/// stops answering, and this long tells one that dropped us from one that is going away. Any other event of
/// the burst (our socket deleted, a new kubelet.sock) brings the restart back to `SETTLE`.
const STREAMS_GONE_SETTLE: Duration = Duration::from_millis(100);

/// Backoff between failed attempts while the kubelet is absent or refuses us.
const FIRST_RETRY: Duration = Duration::from_millis(50);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// A restart asked for, done when the burst of events has settled.
struct PendingRestart {
    at: Instant,
    /// Every reason given during the burst: the restart happens if one of them still holds then.
    reasons: Vec<(&'static str, Condition)>,
}

/// When a reason for a restart still holds once the burst has settled. A kubelet restart shows up as
/// several events, some of which are ambiguous on their own; these conditions make one kubelet restart
/// cause one Register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Condition {
    Always,
    /// A closed stream: only if the kubelet we registered with is still there (it dropped us). If it has
    /// gone away, it is restarting, and its new `kubelet.sock` will be another event.
    KubeletStayed,
    /// A new `kubelet.sock`: only if our latest Register did not already dial it (a restart for another
    /// event of the same burst may have reached the new kubelet first).
    KubeletNotDialed,
}

/// Which file is at a path: device, inode and change time. The time tells a new file from an old one that
/// happens to get the same inode number back (tmpfs and ext4 reuse them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId(u64, u64, i64, i64);

fn file_id(path: &std::path::Path) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|m| FileId(m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

/// What every endpoint shares: the gRPC environment, the directory, and the channels back to this thread.
struct Ctx {
    env: Arc<Environment>,
    dir: PathBuf,
    events_tx: Sender<Event>,
    /// (resource, attempt, outcome) of each Register.
    results_tx: Sender<(String, u64, Result<(), grpcio::Error>)>,
    /// (resource, ownership) from the threads that wait for another instance to stop.
    owned_tx: Sender<(String, std::io::Result<Ownership>)>,
}

/// One resource's socket, server and registration state.
struct Endpoint {
    resource: String,
    socket_name: String,
    registry: SharedRegistry,
    cdi: Option<Arc<crate::cdi::SpecFile>>,
    /// The lock that makes the socket ours (see `instance`); None until we own it.
    owner: Option<Ownership>,
    /// Whether a thread waits for another instance to release the socket.
    waiting: bool,
    /// Held back until the primary resource's socket is ours (see `Lifecycle::primary`).
    held_back: bool,
    server: Option<PluginServer>,
    /// Bumped on every server start; events from older servers are ignored.
    generation: u64,
    /// Bumped on every Register; only the latest attempt's result counts.
    attempt: u64,
    /// The latest Register, while it is in flight: cancelled when a restart supersedes it.
    pending: Option<PendingRegister>,
    retry_in: Duration,
    /// When to try again after a failure.
    retry_at: Option<Instant>,
    restart_at: Option<PendingRestart>,
    /// Failures in a row, to log the first at info and the rest at debug.
    failures: u32,
    /// The kubelet.sock our latest Register dialed (as found just before dialing), and the one we are
    /// registered with.
    dialed: Option<FileId>,
    registered_with: Option<FileId>,
}

struct Lifecycle {
    ctx: Ctx,
    endpoints: BTreeMap<String, Endpoint>,
    /// The default resource. Its lock is the instance's: the other resources wait until it is ours, so that
    /// during a surge upgrade the new process advertises nothing while the old one still lists every port.
    primary: String,
}

/// Starts the thread, serving `resources` (more can come with `Event::Serve`); `primary` is the default
/// resource, which is claimed first. It stops serving, removes the sockets and returns on `Event::Shutdown`
/// (or when every sender is gone).
pub fn spawn(
    env: Arc<Environment>,
    dir: PathBuf,
    primary: String,
    resources: Vec<Resource>,
) -> std::io::Result<(Sender<Event>, std::thread::JoinHandle<()>)> {
    let (events_tx, events) = unbounded();
    let (results_tx, results) = unbounded();
    let (owned_tx, owned) = unbounded();
    let ctx = Ctx { env, dir, events_tx: events_tx.clone(), results_tx, owned_tx };
    let mut lifecycle = Lifecycle { ctx, endpoints: BTreeMap::new(), primary };
    for resource in resources {
        lifecycle.add(resource);
    }
    let handle =
        std::thread::Builder::new().name("registration".into()).spawn(move || lifecycle.run(events, results, owned))?;
    Ok((events_tx, handle))
}

impl Lifecycle {
    /// A new endpoint, held back unless it is the primary or the primary's socket is ours already. Refused
    /// (logged) if its socket name is another resource's: two resources' names can hash alike.
    fn add(&mut self, resource: Resource) -> Option<&mut Endpoint> {
        if self.endpoints.contains_key(&resource.name) {
            return None;
        }
        if let Some(other) = self.endpoints.values().find(|e| e.socket_name == resource.socket_name) {
            log::error!(
                "cannot serve {}: its socket name {} is the one of {} (a hash collision)",
                resource.name,
                resource.socket_name,
                other.resource
            );
            return None;
        }
        let held_back = resource.name != self.primary && !self.primary_owned();
        let name = resource.name.clone();
        let endpoint = self.endpoints.entry(name).or_insert_with(|| Endpoint::new(resource));
        endpoint.held_back = held_back;
        Some(endpoint)
    }

    fn primary_owned(&self) -> bool {
        self.endpoints.get(&self.primary).is_some_and(|e| e.owner.is_some())
    }

    /// Once the primary's socket is ours, the other resources start.
    fn release_held(&mut self) {
        if !self.primary_owned() {
            return;
        }
        for endpoint in self.endpoints.values_mut().filter(|e| e.held_back) {
            endpoint.held_back = false;
            endpoint.restart(&self.ctx, "starting");
        }
    }

    fn run(
        mut self,
        events: Receiver<Event>,
        results: Receiver<(String, u64, Result<(), grpcio::Error>)>,
        owned: Receiver<(String, std::io::Result<Ownership>)>,
    ) {
        let primary = self.primary.clone();
        if let Some(endpoint) = self.endpoints.get_mut(&primary) {
            endpoint.restart(&self.ctx, "starting");
        }
        self.release_held();
        loop {
            let next = self.endpoints.values().filter_map(Endpoint::deadline).min();
            let timer = next.map(at).unwrap_or_else(never);
            let (ctx, endpoints) = (&self.ctx, &mut self.endpoints);
            select! {
                recv(events) -> event => match event {
                    Ok(Event::Shutdown) | Err(_) => break,
                    Ok(Event::Serve(resource)) => {
                        let name = resource.name.clone();
                        if self.add(resource).is_some() {
                            let (ctx, endpoints) = (&self.ctx, &mut self.endpoints);
                            if let Some(endpoint) = endpoints.get_mut(&name).filter(|e| !e.held_back) {
                                endpoint.restart(ctx, "a new resource");
                            }
                        }
                    }
                    Ok(event) => Self::handle(ctx, endpoints, event),
                },
                recv(results) -> result => {
                    if let Ok((resource, attempt, result)) = result {
                        if let Some(endpoint) = endpoints.get_mut(&resource) {
                            endpoint.registered(ctx, attempt, result);
                        }
                    }
                },
                recv(owned) -> owned => {
                    if let Ok((resource, owned)) = owned {
                        if let Some(endpoint) = endpoints.get_mut(&resource) {
                            endpoint.took_over(ctx, owned);
                        }
                    }
                },
                recv(timer) -> _ => {
                    let now = Instant::now();
                    for endpoint in endpoints.values_mut() {
                        endpoint.on_time(ctx, now);
                    }
                },
            }
            self.release_held();
        }
        for endpoint in std::mem::take(&mut self.endpoints).into_values() {
            endpoint.shut_down(&self.ctx);
        }
    }

    fn handle(ctx: &Ctx, endpoints: &mut BTreeMap<String, Endpoint>, event: Event) {
        match event {
            Event::KubeletSocketCreated => {
                for endpoint in endpoints.values_mut() {
                    endpoint.schedule_restart(
                        "kubelet.sock was created: the kubelet restarted",
                        Condition::KubeletNotDialed,
                    );
                }
            }
            Event::SocketDeleted(name) => {
                // Our own restarts delete the old socket too; only a socket that is really gone matters.
                if let Some(endpoint) = endpoints.values_mut().find(|e| e.socket_name == name) {
                    if !endpoint.server.as_ref().is_some_and(PluginServer::socket_intact) {
                        endpoint.schedule_restart("our socket was deleted", Condition::Always);
                    }
                }
            }
            Event::StreamsGone { resource, generation } => {
                if let Some(endpoint) = endpoints.get_mut(&resource).filter(|e| e.generation == generation) {
                    endpoint
                        .schedule_restart("the kubelet closed its last ListAndWatch stream", Condition::KubeletStayed);
                }
            }
            Event::Serve(_) => {} // handled by `run`, which can add endpoints
            Event::Reregister => {
                for endpoint in endpoints.values_mut() {
                    endpoint.schedule_restart("SIGHUP", Condition::Always);
                }
            }
            Event::Tick => {
                for endpoint in endpoints.values_mut() {
                    endpoint.check(ctx);
                }
            }
            Event::Shutdown => {}
        }
    }
}

impl Endpoint {
    fn new(resource: Resource) -> Endpoint {
        Endpoint {
            resource: resource.name,
            socket_name: resource.socket_name,
            registry: resource.registry,
            cdi: resource.cdi,
            owner: None,
            waiting: false,
            held_back: false,
            server: None,
            generation: 0,
            attempt: 0,
            pending: None,
            retry_in: FIRST_RETRY,
            retry_at: None,
            restart_at: None,
            failures: 0,
            dialed: None,
            registered_with: None,
        }
    }

    fn socket(&self, ctx: &Ctx) -> PathBuf {
        ctx.dir.join(&self.socket_name)
    }

    fn kubelet_socket(ctx: &Ctx) -> PathBuf {
        ctx.dir.join(api::KUBELET_SOCKET)
    }

    /// The earliest time this endpoint has something to do.
    fn deadline(&self) -> Option<Instant> {
        [self.retry_at, self.restart_at.as_ref().map(|r| r.at)].into_iter().flatten().min()
    }

    /// Does what is due at `now`: a settled restart, a retry.
    fn on_time(&mut self, ctx: &Ctx, now: Instant) {
        if self.restart_at.as_ref().is_some_and(|r| r.at <= now) {
            self.settled(ctx);
        }
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            if self.server.is_some() {
                self.register(ctx);
            } else {
                self.restart(ctx, "retrying");
            }
        }
    }

    /// Stops serving; only then, with the socket gone, may a waiting instance take over.
    fn shut_down(mut self, ctx: &Ctx) {
        if let Some(pending) = self.pending.take() {
            pending.cancel();
        }
        if let Some(server) = self.server.take() {
            server.stop();
            log::info!("stopped serving {} on {}", self.resource, self.socket(ctx).display());
        }
        drop(self.owner.take());
    }

    /// The fallback for missed filesystem events: compare what is on disk with what we registered.
    fn check(&mut self, ctx: &Ctx) {
        if self.owner.as_ref().is_some_and(|o| !o.intact()) {
            self.replace_lock(ctx);
        }
        if let Some(server) = &self.server {
            if !server.socket_intact() {
                return self.schedule_restart("our socket is gone", Condition::Always);
            }
        }
        let kubelet = file_id(&Self::kubelet_socket(ctx));
        if let (Some(registered), Some(now)) = (self.registered_with, kubelet) {
            if now != registered {
                self.schedule_restart("kubelet.sock was replaced: the kubelet restarted", Condition::Always);
            }
        }
        // The kubelet went away and was forgotten (see `settled`), and nothing is under way to register
        // again: a kubelet.sock there now is a new kubelet whose creation inotify did not report.
        let idle = self.pending.is_none() && self.retry_at.is_none() && self.restart_at.is_none();
        if self.server.is_some() && self.registered_with.is_none() && idle && kubelet.is_some() {
            self.schedule_restart(
                "kubelet.sock is there and we are not registered: the kubelet restarted",
                Condition::KubeletNotDialed,
            );
        }
    }

    /// Our lock file was removed (by hand: nothing of ours or the kubelet's removes it), so a new instance
    /// could lock a new one. Lock a new one ourselves while we keep serving; only then let the old one go.
    fn replace_lock(&mut self, ctx: &Ctx) {
        let socket = self.socket(ctx);
        match instance::relock(&ctx.dir, &self.socket_name) {
            Ok(Some(owner)) => {
                log::warn!(
                    "the lock file of {} was removed; locked a new one at {}",
                    socket.display(),
                    owner.path().display()
                );
                self.owner = Some(owner);
            }
            Ok(None) => log::warn!(
                "the lock file of {} was removed and another process locked the new one; it waits while we serve",
                socket.display()
            ),
            Err(e) => log::warn!("the lock file of {} was removed and cannot be made again: {e}", socket.display()),
        }
    }

    fn schedule_restart(&mut self, why: &'static str, condition: Condition) {
        let settle = if condition == Condition::KubeletStayed { STREAMS_GONE_SETTLE } else { SETTLE };
        let at = Instant::now() + settle;
        let pending = self.restart_at.get_or_insert_with(|| PendingRestart { at, reasons: Vec::new() });
        pending.at = pending.at.min(at);
        pending.reasons.push((why, condition));
    }

    fn settled(&mut self, ctx: &Ctx) {
        let Some(pending) = self.restart_at.take() else { return };
        if let Some((why, _)) = pending.reasons.iter().find(|(_, condition)| self.holds(ctx, *condition)) {
            return self.restart(ctx, why);
        }
        let whys: Vec<&str> = pending.reasons.iter().map(|(why, _)| *why).collect();
        if self.dialed_current_kubelet(ctx) {
            log::debug!("{}: {}; the kubelet already has our latest Register", self.resource, whys.join("; "));
        } else {
            // The kubelet went away: forget it, so that whatever comes back is new to us.
            self.registered_with = None;
            self.dialed = None;
            log::info!(
                "{}: {}; the kubelet at {} is gone: registering again when it is back",
                self.resource,
                whys.join("; "),
                Self::kubelet_socket(ctx).display()
            );
        }
    }

    fn holds(&self, ctx: &Ctx, condition: Condition) -> bool {
        match condition {
            Condition::Always => true,
            Condition::KubeletStayed => self.kubelet_stayed(ctx),
            Condition::KubeletNotDialed => !self.dialed_current_kubelet(ctx),
        }
    }

    /// Whether the kubelet we registered with still answers at the same `kubelet.sock`.
    fn kubelet_stayed(&self, ctx: &Ctx) -> bool {
        let socket = Self::kubelet_socket(ctx);
        self.registered_with.is_some() && file_id(&socket) == self.registered_with && crate::endpoint::is_live(&socket)
    }

    /// Whether our server runs and our latest Register went to the `kubelet.sock` that is there now.
    fn dialed_current_kubelet(&self, ctx: &Ctx) -> bool {
        self.server.is_some() && self.dialed.is_some() && file_id(&Self::kubelet_socket(ctx)) == self.dialed
    }

    /// Serves on a fresh socket, then registers (the kubelet dials us during Register). Claims the socket
    /// first if it is not ours yet.
    fn restart(&mut self, ctx: &Ctx, why: &str) {
        self.restart_at = None;
        if self.waiting || self.held_back {
            return; // another instance serves, or the primary is not ours yet: nothing to restart
        }
        if let Some(pending) = self.pending.take() {
            pending.cancel();
        }
        if let Some(server) = self.server.take() {
            server.stop();
        }
        self.registered_with = None;
        self.dialed = None;
        if self.owner.is_none() && !self.claim(ctx) {
            return;
        }
        self.generation += 1;
        let socket = self.socket(ctx);
        // While attempts keep failing, they are logged at debug like their failures.
        let level = if self.failures == 0 { log::Level::Info } else { log::Level::Debug };
        log::log!(level, "serving {} on {} ({why})", self.resource, socket.display());
        match PluginServer::start(
            Arc::clone(&ctx.env),
            &socket,
            Arc::clone(&self.registry),
            streams_gone(ctx, &self.resource),
            &self.resource,
            self.cdi.clone(),
            self.generation,
        ) {
            Ok(server) => {
                self.server = Some(server);
                self.retry_in = FIRST_RETRY;
                self.register(ctx);
            }
            Err(e) => {
                self.failed(log::Level::Warn, format_args!("cannot serve on {}: {e}", socket.display()));
            }
        }
    }

    /// Takes ownership of our socket, or starts waiting for the instance that has it. True if ours.
    fn claim(&mut self, ctx: &Ctx) -> bool {
        let socket = self.socket(ctx);
        match instance::claim(&ctx.dir, &self.socket_name, &self.resource) {
            Ok(Claim::Owned(owner)) => {
                log::debug!("own {} (lock {})", socket.display(), owner.path().display());
                self.owner = Some(owner);
                self.owned();
                kubelet::remove_stale_sockets(&ctx.dir, &self.socket_name);
                true
            }
            Ok(claim) => {
                let who = match claim {
                    Claim::Answering => "a process that holds no lock (an older version of this plugin)",
                    _ => "another instance",
                };
                log::info!("{who} serves {} on {}; waiting for it to stop", self.resource, socket.display());
                self.wait_for_owner(ctx);
                false
            }
            Err(e) => {
                self.failed(log::Level::Warn, format_args!("cannot serve on {}: {e}", socket.display()));
                false
            }
        }
    }

    /// The socket became ours: so is the CDI spec file, written before the server starts.
    fn owned(&self) {
        if let Some(spec) = &self.cdi {
            spec.own();
        }
    }

    fn wait_for_owner(&mut self, ctx: &Ctx) {
        let tx = ctx.owned_tx.clone();
        let (dir, name, resource) = (ctx.dir.clone(), self.socket_name.clone(), self.resource.clone());
        let spawned = std::thread::Builder::new().name("wait-for-owner".into()).spawn(move || {
            // Always report back, even on a panic: the endpoint would otherwise wait forever.
            let owned = std::panic::catch_unwind(|| instance::wait(&dir, &name, &resource))
                .unwrap_or_else(|_| Err(std::io::Error::other("the thread waiting for the other instance panicked")));
            let _ = tx.send((resource, owned));
        });
        match spawned {
            Ok(_) => self.waiting = true,
            Err(e) => {
                self.failed(log::Level::Warn, format_args!("cannot start a thread to wait for the other instance: {e}"))
            }
        }
    }

    fn took_over(&mut self, ctx: &Ctx, owned: std::io::Result<Ownership>) {
        self.waiting = false;
        match owned {
            Ok(owner) => {
                log::info!("the other instance has stopped: taking over {}", self.socket(ctx).display());
                self.owner = Some(owner);
                self.owned();
                kubelet::remove_stale_sockets(&ctx.dir, &self.socket_name);
                self.restart(ctx, "took over from the other instance");
            }
            Err(e) => {
                let socket = self.socket(ctx);
                self.failed(log::Level::Warn, format_args!("cannot serve on {}: {e}", socket.display()));
            }
        }
    }

    fn register(&mut self, ctx: &Ctx) {
        self.retry_at = None;
        if let Some(pending) = self.pending.take() {
            pending.cancel();
        }
        self.attempt += 1;
        let attempt = self.attempt;
        // Before dialing: a kubelet.sock replaced in between is seen as new, so at worst registered twice.
        self.dialed = file_id(&Self::kubelet_socket(ctx));
        let req = kubelet::register_request(&self.resource, &self.socket_name);
        let results = ctx.results_tx.clone();
        let resource = self.resource.clone();
        self.pending = kubelet::register_async(&ctx.env, &Self::kubelet_socket(ctx), &req, move |result| {
            let _ = results.send((resource, attempt, result));
        });
    }

    fn registered(&mut self, ctx: &Ctx, attempt: u64, result: Result<(), grpcio::Error>) {
        if attempt != self.attempt {
            return;
        }
        self.pending = None;
        match result {
            Ok(()) => {
                self.registered_with = self.dialed;
                self.failures = 0;
                self.retry_in = FIRST_RETRY;
                log::info!(
                    "registered {} with the kubelet at {} (endpoint {})",
                    self.resource,
                    Self::kubelet_socket(ctx).display(),
                    self.socket_name
                );
            }
            Err(e) => {
                let kubelet = Self::kubelet_socket(ctx);
                let why = describe(&e, &kubelet);
                let resource = self.resource.clone();
                self.failed(
                    log::Level::Info,
                    format_args!("cannot register {resource} with the kubelet at {}: {why}", kubelet.display()),
                );
            }
        }
    }

    /// Logs a failure (the first of a row at `level`, the rest at debug) and schedules a retry.
    fn failed(&mut self, level: log::Level, what: std::fmt::Arguments) {
        self.failures += 1;
        if self.failures == 1 {
            log::log!(
                level,
                "{what}; retrying with backoff up to {}s, further failures are logged at debug level",
                MAX_RETRY.as_secs()
            );
        } else {
            log::debug!("{what} (failure {} in a row)", self.failures);
        }
        self.retry_at = Some(Instant::now() + self.retry_in);
        self.retry_in = (self.retry_in * 2).min(MAX_RETRY);
    }
}

/// The server's callback for a closed last stream: an event for this thread.
fn streams_gone(ctx: &Ctx, resource: &str) -> crate::server::StreamsGone {
    let (events, resource) = (ctx.events_tx.clone(), resource.to_string());
    Arc::new(move |generation| {
        let _ = events.send(Event::StreamsGone { resource: resource.clone(), generation });
    })
}

/// Why a Register failed, in our words where gRPC's are about its internals ("failed to connect to all
/// addresses"): what is at `kubelet.sock` tells a missing or dead kubelet from one that answered with an error.
fn describe(e: &grpcio::Error, kubelet_socket: &std::path::Path) -> String {
    use grpcio::RpcStatusCode;
    match e {
        grpcio::Error::RpcFailure(status) if status.code() == RpcStatusCode::UNAVAILABLE => {
            if !kubelet_socket.exists() {
                "kubelet.sock does not exist (the kubelet is not running, or is restarting)".to_string()
            } else if !crate::endpoint::is_live(kubelet_socket) {
                "nothing listens on kubelet.sock (the kubelet is not running, or is restarting)".to_string()
            } else {
                format!("the connection failed: {}", status.message())
            }
        }
        grpcio::Error::RpcFailure(status) if status.code() == RpcStatusCode::DEADLINE_EXCEEDED => {
            format!("no answer within {} s (DEADLINE_EXCEEDED)", kubelet::REGISTER_TIMEOUT.as_secs())
        }
        grpcio::Error::RpcFailure(status) if !status.message().is_empty() => {
            format!("the kubelet answered {:?}: {}", status.code(), status.message())
        }
        grpcio::Error::RpcFailure(status) => format!("the kubelet answered {:?}", status.code()),
        other => other.to_string(),
    }
}
