//! CDI (`--cdi-spec-dir`): the spec file per resource, written atomically and kept in step with the devices,
//! valid under the official CDI JSON schema, and Allocate answering with CDI devices instead of DeviceSpecs.
//! Real binary, simulated kubelet and node, real sockets.

mod common;

use common::{Rig, WAIT};
use k8s_accelerator_devplugin::api;
use k8s_accelerator_devplugin::sim::{Fme, TempDir};
use std::path::{Path, PathBuf};
use std::process::Command;

const SPEC: &str = "k8s-accel-b-com.com_accelerator.json";

/// The official CDI schema and its examples: `K8S_ACCEL_CDI_SCHEMA`, or `shared/reference/cdi-schema` beside
/// the repository (where CI has it). None, with a message, when neither is there.
fn schema_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("K8S_ACCEL_CDI_SCHEMA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/cdi-schema"));
    if dir.join("schema.json").is_file() {
        Some(dir)
    } else {
        eprintln!("skipping schema validation: no CDI schema at {} (set K8S_ACCEL_CDI_SCHEMA)", dir.display());
        None
    }
}

/// Validates `files` against the CDI schema with Python's `jsonschema` (`K8S_ACCEL_TEST_PYTHON`, or
/// `python3`); prints one line per file: `valid <path>` or `invalid <path>: <reason>`. None when no Python
/// with `jsonschema` is there (CI provides one).
fn validate(schema: &Path, files: &[PathBuf]) -> Option<String> {
    const SCRIPT: &str = r#"
import json, pathlib, sys
from jsonschema import Draft7Validator
from referencing import Registry
from referencing.jsonschema import DRAFT7
base = pathlib.Path(sys.argv[1])
defs = json.loads((base / "defs.json").read_text())
registry = Registry().with_resource("defs.json", DRAFT7.create_resource(defs))
validator = Draft7Validator(json.loads((base / "schema.json").read_text()), registry=registry)
for path in sys.argv[2:]:
    errors = list(validator.iter_errors(json.loads(pathlib.Path(path).read_text())))
    print(("invalid %s: %s" % (path, errors[0].message)) if errors else "valid %s" % path)
"#;
    let python = std::env::var("K8S_ACCEL_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python).arg("-c").arg(SCRIPT).arg(schema).args(files).output().ok()?;
    if !out.status.success() {
        eprintln!("skipping schema validation: {python} with jsonschema: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_validator_tells_good_from_bad_and_our_specs_are_good() {
    let Some(schema) = schema_dir() else { return };
    let good = schema.join("testdata/good");
    let bad = schema.join("testdata/bad");
    let list = |d: &Path| -> Vec<PathBuf> { std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()).collect() };
    let (good, bad) = (list(&good), list(&bad));
    assert!(!good.is_empty() && !bad.is_empty());
    let rig = Rig::new();
    rig.node.opae_card("0000:5e:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(0, 0)]).unwrap();
    let cdi = TempDir::new("cdi").unwrap();
    let _p = rig.plugin(&["--cdi-spec-dir", cdi.path().to_str().unwrap()]);
    rig.wait_list(&[("0000:5e:00.0", "Healthy")]);
    let ours = cdi.path().join(SPEC);
    assert!(common::wait_until(WAIT, || ours.exists()));
    let files: Vec<PathBuf> = good.iter().chain(&bad).cloned().chain([ours.clone()]).collect();
    let Some(report) = validate(&schema, &files) else { return };
    for f in &good {
        assert!(report.contains(&format!("valid {}", f.display())), "{report}");
    }
    for f in &bad {
        assert!(
            report.contains(&format!("invalid {}", f.display())),
            "the validator accepts {}: {report}",
            f.display()
        );
    }
    assert!(report.contains(&format!("valid {}", ours.display())), "{report}");
}

#[test]
fn the_spec_follows_the_devices_and_allocate_answers_with_cdi_devices() {
    let rig = Rig::new();
    rig.node.opae_card("0000:5e:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(0, 0)]).unwrap();
    let cdi = TempDir::new("cdi").unwrap();
    // Another vendor's spec, which must never be touched.
    std::fs::write(cdi.path().join("vendor.com-gpu.json"), "{\"theirs\": true}\n").unwrap();
    let mut p = rig.plugin(&["--cdi-spec-dir", cdi.path().to_str().unwrap()]);
    rig.wait_list(&[("0000:5e:00.0", "Healthy")]);
    let path = cdi.path().join(SPEC);
    let read = || -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap() };
    assert!(common::wait_until(WAIT, || path.exists()), "{}", p.log());
    let doc = read();
    assert_eq!(doc["kind"], "b-com.com/accelerator");
    assert_eq!(doc["cdiVersion"], "0.5.0");
    assert_eq!(doc["devices"][0]["name"], "0000:5e:00.0");
    let node = &doc["devices"][0]["containerEdits"]["deviceNodes"][0];
    assert_eq!(node["path"], "/dev/intel-fpga-port.0");
    assert_eq!(node["hostPath"], rig.node.dev().join("intel-fpga-port.0").to_str().unwrap());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o644);

    // Allocate: CDI devices and the environment, no DeviceSpecs.
    let mut req = api::AllocateRequest::new();
    let mut c = api::ContainerAllocateRequest::new();
    c.devices_ids = vec!["0000:5e:00.0".into()];
    req.container_requests.push(c);
    let resp = rig.client().allocate(&req).unwrap();
    let c = &resp.container_responses[0];
    let names: Vec<&str> = c.cdi_devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["b-com.com/accelerator=0000:5e:00.0"]);
    assert!(c.devices.is_empty(), "no DeviceSpecs with CDI: {:?}", c.devices);
    assert_eq!(c.envs["ACCELERATOR_UNITS"], "0000:5e:00.0");

    // Hotplug: by the time ListAndWatch shows the new port, the spec has it.
    rig.node.dfl_card("0000:86:00.0", 1, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(1, 0)]).unwrap();
    rig.wait_list(&[("0000:5e:00.0", "Healthy"), ("0000:86:00.0", "Healthy")]);
    assert_eq!(read()["devices"].as_array().unwrap().len(), 2);

    // Only our file and the other vendor's, no temporary file; SIGTERM leaves the spec.
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(WAIT).and_then(|s| s.code()), Some(0));
    let mut names: Vec<String> =
        std::fs::read_dir(cdi.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, [SPEC, "vendor.com-gpu.json"]);
    assert_eq!(std::fs::read_to_string(cdi.path().join("vendor.com-gpu.json")).unwrap(), "{\"theirs\": true}\n");
}

#[test]
fn aws_units_have_no_cdi_device() {
    let rig = Rig::new();
    let cdi = TempDir::new("cdi").unwrap();
    let _p = rig.aws("2", &["--cdi-spec-dir", cdi.path().to_str().unwrap()]);
    rig.wait_list(&[("0", "Healthy"), ("1", "Healthy")]);
    let mut req = api::AllocateRequest::new();
    let mut c = api::ContainerAllocateRequest::new();
    c.devices_ids = vec!["1".into()];
    req.container_requests.push(c);
    let resp = rig.client().allocate(&req).unwrap();
    assert!(resp.container_responses[0].cdi_devices.is_empty());
    assert_eq!(resp.container_responses[0].envs["ACCELERATOR_UNITS"], "1");
    assert_eq!(std::fs::read_dir(cdi.path()).unwrap().count(), 0, "no spec for units without device nodes");
}
