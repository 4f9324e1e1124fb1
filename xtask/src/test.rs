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
    /// Run the test suites (cargo test, then the VM check) this many times and stop at the
    /// first failure: a test that passes or fails by timing shows up here.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Extra arguments passed to `cargo test` (after `--` for the test binaries use
    /// `cargo xtask test -- -- NAME`).
    #[arg(last = true)]
    pub cargo_args: Vec<String>,
}

/// Debian packages the tests use: ip (netns), setpriv, curl (demo checks), iptables and
/// conntrack (only the benchmarks, but cheap), python3 for botocore.
const PACKAGES: &[&str] = &["iproute2", "util-linux", "curl", "iptables", "conntrack"];

/// Makes sure `python3` can import `module`, installing `requirement` with pip when not;
/// `what` says what the tests use it for.
fn ensure_python_module(module: &str, requirement: &str, what: &str) -> Result<()> {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        return Ok(());
    }
    step(&format!("installing {requirement} for python3 ({what})"));
    setup::run(Command::new("python3").args(["-m", "pip", "install", "--quiet", requirement]))
        .with_context(|| format!("run `python3 -m pip install '{requirement}'`"))
}

/// Makes sure botocore (the independent SigV4 oracle) is importable by `python3`.
pub fn ensure_botocore() -> Result<()> {
    ensure_python_module("botocore", "botocore", "the independent SigV4 oracle")
}

/// Makes sure kubernetes-validate (strict Kubernetes schemas) is importable by `python3`:
/// the deploy tests validate the rendered manifests with it. 1.37.x has the schemas of
/// Kubernetes 1.25 to 1.37 (the tests use 1.27, 1.29, 1.33).
pub fn ensure_kubernetes_validate() -> Result<()> {
    ensure_python_module(
        "kubernetes_validate",
        "kubernetes-validate~=1.37.0",
        "schemas for the deploy/ manifests",
    )
}

pub fn run(opts: &Test) -> Result<()> {
    setup::require_root("cargo xtask test")?;
    setup::apt_install(PACKAGES)?;
    ensure_botocore()?;
    ensure_kubernetes_validate()?;
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
    let mut totals = Totals::default();
    for run in 1..=opts.repeat {
        let of = if opts.repeat > 1 {
            format!(" (run {run} of {})", opts.repeat)
        } else {
            String::new()
        };
        step(&format!(
            "cargo test --workspace{of} (kernel tests need root: running as root)"
        ));
        let this = cargo_test(&root, &opts.cargo_args)?;
        totals.add(&this);
        if this.failed > 0 {
            println!(
                "total: {} passed, {} failed, {} skipped",
                totals.passed, totals.failed, totals.ignored
            );
            anyhow::bail!("{} test(s) failed{of} (see above)", this.failed);
        }
        if run == 1 {
            step("the OCI images: static builds, written twice, read by skopeo and umoci");
            crate::image::run(&crate::image::Image {
                check: true,
                ..Default::default()
            })
            .context("the image check failed (see above); `cargo xtask image --check` reruns it")?;
        }
        if !opts.no_vm {
            step(&format!(
                "the redirector on Debian's 6.1 kernel (the EKS AL2023/Bottlerocket line), in qemu{of}"
            ));
            crate::vm::run(&crate::vm::VmTest::default()).with_context(|| {
                format!(
                    "the 6.1 kernel check failed{of} (see above); `cargo xtask vm-test` reruns it"
                )
            })?;
        }
    }
    // One closing line over every test binary (the last cargo line is often a doc-test
    // binary with nothing in it).
    println!(
        "total: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    Ok(())
}

/// Sums of the `test result:` lines of a cargo test run.
#[derive(Debug, Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    fn add(&mut self, other: &Totals) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
    }
}

/// Runs `cargo test --workspace`, passing its output through, and adds up the results.
fn cargo_test(root: &std::path::Path, extra: &[String]) -> Result<Totals> {
    use std::io::BufRead;
    let mut child = Command::new("cargo")
        .current_dir(root)
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("could not start cargo test")?;
    let mut totals = Totals::default();
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.trim().strip_prefix("test result: ") {
            for part in rest.split([';', '.']) {
                let mut words = part.split_whitespace();
                if let (Some(n), Some(what)) = (words.next(), words.next()) {
                    let n: u64 = n.parse().unwrap_or(0);
                    match what {
                        "passed" => totals.passed += n,
                        "failed" => totals.failed += n,
                        "ignored" => totals.ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait()?;
    if !status.success() && totals.failed == 0 {
        anyhow::bail!("cargo test failed with {status} (a build error? see above)");
    }
    Ok(totals)
}
