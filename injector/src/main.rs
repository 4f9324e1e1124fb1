//! `lattice-injector`: thin main — flags, settings (exit 64 when invalid), the serving
//! certificate, the listeners, the caBundle publisher, and a SIGTERM that first turns
//! `/readyz` off so the Service stops sending reviews before the process exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use lattice_injector::metrics::Metrics;
use lattice_injector::serve::State;
use lattice_injector::settings::Settings;
use lattice_injector::{certs, publish, serve};
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("LATTICE_EGRESS_REVISION"), ")"),
    about = "Mutating admission webhook: adds the lattice-proxy native sidecar to opted-in pods",
    after_help = "Exit status: 0 stopped by SIGTERM or SIGINT; 1 a failure the error line names \
                  (a port in use, no Kubernetes client configuration); 2 a malformed command \
                  line; 64 an invalid settings file: restarting will not help."
)]
struct Args {
    /// The webhook's HTTPS address.
    #[arg(long, env = "LATTICE_INJECTOR_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Plain-HTTP admin address: /healthz, /readyz, /metrics.
    #[arg(long, env = "LATTICE_INJECTOR_ADMIN", default_value = "0.0.0.0:9090")]
    admin: SocketAddr,
    /// Settings file (TOML; the ConfigMap). Without it, the built-in defaults (those of
    /// deploy/components/sidecar).
    #[arg(long, env = "LATTICE_INJECTOR_SETTINGS")]
    settings: Option<PathBuf>,
    /// The Service the API server calls: the generated certificate's names.
    #[arg(
        long,
        env = "LATTICE_INJECTOR_SERVICE",
        default_value = "lattice-injector"
    )]
    service: String,
    /// The Service's namespace (the downward API's metadata.namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "lattice-egress")]
    namespace: String,
    /// The MutatingWebhookConfiguration whose caBundle gets the generated CA.
    #[arg(
        long,
        env = "LATTICE_INJECTOR_WEBHOOK_CONFIG",
        default_value = "lattice-injector"
    )]
    webhook_config: String,
    /// A mounted certificate chain (PEM, e.g. from cert-manager): no generation, no
    /// publishing (cert-manager's CA injector fills the caBundle).
    #[arg(long, env = "LATTICE_INJECTOR_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The mounted certificate's private key (PEM).
    #[arg(long, env = "LATTICE_INJECTOR_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// After SIGTERM, how long /readyz fails while reviews are still answered.
    #[arg(long, env = "LATTICE_INJECTOR_SHUTDOWN_DELAY", default_value_t = 5)]
    shutdown_delay_seconds: u64,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        // Colours only on a terminal: a log file or a container log gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let settings = match &args.settings {
        Some(path) => match Settings::load(path) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e}");
                return std::process::ExitCode::from(64);
            }
        },
        None => Settings::default(),
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match runtime.block_on(run(args, settings)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, settings: Settings) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let serving = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => certs::load(cert, key)?,
        _ => certs::generate(&certs::service_names(&args.service, &args.namespace))?,
    };
    let tls = certs::server_config(&serving)?;
    // Only a generated certificate is published; fail before serving when it cannot be.
    let client = match serving.ca_pem {
        Some(_) => Some(kube::Client::try_default().await.context(
            "no Kubernetes client configuration (in-cluster or kubeconfig) to publish the caBundle",
        )?),
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(serving.ca_pem.is_none()));
    if serving.ca_pem.is_none() {
        metrics.ca_published.set(1);
    }
    let state = Arc::new(State {
        settings,
        metrics: metrics.clone(),
        ready: ready.clone(),
    });
    let webhook = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let admin = TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("cannot listen on {}", args.admin))?;
    // The bound addresses (a port 0 in the flags becomes the one the kernel picked).
    let listen = webhook.local_addr().unwrap_or(args.listen);
    let admin_addr = admin.local_addr().unwrap_or(args.admin);
    tracing::info!(%listen, admin = %admin_addr, service = %args.service,
        namespace = %args.namespace, "lattice-injector serving");
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(serve::serve_tls(webhook, tls, state.clone()));
    tasks.spawn(serve::serve_admin(admin, state));
    if let (Some(ca_pem), Some(client)) = (serving.ca_pem, client) {
        tasks.spawn(publish::keep_published(
            client,
            args.webhook_config.clone(),
            ca_pem,
            ready.clone(),
            metrics,
        ));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    ready.store(false, Ordering::SeqCst);
    tracing::info!(
        delay = args.shutdown_delay_seconds,
        "terminating: not ready, then exit"
    );
    tokio::time::sleep(Duration::from_secs(args.shutdown_delay_seconds)).await;
    tasks.abort_all();
    Ok(())
}
