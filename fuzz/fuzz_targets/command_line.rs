//! The command line, durations and resource names: never a panic, and what is accepted is in range.
#![no_main]

use k8s_accelerator_devplugin::cli::{self, Command};
use libfuzzer_sys::fuzz_target;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    // Arguments separated by NUL bytes, as in /proc/<pid>/cmdline; not necessarily UTF-8.
    let args: Vec<OsString> = data.split(|&b| b == 0).map(|a| OsString::from_vec(a.to_vec())).collect();
    if let Ok(Command::Run(o) | Command::Probe(o)) = cli::parse(args) {
        assert!((1..=100_000).contains(&o.accel_nbunits));
        assert!(o.scan_interval >= Duration::from_millis(10) && o.scan_interval <= Duration::from_secs(86_400));
        assert!(cli::validate_resource_name(&o.resource_name).is_ok());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(d) = cli::parse_duration(text) {
            assert!(d >= Duration::from_millis(10));
        }
        if cli::validate_resource_name(text).is_ok() {
            let (domain, name) = text.split_once('/').unwrap();
            assert!(!domain.is_empty() && !name.is_empty() && name.len() <= 63 && !name.contains('/'));
        }
    }
});
