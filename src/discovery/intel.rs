//! Intel FPGA AFU ports, from both driver layouts:
//!
//! - OPAE out-of-tree driver: `<sys>/class/fpga/intel-fpga-dev.N/intel-fpga-port.K`, node `<dev>/intel-fpga-port.K`;
//! - upstream Linux DFL: `<sys>/class/fpga_region/regionR/dfl-port.K`, node `<dev>/dfl-port.K`.
//!
//! N, R and K come from separate counters, so ports are only ever matched to their node by their own name,
//! and to their PCI function by walking up their real path in `/sys/devices`.

use super::sysfs::{self, dir_id, DirId, PciAddress};
use super::Scan;
use crate::device::{DevNode, Device, Health, MAX_ID_LEN};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// One driver layout: where its class entries are and how its ports and FMEs are named.
struct Layout {
    class_dir: &'static str,
    entry_prefix: &'static str,
    port_prefix: &'static str,
    fme_prefix: &'static str,
}

const OPAE: Layout = Layout {
    class_dir: "class/fpga",
    entry_prefix: "intel-fpga-dev.",
    port_prefix: "intel-fpga-port.",
    fme_prefix: "intel-fpga-fme.",
};
const DFL: Layout =
    Layout { class_dir: "class/fpga_region", entry_prefix: "region", port_prefix: "dfl-port.", fme_prefix: "dfl-fme." };

/// Whether `sys` looks like a node with an Intel FPGA driver loaded.
pub fn present(sys: &Path) -> bool {
    [OPAE.class_dir, DFL.class_dir].iter().any(|d| sys.join(d).is_dir())
}

/// What a health pass reads of one port, remembered from the last full discovery so that the pass needs no
/// directory listing and no link resolution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPaths {
    /// The device ID discovery gave the port.
    pub id: String,
    /// The real path of the port's sysfs directory (`/sys/devices/…/dfl-port.K`).
    pub dir: PathBuf,
    /// The host path of its device node (`<dev>/dfl-port.K`).
    pub node: PathBuf,
    /// The port's `dev` attribute (`major:minor`), which is fixed while the directory exists; None when it
    /// could not be read.
    pub dev: Option<(u32, u32)>,
    /// The directory's identity when it was discovered: a port removed and another created at the same path
    /// (a card replaced at the same PCI address) has another, so what was read of the old one (its ID, its
    /// `dev`) is never used for the new one. None when it could not be read: every pass then rediscovers
    /// (see `PortFiles::open`).
    pub dir_id: Option<DirId>,
}

/// The two attributes a health pass reads, kept open from one pass to the next, so that each read is one
/// `pread` (`sysfs::reread_attr`) instead of an open, a read and a close that walk the whole sysfs path
/// (measured: 1.7 µs against 11.1 µs). One that could not be opened (absent, or no descriptor left) is read
/// through its path. Two descriptors per port.
#[derive(Debug, Default)]
pub struct PortFiles {
    afu_id: Option<std::fs::File>,
    errors: Option<std::fs::File>,
    /// Whether the kept files are sysfs attributes (`fstatfs`: `SYSFS_MAGIC`). sysfs fails every read of an
    /// attribute removed with its directory (`ENODEV`); other filesystems (a test's tree) keep a removed
    /// file readable, and there a pass asks its link count instead (which tells a removal, not a directory
    /// renamed away: test trees do not do that).
    on_sysfs: bool,
    /// Set by a pass that found a kept attribute removed from a directory still there (the driver unbound
    /// and bound again made it anew): the files are worth opening again.
    stale: std::cell::Cell<bool>,
}

impl PortFiles {
    /// Opens `afu_id` and `errors/errors` of a port the last discovery found. None are kept when the
    /// directory is no longer the one discovered (replaced since, or its identity unknown): the files
    /// would be another port's, read under this one's ID, and the next pass, through the paths, finds the
    /// directory changed and starts a full discovery.
    pub fn open(port: &PortPaths) -> PortFiles {
        let afu_id = sysfs::open_attr(&port.dir.join("afu_id")).ok();
        let errors = sysfs::open_attr(&port.dir.join("errors/errors")).ok();
        if port.dir_id.is_none() || dir_id(&port.dir) != port.dir_id {
            return PortFiles::default();
        }
        let on_sysfs = afu_id.as_ref().is_some_and(sysfs::is_on_sysfs);
        PortFiles { afu_id, errors, on_sysfs, stale: Default::default() }
    }

    /// Whether a pass found these files stale (see `stale`).
    pub fn is_stale(&self) -> bool {
        self.stale.get()
    }
}

/// A health pass over one port: its AFU and health, read through what the last discovery remembered. With
/// its files kept open (`files`) and `afu_id` among them, on sysfs that is 3 system calls: a `pread` of
/// `afu_id` and of `errors/errors`, a `stat` of the device node; on another filesystem an `fstat` of
/// `afu_id` comes first (4). None: the port's directory is gone (a hot-remove, a release to a VF), is
/// another one (a card replaced), or its identity could not be read at discovery; only a full discovery
/// can sort that out.
///
/// How a removed directory is noticed: on sysfs, a kept attribute of it fails with `ENODEV`, and then the
/// directory's identity is compared with the one discovered (the driver may also have made its attributes
/// anew in the same directory: unbound and bound again; they are then read through their paths, and the
/// files are marked stale); elsewhere, the kept `afu_id` has no link left; without a kept `afu_id`, the
/// directory's identity is compared at every pass.
pub fn health(port: &PortPaths, files: &PortFiles) -> Option<(Option<String>, Health)> {
    let same_dir = || port.dir_id.is_some() && dir_id(&port.dir) == port.dir_id;
    match &files.afu_id {
        Some(_) if files.on_sysfs => {}
        Some(file) if file.metadata().is_ok_and(|m| m.nlink() > 0) => {}
        Some(_) => return None,
        None if same_dir() => {}
        None => return None,
    }
    let gone = std::cell::Cell::new(false);
    let reread = |file: &Option<std::fs::File>, path: &Path| match file.as_ref().map(sysfs::reread_attr) {
        Some(Err(e)) if e.raw_os_error() == Some(libc::ENODEV) => {
            if same_dir() {
                files.stale.set(true);
                sysfs::read_attr(path)
            } else {
                gone.set(true);
                Err(e)
            }
        }
        Some(result) => result,
        None => sysfs::read_attr(path),
    };
    let (afu_id, afu_verdict) = port_afu(&port.dir, |path| reread(&files.afu_id, path));
    let health = port_health(&port.dir, &port.node, port.dev, afu_verdict, |path| reread(&files.errors, path));
    (!gone.get()).then_some((afu_id, health))
}

/// A port as found in sysfs, before its ID is decided.
struct Port {
    /// Real path of the port's sysfs directory.
    dir: PathBuf,
    /// `intel-fpga-port.K` / `dfl-port.K`: also the name of its device node.
    name: String,
}

/// All ports of one PCI function.
#[derive(Default)]
struct Function {
    dir: PathBuf,
    ports: Vec<Port>,
    /// `ports_num` of the function's FME, if it has one (a VF has none).
    fme_ports: Option<u32>,
}

/// What one full discovery keeps for the next: attributes that are fixed for as long as the sysfs
/// directory they are in exists (`numa_node` of a PCI function, `ports_num` of an FME, `id` and `dev` of a
/// port), each with the identity (`DirId`) of its directory when it was read. Reading one again costs a
/// `stat` of its directory instead of an open, a read and a close, and the directory's identity is
/// looked up once per scan. An attribute whose directory is gone or is another one (a card replaced at the
/// same address) is read again; attributes not used by a scan are forgotten.
#[derive(Debug, Default)]
pub struct Cache {
    attrs: HashMap<PathBuf, (DirId, String)>,
    /// This scan's directory identities, and the attributes it used.
    dirs: HashMap<PathBuf, Option<DirId>>,
    used: HashSet<PathBuf>,
}

impl Cache {
    /// The identity of `dir`, looked up once per scan.
    fn dir_id(&mut self, dir: &Path) -> Option<DirId> {
        if let Some(id) = self.dirs.get(dir) {
            return *id;
        }
        let id = dir_id(dir);
        self.dirs.insert(dir.to_path_buf(), id);
        id
    }

    /// `dir/name`, from the cache while `dir` is the same directory. Only a text that `valid` accepts is
    /// kept: one read while the attribute was being written (empty in a test's tree) or otherwise wrong is
    /// read again at the next scan, not remembered for as long as the directory lives.
    fn read_fixed(&mut self, dir: &Path, name: &str, valid: fn(&str) -> bool) -> io::Result<String> {
        let path = dir.join(name);
        let id = self.dir_id(dir);
        self.used.insert(path.clone());
        if let (Some(id), Some((cached_id, text))) = (id, self.attrs.get(&path)) {
            if id == *cached_id {
                return Ok(text.clone());
            }
        }
        let text = sysfs::read_attr(&path)?;
        match id {
            Some(id) if valid(&text) => {
                self.attrs.insert(path, (id, text.clone()));
            }
            _ => {
                self.attrs.remove(&path);
            }
        }
        Ok(text)
    }

    fn end_scan(&mut self) {
        let used = std::mem::take(&mut self.used);
        self.attrs.retain(|path, _| used.contains(path));
        self.dirs.clear();
    }
}

/// A full discovery with a fresh cache: every attribute read from sysfs.
pub fn scan(sys: &Path, dev: &Path) -> Scan {
    scan_with(sys, dev, &mut Cache::default())
}

/// A full discovery that reads the fixed attributes through `cache` (see `Cache`).
pub fn scan_with(sys: &Path, dev: &Path, cache: &mut Cache) -> Scan {
    let mut scan = Scan::default();
    for (root, consequence) in [(sys, "no Intel FPGA port can be found"), (dev, "every port's device node is missing")]
    {
        if !root.is_dir() {
            scan.problems.push(format!("{} does not exist: {consequence}", root.display()));
            scan.retry = true;
        }
    }
    let mut functions: BTreeMap<PciAddress, Function> = BTreeMap::new();
    let mut seen = HashSet::new();
    for layout in [&OPAE, &DFL] {
        collect(sys, layout, &mut functions, &mut seen, cache, &mut scan.problems, &mut scan.retry);
    }
    for (address, function) in functions {
        let multi = function.ports.len() > 1 || function.fme_ports.is_some_and(|n| n > 1);
        let numa_node = numa_node(&function.dir, cache, &mut scan.problems);
        let mut ids = HashSet::new();
        for port in function.ports {
            let id = if multi {
                match cache.read_fixed(&port.dir, "id", is_small_uint).ok().and_then(|s| sysfs::parse_small_uint(&s)) {
                    Some(n) => format!("{address}-{n}"),
                    None => {
                        // The port driver makes `id`: without one bound, say so rather than "unreadable".
                        let why = match sysfs::is_unbound(&port.dir) {
                            true => "no driver is bound to it",
                            false => "its `id` is unreadable",
                        };
                        scan.problems.push(format!(
                            "skipping {}: its function {address} hosts several ports and {why}",
                            port.dir.display()
                        ));
                        scan.retry = true;
                        continue;
                    }
                }
            } else {
                address.to_string()
            };
            if id.len() > MAX_ID_LEN {
                scan.problems.push(format!("skipping {}: ID {id:?} is longer than {MAX_ID_LEN}", port.dir.display()));
                continue;
            }
            if !ids.insert(id.clone()) {
                scan.problems.push(format!("skipping {}: another port already has ID {id}", port.dir.display()));
                continue;
            }
            let host_path = dev.join(&port.name);
            let (afu_id, afu_verdict) = port_afu(&port.dir, sysfs::read_attr);
            let numbers = cache
                .read_fixed(&port.dir, "dev", |s| sysfs::parse_dev(s).is_some())
                .ok()
                .and_then(|s| sysfs::parse_dev(&s));
            let device = Device {
                health: port_health(&port.dir, &host_path, numbers, afu_verdict, sysfs::read_attr),
                afu_id,
                numa_node,
                nodes: vec![DevNode {
                    host_path: host_path.to_string_lossy().into_owned(),
                    container_path: format!("/dev/{}", port.name),
                }],
                pci_address: None,
                id,
            };
            let dir_id = cache.dir_id(&port.dir);
            scan.ports.push(PortPaths { id: device.id.clone(), dir: port.dir, node: host_path, dev: numbers, dir_id });
            scan.devices.push(device);
        }
    }
    cache.end_scan();
    scan
}

/// Finds every port of one layout and files it under its PCI function.
fn collect(
    sys: &Path,
    layout: &Layout,
    functions: &mut BTreeMap<PciAddress, Function>,
    seen: &mut HashSet<PathBuf>,
    cache: &mut Cache,
    problems: &mut Vec<String>,
    retry: &mut bool,
) {
    let class_dir = sys.join(layout.class_dir);
    for entry in entries_with_prefix(&class_dir, layout.entry_prefix, problems) {
        let real = match sysfs::resolve_link(&entry) {
            Ok(real) => real,
            Err(e) => {
                problems.push(format!("skipping {}: cannot resolve it: {e}", entry.display()));
                *retry = true;
                continue;
            }
        };
        // The partial-reconfiguration regions of a DFL FME (…/dfl-fme.M/dfl-fme-region.X/fpga_region/regionY)
        // never hold ports: skip them without listing them.
        if real.components().any(|c| c.as_os_str().to_str().is_some_and(|n| n.starts_with(layout.fme_prefix))) {
            continue;
        }
        let children = match sysfs::sorted_entries(&real) {
            Ok(children) => children,
            Err(e) => {
                problems.push(format!("skipping {}: it points to {}: {e}", entry.display(), real.display()));
                *retry = true;
                continue;
            }
        };
        let mut ports = Vec::new();
        let mut fme_ports = None;
        for child in children {
            let Some(name) = child.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            if let Some(suffix) = name.strip_prefix(layout.port_prefix) {
                if sysfs::parse_small_uint(suffix).is_none() {
                    problems.push(format!("skipping {}: unexpected port name", child.display()));
                    continue;
                }
                if seen.insert(child.clone()) {
                    ports.push(child);
                }
            } else if name.starts_with(layout.fme_prefix) {
                fme_ports = cache
                    .read_fixed(&child, "ports_num", is_small_uint)
                    .ok()
                    .and_then(|s| sysfs::parse_small_uint(&s))
                    .or(fme_ports);
            }
        }
        if ports.is_empty() {
            continue; // an FME's own PR region, or a PF whose ports were all released to VFs
        }
        let Some((address, function_dir)) = sysfs::pci_function_of(&real) else {
            problems.push(format!("skipping {}: no PCI function above {}", entry.display(), real.display()));
            continue;
        };
        let function = functions.entry(address).or_default();
        function.dir = function_dir.to_path_buf();
        function.fme_ports = fme_ports.or(function.fme_ports);
        for dir in ports {
            let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            function.ports.push(Port { dir, name });
        }
    }
}

/// The entries of a class directory whose names start with `prefix`. A missing directory (no such driver
/// loaded) is simply empty.
fn entries_with_prefix(dir: &Path, prefix: &str, problems: &mut Vec<String>) -> Vec<PathBuf> {
    let mut entries = sysfs::listed(dir, problems);
    entries.retain(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix)));
    entries
}

fn is_small_uint(s: &str) -> bool {
    sysfs::parse_small_uint(s).is_some()
}

fn numa_node(function_dir: &Path, cache: &mut Cache, problems: &mut Vec<String>) -> Option<i64> {
    let path = function_dir.join("numa_node");
    let text = cache.read_fixed(function_dir, "numa_node", |s| sysfs::parse_numa_node(s).is_ok()).ok()?;
    sysfs::numa_node(&path, &text, problems)
}

/// A port's `afu_id`: its canonical ID (None when blank or unreadable), and what it says about the port's
/// health (None: nothing against it). Missing, with no `driver` link beside it: the port driver is unbound,
/// and the port Unhealthy.
fn port_afu(port: &Path, read: impl FnOnce(&Path) -> io::Result<String>) -> (Option<String>, Option<Health>) {
    let afu = port.join("afu_id");
    match read(&afu) {
        Ok(text) => match sysfs::parse_afu_id(&text) {
            Some(id) if sysfs::is_blank_afu(&id) => {
                (None, Some(Health::Unhealthy(format!("{} is all f: no AFU is loaded", afu.display()))))
            }
            Some(id) => (Some(id), None),
            None => {
                (None, Some(Health::Unhealthy(format!("{} holds {:?}, not an AFU ID", afu.display(), text.trim()))))
            }
        },

        // The port driver makes `afu_id`, `errors/` and `id`, and the character device behind the node; the
        // node itself (devtmpfs, from the port's `dev`) stays when the driver is unbound, and then cannot be
        // opened. Only a missing `afu_id` costs a look at the `driver` link.
        Err(e) if e.kind() == io::ErrorKind::NotFound && sysfs::is_unbound(port) => (
            None,
            Some(Health::Unhealthy(format!(
                "no driver is bound to {}: its device node cannot be opened",
                port.display()
            ))),
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => (None, None),
        Err(e) if sysfs::is_transient(&e) => (None, Some(Health::Unknown(format!("reading {}: {e}", afu.display())))),
        Err(e) => (None, Some(Health::Unhealthy(format!("cannot read {}: {e}", afu.display())))),
    }
}

/// A port is unhealthy when its device node is missing (or is a character device with another number than
/// `numbers`, the port's `dev`), when an error is latched in `errors/errors`, or when its AFU says so (`afu`
/// from `port_afu`: none loaded, unreadable). A transient read error leaves the health unknown.
fn port_health(
    port: &Path,
    node: &Path,
    numbers: Option<(u32, u32)>,
    afu: Option<Health>,
    read: impl FnOnce(&Path) -> io::Result<String>,
) -> Health {
    let meta = match super::device_node(node) {
        Ok(meta) => meta,
        Err(why) => return Health::Unhealthy(why),
    };
    // A character device left over from an earlier driver load can carry the right name and the wrong
    // number: then it is not this port.
    if meta.file_type().is_char_device() {
        if let Some((major, minor)) = numbers {
            let rdev = meta.rdev();
            let (node_major, node_minor) = (libc::major(rdev), libc::minor(rdev));
            if (node_major, node_minor) != (major, minor) {
                return Health::Unhealthy(format!(
                    "device node {} is {node_major}:{node_minor}, the port is {major}:{minor}",
                    node.display()
                ));
            }
        }
    }
    let mut unknown = None;
    let errors = port.join("errors/errors");
    match read(&errors) {
        Ok(text) => match sysfs::parse_error_bits(&text) {
            Some(0) => {}
            Some(bits) => return Health::Unhealthy(format!("{} reports errors {bits:#x}", errors.display())),
            None => {
                return Health::Unhealthy(format!("{} holds {:?}, not an error mask", errors.display(), text.trim()))
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {} // no error reporting feature on this port
        Err(e) if sysfs::is_transient(&e) => unknown = Some(format!("reading {}: {e}", errors.display())),
        Err(e) => return Health::Unhealthy(format!("cannot read {}: {e}", errors.display())),
    }
    match afu {
        Some(Health::Unknown(why)) => unknown = Some(why),
        Some(verdict) => return verdict,
        None => {}
    }
    match unknown {
        Some(why) => Health::Unknown(why),
        None => Health::Healthy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A veth pair, for a real sysfs device that a test can remove; deleted when dropped.
    struct Veth(String);

    impl Veth {
        /// None (and why) when it cannot be made here: `ip` missing, or no right to make links.
        fn new(name: String) -> Result<Veth, String> {
            let out = std::process::Command::new("ip")
                .args(["link", "add", &name, "type", "veth", "peer", "name", &format!("{name}p")])
                .output()
                .map_err(|e| format!("ip: {e}"))?;
            if !out.status.success() {
                return Err(format!("ip link add: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
            Ok(Veth(name))
        }

        /// Its real directory in `/sys/devices`.
        fn dir(&self) -> PathBuf {
            std::fs::canonicalize(format!("/sys/class/net/{}", self.0)).unwrap()
        }
    }

    impl Drop for Veth {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip").args(["link", "del", &self.0]).output();
        }
    }

    /// On sysfs a pass makes no `stat` of the port's directory: a removed port is noticed by its kept
    /// attribute failing with `ENODEV` (its link count stays 1), and a kept attribute removed from a
    /// directory that is still there (a driver bound again) is read through its path instead. A veth
    /// device's `mtu` stands in for `afu_id` (root and `ip` needed; CI has both).
    #[test]
    fn on_sysfs_a_removed_port_is_noticed_by_enodev_and_a_rebound_one_read_through_its_path() {
        let id = std::process::id() % 100_000;
        let (a, b) = match (Veth::new(format!("k8sa{id}")), Veth::new(format!("k8sb{id}"))) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(why), _) | (_, Err(why)) => {
                assert!(std::env::var_os("K8S_ACCEL_TEST_STRICT").is_none(), "K8S_ACCEL_TEST_STRICT, and {why}");
                return eprintln!("skipping: {why}");
            }
        };
        let port = |dir: PathBuf| PortPaths {
            id: "port".into(),
            dir_id: dir_id(&dir),
            dir,
            node: "/dev/null".into(),
            dev: None,
        };
        // A's attribute kept, as for a port in A's directory and for one in B's (as if B's driver had made
        // it, then been unbound and bound again).
        let kept = || PortFiles {
            afu_id: Some(sysfs::open_attr(&a.dir().join("mtu")).unwrap()),
            on_sysfs: true,
            ..PortFiles::default()
        };
        let (in_a, files_a) = (port(a.dir()), kept());
        let (in_b, files_b) = (port(b.dir()), kept());
        assert!(sysfs::is_on_sysfs(files_a.afu_id.as_ref().unwrap()));
        assert!(health(&in_a, &files_a).is_some(), "A is there");

        drop(a);
        let link_count = files_a.afu_id.as_ref().unwrap().metadata().unwrap().nlink();
        assert_eq!(link_count, 1, "sysfs keeps the link count of a removed attribute");
        assert_eq!(health(&in_a, &files_a), None, "A's directory is gone");
        assert!(!files_a.is_stale());
        // B is still there: read through its paths (it has neither attribute, nor a `driver` link: a
        // virtual device, as a port whose driver is unbound), and the files are stale.
        let unbound = |why: &str| why.contains("no driver is bound to") && why.contains(&*b.0);
        assert!(matches!(health(&in_b, &files_b), Some((None, Health::Unhealthy(why))) if unbound(&why)));
        assert!(files_b.is_stale());
        drop(b);
    }
}
