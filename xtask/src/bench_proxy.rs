//! `cargo xtask bench proxy`: lattice-proxy against nginx and a direct TLS baseline.

use clap::Args;

/// Options of `cargo xtask bench proxy`.
#[derive(Debug, Args)]
pub struct BenchProxy {}

pub fn run(_opts: &BenchProxy) -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask bench proxy` is not implemented yet (issue 3)")
}
