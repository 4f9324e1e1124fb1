//! `cargo xtask test`: everything CI runs, from a fresh machine: Debian packages, the eBPF
//! toolchain and object, formatting and lints, then the whole test suite (unit tests, the
//! kernel tests in their own cgroups and network namespaces, the proxy and emulator tests
//! against botocore, and the end-to-end demo).

use crate::ebpf;
use crate::setup::{self, step};
use anyhow::{Context, Result};
use clap::Args;
use std::process::Command;

/// Options of `cargo xtask test`.
#[derive(Debug, Args)]
pub struct Test {
    /// Skip `cargo fmt --check` and `cargo clippy -D warnings`.
    #[arg(long)]
    pub no_lint: bool,
    /// Skip `cargo xtask vm-test` (the redirector and its kernel tests on the EKS 6.1
    /// kernel line, under qemu).
    #[arg(long)]
    pub no_vm: bool,
    /// Extra arguments passed to `cargo test` (after `--` for the test binaries use
    /// `cargo xtask test -- -- NAME`).
    #[arg(last = true)]
    pub cargo_args: Vec<String>,
}

/// Debian packages the tests use: ip (netns), setpriv, curl (demo checks), iptables and
/// conntrack (only the benchmarks, but cheap), python3 for botocore.
const PACKAGES: &[&str] = &["iproute2", "util-linux", "curl", "iptables", "conntrack"];

/// Makes sure botocore (the independent SigV4 oracle) is importable by `python3`.
pub fn ensure_botocore() -> Result<()> {
    let ok = Command::new("python3")
        .args(["-c", "import botocore"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        return Ok(());
    }
    step("installing botocore for python3 (the independent SigV4 oracle)");
    setup::run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "botocore"]))
        .context("run `python3 -m pip install botocore`")
}

pub fn run(opts: &Test) -> Result<()> {
    setup::require_root("cargo xtask test")?;
    setup::apt_install(PACKAGES)?;
    ensure_botocore()?;
    ebpf::run(&ebpf::BuildEbpf {})?;
    let root = setup::workspace_root();
    if !opts.no_lint {
        step("cargo fmt --check");
        setup::run(
            Command::new("cargo")
                .current_dir(&root)
                .args(["fmt", "--all", "--check"]),
        )
        .context("formatting differs: run `cargo fmt --all`")?;
        step("cargo clippy --workspace --all-targets -- -D warnings");
        setup::run(Command::new("cargo").current_dir(&root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
        .context("clippy found problems (see above)")?;
    }
    step("building the binaries the end-to-end tests run");
    setup::run(
        Command::new("cargo")
            .current_dir(&root)
            .args(["build", "--workspace", "--bins"]),
    )?;
    step("cargo test --workspace (kernel tests need root: running as root)");
    setup::run(
        Command::new("cargo")
            .current_dir(&root)
            .args(["test", "--workspace", "--no-fail-fast"])
            .args(&opts.cargo_args),
    )
    .context("tests failed (see above)")?;
    if !opts.no_vm {
        step("the redirector on Debian's 6.1 kernel (the EKS AL2023/Bottlerocket line), in qemu");
        crate::vm::run(&crate::vm::VmTest::default())
            .context("the 6.1 kernel check failed (see above); `cargo xtask vm-test` reruns it")?;
    }
    Ok(())
}
