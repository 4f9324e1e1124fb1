//! `cargo xtask demo`: the two-cluster VPC Lattice scenario on one machine.

use clap::Args;

/// Options of `cargo xtask demo`.
#[derive(Debug, Args)]
pub struct Demo {
    /// Leave everything running and print how to try more by hand.
    #[arg(long)]
    pub keep: bool,
}

pub fn run(_opts: &Demo) -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask demo` is not implemented yet (issue 4)")
}
