//! `cargo xtask test`.
use clap::Args;
/// Options of `cargo xtask test`.
#[derive(Debug, Args)]
pub struct Test {}
pub fn run(_opts: &Test) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
