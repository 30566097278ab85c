//! Discovery over realistic sysfs and /dev trees built in temp dirs.

mod common;

use common::summary;
use k8s_accelerator_devplugin::device::{Device, Health};
use k8s_accelerator_devplugin::discovery::{self, Backend, Roots, Scan};
use k8s_accelerator_devplugin::registry::Registry;
use k8s_accelerator_devplugin::sim::{sim_write as write, Fme, SimNode};
use std::fs;

fn roots(node: &SimNode) -> Roots {
    Roots { sysfs: node.sysfs(), dev: node.dev() }
}

fn scan(node: &SimNode) -> Scan {
    discovery::scan(Backend::Intel, &roots(node))
}

fn ids(scan: &Scan) -> Vec<&str> {
    scan.devices.iter().map(|d| d.id.as_str()).collect()
}

fn device<'a>(scan: &'a Scan, id: &str) -> &'a Device {
    scan.devices.iter().find(|d| d.id == id).unwrap_or_else(|| panic!("no device {id} in {:?}", ids(scan)))
}

#[test]
fn opae_ports_are_named_by_pci_address_and_matched_to_their_own_node() {
    let node = SimNode::new().unwrap();
    // The dev, FME and port counters are independent: intel-fpga-dev.0 holds port 3, dev.1 holds port 0.
    node.opae_card("0000:5e:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(3, 0)]).unwrap();
    node.opae_card("0000:BE:00.0", 1, 1, Some(Fme { instance: 1, ports_num: 1 }), &[(0, 0)]).unwrap();
    let s = scan(&node);
    assert!(s.problems.is_empty(), "{:?}", s.problems);
    assert_eq!(ids(&s), ["0000:5e:00.0", "0000:be:00.0"]);
    let a = device(&s, "0000:5e:00.0");
    assert_eq!(a.health, Health::Healthy);
    assert_eq!(a.numa_node, Some(0));
    let a_node = &a.nodes[0];
    assert_eq!(a_node.container_path, "/dev/intel-fpga-port.3");
    assert_eq!(a_node.host_path, node.dev().join("intel-fpga-port.3").display().to_string());
    let b = device(&s, "0000:be:00.0");
    assert_eq!(b.numa_node, Some(1));
    assert_eq!(b.nodes[0].container_path, "/dev/intel-fpga-port.0");
    assert_eq!(Backend::detect(&node.sysfs(), None, 40).0, Backend::Intel);
}

#[test]
fn dfl_multi_port_functions_get_port_suffixes_and_fme_regions_are_skipped() {
    let node = SimNode::new().unwrap();
    node.dfl_card("0000:3b:00.0", 1, 0, Some(Fme { instance: 0, ports_num: 2 }), &[(0, 0), (1, 1)]).unwrap();
    node.dfl_card("0001:af:00.0", -1, 1, Some(Fme { instance: 1, ports_num: 1 }), &[(2, 0)]).unwrap();
    let s = scan(&node);
    assert!(s.problems.is_empty(), "{:?}", s.problems);
    assert_eq!(ids(&s), ["0000:3b:00.0-0", "0000:3b:00.0-1", "0001:af:00.0"]);
    assert_eq!(device(&s, "0000:3b:00.0-1").nodes[0].container_path, "/dev/dfl-port.1");
    assert_eq!(device(&s, "0000:3b:00.0-1").numa_node, Some(1));
    assert_eq!(device(&s, "0001:af:00.0").numa_node, None, "numa_node -1 means no topology");
}

#[test]
fn sriov_released_port_moves_to_the_vf_and_sibling_ids_stay_stable() {
    let node = SimNode::new().unwrap();
    let ports =
        node.dfl_card("0000:b1:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 2 }), &[(0, 0), (1, 1)]).unwrap();
    let before = scan(&node);
    assert_eq!(ids(&before), ["0000:b1:00.0-0", "0000:b1:00.0-1"]);

    // Port id 0 is released from the PF and shows up in the VF, its only port.
    node.release_port(&ports[0]).unwrap();
    node.dfl_card("0000:b1:00.1", 0, 2, None, &[(2, 0)]).unwrap();
    node.link_vf("0000:b1:00.0", "0000:b1:00.1", 0).unwrap();
    let after = scan(&node);
    assert!(after.problems.is_empty(), "{:?}", after.problems);
    assert_eq!(ids(&after), ["0000:b1:00.0-1", "0000:b1:00.1"], "the PF's remaining port keeps its ID");
    assert_eq!(device(&after, "0000:b1:00.1").nodes[0].container_path, "/dev/dfl-port.2");

    // All released: the PF keeps only its FME, which advertises nothing.
    node.release_port(&ports[1]).unwrap();
    assert_eq!(ids(&scan(&node)), ["0000:b1:00.1"]);
}

#[test]
fn both_driver_layouts_on_one_node() {
    let node = SimNode::new().unwrap();
    node.opae_card("0000:5e:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(0, 0)]).unwrap();
    node.dfl_card("0000:86:00.0", 1, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(0, 0)]).unwrap();
    let s = scan(&node);
    assert_eq!(ids(&s), ["0000:5e:00.0", "0000:86:00.0"]);
    assert_eq!(device(&s, "0000:86:00.0").nodes[0].container_path, "/dev/dfl-port.0");
}

#[test]
fn health_follows_node_errors_and_afu_id_both_ways() {
    let node = SimNode::new().unwrap();
    let ports = node.dfl_card("0000:3b:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(0, 0)]).unwrap();
    let port = &ports[0];
    let health = |node: &SimNode| scan(node).devices[0].health.clone();
    assert_eq!(health(&node), Health::Healthy);

    node.remove_node("dfl-port.0").unwrap();
    assert!(matches!(health(&node), Health::Unhealthy(why) if why.contains("missing")));
    node.add_node("dfl-port.0").unwrap();
    assert_eq!(health(&node), Health::Healthy);

    write(&port.join("errors/errors"), "0x40\n").unwrap();
    assert!(matches!(health(&node), Health::Unhealthy(why) if why.contains("0x40")));
    write(&port.join("errors/errors"), "0x0\n").unwrap();
    assert_eq!(health(&node), Health::Healthy);

    write(&port.join("afu_id"), "ffffffffffffffffffffffffffffffff\n").unwrap();
    assert!(matches!(health(&node), Health::Unhealthy(why) if why.contains("no AFU")));
    write(&port.join("afu_id"), "9f81ad2ce2d54f4dae6de5c8a2fcb9a5\n").unwrap();
    assert_eq!(health(&node), Health::Healthy);

    // No error-reporting feature at all: not an error.
    fs::remove_dir_all(port.join("errors")).unwrap();
    assert_eq!(health(&node), Health::Healthy);
    // Garbage where an error mask should be: degraded, not fatal.
    write(&port.join("errors/errors"), "\u{1}garbage").unwrap();
    assert!(matches!(health(&node), Health::Unhealthy(_)));
}

#[test]
fn corrupt_entries_are_reported_and_skipped_while_good_devices_stay() {
    let node = SimNode::new().unwrap();
    node.opae_card("0000:5e:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(0, 0)]).unwrap();
    let good_dfl = node.dfl_card("0000:86:00.0", 1, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(0, 0)]).unwrap();
    let class = node.sysfs().join("class");
    // A dangling class symlink.
    std::os::unix::fs::symlink(
        "../../devices/pci0000:00/0000:00:01.0/0000:99:00.0/fpga/intel-fpga-dev.9",
        class.join("fpga/intel-fpga-dev.9"),
    )
    .unwrap();
    // A region that is not below any PCI function.
    let platform = node.sysfs().join("devices/platform/fake/fpga_region/region7");
    fs::create_dir_all(platform.join("dfl-port.7")).unwrap();
    std::os::unix::fs::symlink(&platform, class.join("fpga_region/region7")).unwrap();
    // An oddly named port next to a good one.
    fs::create_dir_all(good_dfl[0].parent().unwrap().join("dfl-port.x")).unwrap();
    // Garbage NUMA node on the OPAE card.
    write(&node.sysfs().join("devices/pci0000:00/0000:00:01.0/0000:5e:00.0/numa_node"), "banana\n").unwrap();
    // A multi-port function whose second port has no readable id.
    let ports =
        node.dfl_card("0000:3b:00.0", 0, 1, Some(Fme { instance: 1, ports_num: 2 }), &[(1, 0), (2, 1)]).unwrap();
    fs::remove_file(ports[1].join("id")).unwrap();

    let s = scan(&node);
    assert_eq!(ids(&s), ["0000:3b:00.0-0", "0000:5e:00.0", "0000:86:00.0"]);
    assert_eq!(device(&s, "0000:5e:00.0").numa_node, None);
    assert!(s.devices.iter().all(|d| d.health == Health::Healthy));
    let problems = s.problems.join("\n");
    for needle in ["intel-fpga-dev.9", "region7", "dfl-port.x", "banana", "dfl-port.2"] {
        assert!(problems.contains(needle), "no problem mentions {needle}:\n{problems}");
    }
}

#[test]
fn no_driver_means_aws_and_aws_units_are_numbered() {
    let node = SimNode::new().unwrap();
    let backend = Backend::detect(&node.sysfs(), None, 3).0;
    assert_eq!(backend, Backend::Aws { units: 3 });
    let mut registry = Registry::default();
    registry.update(discovery::scan(backend, &roots(&node)).devices);
    let list = registry.snapshot().list();
    assert_eq!(
        summary(&list.devices),
        [
            ("0".into(), "Healthy".into(), None),
            ("1".into(), "Healthy".into(), None),
            ("2".into(), "Healthy".into(), None)
        ]
    );
    // An Intel node with the driver loaded but no card yet: Intel, empty.
    fs::create_dir_all(node.sysfs().join("class/fpga_region")).unwrap();
    assert_eq!(Backend::detect(&node.sysfs(), None, 3).0, Backend::Intel);
    assert!(scan(&node).devices.is_empty());
}

#[test]
fn a_character_device_with_another_number_is_not_the_port() {
    let node = SimNode::new().unwrap();
    node.dfl_card("0000:3b:00.0", 0, 0, None, &[(0, 0)]).unwrap();
    // SimNode writes the sysfs `dev` of port K as 510:K; replace its stand-in node with real device nodes.
    let path = node.dev().join("dfl-port.0");
    let mknod = |major: u32, minor: u32| {
        let _ = fs::remove_file(&path);
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: valid NUL-terminated path.
        unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(major, minor)) == 0 }
    };
    if !mknod(510, 0) {
        // Creating device nodes needs CAP_MKNOD (CI runs as root, where this test does its work).
        eprintln!("skipping: mknod: {}", std::io::Error::last_os_error());
        return;
    }
    assert_eq!(scan(&node).devices[0].health, Health::Healthy);
    assert!(mknod(510, 7));
    assert!(matches!(&scan(&node).devices[0].health, Health::Unhealthy(why) if why.contains("510:7")));
}

#[test]
fn the_cache_keeps_fixed_attributes_until_their_directory_is_another() {
    let node = SimNode::new().unwrap();
    node.dfl_card("0000:5e:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 2 }), &[(0, 0), (1, 1)]).unwrap();
    let mut cache = discovery::intel::Cache::default();
    let first = discovery::scan_with(Backend::Intel, &roots(&node), &mut cache);
    assert_eq!(ids(&first), ["0000:5e:00.0-0", "0000:5e:00.0-1"]);
    assert_eq!(first, discovery::scan(Backend::Intel, &roots(&node)), "the cache changes nothing");

    // Fixed attributes are not read again while their directory is the same one (a kernel never rewrites
    // them; a test can): the cached `id` and `numa_node` stay.
    let function = node.sysfs().join("devices/pci0000:00/0000:00:01.0/0000:5e:00.0");
    let port = function.join("fpga_region/region0/dfl-port.0");
    write(&port.join("id"), "5\n").unwrap();
    write(&function.join("numa_node"), "1\n").unwrap();
    let cached = discovery::scan_with(Backend::Intel, &roots(&node), &mut cache);
    assert_eq!(ids(&cached), ["0000:5e:00.0-0", "0000:5e:00.0-1"]);
    assert_eq!(device(&cached, "0000:5e:00.0-0").numa_node, Some(0));

    // Another card at the same address: new directories, so everything is read again.
    fs::remove_dir_all(&function).unwrap();
    for link in ["region0", "region100000"] {
        fs::remove_file(node.sysfs().join("class/fpga_region").join(link)).unwrap();
    }
    node.dfl_card("0000:5e:00.0", 1, 0, Some(Fme { instance: 0, ports_num: 2 }), &[(0, 6), (1, 7)]).unwrap();
    let replaced = discovery::scan_with(Backend::Intel, &roots(&node), &mut cache);
    assert_eq!(ids(&replaced), ["0000:5e:00.0-6", "0000:5e:00.0-7"]);
    assert_eq!(device(&replaced, "0000:5e:00.0-6").numa_node, Some(1));
    assert_eq!(replaced, discovery::scan(Backend::Intel, &roots(&node)));
}

#[test]
fn the_cache_does_not_keep_an_attribute_read_half_written() {
    let node = SimNode::new().unwrap();
    let ports =
        node.dfl_card("0000:5e:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 2 }), &[(0, 0), (1, 1)]).unwrap();
    // Read between the creation of the file and its write: empty. The port is skipped this time, and its
    // `id` is read again at the next scan, however long its directory lives.
    write(&ports[1].join("id"), "").unwrap();
    let mut cache = discovery::intel::Cache::default();
    let first = discovery::scan_with(Backend::Intel, &roots(&node), &mut cache);
    assert_eq!(ids(&first), ["0000:5e:00.0-0"]);
    write(&ports[1].join("id"), "1\n").unwrap();
    let next = discovery::scan_with(Backend::Intel, &roots(&node), &mut cache);
    assert_eq!(ids(&next), ["0000:5e:00.0-0", "0000:5e:00.0-1"]);
}

#[test]
fn a_health_pass_reads_the_port_and_gives_up_on_a_directory_gone_or_replaced() {
    let node = SimNode::new().unwrap();
    let ports = node.dfl_card("0000:5e:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(0, 0)]).unwrap();
    let found = scan(&node);
    let paths = &found.ports[0];
    assert_eq!(paths.id, "0000:5e:00.0");
    // Through kept descriptors (the daemon's way), and through paths when none could be opened.
    let files = discovery::intel::PortFiles::open(paths);
    let none = discovery::intel::PortFiles::default();
    let health = |p| {
        let kept = discovery::intel::health(p, &files);
        assert_eq!(kept, discovery::intel::health(p, &none), "kept descriptors read what the paths hold");
        kept
    };
    assert_eq!(health(paths).map(|(_, h)| h), Some(Health::Healthy));
    write(&ports[0].join("errors/errors"), "0x2\n").unwrap();
    assert!(matches!(health(paths), Some((Some(_), Health::Unhealthy(why))) if why.contains("0x2")));
    node.set_afu(&ports[0], &"f".repeat(32)).unwrap();
    write(&ports[0].join("errors/errors"), "0x0\n").unwrap();
    assert!(matches!(health(paths), Some((None, Health::Unhealthy(why))) if why.contains("all f")));

    // The same path, another directory (a port made again): None, so that a full discovery reads it anew.
    let real = paths.dir.clone();
    fs::remove_dir_all(&real).unwrap();
    assert_eq!(health(paths), None, "gone");
    fs::create_dir_all(real.join("errors")).unwrap();
    write(&real.join("afu_id"), &format!("{}\n", k8s_accelerator_devplugin::sim::AFU_ID)).unwrap();
    write(&real.join("errors/errors"), "0x0\n").unwrap();
    assert_eq!(health(paths), None, "replaced");

    // Something at the node's path that can be no port's node.
    let node_path = node.dev().join("dfl-port.0");
    fs::remove_file(&node_path).unwrap();
    fs::create_dir(&node_path).unwrap();
    let s = scan(&node);
    assert!(
        matches!(&s.devices[0].health, Health::Unhealthy(why) if why.contains("is not a character device")),
        "{:?}",
        s.devices[0].health
    );
}

#[test]
fn aws_slots_are_numbered_in_pci_address_order_not_name_order() {
    let node = SimNode::new().unwrap();
    // Two F2 slots in two PCI domains: by name "10000:…" sorts before "1000:…", by address after.
    for domain in ["10000", "1000"] {
        node.aws_function(&format!("{domain}:01:00.1"), 0x1d0f, 0x9248, 0).unwrap();
        node.aws_function(&format!("{domain}:01:00.0"), 0x1d0f, 0x9048, 0).unwrap();
    }
    // A function 0 with an F2 management PF's IDs (an image could give an application PF any IDs): on F2
    // it cannot be a management PF; reported, and it keeps its place in the numbering.
    node.aws_function("2000:01:00.0", 0x1d0f, 0x9248, 0).unwrap();
    let scan = discovery::scan(Backend::AwsFpga, &roots(&node));
    let slots: Vec<(&str, Option<&str>)> =
        scan.devices.iter().map(|d| (d.id.as_str(), d.pci_address.as_deref())).collect();
    // 1000 < 2000 < 10000: the skipped one keeps its number, 1.
    assert_eq!(slots, [("0", Some("1000:01:00.0")), ("2", Some("10000:01:00.0"))]);
    assert!(
        scan.problems.iter().any(|p| p.contains("skipping slot 1: its management PF 2000:01:00.0")),
        "{:?}",
        scan.problems
    );
}

#[test]
fn only_what_may_heal_asks_for_another_discovery_soon() {
    let node = SimNode::new().unwrap();
    let ports =
        node.dfl_card("0000:5e:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 2 }), &[(0, 0), (1, 1)]).unwrap();
    // A malformed numa_node is reported, and no discovery soon will change it.
    let function = node.sysfs().join("devices/pci0000:00/0000:00:01.0/0000:5e:00.0");
    write(&function.join("numa_node"), "north\n").unwrap();
    let permanent = scan(&node);
    assert!(!permanent.problems.is_empty() && !permanent.retry, "{:?}", permanent.problems);
    // A port whose `id` is not written yet may be in the making.
    fs::remove_file(ports[1].join("id")).unwrap();
    assert!(scan(&node).retry);
}
