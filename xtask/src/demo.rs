//! `cargo xtask demo`: the two-cluster VPC Lattice scenario on one machine.
//!
//! Builds what the scenario runs (the eBPF object, lattice-redirector, lattice-proxy, the
//! Lattice emulator, the demo app and the `lattice-demo` driver, debug profile so the test
//! suite shares the build), then replaces itself with `lattice-demo`, which sets up the
//! namespaces, cgroups and processes, runs the seed's four calls and tears down. The scenario
//! itself lives in `lattice_tests::demo` (tests/src/demo.rs), shared with the end-to-end test
//! `tests/tests/demo.rs`; keeping it out of xtask keeps the emulator's dependencies out of
//! every other xtask build.
//!
//! `--kubernetes` runs the variant whose pods come from a (fake) Kubernetes API server per
//! cluster and whose agents run in Kubernetes mode as deploy/base/daemonset.yaml starts them
//! (`tests/tests/demo_kubernetes.rs` is its test); it renders this checkout's `deploy/` with
//! `kubectl kustomize`.

use crate::{ebpf, setup, setup::step};
use anyhow::{Context, Result};
use clap::Args;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

/// Options of `cargo xtask demo`.
#[derive(Debug, Args)]
pub struct Demo {
    /// Leave everything running and print how to try more by hand.
    #[arg(long, conflicts_with = "down")]
    pub keep: bool,
    /// Tear down what a `--keep` run (or a crashed one) left, and nothing else (either
    /// variant).
    #[arg(long)]
    pub down: bool,
    /// The Kubernetes variant: every pod from a Kubernetes API (one fake API server per
    /// cluster, pods of the rendered deploy/examples/seed created through lattice-injector,
    /// the admission webhook, which adds the sidecar), kubelet-like cgroup trees, one agent
    /// per cluster in Kubernetes mode; adds a fifth check (a deleted pod is no longer
    /// redirected).
    #[arg(long, conflicts_with = "down")]
    pub kubernetes: bool,
}

/// Runs the demo (see the module documentation).
pub fn run(opts: &Demo) -> Result<()> {
    setup::require_root("cargo xtask demo")?;
    let root = setup::workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = target_dir(&cargo)?;
    let bin_dir = target.join("debug");

    // What the scenario runs besides our binaries, with the Debian package providing it.
    let missing: Vec<&str> = [
        ("ip", "iproute2"),
        ("setpriv", "util-linux"),
        ("curl", "curl"),
    ]
    .iter()
    .filter(|(tool, _)| !on_path(tool))
    .map(|(_, package)| *package)
    .collect();
    if !missing.is_empty() {
        setup::apt_install(&missing)?;
    }
    if opts.kubernetes && !on_path("kubectl") {
        anyhow::bail!(
            "`cargo xtask demo --kubernetes` renders deploy/ with `kubectl kustomize`, and \
             kubectl is not on PATH: install kubectl (1.27 or newer; it has no Debian package)"
        );
    }

    if opts.down {
        if !bin_dir.join("lattice-demo").is_file() {
            step("building lattice-demo");
            setup::run(Command::new(&cargo).current_dir(&root).args([
                "build",
                "-p",
                "lattice-tests",
                "--bin",
                "lattice-demo",
            ]))?;
        }
    } else {
        ebpf::run(&ebpf::BuildEbpf {})?;
        step(
            "building lattice-redirector, lattice-proxy, lattice-injector, the Lattice \
             emulator, the demo app, the demo's API server and lattice-demo (debug profile; the first build takes a \
             few minutes)",
        );
        setup::run(Command::new(&cargo).current_dir(&root).args([
            "build",
            "-p",
            "lattice-redirector",
            "-p",
            "lattice-proxy",
            "-p",
            "lattice-injector",
            "-p",
            "lattice-tests",
            "--bins",
        ]))
        .context("building the demo's programs failed (see the compiler output above)")?;
    }

    let demo = bin_dir.join("lattice-demo");
    let mut cmd = Command::new(&demo);
    // Configuration and logs go to target/le-demo (lattice-demo's default).
    cmd.arg("--bin-dir")
        .arg(&bin_dir)
        .args(["--down-command", "cargo xtask demo --down"]);
    if opts.keep {
        cmd.arg("--keep");
    }
    if opts.kubernetes {
        cmd.arg("--kubernetes")
            .arg("--deploy-dir")
            .arg(root.join("deploy"));
    }
    if opts.down {
        cmd.arg("--down");
    } else if opts.kubernetes {
        step("starting the scenario, Kubernetes variant (lattice-demo --kubernetes)");
    } else {
        step("starting the scenario (lattice-demo)");
    }
    // Replace xtask, so that Ctrl-C and the exit status belong to the demo alone.
    let err = cmd.exec();
    Err(err).with_context(|| format!("cannot run {}", demo.display()))
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// The workspace's target directory as cargo resolves it (CARGO_TARGET_DIR, config).
fn target_dir(cargo: &std::ffi::OsStr) -> Result<PathBuf> {
    let meta = setup::output(
        Command::new(cargo)
            .current_dir(setup::workspace_root())
            .args([
                "metadata",
                "--format-version",
                "1",
                "--no-deps",
                "--offline",
            ]),
    )
    .context("`cargo metadata` failed; cannot find the target directory")?;
    let key = "\"target_directory\":\"";
    let start = meta
        .find(key)
        .map(|i| i + key.len())
        .context("`cargo metadata` printed no target_directory")?;
    let end = meta[start..]
        .find('"')
        .context("`cargo metadata` printed a truncated target_directory")?;
    Ok(PathBuf::from(&meta[start..start + end]))
}
