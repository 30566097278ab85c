//! The command line. Every long flag is also accepted with a single dash (`-accel-nbunits 1`), as the
//! original plugin's manifests use, and with `=` (`--accel-nbunits=1`).

use crate::discovery::aws::MAX_UNITS;
use log::LevelFilter;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

pub const USAGE: &str = "\
Usage: k8s-accelerator-devplugin [OPTIONS]
       k8s-accelerator-devplugin probe [OPTIONS]

Advertises FPGA accelerators to the kubelet (device plugin API v1beta1).

probe: liveness check. Calls GetDevicePluginOptions on the socket of the plugin running with the same
--device-plugin-path and --resource-name (and on the socket of each --afu-resource NAME that exists);
exits 0 if they answer within 3 s, 1 otherwise. It accepts all the options below, so a probe can repeat
the plugin's own arguments.

Options:
  --backend intel|aws-fpga|aws What to advertise: Intel FPGA ports, the AWS FPGA slots of an F1/F2
                               instance, or N interchangeable AWS units [default: aws with
                               --accel-nbunits; else intel if <sysfs-root>/class/fpga or
                               <sysfs-root>/class/fpga_region exists; else aws-fpga if an AWS FPGA
                               management PF is in <sysfs-root>/bus/pci/devices; else aws]
  --accel-nbunits N            Number of AWS units (backend aws), 1..=100000 [default: 40]
  --resource-name NAME         Extended resource name [default: b-com.com/accelerator]
  --afu-resource NAME=AFU_ID   Advertise the Intel ports running this AFU (the 32 hex digits of their
                               afu_id; any case, dashes allowed) as resource NAME; repeatable
  --afu-resource auto          Advertise every other AFU as <domain of --resource-name>/afu-<AFU ID>
  --device-plugin-path DIR     The kubelet's device-plugins directory, at most 83 bytes
                               [default: /var/lib/kubelet/device-plugins]
  --cdi-spec-dir DIR           Write a CDI spec per resource there (e.g. /var/run/cdi) and hand devices to
                               containers as CDI devices [default: off: device nodes in Allocate]
  --sysfs-root DIR             Where the host's sysfs is mounted [default: /sys]
  --dev-root DIR               Where the host's device nodes are [default: /dev]
  --scan-interval DURATION     Full rediscovery period, e.g. 200ms, 5s, 1m (durations: a whole number
                               and ms, s, m or h, 10ms to 24h; not used with aws) [default: 30s]
  --health-interval DURATION   How often the known Intel ports' health and AFU are read, and the AWS
                               slots' application PFs looked at, e.g. 500ms, 2s [default: 1s]
  --log-level LEVEL            error|warn|info|debug|trace [default: info]
  --log-file PATH              Also log to this file (- or absent: stderr only)
  -h, --help                   Print this help
  -V, --version                Print the version

Every long option may also be written with one dash (-accel-nbunits 1) and with = (--accel-nbunits=1).
An option given twice keeps its last value (--afu-resource adds an entry each time).
";

const LONG_FLAGS: [&str; 14] = [
    "backend",
    "cdi-spec-dir",
    "afu-resource",
    "accel-nbunits",
    "resource-name",
    "device-plugin-path",
    "sysfs-root",
    "dev-root",
    "scan-interval",
    "health-interval",
    "log-level",
    "log-file",
    "help",
    "version",
];

/// `--scan-interval`'s default. Full discovery lists the class directories, resolves links and reads every
/// attribute; between two, device-node events (inotify) and SIGHUP start one at once, and the health pass
/// reads what can change of a port every `--health-interval`, so a full discovery only has to catch what
/// neither sees: a new port whose node event was missed. 30 s keeps that rare at a cost of about 1 ms per
/// 30 s for 64 ports (BENCHMARKS.md).
pub const DEFAULT_SCAN_INTERVAL: Duration = Duration::from_secs(30);

/// `--health-interval`'s default: a port error or an unloaded AFU reaches the kubelet within about a second.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// `--backend`: explicit, or detected at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    Intel,
    Aws,
    AwsFpga,
}

/// `--accel-nbunits`'s default.
pub const DEFAULT_UNITS: u32 = 40;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub backend: Option<BackendChoice>,
    /// `--accel-nbunits`, when given: it also chooses the backend (see `discovery::Backend::detect`).
    pub accel_nbunits: Option<u32>,
    pub resource_name: String,
    /// `--afu-resource NAME=AFU_ID`: (NAME, canonical AFU ID), in command-line order.
    pub afu_resources: Vec<(String, String)>,
    /// `--afu-resource auto`.
    pub afu_auto: bool,
    pub device_plugin_path: PathBuf,
    /// `--cdi-spec-dir`: where to keep CDI spec files; None: no CDI.
    pub cdi_spec_dir: Option<PathBuf>,
    pub sysfs_root: PathBuf,
    pub dev_root: PathBuf,
    /// `--scan-interval`: full rediscovery.
    pub scan_interval: Duration,
    /// `--health-interval`: the health pass over the ports found.
    pub health_interval: Duration,
    pub log_level: LevelFilter,
    pub log_file: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            backend: None,
            accel_nbunits: None,
            resource_name: "b-com.com/accelerator".into(),
            afu_resources: Vec::new(),
            afu_auto: false,
            device_plugin_path: "/var/lib/kubelet/device-plugins".into(),
            cdi_spec_dir: None,
            sysfs_root: "/sys".into(),
            dev_root: "/dev".into(),
            scan_interval: DEFAULT_SCAN_INTERVAL,
            health_interval: DEFAULT_HEALTH_INTERVAL,
            log_level: LevelFilter::Info,
            log_file: None,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run(Options),
    Probe(Options),
    Help,
    Version,
}

/// A command-line error, worded for a one-line message.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses the arguments (without the program name).
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, UsageError> {
    use lexopt::prelude::*;
    let mut opts = Options::default();
    let mut args = args.into_iter().peekable();
    let probe = args.next_if(|a| a == "probe").is_some();
    let mut parser = lexopt::Parser::from_args(args.map(single_dash_to_double));
    while let Some(arg) = parser.next().map_err(|e| UsageError(e.to_string()))? {
        let flag = match &arg {
            Long(name) => format!("--{name}"),
            Short(c) => format!("-{c}"),
            Value(v) => return Err(UsageError(format!("unexpected argument {:?}", v.to_string_lossy()))),
        };
        let value = |parser: &mut lexopt::Parser| -> Result<String, UsageError> {
            let v = parser.value().map_err(|_| UsageError(format!("{flag} needs a value")))?;
            v.into_string().map_err(|v| UsageError(format!("{flag}: {:?} is not valid UTF-8", v.to_string_lossy())))
        };
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Long("backend") => {
                opts.backend = Some(match value(&mut parser)?.as_str() {
                    "intel" => BackendChoice::Intel,
                    "aws" => BackendChoice::Aws,
                    "aws-fpga" => BackendChoice::AwsFpga,
                    other => return Err(UsageError(format!("{flag}: {other:?} is not one of intel, aws-fpga, aws"))),
                })
            }
            Long("accel-nbunits") => {
                let v = value(&mut parser)?;
                opts.accel_nbunits = Some(
                    v.parse()
                        .ok()
                        .filter(|n| (1..=MAX_UNITS).contains(n))
                        .ok_or_else(|| UsageError(format!("{flag}: {v:?} is not a number from 1 to {MAX_UNITS}")))?,
                );
            }
            Long("resource-name") => {
                let v = value(&mut parser)?;
                validate_resource_name(&v).map_err(|why| UsageError(format!("{flag}: {v:?} {why}")))?;
                opts.resource_name = v;
            }
            Long("afu-resource") => {
                let v = value(&mut parser)?;
                if v == "auto" {
                    opts.afu_auto = true;
                } else {
                    let (name, afu_id) =
                        parse_afu_resource(&v).map_err(|why| UsageError(format!("{flag} {v}: {why}")))?;
                    if let Some((other, _)) = opts.afu_resources.iter().find(|(_, id)| *id == afu_id) {
                        return Err(UsageError(format!("{flag} {v}: AFU {afu_id} is already given to {other}")));
                    }
                    opts.afu_resources.push((name, afu_id));
                }
            }
            Long("device-plugin-path") => {
                let dir = path(value(&mut parser)?, &flag)?;
                crate::endpoint::check_dir(&dir).map_err(|e| UsageError(format!("{flag}: {e}")))?;
                opts.device_plugin_path = dir;
            }
            Long("cdi-spec-dir") => opts.cdi_spec_dir = Some(path(value(&mut parser)?, &flag)?),
            Long("sysfs-root") => opts.sysfs_root = path(value(&mut parser)?, &flag)?,
            Long("dev-root") => opts.dev_root = path(value(&mut parser)?, &flag)?,
            Long("scan-interval") => {
                let v = value(&mut parser)?;
                opts.scan_interval = parse_duration(&v).map_err(|why| UsageError(format!("{flag}: {v:?} {why}")))?;
            }
            Long("health-interval") => {
                let v = value(&mut parser)?;
                opts.health_interval = parse_duration(&v).map_err(|why| UsageError(format!("{flag}: {v:?} {why}")))?;
            }
            Long("log-level") => {
                let v = value(&mut parser)?;
                opts.log_level = match v.as_str() {
                    "error" => LevelFilter::Error,
                    "warn" => LevelFilter::Warn,
                    "info" => LevelFilter::Info,
                    "debug" => LevelFilter::Debug,
                    "trace" => LevelFilter::Trace,
                    _ => {
                        return Err(UsageError(format!("{flag}: {v:?} is not one of error, warn, info, debug, trace")))
                    }
                }
            }
            Long("log-file") => {
                let v = value(&mut parser)?;
                opts.log_file = if v == "-" { None } else { Some(path(v, &flag)?) };
            }
            _ => return Err(UsageError(format!("unknown option {flag}"))),
        }
    }
    // The slots are counted, not given: a number of units says the user expects the other backend.
    if opts.backend == Some(BackendChoice::AwsFpga) && opts.accel_nbunits.is_some() {
        return Err(UsageError(
            "--accel-nbunits counts the units of --backend aws; --backend aws-fpga finds the slots itself".into(),
        ));
    }
    // With auto, an entry must not take the auto name of another AFU: two AFUs would share one resource.
    if opts.afu_auto {
        let domain = opts.resource_name.split_once('/').map_or(opts.resource_name.as_str(), |(d, _)| d);
        for (name, id) in &opts.afu_resources {
            let auto_of_other = name
                .strip_prefix(&format!("{domain}/afu-"))
                .and_then(crate::discovery::sysfs::parse_afu_id)
                .filter(|other| other != id);
            if let Some(other) = auto_of_other {
                return Err(UsageError(format!(
                    "--afu-resource {name}={id}: {name} is the auto name of AFU {other}, which --afu-resource auto \
                     gives its own resource"
                )));
            }
        }
    }
    // With CDI, every resource name is also a CDI kind, which CDI's rules must accept (auto names
    // `<domain>/afu-<hex>` are then valid too: their class starts with a letter).
    if opts.cdi_spec_dir.is_some() {
        for name in std::iter::once(&opts.resource_name).chain(opts.afu_resources.iter().map(|(n, _)| n)) {
            crate::cdi::check_kind(name).map_err(|why| UsageError(format!("--cdi-spec-dir: {why}")))?;
        }
    }
    Ok(if probe { Command::Probe(opts) } else { Command::Run(opts) })
}

/// `NAME=AFU_ID` of `--afu-resource`: a valid resource name and a loaded AFU's ID.
fn parse_afu_resource(v: &str) -> Result<(String, String), String> {
    let (name, id) = v.split_once('=').ok_or("must be NAME=AFU_ID, or auto")?;
    validate_resource_name(name).map_err(|why| format!("the resource name {name:?} {why}"))?;
    let afu_id = crate::discovery::sysfs::parse_afu_id(id)
        .ok_or_else(|| format!("{id:?} is not an AFU ID: 32 hex digits, dashes allowed"))?;
    if crate::discovery::sysfs::is_blank_afu(&afu_id) {
        return Err("an all-f AFU ID means that no AFU is loaded: such ports stay under --resource-name".into());
    }
    Ok((name.to_string(), afu_id))
}

/// `-accel-nbunits` → `--accel-nbunits` (also with `=value`); anything else is left as it is.
fn single_dash_to_double(arg: OsString) -> OsString {
    if let Some(s) = arg.to_str() {
        if let Some(rest) = s.strip_prefix('-').filter(|r| !r.starts_with('-')) {
            let name = rest.split_once('=').map_or(rest, |(n, _)| n);
            if LONG_FLAGS.contains(&name) {
                return format!("-{s}").into();
            }
        }
    }
    arg
}

/// Linux's PATH_MAX, with the terminating NUL: no longer path can be opened.
const PATH_MAX: usize = 4096;

/// A path flag's value, absolute (a relative one is taken from the working directory: the paths reach the
/// kubelet and the runtime, which resolve them from elsewhere) and without trailing slashes (they change
/// nothing but the length).
fn path(v: String, flag: &str) -> Result<PathBuf, UsageError> {
    if v.is_empty() {
        return Err(UsageError(format!("{flag}: the path is empty")));
    }
    let v = if v.starts_with('/') {
        v
    } else {
        match std::env::current_dir() {
            Ok(cwd) => cwd.join(&v).to_string_lossy().into_owned(),
            Err(e) => {
                return Err(UsageError(format!("{flag}: {v:?} is relative, and the working directory is unknown: {e}")))
            }
        }
    };
    let v = match v.trim_end_matches('/') {
        "" => "/".to_string(),
        trimmed => trimmed.to_string(),
    };
    if v.len() >= PATH_MAX {
        return Err(UsageError(format!(
            "{flag}: the path is {} bytes long; the system takes paths of at most {} bytes (PATH_MAX)",
            v.len(),
            PATH_MAX - 1
        )));
    }
    Ok(PathBuf::from(v))
}

/// `200ms`, `5s`, `1m`, `1h`: a whole number and a unit, from 10 ms to 24 h.
pub fn parse_duration(s: &str) -> Result<Duration, &'static str> {
    const WHY: &str = "is not a duration like 200ms, 5s or 1m";
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or(WHY)?;
    let (number, unit) = s.split_at(split);
    if number.is_empty() || number.len() > 9 {
        return Err(WHY);
    }
    let n: u64 = number.parse().map_err(|_| WHY)?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(WHY),
    };
    if d < Duration::from_millis(10) || d > Duration::from_secs(24 * 3600) {
        return Err("is out of range (10ms to 24h)");
    }
    Ok(d)
}

/// The kubelet accepts an extended resource name `domain/name` outside `kubernetes.io`, such that
/// `requests.domain/name` is a qualified name: the domain a DNS subdomain, the name at most 63 characters
/// of `[A-Za-z0-9_.-]` that start and end with an alphanumeric.
pub fn validate_resource_name(s: &str) -> Result<(), &'static str> {
    let (domain, name) = s.split_once('/').ok_or("must be domain/name, e.g. b-com.com/accelerator")?;
    if s.contains("kubernetes.io/") || s.starts_with("requests.") {
        return Err("is in a namespace reserved by Kubernetes");
    }
    let alnum = |c: u8| c.is_ascii_alphanumeric();
    let ends_ok = |t: &str| t.bytes().next().is_some_and(alnum) && t.bytes().last().is_some_and(alnum);
    let prefixed = format!("requests.{domain}");
    let domain_ok = prefixed.len() <= 253
        && prefixed.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && ends_ok(label)
        });
    if !domain_ok {
        return Err("has a domain that is not a lowercase DNS subdomain of at most 244 bytes (253 with `requests.`)");
    }
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|c| alnum(c) || matches!(c, b'-' | b'_' | b'.'))
        && ends_ok(name);
    if !name_ok {
        return Err(
            "has a name that is not 1-63 characters of [A-Za-z0-9_.-] starting and ending with a letter or digit",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Options, UsageError> {
        match parse(args.iter().map(OsString::from))? {
            Command::Run(o) => Ok(o),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn single_and_double_dash_and_equals() {
        let o = run(&["-accel-nbunits", "1", "--log-level=debug", "-scan-interval=200ms", "--backend", "aws"]).unwrap();
        assert_eq!(o.accel_nbunits, Some(1));
        assert_eq!(o.log_level, LevelFilter::Debug);
        assert_eq!(o.scan_interval, Duration::from_millis(200));
        assert_eq!(o.backend, Some(BackendChoice::Aws));
        assert_eq!(run(&["-backend", "aws-fpga"]).unwrap().backend, Some(BackendChoice::AwsFpga));
        // Given twice: the last value.
        let o =
            run(&["--log-level", "warn", "-log-level=debug", "--scan-interval", "1m", "--scan-interval=2s"]).unwrap();
        assert_eq!((o.log_level, o.scan_interval), (LevelFilter::Debug, Duration::from_secs(2)));
        assert_eq!(run(&[]).unwrap(), Options::default());
        assert_eq!(parse(["-help".into()]), Ok(Command::Help));
        assert_eq!(run(&["--log-file", "-"]).unwrap().log_file, None);
        assert_eq!(run(&["--device-plugin-path", "/x/y//"]).unwrap().device_plugin_path, PathBuf::from("/x/y"));
        assert_eq!(run(&["--sysfs-root", "/"]).unwrap().sysfs_root, PathBuf::from("/"));
        let o = run(&[
            "-afu-resource",
            "example.com/gzip=D8424DC4-A4A3-C413-F89E-433683F9040B",
            "--afu-resource=auto",
            "--afu-resource",
            "example.com/net=00112233445566778899aabbccddeeff",
        ])
        .unwrap();
        assert!(o.afu_auto);
        assert_eq!(
            o.afu_resources,
            [
                ("example.com/gzip".to_string(), "d8424dc4a4a3c413f89e433683f9040b".to_string()),
                ("example.com/net".to_string(), "00112233445566778899aabbccddeeff".to_string()),
            ]
        );
        match parse(["probe", "-device-plugin-path", "/x"].map(OsString::from)) {
            Ok(Command::Probe(o)) => assert_eq!(o.device_plugin_path, PathBuf::from("/x")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_values_name_the_flag() {
        for (args, needle) in [
            (&["--accel-nbunits", "0"][..], "--accel-nbunits"),
            (&["--accel-nbunits", "100001"], "--accel-nbunits"),
            (&["-accel-nbunits", "x"], "--accel-nbunits"),
            (&["--backend", "nvidia"], "--backend"),
            (&["--backend", "aws-fpga", "--accel-nbunits", "4"], "--accel-nbunits"),
            (&["--scan-interval", "5"], "--scan-interval"),
            (&["--scan-interval", "1ms"], "--scan-interval"),
            (&["--log-level", "loud"], "--log-level"),
            (&["--resource-name", "accelerator"], "--resource-name"),
            (&["--frobnicate"], "--frobnicate"),
            (&["--dev-root"], "--dev-root"),
            (&["stray"], "stray"),
            (&["--device-plugin-path", &format!("/{}", "d".repeat(103))], "104 bytes long"),
            (&["--sysfs-root", &format!("/{}", "s".repeat(4095))], "PATH_MAX"),
            (&["--afu-resource", "example.com/gzip"], "must be NAME=AFU_ID"),
            (
                &[
                    "--afu-resource",
                    "b-com.com/afu-00112233445566778899aabbccddeeff=d8424dc4a4a3c413f89e433683f9040b",
                    "--afu-resource",
                    "auto",
                ],
                "is the auto name of AFU 00112233445566778899aabbccddeeff",
            ),
            (&["--afu-resource", "gzip=d8424dc4a4a3c413f89e433683f9040b"], "the resource name \"gzip\""),
            (&["--afu-resource", "example.com/gzip=d8424dc4"], "not an AFU ID"),
            (&["--afu-resource", "example.com/none=ffffffff-ffffffffffffffffffffffff"], "no AFU is loaded"),
            (
                &[
                    "--afu-resource",
                    "example.com/a=d8424dc4a4a3c413f89e433683f9040b",
                    "--afu-resource",
                    "example.com/b=D8424DC4-A4A3-C413-F89E-433683F9040B",
                ],
                "already given to example.com/a",
            ),
            (&["--cdi-spec-dir", "/var/run/cdi", "--resource-name", "1e.com/acc"], "vendor \"1e.com\" must start"),
            (
                &["--afu-resource", "e.com/9gz=d8424dc4a4a3c413f89e433683f9040b", "--cdi-spec-dir", "/var/run/cdi"],
                "is not a CDI device kind",
            ),
        ] {
            let e = run(args).unwrap_err();
            assert!(e.0.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        for bad in ["", "s", "5", "5 s", "-5s", "5.5s", "25h", "9999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resource_names_like_the_kubelet() {
        for ok in ["b-com.com/accelerator", "intel.com/fpga-arria10", "example.com/Acc_1.x"] {
            assert_eq!(validate_resource_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "accelerator",
            "kubernetes.io/fpga",
            "requests.example.com/x",
            "Example.com/x",
            "example.com/",
            "example.com/-x",
            "example..com/x",
            "example.com/a/b",
        ] {
            assert!(validate_resource_name(bad).is_err(), "{bad}");
        }
    }
}
