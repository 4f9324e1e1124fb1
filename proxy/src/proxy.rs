//! One request: check host → rewrite URI → strip hop-by-hop → sign → forward.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_types::error::display::DisplayErrorContext;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Incoming};
use sha2::{Digest, Sha256};
use smallvec::SmallVec;

use crate::allow::{AllowList, Refusal};
use crate::body::ProxyBody;
use crate::credentials::WorkerCredentials;
use crate::deadline::Deadlines;
use crate::error::{self, ProxyError};
use crate::metrics::Metrics;
use crate::pool::{Names, Pool, PoolError};
use crate::redirect_check;
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
    credentials: WorkerCredentials,
    pool: Pool,
    upstream_port: u16,
    response_timeout: Duration,
    /// The worker's timer for the response timeout.
    deadlines: Deadlines,
    strip: Vec<HeaderName>,
    metrics: Arc<Metrics>,
    /// The worker this handler belongs to (its metrics shard).
    worker: usize,
    /// Service names seen by this worker, keyed by the authority bytes the application
    /// sent: parsing, lower-casing, the allow-list and the upstream authority are worked out
    /// once per name instead of once per request.
    routes: Mutex<Names<Box<[u8]>, Arc<Route>>>,
}

/// A request after [`Proxy::prepare`].
enum Prepared {
    /// Signed and ready for the pool.
    Signed(Request<ProxyBody>, Arc<Route>),
    /// Its payload is to be signed: the body is read and hashed first.
    ReadBody(Unread),
    /// Answered by the proxy itself: the redirect check (see [`redirect_check`]).
    Answered(Response<ProxyBody>),
}

/// A request whose body is read and hashed before it is signed.
struct Unread {
    req: Request<Incoming>,
    route: Arc<Route>,
    identity: Identity,
    uri: Uri,
    limit: u64,
}

/// At most this many names are remembered; the cache starts over when full, so an
/// application sending random names costs only the work done without a cache.
const MAX_ROUTES: usize = 1024;

/// One service name, as an application wrote it, resolved.
#[derive(Debug)]
struct Route {
    /// The host, lower-cased, without port or trailing dot (for logs and errors).
    host: String,
    /// The upstream authority (host and configured port), or why there is none.
    upstream: Result<Authority, RouteError>,
}

/// Why a name has no upstream; cached with the route, turned into the response each time.
#[derive(Debug, Clone)]
enum RouteError {
    Refused(Refusal),
    BadRequest(String),
}

impl From<RouteError> for ProxyError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::Refused(r) => ProxyError::HostRefused(r),
            RouteError::BadRequest(m) => ProxyError::BadRequest(m),
        }
    }
}

/// Request headers that never travel upstream: hop-by-hop ones (RFC 9110 §7.6.1), ones the
/// proxy answers itself (`expect`), and ones whose inbound values must not reach Lattice
/// (an app's own signature; the signer sets `x-amz-*` itself).
/// Request headers that do not go upstream: hop-by-hop ones (RFC 9110 §7.6.1), an
/// `Expect` the proxy has answered, the application's own credentials and signature
/// headers, and the `x-amzn-lattice-*` identity headers Lattice adds toward targets, which
/// nobody upstream may be fooled by. `host` is not among them: the pool sets it from the
/// route for HTTP/1.1 and removes it for HTTP/2, overwriting whatever the application sent.
/// A `match` on the name compiles to a length switch and one comparison, where a list of
/// `HeaderName`s would be compared one by one for every header.
fn request_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "http2-settings"
            | "expect"
            | "authorization"
    ) || name.starts_with("proxy-")
        || name.starts_with("x-amz-")
        || name.starts_with("x-amzn-lattice-")
}

/// Hop-by-hop response headers.
fn response_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-connection"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

impl Proxy {
    /// Creates the handler of one worker; `strip` are extra request headers to drop
    /// (`--strip`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        allow: AllowList,
        signer: Arc<Signer>,
        credentials: WorkerCredentials,
        pool: Pool,
        upstream_port: u16,
        response_timeout: Duration,
        deadlines: Deadlines,
        strip: Vec<HeaderName>,
        metrics: Arc<Metrics>,
        worker: usize,
    ) -> Self {
        Proxy {
            allow,
            signer,
            credentials,
            pool,
            upstream_port,
            response_timeout,
            deadlines,
            strip,
            metrics,
            worker,
            routes: Mutex::new(Names::default()),
        }
    }

    /// Handles one request; failures become the proxy's own responses here, and only here
    /// (the error type is for hyper: there is none).
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let start = Instant::now();
        let version = req.version();
        let method = req.method().clone();
        // A cheap clone (shared bytes), kept for the log lines.
        let target = req.uri().clone();
        let path = target.path();
        let result = match self.prepare(req) {
            Ok(Prepared::Signed(up, route)) => {
                let exchange = Box::pin(self.pool.send(up, start));
                self.respond(exchange, &route, start).await
            }
            // Boxed: rare, and its future would make every request's larger.
            Ok(Prepared::ReadBody(unread)) => Box::pin(self.read_sign_send(unread, start)).await,
            Ok(Prepared::Answered(resp)) => Ok(resp),
            Err(e) => Err(e),
        };
        let (mut resp, error) = match result {
            Ok(resp) => (resp, None),
            Err(err) => {
                let kind = err.kind();
                let why = error::chain(&err);
                if kind.is_upstream() || matches!(err, ProxyError::NoCredentials(_)) {
                    tracing::warn!(client = %conn.client, %method, %path, error = %why, kind = kind.as_str(), "request failed");
                } else {
                    tracing::info!(client = %conn.client, %method, %path, error = %why, kind = kind.as_str(), "request refused");
                }
                (err.to_response(), Some(kind))
            }
        };
        *resp.version_mut() = version;
        let elapsed = start.elapsed();
        tracing::debug!(%method, %path, status = resp.status().as_u16(), elapsed_ms = elapsed.as_secs_f64() * 1e3, original_dst = ?conn.original_dst, "request");
        self.metrics.record(
            self.worker,
            resp.status().as_u16(),
            elapsed.as_secs_f64(),
            error,
        );
        Ok(resp)
    }

    /// Everything up to sending that needs no waiting: checks, route, credentials, URI,
    /// headers and, unless the payload is to be signed, the signature. Synchronous so that
    /// the request future holds no copies of the request for it (each async fn level keeps
    /// its own; hyper moves the whole future into place for every request).
    fn prepare(&self, req: Request<Incoming>) -> Result<Prepared, ProxyError> {
        if req.method() == Method::CONNECT {
            return Err(ProxyError::ConnectUnsupported);
        }
        if let Some(up) = req.headers().get(header::UPGRADE) {
            // `Upgrade: h2c` (curl --http2 sends it on http:// URLs) is ignored, as RFC 9110
            // §7.8 lets a server do: the request is served over HTTP/1.1, and Upgrade and
            // HTTP2-Settings stay on this hop. Any other protocol cannot go through Lattice.
            if !only_h2c(req.headers()) {
                return Err(ProxyError::UpgradeUnsupported(
                    String::from_utf8_lossy(up.as_bytes()).into_owned(),
                ));
            }
        }
        check_expect(req.headers())?;
        check_transfer_coding(req.headers())?;

        let route = self.route(&req)?;
        let authority = match &route.upstream {
            Ok(a) => a.clone(),
            // Never an allowed host: the check is answered only with this process's token.
            Err(_) if route.host == redirect_check::HOST => {
                if let Some(token) = redirect_check::answer(req.headers()) {
                    let mut resp = Response::new(ProxyBody::empty());
                    *resp.status_mut() = StatusCode::NO_CONTENT;
                    resp.headers_mut().insert(redirect_check::HEADER, token);
                    return Ok(Prepared::Answered(resp));
                }
                return Err(route.upstream.clone().unwrap_err().into());
            }
            Err(e) => return Err(e.clone().into()),
        };

        // Credentials before anything else touches the network: fail closed.
        let identity = self
            .credentials
            .identity()
            .map_err(|e| ProxyError::NoCredentials(e.to_string()))?;

        // The request is rewritten in place: taken apart and rebuilt, its parts would be
        // copied several times over.
        let mut req = req;
        let uri = upstream_uri(authority, req.uri().path_and_query())?;
        let headers = req.headers_mut();
        strip_request_headers(headers);
        for name in &self.strip {
            headers.remove(name);
        }

        // Payload: UNSIGNED-PAYLOAD, or the hash of a small body, read first.
        if let PayloadMode::SignedUpTo(limit) = self.signer.payload_mode() {
            if fits(req.headers(), req.body(), limit) {
                return Ok(Prepared::ReadBody(Unread {
                    req,
                    route,
                    identity,
                    uri,
                    limit,
                }));
            }
        }
        let up = self.sign(&identity, uri, req.map(ProxyBody::from), None)?;
        Ok(Prepared::Signed(up, route))
    }

    /// Signs `up` for `uri` and makes it the request the pool sends.
    fn sign(
        &self,
        identity: &Identity,
        uri: Uri,
        mut up: Request<ProxyBody>,
        body_sha256: Option<String>,
    ) -> Result<Request<ProxyBody>, ProxyError> {
        let method = up.method().clone();
        self.signer
            .sign(
                identity,
                &method,
                &uri,
                up.headers_mut(),
                body_sha256,
                SystemTime::now(),
            )
            .map_err(|e| ProxyError::Signing(e.to_string()))?;
        *up.uri_mut() = uri;
        // The pool decides HTTP/1.1 or HTTP/2 from ALPN and sets Host; hyper refuses an
        // HTTP/2-versioned request on an HTTP/1.1 connection, so always hand it 1.1.
        *up.version_mut() = Version::HTTP_11;
        // The inbound extensions (hyper's upgrade handle, h2 protocol) stay on this side.
        up.extensions_mut().clear();
        Ok(up)
    }

    /// Payload signing: reads and hashes the body, signs, then sends.
    async fn read_sign_send(
        &self,
        unread: Unread,
        start: Instant,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Unread {
            req,
            route,
            identity,
            uri,
            limit,
        } = unread;
        let (up, hash) = read_payload(req, limit).await?;
        let up = self.sign(&identity, uri, up, Some(hash))?;
        self.respond(Box::pin(self.pool.send(up, start)), &route, start)
            .await
    }

    /// The response to `exchange` (the pool sending the request), with its hop-by-hop
    /// headers removed; the response deadline counts from `start`. The exchange comes boxed:
    /// hyper keeps one request future per client connection, sized for its largest state,
    /// and inline the exchange would make 1 000 idle connections cost 1.8 MiB more.
    async fn respond<F>(
        &self,
        exchange: F,
        route: &Route,
        start: Instant,
    ) -> Result<Response<ProxyBody>, ProxyError>
    where
        F: Future<Output = Result<Response<ProxyBody>, PoolError>> + Unpin,
    {
        let deadline = start + self.response_timeout;
        let resp = match self.deadlines.timeout_at(deadline, exchange).await {
            Err(_) => {
                return Err(ProxyError::ResponseTimeout {
                    host: route.host.clone(),
                    timeout: self.response_timeout,
                })
            }
            Ok(Err(PoolError::Connect(e))) => return Err(ProxyError::Connect(e)),
            Ok(Err(e)) => {
                tracing::debug!(host = %route.host, detail = %DisplayErrorContext(&e), "upstream failure");
                return Err(ProxyError::Upstream {
                    host: route.host.clone(),
                    cause: error::chain(&e),
                });
            }
            Ok(Ok(resp)) => resp,
        };
        let mut resp = resp;
        strip_hop_by_hop(resp.headers_mut());
        Ok(resp)
    }

    /// The route for the request's service name, from the cache or worked out now.
    fn route(&self, req: &Request<Incoming>) -> Result<Arc<Route>, ProxyError> {
        let raw = service_authority(req)?;
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(route) = routes.get(raw) {
            return Ok(route.clone());
        }
        let route = Arc::new(self.resolve(raw)?);
        if routes.len() >= MAX_ROUTES {
            routes.clear();
        }
        routes.insert(raw.into(), route.clone());
        Ok(route)
    }

    /// Works out a route from the authority an application sent (absolute-form URI or
    /// Host header). The port it used is dropped: the upstream port is configuration.
    fn resolve(&self, raw: &[u8]) -> Result<Route, ProxyError> {
        resolve(&self.allow, self.upstream_port, raw)
    }
}

/// Works out a route from the authority an application sent: the host checked against
/// `allow`, and the upstream authority with `upstream_port`.
fn resolve(allow: &AllowList, upstream_port: u16, raw: &[u8]) -> Result<Route, ProxyError> {
    let authority = Authority::try_from(raw).map_err(|_| {
        ProxyError::BadRequest(format!(
            "invalid Host header {:?}",
            String::from_utf8_lossy(raw)
        ))
    })?;
    let raw_host = authority.host().to_ascii_lowercase();
    if raw_host.is_empty() {
        return Err(ProxyError::MissingHost);
    }
    // A fully qualified name's one trailing dot goes; the allow-list sees it and refuses
    // more than one.
    let host = raw_host.strip_suffix('.').unwrap_or(&raw_host).to_owned();
    let upstream = if authority.as_str().contains('@') {
        Err(RouteError::BadRequest(
            "user information in the request target is not supported".into(),
        ))
    } else if !valid_port(&authority) {
        Err(RouteError::BadRequest(format!(
            "invalid port in Host {:?}: a port is 0 to 65535 (it is ignored: --upstream-port applies)",
            authority.as_str()
        )))
    } else if let Err(refusal) = allow.check(&raw_host) {
        Err(RouteError::Refused(refusal))
    } else {
        let upstream = match upstream_port {
            443 => host.clone(),
            port => format!("{host}:{port}"),
        };
        Authority::try_from(upstream)
            .map_err(|e| RouteError::BadRequest(format!("host {host:?}: {e}")))
    };
    Ok(Route { host, upstream })
}

/// The bytes that name the service: an absolute-form target's authority, which wins over
/// Host (RFC 9112 §3.2.2), else the Host header. Refused with 400: more than one Host (§3.2),
/// HTTP/1.1 without Host even with an absolute-form target (§3.2), a scheme other than http
/// or https, an authority-form target on anything but CONNECT (§3.2.3), and the asterisk
/// form on anything but OPTIONS (§3.2.4); `OPTIONS *` gets 501.
fn service_authority(req: &Request<Incoming>) -> Result<&[u8], ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).into_iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest(
            "more than one Host header; send exactly one, naming the service".into(),
        ));
    }
    let uri = req.uri();
    match (uri.scheme(), uri.authority()) {
        (Some(scheme), Some(authority)) => {
            if *scheme != Scheme::HTTP && *scheme != Scheme::HTTPS {
                return Err(ProxyError::BadRequest(format!(
                    "request target scheme {:?} is not http or https",
                    scheme.as_str()
                )));
            }
            if host.is_none() && req.version() == Version::HTTP_11 {
                return Err(ProxyError::BadRequest(
                    "HTTP/1.1 requires a Host header, also with an absolute-form target (RFC 9112 §3.2); add Host: <service name>".into(),
                ));
            }
            Ok(authority.as_str().as_bytes())
        }
        (None, Some(_)) => Err(ProxyError::BadRequest(format!(
            "request target {uri} is in authority form, which only CONNECT uses; send a path with Host: <service name>"
        ))),
        _ if uri.path() == "*" => Err(if req.method() == Method::OPTIONS {
            ProxyError::ServerWideOptions
        } else {
            ProxyError::BadRequest(format!(
                "request target * is for OPTIONS only, not {}",
                req.method()
            ))
        }),
        _ => host
            .map(|h| h.as_bytes())
            .ok_or(ProxyError::MissingHost),
    }
}

/// Whether the authority's port, if any, is a port: empty (`host:`, valid URI syntax) or a
/// number up to 65535. `Authority` accepts any digits. Called once userinfo is ruled out,
/// so the port is what follows the host.
fn valid_port(authority: &Authority) -> bool {
    match authority.as_str()[authority.host().len()..].strip_prefix(':') {
        None | Some("") => true,
        Some(port) => port.parse::<u16>().is_ok(),
    }
}

/// Whether every protocol the `Upgrade` headers offer is `h2c`.
fn only_h2c(headers: &HeaderMap) -> bool {
    headers.get_all(header::UPGRADE).iter().all(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').all(|p| p.trim().eq_ignore_ascii_case("h2c")))
    })
}

/// An `Expect` other than `100-continue` (which hyper answers) gets 417 (RFC 9110 §10.1.1):
/// stripping it would forward a request whose sender waits for something nobody does.
fn check_expect(headers: &HeaderMap) -> Result<(), ProxyError> {
    for v in headers.get_all(header::EXPECT) {
        let ok = v.to_str().is_ok_and(|v| {
            v.split(',')
                .all(|e| e.trim().eq_ignore_ascii_case("100-continue"))
        });
        if !ok {
            return Err(ProxyError::ExpectationFailed(
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            ));
        }
    }
    Ok(())
}

/// `Transfer-Encoding` must be `chunked` alone. hyper checks that chunked comes last and
/// decodes it; any coding before it would still be on the body, and the header that says
/// so is hop-by-hop: 501 (RFC 9112 §6.1). Chunked twice is malformed (§6.1 MUST NOT): 400.
fn check_transfer_coding(headers: &HeaderMap) -> Result<(), ProxyError> {
    let mut chunked = 0;
    for v in headers.get_all(header::TRANSFER_ENCODING) {
        let text = String::from_utf8_lossy(v.as_bytes());
        for coding in text.split(',').map(str::trim) {
            if !coding.eq_ignore_ascii_case("chunked") {
                return Err(ProxyError::TransferCodingUnsupported(text.into_owned()));
            }
            chunked += 1;
        }
    }
    if chunked > 1 {
        return Err(ProxyError::BadRequest(
            "Transfer-Encoding applies chunked more than once".into(),
        ));
    }
    Ok(())
}

/// Reads a body of at most `limit` bytes; the request with it, and its SHA-256 in hex.
async fn read_payload(
    req: Request<Incoming>,
    limit: u64,
) -> Result<(Request<ProxyBody>, String), ProxyError> {
    let (parts, body) = req.into_parts();
    let bytes = Limited::new(body, limit as usize)
        .collect()
        .await
        .map_err(|e| ProxyError::RequestBody(error::chain(&*e)))?
        .to_bytes();
    let hash = hex(&Sha256::digest(&bytes));
    Ok((Request::from_parts(parts, ProxyBody::full(bytes)), hash))
}

/// The absolute upstream URI: https, the route's authority, the path and the query in the
/// encoding that is signed ([`canonical_query`]).
fn upstream_uri(authority: Authority, pq: Option<&PathAndQuery>) -> Result<Uri, ProxyError> {
    // The asterisk form (`OPTIONS * HTTP/1.1`, which hyper accepts with any method) asks
    // about the server, not a resource: Lattice routes by path, and neither SigV4 nor a
    // URI has a canonical form of `https://host*` (found by fuzzing).
    if pq.is_some_and(|pq| pq.path() == "*") {
        return Err(ProxyError::BadRequest(
            "the asterisk-form request target (`*`) is not forwarded; request a path".into(),
        ));
    }
    let pq = match pq {
        // Nothing to rewrite: share the bytes.
        Some(pq) if pq.query().is_none() && !pq.path().is_empty() => pq.clone(),
        Some(pq) => {
            let path = Some(pq.path()).filter(|p| !p.is_empty()).unwrap_or("/");
            match pq.query().and_then(canonical_query) {
                Some(q) => PathAndQuery::try_from(format!("{path}?{q}")),
                None => PathAndQuery::try_from(path),
            }
            .map_err(|e| ProxyError::BadRequest(format!("path: {e}")))?
        }
        None => PathAndQuery::from_static("/"),
    };
    Uri::builder()
        .scheme(Scheme::HTTPS)
        .authority(authority)
        .path_and_query(pq)
        .build()
        .map_err(|e| ProxyError::BadRequest(e.to_string()))
}

/// Removes the request headers that must not go upstream ([`request_hop_by_hop`] and those
/// named by `Connection`), keeping `te: trailers`, which gRPC needs end to end and which is
/// the only TE value HTTP/2 allows.
fn strip_request_headers(headers: &mut HeaderMap) {
    let mut doomed = Doomed::new();
    find_doomed(headers, request_hop_by_hop, &mut doomed);
    let te_trailers = doomed.contains(&header::TE)
        && headers.get_all(header::TE).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
        });
    for name in doomed {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut doomed = Doomed::new();
    find_doomed(headers, response_hop_by_hop, &mut doomed);
    for name in doomed {
        headers.remove(name);
    }
}

/// Names to remove; on the stack unless more than eight go.
type Doomed = SmallVec<[HeaderName; 8]>;

/// Adds to `doomed` the names in `headers` that `hop_by_hop` picks, and those a `Connection`
/// header names. One pass over the names present (a message carries a handful), with no
/// hashed lookup unless there is something to remove. An out-parameter: returned, the
/// list would be copied.
fn find_doomed(headers: &HeaderMap, hop_by_hop: fn(&str) -> bool, doomed: &mut Doomed) {
    // Whether a Connection header names other headers; `Connection: keep-alive` (or `close`)
    // is the usual case, told from the value at hand without splitting it.
    let mut names_others = false;
    for (name, value) in headers {
        if hop_by_hop(name.as_str()) {
            if name == header::CONNECTION {
                let v = value.as_bytes();
                names_others |=
                    !(v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close"));
            }
            // A name's values come one after the other.
            if doomed.last() != Some(name) {
                doomed.push(name.clone());
            }
        }
    }
    if names_others {
        // Split as bytes: a value with other bytes (obs-text) still nominates the names in
        // it, which must not go upstream (found by fuzzing: `Connection: \xfb,x-secret`).
        let named = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            // `keep-alive` and `close` are options, not header names (both go anyway).
            .filter(|t| !t.eq_ignore_ascii_case(b"keep-alive") && !t.eq_ignore_ascii_case(b"close"))
            .filter_map(|t| HeaderName::from_bytes(t).ok());
        for name in named {
            if !doomed.contains(&name) {
                doomed.push(name);
            }
        }
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

/// Entry points for the fuzz targets in `fuzz/`: not an API, hidden from the docs, and
/// only thin wrappers over the private steps above.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// The upstream authority for an authority an application sent (absolute-form target or
    /// Host header), and the host as logged; `Err` when the proxy answers itself.
    pub fn route(
        allow: &AllowList,
        upstream_port: u16,
        raw: &[u8],
    ) -> Result<(String, Authority), ProxyError> {
        let route = resolve(allow, upstream_port, raw)?;
        route.upstream.map(|a| (route.host, a)).map_err(Into::into)
    }

    /// The URI a request is signed for and sent to.
    pub fn upstream_uri(
        authority: Authority,
        pq: Option<&PathAndQuery>,
    ) -> Result<Uri, ProxyError> {
        super::upstream_uri(authority, pq)
    }

    /// Removes the request headers that must not go upstream.
    pub fn strip_request_headers(headers: &mut HeaderMap) {
        super::strip_request_headers(headers)
    }

    /// Removes the hop-by-hop response headers.
    pub fn strip_response_headers(headers: &mut HeaderMap) {
        strip_hop_by_hop(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_uris() {
        let authority = Authority::from_static("svc.example.com");
        let uri = |pq: &str| {
            let pq = PathAndQuery::try_from(pq).unwrap();
            upstream_uri(authority.clone(), Some(&pq))
                .unwrap()
                .to_string()
        };
        assert_eq!(uri("/a/b"), "https://svc.example.com/a/b");
        assert_eq!(uri("/a?x=a+b&y"), "https://svc.example.com/a?x=a%20b&y=");
        assert_eq!(uri("/a?"), "https://svc.example.com/a");
        assert_eq!(uri("?q=1"), "https://svc.example.com/?q=1");
        assert_eq!(
            upstream_uri(authority.clone(), None).unwrap().to_string(),
            "https://svc.example.com/"
        );
    }

    fn header_map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for &(k, v) in pairs {
            h.append(k, HeaderValue::from_static(v));
        }
        h
    }

    fn sorted_names(h: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        names
    }

    #[test]
    fn request_headers_are_stripped() {
        let mut h = header_map(&[
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
        ]);
        strip_request_headers(&mut h);
        // `host` stays for the pool to overwrite (HTTP/1.1) or remove (HTTP/2).
        assert_eq!(
            sorted_names(&h),
            [
                "content-type",
                "host",
                "te",
                "x-amzn-trace-id",
                "x-forwarded-for"
            ]
        );
        assert_eq!(h["te"], "trailers");

        // Without `trailers`, TE goes; a Connection header naming nothing else goes alone.
        let mut h = header_map(&[
            ("te", "deflate"),
            ("connection", "close"),
            ("accept", "*/*"),
        ]);
        strip_request_headers(&mut h);
        assert_eq!(sorted_names(&h), ["accept"]);

        // A second Connection header line that names a header.
        let mut h = header_map(&[
            ("connection", "keep-alive"),
            ("x-two", "2"),
            ("connection", "X-Two"),
            ("accept", "*/*"),
        ]);
        strip_request_headers(&mut h);
        assert_eq!(sorted_names(&h), ["accept"]);
    }

    /// Found by fuzzing (header_filter): a `Connection` value with a non-ASCII byte was
    /// skipped whole, so the names it nominates went upstream.
    #[test]
    fn connection_with_non_ascii_bytes_still_nominates() {
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"\xfb, X-Secret").unwrap(),
        );
        h.append("x-secret", HeaderValue::from_static("1"));
        h.append(
            header::TE,
            HeaderValue::from_bytes(b"trailers, \xfb").unwrap(),
        );
        h.append("accept", HeaderValue::from_static("*/*"));
        strip_request_headers(&mut h);
        assert_eq!(sorted_names(&h), ["accept", "te"]);
        assert_eq!(h["te"], "trailers");

        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-hop,\xe9").unwrap(),
        );
        h.append("x-hop", HeaderValue::from_static("1"));
        h.append("date", HeaderValue::from_static("today"));
        strip_hop_by_hop(&mut h);
        assert_eq!(sorted_names(&h), ["date"]);
    }

    /// Found by fuzzing (sigv4_differential): `PATCH * HTTP/1.1` was signed for path `/*`
    /// and sent as `https://host*`, which aws-sigv4 reads as another host.
    #[test]
    fn asterisk_form_is_not_forwarded() {
        let authority = Authority::from_static("svc.example.com");
        let target: Uri = "*".parse().unwrap();
        let e = upstream_uri(authority, target.path_and_query()).unwrap_err();
        assert!(matches!(e, ProxyError::BadRequest(_)), "{e}");
        assert!(e.to_string().contains("asterisk"), "{e}");
    }

    #[test]
    fn response_headers_are_stripped() {
        let mut h = header_map(&[
            ("connection", "Keep-Alive, X-Hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("proxy-authenticate", "Basic"),
            ("content-type", "text/plain"),
            ("x-amzn-requestid", "abc"),
            ("date", "Tue, 24 Nov 2026 20:00:00 GMT"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(
            sorted_names(&h),
            ["content-type", "date", "x-amzn-requestid"]
        );
    }
}
