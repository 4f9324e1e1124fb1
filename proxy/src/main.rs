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

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("lattice-proxy")
        .build()
    {
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
            tracing::error!("invalid configuration: no AWS region; give --region or set AWS_REGION");
            return Ok(ExitCode::from(EX_USAGE));
        }
        let provider = provider.context("the AWS config loader built no credentials provider")?;
        run(config, provider).await.map(|_| ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
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
    tracing::info!("lattice-proxy started");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    running.shutdown().await;
    tracing::info!("lattice-proxy stopped");
    Ok(())
}

fn init_tracing(args: &Args) {
    let default = if args.log_signing_process {
        // aws-sigv4 traces the canonical request with the session token redacted.
        "info,aws_sigv4=trace"
    } else {
        "info"
    };
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    if args.log_signing_process {
        if let Ok(d) = "aws_sigv4=trace".parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
