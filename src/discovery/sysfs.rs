//! Parsers for the sysfs attribute formats the Intel FPGA drivers expose. Every input here comes from the
//! kernel or from whatever is mounted at the sysfs root, so nothing is trusted: each parser returns `None`
//! on anything unexpected.

use std::io;
use std::path::Path;

/// A PCI function address (`domain:bus:device.function`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    pub domain: u32,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl std::fmt::Display for PciAddress {
    /// Canonical lowercase form, e.g. `0000:5e:00.0`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{:x}", self.domain, self.bus, self.device, self.function)
    }
}

/// Parses a sysfs PCI function name such as `0000:5e:00.0` (hex everywhere; the domain has 4 to 8 digits,
/// as on hosts with VMD domains such as `10000:01:00.0`).
pub fn parse_pci_address(s: &str) -> Option<PciAddress> {
    let (domain, rest) = s.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (device, function) = rest.split_once('.')?;
    let hex = |t: &str, min: usize, max: usize| -> Option<u32> {
        if t.len() < min || t.len() > max || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(t, 16).ok()
    };
    let address = PciAddress {
        domain: hex(domain, 4, 8)?,
        bus: u8::try_from(hex(bus, 2, 2)?).ok()?,
        device: u8::try_from(hex(device, 2, 2)?).ok().filter(|d| *d < 32)?,
        function: u8::try_from(hex(function, 1, 1)?).ok().filter(|f| *f < 8)?,
    };
    Some(address)
}

/// The nearest ancestor of `path` (itself included) whose name is a PCI address: the function that hosts a
/// device found below it in `/sys/devices`.
pub fn pci_function_of(path: &Path) -> Option<(PciAddress, &Path)> {
    path.ancestors().find_map(|p| p.file_name().and_then(|n| n.to_str()).and_then(parse_pci_address).map(|a| (a, p)))
}

/// An attribute that does not hold what its name promises.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

/// `numa_node`: `"%d\n"`, where -1 means unknown.
pub fn parse_numa_node(s: &str) -> Result<Option<i64>, Malformed> {
    match s.trim().parse::<i64>() {
        Ok(-1) => Ok(None),
        Ok(n) if n >= 0 => Ok(Some(n)),
        _ => Err(Malformed),
    }
}

/// `afu_id`: returns whether it is the all-`f` ID the drivers report for a port without a usable AFU;
/// `None` when it is not an AFU ID at all (see `parse_afu_id`).
pub fn afu_id_is_blank(s: &str) -> Option<bool> {
    parse_afu_id(s).map(|id| is_blank_afu(&id))
}

/// Whether a canonical AFU ID is the blank one (all `f`: no AFU loaded).
pub fn is_blank_afu(canonical: &str) -> bool {
    canonical.bytes().all(|b| b == b'f')
}

/// An AFU ID in its canonical form: 32 lowercase hex digits. Accepts the kernel's `afu_id` attribute
/// (`"%016llx%016llx\n"`) and the forms people write, any case, with dashes anywhere (the GUID form
/// `d8424dc4-a4a3-c413-f89e-433683f9040b`).
pub fn parse_afu_id(s: &str) -> Option<String> {
    let hex: String = s.trim().chars().filter(|&c| c != '-').collect();
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(hex.to_ascii_lowercase())
}

/// `errors/errors`: `"0x%llx\n"`. A plain decimal or bare hex value is accepted too.
pub fn parse_error_bits(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() && hex.len() <= 16 => u64::from_str_radix(hex, 16).ok(),
        Some(_) => None,
        None => s.parse().ok(),
    }
}

/// `ports_num` of an FME, and `id` of a port: a small non-negative decimal.
pub fn parse_small_uint(s: &str) -> Option<u32> {
    let s = s.trim();
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A PCI ID attribute (`vendor`, `device`): `"0x1d0f\n"`, four hex digits after `0x`.
pub fn parse_pci_id(s: &str) -> Option<u16> {
    let hex = s.trim().strip_prefix("0x")?;
    if hex.len() != 4 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(hex, 16).ok()
}

/// `dev`: `"major:minor\n"`, the device number of the node the driver created.
pub fn parse_dev(s: &str) -> Option<(u32, u32)> {
    let (major, minor) = s.trim().split_once(':')?;
    let number = |t: &str| {
        if !t.is_empty() && t.len() <= 10 && t.bytes().all(|b| b.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    Some((number(major)?, number(minor)?))
}

/// Reads a sysfs attribute in three system calls: open, one `pread` at offset 0, close; no stat (sysfs
/// reports a size of 4096 for every attribute anyway). Attributes the plugin reads are a line; anything
/// longer is cut at 4 KiB.
pub fn read_attr(path: &Path) -> io::Result<String> {
    reread_attr(&open_attr(path)?)
}

/// Opens a sysfs attribute for reading. The open asks for no `O_CLOEXEC`, unlike `File::open`: musl (the
/// static build) adds an `fcntl` to every open that asks for it (one call more for each attribute read
/// through its path), and this process never executes another program, so there is nothing for the flag
/// to protect.
pub fn open_attr(path: &Path) -> io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    // SAFETY: a valid NUL-terminated path; the descriptor returned is owned by the File below alone.
    let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_RDONLY | libc::O_NOCTTY) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a descriptor we just opened and own.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Whether the device at `dir` certainly has no driver bound: its `driver` link is not there (one `lstat`;
/// any other error says nothing).
pub fn is_unbound(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir.join("driver")).is_err_and(|e| e.kind() == io::ErrorKind::NotFound)
}

/// Whether an open file is on sysfs (`fstatfs`: `SYSFS_MAGIC`, from `linux/magic.h`).
pub fn is_on_sysfs(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    const SYSFS_MAGIC: i64 = 0x6265_6572;
    // SAFETY: statfs is plain data that fstatfs fills in; the descriptor is open for the call's duration.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } == 0;
    ok && st.f_type as i64 == SYSFS_MAGIC
}

/// Reads an open sysfs attribute from its start: one `pread` at offset 0, for which sysfs makes the
/// attribute's text anew (so a descriptor kept open reads the current value every time). A read of an
/// attribute whose device is gone fails (`ENODEV`).
pub fn reread_attr(file: &std::fs::File) -> io::Result<String> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 4096];
    let n = loop {
        match file.read_at(&mut buf, 0) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A directory's identity: device, inode number and, where the filesystem keeps one, birth time. sysfs
/// (kernfs) never reuses an inode number on 64-bit (it carries a generation) and keeps no birth time;
/// other filesystems (a test's tree) may reuse a freed number, and their birth time tells the two apart.
/// The change time is not used: kernfs sets it when it makes the in-memory inode, which it may drop and
/// make again at any time.
pub type DirId = (u64, u64, Option<std::time::SystemTime>);

/// The identity of the directory at `dir` (a link to one is followed); None when it cannot be read.
pub fn dir_id(dir: &Path) -> Option<DirId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino(), m.created().ok()))
}

/// The entries of `dir`, sorted by name; a missing directory (no such driver loaded, no such class) is
/// empty, and one that cannot be listed is reported in `problems` and taken as empty.
pub fn listed(dir: &Path, problems: &mut Vec<String>) -> Vec<std::path::PathBuf> {
    match sorted_entries(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            problems.push(format!("cannot list {}: {e}", dir.display()));
            Vec::new()
        }
    }
}

/// A PCI function's `numa_node` attribute (`path`, read as `text`): None when the kernel does not know it
/// (`-1`), or when it is malformed, which is reported in `problems`.
pub fn numa_node(path: &Path, text: &str, problems: &mut Vec<String>) -> Option<i64> {
    parse_numa_node(text).unwrap_or_else(|Malformed| {
        problems.push(format!("ignoring {}: not a NUMA node: {:?}", path.display(), text.trim()));
        None
    })
}

/// The entries of a directory, sorted by name.
pub fn sorted_entries(dir: &Path) -> io::Result<Vec<std::path::PathBuf>> {
    let mut out: Vec<std::path::PathBuf> = std::fs::read_dir(dir)?.filter_map(Result::ok).map(|e| e.path()).collect();
    out.sort();
    Ok(out)
}

/// Where a sysfs class entry points, without `canonicalize`'s per-component lookups: sysfs links are
/// relative links into `/sys/devices` whose components are plain directories, so joining and folding `..`
/// is exact. An entry that is not a link is its own target.
pub fn resolve_link(entry: &Path) -> io::Result<std::path::PathBuf> {
    use std::path::Component;
    let target = match std::fs::read_link(entry) {
        Ok(target) => target,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(entry.to_path_buf()),
        Err(e) => return Err(e),
    };
    let joined = entry.parent().unwrap_or(Path::new("/")).join(target);
    let mut out = std::path::PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

/// A read error that says "try again later" rather than "this is broken": the drivers answer EBUSY while a
/// port is in reset.
pub fn is_transient(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN) | Some(libc::EINTR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses_are_hex_and_canonical() {
        let a = parse_pci_address("0000:AF:1f.7").unwrap();
        assert_eq!((a.domain, a.bus, a.device, a.function), (0, 0xaf, 0x1f, 7));
        assert_eq!(a.to_string(), "0000:af:1f.7");
        assert_eq!(parse_pci_address("10000:01:00.0").unwrap().to_string(), "10000:01:00.0");
        // The original parsed the bus as decimal: 0x5e is 94, not an error.
        assert_eq!(parse_pci_address("0000:5e:00.0").unwrap().bus, 94);
        for bad in [
            "",
            "0000:5e:00",
            "000:5e:00.0",
            "0000:5e:20.0",
            "0000:5e:00.8",
            "0000:5g:00.0",
            "0000:5e:00.0x",
            "pci0000:00",
            "0000:5e:00.+1",
        ] {
            assert_eq!(parse_pci_address(bad), None, "{bad}");
        }
    }

    #[test]
    fn function_is_the_nearest_pci_ancestor() {
        let p = Path::new("/sys/devices/pci0000:5d/0000:5d:00.0/0000:5e:00.0/fpga_region/region0/dfl-port.0");
        let (a, dir) = pci_function_of(p).unwrap();
        assert_eq!(a.to_string(), "0000:5e:00.0");
        assert_eq!(dir, Path::new("/sys/devices/pci0000:5d/0000:5d:00.0/0000:5e:00.0"));
        assert_eq!(pci_function_of(Path::new("/sys/devices/platform/x")), None);
    }

    #[test]
    fn class_links_resolve_lexically() {
        let root = std::env::temp_dir().join(format!("resolve-link-{}", std::process::id()));
        let target = root.join("devices/pci0000:00/0000:5e:00.0/fpga_region/region0");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::create_dir_all(root.join("class/fpga_region")).unwrap();
        let link = root.join("class/fpga_region/region0");
        std::os::unix::fs::symlink("../../devices/pci0000:00/0000:5e:00.0/fpga_region/region0", &link).unwrap();
        assert_eq!(resolve_link(&link).unwrap(), target);
        assert_eq!(resolve_link(&target).unwrap(), target, "a directory is its own target");
        assert!(resolve_link(&root.join("class/fpga_region/none")).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn numa_afu_errors_and_counts() {
        assert_eq!(parse_numa_node("1\n"), Ok(Some(1)));
        assert_eq!(parse_numa_node("-1\n"), Ok(None));
        assert_eq!(parse_numa_node("-2"), Err(Malformed));
        assert_eq!(parse_numa_node("zero"), Err(Malformed));
        assert_eq!(afu_id_is_blank("ffffffffffffffffffffffffffffffff\n"), Some(true));
        assert_eq!(afu_id_is_blank("d8424dc4a4a3c413f89e433683f9040b\n"), Some(false));
        assert_eq!(afu_id_is_blank("fff"), None);
        let id = Some("d8424dc4a4a3c413f89e433683f9040b".to_string());
        assert_eq!(parse_afu_id("d8424dc4a4a3c413f89e433683f9040b\n"), id);
        assert_eq!(parse_afu_id("D8424DC4-A4A3-C413-F89E-433683F9040B"), id);
        assert_eq!(parse_afu_id("d8-424dc4a4a3c413f89e433683f9040-b"), id);
        for bad in [
            "",
            "d8424dc4a4a3c413f89e433683f9040",
            "d8424dc4a4a3c413f89e433683f9040bb",
            "g8424dc4a4a3c413f89e433683f9040b",
        ] {
            assert_eq!(parse_afu_id(bad), None, "{bad}");
        }
        assert_eq!(parse_error_bits("0x0\n"), Some(0));
        assert_eq!(parse_error_bits("0x40\n"), Some(0x40));
        assert_eq!(parse_error_bits("0x"), None);
        assert_eq!(parse_error_bits("0x10000000000000000"), None);
        assert_eq!(parse_error_bits("oops"), None);
        assert_eq!(parse_dev("510:3\n"), Some((510, 3)));
        for bad in ["510", "510:", ":3", "a:b", "510:3:1", "-1:3", "99999999999:0"] {
            assert_eq!(parse_dev(bad), None, "{bad}");
        }
        assert_eq!(parse_small_uint("2\n"), Some(2));
        assert_eq!(parse_small_uint("-1"), None);
        assert_eq!(parse_small_uint("+1"), None);
    }
}
