//! Registration that always reaches the kubelet: any resource name under any kubelet directory, a directory
//! too long for any socket, a hung kubelet replaced by a new one, a second instance during a surge upgrade,
//! and one Register per kubelet restart. Real binary, fake kubelet, real Unix sockets in temp dirs.

mod common;

use common::{command, sockets, wait_until, Plugin, Rig, WAIT};
use k8s_accelerator_devplugin::endpoint::{self, MAX_SOCKET_PATH};
use k8s_accelerator_devplugin::sim::{Behavior, FakeKubelet, SimNode, TempDir};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SOCKET: &str = "k8s-accel-b-com.com_accelerator.sock";

/// A short root for directories of exact lengths, whatever TMPDIR is: `/tmp/ka<pid>-<n>`.
struct ShortRoot(PathBuf);

impl ShortRoot {
    fn new(n: u32) -> ShortRoot {
        let path = PathBuf::from(format!("/tmp/ka{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        ShortRoot(path)
    }

    /// A directory whose path is exactly `len` bytes.
    fn dir_of_length(&self, len: usize) -> PathBuf {
        let base = self.0.as_os_str().len() + 1;
        let dir = self.0.join("d".repeat(len - base));
        assert_eq!(dir.as_os_str().len(), len);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

impl Drop for ShortRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A valid extended resource name of exactly `len` bytes (22 ≤ len ≤ 308): a domain of 63-byte labels, `/`,
/// a name of up to 63 bytes. 308 is the longest the kubelet accepts: it checks `requests.<name>` as a
/// qualified name, so the domain has at most 253 − 9 = 244 bytes.
fn resource_name_of_length(len: usize) -> String {
    let name_len = (len - 21).min(63);
    let mut domain_len = len - 1 - name_len;
    let mut labels = Vec::new();
    while domain_len > 0 {
        let label = domain_len.min(63);
        // A label and its dot; never leave a 1-byte remainder that would need an empty label.
        let take = if domain_len > 63 && domain_len - 64 < 2 { 61 } else { label };
        labels.push("a".repeat(take));
        domain_len -= take + usize::from(domain_len > take);
    }
    let name = format!("{}/{}", labels.join("."), "n".repeat(name_len));
    assert_eq!(name.len(), len, "{name}");
    assert_eq!(k8s_accelerator_devplugin::cli::validate_resource_name(&name), Ok(()), "{name}");
    name
}

fn probe(dir: &Path, resource: &str) -> (Option<i32>, String) {
    let out = command(&["probe", "--device-plugin-path", dir.to_str().unwrap(), "--resource-name", resource])
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn every_resource_name_is_served_under_every_kubelet_directory_length() {
    let node = SimNode::new().unwrap();
    let root = ShortRoot::new(0);
    // The default directory, k0s' and microk8s' (31, 35 and 56 bytes), 64 (the length names are sized
    // for when ours is shorter), and the longest that still takes a socket.
    for dir_len in [31, 35, 56, 64, endpoint::MAX_DIR] {
        let dir = root.dir_of_length(dir_len);
        let kubelet = FakeKubelet::start(&dir).unwrap();
        for name_len in [60, 100, 308] {
            let resource = resource_name_of_length(name_len);
            let mut p =
                Plugin::spawn_on(&dir, &node.sysfs(), &node.dev(), &["--backend", "aws", "--resource-name", &resource]);
            let before = kubelet.accepted();
            let reg = kubelet
                .wait_registration(before + 1, WAIT)
                .unwrap_or_else(|| panic!("{dir_len}-byte directory, {name_len}-byte name: no registration"));
            assert_eq!(reg.request.resource_name, resource);
            let endpoint = &reg.request.endpoint;
            assert!(!endpoint.contains('/') && endpoint.ends_with(".sock"), "{endpoint}");
            assert!(endpoint::is_ours(endpoint), "{endpoint}");
            assert!(dir_len + 1 + endpoint.len() <= MAX_SOCKET_PATH, "{endpoint}");
            // Also under a kubelet directory of 64 bytes, longer than the container's mount point.
            assert!(dir_len.max(64) + 1 + endpoint.len() <= MAX_SOCKET_PATH, "{endpoint}");
            kubelet.wait_devices_since(reg.at, WAIT, |d| d.len() == 40).expect("the list");
            let (code, text) = probe(&dir, &resource);
            assert_eq!(code, Some(0), "{dir_len}/{name_len}: {text}");
            assert!(text.contains(endpoint.as_str()), "{text}");
            // Stable across restarts: a new run serves the same name.
            p.signal(libc::SIGTERM);
            assert_eq!(p.wait_exit(WAIT).and_then(|s| s.code()), Some(0));
            let _again =
                Plugin::spawn_on(&dir, &node.sysfs(), &node.dev(), &["--backend", "aws", "--resource-name", &resource]);
            let reg = kubelet.wait_registration(before + 2, WAIT).expect("registered again");
            assert_eq!(&reg.request.endpoint, endpoint);
        }
    }
}

#[test]
fn a_kubelet_directory_longer_than_the_plugins_still_reaches_the_socket() {
    // A DaemonSet mounts the host's directory (here: reached through a 64-byte path) at a shorter path in
    // the container (here: the real 31-byte directory). The kubelet dials <its path>/<endpoint>.
    let node = SimNode::new().unwrap();
    let root = ShortRoot::new(1);
    let container_dir = root.dir_of_length(31);
    let host_dir = root.0.join("h".repeat(64 - root.0.as_os_str().len() - 1));
    assert_eq!(host_dir.as_os_str().len(), 64);
    std::os::unix::fs::symlink(&container_dir, &host_dir).unwrap();
    let kubelet = FakeKubelet::start(&host_dir).unwrap();
    let resource = resource_name_of_length(308);
    let _p = Plugin::spawn_on(
        &container_dir,
        &node.sysfs(),
        &node.dev(),
        &["--backend", "aws", "--resource-name", &resource],
    );
    let reg = kubelet.wait_registration(1, WAIT).expect("the kubelet reached the plugin through its own path");
    assert!(host_dir.join(&reg.request.endpoint).as_os_str().len() <= MAX_SOCKET_PATH);
}

#[test]
fn a_directory_too_long_for_any_socket_exits_2_with_one_line() {
    let root = ShortRoot::new(2);
    for len in [endpoint::MAX_DIR + 1, 104, 200] {
        let dir = root.dir_of_length(len);
        for args in [
            vec!["--backend", "aws", "--device-plugin-path", dir.to_str().unwrap()],
            vec!["probe", "--device-plugin-path", dir.to_str().unwrap()],
        ] {
            let started = Instant::now();
            let out = command(&args).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(stderr.contains(dir.to_str().unwrap()), "names the directory: {stderr}");
            assert!(stderr.contains(&format!("{len} bytes long")), "its length: {stderr}");
            assert!(stderr.contains("107 bytes"), "the limit: {stderr}");
            assert!(started.elapsed() < WAIT, "no retrying");
        }
    }
}

#[test]
fn a_bind_failure_is_logged_with_its_cause_and_retried() {
    let rig = Rig::new();
    // A directory where our socket should be: nothing can remove it or bind there.
    std::fs::create_dir(rig.dir().join(SOCKET)).unwrap();
    let p = rig.aws("1", &["--log-level", "info"]);
    assert!(p.wait_log("cannot serve on", WAIT), "{}", p.log());
    let log = p.log();
    let expected = format!(
        "cannot serve on {}: cannot bind the socket: a directory is in the way",
        rig.dir().join(SOCKET).display()
    );
    assert!(log.contains(&expected), "{log}");
    // Retries (50, 100, 200 ms …) are logged at debug, and gRPC core's own error lines not at all.
    std::thread::sleep(Duration::from_millis(400));
    let log = p.log();
    assert_eq!(log.matches("[INFO] serving").count(), 1, "{log}");
    assert_eq!(log.matches("[WARN]").count(), 1, "{log}");
    let grpc_line = |l: &str| l.starts_with(['E', 'I', 'D']) && l.as_bytes().get(1).is_some_and(u8::is_ascii_digit);
    assert!(!log.contains("BindFail") && !log.lines().any(grpc_line), "only our own words: {log}");
    std::fs::remove_dir(rig.dir().join(SOCKET)).unwrap();
    rig.kubelet.wait_registration(1, WAIT).expect("registered once the socket could be bound");

    // A plain file in the way (gRPC replaces only sockets): said, removed, and the retry succeeds.
    let rig = Rig::new();
    std::fs::write(rig.dir().join(SOCKET), "").unwrap();
    let p = rig.aws("1", &[]);
    rig.kubelet.wait_registration(1, WAIT).expect("registered after removing the file");
    assert!(p.log().contains("a file that is not a socket was in the way; removed it"), "{}", p.log());
}

#[test]
fn a_new_kubelet_replacing_a_hung_one_gets_the_register_at_once() {
    let node = SimNode::new().unwrap();
    let dir = TempDir::new("kubelet").unwrap();
    let hung = FakeKubelet::start(dir.path()).unwrap();
    hung.set_behavior(Behavior::Hang);
    let p = Plugin::spawn_on(dir.path(), &node.sysfs(), &node.dev(), &["--backend", "aws"]);
    hung.wait_register_calls(1, WAIT).expect("a Register reaches the hung kubelet");
    // A new kubelet unlinks kubelet.sock and listens at the same path; the hung one keeps its listener.
    let replaced = Instant::now();
    let kubelet = FakeKubelet::start(dir.path()).unwrap();
    let reg = kubelet.wait_registration(1, WAIT).expect("registered with the new kubelet");
    let took = reg.at.duration_since(replaced);
    // Sharing the hung call's connection, the new Register waited for the old one's 10 s deadline; a reconnect
    // backoff would cost a second. Measured: about 15 ms (the gathering window).
    assert!(took < Duration::from_millis(500), "took {took:?}\n{}", p.log());
    assert_eq!(hung.registrations().len(), 1, "the hung kubelet got no second call");
    // The superseded Register was cancelled, not left to time out.
    assert_eq!(hung.release_hung(), 1, "the hung call was still open:\n{}", p.log());
    kubelet.plugin().unwrap().get_device_plugin_options(&Default::default()).unwrap();
}

#[test]
fn a_second_instance_waits_then_takes_over_when_the_first_stops() {
    let rig = Rig::new();
    let mut first = rig.aws("2", &[]);
    rig.kubelet.wait_registration(1, WAIT).unwrap();
    let socket = rig.dir().join(SOCKET);
    let inode = std::fs::metadata(&socket).unwrap().ino();

    let mut second = rig.aws("2", &[]);
    // The socket as the plugin names it: inside CI's chroot, the plugin sees a shorter path than ours.
    let waiting = format!("/{SOCKET}; waiting for it to stop");
    assert!(second.wait_log(&waiting, WAIT), "{}", second.log());
    assert!(second.log().contains("another instance serves b-com.com/accelerator on /"), "{}", second.log());
    // A process for another resource in the same directory is not held up.
    let _other = rig.aws("2", &["--resource-name", "example.com/other"]);
    assert!(wait_until(WAIT, || rig.kubelet.accepted() == 2), "the other resource registers");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(second.log().matches("waiting for it to stop").count(), 1, "logged once: {}", second.log());
    assert!(second.wait_exit(Duration::ZERO).is_none(), "still running");
    assert_eq!(rig.kubelet.registrations().len(), 2, "the second instance did not register");
    assert_eq!(std::fs::metadata(&socket).unwrap().ino(), inode, "nor touch the first one's socket");
    // Its liveness probe passes while it waits: the resource is served.
    let (code, text) = probe(rig.dir(), "b-com.com/accelerator");
    assert_eq!(code, Some(0), "{text}");

    let stopped = Instant::now();
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit(WAIT).and_then(|s| s.code()), Some(0));
    let reg = rig.kubelet.wait_registration(3, WAIT).expect("the second instance registers");
    assert!(reg.at.duration_since(stopped) < Duration::from_secs(1), "took {:?}", reg.at.duration_since(stopped));
    assert_eq!(reg.request.endpoint, SOCKET);
    assert!(second.log().contains("the other instance has stopped: taking over"), "{}", second.log());
    rig.kubelet.wait_devices(WAIT, |d| d.len() == 2).unwrap();

    // A third waits in turn; SIGKILL of the owner (no clean-up at all) hands over too.
    let third = rig.aws("2", &[]);
    assert!(third.wait_log("waiting for it to stop", WAIT), "{}", third.log());
    second.signal(libc::SIGKILL);
    second.wait_exit(WAIT).unwrap();
    rig.kubelet.wait_registration(4, WAIT).expect("the third instance registers after SIGKILL of the second");
    rig.kubelet.plugin().unwrap().get_device_plugin_options(&Default::default()).unwrap();
    assert_eq!(
        sockets(rig.dir()),
        ["k8s-accel-b-com.com_accelerator.sock", "k8s-accel-example.com_other.sock", "kubelet.sock"]
    );
}

#[test]
fn an_older_instance_without_a_lock_is_waited_for_too() {
    let rig = Rig::new();
    // What an older version looks like: a live socket under our name, and no lock file.
    let legacy = std::os::unix::net::UnixListener::bind(rig.dir().join(SOCKET)).unwrap();
    let p = rig.aws("1", &[]);
    assert!(p.wait_log("a process that holds no lock", WAIT), "{}", p.log());
    std::thread::sleep(Duration::from_millis(300));
    assert!(rig.kubelet.registrations().is_empty());
    drop(legacy); // stops answering; the file stays, as after a crash
    rig.kubelet.wait_registration(1, WAIT).expect("took over once the old socket stopped answering");

    // An older version named every socket k8s-accel-<resource>.sock, however long. For a resource whose name
    // is shortened now, a new process must still see the old one (during a surge upgrade), or both register.
    let rig = Rig::new();
    let resource = "example.com/afu-d8424dc4a4a3c413f89e433683f9040b";
    let old_name = format!("k8s-accel-{}.sock", resource.replace('/', "_"));
    let legacy = std::os::unix::net::UnixListener::bind(rig.dir().join(&old_name)).unwrap();
    let p = rig.aws("1", &["--resource-name", resource]);
    assert!(p.wait_log("a process that holds no lock", WAIT), "{}", p.log());
    std::thread::sleep(Duration::from_millis(300));
    assert!(rig.kubelet.registrations().is_empty());
    drop(legacy);
    let reg = rig.kubelet.wait_registration(1, WAIT).expect("registered once the old instance stopped");
    assert_ne!(reg.request.endpoint, old_name, "under the new, shortened name");
}

#[test]
fn one_kubelet_restart_causes_one_register() {
    let mut rig = Rig::new();
    let p = rig.aws("2", &[]);
    rig.kubelet.wait_registration(1, WAIT).unwrap();
    // A double Register shows up in a few restarts out of a hundred (when kubelet.sock appears just after a
    // gathering window), so it takes many rounds to catch one.
    for round in 1..=100 {
        rig.kubelet.restart().unwrap();
        let reg =
            rig.kubelet.wait_registration(round + 1, WAIT).unwrap_or_else(|| panic!("round {round}: no Register"));
        rig.kubelet.wait_devices_since(reg.at, WAIT, |d| d.len() == 2).unwrap();
        // Long enough for a second Register of ours (one gathering window later) to reach the kubelet.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(rig.kubelet.registrations().len(), round + 1, "round {round}:\n{}", p.log());
    }
}

#[test]
fn more_units_than_one_container_can_take_is_reported_at_scan_time() {
    let rig = Rig::new();
    let p = rig.aws("30000", &[]);
    rig.kubelet.wait_devices(WAIT, |d| d.len() == 30_000).expect("the list");
    // 0..21845 joined with commas still fits in Linux's 131072-byte environment string; one more unit may not.
    let expected = "30000 devices are advertised, but a container can be given at most";
    assert!(p.wait_log(expected, WAIT), "{}", p.log());
    assert_eq!(p.log().matches(expected).count(), 1, "logged once");
    let mut req = k8s_accelerator_devplugin::api::AllocateRequest::new();
    let mut c = k8s_accelerator_devplugin::api::ContainerAllocateRequest::new();
    c.devices_ids = (0..30_000).map(|i| i.to_string()).collect();
    req.container_requests.push(c);
    match rig.client().allocate(&req) {
        Err(grpcio::Error::RpcFailure(s)) => {
            assert_eq!(s.code(), grpcio::RpcStatusCode::INVALID_ARGUMENT);
            assert!(s.message().contains("ACCELERATOR_UNITS"), "{}", s.message());
        }
        other => panic!("{other:?}"),
    }
}
