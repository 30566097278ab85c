//! Replays every input kept in `fuzz/corpus/<target>/` through the fuzz targets' checks, on stable: the
//! corpus (and any crash found by fuzzing, once its input is added there) is a regression suite.

use k8s_accelerator_devplugin::fuzzing;
use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{target}: input {} breaks an invariant", path.display());
        count += 1;
    }
    assert!(count > 0, "no corpus for {target}");
}

#[test]
fn pci_address_corpus() {
    replay("pci_address", fuzzing::pci_address);
}

#[test]
fn sysfs_attributes_corpus() {
    replay("sysfs_attributes", fuzzing::sysfs_attributes);
}

#[test]
fn command_line_corpus() {
    replay("command_line", fuzzing::command_line);
}

#[test]
fn discovery_tree_corpus() {
    replay("discovery_tree", fuzzing::discovery_tree);
}
