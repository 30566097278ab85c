//! The registration thread: keeps our server socket alive and the kubelet aware of it.
//!
//! It (re)starts the server on a fresh socket and registers whenever the kubelet comes back (`kubelet.sock`
//! recreated), our socket is deleted, the last ListAndWatch stream is dropped by the kubelet, or SIGHUP asks
//! for it. Register calls run asynchronously, so this thread never blocks on a kubelet that does not answer
//! and always handles shutdown at once.

use crate::api;
use crate::kubelet;
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

/// Backoff between failed attempts while the kubelet is absent or refuses us.
const FIRST_RETRY: Duration = Duration::from_millis(50);
const MAX_RETRY: Duration = Duration::from_secs(5);

pub struct Settings {
    pub dir: PathBuf,
    pub resource_name: String,
}

struct Lifecycle {
    env: Arc<Environment>,
    settings: Settings,
    socket_name: String,
    registry: SharedRegistry,
    events_tx: Sender<Event>,
    results_tx: Sender<(u64, Result<(), grpcio::Error>)>,
    server: Option<PluginServer>,
    /// Bumped on every server start; events from older servers are ignored.
    generation: u64,
    /// Bumped on every Register; only the latest attempt's result counts.
    attempt: u64,
    retry_in: Duration,
    /// When to try again after a failure.
    retry_at: Option<Instant>,
    /// A restart asked for, with its first reason: done when the burst of events has settled.
    restart_at: Option<(Instant, &'static str)>,
    /// Failures in a row, to log the first at info and the rest at debug.
    failures: u32,
    /// Inode of the kubelet.sock we registered with.
    registered_with: Option<u64>,
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
        socket_name: kubelet::socket_name(&settings.resource_name),
        settings,
        registry,
        events_tx: events_tx.clone(),
        results_tx,
        server: None,
        generation: 0,
        attempt: 0,
        retry_in: FIRST_RETRY,
        retry_at: None,
        restart_at: None,
        failures: 0,
        registered_with: None,
    };
    let handle =
        std::thread::Builder::new().name("registration".into()).spawn(move || lifecycle.run(events, results))?;
    Ok((events_tx, handle))
}

impl Lifecycle {
    fn socket(&self) -> PathBuf {
        self.settings.dir.join(&self.socket_name)
    }

    fn kubelet_socket(&self) -> PathBuf {
        self.settings.dir.join(api::KUBELET_SOCKET)
    }

    fn run(mut self, events: Receiver<Event>, results: Receiver<(u64, Result<(), grpcio::Error>)>) {
        self.restart("starting");
        loop {
            let timer = self.retry_at.map(at).unwrap_or_else(never);
            let settled = self.restart_at.map(|(when, _)| at(when)).unwrap_or_else(never);
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
                recv(settled) -> _ => {
                    if let Some((_, why)) = self.restart_at.take() {
                        self.restart(why);
                    }
                },
                recv(timer) -> _ => {
                    self.retry_at = None;
                    if self.server.is_some() {
                        self.register();
                    } else {
                        self.restart("retrying");
                    }
                },
            }
        }
        if let Some(server) = self.server.take() {
            server.stop();
            log::info!("stopped serving on {}", self.socket().display());
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::KubeletSocketCreated => self.schedule_restart("kubelet.sock was created: the kubelet restarted"),
            Event::OwnSocketDeleted => {
                // Our own restarts delete the old socket too; only a socket that is really gone matters.
                if !self.server.as_ref().is_some_and(PluginServer::socket_intact) {
                    self.schedule_restart("our socket was deleted");
                }
            }
            Event::StreamsGone { generation } if generation == self.generation => {
                self.schedule_restart("the kubelet closed its last ListAndWatch stream")
            }
            Event::StreamsGone { .. } => {}
            Event::Reregister => self.schedule_restart("SIGHUP"),
            Event::Tick => self.check(),
            Event::Shutdown => {}
        }
    }

    /// The fallback for missed filesystem events: compare what is on disk with what we registered.
    fn check(&mut self) {
        if let Some(server) = &self.server {
            if !server.socket_intact() {
                return self.schedule_restart("our socket is gone");
            }
        }
        if let (Some(registered), Ok(meta)) = (self.registered_with, std::fs::metadata(self.kubelet_socket())) {
            if meta.ino() != registered {
                self.schedule_restart("kubelet.sock was replaced: the kubelet restarted");
            }
        }
    }

    fn schedule_restart(&mut self, why: &'static str) {
        if self.restart_at.is_none() {
            self.restart_at = Some((Instant::now() + SETTLE, why));
        }
    }

    /// Serves on a fresh socket, then registers (the kubelet dials us during Register).
    fn restart(&mut self, why: &str) {
        self.restart_at = None;
        if let Some(server) = self.server.take() {
            server.stop();
        }
        self.registered_with = None;
        self.generation += 1;
        let socket = self.socket();
        log::info!("serving on {} ({why})", socket.display());
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

    fn register(&mut self) {
        self.retry_at = None;
        self.attempt += 1;
        let attempt = self.attempt;
        let req = kubelet::register_request(&self.settings.resource_name, &self.socket_name);
        let results = self.results_tx.clone();
        kubelet::register_async(&self.env, &self.kubelet_socket(), &req, move |result| {
            let _ = results.send((attempt, result));
        });
    }

    fn registered(&mut self, attempt: u64, result: Result<(), grpcio::Error>) {
        if attempt != self.attempt {
            return;
        }
        match result {
            Ok(()) => {
                self.registered_with = std::fs::metadata(self.kubelet_socket()).ok().map(|m| m.ino());
                self.failures = 0;
                self.retry_in = FIRST_RETRY;
                log::info!(
                    "registered {} with the kubelet at {} (endpoint {})",
                    self.settings.resource_name,
                    self.kubelet_socket().display(),
                    self.socket_name
                );
            }
            Err(e) => {
                let kubelet = self.kubelet_socket();
                let what = format_args!("cannot register with the kubelet at {}: {}", kubelet.display(), describe(&e));
                self.failed(log::Level::Info, what);
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

fn describe(e: &grpcio::Error) -> String {
    match e {
        grpcio::Error::RpcFailure(status) if !status.message().is_empty() => {
            format!("{:?}: {}", status.code(), status.message())
        }
        grpcio::Error::RpcFailure(status) => format!("{:?}", status.code()),
        other => other.to_string(),
    }
}
