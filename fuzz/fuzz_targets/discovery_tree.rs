//! Builds a random sysfs and /dev tree from the input, with the names and links the Intel drivers use, and
//! runs the full Intel discovery over it: no panic, and every device it reports is well-formed.
#![no_main]

use k8s_accelerator_devplugin::device::MAX_ID_LEN;
use k8s_accelerator_devplugin::discovery::{self, Backend, Roots};
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

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
const CONTAINERS: &[&str] = &["fpga/intel-fpga-dev.0", "fpga/intel-fpga-dev.1", "fpga_region/region0", "fpga_region/region1", "x"];
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
const FILES: &[&str] = &["id", "afu_id", "errors/errors", "ports_num", "dev", "numa_node", "../numa_node", "../../numa_node"];
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

fuzz_target!(|data: &[u8]| {
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
        assert!(d.node.as_ref().is_some_and(|n| n.container_path.starts_with("/dev/")));
    }
    let _ = std::fs::remove_dir_all(&root);
});
