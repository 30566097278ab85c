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
//!   and `<sys>/class/edma/*` entry whose `device` link resolves to it (`/dev/<name>`), its
//!   `drm/renderD*` (XRT's `xocl`: `/dev/dri/renderD<N>`), and with `vfio-pci`, `/dev/vfio/vfio` and
//!   `/dev/vfio/<its IOMMU group>`. Without a driver (F2's default) there is none.
//!
//! Nothing here was tried on an instance: the layout comes from the AWS SDK's sources, the XDMA and XRT
//! drivers' sources and the AWS shell specifications.

use super::sysfs::{self, dir_id, DirId, PciAddress};
use super::Scan;
use crate::device::{DevNode, Device, Health};
use std::collections::HashMap;
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

/// The drivers whose device nodes the plugin knows how to find: a slot with one of them bound and none of
/// its nodes yet is being probed (Unhealthy; `scan.retry` is set).
const KNOWN_DRIVERS: [&str; 4] = ["xdma", "edma", "xocl", "vfio-pci"];

/// What a health pass looks at for one slot between full discoveries: whether its application PF is still
/// the one discovered (or still missing), with the same driver and the same first device node. Anything
/// else (an image load, a driver bound, unbound or bound again) starts a full discovery, which finds the
/// new nodes.
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
    /// The host path of its first device node when discovered: a driver bound again (same name, new node
    /// numbers) removes it.
    pub first_node: Option<PathBuf>,
}

/// Whether a slot's application PF came or went, or was replaced (an image load), or its driver changed,
/// or its first device node went, since `slot` was discovered: a `stat`, a `readlink` and, with a node, a
/// `stat` of it.
pub fn changed(slot: &SlotPaths) -> bool {
    dir_id(&slot.application_pf) != slot.identity
        || driver(&slot.application_pf) != slot.driver
        || slot.first_node.as_ref().is_some_and(|node| std::fs::symlink_metadata(node).is_err())
}

/// Whether `sys` shows at least one AWS FPGA management PF.
pub fn present(sys: &Path) -> bool {
    !management_pfs(sys, &mut Vec::new()).is_empty()
}

/// The management PFs in `<sys>/bus/pci/devices`, in ascending address order (the slot order). A function
/// whose IDs cannot be read is reported: it could be a slot, and every later slot's number depends on it.
fn management_pfs(sys: &Path, problems: &mut Vec<String>) -> Vec<(PciAddress, Generation)> {
    let mut found = Vec::new();
    for entry in sysfs::listed(&sys.join("bus/pci/devices"), problems) {
        let Some(address) = entry.file_name().and_then(|n| n.to_str()).and_then(sysfs::parse_pci_address) else {
            continue;
        };
        let mut id = |name: &str| -> Option<u16> {
            let path = entry.join(name);
            let problem = match sysfs::read_attr(&path) {
                Ok(text) => match sysfs::parse_pci_id(&text) {
                    Some(id) => return Some(id),
                    None => format!("ignoring {}: not a PCI ID: {:?}", path.display(), text.trim()),
                },
                Err(e) => format!("cannot read {}: {e}", path.display()),
            };
            problems.push(problem);
            None
        };
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

/// The class devices of `<sys>/class/xdma` and `<sys>/class/edma`, by the PCI function each belongs to
/// (the last PCI address in the path its `device` link resolves to, so that how the links are spelled
/// does not matter).
fn class_devices(sys: &Path, problems: &mut Vec<String>) -> HashMap<PciAddress, Vec<String>> {
    let mut by_function: HashMap<PciAddress, Vec<String>> = HashMap::new();
    for class in ["xdma", "edma"] {
        for entry in sysfs::listed(&sys.join("class").join(class), problems) {
            let Some(name) = entry.file_name().and_then(|n| n.to_str()).map(str::to_owned) else { continue };
            let owner = sysfs::resolve_link(&entry).and_then(|real| sysfs::resolve_link(&real.join("device")));
            match owner.map(|owner| sysfs::pci_function_of(&owner).map(|(address, _)| address)) {
                Ok(Some(function)) => by_function.entry(function).or_default().push(name),
                Ok(None) => {}
                Err(e) => problems.push(format!("skipping {}: cannot resolve its device: {e}", entry.display())),
            }
        }
    }
    by_function
}

/// A slot as first read: its application PF (None: no place for one), the PF's link in `bus/pci/devices`,
/// its identity (None: missing) and its driver.
struct Slot {
    id: String,
    management: PciAddress,
    application: PciAddress,
    link: PathBuf,
    identity: Option<DirId>,
    driver: Option<String>,
}

/// A full discovery of the AWS FPGA slots under `sys`, with their nodes under `dev`.
pub fn scan(sys: &Path, dev: &Path) -> Scan {
    let mut scan = Scan::default();
    let bus = sys.join("bus/pci/devices");
    // Each application PF and its driver first, the class devices after: a driver being probed makes its
    // `driver` link before its nodes, so a slot is never recorded with a driver whose nodes were listed
    // before it was bound.
    let mut slots = Vec::new();
    for (number, (management, generation)) in management_pfs(sys, &mut scan.problems).into_iter().enumerate() {
        let id = number.to_string();
        let Some(application) = generation.application_pf(management) else {
            scan.problems.push(format!(
                "skipping slot {id}: its management PF {management} has no place for an application PF on {generation:?}"
            ));
            continue;
        };
        let link = bus.join(application.to_string());
        let identity = dir_id(&link);
        let driver = identity.and(driver(&link));
        slots.push(Slot { id, management, application, link, identity, driver });
    }
    if slots.is_empty() {
        return scan;
    }
    let classes = class_devices(sys, &mut scan.problems);
    for slot in slots {
        let device = match (slot.identity, sysfs::resolve_link(&slot.link)) {
            (Some(_), Ok(real)) => present_slot(&slot, &real, dev, &classes, &mut scan),
            _ => {
                let management = bus.join(slot.management.to_string());
                Device {
                    id: slot.id.clone(),
                    health: Health::Unhealthy(format!(
                        "its application PF {} is missing (an image load removes it for a few seconds)",
                        slot.application
                    )),
                    // The management PF is on the same card.
                    numa_node: numa_node(&management, &mut scan.problems),
                    nodes: Vec::new(),
                    pci_address: Some(slot.application.to_string()),
                    afu_id: None,
                }
            }
        };
        let first_node = device.nodes.first().map(|n| PathBuf::from(&n.host_path));
        scan.slots.push(SlotPaths {
            id: slot.id,
            application_pf: slot.link,
            identity: slot.identity,
            driver: slot.driver,
            first_node,
        });
        scan.devices.push(device);
    }
    scan
}

/// A slot whose application PF is at `real` (its directory in `/sys/devices`): its NUMA node and the
/// device nodes of its driver; Unhealthy while one of them is missing, or while a driver the plugin knows
/// is bound and has made none yet (then `scan.retry` is set: it is looked at again within 5 s).
fn present_slot(
    slot: &Slot,
    real: &Path,
    dev: &Path,
    classes: &HashMap<PciAddress, Vec<String>>,
    scan: &mut Scan,
) -> Device {
    let mut nodes = Vec::new();
    for name in classes.get(&slot.application).into_iter().flatten() {
        nodes.push((dev.join(name), format!("/dev/{name}")));
    }
    for entry in sysfs::listed(&real.join("drm"), &mut scan.problems) {
        let Some(name) = entry.file_name().and_then(|n| n.to_str()) else { continue };
        if name.starts_with("renderD") {
            nodes.push((dev.join("dri").join(name), format!("/dev/dri/{name}")));
        }
    }
    // VFIO: the container driver and the PF's IOMMU group.
    if slot.driver.as_deref() == Some("vfio-pci") {
        if let Some(group) = std::fs::read_link(real.join("iommu_group"))
            .ok()
            .and_then(|g| g.file_name().map(|n| n.to_string_lossy().into_owned()))
        {
            nodes.push((dev.join("vfio/vfio"), "/dev/vfio/vfio".into()));
            nodes.push((dev.join("vfio").join(&group), format!("/dev/vfio/{group}")));
        }
    }
    let mut health = Health::Healthy;
    for (host, _) in &nodes {
        if let Err(why) = super::device_node(host) {
            health = Health::Unhealthy(why);
            break;
        }
    }
    match slot.driver.as_deref() {
        Some(driver) if nodes.is_empty() && KNOWN_DRIVERS.contains(&driver) => {
            health = Health::Unhealthy(format!("driver {driver} is bound to {}, and has made no device node yet", slot.application));
            scan.retry = true;
        }
        Some(driver) if nodes.is_empty() => scan.problems.push(format!(
            "slot {}: driver {driver} is bound to its application PF {}, and the plugin knows no device node of it: pods get none",
            slot.id, slot.application
        )),
        _ => {}
    }
    Device {
        id: slot.id.clone(),
        health,
        numa_node: numa_node(real, &mut scan.problems),
        nodes: (nodes.into_iter())
            .map(|(host, container_path)| DevNode { host_path: host.to_string_lossy().into_owned(), container_path })
            .collect(),
        pci_address: Some(slot.application.to_string()),
        afu_id: None,
    }
}

/// A PCI function's `numa_node`: None when the kernel does not know it (`-1`) or it cannot be read.
fn numa_node(function: &Path, problems: &mut Vec<String>) -> Option<i64> {
    let path = function.join("numa_node");
    let text = sysfs::read_attr(&path).ok()?;
    sysfs::numa_node(&path, &text, problems)
}
