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
    freshen(&object, &root)?;
    step(&format!("eBPF object: {}", object.display()));
    Ok(object)
}

/// Cargo leaves the object alone when a change (a manifest's `rust-version`, say) does not
/// alter what it builds; the agent's build.rs would then call the object stale forever.
/// Cargo has just judged it current, so give it the time of the newest source.
fn freshen(object: &std::path::Path, root: &std::path::Path) -> Result<()> {
    fn newest(path: &std::path::Path) -> std::time::SystemTime {
        let own = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
        match std::fs::read_dir(path) {
            Ok(entries) => entries
                .flatten()
                .map(|e| newest(&e.path()))
                .fold(own, std::cmp::max),
            Err(_) => own,
        }
    }
    let sources = [
        "redirector-ebpf/src",
        "redirector-ebpf/Cargo.toml",
        "redirector-ebpf/Cargo.lock",
        "redirector-common/src",
        "redirector-common/Cargo.toml",
    ];
    let newest_source = sources
        .iter()
        .map(|s| newest(&root.join(s)))
        .fold(std::time::SystemTime::UNIX_EPOCH, std::cmp::max);
    if newest(object) < newest_source {
        std::fs::File::options()
            .write(true)
            .open(object)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()))
            .with_context(|| format!("updating the time of {}", object.display()))?;
    }
    Ok(())
}
