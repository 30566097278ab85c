//! AWS FPGA slots (`--backend aws-fpga`): slots numbered by their management PFs, NUMA nodes, device nodes
//! of the driver bound to each application PF, an image load, a driver unbound and bound again, backend
//! detection and `--accel-nbunits` compatibility. Real binary, simulated kubelet, real sockets, simulated
//! F1 and F2 instances.

mod common;

use common::{allocate_for_one, summary, Rig, WAIT};
use k8s_accelerator_devplugin::api;
use k8s_accelerator_devplugin::discovery::aws_fpga::Generation;
use k8s_accelerator_devplugin::sim::{AwsDriver, AwsSlot};

/// The container paths of a response's DeviceSpecs.
fn container_paths(c: &api::ContainerAllocateResponse) -> Vec<&str> {
    c.devices.iter().map(|d| d.container_path.as_str()).collect()
}

#[test]
fn f2_slots_are_numbered_by_management_pf_with_numa_nodes_and_their_driver_nodes() {
    let rig = Rig::new();
    let slots = rig.node.aws_instance(Generation::F2, 8).unwrap();
    rig.node.aws_bind(&slots[0], AwsDriver::Xdma(1)).unwrap();
    rig.node.aws_bind(&slots[5], AwsDriver::Xdma(0)).unwrap();
    // No --backend: the management PFs choose it.
    let p = rig.plugin(&[]);
    let all: Vec<(&str, &str)> = ["0", "1", "2", "3", "4", "5", "6", "7"].iter().map(|id| (*id, "Healthy")).collect();
    let list = rig.wait_list(&all);
    assert!(p.log().contains("backend aws-fpga (detected: AWS FPGA management PFs in"), "{}", p.log());
    // f2.48xlarge: slots 0–3 on NUMA node 1, 4–7 on node 0.
    let numa: Vec<Option<i64>> = summary(&list.devices).into_iter().map(|(_, _, n)| n).collect();
    assert_eq!(numa, [1, 1, 1, 1, 0, 0, 0, 0].map(Some));

    let client = rig.client();
    let c = allocate_for_one(&client, &["5", "0"]);
    assert_eq!(c.envs["ACCELERATOR_UNITS"], "5,0");
    assert_eq!(c.envs["ACCELERATOR_PCI_ADDRESSES"], format!("{},{}", slots[5].application, slots[0].application));
    // Every node of each slot's driver (27 for XDMA), slot 5's first: xdma0_* is slot 5's (probe order).
    let paths = container_paths(&c);
    assert_eq!(paths.len(), 54, "{paths:?}");
    assert!(paths[..27].iter().all(|p| p.starts_with("/dev/xdma0_")), "{paths:?}");
    assert!(paths[27..].iter().all(|p| p.starts_with("/dev/xdma1_")), "{paths:?}");
    assert!(paths.contains(&"/dev/xdma0_user") && paths.contains(&"/dev/xdma1_c2h_3"));
    let dev = rig.node.dev().display().to_string();
    assert!(c.devices.iter().all(|d| d.host_path == format!("{dev}{}", &d.container_path[4..])));
    // A slot without a driver: the variables, no node.
    let c = allocate_for_one(&client, &["3"]);
    assert_eq!(c.envs["ACCELERATOR_PCI_ADDRESSES"], slots[3].application);
    assert!(c.devices.is_empty());

    // Two slots on one NUMA node, preferably the one that must be included.
    let mut want = api::ContainerPreferredAllocationRequest::new();
    want.available_deviceIDs = (0..8).map(|i| i.to_string()).collect();
    want.must_include_deviceIDs = vec!["6".into()];
    want.allocation_size = 2;
    let mut req = api::PreferredAllocationRequest::new();
    req.container_requests.push(want);
    let resp = client.get_preferred_allocation(&req).unwrap();
    assert_eq!(resp.container_responses[0].deviceIDs, ["6", "4"]);
}

#[test]
fn an_image_load_makes_the_slot_unhealthy_then_brings_it_back_with_its_new_nodes() {
    let rig = Rig::new();
    let slots = rig.node.aws_instance(Generation::F1, 2).unwrap();
    rig.node.aws_bind(&slots[1], AwsDriver::Xdma(0)).unwrap();
    let p = rig.plugin(&["--backend", "aws-fpga"]);
    rig.wait_list(&[("0", "Healthy"), ("1", "Healthy")]);
    assert_eq!(slots[1].application, "0000:00:11.0");
    let client = rig.client();
    assert!(container_paths(&allocate_for_one(&client, &["1"])).contains(&"/dev/xdma0_user"));

    // The application PF goes (its nodes with it), and comes back with the image's IDs; the driver
    // probes again and its nodes have another number.
    rig.node.aws_image_load_begin(&slots[1]).unwrap();
    rig.wait_list(&[("0", "Healthy"), ("1", "Unhealthy")]);
    assert!(p.log().contains("device 1 is now Unhealthy: its application PF 0000:00:11.0 is missing"), "{}", p.log());
    rig.node.aws_image_load_end(&slots[1], 0x1d0f, 0xf001).unwrap();
    rig.node.aws_bind(&slots[1], AwsDriver::Xdma(3)).unwrap();
    rig.wait_list(&[("0", "Healthy"), ("1", "Healthy")]);
    // Healthy may come before the last nodes (a scan between the PF's return and the driver's probe): wait
    // for what Allocate gives.
    let renamed = |c: &api::ContainerAllocateResponse| {
        let paths = container_paths(c);
        paths.len() == 27 && paths.iter().all(|p| p.starts_with("/dev/xdma3_"))
    };
    let ok = common::wait_until(WAIT, || renamed(&allocate_for_one(&client, &["1"])));
    assert!(ok, "{:?}\n{}", container_paths(&allocate_for_one(&client, &["1"])), p.log());
}

#[test]
fn an_image_load_without_a_driver_is_seen_by_the_health_pass() {
    // F2's default: no driver, so no device-node event; only the health pass can see the PF go and come.
    let rig = Rig::new();
    let slots = rig.node.aws_instance(Generation::F2, 1).unwrap();
    let p = rig.plugin(&[]);
    rig.wait_list(&[("0", "Healthy")]);
    rig.node.aws_image_load_begin(&slots[0]).unwrap();
    rig.wait_list(&[("0", "Unhealthy")]);
    rig.node.aws_image_load_end(&slots[0], 0x1d0f, 0xf010).unwrap();
    rig.wait_list(&[("0", "Healthy")]);
    assert!(p.log().contains("the application PF of slot 0 changed since the last discovery"), "{}", p.log());
}

#[test]
fn a_driver_unbound_and_another_bound_changes_what_the_container_gets() {
    let rig = Rig::new();
    let slots = rig.node.aws_instance(Generation::F2, 2).unwrap();
    rig.node.aws_bind(&slots[1], AwsDriver::Xocl(128)).unwrap();
    let p = rig.plugin(&["--backend", "aws-fpga"]);
    rig.wait_list(&[("0", "Healthy"), ("1", "Healthy")]);
    let client = rig.client();
    assert_eq!(container_paths(&allocate_for_one(&client, &["1"])), ["/dev/dri/renderD128"]);

    // Unbound: the render node goes (inside /dev/dri, which inotify on the dev root does not see); the
    // health pass sees the driver link go.
    rig.node.aws_unbind(&slots[1]).unwrap();
    let empty = common::wait_until(WAIT, || allocate_for_one(&client, &["1"]).devices.is_empty());
    assert!(empty, "the slot still hands over {:?}", container_paths(&allocate_for_one(&client, &["1"])));
    // The old EDMA driver bound instead.
    rig.node.aws_bind(&slots[1], AwsDriver::Edma(0)).unwrap();
    let edma = common::wait_until(WAIT, || allocate_for_one(&client, &["1"]).devices.len() == 8);
    let c = allocate_for_one(&client, &["1"]);
    assert!(edma, "{:?}", container_paths(&c));
    assert!(container_paths(&c).contains(&"/dev/edma0_queue_3") && container_paths(&c).contains(&"/dev/fpga0_event0"));

    // XRT bound, then unbound and bound again within one health pass under the same driver name, with
    // another render node: the first node recorded is gone, which the health pass sees.
    rig.node.aws_unbind(&slots[1]).unwrap();
    rig.node.aws_bind(&slots[1], AwsDriver::Xocl(128)).unwrap();
    let xocl =
        |m: u32| move |c: &api::ContainerAllocateResponse| container_paths(c) == [format!("/dev/dri/renderD{m}")];
    assert!(common::wait_until(WAIT, || xocl(128)(&allocate_for_one(&client, &["1"]))));
    rig.node.aws_unbind(&slots[1]).unwrap();
    rig.node.aws_bind(&slots[1], AwsDriver::Xocl(129)).unwrap();
    assert!(common::wait_until(WAIT, || xocl(129)(&allocate_for_one(&client, &["1"]))), "{}", p.log());
}

#[test]
fn a_driver_still_probing_makes_the_slot_unhealthy_until_its_nodes_are_there() {
    let rig = Rig::new();
    let slots = rig.node.aws_instance(Generation::F2, 1).unwrap();
    let p = rig.plugin(&[]);
    rig.wait_list(&[("0", "Healthy")]);
    // Its `driver` link first, its nodes later: no pod may get the slot without them meanwhile.
    rig.node.aws_probe_start(&slots[0], AwsDriver::Xdma(0)).unwrap();
    rig.wait_list(&[("0", "Unhealthy")]);
    assert!(p.log().contains("driver xdma is bound to 0000:34:00.0, and has made no device node yet"), "{}", p.log());
    rig.node.aws_bind(&slots[0], AwsDriver::Xdma(0)).unwrap();
    rig.wait_list(&[("0", "Healthy")]);
    assert!(common::wait_until(WAIT, || p.log().contains("device 0 now has 27 device nodes")), "{}", p.log());
    // The 27 node events settle into a few discoveries, not one each (19 lines without the settling; a
    // loaded machine may split the burst where the test makes a node more than 20 ms after the last).
    let lines = p.log().matches("device 0 now has").count();
    assert!(lines <= 9, "{lines} lines\n{}", p.log());
}

#[test]
fn vfio_gives_the_group_node_and_an_unknown_driver_is_reported() {
    let rig = Rig::new();
    let slots = rig.node.aws_instance(Generation::F2, 2).unwrap();
    rig.node.aws_bind(&slots[0], AwsDriver::Vfio(12)).unwrap();
    rig.node.aws_bind(&slots[1], AwsDriver::Other("uio_pci_generic")).unwrap();
    let p = rig.plugin(&[]);
    rig.wait_list(&[("0", "Healthy"), ("1", "Healthy")]);
    let client = rig.client();
    assert_eq!(container_paths(&allocate_for_one(&client, &["0"])), ["/dev/vfio/vfio", "/dev/vfio/12"]);
    assert!(allocate_for_one(&client, &["1"]).devices.is_empty());
    let reported = "slot 1: driver uio_pci_generic is bound to its application PF 0000:36:00.0, and the plugin \
                    knows no device node of it: pods get none";
    assert!(common::wait_until(WAIT, || p.log().contains(reported)), "{}", p.log());
}

#[test]
fn a_missing_device_node_makes_the_slot_unhealthy() {
    let rig = Rig::new();
    let slots = rig.node.aws_instance(Generation::F1, 1).unwrap();
    rig.node.aws_bind(&slots[0], AwsDriver::Xdma(0)).unwrap();
    let _p = rig.plugin(&[]);
    rig.wait_list(&[("0", "Healthy")]);
    rig.node.remove_node("xdma0_h2c_2").unwrap();
    rig.wait_list(&[("0", "Unhealthy")]);
    rig.node.add_node("xdma0_h2c_2").unwrap();
    rig.wait_list(&[("0", "Healthy")]);
}

#[test]
fn accel_nbunits_still_means_n_units_and_other_nodes_detect_as_before() {
    // An explicit --accel-nbunits keeps the original N-unit behaviour, even on an AWS FPGA node.
    let rig = Rig::new();
    rig.node.aws_instance(Generation::F1, 2).unwrap();
    let p = rig.plugin(&["-accel-nbunits", "3"]);
    let list = rig.wait_list(&[("0", "Healthy"), ("1", "Healthy"), ("2", "Healthy")]);
    assert!(p.log().contains("backend aws (detected: --accel-nbunits is given)"), "{}", p.log());
    let c = allocate_for_one(&rig.client(), &["2"]);
    assert!(!c.envs.contains_key("ACCELERATOR_PCI_ADDRESSES") && c.devices.is_empty());
    assert!(list.devices.iter().all(|d| d.topology.is_none()));

    // Intel's class wins over AWS management PFs; neither: 40 AWS units.
    let rig = Rig::new();
    rig.node.aws_instance(Generation::F2, 1).unwrap();
    rig.node.dfl_card("0000:5e:00.0", 0, 0, None, &[(0, 0)]).unwrap();
    let p = rig.plugin(&[]);
    rig.wait_list(&[("0000:5e:00.0", "Healthy")]);
    assert!(p.log().contains("backend intel (detected: an Intel FPGA driver class"), "{}", p.log());
    let rig = Rig::new();
    let p = rig.plugin(&[]);
    rig.kubelet.wait_devices(WAIT, |d| d.len() == 40).expect("40 units");
    assert!(p.log().contains("backend aws (detected: no Intel FPGA driver class and no AWS FPGA management PF"));
}

#[test]
fn a_management_pf_with_no_place_for_an_application_pf_is_reported_and_numbered() {
    // An F2 management PF at function 0 (no such thing on a real instance): reported, and it keeps its
    // number so that the next slot's ID is the SDK's.
    let rig = Rig::new();
    rig.node.aws_function("0000:30:00.0", 0x1d0f, 0x9248, 0).unwrap();
    let slots: Vec<AwsSlot> = rig.node.aws_instance(Generation::F2, 1).unwrap();
    let p = rig.plugin(&["--backend", "aws-fpga"]);
    rig.wait_list(&[("1", "Healthy")]);
    assert!(p.log().contains("skipping slot 0: its management PF 0000:30:00.0 has no place for an application PF"));
    assert_eq!(allocate_for_one(&rig.client(), &["1"]).envs["ACCELERATOR_PCI_ADDRESSES"], slots[0].application);
}
