//! The name of our socket in the device-plugins directory: the `endpoint` of `RegisterRequest`.
//!
//! A Unix socket path holds at most [`MAX_SOCKET_PATH`] bytes (`sun_path` is 108 bytes with its NUL; gRPC
//! core refuses longer paths), and the kubelet dials `<its directory>/<endpoint>`. Its directory can be
//! longer than the one we see: a DaemonSet mounts the host's directory (microk8s:
//! `/var/snap/microk8s/common/var/lib/kubelet/device-plugins`, 56 bytes) at the shorter
//! `/var/lib/kubelet/device-plugins` in the container. So a name is sized for a directory of
//! [`ASSUMED_KUBELET_DIR`] bytes, or for ours when ours is longer; it fits by construction:
//!
//! - `k8s-accel-<resource name with / as _>.sock` when that fits (the default resource gives
//!   `k8s-accel-b-com.com_accelerator.sock`, 36 bytes);
//! - else `k8s-accel-<as much of that as fits>-<hash>.sock`, where `<hash>` is 8 lowercase hex digits of the
//!   FNV-1a 64-bit hash of the whole resource name, folded to 32 bits: unique per resource, the same in every
//!   run and every version (the surge hand-over and stale-socket clean-up depend on it);
//! - shortest: `k8s-accel-<hash>.sock`, 23 bytes. A directory longer than [`MAX_DIR`] bytes leaves no room
//!   for it: that configuration is refused at start.
//!
//! Every name starts with [`SOCKET_PREFIX`] and ends with `.sock`, which is how sockets of an earlier run are
//! recognised for clean-up.

use std::path::{Path, PathBuf};

/// Longest Unix socket path, in bytes, without the terminating NUL (Linux `sun_path` is 108 bytes).
pub const MAX_SOCKET_PATH: usize = 107;

/// Every socket name of ours starts with this.
pub const SOCKET_PREFIX: &str = "k8s-accel-";

const SUFFIX: &str = ".sock";

/// Hex digits of the hash in a shortened name.
const HASH_LEN: usize = 8;

/// The length, in bytes, of the longest kubelet directory a name is sized for when ours is shorter: the
/// longest known default (microk8s, 56 bytes) with room to spare.
pub const ASSUMED_KUBELET_DIR: usize = 64;

/// The shortest name we make: `k8s-accel-<hash>.sock`.
pub const MIN_NAME_LEN: usize = SOCKET_PREFIX.len() + HASH_LEN + SUFFIX.len();

/// The longest device-plugins directory, in bytes, that still leaves room for the shortest name.
pub const MAX_DIR: usize = MAX_SOCKET_PATH - 1 - MIN_NAME_LEN;

/// The device-plugins directory is too long for any socket name of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirTooLong {
    pub dir: PathBuf,
}

impl std::fmt::Display for DirTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the device-plugins directory {} is {} bytes long: a socket path in it must stay within {MAX_SOCKET_PATH} \
             bytes, which leaves no room for a socket name of {MIN_NAME_LEN} bytes (directories of up to {MAX_DIR} \
             bytes work)",
            self.dir.display(),
            self.dir.as_os_str().len()
        )
    }
}

impl std::error::Error for DirTooLong {}

/// Checks that `dir` leaves room for a socket name (see the module documentation).
pub fn check_dir(dir: &Path) -> Result<(), DirTooLong> {
    if dir.as_os_str().len() > MAX_DIR {
        return Err(DirTooLong { dir: dir.to_path_buf() });
    }
    Ok(())
}

/// The socket name for `resource_name` in `dir`: at most `107 − 1 − max(len(dir), 64)` bytes, so that
/// `<dir>/<name>` and the kubelet's `<its dir>/<name>` both fit.
pub fn socket_name(dir: &Path, resource_name: &str) -> Result<String, DirTooLong> {
    check_dir(dir)?;
    let budget = MAX_SOCKET_PATH - 1 - dir.as_os_str().len().max(ASSUMED_KUBELET_DIR);
    Ok(name_within(budget, resource_name))
}

/// The name for `resource_name` in at most `budget` bytes (`budget` ≥ [`MIN_NAME_LEN`]).
fn name_within(budget: usize, resource_name: &str) -> String {
    // Resource names are ASCII ([a-z0-9.-] domain, [A-Za-z0-9_.-] name), so byte slicing is safe; anything
    // else (never accepted by the command line) is replaced rather than trusted.
    let readable: String =
        resource_name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    let whole = format!("{SOCKET_PREFIX}{readable}{SUFFIX}");
    if whole.len() <= budget && readable.len() == resource_name.len() {
        return whole;
    }
    let hash = hash(resource_name);
    // Room for `<part>-` between the prefix and the hash.
    let room = budget.saturating_sub(MIN_NAME_LEN + 1);
    let part = &readable[..room.min(readable.len())];
    let part = part.trim_end_matches(['-', '.', '_']);
    if part.is_empty() {
        format!("{SOCKET_PREFIX}{hash}{SUFFIX}")
    } else {
        format!("{SOCKET_PREFIX}{part}-{hash}{SUFFIX}")
    }
}

/// FNV-1a, 64 bits, folded to 32 and printed as 8 hex digits. Fixed forever: names depend on it.
fn hash(text: &str) -> String {
    let h = fnv1a64(text.as_bytes());
    format!("{:08x}", (h >> 32) as u32 ^ h as u32)
}

/// The 64-bit FNV-1a hash (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Whether a process listens on the Unix socket at `path`. The connection attempt never blocks: a listener
/// whose backlog is full (a hung process) counts as live, a socket file whose process is gone refuses the
/// connection and counts as dead, and so does a missing file. When the check itself fails (no descriptor
/// left) the socket counts as live: callers then leave it alone, the safe side.
pub fn is_live(path: &Path) -> bool {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: all-zero bytes are a valid sockaddr_un.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return false; // no socket can be at such a path
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (to, from) in addr.sun_path.iter_mut().zip(bytes) {
        *to = *from as libc::c_char;
    }
    // SAFETY: plain syscall; the descriptor is owned right below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return true;
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_un of at least `len` bytes.
    let r = unsafe { libc::connect(fd.as_raw_fd(), std::ptr::addr_of!(addr).cast(), len) };
    r == 0 || matches!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EAGAIN | libc::EINPROGRESS))
}

/// The name versions before 0.2 gave the socket, whatever its length: `k8s-accel-<resource, / as _>.sock`.
/// A process of such a version takes no lock, so a new process also waits while this socket answers.
pub fn legacy_socket_name(resource_name: &str) -> String {
    format!("{SOCKET_PREFIX}{}{SUFFIX}", resource_name.replace('/', "_"))
}

/// Whether a file name in the device-plugins directory is a socket name of ours (of any run or version).
pub fn is_ours(file_name: &str) -> bool {
    file_name.starts_with(SOCKET_PREFIX) && file_name.ends_with(SUFFIX) && file_name.len() > MIN_NAME_LEN - HASH_LEN
}

/// The directory, inside the device-plugins directory, of the lock files that tell which process owns which
/// socket (see `instance`). A directory because the kubelet removes sockets, and older kubelets every
/// plain file, from the device-plugins directory when they start, but never a directory.
pub const LOCK_DIR: &str = "k8s-accel-locks";

/// The lock file that guards the socket named `socket_name` in `dir`.
pub fn lock_path(dir: &Path, socket_name: &str) -> PathBuf {
    let stem = socket_name.strip_suffix(SUFFIX).unwrap_or(socket_name);
    dir.join(LOCK_DIR).join(format!("{stem}.lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_of(len: usize) -> PathBuf {
        let mut s = String::from("/");
        while s.len() < len {
            s.push('d');
        }
        PathBuf::from(s)
    }

    /// The longest name the kubelet accepts: a 253-byte domain (with `requests.`), `/`, a 63-byte name.
    fn longest_resource_name() -> String {
        let label = "a".repeat(63);
        let domain = format!("{label}.{label}.{label}.{}", "b".repeat(52));
        assert_eq!(format!("requests.{domain}").len(), 253);
        format!("{domain}/{}", "n".repeat(63))
    }

    #[test]
    fn the_default_name_is_unchanged() {
        let name = socket_name(Path::new("/var/lib/kubelet/device-plugins"), "b-com.com/accelerator").unwrap();
        assert_eq!(name, "k8s-accel-b-com.com_accelerator.sock");
        // Under microk8s' directory too, so a DaemonSet's container and host agree.
        let microk8s = "/var/snap/microk8s/common/var/lib/kubelet/device-plugins";
        assert_eq!(socket_name(Path::new(microk8s), "b-com.com/accelerator").unwrap(), name);
    }

    #[test]
    fn every_name_fits_every_directory_up_to_the_limit_and_the_assumed_kubelet_dir() {
        let resources = [
            "b-com.com/accelerator".to_string(),
            format!("{}.com/{}", "a".repeat(36), "x".repeat(20)),
            format!("{}.example.com/{}", "a".repeat(30), "y".repeat(50)),
            longest_resource_name(),
        ];
        for len in 1..=MAX_DIR {
            let dir = dir_of(len);
            for r in &resources {
                let name = socket_name(&dir, r).unwrap();
                assert!(is_ours(&name), "{name}");
                assert!(!name.contains('/'));
                assert!(len + 1 + name.len() <= MAX_SOCKET_PATH, "{len}: {name}");
                assert!(ASSUMED_KUBELET_DIR + 1 + name.len() <= MAX_SOCKET_PATH, "{len}: {name}");
            }
        }
        assert!(socket_name(&dir_of(MAX_DIR + 1), "b-com.com/accelerator").is_err());
        let e = socket_name(&dir_of(104), "b-com.com/accelerator").unwrap_err().to_string();
        assert!(e.contains("104 bytes long") && e.contains("107"), "{e}");
    }

    #[test]
    fn shortened_names_are_readable_stable_and_distinct() {
        let dir = Path::new("/var/lib/kubelet/device-plugins");
        let long = longest_resource_name();
        let name = socket_name(dir, &long).unwrap();
        assert_eq!(name.len(), MAX_SOCKET_PATH - 1 - ASSUMED_KUBELET_DIR);
        assert!(name.starts_with("k8s-accel-aaaa"), "{name}");
        // The published FNV-1a test vectors, then the folding.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash("a"), format!("{:08x}", 0xaf63_dc4c_u32 ^ 0x8601_ec8c_u32));
        assert_eq!(
            socket_name(dir, "example.com/afu-d8424dc4a4a3c413f89e433683f9040b").unwrap(),
            "k8s-accel-example.com_afu-d8-bd9eb368.sock"
        );
        // Names that share the readable part still differ.
        let a = socket_name(dir, "example.com/afu-d8424dc4a4a3c413f89e433683f9040b").unwrap();
        let b = socket_name(dir, "example.com/afu-d8424dc4a4a3c413f89e433683f9040c").unwrap();
        assert_ne!(a, b);
        // The shortest form, in the longest directory.
        let shortest = socket_name(&dir_of(MAX_DIR), &long).unwrap();
        assert_eq!(shortest.len(), MIN_NAME_LEN);
    }

    #[test]
    fn liveness_never_blocks_and_tells_listening_from_stale() {
        let dir = std::env::temp_dir().join(format!("is-live-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        assert!(!is_live(&path), "missing");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(is_live(&path), "listening");
        // A listener that never accepts: its backlog fills up, and a blocking connect would hang.
        for _ in 0..5000 {
            is_live(&path);
        }
        assert!(is_live(&path), "a full backlog is live");
        drop(listener);
        assert!(path.exists());
        assert!(!is_live(&path), "a socket file nobody listens on");
        assert!(!is_live(&dir.join("x".repeat(200))), "too long for any socket");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lock_files_live_in_their_own_directory() {
        let p = lock_path(Path::new("/d"), "k8s-accel-b-com.com_accelerator.sock");
        assert_eq!(p, Path::new("/d/k8s-accel-locks/k8s-accel-b-com.com_accelerator.lock"));
        assert!(!is_ours("kubelet.sock"));
        assert!(!is_ours("k8s-accel-.sock"));
        assert!(is_ours("k8s-accel-b-com.com_accelerator.sock"));
    }
}
