//! One resource per accelerator function (`--afu-resource`): explicit names, auto names, resources registered
//! empty, a port moving when its AFU is reprogrammed, IDs of one resource refused on another's socket, and
//! re-registration of every resource. Real binary, simulated kubelet (one stream per resource), real sockets.

mod common;

use common::{command, Rig, WAIT};
use grpcio::RpcStatusCode;
use k8s_accelerator_devplugin::api;
use k8s_accelerator_devplugin::sim::{Fme, AFU_ID};
use std::path::PathBuf;
use std::time::Duration;

const DEFAULT: &str = "b-com.com/accelerator";
const GZIP: &str = "example.com/gzip";
/// The AFU every simulated port starts with, written the GUID way.
const GZIP_GUID: &str = "D8424DC4-A4A3-C413-F89E-433683F9040B";
const NET_AFU: &str = "00112233445566778899aabbccddeeff";

/// Three cards: 5e and 86 run the gzip AFU (AFU_ID), 3b runs the network AFU; 3b's port is returned.
fn three_cards(rig: &Rig) -> PathBuf {
    let fme = Some(Fme { instance: 0, ports_num: 1 });
    rig.node.opae_card("0000:5e:00.0", 0, 0, fme, &[(0, 0)]).unwrap();
    rig.node.dfl_card("0000:86:00.0", 1, 0, fme, &[(1, 0)]).unwrap();
    let net = rig.node.dfl_card("0000:3b:00.0", 0, 1, Some(Fme { instance: 1, ports_num: 1 }), &[(2, 0)]).unwrap();
    rig.node.set_afu(&net[0], NET_AFU).unwrap();
    net[0].clone()
}

fn ids(devices: &[api::Device]) -> Vec<&str> {
    devices.iter().map(|d| d.ID.as_str()).collect()
}

fn allocate(client: &api::DevicePluginClient, id: &str) -> grpcio::Result<api::AllocateResponse> {
    client.allocate(&common::allocate_request(&[&[id]]))
}

#[test]
fn named_resources_get_their_ports_and_only_theirs() {
    let rig = Rig::new();
    three_cards(&rig);
    let unused = "example.com/unused";
    let p = rig.plugin(&[
        "--afu-resource",
        &format!("{GZIP}={GZIP_GUID}"),
        "-afu-resource",
        &format!("{unused}=ffeeddccbbaa99887766554433221100"),
    ]);
    assert!(rig.kubelet.wait_resources(WAIT, &[DEFAULT, GZIP, unused]), "{:?}\n{}", rig.kubelet.resources(), p.log());
    let gzip = rig.kubelet.wait_devices_of(GZIP, WAIT, |d| d.len() == 2).expect("gzip's list");
    assert_eq!(ids(&gzip.devices), ["0000:5e:00.0", "0000:86:00.0"]);
    let default = rig.kubelet.wait_devices_of(DEFAULT, WAIT, |d| d.len() == 1).expect("the default list");
    assert_eq!(ids(&default.devices), ["0000:3b:00.0"]);
    // Registered at start with an empty list: the kubelet shows capacity 0, not "unknown".
    rig.kubelet.wait_devices_of(unused, WAIT, <[api::Device]>::is_empty).expect("an empty list for the unused name");
    // Each resource has its own socket.
    let endpoints: std::collections::BTreeSet<String> =
        rig.kubelet.registrations().iter().map(|r| r.request.endpoint.clone()).collect();
    assert_eq!(endpoints.len(), 3, "{endpoints:?}");

    // Allocate on one resource's socket knows only that resource's IDs.
    let gzip_client = rig.kubelet.plugin_for(GZIP).unwrap();
    let resp = allocate(&gzip_client, "0000:86:00.0").unwrap();
    assert_eq!(resp.container_responses[0].envs["ACCELERATOR_UNITS"], "0000:86:00.0");
    assert_eq!(resp.container_responses[0].devices[0].container_path, "/dev/dfl-port.1");
    match allocate(&gzip_client, "0000:3b:00.0") {
        Err(grpcio::Error::RpcFailure(s)) => {
            assert_eq!(s.code(), RpcStatusCode::INVALID_ARGUMENT);
            assert!(s.message().contains("unknown device ID"), "{}", s.message());
        }
        other => panic!("{other:?}"),
    }
    let default_client = rig.kubelet.plugin_for(DEFAULT).unwrap();
    assert_invalid(allocate(&default_client, "0000:5e:00.0"));
    allocate(&default_client, "0000:3b:00.0").unwrap();
    // PreStartContainer and GetPreferredAllocation too.
    let mut pre = api::PreStartContainerRequest::new();
    pre.devices_ids = vec!["0000:3b:00.0".into()];
    assert_invalid(gzip_client.pre_start_container(&pre));
    let mut c = api::ContainerPreferredAllocationRequest::new();
    c.available_deviceIDs = vec!["0000:5e:00.0".into(), "0000:3b:00.0".into()];
    c.allocation_size = 1;
    let mut preferred = api::PreferredAllocationRequest::new();
    preferred.container_requests.push(c);
    assert_invalid(gzip_client.get_preferred_allocation(&preferred));
}

fn assert_invalid<T: std::fmt::Debug>(result: grpcio::Result<T>) {
    match result {
        Err(grpcio::Error::RpcFailure(s)) => {
            assert_eq!(s.code(), RpcStatusCode::INVALID_ARGUMENT, "{}", s.message());
            assert!(s.message().contains("unknown device ID"), "{}", s.message());
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

#[test]
fn auto_names_every_other_afu_and_keeps_it_registered_when_it_goes() {
    let mut rig = Rig::new();
    let net_port = three_cards(&rig);
    let auto = format!("b-com.com/afu-{NET_AFU}");
    let p = rig.plugin(&[
        "--afu-resource",
        &format!("{GZIP}={AFU_ID}"),
        "--afu-resource",
        "auto",
        "--scan-interval",
        "100ms",
    ]);
    assert!(rig.kubelet.wait_resources(WAIT, &[DEFAULT, &auto, GZIP]), "{:?}\n{}", rig.kubelet.resources(), p.log());
    let net = rig.kubelet.wait_devices_of(&auto, WAIT, |d| d.len() == 1).expect("the auto resource's list");
    assert_eq!(ids(&net.devices), ["0000:3b:00.0"]);
    rig.kubelet.wait_devices_of(DEFAULT, WAIT, <[api::Device]>::is_empty).expect("nothing left for the default");

    // Reprogrammed: the port moves to gzip at the next scan, and the auto resource stays, empty.
    rig.node.set_afu(&net_port, AFU_ID).unwrap();
    rig.kubelet.wait_devices_of(GZIP, WAIT, |d| d.len() == 3).expect("three ports in gzip");
    rig.kubelet.wait_devices_of(&auto, WAIT, <[api::Device]>::is_empty).expect("the auto resource, empty");
    assert!(
        p.wait_log(&format!("port 0000:3b:00.0 moved from {auto} to {GZIP} (its AFU is now {AFU_ID})"), WAIT),
        "{}",
        p.log()
    );
    assert!(!p.log().contains("device 0000:3b:00.0 of example.com/gzip appeared"), "one line for a move:\n{}", p.log());

    // A blank AFU (all f) goes back to the default resource, Unhealthy.
    rig.node.set_afu(&net_port, &"f".repeat(32)).unwrap();
    let default = rig.kubelet.wait_devices_of(DEFAULT, WAIT, |d| d.len() == 1).expect("the blank port in default");
    assert_eq!(default.devices[0].health, "Unhealthy");

    // A new AFU after start: its auto resource is registered then, with its port in the first list.
    let other = "44444444444444444444444444444444";
    let ports = rig.node.dfl_card("0000:af:00.0", 1, 2, Some(Fme { instance: 2, ports_num: 1 }), &[(3, 0)]).unwrap();
    rig.node.set_afu(&ports[0], other).unwrap();
    let late = format!("b-com.com/afu-{other}");
    let list = rig.kubelet.wait_devices_of(&late, WAIT, |d| d.len() == 1).unwrap_or_else(|| panic!("{}", p.log()));
    assert_eq!(ids(&list.devices), ["0000:af:00.0"]);
    assert_eq!(rig.kubelet.accepted_for(&late), 1);
    assert!(rig.kubelet.updates().iter().filter(|u| u.resource == late).all(|u| !u.devices.is_empty()));

    // A kubelet restart re-registers every resource once, the empty one too, and each list comes back.
    let resources = [DEFAULT, GZIP, auto.as_str(), late.as_str()];
    let before: Vec<usize> = resources.iter().map(|r| rig.kubelet.accepted_for(r)).collect();
    let restarted = std::time::Instant::now();
    rig.kubelet.restart().unwrap();
    for (resource, n) in resources.iter().zip(&before) {
        assert!(
            common::wait_until(WAIT, || rig.kubelet.accepted_for(resource) == n + 1),
            "{resource} registered again\n{}",
            p.log()
        );
        rig.kubelet.wait_devices_since(restarted, WAIT, |_| true).expect("lists after the restart");
    }
    std::thread::sleep(Duration::from_millis(300));
    let after: Vec<usize> = resources.iter().map(|r| rig.kubelet.accepted_for(r)).collect();
    assert_eq!(after, before.iter().map(|n| n + 1).collect::<Vec<_>>(), "one Register per resource");
    assert!(rig.kubelet.wait_devices_of(&late, WAIT, |d| d.len() == 1).is_some_and(|u| u.at > restarted));
}

#[test]
fn a_second_instance_advertises_nothing_until_the_first_stops() {
    let rig = Rig::new();
    three_cards(&rig);
    let mut first = rig.plugin(&[]);
    rig.kubelet.wait_devices_of(DEFAULT, WAIT, |d| d.len() == 3).unwrap();
    // The new version of a surge upgrade, with AFU resources: while the old one lists every port under the
    // default resource, it must not advertise the same ports under its AFU resources.
    let second = rig.plugin(&["--afu-resource", &format!("{GZIP}={AFU_ID}")]);
    assert!(second.wait_log("waiting for it to stop", WAIT), "{}", second.log());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rig.kubelet.accepted_for(GZIP), 0, "{}", second.log());
    // Its liveness probe, with its own flags, passes meanwhile: the default resource is served.
    let dir = rig.dir().to_str().unwrap().to_string();
    let gzip_entry = format!("{GZIP}={AFU_ID}");
    let out = command(&["probe", "--device-plugin-path", &dir, "--afu-resource", &gzip_entry]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("example.com/gzip is not served (yet)"), "{text}");
    first.signal(libc::SIGTERM);
    first.wait_exit(WAIT).unwrap();
    rig.kubelet.wait_devices_of(GZIP, WAIT, |d| d.len() == 2).unwrap_or_else(|| panic!("{}", second.log()));
    rig.kubelet.wait_devices_of(DEFAULT, WAIT, |d| d.len() == 1).unwrap();
}

#[test]
fn a_dropped_stream_re_registers_that_resource_only() {
    let rig = Rig::new();
    three_cards(&rig);
    let p = rig.plugin(&["--afu-resource", &format!("{GZIP}={AFU_ID}")]);
    assert!(rig.kubelet.wait_resources(WAIT, &[DEFAULT, GZIP]), "{}", p.log());
    rig.kubelet.wait_devices_of(GZIP, WAIT, |d| d.len() == 2).unwrap();
    rig.kubelet.drop_stream(GZIP);
    assert!(common::wait_until(WAIT, || rig.kubelet.accepted_for(GZIP) == 2), "{}", p.log());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rig.kubelet.accepted_for(DEFAULT), 1, "the other resource is left alone");
    assert_eq!(rig.kubelet.accepted_for(GZIP), 2);
}

#[test]
fn afu_resources_need_the_intel_backend() {
    let out = command(&["--backend", "aws", "--afu-resource", "auto"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--afu-resource needs the intel backend"), "{stderr}");
    for (args, needle) in [
        (&["--afu-resource", "example.com/x=not-an-afu"][..], "--afu-resource example.com/x=not-an-afu"),
        (
            &["--afu-resource", "x=d8424dc4a4a3c413f89e433683f9040b"],
            "--afu-resource x=d8424dc4a4a3c413f89e433683f9040b",
        ),
        (
            &[
                "--afu-resource",
                "example.com/a=d8424dc4a4a3c413f89e433683f9040b",
                "--afu-resource",
                &format!("example.com/b={GZIP_GUID}"),
            ],
            "already given to example.com/a",
        ),
    ] {
        let out = command(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn without_afu_resources_nothing_changes() {
    let rig = Rig::new();
    three_cards(&rig);
    let _p = rig.plugin(&[]);
    let list = rig.kubelet.wait_devices_of(DEFAULT, WAIT, |d| d.len() == 3).expect("all three in the default");
    assert_eq!(ids(&list.devices), ["0000:3b:00.0", "0000:5e:00.0", "0000:86:00.0"]);
    assert_eq!(rig.kubelet.resources(), [DEFAULT]);
    assert_eq!(rig.kubelet.registrations()[0].request.endpoint, "k8s-accel-b-com.com_accelerator.sock");
}
