//! The DevicePlugin gRPC service, served on our socket in the device-plugins directory.
//!
//! Unary calls are answered on grpcio's completion-queue thread from a registry snapshot. Each ListAndWatch
//! stream gets one thread that owns its sink and a feed from the registry.

use crate::allocation::{self, InvalidRequest};
use crate::api;
use crate::registry::{self, SharedRegistry};
use crossbeam_channel::{bounded, select, Receiver, Sender};
use futures_executor::block_on;
use futures_util::{Sink, SinkExt};
use grpcio::{
    Environment, RpcContext, RpcStatus, RpcStatusCode, ServerBuilder, ServerCredentials, ServerStreamingSink,
    UnarySink, WriteFlags,
};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::JoinHandle;

/// What a server calls, with its generation, when the kubelet has closed its last ListAndWatch stream.
pub type StreamsGone = Arc<dyn Fn(u64) + Send + Sync>;

#[derive(Clone)]
struct Service {
    registry: SharedRegistry,
    /// Called with the generation when the kubelet has closed the server's last ListAndWatch stream.
    streams_gone: StreamsGone,
    /// The resource this server advertises, for the logs (and the CDI kind).
    resource: Arc<str>,
    /// With `--cdi-spec-dir`: the spec file; containers get CDI devices instead of DeviceSpecs.
    cdi: Option<Arc<crate::cdi::SpecFile>>,
    generation: u64,
    streams: Arc<Streams>,
}

/// The ListAndWatch streams of one server.
#[derive(Default)]
struct Streams {
    open: AtomicUsize,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn reply<T>(ctx: &RpcContext, sink: UnarySink<T>, result: Result<T, InvalidRequest>, what: &'static str) {
    reply_status(ctx, sink, result.map_err(|e| (RpcStatusCode::INVALID_ARGUMENT, e.0)), what)
}

/// Sends a reply, or a failure with its status code (logged as a rejection).
fn reply_status<T>(
    ctx: &RpcContext,
    sink: UnarySink<T>,
    result: Result<T, (RpcStatusCode, String)>,
    what: &'static str,
) {
    let f = match result {
        Ok(resp) => sink.success(resp),
        Err((code, e)) => {
            log::warn!("rejected {what}: {e}");
            sink.fail(RpcStatus::with_message(code, e))
        }
    };
    // Dropping this future would cancel the call: hand it to grpcio.
    ctx.spawn(async move {
        if let Err(e) = f.await {
            log::debug!("could not send the {what} reply: {e}");
        }
    });
}

impl api::DevicePlugin for Service {
    fn get_device_plugin_options(&mut self, ctx: RpcContext, _: api::Empty, sink: UnarySink<api::DevicePluginOptions>) {
        log::debug!("GetDevicePluginOptions from {}", ctx.peer());
        reply(&ctx, sink, Ok(api::options()), "GetDevicePluginOptions");
    }

    fn list_and_watch(&mut self, _: RpcContext, _: api::Empty, sink: ServerStreamingSink<api::ListAndWatchResponse>) {
        let (first, feed) = registry::write(&self.registry).subscribe();
        let open = self.streams.open.fetch_add(1, Ordering::SeqCst) + 1;
        let resource = Arc::clone(&self.resource);
        log::info!("ListAndWatch stream of {resource} opened ({open} open), sending {} devices", first.devices.len());
        let streams = Arc::clone(&self.streams);
        let streams_gone = Arc::clone(&self.streams_gone);
        let generation = self.generation;
        let spawned = std::thread::Builder::new().name("list-and-watch".into()).spawn(move || {
            let client_left = stream(sink, first, feed);
            let open = streams.open.fetch_sub(1, Ordering::SeqCst) - 1;
            if client_left {
                log::info!("ListAndWatch stream of {resource} closed by the kubelet ({open} open)");
                if open == 0 {
                    streams_gone(generation);
                }
            }
        });
        match spawned {
            Ok(handle) => {
                let mut threads = self.streams.threads.lock().unwrap_or_else(PoisonError::into_inner);
                threads.retain(|t| !t.is_finished());
                threads.push(handle);
            }
            Err(e) => {
                self.streams.open.fetch_sub(1, Ordering::SeqCst);
                log::error!("cannot start a thread for a ListAndWatch stream: {e}");
            }
        }
    }

    fn get_preferred_allocation(
        &mut self,
        ctx: RpcContext,
        req: api::PreferredAllocationRequest,
        sink: UnarySink<api::PreferredAllocationResponse>,
    ) {
        let snapshot = registry::read(&self.registry).snapshot();
        let result = allocation::preferred(&snapshot, &req);
        if let Ok(resp) = &result {
            for c in &resp.container_responses {
                log::debug!("GetPreferredAllocation: preferring {}", c.deviceIDs.join(","));
            }
        }
        reply(&ctx, sink, result, "GetPreferredAllocation");
    }

    fn allocate(&mut self, ctx: RpcContext, req: api::AllocateRequest, sink: UnarySink<api::AllocateResponse>) {
        let snapshot = registry::read(&self.registry).snapshot();
        let result = allocation::allocate(&snapshot, &req, self.cdi.is_some().then_some(&*self.resource));
        // With CDI the runtime resolves the names from the spec file, and naming a device it does not
        // describe would fail the container later, with a less clear error. A request that names unknown or
        // Unhealthy devices is refused as such first; then the spec file must describe every CDI device
        // the answer names.
        if let (Ok(resp), Some(spec)) = (&result, &self.cdi) {
            let names: Vec<&str> =
                resp.container_responses.iter().flat_map(|c| &c.cdi_devices).map(|d| d.name.as_str()).collect();
            if let Err(why) = spec.ready_for(&names) {
                return reply_status(&ctx, sink, Err((RpcStatusCode::UNAVAILABLE, why)), "Allocate");
            }
        }
        if result.is_ok() {
            for c in &req.container_requests {
                log::info!("Allocate: container gets {} {}", self.resource, c.devices_ids.join(","));
            }
        }
        reply(&ctx, sink, result, "Allocate");
    }

    fn pre_start_container(
        &mut self,
        ctx: RpcContext,
        req: api::PreStartContainerRequest,
        sink: UnarySink<api::PreStartContainerResponse>,
    ) {
        let snapshot = registry::read(&self.registry).snapshot();
        let result = allocation::validate(&snapshot, &req.devices_ids).map(|()| api::PreStartContainerResponse::new());
        reply(&ctx, sink, result, "PreStartContainer");
    }
}

/// Wakes a stream thread from grpcio's completion queue when the call may have ended.
struct ChannelWaker(Sender<()>);

impl Wake for ChannelWaker {
    fn wake(self: Arc<Self>) {
        let _ = self.0.try_send(());
    }
}

/// Sends the first list, then every list from the feed, until the feed ends (we stop serving: returns
/// false) or the kubelet goes away (returns true). Idle streams cost nothing: instead of polling, the thread
/// sleeps until grpcio wakes it or a new list arrives.
fn stream(
    mut sink: ServerStreamingSink<api::ListAndWatchResponse>,
    first: Arc<api::ListAndWatchResponse>,
    feed: Receiver<Arc<api::ListAndWatchResponse>>,
) -> bool {
    let (wake_tx, wake_rx) = bounded(1);
    let waker = Waker::from(Arc::new(ChannelWaker(wake_tx)));
    let mut next = Some(first);
    loop {
        if let Some(list) = next.take() {
            if let Err(e) = block_on(sink.send(((*list).clone(), WriteFlags::default()))) {
                log::debug!("ListAndWatch send failed: {e}");
                return true;
            }
        }
        // Registers the waker with the call: it fires when the kubelet cancels or disconnects.
        if let Poll::Ready(Err(_)) = Pin::new(&mut sink).poll_flush(&mut Context::from_waker(&waker)) {
            return true;
        }
        select! {
            recv(feed) -> list => match list {
                Ok(list) => next = Some(feed.try_iter().last().unwrap_or(list)),
                Err(_) => {
                    let _ = block_on(sink.close());
                    return false;
                }
            },
            recv(wake_rx) -> _ => {}
        }
    }
}

/// A running DevicePlugin server bound to one socket.
pub struct PluginServer {
    server: grpcio::Server,
    socket: PathBuf,
    /// Device and inode of the socket we created, to tell our socket from a later one at the same path.
    identity: (u64, u64),
    registry: SharedRegistry,
    streams: Arc<Streams>,
}

#[derive(Debug)]
pub enum StartError {
    /// The server could not be built.
    Grpc(grpcio::Error),
    /// The socket could not be bound; the reason is the system's (see `why_bind_failed`).
    Bind(std::io::Error),
    /// The socket did not appear after binding.
    NoSocket(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Grpc(e) => write!(f, "cannot start a gRPC server: {e}"),
            StartError::Bind(e) => write!(f, "cannot bind the socket: {e}"),
            StartError::NoSocket(e) => write!(f, "the socket is missing after binding it: {e}"),
        }
    }
}

/// gRPC core reports a failed bind as a bare "BindFail": find the system's reason by doing what it does
/// (remove a file at the path, then bind) with the standard library. Only called on a socket we own.
fn why_bind_failed(socket: &Path) -> std::io::Error {
    let dir = socket.parent().unwrap_or(Path::new("/"));
    if let Err(e) = std::fs::metadata(dir) {
        return std::io::Error::new(e.kind(), format!("the directory {} is not usable: {e}", dir.display()));
    }
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(socket) {
        // gRPC replaces only a socket; anything else at our path is in the way. The path is ours (we hold
        // its lock), so a plain file there is removed for the next attempt.
        Ok(m) if !m.file_type().is_socket() && !m.is_dir() => {
            return match std::fs::remove_file(socket) {
                Ok(()) => std::io::Error::other("a file that is not a socket was in the way; removed it"),
                Err(e) => std::io::Error::new(e.kind(), format!("a file that is not a socket is in the way: {e}")),
            };
        }
        Ok(m) if m.is_dir() => {
            return std::io::Error::new(std::io::ErrorKind::AlreadyExists, "a directory is in the way");
        }
        _ => {}
    }
    let _ = std::fs::remove_file(socket);
    match std::os::unix::net::UnixListener::bind(socket) {
        Err(e) => e,
        Ok(listener) => {
            drop(listener);
            let _ = std::fs::remove_file(socket);
            std::io::Error::other("gRPC core refused it, although the system allows it (--log-level debug shows why)")
        }
    }
}

impl PluginServer {
    /// Binds `socket` (replacing whatever file is there) and starts serving.
    pub fn start(
        env: Arc<Environment>,
        socket: &Path,
        registry: SharedRegistry,
        streams_gone: StreamsGone,
        resource: &str,
        cdi: Option<Arc<crate::cdi::SpecFile>>,
        generation: u64,
    ) -> Result<PluginServer, StartError> {
        let streams = Arc::new(Streams::default());
        let service = Service {
            registry: Arc::clone(&registry),
            streams_gone,
            resource: Arc::from(resource),
            cdi,
            generation,
            streams: Arc::clone(&streams),
        };
        let mut server = ServerBuilder::new(env)
            .register_service(api::create_device_plugin(service))
            .build()
            .map_err(StartError::Grpc)?;
        let address = api::unix_address(socket);
        if server.add_listening_port(&address, ServerCredentials::insecure()).is_err() {
            return Err(StartError::Bind(why_bind_failed(socket)));
        }
        server.start();
        let identity = identity(socket).map_err(StartError::NoSocket)?;
        Ok(PluginServer { server, socket: socket.to_path_buf(), identity, registry, streams })
    }

    /// Whether our socket is still the file at its path.
    pub fn socket_intact(&self) -> bool {
        identity(&self.socket).is_ok_and(|id| id == self.identity)
    }

    /// Ends the streams, stops serving and removes our socket (only if it is still ours).
    pub fn stop(mut self) {
        registry::write(&self.registry).close_feeds();
        let threads = std::mem::take(&mut *self.streams.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for t in threads {
            let _ = t.join();
        }
        let shutdown = self.server.shutdown();
        self.server.cancel_all_calls();
        let _ = block_on(shutdown);
        // grpc unlinks the path on shutdown; make sure, without touching a newer socket at the same path.
        if self.socket_intact() {
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}

fn identity(path: &Path) -> std::io::Result<(u64, u64)> {
    std::fs::symlink_metadata(path).map(|m| (m.dev(), m.ino()))
}
