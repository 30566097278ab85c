//! The kubelet side of registration: the Register call and the socket names in the device-plugins directory.

use crate::api;
use crate::server;
use grpcio::{CallOption, ChannelBuilder, Environment};
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
    let channel = ChannelBuilder::new(Arc::clone(env)).connect(&format!("unix:{}", kubelet_socket.display()));
    let client = api::RegistrationClient::new(channel);
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
