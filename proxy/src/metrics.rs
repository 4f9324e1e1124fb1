//! Prometheus metrics (OpenMetrics text on the admin `/metrics`).
//!
//! Labels are enums or numbers so series stay bounded whatever the traffic; durations are
//! histograms in seconds.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::ErrorKind;

/// Labels of `requests`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StatusLabels {
    /// HTTP status code sent to the application.
    pub status: u16,
}

/// Labels of `errors`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ErrorLabels {
    /// What failed.
    pub kind: ErrorKind,
}

/// Outcome of a credentials fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RefreshResult {
    /// New credentials arrived.
    success,
    /// The provider chain failed.
    failure,
}

/// Labels of `credential_refreshes`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefreshLabels {
    /// Outcome.
    pub result: RefreshResult,
}

/// All the proxy's metrics. Cheap to clone handles live inside; share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    /// Requests answered, by status (Lattice's and the proxy's own).
    pub requests: Family<StatusLabels, Counter>,
    /// Time from request to response headers, in seconds.
    pub request_duration: Histogram,
    /// Requests the proxy answered itself, by kind.
    pub errors: Family<ErrorLabels, Counter>,
    /// Credential fetches by outcome.
    pub credential_refreshes: Family<RefreshLabels, Counter>,
    /// 1 while valid credentials are held.
    pub credentials_valid: Gauge,
    /// Upstream TLS connections currently open (the pool, idle and busy).
    pub upstream_connections_open: Gauge,
    /// Upstream TLS connections opened since start.
    pub upstream_connections: Counter,
    /// Client connections currently open.
    pub client_connections_open: Gauge,
}

impl Metrics {
    /// Creates the metrics and registers them under `lattice_proxy_*`.
    pub fn new(registry: &mut Registry) -> Arc<Self> {
        let m = Metrics {
            request_duration: Histogram::new(
                [
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ]
                .into_iter(),
            ),
            requests: Default::default(),
            errors: Default::default(),
            credential_refreshes: Default::default(),
            credentials_valid: Default::default(),
            upstream_connections_open: Default::default(),
            upstream_connections: Default::default(),
            client_connections_open: Default::default(),
        };
        let r = registry.sub_registry_with_prefix("lattice_proxy");
        {
            let http = r.sub_registry_with_prefix("http");
            http.register(
                "requests",
                "Requests answered, by status",
                m.requests.clone(),
            );
            http.register(
                "request_duration_seconds",
                "Time from request received to response headers sent",
                m.request_duration.clone(),
            );
            http.register(
                "errors",
                "Requests the proxy answered itself, by failed step",
                m.errors.clone(),
            );
            http.register(
                "client_connections_open",
                "Client connections currently open",
                m.client_connections_open.clone(),
            );
        }
        {
            let up = r.sub_registry_with_prefix("upstream");
            up.register(
                "connections_open",
                "Upstream TLS connections currently open (pool size)",
                m.upstream_connections_open.clone(),
            );
            up.register(
                "connections",
                "Upstream TLS connections opened",
                m.upstream_connections.clone(),
            );
        }
        {
            let c = r.sub_registry_with_prefix("credentials");
            c.register(
                "refreshes",
                "Credential fetches from the AWS provider chain, by result",
                m.credential_refreshes.clone(),
            );
            c.register(
                "valid",
                "1 while valid credentials are held",
                m.credentials_valid.clone(),
            );
        }
        Arc::new(m)
    }

    /// Records one answered request.
    pub fn record(&self, status: u16, seconds: f64, error: Option<ErrorKind>) {
        self.requests.get_or_create(&StatusLabels { status }).inc();
        self.request_duration.observe(seconds);
        if let Some(kind) = error {
            self.errors.get_or_create(&ErrorLabels { kind }).inc();
        }
    }
}

/// Encodes the registry in OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}
