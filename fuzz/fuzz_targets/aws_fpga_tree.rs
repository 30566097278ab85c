//! The whole AWS FPGA slot discovery over random AWS-like sysfs and /dev trees. The checks live in the
//! library (`k8s_accelerator_devplugin::fuzzing`) so that `cargo test` replays this target's corpus too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| k8s_accelerator_devplugin::fuzzing::aws_fpga_tree(data));
