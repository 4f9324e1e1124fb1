//! Publishing this replica's CA as the caBundle of its MutatingWebhookConfiguration.
//!
//! Every replica generates its own CA, and the API server may call any replica, so the
//! caBundle holds the CAs of all live replicas: a replica *adds* its CA (keeping the newest
//! [`MAX_CAS`]), never replaces the others'. The patch is a strategic merge patch (the
//! `webhooks` list merges by `name`, so only `clientConfig.caBundle` of each entry changes)
//! that carries the `resourceVersion` it was computed from: two replicas publishing at once
//! get a 409 for one of them, which reads again and retries. Each replica re-checks every
//! [`RECHECK`] and adds its CA back if it was pruned or overwritten.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{json, Value};

use crate::metrics::Metrics;

/// CAs kept in a caBundle: the replicas of a rollout (2 old + 2 new) with room to spare.
pub const MAX_CAS: usize = 8;
/// How often a replica checks that its CA is still published.
pub const RECHECK: Duration = Duration::from_secs(30);
/// Attempts on a 409 Conflict before giving up until the next check.
const CONFLICT_RETRIES: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("MutatingWebhookConfiguration {name}: {source}")]
    Kube { name: String, source: kube::Error },
    #[error("MutatingWebhookConfiguration {name} has no webhooks to publish the caBundle to")]
    NoWebhooks { name: String },
    #[error("MutatingWebhookConfiguration {name} kept changing under {CONFLICT_RETRIES} attempts (409 Conflict)")]
    Conflicts { name: String },
}

/// The certificates (PEM blocks) of a PEM bundle, normalised (trimmed, `\n` endings).
pub fn pem_blocks(bundle: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = bundle;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(end) = rest[start..].find(END) else {
            break;
        };
        let block = &rest[start..start + end + END.len()];
        out.push(block.replace("\r\n", "\n"));
        rest = &rest[start + end + END.len()..];
    }
    out
}

/// The strategic merge patch that adds `ca_pem` to every webhook's caBundle of `config`
/// (the object as JSON), or `None` when every one already has it.
pub fn bundle_patch(config: &Value, ca_pem: &str) -> Option<Value> {
    let ours = pem_blocks(ca_pem);
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut entries = Vec::new();
    for webhook in config
        .get("webhooks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = webhook
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let current = webhook
            .pointer("/clientConfig/caBundle")
            .and_then(Value::as_str)
            .and_then(|s| b64.decode(s).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let mut blocks = pem_blocks(&current);
        if ours.iter().all(|c| blocks.contains(c)) {
            continue;
        }
        blocks.retain(|b| !ours.contains(b));
        blocks.extend(ours.iter().cloned());
        let keep = blocks.len().saturating_sub(MAX_CAS);
        let bundle: String = blocks[keep..].iter().map(|b| format!("{b}\n")).collect();
        entries.push(json!({"name": name, "clientConfig": {"caBundle": b64.encode(bundle)}}));
    }
    if entries.is_empty() {
        return None;
    }
    let mut patch = json!({"webhooks": entries});
    if let Some(rv) = config.pointer("/metadata/resourceVersion") {
        patch["metadata"] = json!({"resourceVersion": rv});
    }
    Some(patch)
}

/// Adds `ca_pem` to the caBundle of every webhook of configuration `name`; returns whether
/// a patch was needed.
pub async fn publish(client: &Client, name: &str, ca_pem: &str) -> Result<bool, PublishError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let kube_err = |source| PublishError::Kube {
        name: name.to_string(),
        source,
    };
    for _ in 0..CONFLICT_RETRIES {
        let current = api.get(name).await.map_err(kube_err)?;
        let current = serde_json::to_value(&current).expect("k8s-openapi objects serialise");
        if current
            .get("webhooks")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            return Err(PublishError::NoWebhooks { name: name.into() });
        }
        let Some(patch) = bundle_patch(&current, ca_pem) else {
            return Ok(false);
        };
        match api
            .patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(e) => return Err(kube_err(e)),
        }
    }
    Err(PublishError::Conflicts { name: name.into() })
}

/// Publishes, then re-checks every [`RECHECK`] for good; `ready` turns true after the first
/// success (the readiness probe waits for it).
pub async fn keep_published(
    client: Client,
    name: String,
    ca_pem: String,
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        match publish(&client, &name, &ca_pem).await {
            Ok(changed) => {
                if changed {
                    tracing::info!(webhook = %name, "published this replica's CA in the caBundle");
                }
                metrics.ca_published.set(1);
                ready.store(true, Ordering::SeqCst);
                backoff = Duration::from_secs(1);
                tokio::time::sleep(RECHECK).await;
            }
            Err(e) => {
                metrics.ca_published.set(0);
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot publish the caBundle");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECHECK);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(n: usize) -> String {
        format!("-----BEGIN CERTIFICATE-----\nQ0E{n}\n-----END CERTIFICATE-----\n")
    }

    fn config(bundles: &[Option<String>]) -> Value {
        let b64 = base64::engine::general_purpose::STANDARD;
        let webhooks: Vec<Value> = bundles
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let mut cc = json!({"service": {"name": "lattice-injector", "namespace": "lattice-egress"}});
                if let Some(b) = b {
                    cc["caBundle"] = json!(b64.encode(b));
                }
                json!({"name": format!("w{i}.lattice-egress.io"), "clientConfig": cc, "sideEffects": "None"})
            })
            .collect();
        json!({"metadata": {"name": "lattice-injector", "resourceVersion": "42"}, "webhooks": webhooks})
    }

    fn decoded(patch: &Value, i: usize) -> String {
        let s = patch["webhooks"][i]["clientConfig"]["caBundle"]
            .as_str()
            .unwrap();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s).unwrap()).unwrap()
    }

    #[test]
    fn adds_to_every_entry_and_keeps_other_replicas() {
        let c = config(&[None, Some(cert(1))]);
        let p = bundle_patch(&c, &cert(2)).unwrap();
        assert_eq!(p["metadata"]["resourceVersion"], "42");
        assert_eq!(p["webhooks"][0]["name"], "w0.lattice-egress.io");
        assert_eq!(decoded(&p, 0), cert(2));
        assert_eq!(decoded(&p, 1), format!("{}{}", cert(1), cert(2)));
        // Only the caBundle: the strategic merge (by name) leaves everything else.
        assert_eq!(p["webhooks"][1].as_object().unwrap().len(), 2);
        assert_eq!(
            p["webhooks"][1]["clientConfig"].as_object().unwrap().len(),
            1
        );
    }

    #[test]
    fn nothing_to_do_when_published_and_the_bundle_is_bounded() {
        let c = config(&[Some(format!("{}{}", cert(1), cert(2))), Some(cert(2))]);
        assert_eq!(bundle_patch(&c, &cert(2)), None);

        let many: String = (0..MAX_CAS).map(cert).collect();
        let c = config(&[Some(many)]);
        let p = bundle_patch(&c, &cert(99)).unwrap();
        let blocks = pem_blocks(&decoded(&p, 0));
        assert_eq!(blocks.len(), MAX_CAS);
        assert!(
            !blocks.contains(&cert(0).trim_end().to_string()),
            "the oldest goes"
        );
        assert_eq!(blocks.last().unwrap(), cert(99).trim_end());
    }

    #[test]
    fn pem_blocks_ignore_noise() {
        let text = format!(
            "junk\r\n{}\n\n{}trailing",
            cert(1).replace('\n', "\r\n"),
            cert(2)
        );
        assert_eq!(pem_blocks(&text), [cert(1).trim_end(), cert(2).trim_end()]);
    }
}
