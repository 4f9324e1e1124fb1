//! `lattice-emulator`: runs the VPC Lattice emulator (and optional fake EKS Pod Identity
//! agents) from a JSON configuration file until SIGINT or SIGTERM.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::Parser;
use lattice_tests::{
    config::FileConfig,
    pod_identity::{self, PodIdentityAgent},
    Clock, Emulator, EmulatorOptions, Listener,
};
use tracing::info;

/// Exit code for an invalid configuration (EX_USAGE from sysexits.h).
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "VPC Lattice emulator: SigV4, IAM auth policies, TLS with a private CA"
)]
struct Args {
    /// JSON configuration file (see the crate documentation for the format).
    #[arg(long, short, env = "LATTICE_EMULATOR_CONFIG")]
    config: PathBuf,
    /// Write the private CA certificate (PEM) here; overrides `ca_cert_out` of the file.
    #[arg(long)]
    ca_out: Option<PathBuf>,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let clock = Clock::system();
    let (file, model) = match FileConfig::load(&args.config, clock.now()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("lattice-emulator: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check {
        println!("{}: configuration is valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lattice-emulator: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, file, model, clock)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lattice-emulator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    args: Args,
    file: FileConfig,
    model: lattice_tests::config::Model,
    clock: Clock,
) -> anyhow::Result<()> {
    let options = EmulatorOptions {
        base_dir: args.config.parent().map(PathBuf::from),
        clock: clock.clone(),
        ..EmulatorOptions::default()
    };
    let registry = model.registry.clone();
    let emulator = Emulator::from_model(model, options)?;
    if let Some(path) = args.ca_out.as_ref().or(file.ca_cert_out.as_ref()) {
        std::fs::write(path, emulator.ca_certificate_pem())
            .with_context(|| format!("cannot write the CA certificate to '{}'", path.display()))?;
        info!(path = %path.display(), "CA certificate written");
    }
    let mut listeners = Vec::new();
    for listener in &file.listeners {
        listeners.push(
            Listener::bind_in(
                listener.address,
                listener.protocol,
                listener.netns.as_deref(),
            )
            .await?,
        );
    }
    let mut agents = Vec::new();
    for agent in &file.pod_identity_agents {
        let credential = registry
            .get(&agent.access_key_id)
            .cloned()
            .with_context(|| {
                format!(
                    "access key '{}' vanished from the registry",
                    agent.access_key_id
                )
            })?;
        let socket = lattice_tests::netns::bind(agent.address, agent.netns.as_deref())
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} for the pod identity agent",
                    agent.address
                )
            })?;
        agents.push(pod_identity::serve(
            socket,
            PodIdentityAgent {
                token: agent.token.clone(),
                credential,
                clock: clock.clone(),
            },
        )?);
    }
    let handle = emulator.serve(listeners);
    // The bound addresses on stdout (ports chosen by the kernel when configured as 0), then
    // `ready`: what a supervising script or test waits for.
    let mut announce = String::new();
    for (address, protocol) in handle.local_addrs() {
        announce.push_str(&format!("listening {protocol} {address}\n"));
    }
    for agent in &agents {
        announce.push_str(&format!("pod-identity {}\n", agent.credentials_uri()));
    }
    announce.push_str("ready\n");
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(announce.as_bytes())
            .and_then(|()| stdout.flush())
            .context("cannot write the listening addresses to stdout")?;
    }
    info!("lattice emulator ready");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
        _ = sigterm.recv() => info!("SIGTERM: shutting down"),
    }
    handle.shutdown().await;
    for agent in agents {
        agent.shutdown().await;
    }
    Ok(())
}
