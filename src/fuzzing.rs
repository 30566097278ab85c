//! The checks behind the fuzz targets in `fuzz/`, kept here so that `cargo test` can replay every input of
//! `fuzz/corpus/` (past crashes included) on the stable toolchain: see `tests/fuzz_corpus.rs`. Each function
//! panics when an invariant breaks; none of them may panic otherwise, whatever the input.

use crate::cli::{self, Command};
use crate::device::MAX_ID_LEN;
use crate::discovery::sysfs::{
    afu_id_is_blank, parse_afu_id, parse_dev, parse_error_bits, parse_numa_node, parse_pci_address, parse_small_uint,
    pci_function_of,
};
use crate::discovery::{self, Backend, Roots};
use std::collections::HashSet;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// PCI addresses as found in sysfs directory names and symlink targets.
pub fn pci_address(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Some(address) = parse_pci_address(text) {
        // The canonical form parses back to the same address, and is what the kubelet may see as an ID.
        let canonical = address.to_string();
        assert_eq!(parse_pci_address(&canonical), Some(address));
        assert!(canonical.len() <= 16, "{canonical}");
        assert_eq!(canonical, canonical.to_lowercase());
    }
    // A symlink target or real path: any ancestor may be a function.
    if let Some((address, dir)) = pci_function_of(Path::new(text)) {
        assert!(Path::new(text).starts_with(dir));
        assert_eq!(dir.file_name().and_then(|n| n.to_str()).and_then(parse_pci_address), Some(address));
    }
}

/// The sysfs attribute parsers: numa_node, afu_id, errors/errors, dev, ports_num and id.
pub fn sysfs_attributes(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(Some(node)) = parse_numa_node(text) {
        assert!(node >= 0);
    }
    if let Some(blank) = afu_id_is_blank(text) {
        let hex: String = text.trim().chars().filter(|&c| c != '-').collect();
        assert_eq!(hex.len(), 32);
        assert_eq!(blank, hex.bytes().all(|b| b.eq_ignore_ascii_case(&b'f')));
        assert_eq!(parse_afu_id(text).map(|id| id.len()), Some(32));
    }
    if let Some(bits) = parse_error_bits(text) {
        let t = text.trim();
        if let Some(hex) = t.strip_prefix("0x") {
            assert_eq!(u64::from_str_radix(hex, 16).ok(), Some(bits));
        }
    }
    if let Some((major, minor)) = parse_dev(text) {
        assert_eq!(parse_dev(&format!("{major}:{minor}\n")), Some((major, minor)));
    }
    if let Some(n) = parse_small_uint(text) {
        assert!(n < 1_000_000_000);
    }
}

/// The command line, durations and resource names: never a panic, and what is accepted is in range.
pub fn command_line(data: &[u8]) {
    // Arguments separated by NUL bytes, as in /proc/<pid>/cmdline; not necessarily UTF-8.
    let args: Vec<OsString> = data.split(|&b| b == 0).map(|a| OsString::from_vec(a.to_vec())).collect();
    if let Ok(Command::Run(o) | Command::Probe(o)) = cli::parse(args) {
        assert!(o.accel_nbunits.map_or(true, |n| (1..=100_000).contains(&n)));
        assert!(o.scan_interval >= Duration::from_millis(10) && o.scan_interval <= Duration::from_secs(86_400));
        assert!(cli::validate_resource_name(&o.resource_name).is_ok());
        // Every --afu-resource entry: a valid name, a canonical, loaded AFU ID, each ID once.
        let mut ids = HashSet::new();
        for (name, id) in &o.afu_resources {
            assert!(cli::validate_resource_name(name).is_ok());
            assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            assert!(!crate::discovery::sysfs::is_blank_afu(id));
            assert!(ids.insert(id.clone()), "{id} twice");
        }
        // Paths reach the kubelet and the runtime: always absolute.
        for p in [&o.device_plugin_path, &o.sysfs_root, &o.dev_root].into_iter().chain(o.cdi_spec_dir.as_ref()) {
            assert!(p.is_absolute(), "{}", p.display());
        }
        // With CDI, every resource name is a CDI kind.
        if o.cdi_spec_dir.is_some() {
            for name in std::iter::once(&o.resource_name).chain(o.afu_resources.iter().map(|(n, _)| n)) {
                assert!(crate::cdi::check_kind(name).is_ok(), "{name}");
            }
        }
        // The socket names of the default resource and every named one fit, or the directory was refused.
        for name in std::iter::once(&o.resource_name).chain(o.afu_resources.iter().map(|(n, _)| n)) {
            let socket =
                crate::endpoint::socket_name(&o.device_plugin_path, name).expect("checked by the command line");
            assert!(o.device_plugin_path.join(socket).as_os_str().len() <= crate::endpoint::MAX_SOCKET_PATH);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(d) = cli::parse_duration(text) {
            assert!(d >= Duration::from_millis(10));
        }
        if cli::validate_resource_name(text).is_ok() {
            let (domain, name) = text.split_once('/').unwrap();
            assert!(!domain.is_empty() && !name.is_empty() && name.len() <= 63 && !name.contains('/'));
        }
    }
}

/// Path pieces the drivers use, plus a few that they never do.
const DIRS: &[&str] = &[
    "class/fpga",
    "class/fpga_region",
    "devices/pci0000:00/0000:00:01.0/0000:5e:00.0",
    "devices/pci0000:00/0000:00:01.0/0000:5e:00.1",
    "devices/pci0000:00/0000:00:01.0/0000:AF:1f.7",
    "devices/pci0000:00/0000:00:01.0/10000:01:00.0",
    "devices/platform/nowhere",
];
const CONTAINERS: &[&str] =
    &["fpga/intel-fpga-dev.0", "fpga/intel-fpga-dev.1", "fpga_region/region0", "fpga_region/region1", "x"];
const CHILDREN: &[&str] = &[
    "intel-fpga-port.0",
    "intel-fpga-port.3",
    "intel-fpga-fme.0",
    "dfl-port.0",
    "dfl-port.1",
    "dfl-fme.0",
    "dfl-port.x",
    "intel-fpga-port.99999999999",
];
const FILES: &[&str] =
    &["id", "afu_id", "errors/errors", "ports_num", "dev", "numa_node", "../numa_node", "../../numa_node"];
const VALUES: &[&str] = &[
    "0\n",
    "1\n",
    "2\n",
    "-1\n",
    "0x0\n",
    "0x40\n",
    "ffffffffffffffffffffffffffffffff\n",
    "d8424dc4a4a3c413f89e433683f9040b\n",
    "510:0\n",
    "garbage",
    "",
];

fn pick<'a>(list: &[&'a str], byte: u8) -> &'a str {
    list[usize::from(byte) % list.len()]
}

/// Builds a random sysfs and /dev tree from the input, with the names and links the Intel drivers use, and
/// runs the full Intel discovery over it: no panic, and every device it reports is well-formed.
pub fn discovery_tree(data: &[u8]) {
    let root = std::env::temp_dir().join(format!("fuzz-tree-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let sys = root.join("sys");
    let dev = root.join("dev");
    let _ = std::fs::create_dir_all(&dev);
    let mut containers: Vec<PathBuf> = Vec::new();
    for op in data.chunks(4) {
        let [kind, a, b, c] = [op[0], *op.get(1).unwrap_or(&0), *op.get(2).unwrap_or(&0), *op.get(3).unwrap_or(&0)];
        match kind % 5 {
            // A class device below a PCI function, linked from its class directory.
            0 => {
                let container = pick(CONTAINERS, b);
                let dir = sys.join(pick(DIRS, a)).join(container);
                let _ = std::fs::create_dir_all(&dir);
                let class = if container.starts_with("fpga_region") {
                    format!("class/fpga_region/region{}", c % 4)
                } else {
                    format!("class/fpga/intel-fpga-dev.{}", c % 4)
                };
                let class = sys.join(class);
                let _ = std::fs::create_dir_all(class.parent().unwrap_or(Path::new("/")));
                let _ = std::os::unix::fs::symlink(&dir, &class);
                containers.push(dir);
            }
            // A port or FME in a container, and perhaps its device node.
            1 if !containers.is_empty() => {
                let child = pick(CHILDREN, b);
                let dir = containers[usize::from(a) % containers.len()].join(child);
                let _ = std::fs::create_dir_all(&dir);
                if c % 2 == 0 {
                    let _ = std::fs::write(dev.join(child), "");
                }
            }
            // An attribute with a plausible or broken value.
            2 if !containers.is_empty() => {
                let container = &containers[usize::from(a) % containers.len()];
                let dir = container.join(pick(CHILDREN, b));
                let file = dir.join(pick(FILES, c));
                let _ = std::fs::create_dir_all(file.parent().unwrap_or(Path::new("/")));
                let _ = std::fs::write(&file, pick(VALUES, c.rotate_right(3)));
            }
            // A dangling class link.
            3 => {
                let link = sys.join(pick(DIRS, a % 2)).join(format!("intel-fpga-dev.{}", b % 8));
                let _ = std::fs::create_dir_all(link.parent().unwrap_or(Path::new("/")));
                let _ = std::os::unix::fs::symlink(root.join("nowhere"), link);
            }
            // A device node vanishes.
            _ => {
                let _ = std::fs::remove_file(dev.join(pick(CHILDREN, a)));
            }
        }
    }
    let scan = discovery::scan(Backend::Intel, &Roots { sysfs: sys, dev });
    let mut ids = HashSet::new();
    for d in &scan.devices {
        assert!(!d.id.is_empty() && d.id.len() <= MAX_ID_LEN, "{:?}", d.id);
        assert!(ids.insert(d.id.clone()), "duplicate ID {}", d.id);
        assert!(d.nodes.len() == 1 && d.nodes[0].container_path.starts_with("/dev/"));
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// PCI functions an AWS instance may show, and some it never does.
const AWS_ADDRESSES: &[&str] = &[
    "0000:00:0f.0",
    "0000:00:10.0",
    "0000:00:11.0",
    "0000:00:12.0",
    "0000:00:00.0",
    "0000:34:00.0",
    "0000:34:00.1",
    "0000:35:00.1",
    "10000:01:00.1",
    "not-an-address",
];
const AWS_IDS: &[&str] =
    &["0x1d0f\n", "0x1041\n", "0x9248\n", "0x1042\n", "0xf001\n", "0x8086\n", "0x10410\n", "", "x"];
const AWS_NODES: &[&str] = &["xdma0_user", "xdma1_h2c_0", "edma0_queue_0", "fpga0_event0", "renderD128", "..", "a/b"];

/// Builds a random AWS-like sysfs and /dev tree from the input (PCI functions linked from
/// `bus/pci/devices` with plausible or broken IDs, XDMA/EDMA class devices whose `device` link points to
/// a function or nowhere, render nodes, driver links, functions removed as an image load does) and runs
/// the AWS slot discovery over it: no panic, slot IDs are distinct numbers in ascending order, every slot
/// has its application PF's address, container paths stay under `/dev/`, and a Healthy slot's nodes exist.
pub fn aws_fpga_tree(data: &[u8]) {
    let root = std::env::temp_dir().join(format!("fuzz-aws-tree-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let sys = root.join("sys");
    let dev = root.join("dev");
    let _ = std::fs::create_dir_all(sys.join("bus/pci/devices"));
    let _ = std::fs::create_dir_all(&dev);
    let function = |address: &str| sys.join("devices/pci0000:00").join(address);
    let link = |target: &Path, at: &Path| {
        let _ = std::fs::create_dir_all(at.parent().unwrap_or(Path::new("/")));
        let _ = std::os::unix::fs::symlink(target, at);
    };
    for op in data.chunks(4) {
        let [kind, a, b, c] = [op[0], *op.get(1).unwrap_or(&0), *op.get(2).unwrap_or(&0), *op.get(3).unwrap_or(&0)];
        let address = pick(AWS_ADDRESSES, a);
        match kind % 6 {
            // A PCI function with its IDs and NUMA node, linked from the bus.
            0 => {
                let dir = function(address);
                let _ = std::fs::create_dir_all(&dir);
                let _ = std::fs::write(dir.join("vendor"), pick(AWS_IDS, b));
                let _ = std::fs::write(dir.join("device"), pick(AWS_IDS, c));
                let _ = std::fs::write(dir.join("numa_node"), pick(VALUES, b ^ c));
                link(&dir, &sys.join("bus/pci/devices").join(address));
            }
            // A class device of a function (or of nowhere), linked from its class.
            1 => {
                let class = if b % 2 == 0 { "xdma" } else { "edma" };
                let name = pick(AWS_NODES, c);
                let dir = function(address).join(class).join(name);
                let _ = std::fs::create_dir_all(&dir);
                let owner = if b % 3 == 0 { root.join("nowhere") } else { function(address) };
                link(&owner, &dir.join("device"));
                link(&dir, &sys.join("class").join(class).join(name));
            }
            // A render node below a function.
            2 => {
                let _ = std::fs::create_dir_all(function(address).join("drm").join(pick(AWS_NODES, b)));
            }
            // A device node appears or goes.
            3 => {
                let name = pick(AWS_NODES, b);
                let path = if name.starts_with("renderD") { dev.join("dri").join(name) } else { dev.join(name) };
                if c % 2 == 0 {
                    let _ = std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/")));
                    let _ = std::fs::write(&path, "");
                } else {
                    let _ = std::fs::remove_file(&path);
                }
            }
            // A function removed, its bus link left dangling (an image load under way).
            4 => {
                let _ = std::fs::remove_dir_all(function(address));
            }
            // A driver bound.
            _ => link(
                &sys.join("bus/pci/drivers").join(pick(&["xdma", "edma", "xocl"], b)),
                &function(address).join("driver"),
            ),
        }
    }
    let scan = discovery::scan(Backend::AwsFpga, &Roots { sysfs: sys, dev });
    let mut last: Option<u32> = None;
    for (d, slot) in scan.devices.iter().zip(&scan.slots) {
        let n: u32 = d.id.parse().expect("a slot ID is a number");
        assert!(last.map_or(true, |l| n > l), "slot {n} after {last:?}");
        last = Some(n);
        assert_eq!(d.id, slot.id);
        assert!(d.pci_address.as_deref().and_then(parse_pci_address).is_some(), "{:?}", d.pci_address);
        if slot.identity.is_none() {
            assert!(d.nodes.is_empty() && !d.health.is_healthy(), "slot {} has no application PF", d.id);
        }
        for node in &d.nodes {
            let container = Path::new(&node.container_path);
            assert!(container.starts_with("/dev/"), "{}", node.container_path);
            assert!(container
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::RootDir)));
            if d.health.is_healthy() {
                assert!(
                    Path::new(&node.host_path).exists(),
                    "{} is missing, and slot {} is Healthy",
                    node.host_path,
                    d.id
                );
            }
        }
    }
    assert_eq!(scan.devices.len(), scan.slots.len());
    let _ = std::fs::remove_dir_all(&root);
}
