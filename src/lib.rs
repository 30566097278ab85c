//! k8s-accelerator-devplugin: a Kubernetes device plugin (kubelet API v1beta1) that advertises Intel FPGA
//! AFU ports and AWS FPGA units, and hands the allocated ones to containers.
//!
//! Discovery (`discovery`) is plain functions from a filesystem root to a device list; the registry
//! (`registry`) holds the current list; the server (`server`) speaks gRPC; the registration thread
//! (`lifecycle`) keeps the kubelet aware of us; `daemon` runs the whole thing. `sim` is a simulated node and
//! kubelet, used by the tests and the demo.

// Always built: no gRPC, fuzzable.
pub mod cdi;
pub mod cli;
pub mod device;
pub mod discovery;
pub mod endpoint;
pub mod fuzzing;

#[cfg(feature = "grpc")]
pub mod allocation;
#[cfg(feature = "grpc")]
pub mod api;
#[cfg(feature = "grpc")]
pub mod control;
#[cfg(feature = "grpc")]
pub mod daemon;
#[cfg(feature = "grpc")]
pub mod instance;
#[cfg(feature = "grpc")]
pub mod kubelet;
#[cfg(feature = "grpc")]
pub mod lifecycle;
#[cfg(feature = "grpc")]
pub mod logging;
#[cfg(feature = "grpc")]
pub mod probe;
#[cfg(feature = "grpc")]
pub mod registry;
#[cfg(feature = "grpc")]
pub mod routing;
#[cfg(feature = "grpc")]
pub mod server;
#[cfg(feature = "grpc")]
pub mod sim;
#[cfg(feature = "grpc")]
pub mod watch;
