//! The real binary against the fake kubelet: registration, ListAndWatch, Allocate, GetPreferredAllocation,
//! PreStartContainer, hotplug and health, over real Unix sockets in temp dirs.

mod common;

use common::{allocate_request, Rig, WAIT};
use grpcio::{CallOption, RpcStatusCode};
use k8s_accelerator_devplugin::api;
use k8s_accelerator_devplugin::sim::{sim_write as write, Fme};
use std::time::Duration;

fn status_of<T: std::fmt::Debug>(r: grpcio::Result<T>) -> (RpcStatusCode, String) {
    match r {
        Err(grpcio::Error::RpcFailure(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected an RPC failure, got {other:?}"),
    }
}

#[test]
fn registers_with_options_serves_first_and_lists_aws_units() {
    let s = Rig::new();
    let _p = s.plugin(&["--backend", "aws", "-accel-nbunits", "3"]);
    let reg = s.kubelet.wait_registration(1, WAIT).expect("a Register call");
    assert_eq!(reg.request.version, "v1beta1");
    assert_eq!(reg.request.resource_name, "b-com.com/accelerator");
    assert_eq!(reg.request.endpoint, "k8s-accel-b-com.com_accelerator.sock");
    assert!(s.kubelet.dir().join(&reg.request.endpoint).exists());
    // The kubelet called GetDevicePluginOptions inside Register: we were already serving.
    let options = reg.options.expect("GetDevicePluginOptions answered during Register");
    assert!(options.get_preferred_allocation_available);
    assert!(!options.pre_start_required);
    assert_eq!(reg.request.options.as_ref(), Some(&options), "same options in RegisterRequest");
    s.wait_list(&[("0", "Healthy"), ("1", "Healthy"), ("2", "Healthy")]);

    let resp = s.client().allocate(&allocate_request(&[&["2", "0"], &["1"]])).unwrap();
    assert_eq!(resp.container_responses.len(), 2);
    assert_eq!(resp.container_responses[0].envs["ACCELERATOR_UNITS"], "2,0");
    assert_eq!(resp.container_responses[1].envs["ACCELERATOR_UNITS"], "1");
    assert!(resp.container_responses.iter().all(|c| c.devices.is_empty() && c.mounts.is_empty()));
}

#[test]
fn intel_allocate_hands_each_container_its_own_ids_and_device_nodes() {
    let s = Rig::new();
    s.node.opae_card("0000:5e:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(1, 0)]).unwrap();
    s.node.dfl_card("0000:86:00.0", 1, 0, Some(Fme { instance: 0, ports_num: 2 }), &[(0, 0), (4, 1)]).unwrap();
    let _p = s.plugin(&[]);
    let list =
        s.wait_list(&[("0000:5e:00.0", "Healthy"), ("0000:86:00.0-0", "Healthy"), ("0000:86:00.0-1", "Healthy")]);
    assert_eq!(list.devices[0].topology.nodes[0].ID, 0);
    assert_eq!(list.devices[2].topology.nodes[0].ID, 1);

    let resp =
        s.client().allocate(&allocate_request(&[&["0000:86:00.0-1", "0000:5e:00.0"], &["0000:86:00.0-0"]])).unwrap();
    assert_eq!(resp.container_responses.len(), 2);
    let first = &resp.container_responses[0];
    assert_eq!(first.envs["ACCELERATOR_UNITS"], "0000:86:00.0-1,0000:5e:00.0");
    let specs: Vec<_> = first
        .devices
        .iter()
        .map(|d| (d.container_path.as_str(), d.host_path.clone(), d.permissions.as_str()))
        .collect();
    let dev = s.node.dev();
    assert_eq!(
        specs,
        [
            ("/dev/dfl-port.4", dev.join("dfl-port.4").display().to_string(), "rw"),
            ("/dev/intel-fpga-port.1", dev.join("intel-fpga-port.1").display().to_string(), "rw"),
        ]
    );
    let second = &resp.container_responses[1];
    assert_eq!(second.envs["ACCELERATOR_UNITS"], "0000:86:00.0-0");
    assert_eq!(second.devices.len(), 1);
    assert_eq!(second.devices[0].container_path, "/dev/dfl-port.0");
}

#[test]
fn bad_ids_fail_the_whole_call_and_the_plugin_keeps_serving() {
    let s = Rig::new();
    let ports = s.node.opae_card("0000:5e:00.0", 0, 0, None, &[(0, 0)]).unwrap();
    s.node.opae_card("0000:5f:00.0", 0, 1, None, &[(1, 0)]).unwrap();
    let _p = s.plugin(&["--scan-interval", "100ms"]);
    s.wait_list(&[("0000:5e:00.0", "Healthy"), ("0000:5f:00.0", "Healthy")]);
    let client = s.client();

    let (code, msg) = status_of(client.allocate(&allocate_request(&[&["0000:5e:00.0"], &["0000:ff:00.0"]])));
    assert_eq!(code, RpcStatusCode::INVALID_ARGUMENT);
    assert!(msg.contains("0000:ff:00.0") && msg.contains("unknown"), "{msg}");
    let (code, msg) = status_of(client.allocate(&allocate_request(&[&["0000:5e:00.0"], &["0000:5e:00.0"]])));
    assert_eq!(code, RpcStatusCode::INVALID_ARGUMENT);
    assert!(msg.contains("0000:5e:00.0") && msg.contains("more than once"), "{msg}");
    let (code, _) = status_of(client.allocate(&allocate_request(&[&[""]])));
    assert_eq!(code, RpcStatusCode::INVALID_ARGUMENT);
    let long = "x".repeat(10_000);
    let (code, msg) = status_of(client.allocate(&allocate_request(&[&[long.as_str()]])));
    assert_eq!(code, RpcStatusCode::INVALID_ARGUMENT);
    assert!(msg.len() < 200, "error messages stay short: {} bytes", msg.len());

    write(&ports[0].join("errors/errors"), "0x1\n").unwrap();
    s.wait_list(&[("0000:5e:00.0", "Unhealthy"), ("0000:5f:00.0", "Healthy")]);
    let (code, msg) = status_of(client.allocate(&allocate_request(&[&["0000:5e:00.0"]])));
    assert_eq!(code, RpcStatusCode::INVALID_ARGUMENT);
    assert!(msg.contains("Unhealthy"), "{msg}");

    let (code, _) = status_of(client.pre_start_container(&{
        let mut r = api::PreStartContainerRequest::new();
        r.devices_ids = vec!["nope".into()];
        r
    }));
    assert_eq!(code, RpcStatusCode::INVALID_ARGUMENT);
    let mut ok = api::PreStartContainerRequest::new();
    ok.devices_ids = vec!["0000:5f:00.0".into()];
    client.pre_start_container(&ok).unwrap();

    // Still serving.
    let resp = client.allocate(&allocate_request(&[&["0000:5f:00.0"]])).unwrap();
    assert_eq!(resp.container_responses[0].envs["ACCELERATOR_UNITS"], "0000:5f:00.0");
    assert!(client.get_device_plugin_options(&api::Empty::new()).unwrap().get_preferred_allocation_available);
}

#[test]
fn preferred_allocation_follows_numa() {
    let s = Rig::new();
    s.node.dfl_card("0000:3b:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 2 }), &[(0, 0), (1, 1)]).unwrap();
    s.node.dfl_card("0000:af:00.0", 1, 1, Some(Fme { instance: 1, ports_num: 3 }), &[(2, 0), (3, 1), (4, 2)]).unwrap();
    let _p = s.plugin(&[]);
    s.wait_list(&[
        ("0000:3b:00.0-0", "Healthy"),
        ("0000:3b:00.0-1", "Healthy"),
        ("0000:af:00.0-0", "Healthy"),
        ("0000:af:00.0-1", "Healthy"),
        ("0000:af:00.0-2", "Healthy"),
    ]);
    let client = s.client();
    let all = ["0000:af:00.0-2", "0000:3b:00.0-1", "0000:af:00.0-0", "0000:3b:00.0-0", "0000:af:00.0-1"];
    let ask = |must: &[&str], size: i32| {
        let mut c = api::ContainerPreferredAllocationRequest::new();
        c.available_deviceIDs = all.iter().map(|s| s.to_string()).collect();
        c.must_include_deviceIDs = must.iter().map(|s| s.to_string()).collect();
        c.allocation_size = size;
        let mut req = api::PreferredAllocationRequest::new();
        req.container_requests = vec![c.clone(), c];
        client.get_preferred_allocation(&req)
    };
    let resp = ask(&["0000:3b:00.0-1"], 2).unwrap();
    assert_eq!(resp.container_responses.len(), 2);
    assert_eq!(resp.container_responses[0].deviceIDs, ["0000:3b:00.0-1", "0000:3b:00.0-0"]);
    let resp = ask(&[], 2).unwrap();
    assert_eq!(resp.container_responses[0].deviceIDs, ["0000:af:00.0-0", "0000:af:00.0-1"], "the fuller NUMA node");
    assert_eq!(ask(&[], 99).unwrap().container_responses[0].deviceIDs.len(), 5);
    let (code, _) = status_of(ask(&[], -1));
    assert_eq!(code, RpcStatusCode::INVALID_ARGUMENT);
}

#[test]
fn hotplug_and_health_changes_reach_list_and_watch() {
    let s = Rig::new();
    std::fs::create_dir_all(s.node.sysfs().join("class/fpga_region")).unwrap();
    let p = s.plugin(&["--scan-interval", "200ms"]);
    // No device at start is normal: registered with an empty list.
    s.kubelet.wait_registration(1, WAIT).expect("registered with no device");
    s.wait_list(&[]);
    assert!(p.log().contains("backend intel"), "{}", p.log());

    let ports = s.node.dfl_card("0000:3b:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(0, 0)]).unwrap();
    s.wait_list(&[("0000:3b:00.0", "Healthy")]);
    s.node.remove_node("dfl-port.0").unwrap();
    s.wait_list(&[("0000:3b:00.0", "Unhealthy")]);
    s.node.add_node("dfl-port.0").unwrap();
    s.wait_list(&[("0000:3b:00.0", "Healthy")]);
    write(&ports[0].join("errors/errors"), "0x8\n").unwrap();
    s.wait_list(&[("0000:3b:00.0", "Unhealthy")]);
    write(&ports[0].join("errors/errors"), "0x0\n").unwrap();
    s.wait_list(&[("0000:3b:00.0", "Healthy")]);
    s.node.release_port(&ports[0]).unwrap();
    s.wait_list(&[]);
    // Logged before the list is published: the kubelet never sees a change the log does not show yet.
    assert!(p.log().contains("device 0000:3b:00.0 vanished"), "{}", p.log());
    assert!(p.log().contains("device 0000:3b:00.0 is now Unhealthy"), "{}", p.log());
}

#[test]
fn device_node_changes_are_seen_without_waiting_for_a_rescan() {
    let s = Rig::new();
    std::fs::create_dir_all(s.node.sysfs().join("class/fpga")).unwrap();
    // A one-minute interval: only the dev-root watch can explain a quick update.
    let _p = s.plugin(&["--scan-interval", "1m"]);
    s.wait_list(&[]);
    s.node.opae_card("0000:5e:00.0", 0, 0, None, &[(0, 0)]).unwrap();
    s.wait_list(&[("0000:5e:00.0", "Healthy")]);
    s.node.remove_node("intel-fpga-port.0").unwrap();
    s.wait_list(&[("0000:5e:00.0", "Unhealthy")]);
}

#[test]
fn corrupt_entries_are_logged_once_and_the_rest_is_served() {
    let s = Rig::new();
    s.node.opae_card("0000:5e:00.0", 0, 0, None, &[(0, 0)]).unwrap();
    std::os::unix::fs::symlink(
        "../../devices/nowhere/intel-fpga-dev.7",
        s.node.sysfs().join("class/fpga/intel-fpga-dev.7"),
    )
    .unwrap();
    let p = s.plugin(&["--scan-interval", "50ms"]);
    s.wait_list(&[("0000:5e:00.0", "Healthy")]);
    std::thread::sleep(Duration::from_millis(500));
    let log = p.log();
    assert_eq!(log.lines().filter(|l| l.contains("intel-fpga-dev.7")).count(), 1, "logged once over ~10 scans:\n{log}");
    s.client().allocate(&allocate_request(&[&["0000:5e:00.0"]])).unwrap();
}

#[test]
fn many_concurrent_streams_all_get_updates() {
    let s = Rig::new();
    std::fs::create_dir_all(s.node.sysfs().join("class/fpga")).unwrap();
    let _p = s.plugin(&["--scan-interval", "100ms"]);
    let client = s.client();
    let streams: Vec<_> = (0..5)
        .map(|_| {
            futures_executor::block_on_stream(
                client.list_and_watch_opt(&api::Empty::new(), CallOption::default()).unwrap(),
            )
        })
        .collect();
    s.node.opae_card("0000:5e:00.0", 0, 0, None, &[(0, 0)]).unwrap();
    for mut stream in streams {
        let first = stream.next().unwrap().unwrap();
        let ids: Vec<_> = if first.devices.is_empty() {
            stream.next().unwrap().unwrap().devices.into_iter().map(|d| d.ID).collect()
        } else {
            first.devices.into_iter().map(|d| d.ID).collect()
        };
        assert_eq!(ids, ["0000:5e:00.0"]);
    }
}
