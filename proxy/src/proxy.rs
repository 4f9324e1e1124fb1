//! One request: check host → rewrite URI → strip hop-by-hop → sign → forward.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_smithy_types::error::display::DisplayErrorContext;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Incoming};
use sha2::{Digest, Sha256};

use crate::allow::AllowList;
use crate::body::ProxyBody;
use crate::credentials::CredentialsCache;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::pool::{Pool, PoolError};
use crate::sign::{canonical_query, hex, PayloadMode, Signer};

/// What the server knows about the client connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The application's address.
    pub client: SocketAddr,
    /// Where the application originally connected, when a redirector delivered it.
    pub original_dst: Option<SocketAddr>,
}

/// The request handler shared by all connections.
pub struct Proxy {
    allow: AllowList,
    signer: Arc<Signer>,
    credentials: CredentialsCache,
    pool: Pool,
    upstream_port: u16,
    response_timeout: Duration,
    strip: Vec<HeaderName>,
    metrics: Arc<Metrics>,
}

/// Request headers that never travel upstream: hop-by-hop ones (RFC 9110 §7.6.1), ones the
/// proxy answers itself (`expect`), and ones whose inbound values must not reach Lattice
/// (an app's own signature; the signer sets `x-amz-*` itself).
const STRIPPED_REQUEST: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::EXPECT,
    header::HOST,
    header::AUTHORIZATION,
];

/// Hop-by-hop response headers.
const STRIPPED_RESPONSE: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

impl Proxy {
    /// Creates the handler; `strip` are extra request headers to drop (`--strip`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        allow: AllowList,
        signer: Arc<Signer>,
        credentials: CredentialsCache,
        pool: Pool,
        upstream_port: u16,
        response_timeout: Duration,
        strip: Vec<HeaderName>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Proxy {
            allow,
            signer,
            credentials,
            pool,
            upstream_port,
            response_timeout,
            strip,
            metrics,
        }
    }

    /// Handles one request; failures become the proxy's own responses here, and only here.
    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
        let start = Instant::now();
        let version = req.version();
        let method = req.method().clone();
        // A cheap clone (shared bytes), kept for the log lines.
        let target = req.uri().clone();
        let path = target.path();
        let (mut resp, error) = match self.forward(req).await {
            Ok(resp) => (resp, None),
            Err(err) => {
                let kind = err.kind();
                if kind.is_upstream() || matches!(err, ProxyError::NoCredentials(_)) {
                    tracing::warn!(client = %conn.client, %method, %path, error = %err, kind = kind.as_str(), "request failed");
                } else {
                    tracing::info!(client = %conn.client, %method, %path, error = %err, kind = kind.as_str(), "request refused");
                }
                (err.to_response(), Some(kind))
            }
        };
        *resp.version_mut() = version;
        let elapsed = start.elapsed();
        tracing::debug!(%method, %path, status = resp.status().as_u16(), elapsed_ms = elapsed.as_secs_f64() * 1e3, original_dst = ?conn.original_dst, "request");
        self.metrics
            .record(resp.status().as_u16(), elapsed.as_secs_f64(), error);
        resp
    }

    async fn forward(&self, req: Request<Incoming>) -> Result<Response<ProxyBody>, ProxyError> {
        if req.method() == Method::CONNECT {
            return Err(ProxyError::ConnectUnsupported);
        }
        if let Some(up) = req.headers().get(header::UPGRADE) {
            return Err(ProxyError::UpgradeUnsupported(
                String::from_utf8_lossy(up.as_bytes()).into_owned(),
            ));
        }

        let host = target_host(&req)?;
        self.allow.check(&host).map_err(ProxyError::HostRefused)?;

        // Credentials before anything else touches the network: fail closed.
        let identity = self
            .credentials
            .identity()
            .map_err(|e| ProxyError::NoCredentials(e.to_string()))?;

        let (mut parts, body) = req.into_parts();
        let uri = self.upstream_uri(&host, parts.uri.path_and_query())?;
        let mut headers = std::mem::take(&mut parts.headers);
        strip_request_headers(&mut headers);
        for name in &self.strip {
            headers.remove(name);
        }

        // Payload: UNSIGNED-PAYLOAD, or the hash of a small body read here.
        let (body, body_sha256) = match self.signer.payload_mode() {
            PayloadMode::SignedUpTo(limit) if fits(&headers, &body, limit) => {
                let bytes = Limited::new(body, limit as usize)
                    .collect()
                    .await
                    .map_err(|e| ProxyError::RequestBody(e.to_string()))?
                    .to_bytes();
                let hash = hex(&Sha256::digest(&bytes));
                (ProxyBody::full(bytes), Some(hash))
            }
            _ => (ProxyBody::from(body), None),
        };

        self.signer
            .sign(
                &identity,
                &parts.method,
                &uri,
                &mut headers,
                body_sha256,
                SystemTime::now(),
            )
            .map_err(|e| ProxyError::Signing(e.to_string()))?;

        let mut up = Request::new(body);
        *up.method_mut() = parts.method;
        *up.uri_mut() = uri;
        // The pool decides HTTP/1.1 or HTTP/2 from ALPN and sets Host; hyper refuses an
        // HTTP/2-versioned request on an HTTP/1.1 connection, so always hand it 1.1.
        *up.version_mut() = Version::HTTP_11;
        // The inbound extensions (hyper's upgrade handle, h2 protocol) stay on this side.
        *up.headers_mut() = headers;

        // Boxed: hyper keeps one request future per client connection, sized for its largest
        // state; inline, the exchange would make 1 000 idle connections cost 2.5 MiB more.
        let exchange = Box::pin(self.pool.send(up));
        let resp = match tokio::time::timeout(self.response_timeout, exchange).await {
            Err(_) => {
                return Err(ProxyError::ResponseTimeout {
                    host,
                    timeout: self.response_timeout,
                })
            }
            Ok(Err(PoolError::Connect(e))) => return Err(ProxyError::Connect(e)),
            Ok(Err(e)) => {
                return Err(ProxyError::Upstream {
                    host,
                    cause: DisplayErrorContext(&e).to_string(),
                })
            }
            Ok(Ok(resp)) => resp,
        };

        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, STRIPPED_RESPONSE);
        Ok(Response::from_parts(parts, body))
    }

    fn upstream_uri(&self, host: &str, pq: Option<&PathAndQuery>) -> Result<Uri, ProxyError> {
        let authority = if self.upstream_port == 443 {
            Authority::try_from(host)
        } else {
            Authority::try_from(format!("{host}:{}", self.upstream_port))
        }
        .map_err(|e| ProxyError::BadRequest(format!("host {host:?}: {e}")))?;
        let path = pq
            .map(|p| p.path())
            .filter(|p| !p.is_empty())
            .unwrap_or("/");
        let pq = match pq.and_then(|p| p.query()).and_then(canonical_query) {
            Some(q) => PathAndQuery::try_from(format!("{path}?{q}")),
            None => PathAndQuery::try_from(path),
        }
        .map_err(|e| ProxyError::BadRequest(format!("path: {e}")))?;
        Uri::builder()
            .scheme(Scheme::HTTPS)
            .authority(authority)
            .path_and_query(pq)
            .build()
            .map_err(|e| ProxyError::BadRequest(e.to_string()))
    }
}

/// The service name: the absolute-form URI's or `:authority` (HTTP/2), else the Host header.
/// The port the application used is dropped: the upstream port is configuration.
fn target_host(req: &Request<Incoming>) -> Result<String, ProxyError> {
    let authority = match req.uri().authority() {
        Some(a) => a.clone(),
        None => {
            let h = req
                .headers()
                .get(header::HOST)
                .ok_or(ProxyError::MissingHost)?;
            Authority::try_from(h.as_bytes())
                .map_err(|_| ProxyError::BadRequest(format!("invalid Host header {h:?}")))?
        }
    };
    if authority.as_str().contains('@') {
        return Err(ProxyError::BadRequest(
            "user information in the request target is not supported".into(),
        ));
    }
    let host = authority.host().trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return Err(ProxyError::MissingHost);
    }
    Ok(host)
}

/// Removes hop-by-hop headers (the fixed set and any named by `Connection`), the
/// application's own `x-amz-*` and `authorization`, and `x-amzn-lattice-*` identity headers
/// that Lattice adds toward targets and nobody upstream may be fooled by.
fn strip_request_headers(headers: &mut HeaderMap) {
    // gRPC needs `te: trailers` end to end; it is the only TE value HTTP/2 allows.
    let te_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    strip(headers, STRIPPED_REQUEST, |k| {
        let k = k.as_str();
        k.starts_with("x-amz-") || k.starts_with("x-amzn-lattice-") || k.starts_with("proxy-")
    });
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap, fixed: &[HeaderName]) {
    strip(headers, fixed, |_| false);
}

/// Removes the `fixed` headers, those named by `Connection`, `keep-alive`,
/// `proxy-connection` and those `also` picks. One pass over the names present (a request
/// carries a handful) instead of a hashed lookup per name that might be there.
fn strip(headers: &mut HeaderMap, fixed: &[HeaderName], also: impl Fn(&HeaderName) -> bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::try_from(t.trim()).ok())
        .collect();
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            fixed.contains(k)
                || named.contains(k)
                || matches!(k.as_str(), "keep-alive" | "proxy-connection")
                || also(k)
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// Whether a body is small and plain enough to be read for payload signing: a declared
/// length within the limit (or an empty body), and no trailers expected.
fn fits(headers: &HeaderMap, body: &Incoming, limit: u64) -> bool {
    if headers.contains_key(header::TE) {
        return false;
    }
    match body.size_hint().exact() {
        Some(n) => n <= limit,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_headers_are_stripped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-custom-hop"),
            ("x-custom-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers, deflate"),
            ("upgrade", "h2c"),
            ("authorization", "AWS4-HMAC-SHA256 forged"),
            ("x-amz-date", "20000101T000000Z"),
            ("x-amz-security-token", "stolen"),
            ("x-amzn-lattice-identity", "Principal=forged"),
            ("x-amzn-trace-id", "Root=1-abc"),
            ("x-forwarded-for", "10.0.0.1"),
            ("content-type", "application/json"),
            ("host", "svc.example.com"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        strip_request_headers(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            ["content-type", "te", "x-amzn-trace-id", "x-forwarded-for"]
        );
        assert_eq!(h["te"], "trailers");
    }
}
