//! `k8s-accelerator-devplugin probe`: a liveness check that needs nothing but the binary itself, so that it
//! works in a FROM scratch image. It calls GetDevicePluginOptions on the socket of the default resource and
//! of every resource named with `--afu-resource` (auto resources come and go with their AFUs: not checked).

use crate::{api, endpoint};
use grpcio::{CallOption, EnvBuilder};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub const TIMEOUT: Duration = Duration::from_secs(3);

/// Probes the default resource, which must answer, and every named resource whose socket exists. A named
/// resource without a socket is not a failure: during a surge upgrade the waiting process serves none of
/// them yet, and one whose server is being restarted has none for a moment. A hung process shows on the
/// default resource: every resource is served by the same threads. Ok with a description of the answers,
/// or the first failure.
pub fn probe_all<'a>(
    device_plugin_path: &Path,
    default: &str,
    named: impl IntoIterator<Item = &'a str>,
) -> Result<String, String> {
    let mut answers = vec![probe(device_plugin_path, default)?];
    let mut seen = std::collections::BTreeSet::from([default]);
    for resource in named.into_iter().filter(|r| seen.insert(*r)) {
        let name = endpoint::socket_name(device_plugin_path, resource).map_err(|e| e.to_string())?;
        if device_plugin_path.join(&name).exists() {
            answers.push(probe(device_plugin_path, resource)?);
        } else {
            answers.push(format!("{resource} is not served (yet): {name} does not exist"));
        }
    }
    Ok(answers.join("; "))
}

/// Ok with a description of the answer, or why the plugin is not healthy.
pub fn probe(device_plugin_path: &Path, resource_name: &str) -> Result<String, String> {
    let name = endpoint::socket_name(device_plugin_path, resource_name).map_err(|e| e.to_string())?;
    let socket = device_plugin_path.join(name);
    if !socket.exists() {
        return Err(format!("{} does not exist", socket.display()));
    }
    if !endpoint::is_live(&socket) {
        return Err(format!("nothing listens on {} (the plugin is not running)", socket.display()));
    }
    let env = Arc::new(EnvBuilder::new().cq_count(1).name_prefix("probe").build());
    let client = api::DevicePluginClient::new(api::unix_channel(&env, &socket));
    match client.get_device_plugin_options_opt(&api::Empty::new(), CallOption::default().timeout(TIMEOUT)) {
        Ok(o) => Ok(format!(
            "{} answers GetDevicePluginOptions (get_preferred_allocation_available={})",
            socket.display(),
            o.get_preferred_allocation_available
        )),
        Err(e) => Err(format!("{} does not answer GetDevicePluginOptions: {e}", socket.display())),
    }
}
