//! The sysfs attribute parsers: numa_node, afu_id, errors/errors, dev, ports_num and id. The checks live in the library
//! (`k8s_accelerator_devplugin::fuzzing`) so that `cargo test` replays this target's corpus too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| k8s_accelerator_devplugin::fuzzing::sysfs_attributes(data));
