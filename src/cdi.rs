//! Container Device Interface (CDI) spec files (`--cdi-spec-dir`): one file per resource that has device
//! nodes, describing each advertised device once, so that the runtime injects its nodes when the kubelet
//! passes `<resource>=<ID>` in `ContainerAllocateResponse.cdi_devices`.
//!
//! - `cdiVersion` is [`CDI_VERSION`], "0.5.0": the lowest version whose device-name rules allow a name that
//!   starts with a digit, as every ID of ours does (PCI addresses `0000:5e:00.0`, AWS units `0`, `1`, …).
//! - `kind` is the resource name (`vendor.com/class`), `devices[].name` the device ID, and
//!   `containerEdits.deviceNodes` the device's node (`path` in the container, `hostPath` on the host,
//!   permissions `rw`, as the DeviceSpecs without CDI).
//! - Devices without a device node (AWS units) get no CDI device, and a resource with none gets no file: a
//!   CDI device must edit the container, and an empty edit would only make the runtime look for nothing.
//! - Files are written atomically (a temporary file in the directory, then rename) with mode 0644, and only
//!   when their content changes. They are named like our sockets (`k8s-accel-….json`); other files in the
//!   directory are never touched.

use crate::device::Device;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The CDI spec version written (see the module documentation).
pub const CDI_VERSION: &str = "0.5.0";

/// The spec document for `resource` and its devices; None when no device has a node.
pub fn spec(resource: &str, devices: &[Device]) -> Option<String> {
    let entries: Vec<serde_json::Value> = devices
        .iter()
        .filter_map(|d| {
            let node = d.node.as_ref()?;
            Some(serde_json::json!({
                "name": d.id,
                "containerEdits": {
                    "deviceNodes": [{"path": node.container_path, "hostPath": node.host_path, "permissions": "rw"}]
                }
            }))
        })
        .collect();
    if entries.is_empty() {
        return None;
    }
    let doc = serde_json::json!({"cdiVersion": CDI_VERSION, "kind": resource, "devices": entries});
    serde_json::to_string_pretty(&doc).ok().map(|mut s| {
        s.push('\n');
        s
    })
}

/// The spec file of a resource: the socket's name with `.json` for `.sock` (unique per resource, fits).
pub fn file_name(socket_name: &str) -> String {
    format!("{}.json", socket_name.strip_suffix(".sock").unwrap_or(socket_name))
}

/// Writes `content` to `dir/name` atomically: a temporary file beside it, fsync, mode 0644, rename. The
/// temporary file is removed if any step fails.
pub fn write_atomically(dir: &Path, name: &str, content: &str) -> std::io::Result<()> {
    let target = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
        std::fs::rename(&tmp, &target)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes our spec file `name` from `dir` (its resource has no device node any more); absent is fine.
pub fn remove(dir: &Path, name: &str) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(name)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The CDI device name of a device: `<resource>=<ID>`, as `cdi_devices` carries it.
pub fn device_name(resource: &str, id: &str) -> String {
    format!("{resource}={id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{DevNode, Health};

    fn dev(id: &str, node: Option<&str>) -> Device {
        Device {
            id: id.into(),
            health: Health::Healthy,
            numa_node: None,
            node: node.map(|n| DevNode { host_path: format!("/host/dev/{n}"), container_path: format!("/dev/{n}") }),
            afu_id: None,
        }
    }

    #[test]
    fn one_device_per_node_and_none_without() {
        let text = spec("b-com.com/accelerator", &[dev("0000:5e:00.0", Some("dfl-port.0")), dev("7", None)]).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["cdiVersion"], "0.5.0");
        assert_eq!(doc["kind"], "b-com.com/accelerator");
        assert_eq!(doc["devices"].as_array().unwrap().len(), 1);
        assert_eq!(doc["devices"][0]["name"], "0000:5e:00.0");
        let node = &doc["devices"][0]["containerEdits"]["deviceNodes"][0];
        assert_eq!(
            (node["path"].as_str(), node["hostPath"].as_str()),
            (Some("/dev/dfl-port.0"), Some("/host/dev/dfl-port.0"))
        );
        assert_eq!(spec("b-com.com/accelerator", &[dev("0", None)]), None);
        assert_eq!(file_name("k8s-accel-b-com.com_accelerator.sock"), "k8s-accel-b-com.com_accelerator.json");
    }

    #[test]
    fn atomic_writes_leave_no_temporary_file() {
        let dir = crate::sim::TempDir::new("cdi").unwrap();
        write_atomically(dir.path(), "a.json", "{}\n").unwrap();
        write_atomically(dir.path(), "a.json", "{\"x\": 1}\n").unwrap();
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, ["a.json"]);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(dir.path().join("a.json")).unwrap().mode() & 0o777, 0o644);
        remove(dir.path(), "a.json").unwrap();
        remove(dir.path(), "a.json").unwrap();
        assert!(write_atomically(&dir.path().join("missing"), "a.json", "{}").is_err());
    }
}
