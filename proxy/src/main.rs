//! `lattice-proxy`: the binary. Flags → config (exit 64 when invalid), tracing, crypto
//! provider, start, wait for SIGTERM/SIGINT, drain with a deadline.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use lattice_proxy::config::{Args, Config, LogFormat};
use lattice_proxy::{credentials, server};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

/// sysexits.h EX_USAGE: the configuration is wrong; restarting will not help.
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing(&args);
    let mut config = match Config::from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("invalid configuration: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    // One process-wide provider, so nothing can silently pick another backend.
    let _ = rustls::crypto::ring::default_provider().install_default();

    // The control runtime runs start-up, credentials, admin and signals; requests are
    // served by the worker runtimes that server::start spawns.
    let mut builder = tokio::runtime::Builder::new_current_thread();
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let (provider, region) = credentials::default_chain(config.region.clone()).await;
        config.region = region;
        if config.region.is_none() {
            tracing::error!(
                "invalid configuration: no AWS region; give --region or set AWS_REGION"
            );
            return Ok(ExitCode::from(EX_USAGE));
        }
        let provider = provider.context("the AWS config loader built no credentials provider")?;
        run(config, provider).await.map(|_| ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{}", lattice_proxy::error::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(
    config: Config,
    provider: aws_credential_types::provider::SharedCredentialsProvider,
) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let running = server::start(config, provider).await?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        revision = env!("LATTICE_EGRESS_REVISION"),
        "lattice-proxy started"
    );
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    running.shutdown().await;
    tracing::info!("lattice-proxy stopped");
    Ok(())
}

fn init_tracing(args: &Args) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: log collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
