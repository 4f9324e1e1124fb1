//! Facts about the host: where cgroup2 and bpffs are mounted, the kernel version, our
//! capabilities, and the cgroup id of a path.

use crate::error::{Error, Result};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Unescapes the octal escapes (`\040` for space…) of /proc/self/mounts.
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

/// Mount points of filesystems of type `fstype`, from `/proc/self/mounts`.
pub fn mounts_of(fstype: &str) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_dev, dir, ty) = (f.next()?, f.next()?, f.next()?);
            (ty == fstype).then(|| PathBuf::from(unescape(dir)))
        })
        .collect()
}

/// The cgroup v2 mount (never hard-coded: hybrid hosts mount it at /sys/fs/cgroup/unified).
pub fn cgroup2_mount() -> Result<PathBuf> {
    mounts_of("cgroup2")
        .into_iter()
        .next()
        .ok_or_else(|| Error::Host {
            what: "no cgroup2 filesystem is mounted: the programs attach to cgroup v2; mount it \
               with `mount -t cgroup2 none /sys/fs/cgroup` (or boot with \
               systemd.unified_cgroup_hierarchy=1)"
                .into(),
        })
}

/// Makes sure `dir` is a bpffs mount, mounting one there when it is not.
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    if mounts_of("bpf").iter().any(|m| m == dir) {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    nix::mount::mount(
        Some("bpf"),
        dir,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| Error::Host {
        what: format!(
            "bpffs is not mounted at {} and mounting it failed ({e}); mount it with \
             `mount -t bpf bpf {}` (in a DaemonSet: mount the host's /sys/fs/bpf)",
            dir.display(),
            dir.display()
        ),
    })
}

/// The bpffs mount that holds `dir`, if any.
pub fn bpffs_holding(dir: &Path) -> Option<PathBuf> {
    mounts_of("bpf")
        .into_iter()
        .filter(|m| dir.starts_with(m))
        .max_by_key(|m| m.as_os_str().len())
}

/// The cgroup v2 id of a cgroup directory: its inode number, as
/// `bpf_get_current_cgroup_id()` reports it.
pub fn cgroup_id(path: &Path) -> Result<u64> {
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(Error::io(path))
}

/// The running kernel's (major, minor).
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = nix::sys::utsname::uname().ok()?;
    let release = release.release().to_string_lossy().into_owned();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The oldest kernel with everything the programs use: bpf links for cgroups (5.7),
/// getpeername hooks (5.8) and bpf_get_netns_cookie in sock_ops and sockopt programs (5.15).
pub const MIN_KERNEL: (u32, u32) = (5, 15);

/// Effective capabilities of this process (bit mask from /proc/self/status).
pub fn effective_caps() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// Capability numbers from linux/capability.h.
pub mod cap {
    pub const NET_ADMIN: u32 = 12;
    pub const SYS_ADMIN: u32 = 21;
    pub const PERFMON: u32 = 38;
    pub const BPF: u32 = 39;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mount_points() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/sys/fs/cgroup/unified"), "/sys/fs/cgroup/unified");
    }
}
