//! Container Device Interface (CDI) spec files (`--cdi-spec-dir`): one file per resource that has device
//! nodes, describing each advertised device once, so that the runtime injects its nodes when the kubelet
//! passes `<resource>=<ID>` in `ContainerAllocateResponse.cdi_devices`.
//!
//! - `cdiVersion` is the lowest version that allows what the spec holds ([`version`]): "0.5.0", the first
//!   whose device names may start with a digit, as every ID of ours does (PCI addresses `0000:5e:00.0`), and
//!   the first with `deviceNodes[].hostPath` (we write it, like DeviceSpec's `host_path`, from
//!   `--dev-root`). "0.6.0" when the class part of the kind holds a dot (`vendor.com/fpga.afu`), which 0.6.0
//!   first allowed. These are the rules of the reference implementation's `MinimumRequiredVersion`
//!   (container-device-interface, `specs-go/version.go`): a runtime rejects a spec that declares a lower
//!   version than what it uses, and the lowest one that works is readable by the most runtimes (podman 4.3
//!   reads 0.5.0, and takes a dotted class for no CDI name at all).
//! - The kind must be a valid CDI kind, which is stricter than a Kubernetes resource name: [`check_kind`];
//!   the command line refuses `--cdi-spec-dir` with a resource name that is not one.
//! - `kind` is the resource name (`vendor.com/class`), `devices[].name` the device ID, and
//!   `containerEdits.deviceNodes` the device's node (`path` in the container, `hostPath` on the host,
//!   permissions `rw`, as the DeviceSpecs without CDI).
//! - Devices without a device node (AWS units) get no CDI device, and a resource with none gets no file: a
//!   CDI device must edit the container, and an empty edit would only make the runtime look for nothing.
//! - Files are written atomically (a temporary file in the directory, then rename) with mode 0644, and only
//!   when their content changes or the file on disk is not what we wrote (removed or overwritten by hand).
//!   They are named like our sockets (`k8s-accel-….json`); other files in the directory are never touched.
//! - Only the instance that owns a resource's socket writes its file ([`SpecFile`]): during a rolling
//!   update the waiting instance, whose devices or routing may differ, leaves the serving one's file alone.
//!   Allocate names CDI devices only while the file describes the devices it advertises; otherwise it
//!   fails with UNAVAILABLE and the reason, rather than naming devices the runtime could not resolve.
//! - A file of ours that no running instance serves any more (a resource of an earlier configuration, a
//!   temporary file left by a crash) is removed: [`stale`] finds them, the daemon removes them once the
//!   instance that wrote them has stopped (its socket lock is free).

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// The lowest CDI spec version that allows a spec of `kind` with our devices (see the module documentation).
pub fn version(kind: &str) -> &'static str {
    match kind.split_once('/') {
        Some((_, class)) if class.contains('.') => "0.6.0",
        _ => "0.5.0",
    }
}

/// Whether `kind` (a resource name) is a valid CDI kind `vendor/class`: the vendor letters, digits, `_`,
/// `-` and `.`, the class the same (`.` from CDI 0.6.0), each starting with a letter and ending with a
/// letter or digit. Kubernetes also takes names that start with a digit, which CDI refuses. Err: why not.
pub fn check_kind(kind: &str) -> Result<(), String> {
    let (vendor, class) = kind.split_once('/').ok_or_else(|| format!("{kind:?} is not vendor/class"))?;
    for (what, part) in [("vendor", vendor), ("class", class)] {
        let ok = part.bytes().next().is_some_and(|c| c.is_ascii_alphabetic())
            && part.bytes().last().is_some_and(|c| c.is_ascii_alphanumeric())
            && part.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'));
        if !ok {
            return Err(format!(
                "{kind:?} is not a CDI device kind: its {what} {part:?} must start with a letter, end with a letter \
                 or digit and hold only letters, digits, _, - and ."
            ));
        }
    }
    Ok(())
}

/// Whether a device is a CDI device (an entry in the spec, named in Allocate): an Intel port (its node), an
/// AWS slot (its driver's nodes, if any, and its application PF's address: an entry stays while an image
/// load takes its nodes away, so a container created then still resolves its name); not an AWS unit.
pub fn is_cdi_device(d: &crate::device::Device) -> bool {
    !d.nodes.is_empty() || d.pci_address.is_some()
}

/// A spec document, and the CDI names (`device_name`) of the devices it describes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub text: String,
    pub names: std::collections::BTreeSet<String>,
}

/// The spec document for `resource` and its devices; None when none is a CDI device. Each entry gives the
/// device's nodes and, for an AWS slot, the environment variable `ACCELERATOR_PCI_ADDRESS_<ID>` (its
/// application PF's address; CDI refuses an entry with no edit).
#[cfg(feature = "grpc")]
pub fn spec(resource: &str, devices: &[crate::device::Device]) -> Option<Spec> {
    let mut names = std::collections::BTreeSet::new();
    let entries: Vec<serde_json::Value> = devices
        .iter()
        .filter(|d| is_cdi_device(d))
        .map(|d| {
            names.insert(device_name(resource, &d.id));
            let nodes: Vec<serde_json::Value> = (d.nodes.iter())
                .map(|n| serde_json::json!({"path": n.container_path, "hostPath": n.host_path, "permissions": "rw"}))
                .collect();
            let mut edits = serde_json::Map::new();
            if !nodes.is_empty() {
                edits.insert("deviceNodes".into(), nodes.into());
            }
            if let Some(address) = &d.pci_address {
                edits.insert("env".into(), serde_json::json!([format!("ACCELERATOR_PCI_ADDRESS_{}={address}", d.id)]));
            }
            serde_json::json!({"name": d.id, "containerEdits": edits})
        })
        .collect();
    if entries.is_empty() {
        return None;
    }
    let doc = serde_json::json!({"cdiVersion": version(resource), "kind": resource, "devices": entries});
    // Serialising a Value whose keys are all strings cannot fail.
    let mut text = serde_json::to_string_pretty(&doc).ok()?;
    text.push('\n');
    Some(Spec { text, names })
}

/// The spec file of a resource: the socket's name with `.json` for `.sock` (unique per resource, fits).
pub fn file_name(socket_name: &str) -> String {
    format!("{}.json", socket_name.strip_suffix(".sock").unwrap_or(socket_name))
}

/// Writes `content` to `dir/name` atomically: a temporary file beside it, fsync, mode 0644, rename. The
/// temporary file is removed if any step fails.
pub fn write_atomically(dir: &Path, name: &str, content: &str) -> std::io::Result<()> {
    let target = dir.join(name);
    let tmp = dir.join(temporary_name(name));
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

/// Removes our spec file `name` from `dir`. Ok(false): it was not there (nor can it be: `dir` is missing
/// or not a directory).
pub fn remove(dir: &Path, name: &str) -> std::io::Result<bool> {
    let path = dir.join(name);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => Ok(false),
        // A read-only filesystem refuses an unlink before it looks the name up.
        Err(_) if std::fs::symlink_metadata(&path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// The files of ours in `dir` that are not among `current` (the spec files this process keeps), each with
/// the socket name of the resource it was written for: spec files `k8s-accel-….json` and temporary files
/// `.k8s-accel-….json.tmp`. Whether one is stale depends on whether an instance still serves that socket,
/// which the caller checks. An unreadable directory gives none.
pub fn stale(dir: &Path, current: &[String]) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<(String, String)> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| !current.contains(name))
        .filter_map(|name| {
            let spec = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")).unwrap_or(&name);
            let stem = spec.strip_suffix(".json").filter(|s| s.starts_with("k8s-accel-"))?;
            let socket = format!("{stem}.sock");
            Some((name, socket))
        })
        .collect();
    out.sort();
    out
}

/// Which file is at a path, and what was last done to it: device, inode, size, change time. A file
/// removed, replaced or rewritten in place since we wrote it has another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId(u64, u64, u64, i64, i64);

fn file_id(path: &Path) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|m| FileId(m.dev(), m.ino(), m.size(), m.ctime(), m.ctime_nsec()))
}

/// One resource's spec file, shared by the scanner (which knows the devices: [`SpecFile::set`]), the
/// registration thread (which knows when the socket is ours: [`SpecFile::own`])
/// and the server (Allocate: [`SpecFile::ready`]). Writes happen under its lock, so two threads never write
/// the same file at once.
pub struct SpecFile {
    resource: String,
    /// The socket whose owner writes the file, the directory and the file's name in it.
    socket_name: String,
    dir: PathBuf,
    name: String,
    path: PathBuf,
    state: Mutex<State>,
    /// Called when a write fails for a new reason, on whichever thread wrote, once the lock is released:
    /// the daemon then retries it soon (see [`SpecFile::pending`]), even when the failure came from the
    /// registration thread or an Allocate while its event loop was idle.
    on_failure: Box<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for SpecFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpecFile").field("path", &self.path).field("state", &self.state).finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct State {
    /// Whether this process owns the resource's socket: only then is the file written.
    owned: bool,
    /// The spec the devices call for; None: no device has a node, so no file. Unset before the first scan.
    wanted: Option<Option<Spec>>,
    /// What the file holds, as we last wrote (or removed) it, and its identity then (None: absent).
    written: Option<(Option<Spec>, Option<FileId>)>,
    /// Why the last write failed, until one succeeds (each new reason is logged once).
    error: Option<String>,
}

impl SpecFile {
    /// The spec file of `resource` in `dir`, named after its socket (`file_name`); `on_failure`: see the field.
    pub fn new(
        dir: &Path,
        socket_name: &str,
        resource: &str,
        on_failure: impl Fn() + Send + Sync + 'static,
    ) -> SpecFile {
        let name = file_name(socket_name);
        SpecFile {
            resource: resource.into(),
            socket_name: socket_name.into(),
            dir: dir.to_path_buf(),
            path: dir.join(&name),
            name,
            state: Mutex::default(),
            on_failure: Box::new(on_failure),
        }
    }

    /// The socket whose owner writes this file.
    pub fn socket_name(&self) -> &str {
        &self.socket_name
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The file must hold `spec` (None: be absent), as the devices call for at every scan. Written at once if
    /// ours and if the file is not that already: also when it was removed or changed by another process, or
    /// when the last write failed.
    pub fn set(&self, spec: Option<Spec>) {
        self.synced(|state| state.wanted = Some(spec), |_| ());
    }

    /// Rewrites the file if it is not what we last wrote (removed or changed by someone else), or if the
    /// last write failed: one `stat` when all is well.
    pub fn check(&self) {
        self.synced(|_| (), |_| ());
    }

    /// The resource's socket is ours: from now on the file is ours to write, starting now.
    pub fn own(&self) {
        self.synced(|state| state.owned = true, |_| ());
    }

    /// Whether this process owns the resource's socket (and so writes its file).
    pub fn owned(&self) -> bool {
        self.state().owned
    }

    /// Whether the file, ours to write, is not what the devices call for yet (its last write failed): the
    /// daemon then checks it sooner than when idle (see `CheckSchedule` in `daemon`).
    pub fn pending(&self) -> bool {
        let state = self.state();
        state.owned && (state.error.is_some() || state.written.as_ref().map(|(w, _)| w) != state.wanted.as_ref())
    }

    /// Ok when the file describes every CDI device of `names` (those an Allocate names, `<kind>=<ID>`), as
    /// it is on disk; Err says why not (for Allocate's UNAVAILABLE status). One `stat`: a file removed or
    /// changed on disk since it was written is written again first (the runtime reads the file, not our
    /// memory of it). No name: Ok at once, whatever the file (nothing in it is read for them).
    pub fn ready_for(&self, names: &[&str]) -> Result<(), String> {
        if names.is_empty() {
            return Ok(());
        }
        let path = self.path.display();
        self.synced(
            |_| (),
            |state| match (&state.written, &state.error) {
                (_, Some(e)) => Err(format!("the CDI spec {path} cannot be written: {e}")),
                (Some((Some(spec), _)), None) => match names.iter().find(|name| !spec.names.contains(**name)) {
                    Some(name) => Err(format!("the CDI spec {path} does not describe {name} yet")),
                    None => Ok(()),
                },
                _ => Err(format!("the CDI spec {path} is not written yet")),
            },
        )
    }

    /// Under the lock: `change`, then `sync`, then `answer`. Then, with the lock released (the callback may
    /// do anything), `on_failure` if the write failed for a new reason.
    fn synced<T>(&self, change: impl FnOnce(&mut State), answer: impl FnOnce(&State) -> T) -> T {
        let (answer, failed) = {
            let mut state = self.state();
            change(&mut state);
            let failed = self.sync(&mut state);
            (answer(&state), failed)
        };
        if failed {
            (self.on_failure)();
        }
        answer
    }

    /// Removes a temporary file of ours left by a crash; only while ours, under the lock (no write runs).
    pub fn remove_leftover(&self) -> std::io::Result<bool> {
        let state = self.state();
        if !state.owned {
            return Ok(false);
        }
        remove(&self.dir, &temporary_name(&self.name))
    }

    /// Writes (or removes) the file if it is not what is wanted; true if that failed for a new reason.
    fn sync(&self, state: &mut State) -> bool {
        let Some(wanted) = state.wanted.clone() else { return false };
        if !state.owned {
            return false;
        }
        let on_disk = file_id(&self.path);
        if let Some((written, id)) = &state.written {
            // A file that should be there and was not seen after its rename is written again.
            let seen = id.is_some() == wanted.is_some();
            if *written == wanted && *id == on_disk && seen && state.error.is_none() {
                return false;
            }
        }
        let tampered = matches!(&state.written, Some((written, id)) if *written == wanted && *id != on_disk);
        let (dir, name) = (&self.dir, &self.name);
        let result = match &wanted {
            Some(spec) => write_atomically(dir, name, &spec.text).map(|()| Some("wrote")),
            None => remove(dir, name).map(|removed| removed.then_some("removed")),
        };
        match result {
            Ok(done) => {
                let why = if tampered { " (it had been removed or changed by another process)" } else { "" };
                if let Some(what) = done {
                    log::info!("{what} the CDI spec of {}: {}{why}", self.resource, self.path.display());
                }
                state.written = Some((wanted, file_id(&self.path)));
                state.error = None;
                false
            }
            Err(e) => {
                let e = e.to_string();
                let new = state.error.as_ref() != Some(&e);
                if new && wanted.is_some() {
                    log::warn!(
                        "cannot write the CDI spec of {} in {}: {e}; Allocate fails until it can (retried within \
                         5 s, then less often, at least once a minute)",
                        self.resource,
                        dir.display()
                    );
                } else if new {
                    log::warn!(
                        "cannot remove the CDI spec of {}, {}: {e}; retrying (no device of it has a node: its \
                         Allocates name no CDI device)",
                        self.resource,
                        self.path.display()
                    );
                }
                state.error = Some(e);
                new
            }
        }
    }
}

/// The temporary file `write_atomically` uses for `name`.
fn temporary_name(name: &str) -> String {
    format!(".{name}.tmp")
}

/// The CDI device name of a device: `<resource>=<ID>`, as `cdi_devices` carries it.
pub fn device_name(resource: &str, id: &str) -> String {
    format!("{resource}={id}")
}

#[cfg(all(test, feature = "grpc"))]
mod tests {
    use super::*;
    use crate::device::{DevNode, Device, Health};

    fn dev(id: &str, node: Option<&str>) -> Device {
        Device {
            id: id.into(),
            health: Health::Healthy,
            numa_node: None,
            nodes: (node.iter())
                .map(|n| DevNode { host_path: format!("/host/dev/{n}"), container_path: format!("/dev/{n}") })
                .collect(),
            pci_address: None,
            afu_id: None,
        }
    }

    #[test]
    fn one_device_per_node_and_none_without() {
        let one = spec("b-com.com/accelerator", &[dev("0000:5e:00.0", Some("dfl-port.0")), dev("7", None)]).unwrap();
        assert_eq!(one.names.iter().collect::<Vec<_>>(), ["b-com.com/accelerator=0000:5e:00.0"]);
        let text = one.text;
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["cdiVersion"], "0.5.0");
        assert_eq!(doc["kind"], "b-com.com/accelerator");
        let dotted: serde_json::Value =
            serde_json::from_str(&spec("e.com/fpga.afu", &[dev("0", Some("dfl-port.0"))]).unwrap().text).unwrap();
        assert_eq!(dotted["cdiVersion"], "0.6.0", "a dot in the class needs 0.6.0");
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
    fn an_allocate_is_ready_only_for_devices_the_file_on_disk_describes() {
        let dir = crate::sim::TempDir::new("cdi").unwrap();
        let failures = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&failures);
        let file = SpecFile::new(dir.path(), "k8s-accel-e.com_fpga.sock", "e.com/fpga", move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        let ready = |names: &[&str]| file.ready_for(names);
        let (zero, one) = ("e.com/fpga=0", "e.com/fpga=1");
        file.set(spec("e.com/fpga", &[dev("0", Some("dfl-port.0")), dev("1", Some("dfl-port.1"))]));
        assert!(ready(&[zero]).unwrap_err().contains("not written yet"), "not ours yet: nothing written");
        file.own();
        assert_eq!(ready(&[zero, one]), Ok(()));
        // Port 1 leaves the resource: the file no longer describes it, though a list read before may.
        file.set(spec("e.com/fpga", &[dev("0", Some("dfl-port.0"))]));
        assert!(ready(&[zero, one]).unwrap_err().contains("does not describe e.com/fpga=1"));
        assert_eq!(ready(&[zero]), Ok(()));
        // Nothing named: nothing in the file is read.
        assert_eq!(ready(&[]), Ok(()));
        // The directory gone: the write fails, once reported to the daemon, and the Allocate waits.
        std::fs::remove_dir_all(dir.path()).unwrap();
        std::fs::write(dir.path(), "").unwrap();
        assert!(ready(&[zero]).unwrap_err().contains("cannot be written"));
        assert!(ready(&[zero]).is_err());
        assert_eq!(failures.load(std::sync::atomic::Ordering::SeqCst), 1, "one new reason, one wake-up");
        assert_eq!(ready(&[]), Ok(()));
        std::fs::remove_file(dir.path()).unwrap();
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
        assert!(remove(dir.path(), "a.json").unwrap());
        assert!(!remove(dir.path(), "a.json").unwrap(), "already gone");
        assert!(write_atomically(&dir.path().join("missing"), "a.json", "{}").is_err());
    }

    #[test]
    fn kinds_that_cdi_refuses() {
        for ok in ["b-com.com/accelerator", "intel.com/afu-d8424dc4", "e.com/fpga.afu", "a/b", "A_b.c/D-9"] {
            assert_eq!(check_kind(ok), Ok(()), "{ok}");
        }
        // Valid Kubernetes resource names all.
        for bad in ["1e.com/acc", "e.com/9acc", "e.com/acc-", "e.com/_acc", "e.com-/acc"] {
            let e = check_kind(bad).unwrap_err();
            assert!(e.contains("is not a CDI device kind"), "{bad}: {e}");
        }
    }

    #[test]
    fn stale_candidates_are_ours_and_not_current() {
        let dir = crate::sim::TempDir::new("cdi").unwrap();
        for name in [
            "k8s-accel-b-com.com_accelerator.json",
            "k8s-accel-e.com_afu-1.json",
            ".k8s-accel-e.com_afu-2.json.tmp",
            "vendor.com-gpu.json",
            "k8s-accel-notes.txt",
            ".vendor.json.tmp",
        ] {
            std::fs::write(dir.path().join(name), "{}").unwrap();
        }
        let current = vec!["k8s-accel-b-com.com_accelerator.json".to_string()];
        assert_eq!(
            stale(dir.path(), &current),
            [
                (".k8s-accel-e.com_afu-2.json.tmp".to_string(), "k8s-accel-e.com_afu-2.sock".to_string()),
                ("k8s-accel-e.com_afu-1.json".to_string(), "k8s-accel-e.com_afu-1.sock".to_string()),
            ]
        );
        assert!(stale(&dir.path().join("absent"), &current).is_empty());
    }
}
