//! The AWS FPGA slots of a simulated F1 or F2 instance, as `notes` in the AWS SDK and the XDMA and XRT
//! drivers describe them: PCI functions directly on a root bus, linked from `bus/pci/devices` the way
//! sysfs links them; a management PF and an application PF per slot; the XDMA, EDMA or XRT (`xocl`) driver's
//! class devices and nodes; an image load that removes the application PF and brings it back.
//!
//! The addresses follow f1.16xlarge (application PFs `0000:00:0f.0`, `:11.0`, … `:1d.0`, each management PF
//! one device number up) and an F2 layout with the management PF at function 1 of the application PF's
//! device; on F2, slots 0–3 are on NUMA node 1 and 4–7 on node 0 (f2.48xlarge), on F1 0–3 on node 0.

use super::node::{symlink_rel, write, SimNode};
use crate::discovery::aws_fpga::{Generation, AWS_VENDOR, F1_MANAGEMENT_PF, F2_MANAGEMENT_PF};
use std::fs;
use std::io;
use std::path::PathBuf;

/// The application PF's device ID with no image loaded.
const F1_NO_IMAGE: u16 = 0x1042;
const F2_NO_IMAGE: u16 = 0x9048;

/// One slot of a simulated instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsSlot {
    /// Its management PF's address, e.g. `0000:00:10.0`.
    pub management: String,
    /// Its application PF's address, e.g. `0000:00:0f.0`.
    pub application: String,
    pub numa_node: i64,
}

/// A driver for an application PF, and what it makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AwsDriver {
    /// AWS/Xilinx XDMA: class `xdma`, nodes `xdma<N>_user`, `_control`, `_xvc`, `_events_0..15`,
    /// `_h2c_0..3`, `_c2h_0..3`.
    Xdma(u32),
    /// The old F1 EDMA driver: class `edma`, nodes `edma<N>_queue_0..3` and `fpga<N>_event0..3`.
    Edma(u32),
    /// XRT's `xocl`: `<app>/drm/renderD<M>`, node `dri/renderD<M>`.
    Xocl(u32),
    /// `vfio-pci`, with the PF in IOMMU group G: nodes `vfio/vfio` and `vfio/<G>`.
    Vfio(u32),
    /// A driver whose nodes the plugin does not know (`uio_pci_generic`): no class device, no node.
    Other(&'static str),
}

impl AwsDriver {
    fn name(self) -> &'static str {
        match self {
            AwsDriver::Xdma(_) => "xdma",
            AwsDriver::Edma(_) => "edma",
            AwsDriver::Xocl(_) => "xocl",
            AwsDriver::Vfio(_) => "vfio-pci",
            AwsDriver::Other(name) => name,
        }
    }

    /// The node names it makes (below the dev root), with their class (None: under the PF's `drm/`).
    fn nodes(self) -> Vec<(Option<&'static str>, String)> {
        match self {
            AwsDriver::Xdma(n) => {
                let mut names: Vec<String> =
                    ["user", "control", "xvc"].iter().map(|s| format!("xdma{n}_{s}")).collect();
                names.extend((0..16).map(|i| format!("xdma{n}_events_{i}")));
                names.extend((0..4).map(|i| format!("xdma{n}_h2c_{i}")));
                names.extend((0..4).map(|i| format!("xdma{n}_c2h_{i}")));
                names.into_iter().map(|name| (Some("xdma"), name)).collect()
            }
            AwsDriver::Edma(n) => (0..4)
                .map(|i| format!("edma{n}_queue_{i}"))
                .chain((0..4).map(|i| format!("fpga{n}_event{i}")))
                .map(|name| (Some("edma"), name))
                .collect(),
            AwsDriver::Xocl(m) => vec![(None, format!("dri/renderD{m}"))],
            AwsDriver::Vfio(_) | AwsDriver::Other(_) => Vec::new(),
        }
    }
}

impl SimNode {
    /// An F1 or F2 instance with `slots` slots (1 to 8), no image loaded and no driver bound, plus the
    /// instance's other Amazon PCI functions (an ENA network card and an NVMe disk, vendor `0x1d0f` too,
    /// which are no slot). Returns the slots in slot order.
    pub fn aws_instance(&self, generation: Generation, slots: usize) -> io::Result<Vec<AwsSlot>> {
        self.aws_function("0000:00:05.0", AWS_VENDOR, 0xec20, 0)?; // ENA
        self.aws_function("0000:00:04.0", AWS_VENDOR, 0x8061, 0)?; // EBS NVMe
        let mut out = Vec::new();
        for i in 0..slots.min(8) {
            let half = i / 4;
            let slot = match generation {
                Generation::F1 => AwsSlot {
                    application: format!("0000:00:{:02x}.0", 0x0f + 2 * i),
                    management: format!("0000:00:{:02x}.0", 0x10 + 2 * i),
                    numa_node: half as i64,
                },
                Generation::F2 => {
                    let bus = 0x34 + 2 * (i % 4) + 0x80 * half;
                    AwsSlot {
                        application: format!("0000:{bus:02x}:00.0"),
                        management: format!("0000:{bus:02x}:00.1"),
                        numa_node: 1 - half as i64,
                    }
                }
            };
            let (management, blank) = match generation {
                Generation::F1 => (F1_MANAGEMENT_PF, F1_NO_IMAGE),
                Generation::F2 => (F2_MANAGEMENT_PF, F2_NO_IMAGE),
            };
            self.aws_function(&slot.management, AWS_VENDOR, management, slot.numa_node)?;
            self.aws_function(&slot.application, AWS_VENDOR, blank, slot.numa_node)?;
            out.push(slot);
        }
        Ok(out)
    }

    /// A PCI function directly on its root bus, `sys/devices/pci<domain>:<bus>/<address>`, with `vendor`,
    /// `device` (`0x1d0f` form), `numa_node` and BAR files, linked from `bus/pci/devices/<address>`.
    pub fn aws_function(&self, address: &str, vendor: u16, device: u16, numa_node: i64) -> io::Result<PathBuf> {
        let dir = self.aws_function_dir(address);
        fs::create_dir_all(&dir)?;
        write(&dir.join("vendor"), &format!("0x{vendor:04x}\n"))?;
        write(&dir.join("device"), &format!("0x{device:04x}\n"))?;
        write(&dir.join("numa_node"), &format!("{numa_node}\n"))?;
        for bar in ["resource0", "resource2", "resource4"] {
            write(&dir.join(bar), "")?;
        }
        symlink_rel(&dir, &self.sysfs().join("bus/pci/devices").join(address))?;
        Ok(dir)
    }

    fn aws_function_dir(&self, address: &str) -> PathBuf {
        let root_bus = address.rsplit_once(':').map_or(address, |(bus, _)| bus);
        self.sysfs().join(format!("devices/pci{root_bus}/{address}"))
    }

    /// Binds `driver` to the slot's application PF: its `driver` link, its class devices (each with its
    /// `device` link back to the PF and its `dev`) and their device nodes. Returns the node names.
    pub fn aws_bind(&self, slot: &AwsSlot, driver: AwsDriver) -> io::Result<Vec<String>> {
        let app = self.aws_function_dir(&slot.application);
        self.aws_probe_start(slot, driver)?;
        let mut names = Vec::new();
        if let AwsDriver::Vfio(group) = driver {
            let groups = self.sysfs().join("kernel/iommu_groups").join(group.to_string());
            fs::create_dir_all(&groups)?;
            symlink_rel(&groups, &app.join("iommu_group"))?;
            for name in ["vfio/vfio".to_string(), format!("vfio/{group}")] {
                if !self.dev().join(&name).exists() {
                    self.device_node(&name, 241, group)?;
                }
                names.push(name);
            }
        }
        for (minor, (class, name)) in (0u32..).zip(driver.nodes()) {
            let class_dev = match class {
                Some(class) => {
                    let dir = app.join(class).join(&name);
                    fs::create_dir_all(&dir)?;
                    symlink_rel(&app, &dir.join("device"))?;
                    symlink_rel(&dir, &self.sysfs().join("class").join(class).join(&name))?;
                    dir
                }
                None => {
                    let dir = app.join("drm").join(name.trim_start_matches("dri/"));
                    fs::create_dir_all(&dir)?;
                    dir
                }
            };
            write(&class_dev.join("dev"), &format!("240:{minor}\n"))?;
            self.device_node(&name, 240, minor)?;
            names.push(name);
        }
        Ok(names)
    }

    /// The start of a driver's probe: its `driver` link, and no node yet.
    pub fn aws_probe_start(&self, slot: &AwsSlot, driver: AwsDriver) -> io::Result<()> {
        let app = self.aws_function_dir(&slot.application);
        let drivers = self.sysfs().join("bus/pci/drivers").join(driver.name());
        fs::create_dir_all(&drivers)?;
        let link = app.join("driver");
        if fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link)?;
        }
        symlink_rel(&drivers, &link)
    }

    /// Unbinds the driver of the slot's application PF: its link, class devices and nodes go.
    pub fn aws_unbind(&self, slot: &AwsSlot) -> io::Result<()> {
        let app = self.aws_function_dir(&slot.application);
        let _ = fs::remove_file(app.join("driver"));
        if let Ok(group) = fs::read_link(app.join("iommu_group")) {
            if let Some(group) = group.file_name() {
                let _ = fs::remove_file(self.dev().join("vfio").join(group));
            }
            fs::remove_file(app.join("iommu_group"))?;
        }
        for class in ["xdma", "edma"] {
            let Ok(entries) = fs::read_dir(app.join(class)) else { continue };
            for entry in entries.filter_map(Result::ok) {
                let name = entry.file_name();
                let _ = fs::remove_file(self.sysfs().join("class").join(class).join(&name));
                let _ = fs::remove_file(self.dev().join(&name));
            }
            fs::remove_dir_all(app.join(class))?;
        }
        if let Ok(entries) = fs::read_dir(app.join("drm")) {
            for entry in entries.filter_map(Result::ok) {
                let _ = fs::remove_file(self.dev().join("dri").join(entry.file_name()));
            }
            fs::remove_dir_all(app.join("drm"))?;
        }
        Ok(())
    }

    /// The start of an image load: the application PF's driver is unbound and the PF removed from the bus.
    pub fn aws_image_load_begin(&self, slot: &AwsSlot) -> io::Result<()> {
        self.aws_unbind(slot)?;
        fs::remove_file(self.sysfs().join("bus/pci/devices").join(&slot.application))?;
        fs::remove_dir_all(self.aws_function_dir(&slot.application))
    }

    /// The end of an image load: the application PF back at its address, with the image's IDs and no
    /// driver yet.
    pub fn aws_image_load_end(&self, slot: &AwsSlot, vendor: u16, device: u16) -> io::Result<()> {
        self.aws_function(&slot.application, vendor, device, slot.numa_node).map(|_| ())
    }
}
