//! k8s-accelerator-devplugin: a Kubernetes device plugin (kubelet API v1beta1) that advertises Intel FPGA
//! AFU ports and AWS FPGA units, and hands the allocated ones to containers.
//!
//! Discovery (`discovery`) is plain functions from a filesystem root to a device list; the registry
//! (`registry`) holds the current list; the server (`server`) speaks gRPC; the registration thread
//! (`lifecycle`) keeps the kubelet aware of us; `daemon` runs the whole thing. `sim` is a simulated node and
//! kubelet, used by the tests and the demo.

pub mod allocation;
pub mod api;
pub mod cli;
pub mod control;
pub mod daemon;
pub mod device;
pub mod discovery;
pub mod kubelet;
pub mod lifecycle;
pub mod logging;
pub mod probe;
pub mod registry;
pub mod server;
pub mod sim;
pub mod watch;
