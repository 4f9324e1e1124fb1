//! Fetching the private CA certificate from AWS Private CA (ACM PCA) at start.
//!
//! The seed's launcher ran `aws acm-pca get-certificate-authority-certificate` and wrote a
//! PEM file; with `--private-ca-arn` the proxy makes the same call itself
//! (`ACMPrivateCA.GetCertificateAuthorityCertificate`, JSON 1.1 protocol, SigV4 for
//! `acm-pca` in the ARN's region, payload signed) with the pod's credentials, and trusts the
//! CA certificate and its chain. It needs `acm-pca:GetCertificateAuthorityCertificate` on
//! the CA. The call goes through the same connector (and `--resolve`) as Lattice traffic,
//! trusting the system roots and `--ca-file`.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Limited};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use crate::body::ProxyBody;
use crate::credentials::CredentialsCache;
use crate::error;
use crate::sign::{hex, PayloadMode, Signer};
use crate::upstream::UpstreamClient;

/// How long start-up keeps trying (credentials may still be arriving).
const FETCH_DEADLINE: Duration = Duration::from_secs(60);
/// Largest response accepted (a CA certificate and chain are a few KiB).
const MAX_RESPONSE: usize = 1 << 20;

/// A private CA to fetch: its ARN, region and the endpoint to ask.
#[derive(Debug, Clone)]
pub struct PrivateCa {
    arn: String,
    region: String,
    endpoint: Uri,
}

/// Why the private CA could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum PcaError {
    /// No credentials to sign the call with.
    #[error("no AWS credentials to call ACM PCA with: {0}")]
    NoCredentials(String),
    /// The call failed.
    #[error("GetCertificateAuthorityCertificate for {arn} failed: {cause}")]
    Call {
        /// The CA.
        arn: String,
        /// What went wrong (status and AWS error text, or the transport error).
        cause: String,
    },
}

impl PrivateCa {
    /// Parses `arn:aws:acm-pca:<region>:<account>:certificate-authority/<id>`; `endpoint`
    /// overrides `https://acm-pca.<region>.amazonaws.com`.
    pub fn new(arn: &str, endpoint: Option<&str>) -> Result<Self, String> {
        let parts: Vec<&str> = arn.split(':').collect();
        if parts.len() != 6
            || parts[0] != "arn"
            || parts[2] != "acm-pca"
            || parts[3].is_empty()
            || !parts[5].starts_with("certificate-authority/")
        {
            return Err(format!(
                "{arn:?} is not an AWS Private CA ARN (arn:aws:acm-pca:<region>:<account>:certificate-authority/<id>)"
            ));
        }
        let region = parts[3].to_owned();
        let dns_suffix = if parts[1] == "aws-cn" {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        let endpoint = endpoint
            .map(str::to_owned)
            .unwrap_or_else(|| format!("https://acm-pca.{region}.{dns_suffix}/"));
        let endpoint: Uri = endpoint
            .parse()
            .map_err(|e| format!("ACM PCA endpoint {endpoint:?}: {e}"))?;
        if endpoint.scheme_str() != Some("https") || endpoint.host().is_none() {
            return Err(format!(
                "ACM PCA endpoint {endpoint} must be an https:// URL"
            ));
        }
        Ok(PrivateCa {
            arn: arn.to_owned(),
            region,
            endpoint,
        })
    }

    /// The CA's ARN.
    pub fn arn(&self) -> &str {
        &self.arn
    }

    /// Fetches the CA certificate and chain, retrying until credentials exist and the call
    /// succeeds or the deadline passes.
    pub async fn fetch(
        &self,
        client: &UpstreamClient,
        credentials: &CredentialsCache,
    ) -> Result<Vec<CertificateDer<'static>>, PcaError> {
        let deadline = Instant::now() + FETCH_DEADLINE;
        let mut backoff = Duration::from_millis(200);
        loop {
            credentials.first_fetch_done().await;
            let result = match credentials.identity() {
                Ok(identity) => self.fetch_once(client, &identity).await,
                Err(e) => Err(PcaError::NoCredentials(e.to_string())),
            };
            match result {
                Ok(certs) => return Ok(certs),
                Err(e) if Instant::now() + backoff < deadline => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "fetching the private CA failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn fetch_once(
        &self,
        client: &UpstreamClient,
        identity: &aws_smithy_runtime_api::client::identity::Identity,
    ) -> Result<Vec<CertificateDer<'static>>, PcaError> {
        let fail = |cause: String| PcaError::Call {
            arn: self.arn.clone(),
            cause,
        };
        let body = serde_json::json!({ "CertificateAuthorityArn": self.arn }).to_string();
        let body = Bytes::from(body);
        let mut req = Request::new(ProxyBody::full(body.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.endpoint.clone();
        let h = req.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-amz-json-1.1"),
        );
        h.insert(
            "x-amz-target",
            HeaderValue::from_static("ACMPrivateCA.GetCertificateAuthorityCertificate"),
        );
        let signer = Signer::new(
            self.region.clone(),
            "acm-pca".into(),
            PayloadMode::SignedUpTo(MAX_RESPONSE as u64),
            vec![
                http::header::CONTENT_TYPE,
                http::header::HeaderName::from_static("x-amz-target"),
            ],
        );
        let (parts, body_out) = req.into_parts();
        let mut parts = parts;
        signer
            .sign(
                identity,
                &parts.method,
                &parts.uri,
                &mut parts.headers,
                Some(hex(&Sha256::digest(&body))),
                SystemTime::now(),
            )
            .map_err(|e| fail(e.to_string()))?;
        let req = Request::from_parts(parts, body_out);
        let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
            .await
            .map_err(|_| fail("no response within 30s".into()))?
            .map_err(|e| {
                tracing::debug!(
                    detail = %aws_smithy_types::error::display::DisplayErrorContext(&e),
                    "the ACM PCA call failed"
                );
                fail(error::chain(&e))
            })?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| fail(format!("reading the response: {}", error::chain(&*e))))?
            .to_bytes();
        if !status.is_success() {
            return Err(fail(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes).trim()
            )));
        }
        let json: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| fail(format!("the response is not JSON: {e}")))?;
        let mut certs = Vec::new();
        for field in ["Certificate", "CertificateChain"] {
            if let Some(pem) = json.get(field).and_then(|v| v.as_str()) {
                for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    certs.push(c.map_err(|e| fail(format!("{field} is not PEM: {e}")))?);
                }
            }
        }
        if certs.is_empty() {
            return Err(fail("the response holds no certificate".into()));
        }
        tracing::info!(arn = %self.arn, certificates = certs.len(), "fetched the private CA from ACM PCA");
        Ok(certs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_and_endpoints() {
        let ca = PrivateCa::new(
            "arn:aws:acm-pca:eu-west-1:123456789012:certificate-authority/0f1e2d3c",
            None,
        )
        .unwrap();
        assert_eq!(ca.region, "eu-west-1");
        assert_eq!(ca.endpoint, "https://acm-pca.eu-west-1.amazonaws.com/");
        assert!(PrivateCa::new("arn:aws:acm:eu-west-1:1:certificate/x", None).is_err());
        assert!(PrivateCa::new(
            "arn:aws:acm-pca:eu-west-1:1:certificate-authority/x",
            Some("http://insecure")
        )
        .is_err());
    }
}
