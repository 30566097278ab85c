//! Helpers shared by the integration tests: the real plugin binary run as a child process.
#![allow(dead_code)]

use k8s_accelerator_devplugin::sim::TempDir;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_k8s-accelerator-devplugin");
pub const WAIT: Duration = Duration::from_secs(10);

/// The plugin binary to run. By default the one cargo built for these tests; CI also runs a subset of the
/// tests against the static release binary inside an empty chroot:
/// - `K8S_ACCEL_TEST_BIN`: another binary;
/// - `K8S_ACCEL_TEST_CHROOT=<root>`: run `chroot <root> /k8s-accelerator-devplugin` instead (the binary must
///   be there, and TMPDIR inside `<root>` so that the tests' temp dirs are visible to it); arguments that
///   are paths under `<root>` are passed relative to it.
pub fn command<S: AsRef<str>>(args: &[S]) -> Command {
    match std::env::var_os("K8S_ACCEL_TEST_CHROOT") {
        Some(root) => {
            let root = root.to_string_lossy().trim_end_matches('/').to_string();
            let mut c = Command::new("chroot");
            c.arg(&root).arg("/k8s-accelerator-devplugin");
            c.args(args.iter().map(|a| match a.as_ref().strip_prefix(&root) {
                Some(inside) if inside.starts_with('/') => inside.to_string(),
                _ => a.as_ref().to_string(),
            }));
            c
        }
        None => {
            let mut c = Command::new(std::env::var("K8S_ACCEL_TEST_BIN").unwrap_or_else(|_| BIN.to_string()));
            c.args(args.iter().map(AsRef::as_ref));
            c
        }
    }
}

/// The plugin binary running in the background, its stderr kept in a file for assertions and for
/// diagnosing failures.
pub struct Plugin {
    child: Child,
    log: PathBuf,
    _logs: TempDir,
}

impl Plugin {
    pub fn spawn(args: &[&str]) -> Plugin {
        let logs = TempDir::new("pluginlog").expect("temp dir");
        let log = logs.path().join("stderr.log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start the plugin binary");
        Plugin { child, log, _logs: logs }
    }

    /// The usual flags for a simulated node and kubelet directory, plus `extra`.
    pub fn spawn_on(dir: &Path, sys: &Path, dev: &Path, extra: &[&str]) -> Plugin {
        let mut args = vec![
            "--device-plugin-path".to_string(),
            dir.display().to_string(),
            "--sysfs-root".into(),
            sys.display().to_string(),
            "--dev-root".into(),
            dev.display().to_string(),
            "--log-level".into(),
            "debug".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Plugin::spawn(&args)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.pid(), signal) };
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log().contains(needle))
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- plugin log ---\n{}--- end of plugin log ---", self.log());
        }
    }
}

/// An Allocate request: one container per slice of device IDs.
#[allow(dead_code)]
pub fn allocate_request(containers: &[&[&str]]) -> k8s_accelerator_devplugin::api::AllocateRequest {
    let mut req = k8s_accelerator_devplugin::api::AllocateRequest::new();
    for ids in containers {
        let mut c = k8s_accelerator_devplugin::api::ContainerAllocateRequest::new();
        c.devices_ids = ids.iter().map(|s| s.to_string()).collect();
        req.container_requests.push(c);
    }
    req
}

/// Allocates `ids` for one container and returns its response.
#[allow(dead_code)]
pub fn allocate_for_one(
    client: &k8s_accelerator_devplugin::api::DevicePluginClient,
    ids: &[&str],
) -> k8s_accelerator_devplugin::api::ContainerAllocateResponse {
    client.allocate(&allocate_request(&[ids])).expect("Allocate").container_responses.remove(0)
}

/// A test that cannot run here says why and passes, unless `K8S_ACCEL_TEST_STRICT` is set (CI sets it, where
/// every tool is installed and it runs as root): then it fails.
#[allow(dead_code)]
pub fn skip(why: String) {
    assert!(std::env::var_os("K8S_ACCEL_TEST_STRICT").is_none(), "K8S_ACCEL_TEST_STRICT, and {why}");
    eprintln!("skipping: {why}");
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The sockets in a directory, sorted.
pub fn sockets(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::FileTypeExt;
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// `(ID, health, NUMA node)` of each device in a list.
pub fn summary(devices: &[k8s_accelerator_devplugin::api::Device]) -> Vec<(String, String, Option<i64>)> {
    devices.iter().map(|d| (d.ID.clone(), d.health.clone(), d.topology.nodes.first().map(|n| n.ID))).collect()
}

/// The usual fixture: a simulated node, a fake kubelet serving in a directory of its own, and ways to start
/// the plugin against both.
pub struct Rig {
    pub node: k8s_accelerator_devplugin::sim::SimNode,
    pub kubelet: k8s_accelerator_devplugin::sim::FakeKubelet,
    dir: TempDir,
}

impl Rig {
    pub fn new() -> Rig {
        Rig::on(k8s_accelerator_devplugin::sim::SimNode::new().expect("simulated node"))
    }

    /// The fixture around a given node (e.g. one with real character devices).
    pub fn on(node: k8s_accelerator_devplugin::sim::SimNode) -> Rig {
        let dir = TempDir::new("kubelet").expect("kubelet dir");
        let kubelet = k8s_accelerator_devplugin::sim::FakeKubelet::start(dir.path()).expect("fake kubelet");
        Rig { node, kubelet, dir }
    }

    /// The device-plugins directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The plugin on this node and directory, with `extra` flags.
    pub fn plugin(&self, extra: &[&str]) -> Plugin {
        Plugin::spawn_on(self.dir(), &self.node.sysfs(), &self.node.dev(), extra)
    }

    /// A client for the plugin, once it has registered.
    pub fn client(&self) -> k8s_accelerator_devplugin::api::DevicePluginClient {
        self.kubelet.wait_registration(1, WAIT).expect("registered");
        self.kubelet.plugin().expect("a plugin client")
    }

    /// Waits for a ListAndWatch list whose `(ID, health)` pairs are exactly `want`.
    pub fn wait_list(&self, want: &[(&str, &str)]) -> k8s_accelerator_devplugin::api::ListAndWatchResponse {
        let matches = |devices: &[k8s_accelerator_devplugin::api::Device]| {
            devices.len() == want.len() && devices.iter().zip(want).all(|(d, (id, h))| d.ID == *id && d.health == *h)
        };
        let update = self.kubelet.wait_devices(WAIT, matches).unwrap_or_else(|| {
            panic!("no list {want:?}; last: {:?}", self.kubelet.updates().last().map(|u| summary(&u.devices)))
        });
        let mut list = k8s_accelerator_devplugin::api::ListAndWatchResponse::new();
        list.devices = update.devices;
        list
    }

    /// The plugin with the aws backend and `units` units, plus `extra` flags.
    pub fn aws(&self, units: &str, extra: &[&str]) -> Plugin {
        let mut args = vec!["--backend", "aws", "--accel-nbunits", units];
        args.extend_from_slice(extra);
        self.plugin(&args)
    }
}
