//! `/metrics` (OpenMetrics): admissions by result, warnings, the caBundle publication.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum AdmissionResult {
    /// Patched with the sidecar.
    Injected,
    /// Had the sidecar already: no patch.
    AlreadyInjected,
    /// Not opted in, opted out, or not a CREATE: no patch.
    Skipped,
    /// Denied: a review that could not be answered (bad input, bad override annotation).
    Error,
}

impl AdmissionResult {
    /// The `result` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AdmissionResult::Injected => "injected",
            AdmissionResult::AlreadyInjected => "already_injected",
            AdmissionResult::Skipped => "skipped",
            AdmissionResult::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    admissions: Family<ResultLabel, Counter>,
    warnings: Counter,
    /// 1 while this replica's CA is in the webhook configuration's caBundle (or the
    /// certificate is mounted), 0 otherwise.
    pub ca_published: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("lattice_injector");
        let admissions = Family::<ResultLabel, Counter>::default();
        registry.register(
            "admissions",
            "Pod admission reviews answered, by result",
            admissions.clone(),
        );
        let warnings = Counter::default();
        registry.register(
            "warnings",
            "Warnings returned (app containers with a GID the agent never redirects)",
            warnings.clone(),
        );
        let ca_published = Gauge::default();
        registry.register(
            "ca_published",
            "1 when this replica's serving CA is published (or the certificate is mounted)",
            ca_published.clone(),
        );
        // Every result shows from the start, at 0.
        for result in [
            AdmissionResult::Injected,
            AdmissionResult::AlreadyInjected,
            AdmissionResult::Skipped,
            AdmissionResult::Error,
        ] {
            let _ = admissions.get_or_create(&ResultLabel {
                result: result.as_str(),
            });
        }
        Metrics {
            registry,
            admissions,
            warnings,
            ca_published,
        }
    }

    pub fn admission(&self, result: AdmissionResult, warnings: usize) {
        self.admissions
            .get_or_create(&ResultLabel {
                result: result.as_str(),
            })
            .inc();
        self.warnings.inc_by(warnings as u64);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
