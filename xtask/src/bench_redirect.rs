//! `cargo xtask bench redirect`.
use clap::Args;
/// Options of `cargo xtask bench redirect`.
#[derive(Debug, Args)]
pub struct BenchRedirect {}
pub fn run(_opts: &BenchRedirect) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
