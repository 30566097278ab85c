//! Device discovery: plain functions from a filesystem root to a list of devices. Nothing here knows about
//! gRPC, threads or logging; problems found along the way are returned for the caller to report.

pub mod aws;
pub mod intel;
pub mod sysfs;

use crate::device::Device;
use std::path::{Path, PathBuf};

/// Which kind of accelerator this node advertises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Intel FPGA AFU ports found in sysfs (OPAE and DFL drivers).
    Intel,
    /// A fixed number of AWS FPGA units.
    Aws { units: u32 },
}

impl Backend {
    /// Intel if an Intel FPGA driver class exists under `sys`, AWS otherwise.
    pub fn detect(sys: &Path, aws_units: u32) -> Backend {
        if intel::present(sys) {
            Backend::Intel
        } else {
            Backend::Aws { units: aws_units }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Intel => "intel",
            Backend::Aws { .. } => "aws",
        }
    }

    /// Whether the device set can change while the plugin runs (and so is worth rescanning and watching).
    pub fn is_dynamic(&self) -> bool {
        matches!(self, Backend::Intel)
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
    /// What a health pass reads of each Intel port until the next full discovery (none for AWS units).
    pub ports: Vec<intel::PortPaths>,
}

pub fn scan(backend: Backend, roots: &Roots) -> Scan {
    scan_with(backend, roots, &mut intel::Cache::default())
}

/// A full discovery that keeps what does not change between scans in `cache` (see `intel::Cache`).
pub fn scan_with(backend: Backend, roots: &Roots, cache: &mut intel::Cache) -> Scan {
    match backend {
        Backend::Intel => intel::scan_with(&roots.sysfs, &roots.dev, cache),
        Backend::Aws { units } => Scan { devices: aws::scan(units), ..Scan::default() },
    }
}

/// The device nodes in the dev root that discovery cares about: only changes to these trigger a rescan.
pub fn is_device_node_name(name: &str) -> bool {
    name.starts_with("intel-fpga-port.") || name.starts_with("dfl-port.")
}
