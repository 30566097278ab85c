//! Device discovery: plain functions from a filesystem root to a list of devices. Nothing here knows about
//! gRPC, threads or logging; problems found along the way are returned for the caller to report.

pub mod aws;
pub mod aws_fpga;
pub mod intel;
pub mod sysfs;

use crate::device::Device;
use std::path::{Path, PathBuf};

/// Which kind of accelerator this node advertises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Intel FPGA AFU ports found in sysfs (OPAE and DFL drivers).
    Intel,
    /// A fixed number of interchangeable AWS FPGA units, not looked for (the original plugin's model).
    Aws { units: u32 },
    /// The AWS FPGA slots of an F1 or F2 instance, found in sysfs.
    AwsFpga,
}

impl Backend {
    /// The backend for a node where `--backend` was not given, and why, for the log: `--accel-nbunits`
    /// (`units`) always means the N-unit AWS backend, as it did before there was anything to detect; else
    /// Intel when an Intel FPGA driver class exists under `sys`, else AWS slots when it shows an AWS FPGA
    /// management PF, else `default_units` AWS units.
    pub fn detect(sys: &Path, units: Option<u32>, default_units: u32) -> (Backend, String) {
        let sys_name = sys.display();
        if let Some(units) = units {
            return (Backend::Aws { units }, "--accel-nbunits is given".into());
        }
        if intel::present(sys) {
            return (Backend::Intel, format!("an Intel FPGA driver class under {sys_name}"));
        }
        if aws_fpga::present(sys) {
            return (Backend::AwsFpga, format!("AWS FPGA management PFs in {sys_name}/bus/pci/devices"));
        }
        (
            Backend::Aws { units: default_units },
            format!("no Intel FPGA driver class and no AWS FPGA management PF under {sys_name}"),
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Intel => "intel",
            Backend::Aws { .. } => "aws",
            Backend::AwsFpga => "aws-fpga",
        }
    }

    /// Whether the device set can change while the plugin runs (and so is worth rescanning and watching).
    pub fn is_dynamic(&self) -> bool {
        matches!(self, Backend::Intel | Backend::AwsFpga)
    }
}

/// Where the host's sysfs and device nodes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Roots {
    pub sysfs: PathBuf,
    pub dev: PathBuf,
}

/// What one scan found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    pub devices: Vec<Device>,
    /// Entries that were skipped or degraded, each naming the path and the cause.
    pub problems: Vec<String>,
    /// What a health pass reads of each Intel port until the next full discovery.
    pub ports: Vec<intel::PortPaths>,
    /// What a health pass looks at for each AWS FPGA slot until the next full discovery.
    pub slots: Vec<aws_fpga::SlotPaths>,
    /// Whether something found may heal by itself soon (a root not mounted yet, an Intel port half-created:
    /// its `id` not written yet, a class link made before its target; an AWS slot's driver still making
    /// its nodes): the daemon then discovers again within 5 s, then less and less often while it lasts, at
    /// least once a minute (`CheckSchedule` in `daemon`). A problem that cannot heal by itself (a duplicate
    /// ID, a malformed `numa_node`) waits for the next full discovery.
    pub retry: bool,
}

pub fn scan(backend: Backend, roots: &Roots) -> Scan {
    scan_with(backend, roots, &mut intel::Cache::default())
}

/// A full discovery that keeps what does not change between scans in `cache` (see `intel::Cache`).
pub fn scan_with(backend: Backend, roots: &Roots, cache: &mut intel::Cache) -> Scan {
    match backend {
        Backend::Intel => intel::scan_with(&roots.sysfs, &roots.dev, cache),
        Backend::Aws { units } => Scan { devices: aws::scan(units), ..Scan::default() },
        Backend::AwsFpga => aws_fpga::scan(&roots.sysfs, &roots.dev),
    }
}

/// The device node at `node` (host path), or why it cannot be one: missing, or a directory, a block device,
/// a FIFO or a socket. A regular file is let through: the simulated nodes of the tests and the demo are
/// plain files.
pub fn device_node(node: &Path) -> Result<std::fs::Metadata, String> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(node).map_err(|_| format!("device node {} is missing", node.display()))?;
    let kind = meta.file_type();
    if kind.is_dir() || kind.is_block_device() || kind.is_fifo() || kind.is_socket() {
        return Err(format!("device node {} is not a character device", node.display()));
    }
    Ok(meta)
}

/// The device nodes in the dev root that discovery cares about: only changes to these trigger a rescan.
/// (`/dev/dri` is a directory: inotify tells of it, not of the render nodes in it, which the health pass
/// notices through their driver instead.)
pub fn is_device_node_name(backend: Backend, name: &str) -> bool {
    match backend {
        Backend::Intel => name.starts_with("intel-fpga-port.") || name.starts_with("dfl-port."),
        Backend::AwsFpga => ["xdma", "edma", "fpga", "dri"].iter().any(|p| name.starts_with(p)),
        Backend::Aws { .. } => false,
    }
}
