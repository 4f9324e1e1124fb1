//! Prometheus metrics (OpenMetrics text on the admin `/metrics`).
//!
//! Labels are enums or numbers so series stay bounded whatever the traffic; durations are
//! histograms in seconds.
//!
//! The per-request figures (requests by status, latency, errors by kind) are kept in one
//! shard per worker and summed when scraped: a worker only writes its own cache lines, so
//! the request path never waits for a line another core has just written (a shared
//! `Family` and `Histogram` take a lock and bump shared counters on every request).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
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
    /// Requests by status, latency and the proxy's own answers by kind, per worker.
    pub requests: Arc<RequestShards>,
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
    /// Creates the metrics, with one request shard per worker, and registers them under
    /// `lattice_proxy_*`.
    pub fn new(registry: &mut Registry, workers: usize) -> Arc<Self> {
        let m = Metrics {
            requests: Arc::new(RequestShards::new(workers)),
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
                RequestsByStatus(m.requests.clone()),
            );
            http.register(
                "request_duration_seconds",
                "Time from request received to response headers sent",
                RequestDuration(m.requests.clone()),
            );
            http.register(
                "errors",
                "Requests the proxy answered itself, by failed step",
                ErrorsByKind(m.requests.clone()),
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

    /// Records one request answered by `worker`.
    pub fn record(&self, worker: usize, status: u16, seconds: f64, error: Option<ErrorKind>) {
        self.requests.record(worker, status, seconds, error);
    }
}

/// Upper bounds of the latency histogram's buckets, in seconds (`+Inf` follows).
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Statuses counted: 100 to 599.
const STATUSES: std::ops::Range<u16> = 100..600;

/// Per-worker request figures, summed when scraped.
#[derive(Debug)]
pub struct RequestShards {
    shards: Box<[Shard]>,
}

/// One worker's figures, on cache lines of its own.
#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    by_status: [AtomicU64; STATUSES.end as usize - STATUSES.start as usize],
    errors: [AtomicU64; ErrorKind::ALL.len()],
    /// Requests per latency bucket (not cumulative); the last is `+Inf`.
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_count: AtomicU64,
    latency_sum_ns: AtomicU64,
}

impl Shard {
    fn new() -> Self {
        Shard {
            by_status: [const { AtomicU64::new(0) };
                STATUSES.end as usize - STATUSES.start as usize],
            errors: [const { AtomicU64::new(0) }; ErrorKind::ALL.len()],
            latency: [const { AtomicU64::new(0) }; LATENCY_BUCKETS.len() + 1],
            latency_count: AtomicU64::new(0),
            latency_sum_ns: AtomicU64::new(0),
        }
    }
}

impl RequestShards {
    /// Shards for `workers` workers (at least one).
    pub fn new(workers: usize) -> Self {
        RequestShards {
            shards: (0..workers.max(1)).map(|_| Shard::new()).collect(),
        }
    }

    /// Records one request answered by `worker`.
    pub fn record(&self, worker: usize, status: u16, seconds: f64, error: Option<ErrorKind>) {
        let shard = &self.shards[worker % self.shards.len()];
        if STATUSES.contains(&status) {
            shard.by_status[usize::from(status - STATUSES.start)].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(kind) = error {
            shard.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
        }
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(LATENCY_BUCKETS.len());
        shard.latency[bucket].fetch_add(1, Ordering::Relaxed);
        shard.latency_count.fetch_add(1, Ordering::Relaxed);
        shard
            .latency_sum_ns
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    fn sum(&self, field: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|s| field(s).load(Ordering::Relaxed))
            .sum()
    }
}

/// One counter per label set, leaving out those never incremented (as a `Family` would).
fn encode_counters<L: EncodeLabelSet>(
    mut encoder: MetricEncoder,
    counts: impl Iterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    for (labels, n) in counts.filter(|(_, n)| *n > 0) {
        encoder
            .encode_family(&labels)?
            .encode_counter::<(), _, u64>(&n, None)?;
    }
    Ok(())
}

/// `http_requests_total{status}`, summed over the shards.
#[derive(Debug)]
struct RequestsByStatus(Arc<RequestShards>);

impl EncodeMetric for RequestsByStatus {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts = STATUSES
            .enumerate()
            .map(|(i, status)| (StatusLabels { status }, self.0.sum(|s| &s.by_status[i])));
        encode_counters(encoder, counts)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// `http_errors_total{kind}`, summed over the shards.
#[derive(Debug)]
struct ErrorsByKind(Arc<RequestShards>);

impl EncodeMetric for ErrorsByKind {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts = ErrorKind::ALL.into_iter().map(|kind| {
            (
                ErrorLabels { kind },
                self.0.sum(|s| &s.errors[kind as usize]),
            )
        });
        encode_counters(encoder, counts)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// `http_request_duration_seconds`, summed over the shards.
#[derive(Debug)]
struct RequestDuration(Arc<RequestShards>);

impl EncodeMetric for RequestDuration {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .copied()
            .chain([f64::MAX])
            .enumerate()
            .map(|(i, le)| (le, self.0.sum(|s| &s.latency[i])))
            .collect();
        let sum = self.0.sum(|s| &s.latency_sum_ns) as f64 / 1e9;
        let count = self.0.sum(|s| &s.latency_count);
        encoder.encode_histogram::<()>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Encodes the registry in OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Figures recorded by different workers add up in one exposition, in the same series
    /// a `Family` and a `Histogram` would write.
    #[test]
    fn shards_sum_when_scraped() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry, 2);
        m.record(0, 200, 0.0004, None);
        m.record(1, 200, 0.002, None);
        m.record(1, 403, 0.3, Some(ErrorKind::host_not_allowed));
        m.record(0, 504, 12.0, Some(ErrorKind::response_timeout));
        let text = encode(&registry);
        for line in [
            "lattice_proxy_http_requests_total{status=\"200\"} 2",
            "lattice_proxy_http_requests_total{status=\"403\"} 1",
            "lattice_proxy_http_requests_total{status=\"504\"} 1",
            "lattice_proxy_http_errors_total{kind=\"host_not_allowed\"} 1",
            "lattice_proxy_http_errors_total{kind=\"response_timeout\"} 1",
            "lattice_proxy_http_request_duration_seconds_count 4",
            "lattice_proxy_http_request_duration_seconds_bucket{le=\"0.0005\"} 1",
            "lattice_proxy_http_request_duration_seconds_bucket{le=\"0.0025\"} 2",
            "lattice_proxy_http_request_duration_seconds_bucket{le=\"0.5\"} 3",
            "lattice_proxy_http_request_duration_seconds_bucket{le=\"10.0\"} 3",
            "lattice_proxy_http_request_duration_seconds_bucket{le=\"+Inf\"} 4",
            "# TYPE lattice_proxy_http_requests counter",
            "# TYPE lattice_proxy_http_request_duration_seconds histogram",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("lattice_proxy_http_request_duration_seconds_sum "))
            .and_then(|v| v.parse().ok())
            .expect("a sum line");
        assert!((sum - 12.3024).abs() < 1e-6, "{sum}");
        assert!(
            !text.contains("status=\"500\""),
            "unseen statuses are not exported"
        );
    }
}
