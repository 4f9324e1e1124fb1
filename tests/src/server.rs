//! The emulator's HTTP side: listeners (HTTPS with ALPN `h2`/`http/1.1`, plain HTTP), and
//! one async function per request: find the service by host → pick the route by path →
//! authenticate (SigV4) and authorize (auth policy) when the service is AWS_IAM → forward
//! to a target with Lattice's `x-amzn-lattice-*` headers.

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::{debug, info, warn, Instrument};

use crate::{
    config::{
        AuthType, ConfigError, EmulatorConfig, Model, Protocol, Route, Service, TargetProtocol,
    },
    credentials::Identity,
    policy::{Decision, RequestContext},
    respond::{self, INVOKE_ACTION},
    sigv4::{self, Payload, RequestParts},
    target,
    tls::{self, ServerTls, TlsError},
};

/// Error type of bodies passing through the emulator.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body of every response the emulator sends and every request it forwards.
pub type Body = BoxBody<Bytes, BoxError>;

/// Where the emulator takes the time from (SigV4 clock-skew and credential expiry checks).
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(Arc::new(SystemTime::now))
    }

    /// A clock stopped at `at` (for tests that replay requests signed at a known time).
    pub fn fixed(at: SystemTime) -> Self {
        Self(Arc::new(move || at))
    }

    /// The current time.
    pub fn now(&self) -> SystemTime {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Clock").field(&self.now()).finish()
    }
}

/// Settings that are not part of the Lattice model.
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// Directory that relative `auth_policy_file` paths are read from.
    pub base_dir: Option<PathBuf>,
    /// The emulator's clock.
    pub clock: Clock,
    /// How long connecting to a target may take.
    pub connect_timeout: Duration,
    /// How long a target may take to send its response headers.
    pub response_timeout: Duration,
    /// Largest body read to check a payload hash (requests not signed with
    /// `UNSIGNED-PAYLOAD`).
    pub max_body_bytes: usize,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        Self {
            base_dir: None,
            clock: Clock::system(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            max_body_bytes: 10 * 1024 * 1024,
        }
    }
}

/// The emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The certificates could not be made.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A listener could not be bound.
    #[error("cannot listen on {address}: {source}; pick a free address or port")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: io::Error,
    },
}

/// A bound listening socket and what it speaks.
#[derive(Debug)]
pub struct Listener {
    /// The socket.
    pub listener: TcpListener,
    /// HTTP or HTTPS.
    pub protocol: Protocol,
}

impl Listener {
    /// Binds `address` (port 0 for any free port).
    pub async fn bind(address: SocketAddr, protocol: Protocol) -> Result<Self, EmulatorError> {
        Self::bind_in(address, protocol, None).await
    }

    /// Binds `address` inside the network namespace `netns` (see [`crate::netns`]).
    pub async fn bind_in(
        address: SocketAddr,
        protocol: Protocol,
        netns: Option<&std::path::Path>,
    ) -> Result<Self, EmulatorError> {
        let listener = crate::netns::bind(address, netns)
            .await
            .map_err(|source| EmulatorError::Bind { address, source })?;
        Ok(Self { listener, protocol })
    }
}

struct State {
    model: Model,
    options: EmulatorOptions,
}

/// A configured emulator with its private CA, ready to serve listeners.
pub struct Emulator {
    state: Arc<State>,
    tls: ServerTls,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator").finish_non_exhaustive()
    }
}

impl Emulator {
    /// Validates the configuration and generates the CA and the server certificate.
    pub fn new(config: &EmulatorConfig, options: EmulatorOptions) -> Result<Self, EmulatorError> {
        let model = config.compile(options.base_dir.as_deref(), options.clock.now())?;
        Self::from_model(model, options)
    }

    /// Builds an emulator from an already validated model (see [`EmulatorConfig::compile`]).
    pub fn from_model(model: Model, options: EmulatorOptions) -> Result<Self, EmulatorError> {
        let tls = tls::generate(&model.tls_names)?;
        Ok(Self {
            state: Arc::new(State { model, options }),
            tls,
        })
    }

    /// The private CA certificate (PEM) that clients must trust.
    pub fn ca_certificate_pem(&self) -> &str {
        &self.tls.ca_pem
    }

    /// The private CA certificate (DER), for clients built in-process.
    pub fn ca_certificate_der(&self) -> &rustls::pki_types::CertificateDer<'static> {
        &self.tls.ca_der
    }

    /// The validated model.
    pub fn model(&self) -> &Model {
        &self.state.model
    }

    /// Serves the listeners until [`EmulatorHandle::shutdown`]. Must run inside a Tokio
    /// runtime.
    pub fn serve(&self, listeners: Vec<Listener>) -> EmulatorHandle {
        let (shutdown, watch_rx) = watch::channel(false);
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.server_config.clone());
        let mut addresses = Vec::new();
        let mut tasks = Vec::new();
        for Listener { listener, protocol } in listeners {
            let local = listener.local_addr().ok();
            if let Some(local) = local {
                addresses.push((local, protocol));
                info!(%local, ?protocol, "lattice emulator listening");
            }
            let acceptor = (protocol == Protocol::Https).then(|| acceptor.clone());
            tasks.push(tokio::spawn(accept_loop(
                listener,
                acceptor,
                self.state.clone(),
                watch_rx.clone(),
            )));
        }
        EmulatorHandle {
            addresses,
            ca_pem: self.tls.ca_pem.clone(),
            shutdown,
            tasks,
        }
    }
}

/// Validates the configuration, generates the CA and serves the listeners: the one call a
/// demo or a test needs.
pub async fn start(
    config: &EmulatorConfig,
    options: EmulatorOptions,
    listeners: Vec<Listener>,
) -> Result<EmulatorHandle, EmulatorError> {
    Ok(Emulator::new(config, options)?.serve(listeners))
}

/// A running emulator. Dropping the handle stops the listeners too (without waiting for
/// open requests); [`EmulatorHandle::shutdown`] waits for them.
#[derive(Debug)]
pub struct EmulatorHandle {
    addresses: Vec<(SocketAddr, Protocol)>,
    ca_pem: String,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl EmulatorHandle {
    /// The addresses served (with the ports chosen when bound to port 0).
    pub fn local_addrs(&self) -> &[(SocketAddr, Protocol)] {
        &self.addresses
    }

    /// The first address served with `protocol`.
    pub fn local_addr(&self, protocol: Protocol) -> Option<SocketAddr> {
        self.addresses
            .iter()
            .find(|(_, p)| *p == protocol)
            .map(|(a, _)| *a)
    }

    /// The private CA certificate (PEM).
    pub fn ca_certificate_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Stops accepting, lets open requests finish (5 s at most) and returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct ConnInfo {
    peer: SocketAddr,
    local: SocketAddr,
    tls: bool,
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: log, pause, go on.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let info = ConnInfo {
            peer,
            local,
            tls: acceptor.is_some(),
        };
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        let state = state.clone();
        let span = tracing::info_span!("conn", %peer, %local);
        let request_span = span.clone();
        tokio::spawn(
            async move {
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    // HTTP/2 streams run in tasks of their own: carry the connection's span.
                    async move { Ok::<_, Infallible>(handle(&state, info, req).await) }
                        .instrument(request_span.clone())
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                // A client that never finishes its headers is dropped after 30 s.
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30));
                let result = match acceptor {
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(tls) => {
                            let conn = builder.serve_connection(TokioIo::new(tls), service);
                            watcher.watch(conn.into_owned()).await
                        }
                        Err(e) => {
                            debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                    },
                    None => {
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                };
                if let Err(e) = result {
                    debug!(error = %e, "connection ended with an error");
                }
            }
            .instrument(span),
        );
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        warn!("open connections did not finish within 5 s; dropping them");
    }
}

/// The host a request is for: `Host`, else the HTTP/2 `:authority`.
fn request_host(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.as_str().to_owned()))
}

/// What Lattice knows about the caller after authentication.
enum Caller {
    /// The service's auth type is NONE.
    NotAuthenticated,
    /// Unsigned request to an AWS_IAM service.
    Anonymous,
    /// Signed request.
    Signed(Arc<Identity>),
}

impl Caller {
    fn identity(&self) -> Option<Arc<Identity>> {
        match self {
            Caller::Signed(id) => Some(id.clone()),
            _ => None,
        }
    }
}

async fn handle(state: &State, info: ConnInfo, req: Request<Incoming>) -> Response<Body> {
    let model = &state.model;
    let (parts, body) = req.into_parts();
    let Some(host) = request_host(&parts.headers, &parts.uri) else {
        return respond::bad_request("the request has neither Host nor :authority");
    };
    let Some(service) = model.service_for_host(&host) else {
        info!(%host, "unknown host");
        return respond::unknown_host(&host);
    };
    let path = parts.uri.path().to_owned();
    let Some(route) = service.route(&path) else {
        info!(service = %service.name, %path, "no route");
        return respond::no_route();
    };

    let body: Body = body.map_err(|e| -> BoxError { Box::new(e) }).boxed();
    let (caller, body) = match service.auth_type {
        AuthType::None => (Caller::NotAuthenticated, body),
        AuthType::AwsIam => match authorize(state, service, &parts, body, info).await {
            Ok(authorized) => authorized,
            Err(refusal) => return refusal,
        },
    };
    forward(state, service, route, &caller, parts, body, info, &host).await
}

/// Authenticates (SigV4, when signed) and authorizes (auth policy) a request to an AWS_IAM
/// service. Gives back the caller and the body (buffered when its hash had to be checked), or
/// Lattice's refusal.
async fn authorize(
    state: &State,
    service: &Service,
    parts: &http::request::Parts,
    body: Body,
    info: ConnInfo,
) -> Result<(Caller, Body), Response<Body>> {
    let model = &state.model;
    let (caller, body) = if parts.headers.contains_key(header::AUTHORIZATION) {
        let (payload_bytes, body) = if sigv4::needs_body(&parts.headers) {
            let limit = state.options.max_body_bytes;
            let bytes = match read_limited(body, limit).await {
                Ok(bytes) => bytes,
                Err(ReadError::TooLarge) => return Err(respond::payload_too_large(limit)),
                Err(ReadError::Body(e)) => {
                    return Err(respond::bad_request(&format!("cannot read the body: {e}")))
                }
            };
            let replay = Full::new(bytes.clone())
                .map_err(|never| match never {})
                .boxed();
            (Some(bytes), replay)
        } else {
            (None, body)
        };
        let payload = payload_bytes
            .as_deref()
            .map_or(Payload::NotRead, Payload::Bytes);
        let request = RequestParts {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
        };
        let now = state.options.clock.now();
        match sigv4::verify(request, payload, &model.registry, &model.region, now) {
            Ok(verified) => (Caller::Signed(verified.credential.identity), body),
            Err(e) => {
                info!(service = %service.name, error = %e, exception = e.exception(), "signature refused");
                return Err(respond::signature_error(&e));
            }
        }
    } else {
        (Caller::Anonymous, body)
    };

    let resource = format!("{}{}", service.arn, parts.uri.path());
    let ctx = request_context(model, service, &caller, parts, info, &resource);
    let decision = service
        .policy
        .as_ref()
        .map_or(Decision::ImplicitDeny, |p| p.evaluate(&ctx));
    let identity = caller.identity();
    info!(
        service = %service.name,
        principal = %identity.as_deref().map_or("anonymous".to_owned(), Identity::assumed_role_arn),
        ?decision,
        "authorization"
    );
    match decision {
        Decision::Allow => Ok((caller, body)),
        Decision::ImplicitDeny => Err(respond::access_denied(
            identity.as_deref(),
            &resource,
            false,
        )),
        Decision::ExplicitDeny => Err(respond::access_denied(identity.as_deref(), &resource, true)),
    }
}

enum ReadError {
    TooLarge,
    Body(BoxError),
}

/// Reads a whole body, refusing more than `limit` bytes.
async fn read_limited(mut body: Body, limit: usize) -> Result<Bytes, ReadError> {
    let mut buffer = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ReadError::Body)?;
        if let Ok(data) = frame.into_data() {
            if buffer.len() + data.len() > limit {
                return Err(ReadError::TooLarge);
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(buffer.freeze())
}

fn request_context(
    model: &Model,
    service: &Service,
    caller: &Caller,
    parts: &http::request::Parts,
    info: ConnInfo,
    resource: &str,
) -> RequestContext {
    let mut ctx = RequestContext::for_principal(caller.identity(), INVOKE_ACTION, resource);
    ctx.set("vpc-lattice-svcs:RequestMethod", [parts.method.as_str()]);
    ctx.set("vpc-lattice-svcs:RequestPath", [parts.uri.path()]);
    ctx.set("vpc-lattice-svcs:ServiceArn", [service.arn.as_str()]);
    ctx.set(
        "vpc-lattice-svcs:ServiceNetworkArn",
        [model.service_network_arn.as_str()],
    );
    ctx.set("vpc-lattice-svcs:Port", [info.local.port().to_string()]);
    if let Some(vpc) = model.source_vpc(info.peer.ip()) {
        ctx.set("vpc-lattice-svcs:SourceVpc", [vpc.id.as_str()]);
        ctx.set(
            "vpc-lattice-svcs:SourceVpcOwnerAccount",
            [vpc.owner_account.as_str()],
        );
    }
    ctx.set("aws:SourceIp", [info.peer.ip().to_string()]);
    ctx.set("aws:SecureTransport", [info.tls.to_string()]);
    for name in parts.headers.keys() {
        let values: Vec<String> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        ctx.set(&format!("vpc-lattice-svcs:RequestHeader/{name}"), values);
    }
    for pair in parts.uri.query().unwrap_or("").split('&') {
        if let Some((key, value)) = pair.split_once('=') {
            ctx.set(
                &format!("vpc-lattice-svcs:RequestQueryString/{key}"),
                [value],
            );
        }
    }
    ctx
}

/// Headers that belong to one connection and are never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

fn header_value(value: String) -> HeaderValue {
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    state: &State,
    service: &Service,
    route: &Route,
    caller: &Caller,
    parts: http::request::Parts,
    body: Body,
    info: ConnInfo,
    host: &str,
) -> Response<Body> {
    let model = &state.model;
    let group = &route.target_group;
    let target = group.pick();
    let target_name = match &target.netns {
        Some(ns) => format!("{} (netns {})", target.address, ns.display()),
        None => target.address.to_string(),
    };

    let mut headers = parts.headers;
    // gRPC's `te: trailers` is the one hop-by-hop header an HTTP/2 hop must keep.
    let wants_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains("trailers"))
    });
    strip_hop_by_hop(&mut headers);
    // Only Lattice may set its identity headers: drop whatever the caller sent.
    let forged: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("x-amzn-lattice-"))
        .cloned()
        .collect();
    for name in forged {
        headers.remove(name);
    }
    headers.insert(header::HOST, header_value(host.to_owned()));
    let identity = match caller {
        Caller::Signed(id) => format!(
            "Principal={}; SessionName={}; Type=AWS_IAM",
            id.assumed_role_arn(),
            id.session_name
        ),
        Caller::Anonymous | Caller::NotAuthenticated => "Type=Anonymous".to_owned(),
    };
    headers.insert("x-amzn-lattice-identity", header_value(identity));
    if let Some(vpc) = model.source_vpc(info.peer.ip()) {
        headers.insert(
            "x-amzn-lattice-network",
            header_value(format!("SourceVpcArn={}", vpc.arn)),
        );
    }
    headers.insert(
        "x-amzn-lattice-target",
        header_value(format!(
            "ServiceArn={}; ServiceNetworkArn={}; TargetGroupArn={}",
            service.arn, model.service_network_arn, group.arn
        )),
    );

    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/".to_owned(), |pq| pq.as_str().to_owned());
    let http2 = group.protocol_version == TargetProtocol::Http2;
    // HTTP/2 needs the scheme and authority in the URI (`:scheme`, `:authority`); HTTP/1.1
    // gets the origin form and `Host`.
    let uri = if http2 {
        format!("http://{host}{path_and_query}")
    } else {
        path_and_query
    };
    if http2 && wants_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let mut upstream = Request::new(body);
    *upstream.method_mut() = parts.method;
    *upstream.uri_mut() = match uri.parse() {
        Ok(uri) => uri,
        Err(_) => return respond::bad_request("the request target is not a valid URI"),
    };
    *upstream.version_mut() = if http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    *upstream.headers_mut() = headers;

    let stream = match target::connect(target, state.options.connect_timeout).await {
        Ok(stream) => stream,
        Err(e) => {
            warn!(target = %target_name, error = %e, "cannot connect to the target");
            return respond::target_unreachable(&target_name);
        }
    };
    let sent = match send(TokioIo::new(stream), http2, upstream).await {
        Ok(sent) => sent,
        Err(e) => {
            warn!(target = %target_name, error = %e, "HTTP handshake with the target failed");
            return respond::target_unreachable(&target_name);
        }
    };
    let timeout = state.options.response_timeout;
    match tokio::time::timeout(timeout, sent).await {
        Err(_) => {
            warn!(target = %target_name, ?timeout, "the target did not answer in time");
            respond::target_timeout(&target_name)
        }
        Ok(Ok(response)) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body.map_err(|e| -> BoxError { Box::new(e) }).boxed())
        }
        Ok(Err(e)) => {
            warn!(target = %target_name, error = %e, "the target failed to answer");
            respond::target_unreachable(&target_name)
        }
    }
}

type ResponseFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = hyper::Result<Response<Incoming>>> + Send>>;

/// Opens an HTTP/1.1 or HTTP/2 (prior knowledge) client connection on `io` and sends
/// `request` on it; the returned future resolves to the response head.
async fn send(
    io: TokioIo<tokio::net::TcpStream>,
    http2: bool,
    request: Request<Body>,
) -> hyper::Result<ResponseFuture> {
    if http2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(drive(connection));
        Ok(Box::pin(sender.send_request(request)))
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(drive(connection));
        Ok(Box::pin(sender.send_request(request)))
    }
}

/// Drives a client connection to a target until it closes.
async fn drive(connection: impl std::future::Future<Output = hyper::Result<()>>) {
    if let Err(e) = connection.await {
        debug!(error = %e, "target connection ended with an error");
    }
}
