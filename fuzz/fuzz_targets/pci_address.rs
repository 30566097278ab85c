//! PCI addresses as found in sysfs directory names and symlink targets. The checks live in the library
//! (`k8s_accelerator_devplugin::fuzzing`) so that `cargo test` replays this target's corpus too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| k8s_accelerator_devplugin::fuzzing::pci_address(data));
