//! `cargo xtask demo`: the two-cluster VPC Lattice scenario on one machine.
//!
//! Builds what the scenario runs (the eBPF object, lattice-redirector, lattice-proxy, the
//! Lattice emulator, the demo app and the `lattice-demo` driver, debug profile so the test
//! suite shares the build), then replaces itself with `lattice-demo`, which sets up the
//! namespaces, cgroups and processes, runs the seed's four calls and tears down. The scenario
//! itself lives in `lattice_tests::demo` (tests/src/demo.rs), shared with the end-to-end test
//! `tests/tests/demo.rs`; keeping it out of xtask keeps the emulator's dependencies out of
//! every other xtask build.

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
    /// Tear down what a `--keep` run (or a crashed one) left, and nothing else.
    #[arg(long)]
    pub down: bool,
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
            "building lattice-redirector, lattice-proxy, the Lattice emulator, the demo app \
             and lattice-demo (debug profile; the first build takes a few minutes)",
        );
        setup::run(Command::new(&cargo).current_dir(&root).args([
            "build",
            "-p",
            "lattice-redirector",
            "-p",
            "lattice-proxy",
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
    if opts.down {
        cmd.arg("--down");
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
