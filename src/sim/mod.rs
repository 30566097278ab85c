//! A simulated node and kubelet, for the tests and the demo. Nothing in the daemon uses this module.
//!
//! `SimNode` builds the sysfs and /dev trees the Intel drivers create, and those of an AWS F1 or F2
//! instance, in a temporary directory.
//! `FakeKubelet` serves `Registration` on a real Unix socket and behaves like a kubelet ≥ 1.25: it calls
//! GetDevicePluginOptions inside Register, then keeps one ListAndWatch stream open per resource name (a new
//! Register of a resource replaces that resource's stream only) and records every list.

mod aws;
mod kubelet;
mod node;

pub use aws::{AwsDriver, AwsSlot};
pub use kubelet::{Behavior, FakeKubelet, Registration, Update};
pub use node::{write as sim_write, Fme, SimNode, TempDir, AFU_ID};
