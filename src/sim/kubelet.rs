//! A fake kubelet: serves `Registration` on `kubelet.sock` and talks to registered plugins the way a
//! kubelet ≥ 1.25 does.

use crate::api;
use futures_executor::block_on;
use futures_util::Stream;
use grpcio::{
    CallOption, ClientSStreamReceiver, Environment, RpcContext, RpcStatus, RpcStatusCode, Server, ServerBuilder,
    ServerCredentials, UnarySink,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How the fake kubelet answers Register.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Behavior {
    /// Like a kubelet: check the request, call GetDevicePluginOptions, accept, open ListAndWatch.
    #[default]
    Accept,
    /// Fail every Register with this message.
    Reject(String),
    /// Accept the connection and never answer.
    Hang,
}

/// One Register call as the fake kubelet saw it.
#[derive(Clone, Debug)]
pub struct Registration {
    pub at: Instant,
    pub request: api::RegisterRequest,
    /// What GetDevicePluginOptions answered during Register (None if not called or failed).
    pub options: Option<api::DevicePluginOptions>,
}

/// One ListAndWatch message.
#[derive(Clone, Debug)]
pub struct Update {
    pub at: Instant,
    /// The resource whose stream sent it.
    pub resource: String,
    pub devices: Vec<api::Device>,
}

type ListStream = Arc<Mutex<ClientSStreamReceiver<api::ListAndWatchResponse>>>;

#[derive(Default)]
struct State {
    registrations: Vec<Registration>,
    updates: Vec<Update>,
    behavior: Behavior,
    /// Like the kubelet: one endpoint, so one ListAndWatch stream, per resource name.
    streams: HashMap<String, ListStream>,
    /// The client of each resource's endpoint, and the resource registered last.
    plugins: HashMap<String, api::DevicePluginClient>,
    last: Option<String>,
    hung: Vec<UnarySink<api::Empty>>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub struct FakeKubelet {
    dir: PathBuf,
    env: Arc<Environment>,
    shared: Arc<Shared>,
    server: Option<Server>,
    /// Device and inode of the `kubelet.sock` we serve, so that stopping never removes a newer kubelet's.
    socket: Option<(u64, u64)>,
}

#[derive(Clone)]
struct Service {
    dir: PathBuf,
    env: Arc<Environment>,
    shared: Arc<Shared>,
}

impl api::Registration for Service {
    fn register(&mut self, _: RpcContext, req: api::RegisterRequest, sink: UnarySink<api::Empty>) {
        // Answer from a thread of our own: the kubelet dials the plugin back during Register.
        let service = self.clone();
        std::thread::spawn(move || service.handle(req, sink));
    }
}

impl Service {
    fn handle(&self, req: api::RegisterRequest, sink: UnarySink<api::Empty>) {
        let index = {
            let mut state = self.shared.lock();
            state.registrations.push(Registration { at: Instant::now(), request: req.clone(), options: None });
            self.shared.changed.notify_all();
            state.registrations.len() - 1
        };
        let behavior = self.shared.lock().behavior.clone();
        let result = match behavior {
            Behavior::Hang => {
                self.shared.lock().hung.push(sink);
                return;
            }
            Behavior::Reject(message) => Err(RpcStatus::with_message(RpcStatusCode::UNKNOWN, message)),
            Behavior::Accept => self.accept(index, &req),
        };
        let reply = match result {
            Ok(()) => sink.success(api::Empty::new()),
            Err(status) => sink.fail(status),
        };
        let _ = block_on(reply);
    }

    fn accept(&self, index: usize, req: &api::RegisterRequest) -> Result<(), RpcStatus> {
        let invalid = |m: String| Err(RpcStatus::with_message(RpcStatusCode::UNKNOWN, m));
        if req.version != api::VERSION {
            return invalid(format!("unsupported version {:?}", req.version));
        }
        if req.endpoint.is_empty() || req.endpoint.contains('/') {
            return invalid(format!("endpoint {:?} is not a file name in the device-plugins directory", req.endpoint));
        }
        let client = plugin_client(&self.env, &self.dir.join(&req.endpoint));
        let options = client
            .get_device_plugin_options_opt(&api::Empty::new(), CallOption::default().timeout(Duration::from_secs(10)))
            .map_err(|e| RpcStatus::with_message(RpcStatusCode::UNKNOWN, format!("GetDevicePluginOptions: {e}")))?;
        let stream = client
            .list_and_watch_opt(&api::Empty::new(), CallOption::default())
            .map_err(|e| RpcStatus::with_message(RpcStatusCode::UNKNOWN, format!("ListAndWatch: {e}")))?;
        let stream = Arc::new(Mutex::new(stream));
        let resource = req.resource_name.clone();
        {
            let mut state = self.shared.lock();
            state.registrations[index].options = Some(options);
            // Like the kubelet, a new registration of a resource replaces that resource's old endpoint, and
            // only that one.
            if let Some(old) = state.streams.insert(resource.clone(), Arc::clone(&stream)) {
                old.lock().unwrap_or_else(PoisonError::into_inner).cancel();
            }
            state.plugins.insert(resource.clone(), client);
            state.last = Some(resource.clone());
            self.shared.changed.notify_all();
        }
        let shared = Arc::clone(&self.shared);
        std::thread::spawn(move || watch(&shared, &resource, &stream));
        Ok(())
    }
}

/// Records every list of one ListAndWatch stream until it ends. The lock is held only while polling, so
/// `cancel` can get in between (and its completion wakes the poll).
fn watch(shared: &Shared, resource: &str, stream: &Mutex<ClientSStreamReceiver<api::ListAndWatchResponse>>) {
    loop {
        let next = block_on(std::future::poll_fn(|cx| {
            let mut s = stream.lock().unwrap_or_else(PoisonError::into_inner);
            Pin::new(&mut *s).poll_next(cx)
        }));
        match next {
            Some(Ok(list)) => {
                let update = Update { at: Instant::now(), resource: resource.to_string(), devices: list.devices };
                shared.lock().updates.push(update);
                shared.changed.notify_all();
            }
            Some(Err(_)) | None => return,
        }
    }
}

fn socket_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// A DevicePlugin client on the plugin socket at `path`.
pub fn plugin_client(env: &Arc<Environment>, path: &Path) -> api::DevicePluginClient {
    api::DevicePluginClient::new(api::unix_channel(env, path))
}

impl FakeKubelet {
    /// Serves `<dir>/kubelet.sock` (creating `dir` if needed).
    pub fn start(dir: &Path) -> std::io::Result<FakeKubelet> {
        std::fs::create_dir_all(dir)?;
        let env = Arc::new(grpcio::EnvBuilder::new().cq_count(1).name_prefix("fake-kubelet").build());
        let mut kubelet =
            FakeKubelet { dir: dir.to_path_buf(), env, shared: Arc::default(), server: None, socket: None };
        kubelet.serve()?;
        Ok(kubelet)
    }

    fn serve(&mut self) -> std::io::Result<()> {
        let service = Service { dir: self.dir.clone(), env: Arc::clone(&self.env), shared: Arc::clone(&self.shared) };
        let mut server = ServerBuilder::new(Arc::clone(&self.env))
            .register_service(api::create_registration(service))
            .build()
            .map_err(std::io::Error::other)?;
        let address = api::unix_address(&self.dir.join(api::KUBELET_SOCKET));
        server.add_listening_port(&address, ServerCredentials::insecure()).map_err(std::io::Error::other)?;
        server.start();
        self.server = Some(server);
        self.socket = socket_identity(&self.dir.join(api::KUBELET_SOCKET));
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn env(&self) -> &Arc<Environment> {
        &self.env
    }

    pub fn set_behavior(&self, behavior: Behavior) {
        self.shared.lock().behavior = behavior;
    }

    /// Stops like a dying kubelet: streams cut, `kubelet.sock` gone.
    pub fn stop(&mut self) {
        {
            let mut state = self.shared.lock();
            for (_, s) in state.streams.drain() {
                s.lock().unwrap_or_else(PoisonError::into_inner).cancel();
            }
            state.plugins.clear();
            state.last = None;
            state.hung.clear();
        }
        if let Some(mut server) = self.server.take() {
            server.cancel_all_calls();
            let _ = block_on(server.shutdown());
        }
        let socket = self.dir.join(api::KUBELET_SOCKET);
        if self.socket.take().is_some_and(|ours| socket_identity(&socket) == Some(ours)) {
            let _ = std::fs::remove_file(socket);
        }
    }

    /// Closes the ListAndWatch streams without restarting, as a kubelet does when it drops an endpoint.
    pub fn drop_streams(&self) {
        for (_, s) in self.shared.lock().streams.drain() {
            s.lock().unwrap_or_else(PoisonError::into_inner).cancel();
        }
    }

    /// Restarts like a kubelet: stops, deletes every socket in the directory (current kubelets leave
    /// directories and other files alone), then serves a new `kubelet.sock`. Returns when it is up.
    pub fn restart(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::FileTypeExt;
        self.stop();
        for entry in std::fs::read_dir(&self.dir)?.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_socket()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        self.serve()
    }

    pub fn registrations(&self) -> Vec<Registration> {
        self.shared.lock().registrations.clone()
    }

    pub fn updates(&self) -> Vec<Update> {
        self.shared.lock().updates.clone()
    }

    /// Waits until at least `n` Register calls were accepted (the plugin answered GetDevicePluginOptions
    /// and ListAndWatch was opened); returns the n-th accepted one.
    pub fn wait_registration(&self, n: usize, timeout: Duration) -> Option<Registration> {
        self.wait(timeout, |s| s.registrations.iter().filter(|r| r.options.is_some()).nth(n - 1).cloned())
    }

    /// How many Register calls were accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.lock().registrations.iter().filter(|r| r.options.is_some()).count()
    }

    /// Waits until at least `n` Register calls arrived (whatever their outcome).
    pub fn wait_register_calls(&self, n: usize, timeout: Duration) -> Option<Registration> {
        self.wait(timeout, |s| s.registrations.get(n - 1).cloned())
    }

    /// Waits until the latest ListAndWatch list (of any resource) satisfies `accept`; returns it.
    pub fn wait_devices(&self, timeout: Duration, accept: impl Fn(&[api::Device]) -> bool) -> Option<Update> {
        self.wait(timeout, |s| s.updates.last().filter(|u| accept(&u.devices)).cloned())
    }

    /// Waits until a ListAndWatch list received after `since` satisfies `accept`; returns it.
    pub fn wait_devices_since(
        &self,
        since: Instant,
        timeout: Duration,
        accept: impl Fn(&[api::Device]) -> bool,
    ) -> Option<Update> {
        self.wait(timeout, |s| s.updates.last().filter(|u| u.at > since && accept(&u.devices)).cloned())
    }

    /// A client for the plugin that registered last.
    pub fn plugin(&self) -> Option<api::DevicePluginClient> {
        let state = self.shared.lock();
        state.last.as_ref().and_then(|r| state.plugins.get(r)).cloned()
    }

    /// Waits until the latest list of `resource` satisfies `accept`; returns it.
    pub fn wait_devices_of(
        &self,
        resource: &str,
        timeout: Duration,
        accept: impl Fn(&[api::Device]) -> bool,
    ) -> Option<Update> {
        self.wait(timeout, |s| {
            s.updates.iter().rev().find(|u| u.resource == resource).filter(|u| accept(&u.devices)).cloned()
        })
    }

    /// A client for the endpoint registered for `resource`.
    pub fn plugin_for(&self, resource: &str) -> Option<api::DevicePluginClient> {
        self.shared.lock().plugins.get(resource).cloned()
    }

    /// Closes the ListAndWatch stream of one resource only.
    pub fn drop_stream(&self, resource: &str) {
        if let Some(s) = self.shared.lock().streams.remove(resource) {
            s.lock().unwrap_or_else(PoisonError::into_inner).cancel();
        }
    }

    /// The resources the kubelet holds a stream of (the latest per resource, open or not), sorted.
    pub fn resources(&self) -> Vec<String> {
        let mut names: Vec<String> = self.shared.lock().streams.keys().cloned().collect();
        names.sort();
        names
    }

    /// How many Register calls for `resource` were accepted so far.
    pub fn accepted_for(&self, resource: &str) -> usize {
        self.shared
            .lock()
            .registrations
            .iter()
            .filter(|r| r.options.is_some() && r.request.resource_name == resource)
            .count()
    }

    /// Waits until the resources with an open stream are exactly `want` (sorted).
    pub fn wait_resources(&self, timeout: Duration, want: &[&str]) -> bool {
        self.wait(timeout, |s| {
            let mut names: Vec<&str> = s.streams.keys().map(String::as_str).collect();
            names.sort_unstable();
            (names == want).then_some(())
        })
        .is_some()
    }

    /// Answers every Register left hanging by `Behavior::Hang`; returns how many of them the plugin had
    /// already cancelled (the answer could not be delivered).
    pub fn release_hung(&self) -> usize {
        let hung: Vec<UnarySink<api::Empty>> = self.shared.lock().hung.drain(..).collect();
        hung.into_iter().map(|sink| block_on(sink.success(api::Empty::new()))).filter(Result::is_err).count()
    }

    fn wait<T>(&self, timeout: Duration, check: impl Fn(&State) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if let Some(found) = check(&state) {
                return Some(found);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            state = self.shared.changed.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.stop();
    }
}
