//! The registration thread: keeps our server socket alive and the kubelet aware of it.
//!
//! It claims our socket (waiting while another instance owns it, see `instance`), then (re)starts the server
//! on a fresh socket and registers whenever the kubelet comes back (`kubelet.sock` recreated), our socket is
//! deleted, a kubelet that stays up drops the last ListAndWatch stream, or SIGHUP asks for it. Register
//! calls run asynchronously, so this thread never blocks on a kubelet that does not answer and always
//! handles shutdown at once; a Register that a restart supersedes is cancelled.

use crate::api;
use crate::instance::{self, Claim, Ownership};
use crate::kubelet::{self, PendingRegister};
use crate::registry::SharedRegistry;
use crate::server::PluginServer;
use crossbeam_channel::{at, never, select, unbounded, Receiver, Sender};
use grpcio::Environment;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the rest of the daemon tells this thread.
#[derive(Debug)]
pub enum Event {
    /// `kubelet.sock` was created: a kubelet (re)started.
    KubeletSocketCreated,
    /// A file with our socket's name was deleted.
    OwnSocketDeleted,
    /// The kubelet closed the last ListAndWatch stream of the server of this generation.
    StreamsGone {
        generation: u64,
    },
    /// SIGHUP.
    Reregister,
    /// Periodic check, in case a filesystem event was missed.
    Tick,
    Shutdown,
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

pub struct Settings {
    pub dir: PathBuf,
    pub resource_name: String,
    /// Our socket's file name in `dir` (see `endpoint::socket_name`).
    pub socket_name: String,
}

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

struct Lifecycle {
    env: Arc<Environment>,
    settings: Settings,
    registry: SharedRegistry,
    events_tx: Sender<Event>,
    results_tx: Sender<(u64, Result<(), grpcio::Error>)>,
    /// The lock that makes the socket ours (see `instance`); None until we own it.
    owner: Option<Ownership>,
    /// While another instance owns the socket: where the waiting thread reports that we own it now.
    waiting: Option<Receiver<std::io::Result<Ownership>>>,
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

/// Which file is at a path: device, inode and change time. The time tells a new file from an old one that
/// happens to get the same inode number back (tmpfs and ext4 reuse them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId(u64, u64, i64, i64);

fn file_id(path: &std::path::Path) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|m| FileId(m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

/// Starts the thread. It stops serving, removes its socket and returns on `Event::Shutdown` (or when every
/// sender is gone).
pub fn spawn(
    env: Arc<Environment>,
    settings: Settings,
    registry: SharedRegistry,
) -> std::io::Result<(Sender<Event>, std::thread::JoinHandle<()>)> {
    let (events_tx, events) = unbounded();
    let (results_tx, results) = unbounded();
    let lifecycle = Lifecycle {
        env,
        settings,
        registry,
        events_tx: events_tx.clone(),
        results_tx,
        owner: None,
        waiting: None,
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
    };
    let handle =
        std::thread::Builder::new().name("registration".into()).spawn(move || lifecycle.run(events, results))?;
    Ok((events_tx, handle))
}

impl Lifecycle {
    fn socket(&self) -> PathBuf {
        self.settings.dir.join(&self.settings.socket_name)
    }

    fn kubelet_socket(&self) -> PathBuf {
        self.settings.dir.join(api::KUBELET_SOCKET)
    }

    fn run(mut self, events: Receiver<Event>, results: Receiver<(u64, Result<(), grpcio::Error>)>) {
        self.restart("starting");
        loop {
            let timer = self.retry_at.map(at).unwrap_or_else(never);
            let settled = self.restart_at.as_ref().map(|r| at(r.at)).unwrap_or_else(never);
            let owned = self.waiting.clone().unwrap_or_else(never);
            select! {
                recv(events) -> event => match event {
                    Ok(Event::Shutdown) | Err(_) => break,
                    Ok(event) => self.handle(event),
                },
                recv(results) -> result => {
                    if let Ok((attempt, result)) = result {
                        self.registered(attempt, result);
                    }
                },
                recv(settled) -> _ => self.settled(),
                recv(timer) -> _ => {
                    self.retry_at = None;
                    if self.server.is_some() {
                        self.register();
                    } else {
                        self.restart("retrying");
                    }
                },
                recv(owned) -> owned => self.took_over(owned.unwrap_or_else(|_| {
                    Err(std::io::Error::other("the thread waiting for the other instance ended"))
                })),
            }
        }
        if let Some(pending) = self.pending.take() {
            pending.cancel();
        }
        if let Some(server) = self.server.take() {
            server.stop();
            log::info!("stopped serving on {}", self.socket().display());
        }
        // Only now, with the socket gone, may a waiting instance take over.
        drop(self.owner.take());
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::KubeletSocketCreated => {
                self.schedule_restart("kubelet.sock was created: the kubelet restarted", Condition::KubeletNotDialed)
            }
            Event::OwnSocketDeleted => {
                // Our own restarts delete the old socket too; only a socket that is really gone matters.
                if !self.server.as_ref().is_some_and(PluginServer::socket_intact) {
                    self.schedule_restart("our socket was deleted", Condition::Always);
                }
            }
            Event::StreamsGone { generation } if generation == self.generation => {
                self.schedule_restart("the kubelet closed its last ListAndWatch stream", Condition::KubeletStayed)
            }
            Event::StreamsGone { .. } => {}
            Event::Reregister => self.schedule_restart("SIGHUP", Condition::Always),
            Event::Tick => self.check(),
            Event::Shutdown => {}
        }
    }

    /// The fallback for missed filesystem events: compare what is on disk with what we registered.
    fn check(&mut self) {
        if self.owner.as_ref().is_some_and(|o| !o.intact()) {
            self.replace_lock();
        }
        if let Some(server) = &self.server {
            if !server.socket_intact() {
                return self.schedule_restart("our socket is gone", Condition::Always);
            }
        }
        if let (Some(registered), Some(now)) = (self.registered_with, file_id(&self.kubelet_socket())) {
            if now != registered {
                self.schedule_restart("kubelet.sock was replaced: the kubelet restarted", Condition::Always);
            }
        }
    }

    /// Our lock file was removed (by hand: nothing of ours or the kubelet's removes it), so a new instance
    /// could lock a new one. Lock a new one ourselves while we keep serving; only then let the old one go.
    fn replace_lock(&mut self) {
        let socket = self.socket();
        match instance::relock(&self.settings.dir, &self.settings.socket_name) {
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

    fn settled(&mut self) {
        let Some(pending) = self.restart_at.take() else { return };
        if let Some((why, _)) = pending.reasons.iter().find(|(_, condition)| self.holds(*condition)) {
            return self.restart(why);
        }
        let whys: Vec<&str> = pending.reasons.iter().map(|(why, _)| *why).collect();
        if self.dialed_current_kubelet() {
            log::debug!("{}; the kubelet already has our latest Register", whys.join("; "));
        } else {
            // The kubelet went away: forget it, so that whatever comes back is new to us.
            self.registered_with = None;
            self.dialed = None;
            log::info!(
                "{}; the kubelet at {} is gone: registering again when it is back",
                whys.join("; "),
                self.kubelet_socket().display()
            );
        }
    }

    fn holds(&self, condition: Condition) -> bool {
        match condition {
            Condition::Always => true,
            Condition::KubeletStayed => self.kubelet_stayed(),
            Condition::KubeletNotDialed => !self.dialed_current_kubelet(),
        }
    }

    /// Whether the kubelet we registered with still answers at the same `kubelet.sock`.
    fn kubelet_stayed(&self) -> bool {
        let socket = self.kubelet_socket();
        self.registered_with.is_some() && file_id(&socket) == self.registered_with && crate::endpoint::is_live(&socket)
    }

    /// Whether our server runs and our latest Register went to the `kubelet.sock` that is there now.
    fn dialed_current_kubelet(&self) -> bool {
        self.server.is_some() && self.dialed.is_some() && file_id(&self.kubelet_socket()) == self.dialed
    }

    /// Serves on a fresh socket, then registers (the kubelet dials us during Register). Claims the socket
    /// first if it is not ours yet.
    fn restart(&mut self, why: &str) {
        self.restart_at = None;
        if self.waiting.is_some() {
            return; // another instance serves: nothing to restart until it stops
        }
        if let Some(pending) = self.pending.take() {
            pending.cancel();
        }
        if let Some(server) = self.server.take() {
            server.stop();
        }
        self.registered_with = None;
        self.dialed = None;
        if self.owner.is_none() && !self.claim() {
            return;
        }
        self.generation += 1;
        let socket = self.socket();
        // While attempts keep failing, they are logged at debug like their failures.
        let level = if self.failures == 0 { log::Level::Info } else { log::Level::Debug };
        log::log!(level, "serving {} on {} ({why})", self.settings.resource_name, socket.display());
        match PluginServer::start(
            Arc::clone(&self.env),
            &socket,
            Arc::clone(&self.registry),
            self.events_tx.clone(),
            self.generation,
        ) {
            Ok(server) => {
                self.server = Some(server);
                self.retry_in = FIRST_RETRY;
                self.register();
            }
            Err(e) => {
                self.failed(log::Level::Warn, format_args!("cannot serve on {}: {e}", socket.display()));
            }
        }
    }

    /// Takes ownership of our socket, or starts waiting for the instance that has it. True if ours.
    fn claim(&mut self) -> bool {
        let socket = self.socket();
        match instance::claim(&self.settings.dir, &self.settings.socket_name, &self.settings.resource_name) {
            Ok(Claim::Owned(owner)) => {
                log::debug!("own {} (lock {})", socket.display(), owner.path().display());
                self.owner = Some(owner);
                kubelet::remove_stale_sockets(&self.settings.dir, &self.settings.socket_name);
                true
            }
            Ok(claim) => {
                let who = match claim {
                    Claim::Answering => "a process that holds no lock (an older version of this plugin)",
                    _ => "another instance",
                };
                log::info!(
                    "{who} serves {} on {}; waiting for it to stop",
                    self.settings.resource_name,
                    socket.display()
                );
                self.wait_for_owner();
                false
            }
            Err(e) => {
                self.failed(log::Level::Warn, format_args!("cannot serve on {}: {e}", socket.display()));
                false
            }
        }
    }

    fn wait_for_owner(&mut self) {
        let (tx, rx) = unbounded();
        let (dir, name, resource) =
            (self.settings.dir.clone(), self.settings.socket_name.clone(), self.settings.resource_name.clone());
        let spawned = std::thread::Builder::new().name("wait-for-owner".into()).spawn(move || {
            let _ = tx.send(instance::wait(&dir, &name, &resource));
        });
        match spawned {
            Ok(_) => self.waiting = Some(rx),
            Err(e) => {
                self.failed(log::Level::Warn, format_args!("cannot start a thread to wait for the other instance: {e}"))
            }
        }
    }

    fn took_over(&mut self, owned: std::io::Result<Ownership>) {
        self.waiting = None;
        match owned {
            Ok(owner) => {
                log::info!("the other instance has stopped: taking over {}", self.socket().display());
                self.owner = Some(owner);
                kubelet::remove_stale_sockets(&self.settings.dir, &self.settings.socket_name);
                self.restart("took over from the other instance");
            }
            Err(e) => {
                let socket = self.socket();
                self.failed(log::Level::Warn, format_args!("cannot serve on {}: {e}", socket.display()));
            }
        }
    }

    fn register(&mut self) {
        self.retry_at = None;
        if let Some(pending) = self.pending.take() {
            pending.cancel();
        }
        self.attempt += 1;
        let attempt = self.attempt;
        // Before dialing: a kubelet.sock replaced in between is seen as new, so at worst registered twice.
        self.dialed = file_id(&self.kubelet_socket());
        let req = kubelet::register_request(&self.settings.resource_name, &self.settings.socket_name);
        let results = self.results_tx.clone();
        self.pending = kubelet::register_async(&self.env, &self.kubelet_socket(), &req, move |result| {
            let _ = results.send((attempt, result));
        });
    }

    fn registered(&mut self, attempt: u64, result: Result<(), grpcio::Error>) {
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
                    self.settings.resource_name,
                    self.kubelet_socket().display(),
                    self.settings.socket_name
                );
            }
            Err(e) => {
                let kubelet = self.kubelet_socket();
                let why = describe(&e, &kubelet);
                self.failed(
                    log::Level::Info,
                    format_args!("cannot register with the kubelet at {}: {why}", kubelet.display()),
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
