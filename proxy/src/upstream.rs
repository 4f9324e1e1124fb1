//! Upstream connections: resolve, connect, TLS (SNI = host, ALPN h2 + http/1.1), pool.
//!
//! The connector is our own rather than hyper-rustls' so that every failure comes back as a
//! typed [`ConnectError`] (DNS, refused, timeout, which TLS verification failure) that
//! [`crate::error`] turns into a readable answer, and so that each step has its own timeout.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::body::ProxyBody;
use crate::metrics::Metrics;
use crate::trust::Trust;

/// Upstream settings.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Port of the Lattice listener (443).
    pub port: u16,
    /// PEM bundle trusted in addition to (or instead of) the system roots.
    pub ca_file: Option<PathBuf>,
    /// Whether to trust the system roots.
    pub system_roots: bool,
    /// TCP connect timeout (all addresses together).
    pub connect_timeout: Duration,
    /// TLS handshake timeout.
    pub tls_timeout: Duration,
    /// Time allowed from sending the request to receiving response headers.
    pub response_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Maximum idle connections kept per host.
    pub pool_max_idle_per_host: usize,
    /// Static name → addresses overrides (like curl's `--resolve`); an empty list answers
    /// "no such host".
    pub resolve: HashMap<String, Vec<IpAddr>>,
    /// How often `ca_file` is checked for new content (zero: never).
    pub ca_reload_interval: Duration,
}

/// Why an upstream connection could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The name did not resolve.
    #[error("DNS lookup of {host} failed: {cause}")]
    Dns {
        /// Upstream host.
        host: String,
        /// The resolver's answer.
        cause: String,
    },
    /// Every address refused the connection.
    #[error("upstream {host} ({addr}) refused the connection")]
    Refused {
        /// Upstream host.
        host: String,
        /// Last address tried.
        addr: SocketAddr,
    },
    /// Another TCP failure.
    #[error("could not connect to upstream {host} ({addr}): {cause}")]
    Connect {
        /// Upstream host.
        host: String,
        /// Last address tried.
        addr: SocketAddr,
        /// The OS error.
        cause: String,
    },
    /// No TCP connection within the connect timeout.
    #[error("connecting to upstream {host} timed out after {timeout:?}; check security groups and the service network association, or raise --connect-timeout")]
    ConnectTimeout {
        /// Upstream host.
        host: String,
        /// The configured timeout.
        timeout: Duration,
    },
    /// The TLS handshake failed; `cause` says why in words an operator can act on.
    #[error("TLS with upstream {host} failed: {cause}")]
    Tls {
        /// Upstream host.
        host: String,
        /// Readable cause (unknown issuer, name mismatch, ...).
        cause: String,
    },
    /// The TLS handshake did not finish in time.
    #[error("TLS handshake with upstream {host} timed out after {timeout:?}")]
    TlsTimeout {
        /// Upstream host.
        host: String,
        /// The configured timeout.
        timeout: Duration,
    },
}

/// Errors while building the TLS configuration at start.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// The CA file could not be read or parsed.
    #[error("cannot read CA bundle {path}: {source}; give a PEM file with the private CA certificate(s)")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// The parse or I/O error.
        source: rustls::pki_types::pem::Error,
    },
    /// The CA file holds no usable certificate.
    #[error("CA bundle {path} holds no usable CERTIFICATE block ({rejected} rejected); give the private CA certificate in PEM")]
    CaFileEmpty {
        /// The file.
        path: PathBuf,
        /// How many certificates rustls rejected.
        rejected: usize,
    },
    /// No trust anchors at all.
    #[error("no trust anchors: system roots are disabled or missing and no --ca-file was given")]
    NoRoots,
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the client TLS configuration: ring provider, TLS 1.2+1.3, system roots (or the
/// Mozilla set when the image has none) plus the optional private CA bundle and the CA
/// certificates fetched from ACM PCA (`extra_roots`), ALPN h2 and http/1.1.
pub fn tls_config(
    cfg: &UpstreamConfig,
    extra_roots: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    if cfg.system_roots {
        let native = rustls_native_certs::load_native_certs();
        for err in &native.errors {
            tracing::debug!(error = %err, "skipping unreadable system root");
        }
        let (added, _) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            // Distroless and scratch images have no CA store; Mozilla's set is what the
            // system store would hold.
            tracing::info!("no system root certificates found; using the bundled Mozilla roots");
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
    }
    if let Some(path) = &cfg.ca_file {
        add_ca_file(&mut roots, path)?;
    }
    let (added, rejected) = roots.add_parsable_certificates(extra_roots.iter().cloned());
    if rejected > 0 {
        tracing::warn!(
            added,
            rejected,
            "some fetched CA certificates were not usable"
        );
    }
    if roots.is_empty() {
        return Err(TlsConfigError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> Result<(), TlsConfigError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|source| TlsConfigError::CaFile {
            path: path.to_owned(),
            source,
        })?;
    let (added, rejected) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsConfigError::CaFileEmpty {
            path: path.to_owned(),
            rejected,
        });
    }
    tracing::info!(path = %path.display(), certificates = added, "trusting CA bundle");
    Ok(())
}

/// Resolves, connects and runs the TLS handshake; a `tower::Service<Uri>` for hyper's pool.
#[derive(Clone)]
pub struct Connector {
    inner: Arc<ConnectorInner>,
}

struct ConnectorInner {
    trust: Arc<Trust>,
    connect_timeout: Duration,
    tls_timeout: Duration,
    resolve: HashMap<String, Vec<IpAddr>>,
    metrics: Arc<Metrics>,
}

impl Connector {
    /// A connector whose new connections use `trust`'s current TLS configuration.
    pub fn new(cfg: &UpstreamConfig, trust: Arc<Trust>, metrics: Arc<Metrics>) -> Self {
        Connector {
            inner: Arc::new(ConnectorInner {
                trust,
                connect_timeout: cfg.connect_timeout,
                tls_timeout: cfg.tls_timeout,
                resolve: cfg
                    .resolve
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                    .collect(),
                metrics,
            }),
        }
    }

    /// Resolves, connects and runs the TLS handshake for `uri`'s host and port.
    pub async fn connect(&self, uri: Uri) -> Result<TlsConn, ConnectError> {
        self.inner.connect(uri).await
    }
}

impl ConnectorInner {
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ConnectError> {
        if let Some(ips) = self.resolve.get(&host.to_ascii_lowercase()) {
            if ips.is_empty() {
                return Err(ConnectError::Dns {
                    host: host.to_owned(),
                    cause: "no such host (static --resolve entry without addresses)".into(),
                });
            }
            return Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect());
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| ConnectError::Dns {
                host: host.to_owned(),
                cause: e.to_string(),
            })?
            .collect();
        if addrs.is_empty() {
            return Err(ConnectError::Dns {
                host: host.to_owned(),
                cause: "no addresses".into(),
            });
        }
        Ok(addrs)
    }

    async fn tcp(&self, host: &str, addrs: &[SocketAddr]) -> Result<TcpStream, ConnectError> {
        let mut last: Option<ConnectError> = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    // Small request/response exchanges: never wait for Nagle.
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    last = Some(ConnectError::Refused {
                        host: host.to_owned(),
                        addr: *addr,
                    })
                }
                Err(e) => {
                    last = Some(ConnectError::Connect {
                        host: host.to_owned(),
                        addr: *addr,
                        cause: e.to_string(),
                    })
                }
            }
        }
        Err(last.expect("resolve never returns an empty list"))
    }

    async fn connect(&self, uri: Uri) -> Result<TlsConn, ConnectError> {
        let host = uri.host().unwrap_or_default().to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let addrs = self.resolve(&host, port).await?;
        let tcp = tokio::time::timeout(self.connect_timeout, self.tcp(&host, &addrs))
            .await
            .map_err(|_| ConnectError::ConnectTimeout {
                host: host.clone(),
                timeout: self.connect_timeout,
            })??;
        let name = ServerName::try_from(host.clone()).map_err(|e| ConnectError::Tls {
            host: host.clone(),
            cause: format!("{host} is not a valid TLS server name: {e}"),
        })?;
        let connector = TlsConnector::from(self.trust.current());
        let tls = tokio::time::timeout(self.tls_timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| ConnectError::TlsTimeout {
                host: host.clone(),
                timeout: self.tls_timeout,
            })?
            .map_err(|e| ConnectError::Tls {
                host: host.clone(),
                cause: describe_tls_error(&e),
            })?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        tracing::debug!(%host, h2, "upstream connection open");
        self.metrics.upstream_connections.inc();
        self.metrics.upstream_connections_open.inc();
        Ok(TlsConn {
            io: TokioIo::new(tls),
            h2,
            metrics: self.metrics.clone(),
        })
    }
}

/// Words for a TLS failure that tell the operator what to do.
pub fn describe_tls_error(err: &io::Error) -> String {
    let Some(rustls_err) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return err.to_string();
    };
    match rustls_err {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "certificate verification failed: unknown issuer; add the private CA with --ca-file"
                .into()
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "certificate verification failed: the certificate is not valid for this name (name mismatch); check the service's custom domain and its certificate".into(),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "certificate verification failed: the certificate has expired".into(),
        // A trusted CA has the issuer's name but not its key: the bundle predates a CA
        // rotation (a new Private CA often keeps the old one's name).
        rustls::Error::InvalidCertificate(CertificateError::BadSignature) => "certificate verification failed: bad signature: a trusted CA has the issuer's name but another key; is the CA bundle (--ca-file) current after a CA rotation?".into(),
        rustls::Error::InvalidCertificate(
            CertificateError::UnsupportedSignatureAlgorithmContext { .. }
            | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. },
        ) => "certificate verification failed: the certificate is signed with an algorithm rustls does not support".into(),
        // Its Display is the Debug form: the verifier's own error says it better.
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            format!("certificate verification failed: {other}")
        }
        // Display, not Debug: the *Context variants say which name, time or purpose.
        rustls::Error::InvalidCertificate(other) => {
            format!("certificate verification failed: {other}")
        }
        other => other.to_string(),
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TlsConn;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsConn, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { inner.connect(uri).await })
    }
}

/// An established upstream TLS connection.
pub struct TlsConn {
    io: TokioIo<TlsStream<TcpStream>>,
    h2: bool,
    metrics: Arc<Metrics>,
}

impl TlsConn {
    /// Whether ALPN chose HTTP/2.
    pub fn is_h2(&self) -> bool {
        self.h2
    }
}

impl Drop for TlsConn {
    fn drop(&mut self) {
        self.metrics.upstream_connections_open.dec();
    }
}

impl Connection for TlsConn {
    fn connected(&self) -> Connected {
        let c = Connected::new();
        if self.h2 {
            c.negotiated_h2()
        } else {
            c
        }
    }
}

impl hyper::rt::Read for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// The pooled HTTPS client.
pub type UpstreamClient = Client<Connector, ProxyBody>;

/// Builds the pooled client: HTTP/1.1 or HTTP/2 as ALPN decides, idle connections kept for
/// `pool_idle_timeout`.
pub fn client(cfg: &UpstreamConfig, connector: Connector) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        // hyper sets Host (HTTP/1.1) or :authority (HTTP/2) from the URI authority, omitting
        // the default port exactly as aws-sigv4 does when it derives the signed host.
        .set_host(true)
        .build(connector)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_failure(e: CertificateError) -> String {
        let err = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(e),
        );
        describe_tls_error(&err)
    }

    /// Verifier failures read as words, never as rustls's Debug forms.
    #[test]
    fn certificate_failures_read_as_words() {
        let other = rustls::OtherError(Arc::new(io::Error::other("OCSP responder said revoked")));
        assert_eq!(
            tls_failure(CertificateError::Other(other)),
            "certificate verification failed: OCSP responder said revoked"
        );
        let unsupported = tls_failure(CertificateError::UnsupportedSignatureAlgorithmContext {
            signature_algorithm_id: vec![1, 2, 3],
            supported_algorithms: Vec::new(),
        });
        assert!(!unsupported.contains(['{', '[']), "{unsupported}");
        assert!(tls_failure(CertificateError::BadSignature).contains("CA rotation"));
        assert_eq!(
            tls_failure(CertificateError::UnknownIssuer),
            "certificate verification failed: unknown issuer; add the private CA with --ca-file"
        );
    }
}
