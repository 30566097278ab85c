//! The kubelet side of registration: the Register call, and the clean-up of our sockets left by earlier runs.

use crate::{api, endpoint, instance};
use futures_util::FutureExt;
use grpcio::{CallOption, ClientUnaryReceiver, Environment};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How long a Register may take. Kubelets ≥ 1.25 dial us and call GetDevicePluginOptions inside Register,
/// each step with a 10 s timeout; past that the attempt is abandoned and retried.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

pub fn register_request(resource_name: &str, endpoint: &str) -> api::RegisterRequest {
    let mut req = api::RegisterRequest::new();
    req.version = api::VERSION.to_string();
    req.endpoint = endpoint.to_string();
    req.resource_name = resource_name.to_string();
    req.options = Some(api::options()).into();
    req
}

/// A Register call in flight.
pub struct PendingRegister {
    call: Arc<Mutex<ClientUnaryReceiver<api::Empty>>>,
}

impl PendingRegister {
    /// Cancels the call: its outcome is then CANCELLED, at once, instead of waiting for its deadline.
    pub fn cancel(&self) {
        self.call.lock().unwrap_or_else(PoisonError::into_inner).cancel();
    }
}

/// Starts a Register call on `kubelet_socket` and returns at once; `done` receives the outcome. Each call
/// dials the `kubelet.sock` that exists now, on a connection of its own (see `api::unix_channel`): a
/// connection shared with an earlier call could still be stuck on a hung kubelet whose socket was replaced.
pub fn register_async(
    env: &Arc<Environment>,
    kubelet_socket: &Path,
    req: &api::RegisterRequest,
    done: impl FnOnce(Result<(), grpcio::Error>) + Send + 'static,
) -> Option<PendingRegister> {
    let client = api::RegistrationClient::new(api::unix_channel(env, kubelet_socket));
    match client.register_async_opt(req, CallOption::default().timeout(REGISTER_TIMEOUT)) {
        Ok(call) => {
            let call = Arc::new(Mutex::new(call));
            let polled = Arc::clone(&call);
            // The call fails with "Channel Destroyed" if its client goes away first: keep one in the task.
            let keep = client.clone();
            client.spawn(async move {
                // The lock is held only while polling, so that `cancel` can get in between.
                let result =
                    std::future::poll_fn(|cx| polled.lock().unwrap_or_else(PoisonError::into_inner).poll_unpin(cx))
                        .await
                        .map(drop);
                drop(keep);
                done(result)
            });
            Some(PendingRegister { call })
        }
        Err(e) => {
            done(Err(e));
            None
        }
    }
}

/// Removes sockets left by earlier runs of ours that nobody listens on: our own socket (we own its lock), and
/// sockets of versions before 0.2, which have no lock file. A socket with a lock file belongs to another
/// resource of a current version: its owner, or its next owner, removes it (taking its lock to check would
/// make a starting instance of that resource believe it had to wait). Other plugins' sockets and live ones
/// are left alone; the kubelet removes every socket when it restarts anyway.
pub fn remove_stale_sockets(dir: &Path, own: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !endpoint::is_ours(name) || !entry.file_type().is_ok_and(|t| t.is_socket()) {
            continue;
        }
        if name != own && instance::has_lock_file(dir, name) {
            continue;
        }
        let path = entry.path();
        if endpoint::is_live(&path) {
            log::info!("{} is served by another process; leaving it alone", path.display());
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => log::info!("removed stale socket {}", path.display()),
            Err(e) => log::warn!("cannot remove stale socket {}: {e}", path.display()),
        }
    }
}
