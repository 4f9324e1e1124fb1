//! The admin endpoint: `/healthz` and Prometheus `/metrics` (OpenMetrics text), read straight
//! from the pinned maps at scrape time.

use crate::install::generation_links;
use crate::maps::Maps;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// State shared by the agent loop and the admin endpoint.
pub struct Shared {
    /// The live maps.
    pub maps: Mutex<Maps>,
    /// The link generation in use (its pins must stay complete).
    pub generation: PathBuf,
    /// Configuration reloads that applied.
    pub reloads_ok: AtomicU64,
    /// Configuration reloads refused (the previous configuration stays).
    pub reloads_failed: AtomicU64,
    /// The pod watch, in Kubernetes mode.
    pub pods: Option<Arc<crate::watch::Status>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct MapCollector(Arc<Shared>);

impl Collector for MapCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let shared = &self.0;
        let (counters, enrolled, (sockets, peers)) = {
            let maps = shared.maps.lock().unwrap_or_else(|p| p.into_inner());
            (maps.counters(), maps.enrolled().len(), maps.tracked())
        };

        let mut family = encoder.encode_descriptor(
            "lattice_redirector_connects",
            "TCP connects seen by the connect programs, by result (redirected or why skipped)",
            None,
            MetricType::Counter,
        )?;
        for (name, value) in counters.iter().filter(|(n, _)| is_connect_result(n)) {
            let labels = [("result", *name)];
            ConstCounter::new(*value).encode(family.encode_family(&labels)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "lattice_redirector_events",
            "Other program events: original destinations answered, peers restored, failures",
            None,
            MetricType::Counter,
        )?;
        for (name, value) in counters.iter().filter(|(n, _)| !is_connect_result(n)) {
            let labels = [("event", *name)];
            ConstCounter::new(*value).encode(family.encode_family(&labels)?)?;
        }

        let g = encoder.encode_descriptor(
            "lattice_redirector_enrolled_cgroups",
            "Cgroups whose connects are redirected",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(enrolled as i64).encode(g)?;

        let mut family = encoder.encode_descriptor(
            "lattice_redirector_tracked_connections",
            "Entries in the original-destination maps (bounded by LRU, removed on close)",
            None,
            MetricType::Gauge,
        )?;
        for (map, n) in [("sockets", sockets), ("peers", peers)] {
            let labels = [("map", map)];
            ConstGauge::new(n as i64).encode(family.encode_family(&labels)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "lattice_redirector_config_reloads",
            "Configuration reloads, by result",
            None,
            MetricType::Counter,
        )?;
        for (result, n) in [
            ("ok", shared.reloads_ok.load(Ordering::Relaxed)),
            ("error", shared.reloads_failed.load(Ordering::Relaxed)),
        ] {
            let labels = [("result", result)];
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }

        if let Some(pods) = &shared.pods {
            let mut family = encoder.encode_descriptor(
                "lattice_redirector_pods",
                "Pods of this node, by state: watched (all), enrolled, pending (waiting for \
                 their cgroup), refused (malformed annotation)",
                None,
                MetricType::Gauge,
            )?;
            let refused = pods.refused.lock().map(|r| r.len()).unwrap_or(0) as u64;
            for (state, n) in [
                ("watched", pods.watched.load(Ordering::Relaxed)),
                ("enrolled", pods.enrolled.load(Ordering::Relaxed)),
                ("pending", pods.pending.load(Ordering::Relaxed)),
                ("refused", refused),
            ] {
                let labels = [("state", state)];
                ConstGauge::new(n as i64).encode(family.encode_family(&labels)?)?;
            }
            let c = encoder.encode_descriptor(
                "lattice_redirector_pod_watch_restarts",
                "Times the pod watch failed and was restarted with backoff",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(pods.restarts.load(Ordering::Relaxed)).encode(c)?;
            let g = encoder.encode_descriptor(
                "lattice_redirector_pod_watch_synced",
                "1 once the first list of this node's pods has arrived",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(pods.synced.load(Ordering::Relaxed) as i64).encode(g)?;
        }
        Ok(())
    }
}

fn is_connect_result(name: &str) -> bool {
    name == "redirected" || name.starts_with("skip_")
}

/// Why the agent is unhealthy, if it is.
pub fn health(shared: &Shared) -> Result<(), String> {
    if generation_links(&shared.generation).is_none() {
        return Err(format!(
            "the pinned links under {} are incomplete: redirection may be off; restart the \
             agent to re-attach",
            shared.generation.display()
        ));
    }
    {
        let maps = shared.maps.lock().unwrap_or_else(|p| p.into_inner());
        maps.config().map(|_| ()).map_err(|e| e.to_string())?;
    }
    match &shared.pods {
        Some(pods) => pods.health(),
        None => Ok(()),
    }
}

/// Notes that do not make the agent unhealthy (pods refused for a malformed annotation).
fn health_notes(shared: &Shared) -> String {
    let Some(pods) = &shared.pods else {
        return String::new();
    };
    let refused = pods.refused.lock().unwrap_or_else(|p| p.into_inner());
    refused
        .iter()
        .map(|(pod, why)| format!("pod {pod} is not enrolled: {why}\n"))
        .collect()
}

/// Serves `/healthz` and `/metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(MapCollector(shared.clone())));
    let registry = Arc::new(registry);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                continue;
            }
        };
        let shared = shared.clone();
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let shared = shared.clone();
                let registry = registry.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(respond(req.uri().path(), &shared, &registry))
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "admin connection ended");
            }
        });
    }
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

fn respond(path: &str, shared: &Shared, registry: &Registry) -> Response<Full<Bytes>> {
    match path {
        "/healthz" | "/readyz" => match health(shared) {
            Ok(()) => text(
                StatusCode::OK,
                "text/plain",
                format!("ok\n{}", health_notes(shared)),
            ),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{why}\n"),
            ),
        },
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => text(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("encoding metrics failed: {e}\n"),
                ),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /healthz or /metrics\n".into(),
        ),
    }
}
