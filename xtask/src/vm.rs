//! `cargo xtask vm-test`: the redirector on Debian's 6.1 kernel (EKS AL2023/Bottlerocket line)
//! under qemu.

use clap::Args;

/// Options of `cargo xtask vm-test`.
#[derive(Debug, Args)]
pub struct VmTest {}

pub fn run(_opts: &VmTest) -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask vm-test` is not implemented yet")
}
