//! CDI (`--cdi-spec-dir`): the spec file per resource, written atomically and kept in step with the devices,
//! valid under the official CDI JSON schema, and Allocate answering with CDI devices instead of DeviceSpecs.
//! Real binary, simulated kubelet and node, real sockets.

mod common;

use common::{skip, Rig, WAIT};
use k8s_accelerator_devplugin::api;
use k8s_accelerator_devplugin::discovery::aws_fpga::Generation;
use k8s_accelerator_devplugin::sim::{AwsDriver, Fme, SimNode, TempDir, AFU_ID};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const SPEC: &str = "k8s-accel-b-com.com_accelerator.json";

/// The node most tests here use: one OPAE card at 0000:5e:00.0 with one port (ID `0000:5e:00.0`).
fn one_port_card(rig: &Rig) {
    rig.node.opae_card("0000:5e:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(0, 0)]).unwrap();
}

/// The official CDI schema and its examples: `K8S_ACCEL_CDI_SCHEMA`, or `shared/reference/cdi-schema` beside
/// the repository (where CI has it).
fn schema_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("K8S_ACCEL_CDI_SCHEMA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/cdi-schema"));
    if dir.join("schema.json").is_file() {
        Some(dir)
    } else {
        skip(format!("no CDI schema at {} (set K8S_ACCEL_CDI_SCHEMA)", dir.display()));
        None
    }
}

/// Validates `files` against the CDI schema with Python's `jsonschema` (`K8S_ACCEL_TEST_PYTHON`, or
/// `python3`); one line per file: `valid <path>`, or `invalid <path>: <reason>` (a file that is not JSON
/// at all is invalid too). None when that Python has no `jsonschema` (CI provides one).
fn validate(schema: &Path, files: &[PathBuf]) -> Option<String> {
    const SCRIPT: &str = r#"
import json, pathlib, sys
try:
    from jsonschema import Draft7Validator
    from referencing import Registry
    from referencing.jsonschema import DRAFT7
except ImportError as e:
    print("no jsonschema: %s" % e, file=sys.stderr)
    sys.exit(3)
base = pathlib.Path(sys.argv[1])
defs = json.loads((base / "defs.json").read_text())
registry = Registry().with_resource("defs.json", DRAFT7.create_resource(defs))
validator = Draft7Validator(json.loads((base / "schema.json").read_text()), registry=registry)
for path in sys.argv[2:]:
    try:
        document = json.loads(pathlib.Path(path).read_text())
    except ValueError as e:
        print("invalid %s: not JSON: %s" % (path, e))
        continue
    errors = list(validator.iter_errors(document))
    print(("invalid %s: %s" % (path, errors[0].message)) if errors else "valid %s" % path)
"#;
    let python = std::env::var("K8S_ACCEL_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python).arg("-c").arg(SCRIPT).arg(schema).args(files).output().expect("run python");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(3) {
        skip(format!("{python}: {stderr}"));
        return None;
    }
    assert!(out.status.success(), "the validator failed: {stderr}");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_validator_tells_good_from_bad_and_our_specs_are_good() {
    let Some(schema) = schema_dir() else { return };
    let good = schema.join("testdata/good");
    let bad = schema.join("testdata/bad");
    let list = |d: &Path| -> Vec<PathBuf> { std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()).collect() };
    let (good, bad) = (list(&good), list(&bad));
    assert!(!good.is_empty() && !bad.is_empty());
    let rig = Rig::new();
    one_port_card(&rig);
    let cdi = TempDir::new("cdi").unwrap();
    let _p = rig.plugin(&["--cdi-spec-dir", cdi.path().to_str().unwrap()]);
    rig.wait_list(&[("0000:5e:00.0", "Healthy")]);
    let ours = cdi.path().join(SPEC);
    assert!(common::wait_until(WAIT, || ours.exists()));
    let files: Vec<PathBuf> = good.iter().chain(&bad).cloned().chain([ours.clone()]).collect();
    let Some(report) = validate(&schema, &files) else { return };
    for f in &good {
        assert!(report.contains(&format!("valid {}", f.display())), "{report}");
    }
    for f in &bad {
        assert!(
            report.contains(&format!("invalid {}", f.display())),
            "the validator accepts {}: {report}",
            f.display()
        );
    }
    assert!(report.contains(&format!("valid {}", ours.display())), "{report}");
}

/// An AWS slot is one CDI device with every node of its driver and its application PF's address; a slot
/// without a driver has the address only. The spec passes the official schema.
#[test]
fn an_aws_slot_is_a_cdi_device_with_every_node_of_its_driver() {
    let rig = Rig::new();
    let slots = rig.node.aws_instance(Generation::F1, 2).unwrap();
    rig.node.aws_bind(&slots[0], AwsDriver::Xdma(0)).unwrap();
    let cdi = TempDir::new("cdi").unwrap();
    let p = rig.plugin(&["--backend", "aws-fpga", "--cdi-spec-dir", cdi.path().to_str().unwrap()]);
    rig.wait_list(&[("0", "Healthy"), ("1", "Healthy")]);
    let path = cdi.path().join(SPEC);
    assert!(common::wait_until(WAIT, || path.exists()), "{}", p.log());
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let devices = doc["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2, "{doc}");
    assert_eq!(devices[0]["name"], "0");
    let nodes = devices[0]["containerEdits"]["deviceNodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 27);
    assert!(nodes.iter().all(|n| n["path"].as_str().unwrap().starts_with("/dev/xdma0_")), "{doc}");
    assert_eq!(devices[0]["containerEdits"]["env"][0], format!("ACCELERATOR_PCI_ADDRESS_0={}", slots[0].application));
    // The slot with no driver: its address only, so that its name resolves (and so it does after an image
    // load took its nodes away).
    assert_eq!(devices[1]["name"], "1");
    assert!(devices[1]["containerEdits"].get("deviceNodes").is_none(), "{doc}");
    assert_eq!(devices[1]["containerEdits"]["env"][0], format!("ACCELERATOR_PCI_ADDRESS_1={}", slots[1].application));
    if let Some(schema) = schema_dir() {
        if let Some(out) = validate(&schema, std::slice::from_ref(&path)) {
            assert!(out.starts_with("valid "), "{out}");
        }
    }

    let mut req = api::AllocateRequest::new();
    let mut c = api::ContainerAllocateRequest::new();
    c.devices_ids = vec!["1".into(), "0".into()];
    req.container_requests.push(c);
    let resp = rig.client().allocate(&req).unwrap();
    let c = &resp.container_responses[0];
    let names: Vec<&str> = c.cdi_devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["b-com.com/accelerator=1", "b-com.com/accelerator=0"]);
    assert!(c.devices.is_empty());
    assert_eq!(c.envs["ACCELERATOR_PCI_ADDRESSES"], format!("{},{}", slots[1].application, slots[0].application));
}

#[test]
fn the_spec_follows_the_devices_and_allocate_answers_with_cdi_devices() {
    let rig = Rig::new();
    one_port_card(&rig);
    let cdi = TempDir::new("cdi").unwrap();
    // Another vendor's spec, which must never be touched.
    std::fs::write(cdi.path().join("vendor.com-gpu.json"), "{\"theirs\": true}\n").unwrap();
    let mut p = rig.plugin(&["--cdi-spec-dir", cdi.path().to_str().unwrap()]);
    rig.wait_list(&[("0000:5e:00.0", "Healthy")]);
    let path = cdi.path().join(SPEC);
    let read = || -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap() };
    assert!(common::wait_until(WAIT, || path.exists()), "{}", p.log());
    let doc = read();
    assert_eq!(doc["kind"], "b-com.com/accelerator");
    assert_eq!(doc["cdiVersion"], "0.5.0");
    assert_eq!(doc["devices"][0]["name"], "0000:5e:00.0");
    let node = &doc["devices"][0]["containerEdits"]["deviceNodes"][0];
    assert_eq!(node["path"], "/dev/intel-fpga-port.0");
    assert_eq!(node["hostPath"], rig.node.dev().join("intel-fpga-port.0").to_str().unwrap());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o644);

    // Allocate: CDI devices and the environment, no DeviceSpecs.
    let mut req = api::AllocateRequest::new();
    let mut c = api::ContainerAllocateRequest::new();
    c.devices_ids = vec!["0000:5e:00.0".into()];
    req.container_requests.push(c);
    let resp = rig.client().allocate(&req).unwrap();
    let c = &resp.container_responses[0];
    let names: Vec<&str> = c.cdi_devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["b-com.com/accelerator=0000:5e:00.0"]);
    assert!(c.devices.is_empty(), "no DeviceSpecs with CDI: {:?}", c.devices);
    assert_eq!(c.envs["ACCELERATOR_UNITS"], "0000:5e:00.0");

    // Hotplug: by the time ListAndWatch shows the new port, the spec has it.
    rig.node.dfl_card("0000:86:00.0", 1, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(1, 0)]).unwrap();
    rig.wait_list(&[("0000:5e:00.0", "Healthy"), ("0000:86:00.0", "Healthy")]);
    assert_eq!(read()["devices"].as_array().unwrap().len(), 2);

    // Only our file and the other vendor's, no temporary file; SIGTERM leaves the spec.
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(WAIT).and_then(|s| s.code()), Some(0));
    let mut names: Vec<String> =
        std::fs::read_dir(cdi.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, [SPEC, "vendor.com-gpu.json"]);
    assert_eq!(std::fs::read_to_string(cdi.path().join("vendor.com-gpu.json")).unwrap(), "{\"theirs\": true}\n");
}

#[test]
fn aws_units_have_no_cdi_device() {
    let rig = Rig::new();
    let cdi = TempDir::new("cdi").unwrap();
    let _p = rig.aws("2", &["--cdi-spec-dir", cdi.path().to_str().unwrap()]);
    rig.wait_list(&[("0", "Healthy"), ("1", "Healthy")]);
    let mut req = api::AllocateRequest::new();
    let mut c = api::ContainerAllocateRequest::new();
    c.devices_ids = vec!["1".into()];
    req.container_requests.push(c);
    let resp = rig.client().allocate(&req).unwrap();
    assert!(resp.container_responses[0].cdi_devices.is_empty());
    assert_eq!(resp.container_responses[0].envs["ACCELERATOR_UNITS"], "1");
    assert_eq!(std::fs::read_dir(cdi.path()).unwrap().count(), 0, "no spec for units without device nodes");
}

#[test]
fn a_cdi_directory_that_cannot_be_written_does_not_fail_allocates_that_name_no_cdi_device() {
    // AWS units name no CDI device: a `--cdi-spec-dir` that is a file (or read-only) changes nothing for
    // their pods.
    let rig = Rig::new();
    let parent = TempDir::new("cdi").unwrap();
    let file = parent.path().join("not-a-directory");
    std::fs::write(&file, "").unwrap();
    let p = rig.aws("2", &["--cdi-spec-dir", file.to_str().unwrap()]);
    rig.wait_list(&[("0", "Healthy"), ("1", "Healthy")]);
    let resp = rig.client().allocate(&common::allocate_request(&[&["1"]])).expect("Allocate of a unit");
    assert_eq!(resp.container_responses[0].envs["ACCELERATOR_UNITS"], "1");
    assert!(!p.log().contains("cannot write the CDI spec"), "{}", p.log());
    assert!(!p.log().contains("cannot remove the CDI spec"), "{}", p.log());
}

#[test]
fn a_resource_name_that_is_no_cdi_kind_exits_2() {
    let out =
        common::command(&["--cdi-spec-dir", "/var/run/cdi", "--resource-name", "example.com/2fpga"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("\"example.com/2fpga\" is not a CDI device kind"), "{stderr}");
}

#[test]
fn stale_specs_are_removed_once_no_instance_serves_them() {
    let rig = Rig::new();
    one_port_card(&rig);
    let cdi = TempDir::new("cdi").unwrap();
    // An earlier configuration's resource, a temporary file left by a crash, a spec of a resource that a
    // running instance still serves (its lock held), and another vendor's files.
    let put = |name: &str| std::fs::write(cdi.path().join(name), "{}\n").unwrap();
    for name in [
        "k8s-accel-e.com_old.json",
        ".k8s-accel-b-com.com_accelerator.json.tmp",
        "k8s-accel-e.com_served.json",
        "vendor.com-gpu.json",
        ".vendor.com-gpu.json.tmp",
    ] {
        put(name);
    }
    let locks = rig.dir().join("k8s-accel-locks");
    std::fs::create_dir_all(&locks).unwrap();
    let held = std::fs::File::create(locks.join("k8s-accel-e.com_served.lock")).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on a descriptor we own.
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);

    let p = rig.plugin(&["--cdi-spec-dir", cdi.path().to_str().unwrap()]);
    rig.wait_list(&[("0000:5e:00.0", "Healthy")]);
    // Stale files are looked for at the 5 s check once the process serves.
    let names = || -> Vec<String> {
        let mut n: Vec<String> =
            std::fs::read_dir(cdi.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        n.sort();
        n
    };
    let without_served = [".vendor.com-gpu.json.tmp", SPEC, "vendor.com-gpu.json"];
    let with_served = [".vendor.com-gpu.json.tmp", SPEC, "k8s-accel-e.com_served.json", "vendor.com-gpu.json"];
    // The first check 5 s after the start; if the process did not serve yet, the next 10 s later.
    let checks = Duration::from_secs(20);
    assert!(common::wait_until(checks, || names() == with_served), "{:?}\n{}", names(), p.log());
    assert!(p.log().contains("no running instance serves k8s-accel-e.com_old.sock"), "{}", p.log());

    // The instance serving it stops: gone at the next check, which comes later each time while a file is
    // left (10 s after the first, then 20 s).
    drop(held);
    let next_checks = Duration::from_secs(40);
    assert!(common::wait_until(next_checks, || names() == without_served), "{:?}\n{}", names(), p.log());
}

/// The local image `K8S_ACCEL_TEST_PODMAN_IMAGE`, whose entrypoint is a busybox (CI builds one from Debian's
/// busybox-static); None, with a message, without it.
fn podman_image() -> Option<String> {
    let image = std::env::var("K8S_ACCEL_TEST_PODMAN_IMAGE").ok();
    if image.is_none() {
        skip("set K8S_ACCEL_TEST_PODMAN_IMAGE to a local busybox image to run podman".into());
    }
    image
}

/// `podman run --device <each of devices> IMAGE stat -c '%F %t:%T' PATH`: podman 4.3 reads CDI specs only
/// from /etc/cdi and /var/run/cdi, so it runs in a mount namespace of its own where `cdi_dir` is mounted at
/// /var/run/cdi: the host's files there are neither seen nor touched (only /run/cdi itself is created if it
/// is missing, empty, as a mount point). The limits and runc are what this sandbox needs.
fn podman_stat(image: &str, cdi_dir: &Path, devices: &[String], path: &str) -> (bool, String) {
    const SCRIPT: &str = "mkdir -p /run/cdi && mount --bind \"$1\" /run/cdi && shift && exec podman \"$@\"";
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", SCRIPT, "sh"]).arg(cdi_dir);
    cmd.args(["--runtime", "runc", "run", "--rm", "--network", "none", "--pull", "never"]);
    cmd.args(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]);
    for d in devices {
        cmd.args(["--device", d]);
    }
    cmd.args([image, "stat", "-c", "%F %t:%T", path]);
    let out = cmd.output().expect("run unshare and podman");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text.trim().to_string())
}

fn cdi_names(rig: &Rig, ids: &[&str]) -> Vec<String> {
    let mut req = api::AllocateRequest::new();
    let mut c = api::ContainerAllocateRequest::new();
    c.devices_ids = ids.iter().map(|s| s.to_string()).collect();
    req.container_requests.push(c);
    let resp = rig.client().allocate(&req).unwrap();
    resp.container_responses[0].cdi_devices.iter().map(|d| d.name.clone()).collect()
}

#[test]
fn podman_injects_the_nodes_that_allocate_names() {
    let Some(image) = podman_image() else { return };
    let rig = Rig::on(SimNode::with_char_devices().expect("mknod needs root"));
    one_port_card(&rig);
    let cdi = TempDir::new("cdi").unwrap();
    let p = rig.plugin(&["--cdi-spec-dir", cdi.path().to_str().unwrap()]);
    // Healthy: the character device's number matches the port's (510:0).
    rig.wait_list(&[("0000:5e:00.0", "Healthy")]);
    let first = cdi_names(&rig, &["0000:5e:00.0"]);
    assert_eq!(first, ["b-com.com/accelerator=0000:5e:00.0"]);
    let (ok, out) = podman_stat(&image, cdi.path(), &first, "/dev/intel-fpga-port.0");
    assert!(ok, "{out}\n{}", p.log());
    assert_eq!(out, "character special file 1fe:0", "510:0 in the container");

    // A name the spec does not describe: the runtime refuses the container.
    let (ok, out) = podman_stat(&image, cdi.path(), &["b-com.com/accelerator=0000:99:00.0".into()], "/dev");
    assert!(!ok, "{out}");
    assert!(out.contains("unresolvable CDI devices"), "{out}");

    // Hotplug: once ListAndWatch shows a port, a container can get it; once it is gone, none can.
    rig.node.dfl_card("0000:86:00.0", 1, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(1, 0)]).unwrap();
    rig.wait_list(&[("0000:5e:00.0", "Healthy"), ("0000:86:00.0", "Healthy")]);
    let both = cdi_names(&rig, &["0000:86:00.0", "0000:5e:00.0"]);
    let (ok, out) = podman_stat(&image, cdi.path(), &both, "/dev/dfl-port.1");
    assert!(ok, "{out}\n{}", p.log());
    assert_eq!(out, "character special file 1fe:1");
    rig.node.remove_function("0000:5e:00.0").unwrap();
    rig.wait_list(&[("0000:86:00.0", "Healthy")]);
    let (ok, out) = podman_stat(&image, cdi.path(), &first, "/dev/intel-fpga-port.0");
    assert!(!ok && out.contains("unresolvable CDI devices"), "{out}");
}

/// Lists the file names in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    n.sort();
    n
}

fn allocate_one(rig: &Rig, id: &str) -> Result<api::AllocateResponse, grpcio::Error> {
    rig.client().allocate(&common::allocate_request(&[&[id]]))
}

#[test]
fn allocate_waits_for_a_spec_that_can_be_written_and_a_spec_tampered_with_is_rewritten() {
    let rig = Rig::new();
    one_port_card(&rig);
    let cdi = TempDir::new("cdi").unwrap();
    let missing = cdi.path().join("not-yet");
    // Full discoveries every 2 s: the check that repairs a spec comes with them when nothing is pending.
    let p = rig.plugin(&["--cdi-spec-dir", missing.to_str().unwrap(), "--scan-interval", "2s"]);
    rig.wait_list(&[("0000:5e:00.0", "Healthy")]);
    // The directory is missing: no spec, so Allocate names no CDI device the runtime could not resolve.
    match allocate_one(&rig, "0000:5e:00.0") {
        Err(grpcio::Error::RpcFailure(s)) => {
            assert_eq!(s.code(), grpcio::RpcStatusCode::UNAVAILABLE);
            assert!(s.message().contains("cannot be written"), "{}", s.message());
        }
        other => panic!("Allocate without a spec: {other:?}"),
    }
    assert!(p.log().contains("cannot write the CDI spec of b-com.com/accelerator"), "{}", p.log());
    // A device that does not exist is refused as such, spec or no spec.
    match allocate_one(&rig, "0000:99:00.0") {
        Err(grpcio::Error::RpcFailure(s)) => assert_eq!(s.code(), grpcio::RpcStatusCode::INVALID_ARGUMENT, "{s:?}"),
        other => panic!("Allocate of an unknown device: {other:?}"),
    }
    // It heals at the next scan.
    std::fs::create_dir(&missing).unwrap();
    p.signal(libc::SIGHUP);
    let spec = missing.join(SPEC);
    assert!(common::wait_until(WAIT, || spec.exists()), "{}", p.log());
    // SIGHUP also registers again (a new server on a new socket): Allocate once that is done.
    rig.kubelet.wait_registration(2, WAIT).expect("registered again after SIGHUP");
    let resp = allocate_one(&rig, "0000:5e:00.0").expect("Allocate once the spec is there");
    assert_eq!(resp.container_responses[0].cdi_devices.len(), 1);

    // Removed, or overwritten, by someone else: rewritten at the next scan.
    let good = std::fs::read_to_string(&spec).unwrap();
    std::fs::remove_file(&spec).unwrap();
    p.signal(libc::SIGHUP);
    assert!(common::wait_until(WAIT, || spec.exists()), "{}", p.log());
    assert_eq!(std::fs::read_to_string(&spec).unwrap(), good);
    std::fs::write(&spec, "garbage").unwrap();
    p.signal(libc::SIGHUP);
    assert!(common::wait_until(WAIT, || std::fs::read_to_string(&spec).unwrap() == good), "{}", p.log());
    assert!(p.log().contains("(it had been removed or changed by another process)"), "{}", p.log());

    // Removed just before an Allocate: the Allocate writes it again before naming its devices.
    // Once registered again after the last SIGHUP (several close together make one Register).
    let settled = || {
        let log = p.log();
        log.rfind("registered b-com.com/accelerator with").unwrap_or(0) > log.rfind("SIGHUP").unwrap_or(0)
    };
    assert!(common::wait_until(WAIT, settled), "{}", p.log());
    std::fs::remove_file(&spec).unwrap();
    let resp = allocate_one(&rig, "0000:5e:00.0").expect("Allocate with the spec removed");
    assert_eq!(resp.container_responses[0].cdi_devices.len(), 1);
    assert_eq!(std::fs::read_to_string(&spec).unwrap(), good, "rewritten by the Allocate itself");

    // Removed with no signal: the next check (here every 2 s, with the discoveries) puts it back.
    std::fs::remove_file(&spec).unwrap();
    assert!(common::wait_until(Duration::from_secs(8), || spec.exists()), "{}", p.log());
}

#[test]
fn a_spec_write_that_fails_in_an_allocate_is_retried_soon_even_when_the_plugin_is_idle() {
    // Full discoveries and health passes an hour apart: once the start is done, the event loop sleeps until
    // its idle check, a minute later. A write that fails in an Allocate (a server thread) must wake it so
    // that the write is retried within seconds, not at that check.
    let rig = Rig::new();
    one_port_card(&rig);
    let parent = TempDir::new("cdi").unwrap();
    let cdi = parent.path().join("cdi");
    std::fs::create_dir(&cdi).unwrap();
    let p = rig.plugin(&["--cdi-spec-dir", cdi.to_str().unwrap(), "--scan-interval", "1h", "--health-interval", "1h"]);
    rig.wait_list(&[("0000:5e:00.0", "Healthy")]);
    assert!(p.wait_log("nothing pending: checking for missed events every 60s", WAIT), "{}", p.log());
    let spec = cdi.join(SPEC);
    let good = std::fs::read_to_string(&spec).unwrap();

    // The directory becomes a file: the Allocate finds the spec gone and cannot write it.
    std::fs::rename(&cdi, parent.path().join("old")).unwrap();
    std::fs::write(&cdi, "").unwrap();
    match allocate_one(&rig, "0000:5e:00.0") {
        Err(grpcio::Error::RpcFailure(s)) => assert_eq!(s.code(), grpcio::RpcStatusCode::UNAVAILABLE, "{s:?}"),
        other => panic!("Allocate with the CDI directory gone: {other:?}"),
    }
    assert!(p.wait_log("pending: a CDI spec file to write", WAIT), "{}", p.log());
    std::fs::remove_file(&cdi).unwrap();
    std::fs::create_dir(&cdi).unwrap();
    // Checked again 5 s after the failure (twice that, if that check came before the directory was back).
    assert!(common::wait_until(Duration::from_secs(20), || spec.exists()), "{}", p.log());
    assert_eq!(std::fs::read_to_string(&spec).unwrap(), good);
    assert_eq!(p.log().matches("cannot write the CDI spec").count(), 1, "{}", p.log());
    allocate_one(&rig, "0000:5e:00.0").expect("Allocate once the spec is back");
}

#[test]
fn a_waiting_instance_leaves_the_serving_ones_spec_alone() {
    let rig = Rig::new();
    one_port_card(&rig);
    let cdi = TempDir::new("cdi").unwrap();
    let dir = cdi.path().to_str().unwrap();
    let mut first = rig.plugin(&["--cdi-spec-dir", dir]);
    rig.wait_list(&[("0000:5e:00.0", "Healthy")]);
    let spec = cdi.path().join(SPEC);
    assert!(common::wait_until(WAIT, || spec.exists()), "{}", first.log());
    let served = std::fs::read_to_string(&spec).unwrap();

    // The next version routes the port elsewhere: its view of the default resource is empty.
    let gzip = "example.com/gzip";
    let second = rig.plugin(&["--cdi-spec-dir", dir, "--afu-resource", &format!("{gzip}={}", AFU_ID)]);
    assert!(second.wait_log("waiting for it to stop", WAIT), "{}", second.log());
    // Its rescan (SIGHUP) and one 5 s check come and go.
    second.signal(libc::SIGHUP);
    assert!(second.wait_log("SIGHUP: rescanning", WAIT), "{}", second.log());
    std::thread::sleep(Duration::from_millis(5500));
    assert_eq!(std::fs::read_to_string(&spec).unwrap(), served, "the serving instance's spec is untouched");
    assert_eq!(names_in(cdi.path()), [SPEC], "{}", second.log());

    // The first one stops: the second takes over and writes its own view.
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit(WAIT).and_then(|s| s.code()), Some(0));
    let gzip_spec = "k8s-accel-example.com_gzip.json";
    assert!(
        common::wait_until(WAIT, || names_in(cdi.path()) == [gzip_spec]),
        "{:?}\n{}",
        names_in(cdi.path()),
        second.log()
    );
}
