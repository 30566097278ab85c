//! Realistic Intel FPGA sysfs and /dev trees (OPAE and DFL layouts, SR-IOV VFs), built in a temp dir. The
//! AWS FPGA slots of an F1 or F2 instance are in `aws`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A directory removed (with its contents) when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> io::Result<TempDir> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        // Short names: Unix socket paths are limited to 107 bytes.
        let name = format!("{label}-{}-{}-{nanos:x}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let path = std::env::temp_dir().join(name);
        fs::create_dir_all(&path)?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A simulated node: `<root>/sys` and `<root>/dev`.
pub struct SimNode {
    root: TempDir,
    /// Whether ports and FMEs get real character devices (`with_char_devices`) instead of plain files.
    char_devices: bool,
}

/// An FPGA card's FME: its instance number and how many ports it reports.
#[derive(Clone, Copy, Debug)]
pub struct Fme {
    pub instance: u32,
    pub ports_num: u32,
}

/// FME partial-reconfiguration regions are numbered from here, away from the base regions.
const PR_REGION_OFFSET: u32 = 100_000;

/// The `afu_id` every simulated port starts with (`set_afu` changes it).
pub const AFU_ID: &str = "d8424dc4a4a3c413f89e433683f9040b";

impl SimNode {
    pub fn new() -> io::Result<SimNode> {
        let root = TempDir::new("simnode")?;
        fs::create_dir_all(root.path().join("sys/devices"))?;
        fs::create_dir_all(root.path().join("dev"))?;
        Ok(SimNode { root, char_devices: false })
    }

    /// A node whose ports and FMEs get real character devices, with the numbers in their sysfs `dev`
    /// attribute, for a runtime that looks at them (a CDI runtime creates the same node in the container).
    /// Needs the right to `mknod` (root).
    pub fn with_char_devices() -> io::Result<SimNode> {
        Ok(SimNode { char_devices: true, ..SimNode::new()? })
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    pub fn sysfs(&self) -> PathBuf {
        self.root.path().join("sys")
    }

    pub fn dev(&self) -> PathBuf {
        self.root.path().join("dev")
    }

    /// `sys/devices/pci<domain>:00/<domain>:00:01.0/<address>` with its `numa_node`.
    pub fn pci_function(&self, address: &str, numa_node: &str) -> io::Result<PathBuf> {
        let dir = self.function_dir(address);
        fs::create_dir_all(&dir)?;
        write(&dir.join("numa_node"), &format!("{numa_node}\n"))?;
        write(&dir.join("vendor"), "0x8086\n")?;
        write(&dir.join("class"), "0x120000\n")?;
        Ok(dir)
    }

    /// An OPAE-driver card: `<fn>/fpga/intel-fpga-dev.<dev_index>/` with an optional FME and ports
    /// `(K, id)` named `intel-fpga-port.K`, their class link and their device nodes. Returns the port dirs.
    pub fn opae_card(
        &self,
        address: &str,
        numa_node: i64,
        dev_index: u32,
        fme: Option<Fme>,
        ports: &[(u32, u32)],
    ) -> io::Result<Vec<PathBuf>> {
        let name = format!("intel-fpga-dev.{dev_index}");
        let container =
            self.class_device(address, numa_node, &format!("fpga/{name}"), &format!("class/fpga/{name}"))?;
        if let Some(fme) = fme {
            self.fme(&container.join(format!("intel-fpga-fme.{}", fme.instance)), fme, "intel-fpga-fme")?;
        }
        ports.iter().map(|&(k, id)| self.port(&container, &format!("intel-fpga-port.{k}"), k, id)).collect()
    }

    /// A DFL-driver card: `<fn>/fpga_region/region<region>/` with an optional FME (and its PR region, which
    /// holds no port) and ports `(K, id)` named `dfl-port.K`. Returns the port dirs.
    pub fn dfl_card(
        &self,
        address: &str,
        numa_node: i64,
        region: u32,
        fme: Option<Fme>,
        ports: &[(u32, u32)],
    ) -> io::Result<Vec<PathBuf>> {
        let name = format!("region{region}");
        let container = self.class_device(
            address,
            numa_node,
            &format!("fpga_region/{name}"),
            &format!("class/fpga_region/{name}"),
        )?;
        if let Some(fme) = fme {
            let fme_dir = container.join(format!("dfl-fme.{}", fme.instance));
            self.fme(&fme_dir, fme, "dfl-fme")?;
            // The FME's partial-reconfiguration region is a class fpga_region too, with no port in it.
            let pr = region + PR_REGION_OFFSET;
            let pr_region = fme_dir.join(format!("dfl-fme-region.{}/fpga_region/region{pr}", fme.instance));
            fs::create_dir_all(&pr_region)?;
            symlink_rel(&pr_region, &self.sysfs().join(format!("class/fpga_region/region{pr}")))?;
        }
        ports.iter().map(|&(k, id)| self.port(&container, &format!("dfl-port.{k}"), k, id)).collect()
    }

    /// A class device below a PCI function (`<fn>/<below>`, with its `device` link) and its class link.
    fn class_device(&self, address: &str, numa_node: i64, below: &str, class_link: &str) -> io::Result<PathBuf> {
        let function = self.pci_function(address, &numa_node.to_string())?;
        let dir = function.join(below);
        fs::create_dir_all(&dir)?;
        symlink_rel(&function, &dir.join("device"))?;
        symlink_rel(&dir, &self.sysfs().join(class_link))?;
        Ok(dir)
    }

    /// Marks `vf` as a virtual function of `pf` (`physfn` / `virtfn<index>` links).
    pub fn link_vf(&self, pf: &str, vf: &str, index: u32) -> io::Result<()> {
        let pf_dir = self.find_function(pf)?;
        let vf_dir = self.find_function(vf)?;
        symlink_rel(&pf_dir, &vf_dir.join("physfn"))?;
        symlink_rel(&vf_dir, &pf_dir.join(format!("virtfn{index}")))
    }

    /// Where the PCI function `address` lives, below a root port of its domain.
    fn function_dir(&self, address: &str) -> PathBuf {
        let domain = address.split(':').next().unwrap_or("0000");
        self.sysfs().join(format!("devices/pci{domain}:00/{domain}:00:01.0/{address}"))
    }

    fn find_function(&self, address: &str) -> io::Result<PathBuf> {
        let dir = self.function_dir(address);
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(io::Error::new(io::ErrorKind::NotFound, format!("no PCI function {address}")))
        }
    }

    fn fme(&self, dir: &Path, fme: Fme, node_prefix: &str) -> io::Result<()> {
        fs::create_dir_all(dir.join("pr"))?;
        write(&dir.join("ports_num"), &format!("{}\n", fme.ports_num))?;
        write(&dir.join("bitstream_id"), "0x2300011001030f\n")?;
        write(&dir.join("dev"), &format!("{}:{}\n", 509, fme.instance))?;
        self.device_node(&format!("{node_prefix}.{}", fme.instance), 509, fme.instance)
    }

    /// Port `name` (instance K, the minor of its device node, as the drivers number them) with `id`.
    fn port(&self, container: &Path, name: &str, k: u32, id: u32) -> io::Result<PathBuf> {
        let dir = container.join(name);
        write(&dir.join("dev"), &format!("{}:{}\n", 510, k))?;
        self.bind_port(&dir, id)?;
        self.device_node(name, 510, k)?;
        Ok(dir)
    }

    /// The port driver bound to the port at `dir`: its `driver` link and the attributes it makes (`id`,
    /// `afu_id`, `power_state`, `errors/`). Both kinds of port are platform devices; the upstream driver (the
    /// dfl-afu module) registers as `dfl-port`, the OPAE one as `intel-fpga-port`.
    pub fn bind_port(&self, dir: &Path, id: u32) -> io::Result<()> {
        let dfl = dir.file_name().is_some_and(|n| n.to_string_lossy().starts_with("dfl-port."));
        let driver = self.sysfs().join("bus/platform/drivers").join(if dfl { "dfl-port" } else { "intel-fpga-port" });
        fs::create_dir_all(&driver)?;
        symlink_rel(&driver, &dir.join("driver"))?;
        write(&dir.join("id"), &format!("{id}\n"))?;
        write(&dir.join("afu_id"), &format!("{AFU_ID}\n"))?;
        write(&dir.join("power_state"), "0\n")?;
        write(&dir.join("errors/errors"), "0x0\n")?;
        write(&dir.join("errors/first_error"), "0x0\n")
    }

    /// The port driver unbound from the port at `dir`: what `bind_port` made is gone; the directory, its
    /// `dev` and the device node stay (the node is devtmpfs's, from the device number).
    pub fn unbind_port(&self, dir: &Path) -> io::Result<()> {
        for attr in ["driver", "id", "afu_id", "power_state"] {
            fs::remove_file(dir.join(attr))?;
        }
        fs::remove_dir_all(dir.join("errors"))
    }

    /// Loads another accelerator function in a port: rewrites its `afu_id` (32 hex digits, or all `f`).
    pub fn set_afu(&self, port_dir: &Path, afu_id: &str) -> io::Result<()> {
        write(&port_dir.join("afu_id"), &format!("{afu_id}\n"))
    }

    /// Creates `<dev>/<name>` (a plain file stands in for the character device).
    pub fn add_node(&self, name: &str) -> io::Result<()> {
        write(&self.dev().join(name), "")
    }

    /// The device node of a port or FME: a plain file, or a character device `major:minor`.
    pub(super) fn device_node(&self, name: &str, major: u32, minor: u32) -> io::Result<()> {
        if !self.char_devices {
            return self.add_node(name);
        }
        let path = self.dev().join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let path = std::ffi::CString::new(path.into_os_string().into_encoded_bytes())?;
        // SAFETY: a valid NUL-terminated path; mknod creates a file and touches no memory of ours.
        if unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(major, minor)) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn remove_node(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.dev().join(name))
    }

    /// A card unplugged: the PCI function's directory, the class links into it, and the device nodes of its
    /// ports and FMEs.
    pub fn remove_function(&self, address: &str) -> io::Result<()> {
        let function = self.find_function(address)?;
        for class in ["class/fpga", "class/fpga_region"] {
            let Ok(entries) = fs::read_dir(self.sysfs().join(class)) else { continue };
            for entry in entries.filter_map(Result::ok) {
                if fs::canonicalize(entry.path()).is_ok_and(|real| real.starts_with(&function)) {
                    fs::remove_file(entry.path())?;
                }
            }
        }
        let mut nodes = Vec::new();
        collect_node_names(&function, &mut nodes);
        for name in nodes {
            let _ = self.remove_node(&name);
        }
        fs::remove_dir_all(function)
    }

    /// What the driver does when a port is released to a VF: its sysfs directory and its node vanish.
    pub fn release_port(&self, port_dir: &Path) -> io::Result<()> {
        let name = port_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        fs::remove_dir_all(port_dir)?;
        self.remove_node(&name)
    }
}

/// Names of the port and FME directories below `dir`: their device nodes have the same names.
fn collect_node_names(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if ["intel-fpga-port.", "intel-fpga-fme.", "dfl-port.", "dfl-fme."].iter().any(|p| name.starts_with(p))
            && !name.contains("region")
        {
            out.push(name);
        }
        collect_node_names(&entry.path(), out);
    }
}

/// Writes a whole file: a sysfs attribute or a device node stand-in.
pub fn write(path: &Path, text: &str) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(path, text)
}

/// A relative symlink at `link` pointing to `target`, as sysfs makes them.
pub(super) fn symlink_rel(target: &Path, link: &Path) -> io::Result<()> {
    let parent = link.parent().ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    fs::create_dir_all(parent)?;
    let common = target.ancestors().find(|a| parent.starts_with(a)).unwrap_or(Path::new("/"));
    let ups = parent.strip_prefix(common).map(|p| p.components().count()).unwrap_or(0);
    let mut rel = PathBuf::new();
    for _ in 0..ups {
        rel.push("..");
    }
    rel.push(target.strip_prefix(common).unwrap_or(target));
    std::os::unix::fs::symlink(rel, link)
}
