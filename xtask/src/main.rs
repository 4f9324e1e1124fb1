//! Project tasks: `cargo xtask build-ebpf | test | bench | demo | fuzz`.
//!
//! Every task installs what it needs on a fresh machine by itself and says what it is doing.

mod bench_proxy;
mod bench_redirect;
mod bench_soak;
mod demo;
mod ebpf;
mod fuzz;
mod image;
mod setup;
mod test;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "lattice-egress build, test and benchmark tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Build the eBPF programs (installs rust-src and bpf-linker when missing).
    BuildEbpf(ebpf::BuildEbpf),
    /// The two-cluster VPC Lattice scenario with the emulator, allowed and denied calls.
    Demo(demo::Demo),
    /// OCI images of the binaries (static), written without a daemon into target/images/;
    /// `--check` verifies them with skopeo and umoci.
    Image(image::Image),
    /// Fuzz the proxy's signer, allow-list, header filter and configuration, the agent's
    /// configuration and the emulator's policies (installs cargo-fuzz when missing).
    Fuzz(fuzz::Fuzz),
    /// Run the whole test suite (needs root for the kernel tests).
    Test(test::Test),
    /// The redirector on the EKS 6.1 kernel line, booted with qemu.
    VmTest(vm::VmTest),
    /// The measuring loop of `bench redirect` (run inside the case's namespace).
    #[command(hide = true)]
    BenchLoop(bench_redirect::Loop),
    /// Benchmarks that compare side by side in one run.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Connect+accept+close: direct vs eBPF redirect vs iptables REDIRECT.
    Redirect(bench_redirect::BenchRedirect),
    /// Keep-alive GETs: lattice-proxy vs nginx vs direct TLS.
    Proxy(bench_proxy::BenchProxy),
    /// Long runs: 10 000 open connections, 1 000 000 signed requests (RSS drift), clients
    /// vanishing mid-request (descriptor leaks), a 50 000-connect storm through the redirect.
    Soak(bench_soak::BenchSoak),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::BuildEbpf(opts) => ebpf::run(&opts).map(|_| ()),
        Task::Demo(opts) => demo::run(&opts),
        Task::Image(opts) => image::run(&opts),
        Task::Fuzz(opts) => fuzz::run(&opts),
        Task::Test(opts) => test::run(&opts),
        Task::VmTest(opts) => vm::run(&opts),
        Task::BenchLoop(opts) => bench_redirect::run_loop(&opts),
        Task::Bench { which } => match which {
            Bench::Redirect(opts) => bench_redirect::run(&opts),
            Bench::Proxy(opts) => bench_proxy::run(&opts),
            Bench::Soak(opts) => bench_soak::run(&opts),
        },
    };
    if let Err(err) = result {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}
