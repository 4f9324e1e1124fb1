//! The upstream TLS trust, and its reload when the CA bundle file (`--ca-file`) changes.
//!
//! An AWS Private CA rotation, or a cert-manager or trust-manager bundle update, replaces
//! the mounted file (kubelet swaps a ConfigMap or Secret volume's symlink). Every
//! `--ca-reload-interval` the file is read again; content that differs from what was last
//! read is built into a new client configuration (the system roots and the Private CA
//! certificates fetched at start, as at start) and used for every new upstream connection.
//! Pooled connections keep the trust they were opened with. A file that cannot be used
//! (empty, not PEM, unreadable) is refused with the previous trust kept, once per content:
//! the next change is tried again. Counted in `lattice_proxy_ca_reloads_total{result}`.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustls::pki_types::CertificateDer;

use crate::upstream::{tls_config, UpstreamConfig};

/// The `result` label of a reload.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// The client TLS configuration new upstream connections use.
#[derive(Debug)]
pub struct Trust {
    current: RwLock<Arc<rustls::ClientConfig>>,
    reloads: Family<ResultLabel, Counter>,
}

impl Trust {
    /// A trust that never changes (no metrics registered).
    pub fn fixed(config: Arc<rustls::ClientConfig>) -> Arc<Trust> {
        Arc::new(Trust {
            current: RwLock::new(config),
            reloads: Family::default(),
        })
    }

    /// The trust of the request path; registers `lattice_proxy_ca_reloads_total`.
    pub fn new(config: Arc<rustls::ClientConfig>, registry: &mut Registry) -> Arc<Trust> {
        let trust = Trust::fixed(config);
        let reloads = trust.reloads.clone();
        for result in ["ok", "error"] {
            reloads.get_or_create(&ResultLabel { result }).get();
        }
        registry.sub_registry_with_prefix("lattice_proxy").register(
            "ca_reloads",
            "Reloads of the --ca-file CA bundle after it changed, by result",
            reloads,
        );
        trust
    }

    /// The configuration for a new connection.
    pub fn current(&self) -> Arc<rustls::ClientConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn replace(&self, config: Arc<rustls::ClientConfig>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
    }

    /// Re-reads `upstream.ca_file` every `interval` and applies new content (see the
    /// module documentation); `extra_roots` are the Private CA certificates fetched at
    /// start. Runs until the process ends.
    pub async fn watch(
        self: Arc<Self>,
        upstream: UpstreamConfig,
        extra_roots: Vec<CertificateDer<'static>>,
        interval: Duration,
    ) {
        let Some(path) = upstream.ca_file.clone() else {
            return;
        };
        let mut seen = read(&path);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = read(&path);
            if now == seen {
                continue;
            }
            seen = now;
            // Built off the request path: reading roots and parsing PEM blocks.
            let (upstream, roots) = (upstream.clone(), extra_roots.clone());
            let built = tokio::task::spawn_blocking(move || tls_config(&upstream, &roots)).await;
            match built {
                Ok(Ok(config)) => {
                    self.replace(config);
                    self.reloads
                        .get_or_create(&ResultLabel { result: "ok" })
                        .inc();
                    tracing::info!(path = %path.display(), "CA bundle changed: new upstream connections trust it");
                }
                Ok(Err(e)) => {
                    self.reloads
                        .get_or_create(&ResultLabel { result: "error" })
                        .inc();
                    tracing::error!(path = %path.display(), "CA bundle changed but cannot be used, the previous trust is kept: {e}");
                }
                Err(e) => tracing::error!("building the TLS configuration failed: {e}"),
            }
        }
    }
}

/// The file's bytes, or why it could not be read (a change too).
fn read(path: &PathBuf) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| e.to_string())
}
