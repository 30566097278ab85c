//! The kubelet side of registration: the Register call and the socket names in the device-plugins directory.

use crate::api;
use crate::server;
use grpcio::{CallOption, Environment};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How long a Register may take. Kubelets ≥ 1.25 dial us and call GetDevicePluginOptions inside Register,
/// each step with a 10 s timeout; past that the attempt is abandoned and retried.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Our sockets are named `<PREFIX><resource name with / as _>.sock`, so that stale ones from an earlier run
/// can be told from other plugins' sockets.
pub const SOCKET_PREFIX: &str = "k8s-accel-";

pub fn socket_name(resource_name: &str) -> String {
    format!("{SOCKET_PREFIX}{}.sock", resource_name.replace('/', "_"))
}

pub fn register_request(resource_name: &str, endpoint: &str) -> api::RegisterRequest {
    let mut req = api::RegisterRequest::new();
    req.version = api::VERSION.to_string();
    req.endpoint = endpoint.to_string();
    req.resource_name = resource_name.to_string();
    req.options = Some(server::options()).into();
    req
}

/// Starts a Register call on `kubelet_socket` and returns at once; `done` receives the outcome. A fresh
/// channel every time: a grpc channel that failed once waits out its own reconnect backoff (1 s and more),
/// which would delay registering with a kubelet that just came back.
pub fn register_async(
    env: &Arc<Environment>,
    kubelet_socket: &Path,
    req: &api::RegisterRequest,
    done: impl FnOnce(Result<(), grpcio::Error>) + Send + 'static,
) {
    let client = api::RegistrationClient::new(api::unix_channel(env, kubelet_socket));
    match client.register_async_opt(req, CallOption::default().timeout(REGISTER_TIMEOUT)) {
        Ok(call) => {
            // The call fails with "Channel Destroyed" if its client goes away first: keep one in the task.
            let keep = client.clone();
            client.spawn(async move {
                let result = call.await.map(drop);
                drop(keep);
                done(result)
            })
        }
        Err(e) => done(Err(e)),
    }
}

/// Whether a process accepts connections on the Unix socket at `path`.
pub fn is_live(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// Removes sockets left by an earlier run of ours: files with our prefix that nobody listens on. A socket
/// that answers belongs to a live plugin and is left alone.
pub fn remove_stale_sockets(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(SOCKET_PREFIX) || !name.ends_with(".sock") {
            continue;
        }
        let path = entry.path();
        if is_live(&path) {
            log::warn!("{} is served by a running process; leaving it alone", path.display());
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => log::info!("removed stale socket {}", path.display()),
            Err(e) => log::warn!("cannot remove stale socket {}: {e}", path.display()),
        }
    }
}
