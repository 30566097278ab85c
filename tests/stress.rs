//! Stress, faults and malformed input: the real binary against the fake kubelet.

mod common;

use common::{sockets, wait_until, Plugin, Rig, WAIT};
use grpcio::{CallOption, ChannelBuilder, GrpcSlice, Marshaller, MessageReader, Method, MethodType, RpcStatusCode};
use k8s_accelerator_devplugin::api;
use k8s_accelerator_devplugin::sim::{Behavior, FakeKubelet, Fme, SimNode, TempDir};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SOCKET: &str = "k8s-accel-b-com.com_accelerator.sock";

/// A small deterministic generator: the same "random" choices on every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

#[test]
fn a_hundred_kubelet_restarts_in_a_row_each_end_registered_with_one_socket() {
    let mut rig = Rig::new();
    let _p = rig.aws("3", &[]);
    rig.kubelet.wait_registration(1, WAIT).unwrap();
    for round in 1..=100 {
        let before = rig.kubelet.accepted();
        rig.kubelet.restart().unwrap();
        rig.kubelet.wait_registration(before + 1, WAIT).unwrap_or_else(|| panic!("restart {round}: not registered"));
        rig.kubelet.wait_devices(WAIT, |d| d.len() == 3).unwrap_or_else(|| panic!("restart {round}: no list"));
        assert!(
            wait_until(WAIT, || sockets(rig.dir()) == [SOCKET, "kubelet.sock"]),
            "restart {round}: {:?}",
            sockets(rig.dir())
        );
    }
}

#[test]
fn fifty_streams_get_every_update_and_closing_some_disturbs_no_other() {
    let node = SimNode::new().unwrap();
    let ports: Vec<_> = (0..4u32)
        .map(|i| node.dfl_card(&format!("0000:{:02x}:00.0", 0x10 + i), 0, i, None, &[(i, 0)]).unwrap())
        .collect();
    drop(ports);
    let dir = TempDir::new("kubelet").unwrap();
    let kubelet = FakeKubelet::start(dir.path()).unwrap();
    let _p = Plugin::spawn_on(dir.path(), &node.sysfs(), &node.dev(), &["--scan-interval", "1h"]);
    kubelet.wait_registration(1, WAIT).unwrap();
    let client = kubelet.plugin().unwrap();

    // Each stream records the healthy count of every list it gets; some leave after a few lists.
    let mut rng = Lcg(7);
    let seen: Vec<Arc<Mutex<Vec<usize>>>> = (0..50).map(|_| Arc::default()).collect();
    let mut leave_after = Vec::new();
    let mut threads = Vec::new();
    for log in &seen {
        let quits = rng.next(3) == 0;
        let limit = if quits { 1 + rng.next(3) as usize } else { usize::MAX };
        leave_after.push(limit);
        let stream = client.list_and_watch_opt(&api::Empty::new(), CallOption::default()).unwrap();
        let log = Arc::clone(log);
        threads.push(std::thread::spawn(move || {
            for list in futures_executor::block_on_stream(stream) {
                let Ok(list) = list else { return };
                let mut log = log.lock().unwrap();
                log.push(list.devices.iter().filter(|d| d.health == "Healthy").count());
                if log.len() >= limit {
                    return; // dropping the stream cancels it
                }
            }
        }));
    }
    let staying: Vec<usize> = (0..50).filter(|&i| leave_after[i] == usize::MAX).collect();
    assert!(staying.len() >= 20 && staying.len() < 50, "{} stay", staying.len());
    assert!(wait_until(WAIT, || seen.iter().all(|s| !s.lock().unwrap().is_empty())), "every stream got the first list");

    // Four updates, one at a time: each takes one more port's node away.
    for (step, name) in ["dfl-port.0", "dfl-port.1", "dfl-port.2", "dfl-port.3"].iter().enumerate() {
        node.remove_node(name).unwrap();
        let healthy = 3 - step;
        let ok = wait_until(WAIT, || staying.iter().all(|&i| seen[i].lock().unwrap().last() == Some(&healthy)));
        assert!(ok, "update {step} did not reach every remaining stream");
    }
    for &i in &staying {
        assert_eq!(*seen[i].lock().unwrap(), [4, 3, 2, 1, 0], "stream {i} missed an update");
    }
}

#[test]
fn hotplug_churn_ends_with_exactly_the_final_tree() {
    let node = SimNode::new().unwrap();
    std::fs::create_dir_all(node.sysfs().join("class/fpga_region")).unwrap();
    let dir = TempDir::new("kubelet").unwrap();
    let kubelet = FakeKubelet::start(dir.path()).unwrap();
    let _p = Plugin::spawn_on(dir.path(), &node.sysfs(), &node.dev(), &["--scan-interval", "1s"]);
    kubelet.wait_registration(1, WAIT).unwrap();

    // Eight possible ports; each is absent, present with its node, or present without its node.
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Absent,
        Healthy,
        NoNode,
    }
    let mut state = [State::Absent; 8];
    let mut rng = Lcg(42);
    for _ in 0..200 {
        let i = rng.next(8) as usize;
        let name = format!("dfl-port.{i}");
        match state[i] {
            State::Absent => {
                node.dfl_card(
                    &format!("0000:{:02x}:00.0", 0x20 + i),
                    0,
                    i as u32,
                    Some(Fme { instance: i as u32, ports_num: 1 }),
                    &[(i as u32, 0)],
                )
                .unwrap();
                state[i] = State::Healthy;
            }
            State::Healthy if rng.next(2) == 0 => {
                node.remove_node(&name).unwrap();
                state[i] = State::NoNode;
            }
            State::NoNode if rng.next(2) == 0 => {
                node.add_node(&name).unwrap();
                state[i] = State::Healthy;
            }
            State::Healthy | State::NoNode => {
                // The card goes away entirely: its function directory, class links and nodes.
                node.remove_function(&format!("0000:{:02x}:00.0", 0x20 + i)).unwrap();
                state[i] = State::Absent;
            }
        }
        std::thread::sleep(Duration::from_millis(5 + rng.next(16)));
    }
    let want: Vec<(String, &str)> = (0..8)
        .filter(|&i| state[i] != State::Absent)
        .map(|i| {
            (format!("0000:{:02x}:00.0", 0x20 + i), if state[i] == State::Healthy { "Healthy" } else { "Unhealthy" })
        })
        .collect();
    let got = kubelet.wait_devices(WAIT, |d| {
        d.len() == want.len() && d.iter().zip(&want).all(|(d, (id, h))| d.ID == *id && d.health == *h)
    });
    assert!(
        got.is_some(),
        "want {want:?}, last list {:?}",
        kubelet.updates().last().map(|u| common::summary(&u.devices))
    );
}

#[test]
fn kubelet_socket_deleted_while_a_register_hangs() {
    let mut rig = Rig::new();
    rig.kubelet.set_behavior(Behavior::Hang);
    let p = rig.aws("1", &[]);
    rig.kubelet.wait_register_calls(1, WAIT).unwrap();
    rig.kubelet.stop(); // kubelet.sock deleted with the Register still open
    std::thread::sleep(Duration::from_millis(300));
    assert!(p.log().contains("cannot register"), "{}", p.log());
    rig.kubelet.set_behavior(Behavior::Accept);
    let t = Instant::now();
    rig.kubelet.restart().unwrap();
    let reg = rig.kubelet.wait_registration(1, WAIT).expect("registered with the new kubelet");
    assert!(reg.at.duration_since(t) < Duration::from_secs(2));
}

#[test]
fn an_unusable_device_plugins_path_is_retried_until_it_works() {
    let node = SimNode::new().unwrap();
    let parent = TempDir::new("kubelet").unwrap();
    let dir = parent.path().join("dp");
    // A file where the directory should be: nothing can be created in it (as root, permissions would not
    // stop us; this does).
    std::fs::write(&dir, "not a directory").unwrap();
    let p = Plugin::spawn_on(&dir, &node.sysfs(), &node.dev(), &["--backend", "aws", "--scan-interval", "100ms"]);
    assert!(p.wait_log("cannot serve on", WAIT), "{}", p.log());
    std::fs::remove_file(&dir).unwrap();
    let kubelet = FakeKubelet::start(&dir).unwrap();
    kubelet.wait_registration(1, WAIT).expect("registered once the directory was usable");
}

#[test]
fn missing_sysfs_and_dev_roots_are_reported_and_recovered_from() {
    let rig = Rig::new();
    let sys = rig.node.root().join("later-sys");
    let dev = rig.node.root().join("later-dev");
    let p = Plugin::spawn_on(rig.dir(), &sys, &dev, &["--backend", "intel", "--scan-interval", "100ms"]);
    rig.kubelet.wait_registration(1, WAIT).expect("registers with no device");
    rig.kubelet.wait_devices(WAIT, <[api::Device]>::is_empty).unwrap();
    assert!(p.wait_log("later-sys does not exist", WAIT), "{}", p.log());
    assert!(p.log().contains("later-dev does not exist"), "{}", p.log());
    assert!(p.log().contains("cannot watch"), "{}", p.log());
    // The roots appear, as when a late mount comes up: move a built tree into place.
    rig.node.dfl_card("0000:3b:00.0", 0, 0, None, &[(0, 0)]).unwrap();
    std::fs::rename(rig.node.sysfs(), &sys).unwrap();
    std::fs::rename(rig.node.dev(), &dev).unwrap();
    let list = rig.kubelet.wait_devices(WAIT, |d| d.len() == 1 && d[0].health == "Healthy");
    assert!(list.is_some(), "{}", p.log());
    // Symlinks in the moved tree are relative, so they still resolve; the port is found in its new place.
    assert_eq!(list.unwrap().devices[0].ID, "0000:3b:00.0");
}

#[test]
fn kill_9_then_restart_cleans_the_stale_socket_and_registers_again() {
    let rig = Rig::new();
    let mut first = rig.aws("2", &[]);
    rig.kubelet.wait_registration(1, WAIT).unwrap();
    first.signal(libc::SIGKILL);
    first.wait_exit(WAIT).unwrap();
    assert!(rig.dir().join(SOCKET).exists(), "SIGKILL leaves the socket behind");
    let second = rig.aws("2", &[]);
    rig.kubelet.wait_registration(2, WAIT).expect("the new instance registers");
    assert!(
        second.log().contains(&format!("removed stale socket {}", rig.dir().join(SOCKET).display())),
        "{}",
        second.log()
    );
    rig.kubelet.plugin().unwrap().get_device_plugin_options(&api::Empty::new()).unwrap();
}

/// A method that sends and receives raw bytes, to put anything on the wire.
const RAW_ALLOCATE: Method<Vec<u8>, Vec<u8>> = Method {
    ty: MethodType::Unary,
    name: "/v1beta1.DevicePlugin/Allocate",
    req_mar: Marshaller { ser: raw_ser, de: raw_de },
    resp_mar: Marshaller { ser: raw_ser, de: raw_de },
};

// The signature is fixed by grpcio's SerializeFn<Vec<u8>>.
#[allow(clippy::ptr_arg)]
fn raw_ser(bytes: &Vec<u8>, buf: &mut GrpcSlice) -> grpcio::Result<()> {
    *buf = GrpcSlice::from(bytes.clone());
    Ok(())
}

fn raw_de(mut reader: MessageReader) -> grpcio::Result<Vec<u8>> {
    let mut out = Vec::new();
    reader.read_to_end(&mut out).map_err(|e| grpcio::Error::Codec(Box::new(e)))?;
    Ok(out)
}

#[test]
fn malformed_requests_get_error_statuses_and_the_plugin_keeps_serving() {
    let rig = Rig::new();
    let mut p = rig.aws("10000", &[]);
    rig.kubelet.wait_registration(1, WAIT).unwrap();
    let client = rig.kubelet.plugin().unwrap();
    let code = |r: grpcio::Result<api::AllocateResponse>| match r {
        Err(grpcio::Error::RpcFailure(s)) => s.code(),
        other => panic!("expected an error status, got {other:?}"),
    };

    // 10,000 IDs in one request: all valid (one container gets every unit) ...
    let mut req = api::AllocateRequest::new();
    let mut c = api::ContainerAllocateRequest::new();
    c.devices_ids = (0..10_000).map(|i| i.to_string()).collect();
    req.container_requests.push(c);
    let resp = client.allocate(&req).unwrap();
    assert_eq!(resp.container_responses[0].envs["ACCELERATOR_UNITS"].split(',').count(), 10_000);
    // ... and 10,000 unknown ones.
    req.container_requests[0].devices_ids = (0..10_000).map(|i| format!("x{i}")).collect();
    assert_eq!(code(client.allocate(&req)), RpcStatusCode::INVALID_ARGUMENT);

    // Bytes that are not a valid message: invalid UTF-8 in an ID, a truncated varint, a wrong wire type.
    let raw = grpcio::Client::new(
        ChannelBuilder::new(Arc::clone(rig.kubelet.env())).connect(&api::unix_address(&rig.dir().join(SOCKET))),
    );
    for bytes in [
        vec![0x0a, 0x04, 0x0a, 0x02, 0xff, 0xfe],
        vec![0x0a, 0xff],
        vec![0x0d, 0x01, 0x02, 0x03, 0x04, 0x05],
        vec![0xff; 64],
    ] {
        match raw.unary_call(&RAW_ALLOCATE, &bytes, CallOption::default().timeout(Duration::from_secs(5))) {
            Err(grpcio::Error::RpcFailure(s)) => assert_ne!(s.code(), RpcStatusCode::OK, "{bytes:?}"),
            other => panic!("{bytes:?}: expected an error status, got {other:?}"),
        }
    }

    // GetPreferredAllocation: negative size is rejected, a size larger than what is available is capped, an
    // ID this resource does not advertise is rejected.
    let mut pref = api::PreferredAllocationRequest::new();
    let mut c = api::ContainerPreferredAllocationRequest::new();
    c.available_deviceIDs = vec!["1".into(), "2".into(), "3".into()];
    c.allocation_size = -5;
    pref.container_requests.push(c);
    match client.get_preferred_allocation(&pref) {
        Err(grpcio::Error::RpcFailure(s)) => {
            assert_eq!(s.code(), RpcStatusCode::INVALID_ARGUMENT);
            assert!(s.message().contains("negative"), "{}", s.message());
        }
        other => panic!("{other:?}"),
    }
    pref.container_requests[0].allocation_size = i32::MAX;
    let resp = client.get_preferred_allocation(&pref).unwrap();
    assert_eq!(resp.container_responses[0].deviceIDs.len(), 3);
    pref.container_requests[0].available_deviceIDs.push("".into());
    match client.get_preferred_allocation(&pref) {
        Err(grpcio::Error::RpcFailure(s)) => assert_eq!(s.code(), RpcStatusCode::INVALID_ARGUMENT),
        other => panic!("{other:?}"),
    }

    // Still alive and serving.
    let mut ok = api::AllocateRequest::new();
    ok.container_requests.push({
        let mut c = api::ContainerAllocateRequest::new();
        c.devices_ids = vec!["7".into()];
        c
    });
    client.allocate(&ok).unwrap();
    assert!(p.wait_exit(Duration::from_millis(100)).is_none(), "the plugin is still running");
}
