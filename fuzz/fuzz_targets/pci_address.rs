//! PCI addresses as found in sysfs directory names and symlink targets.
#![no_main]

use k8s_accelerator_devplugin::discovery::sysfs::{parse_pci_address, pci_function_of};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Some(address) = parse_pci_address(text) {
        // The canonical form parses back to the same address, and is what the kubelet may see as an ID.
        let canonical = address.to_string();
        assert_eq!(parse_pci_address(&canonical), Some(address));
        assert!(canonical.len() <= 16, "{canonical}");
        assert_eq!(canonical, canonical.to_lowercase());
    }
    // A symlink target or real path: any ancestor may be a function.
    if let Some((address, dir)) = pci_function_of(Path::new(text)) {
        assert!(Path::new(text).starts_with(dir));
        assert_eq!(dir.file_name().and_then(|n| n.to_str()).and_then(parse_pci_address), Some(address));
    }
});
