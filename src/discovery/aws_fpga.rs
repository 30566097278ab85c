//! AWS EC2 FPGA slots (F1, F2), found the way the AWS SDK finds them (`fpga_pci_sysfs.c` in aws/aws-fpga):
//!
//! - a slot is a **management PF** in `<sys>/bus/pci/devices`: `vendor` `0x1d0f`, `device` `0x1041` (F1)
//!   or `0x9248` (F2). It stays for the instance's life; slots are numbered `0`, `1`, … in ascending PCI
//!   address order of their management PFs, as the SDK numbers them.
//! - its **application PF** is where the custom logic is: on F1 the same domain and bus, device number − 1,
//!   same function; on F2 the same device, function 0. It is found by its address only, never by its IDs,
//!   which an image (AFI) sets. An image load removes it for a few seconds and brings it back at the same
//!   address, perhaps with another driver and other device nodes.
//! - the **device nodes** are those of the driver bound to the application PF: every `<sys>/class/xdma/*`
//!   and `<sys>/class/edma/*` entry whose `device` link resolves to it (`/dev/<name>`), and its
//!   `drm/renderD*` (XRT's `xocl`: `/dev/dri/renderD<N>`). Without a driver (F2's default) there is none.
//!
//! Nothing here was tried on an instance: the layout comes from the AWS SDK's sources, the XDMA and XRT
//! drivers' sources and the AWS shell specifications.

use super::sysfs::{self, dir_id, DirId, PciAddress};
use super::Scan;
use crate::device::{DevNode, Device, Health};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

/// The PCI vendor ID of Amazon (Annapurna Labs): every management PF, and the application PF before an
/// image gives it its own IDs.
pub const AWS_VENDOR: u16 = 0x1d0f;
/// The management PF's PCI device ID on F1 (Xilinx VU9P).
pub const F1_MANAGEMENT_PF: u16 = 0x1041;
/// The management PF's PCI device ID on F2 (AMD VU47P).
pub const F2_MANAGEMENT_PF: u16 = 0x9248;

/// The instance family, which fixes where a slot's application PF is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    F1,
    F2,
}

impl Generation {
    /// The family of a management PF, from its `vendor` and `device`; None for any other PCI function.
    pub fn of(vendor: u16, device: u16) -> Option<Generation> {
        match (vendor, device) {
            (AWS_VENDOR, F1_MANAGEMENT_PF) => Some(Generation::F1),
            (AWS_VENDOR, F2_MANAGEMENT_PF) => Some(Generation::F2),
            _ => None,
        }
    }

    /// The application PF of the slot whose management PF is at `management`; None where there can be
    /// none (an F1 management PF at device 0, an F2 one at function 0).
    pub fn application_pf(self, management: PciAddress) -> Option<PciAddress> {
        match self {
            Generation::F1 => management.device.checked_sub(1).map(|device| PciAddress { device, ..management }),
            Generation::F2 => (management.function != 0).then_some(PciAddress { function: 0, ..management }),
        }
    }
}

/// What a health pass looks at for one slot between full discoveries: whether its application PF is still
/// the one discovered (or still missing), with the same driver. Anything else (an image load, a driver
/// bound or unbound) starts a full discovery, which finds the new nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotPaths {
    /// The slot's device ID.
    pub id: String,
    /// `<sys>/bus/pci/devices/<application PF>`: a link to its directory in `/sys/devices`.
    pub application_pf: PathBuf,
    /// The identity of that directory when discovered; None when it was missing.
    pub identity: Option<DirId>,
    /// The name of the driver bound to it when discovered; None when none was (or it was missing).
    pub driver: Option<String>,
}

/// Whether a slot's application PF came or went, or was replaced (an image load), or its driver changed,
/// since `slot` was discovered: a `stat` and a `readlink`.
pub fn changed(slot: &SlotPaths) -> bool {
    dir_id(&slot.application_pf) != slot.identity || driver(&slot.application_pf) != slot.driver
}

/// Whether `sys` shows at least one AWS FPGA management PF.
pub fn present(sys: &Path) -> bool {
    !management_pfs(sys, &mut Vec::new()).is_empty()
}

/// The management PFs in `<sys>/bus/pci/devices`, in ascending address order (the slot order).
fn management_pfs(sys: &Path, problems: &mut Vec<String>) -> Vec<(PciAddress, Generation)> {
    let bus = sys.join("bus/pci/devices");
    let entries = match sysfs::sorted_entries(&bus) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            problems.push(format!("cannot list {}: {e}", bus.display()));
            Vec::new()
        }
    };
    let mut found = Vec::new();
    for entry in entries {
        let Some(address) = entry.file_name().and_then(|n| n.to_str()).and_then(sysfs::parse_pci_address) else {
            continue;
        };
        let id = |name: &str| sysfs::read_attr(&entry.join(name)).ok().and_then(|t| sysfs::parse_pci_id(&t));
        // Most functions are not ours: their `device` is not even read.
        if id("vendor") != Some(AWS_VENDOR) {
            continue;
        }
        if let Some(generation) = id("device").and_then(|device| Generation::of(AWS_VENDOR, device)) {
            found.push((address, generation));
        }
    }
    // Sorted by address, not by name: `10000:…` (a five-digit domain) sorts before `1000:…` as text.
    found.sort_by_key(|(address, _)| *address);
    found
}

/// The name of the driver bound to the PCI function at `function` (the last part of its `driver` link).
fn driver(function: &Path) -> Option<String> {
    let target = std::fs::read_link(function.join("driver")).ok()?;
    target.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// The class devices of `<sys>/class/<class>`, by the real path of the device each belongs to (its `device`
/// link, resolved).
fn class_devices(sys: &Path, class: &str, problems: &mut Vec<String>) -> HashMap<PathBuf, Vec<String>> {
    let dir = sys.join("class").join(class);
    let entries = match sysfs::sorted_entries(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            problems.push(format!("cannot list {}: {e}", dir.display()));
            Vec::new()
        }
    };
    let mut by_device: HashMap<PathBuf, Vec<String>> = HashMap::new();
    for entry in entries {
        let Some(name) = entry.file_name().and_then(|n| n.to_str()).map(str::to_owned) else { continue };
        let owner = sysfs::resolve_link(&entry).and_then(|real| sysfs::resolve_link(&real.join("device")));
        match owner {
            Ok(owner) => by_device.entry(owner).or_default().push(name),
            Err(e) => problems.push(format!("skipping {}: cannot resolve its device: {e}", entry.display())),
        }
    }
    by_device
}

/// A full discovery of the AWS FPGA slots under `sys`, with their nodes under `dev`.
pub fn scan(sys: &Path, dev: &Path) -> Scan {
    let mut scan = Scan::default();
    let management = management_pfs(sys, &mut scan.problems);
    if management.is_empty() {
        return scan;
    }
    let mut classes: Vec<HashMap<PathBuf, Vec<String>>> = Vec::new();
    for class in ["xdma", "edma"] {
        classes.push(class_devices(sys, class, &mut scan.problems));
    }
    let bus = sys.join("bus/pci/devices");
    for (slot, (management, generation)) in management.into_iter().enumerate() {
        let id = slot.to_string();
        let Some(application) = generation.application_pf(management) else {
            scan.problems.push(format!(
                "skipping slot {id}: its management PF {management} has no place for an application PF on {generation:?}"
            ));
            continue;
        };
        let link = bus.join(application.to_string());
        let identity = dir_id(&link);
        let device = match (identity, sysfs::resolve_link(&link)) {
            (Some(_), Ok(real)) => present_slot(&id, application, &real, dev, &classes, &mut scan.problems),
            _ => {
                let numa_node = numa_node(&bus.join(management.to_string()), &mut scan.problems);
                Device {
                    id: id.clone(),
                    health: Health::Unhealthy(format!(
                        "its application PF {application} is missing (an image load removes it for a few seconds)"
                    )),
                    numa_node,
                    nodes: Vec::new(),
                    pci_address: Some(application.to_string()),
                    afu_id: None,
                }
            }
        };
        let driver = identity.and(driver(&link));
        scan.slots.push(SlotPaths { id, application_pf: link, identity, driver });
        scan.devices.push(device);
    }
    scan
}

/// A slot whose application PF is at `real` (its directory in `/sys/devices`): its NUMA node and the
/// device nodes of its driver; Unhealthy while one of them is missing.
fn present_slot(
    id: &str,
    application: PciAddress,
    real: &Path,
    dev: &Path,
    classes: &[HashMap<PathBuf, Vec<String>>],
    problems: &mut Vec<String>,
) -> Device {
    let mut nodes = Vec::new();
    for class in classes {
        for name in class.get(real).into_iter().flatten() {
            nodes.push((dev.join(name), format!("/dev/{name}")));
        }
    }
    let drm = real.join("drm");
    if let Ok(entries) = sysfs::sorted_entries(&drm) {
        for entry in entries {
            let Some(name) = entry.file_name().and_then(|n| n.to_str()) else { continue };
            if name.starts_with("renderD") {
                nodes.push((dev.join("dri").join(name), format!("/dev/dri/{name}")));
            }
        }
    }
    let mut health = Health::Healthy;
    for (host, _) in &nodes {
        if let Err(why) = super::device_node(host) {
            health = Health::Unhealthy(why);
            break;
        }
    }
    Device {
        id: id.to_string(),
        health,
        numa_node: numa_node(real, problems),
        nodes: (nodes.into_iter())
            .map(|(host, container_path)| DevNode { host_path: host.to_string_lossy().into_owned(), container_path })
            .collect(),
        pci_address: Some(application.to_string()),
        afu_id: None,
    }
}

/// A PCI function's `numa_node`: None when the kernel does not know it (`-1`) or it cannot be read.
fn numa_node(function: &Path, problems: &mut Vec<String>) -> Option<i64> {
    let path = function.join("numa_node");
    let text = sysfs::read_attr(&path).ok()?;
    sysfs::parse_numa_node(&text).unwrap_or_else(|sysfs::Malformed| {
        problems.push(format!("ignoring {}: not a NUMA node: {:?}", path.display(), text.trim()));
        None
    })
}
