//! The health pass (`--health-interval`, 1 s by default): port errors, an unloaded AFU and their recovery
//! reach the kubelet within 1.5 s at default flags, without a full discovery (the default `--scan-interval`
//! is 30 s, and a sysfs attribute change makes no device-node event); a port whose directory disappears or
//! is replaced between full discoveries is rediscovered. Real binary, simulated kubelet and node.

mod common;

use common::{Rig, WAIT};
use k8s_accelerator_devplugin::sim::{sim_write as write, Fme, AFU_ID};
use std::time::{Duration, Instant};

/// The contract's bound for a health change at default flags.
const HEALTH_BOUND: Duration = Duration::from_millis(1500);

/// Waits for the list `want` and returns how long it took from `since`; fails past the contract's bound.
fn within_bound(rig: &Rig, since: Instant, want: &[(&str, &str)], what: &str) -> Duration {
    rig.wait_list(want);
    let took = since.elapsed();
    assert!(took <= HEALTH_BOUND, "{what} took {took:?}, more than {HEALTH_BOUND:?}");
    took
}

#[test]
fn health_changes_reach_the_kubelet_within_a_second_and_a_half_at_default_flags() {
    let rig = Rig::new();
    let ports = rig.node.opae_card("0000:5e:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(0, 0)]).unwrap();
    let p = rig.plugin(&[]);
    rig.wait_list(&[("0000:5e:00.0", "Healthy")]);
    assert!(p.log().contains("discovery every 30s, health every 1s"), "{}", p.log());

    let t = Instant::now();
    write(&ports[0].join("errors/errors"), "0x40\n").unwrap();
    within_bound(&rig, t, &[("0000:5e:00.0", "Unhealthy")], "an error");
    let t = Instant::now();
    write(&ports[0].join("errors/errors"), "0x0\n").unwrap();
    within_bound(&rig, t, &[("0000:5e:00.0", "Healthy")], "its recovery");
    let t = Instant::now();
    rig.node.set_afu(&ports[0], &"f".repeat(32)).unwrap();
    within_bound(&rig, t, &[("0000:5e:00.0", "Unhealthy")], "a blank AFU");
    let t = Instant::now();
    rig.node.set_afu(&ports[0], AFU_ID).unwrap();
    within_bound(&rig, t, &[("0000:5e:00.0", "Healthy")], "an AFU loaded again");
    // All of it by health passes: the only full discovery was the first.
    assert_eq!(p.log().matches("rediscovering").count(), 0, "{}", p.log());
}

#[test]
fn a_port_whose_directory_disappears_between_scans_is_removed() {
    let rig = Rig::new();
    let gone = rig.node.dfl_card("0000:3b:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(0, 0)]).unwrap();
    rig.node.dfl_card("0000:86:00.0", 1, 1, Some(Fme { instance: 1, ports_num: 1 }), &[(1, 0)]).unwrap();
    let p = rig.plugin(&[]);
    rig.wait_list(&[("0000:3b:00.0", "Healthy"), ("0000:86:00.0", "Healthy")]);
    // Only the sysfs directory: its device node stays, so no device-node event tells the plugin, and the
    // next full discovery is 30 s away: a health pass must see it (the 10 s wait is well short of that).
    std::fs::remove_dir_all(&gone[0]).unwrap();
    rig.wait_list(&[("0000:86:00.0", "Healthy")]);
    assert!(p.log().contains("is gone since the last discovery: rediscovering"), "{}", p.log());
    assert!(p.log().contains("device 0000:3b:00.0 vanished"), "{}", p.log());
}

#[test]
fn a_card_replaced_at_the_same_address_is_read_anew() {
    let rig = Rig::new();
    let node = &rig.node;
    // Two ports on one function: their IDs carry the port `id`, which full discoveries keep in their cache.
    node.dfl_card("0000:5e:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 2 }), &[(0, 0), (1, 1)]).unwrap();
    let p = rig.plugin(&["--afu-resource", "auto"]);
    let first = format!("b-com.com/afu-{AFU_ID}");
    let ids = |l: &[k8s_accelerator_devplugin::api::Device]| -> Vec<String> {
        let mut v: Vec<String> = l.iter().map(|d| d.ID.clone()).collect();
        v.sort();
        v
    };
    rig.kubelet.wait_devices_of(&first, WAIT, |l| ids(l) == ["0000:5e:00.0-0", "0000:5e:00.0-1"]).unwrap();

    // Another card at the same address, with other port ids and another AFU, as a PCI remove and rescan
    // make it: the nodes go and come back, and the full discoveries they start must not reuse the old
    // card's cached `id`s.
    node.remove_function("0000:5e:00.0").unwrap();
    let ports = node.dfl_card("0000:5e:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 2 }), &[(0, 6), (1, 7)]);
    let second_afu = "00112233445566778899aabbccddeeff";
    for port in ports.unwrap() {
        node.set_afu(&port, second_afu).unwrap();
    }
    let second = format!("b-com.com/afu-{second_afu}");
    rig.kubelet
        .wait_devices_of(&second, WAIT, |l| ids(l) == ["0000:5e:00.0-6", "0000:5e:00.0-7"])
        .unwrap_or_else(|| panic!("the new card's ports under {second}\n{}", p.log()));
    rig.kubelet.wait_devices_of(&first, WAIT, |l| l.is_empty()).unwrap();
}

#[test]
fn a_health_pass_moves_a_port_whose_afu_changed() {
    let rig = Rig::new();
    let ports = rig.node.dfl_card("0000:5e:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(0, 0)]).unwrap();
    let gzip = "00112233445566778899aabbccddeeff";
    let p = rig.plugin(&["--afu-resource", &format!("example.com/gzip={gzip}")]);
    let default = "b-com.com/accelerator";
    rig.kubelet.wait_devices_of(default, WAIT, |l| l.len() == 1).unwrap();
    // A new AFU loaded: an attribute change, no node event; the next full discovery is 30 s away.
    rig.node.set_afu(&ports[0], gzip).unwrap();
    rig.kubelet
        .wait_devices_of("example.com/gzip", WAIT, |l| l.len() == 1 && l[0].ID == "0000:5e:00.0")
        .unwrap_or_else(|| panic!("the port under example.com/gzip\n{}", p.log()));
    rig.kubelet.wait_devices_of(default, WAIT, |l| l.is_empty()).unwrap();
    assert!(p.log().contains("port 0000:5e:00.0 moved from b-com.com/accelerator to example.com/gzip"), "{}", p.log());
    assert_eq!(p.log().matches("rediscovering").count(), 0, "moved by a health pass\n{}", p.log());
}

#[test]
fn a_port_skipped_half_created_is_found_at_the_next_check() {
    let rig = Rig::new();
    let ports =
        rig.node.dfl_card("0000:5e:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 2 }), &[(0, 0), (1, 1)]).unwrap();
    // Port 1 without its `id` yet: discovery skips it and reports the problem.
    std::fs::remove_file(ports[1].join("id")).unwrap();
    let p = rig.plugin(&[]);
    rig.wait_list(&[("0000:5e:00.0-0", "Healthy")]);
    // Its `id` appears: no node event, and the next full discovery by the interval is 30 s away; the 5 s
    // check rediscovers because the last discovery skipped something (the 10 s wait is short of 30 s).
    write(&ports[1].join("id"), "1\n").unwrap();
    rig.wait_list(&[("0000:5e:00.0-0", "Healthy"), ("0000:5e:00.0-1", "Healthy")]);
    assert!(p.log().contains("its `id` is unreadable"), "{}", p.log());
}

#[test]
fn a_port_whose_driver_is_unbound_is_unhealthy_until_one_is_bound_again() {
    // Unbinding the port driver takes its attributes (`afu_id`, `errors/`, `id`) and the character device
    // behind the node, but not the node nor the directory: no node event, no directory gone. The health pass
    // must see it, and the full discovery too (the second card: its driver unbound before the start).
    let rig = Rig::new();
    let ports = rig.node.dfl_card("0000:3b:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(0, 0)]).unwrap();
    let other = rig.node.opae_card("0000:86:00.0", 1, 1, Some(Fme { instance: 1, ports_num: 1 }), &[(1, 0)]).unwrap();
    rig.node.unbind_port(&other[0]).unwrap();
    let p = rig.plugin(&[]);
    rig.wait_list(&[("0000:3b:00.0", "Healthy"), ("0000:86:00.0", "Unhealthy")]);
    rig.node.unbind_port(&ports[0]).unwrap();
    rig.wait_list(&[("0000:3b:00.0", "Unhealthy"), ("0000:86:00.0", "Unhealthy")]);
    let log = p.log();
    assert!(log.contains("device 0000:3b:00.0 is now Unhealthy: no driver is bound to"), "{log}");
    assert!(log.contains("its device node cannot be opened"), "{log}");
    rig.node.bind_port(&ports[0], 0).unwrap();
    rig.node.bind_port(&other[0], 0).unwrap();
    rig.wait_list(&[("0000:3b:00.0", "Healthy"), ("0000:86:00.0", "Healthy")]);
}

#[test]
fn a_port_of_a_multi_port_card_with_no_driver_is_skipped_until_one_is_bound() {
    // Its ID needs its `id`, which the unbound driver took: skipped, and the log says why; found again
    // within seconds of a driver being bound (not at the next full discovery, 30 s away).
    let rig = Rig::new();
    let ports =
        rig.node.dfl_card("0000:3b:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 2 }), &[(0, 0), (1, 1)]).unwrap();
    rig.node.unbind_port(&ports[1]).unwrap();
    let p = rig.plugin(&[]);
    rig.wait_list(&[("0000:3b:00.0-0", "Healthy")]);
    let log = p.log();
    assert!(log.contains("hosts several ports and no driver is bound to it"), "{log}");
    rig.node.bind_port(&ports[1], 1).unwrap();
    rig.wait_list(&[("0000:3b:00.0-0", "Healthy"), ("0000:3b:00.0-1", "Healthy")]);
}
