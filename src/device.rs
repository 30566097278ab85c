//! The device model shared by discovery (which produces devices) and the server (which advertises them).

/// One allocatable unit, as advertised to the kubelet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// The ID the kubelet sees: a PCI address for Intel ports, a number for AWS units and slots. At most 63
    /// bytes.
    pub id: String,
    pub health: Health,
    /// NUMA node of the PCI function hosting the device, when the kernel knows it.
    pub numa_node: Option<i64>,
    /// The character devices handed to a container that is allocated this device: an Intel port's one node,
    /// the nodes of the driver bound to an AWS slot's application PF (none without a driver), none for AWS
    /// units.
    pub nodes: Vec<DevNode>,
    /// The PCI function a container reaches the device through, handed over in `ACCELERATOR_PCI_ADDRESSES`:
    /// an AWS slot's application PF (canonical form, `0000:00:0f.0`). None for Intel ports (their ID is
    /// their function's address already) and AWS units.
    pub pci_address: Option<String>,
    /// The accelerator function loaded in an Intel port: its `afu_id` attribute in canonical form (32
    /// lowercase hex digits, see `sysfs::parse_afu_id`). None for AWS units and slots, for a blank AFU (all `f`) and
    /// when it could not be read.
    pub afu_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Not usable; the text says why, for the logs.
    Unhealthy(String),
    /// A scan could not tell (e.g. EBUSY while a port is in reset). Never advertised: the registry keeps the
    /// last known health instead, so a port in reset does not flap.
    Unknown(String),
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }
}

/// A device node: where it is on the host and where the container sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevNode {
    pub host_path: String,
    pub container_path: String,
}

/// The kubelet rejects longer device IDs.
pub const MAX_ID_LEN: usize = 63;
