//! `lattice-redirector doctor`: one line per host check, ok or what is wrong and how to fix it.

use crate::host::{self, cap};
use crate::install;
use std::path::Path;

/// One check's outcome.
pub struct Check {
    pub name: &'static str,
    pub result: Result<String, String>,
}

/// Runs every check. `bpffs` is where the agent pins.
pub fn run(bpffs: &Path) -> Vec<Check> {
    let mut checks = Vec::new();
    let (min_major, min_minor) = host::MIN_KERNEL;
    checks.push(Check {
        name: "kernel",
        result: match host::kernel_version() {
            Some(v) if v >= host::MIN_KERNEL => Ok(format!("{}.{}", v.0, v.1)),
            Some(v) => Err(format!(
                "{}.{} is older than {min_major}.{min_minor} (cgroup bpf links, getpeername \
                 hooks, netns cookies in sock_ops/sockopt): use an AL2023 or Bottlerocket node",
                v.0, v.1
            )),
            None => Err("cannot read the kernel version from uname".into()),
        },
    });
    checks.push(Check {
        name: "btf",
        result: if Path::new("/sys/kernel/btf/vmlinux").exists() {
            Ok("/sys/kernel/btf/vmlinux".into())
        } else {
            Err("no /sys/kernel/btf/vmlinux: build the kernel with CONFIG_DEBUG_INFO_BTF=y".into())
        },
    });
    checks.push(Check {
        name: "cgroup2",
        result: host::cgroup2_mount()
            .map(|p| format!("mounted at {}", p.display()))
            .map_err(|e| e.to_string()),
    });
    checks.push(Check {
        name: "bpffs",
        result: if host::mounts_of("bpf").iter().any(|m| m == bpffs) {
            Ok(format!("mounted at {}", bpffs.display()))
        } else {
            Err(format!(
                "not mounted at {} (the agent mounts it at start; in a pod, mount the host's \
                 /sys/fs/bpf with mountPropagation: Bidirectional)",
                bpffs.display()
            ))
        },
    });
    let caps = host::effective_caps();
    let has = |c: u32| caps & (1u64 << c) != 0;
    checks.push(Check {
        name: "capabilities",
        result: if has(cap::SYS_ADMIN)
            || (has(cap::BPF) && has(cap::NET_ADMIN) && has(cap::PERFMON))
        {
            Ok(format!("CapEff {caps:#x}"))
        } else {
            Err(format!(
                "CapEff {caps:#x} lacks CAP_BPF+CAP_NET_ADMIN+CAP_PERFMON or CAP_SYS_ADMIN: run \
                 as root or grant them in the DaemonSet's securityContext"
            ))
        },
    });
    for (name, result) in install::test_load(install::OBJECT) {
        checks.push(Check {
            name,
            result: result
                .map(|()| "loads and passes the verifier".to_string())
                .map_err(|e| format!("{e:#}")),
        });
    }
    checks
}
