//! AWS FPGA units: a fixed number of interchangeable units named `0`..`N-1`, as the original plugin
//! advertised them. Nothing is read from the host.

use crate::device::{Device, Health};

/// Bounds of `--accel-nbunits`.
pub const MAX_UNITS: u32 = 100_000;

pub fn scan(units: u32) -> Vec<Device> {
    (0..units)
        .map(|i| Device {
            id: i.to_string(),
            health: Health::Healthy,
            numa_node: None,
            nodes: Vec::new(),
            pci_address: None,
            afu_id: None,
        })
        .collect()
}
