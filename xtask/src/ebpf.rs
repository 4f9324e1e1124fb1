//! `cargo xtask build-ebpf`: builds redirector-ebpf for bpfel-unknown-none with nightly.

use crate::setup::{self, step};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::process::Command;

/// Options of `cargo xtask build-ebpf`.
#[derive(Debug, Args)]
pub struct BuildEbpf {}

/// The object the agent embeds (its build script checks it is newer than the sources).
pub fn object_path() -> PathBuf {
    setup::workspace_root().join("target/ebpf/bpfel-unknown-none/release/redirector-ebpf")
}

/// Prepares the toolchain and builds the eBPF object; returns its path.
pub fn run(_opts: &BuildEbpf) -> Result<PathBuf> {
    let toolchain = setup::ebpf_toolchain()?;
    let root = setup::workspace_root();
    step("building redirector-ebpf (nightly, bpfel-unknown-none, -Z build-std=core)");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![toolchain.linker_bin.clone()];
    paths.extend(std::env::split_paths(&path));
    setup::run(
        Command::new("cargo")
            .current_dir(root.join("redirector-ebpf"))
            .args([
                "+nightly",
                "build",
                "--release",
                "--target",
                "bpfel-unknown-none",
            ])
            .args(["-Z", "build-std=core", "--locked"])
            .arg("--target-dir")
            .arg(root.join("target/ebpf"))
            .env("PATH", std::env::join_paths(paths)?)
            // The host build's flags (e.g. from CI) must not leak into the BPF build.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTC_WRAPPER"),
    )
    .context("building the eBPF programs failed (see the compiler output above)")?;
    let object = object_path();
    anyhow::ensure!(
        object.is_file(),
        "the eBPF build succeeded but {} is missing",
        object.display()
    );
    step(&format!("eBPF object: {}", object.display()));
    Ok(object)
}
