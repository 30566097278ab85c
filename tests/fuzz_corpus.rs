//! Replays every input kept in `fuzz/corpus/<target>/` through the fuzz targets' checks, on stable: the
//! corpus (and any crash found by fuzzing, once its input is added there) is a regression suite.

use k8s_accelerator_devplugin::fuzzing;
use std::path::Path;

/// A fuzz target's checks: they panic when an invariant breaks.
type Check = fn(&[u8]);

#[test]
fn every_corpus_input_passes_its_targets_checks() {
    let targets: [(&str, Check); 5] = [
        ("pci_address", fuzzing::pci_address),
        ("sysfs_attributes", fuzzing::sysfs_attributes),
        ("command_line", fuzzing::command_line),
        ("discovery_tree", fuzzing::discovery_tree),
        ("aws_fpga_tree", fuzzing::aws_fpga_tree),
    ];
    for (target, check) in targets {
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
}
