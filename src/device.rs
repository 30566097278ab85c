//! The device model shared by discovery (which produces devices) and the server (which advertises them).

/// One allocatable unit, as advertised to the kubelet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// The ID the kubelet sees: a PCI address for Intel ports, a number for AWS units. At most 63 bytes.
    pub id: String,
    pub health: Health,
    /// NUMA node of the PCI function hosting the device, when the kernel knows it.
    pub numa_node: Option<i64>,
    /// The character device handed to a container that is allocated this device.
    pub node: Option<DevNode>,
    /// The accelerator function loaded in an Intel port: its `afu_id` attribute in canonical form (32
    /// lowercase hex digits, see `sysfs::parse_afu_id`). None for AWS units, for a blank AFU (all `f`) and
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
