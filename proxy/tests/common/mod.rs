//! Test fixtures: a test CA, a TLS upstream that checks every signature with botocore, a
//! fake EKS Pod Identity endpoint, the proxy in-process or as a child process, and clients.
//! Everything binds 127.0.0.1 port 0.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lattice_proxy::config::{Args, Config};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

pub const REGION: &str = "eu-west-1";
pub const SERVICE: &str = "vpc-lattice-svcs";
pub const HOST: &str = "svc.example.com";
pub const AKID: &str = "AKIDTESTSTATIC";

/// Secret and token the fixtures issue for an access key id, so the upstream can verify
/// signatures from any credentials the tests hand out.
pub fn secret_for(akid: &str) -> String {
    format!("secret/{akid}/wJalrXUtnFEMI+K7MDENG")
}
pub fn token_for(akid: &str) -> String {
    format!("token/{akid}/IQoJb3JpZ2luX2VjE+session==")
}

/// A unique scratch directory removed on drop.
pub struct TempDir(pub PathBuf);
impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "lattice-proxy-test-{}-{}-{}",
            std::process::id(),
            tag,
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test CA and a server certificate for `*.example.com`.
pub struct TestPki {
    pub dir: TempDir,
    pub ca_file: PathBuf,
    pub server_config: Arc<rustls::ServerConfig>,
}

impl TestPki {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "lattice-proxy test private CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();

        let mut leaf =
            CertificateParams::new(vec!["*.example.com".to_string(), HOST.to_string()]).unwrap();
        leaf.distinguished_name.push(DnType::CommonName, HOST);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();

        let dir = TempDir::new("pki");
        let ca_file = dir.0.join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![
                    CertificateDer::from(leaf_cert.der().to_vec()),
                    CertificateDer::from(ca_cert.der().to_vec()),
                ],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .unwrap();
        server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TestPki {
            dir,
            ca_file,
            server_config: Arc::new(server_config),
        }
    }
}

/// botocore as a long-running child process (tests/sigv4_oracle.py).
pub struct Oracle {
    io: Mutex<(Child, ChildStdin, BufReader<ChildStdout>)>,
}

impl Oracle {
    pub fn spawn() -> Self {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sigv4_oracle.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with botocore is needed as the SigV4 oracle");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Oracle {
            io: Mutex::new((child, stdin, stdout)),
        }
    }

    pub fn expected(&self, input: &serde_json::Value) -> serde_json::Value {
        let mut g = self.io.lock().unwrap();
        let (_, stdin, stdout) = &mut *g;
        writeln!(stdin, "{input}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }
}

impl Drop for Oracle {
    fn drop(&mut self) {
        if let Ok(mut g) = self.io.lock() {
            let _ = g.0.kill();
            let _ = g.0.wait();
        }
    }
}

/// What the upstream saw for one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub access_key: String,
}

/// Verifies the SigV4 Authorization of a received request with botocore. Returns the
/// access key id on success, or a readable mismatch.
pub fn verify(
    oracle: &Oracle,
    method: &str,
    url: &str,
    headers: &HeaderMap,
) -> Result<String, String> {
    let auth = headers
        .get("authorization")
        .ok_or("no authorization header")?
        .to_str()
        .map_err(|e| e.to_string())?;
    let cred = auth
        .split("Credential=")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .ok_or_else(|| format!("no Credential in {auth}"))?;
    let signed = auth
        .split("SignedHeaders=")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .ok_or_else(|| format!("no SignedHeaders in {auth}"))?;
    // Credential=AKID/date/region/service/aws4_request (SigV4A: AKID/date/service/aws4_request).
    let scope: Vec<&str> = auth
        .split("Credential=")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_default()
        .split('/')
        .collect();
    let (region, service) = match scope.len() {
        5 => (scope[2], scope[3]),
        _ => (REGION, scope.get(2).copied().unwrap_or(SERVICE)),
    };
    let mut hs = serde_json::Map::new();
    for name in signed.split(';') {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        if values.is_empty() {
            return Err(format!("signed header {name} was not received"));
        }
        hs.insert(
            name.to_string(),
            serde_json::Value::String(values.join(",")),
        );
    }
    let token = headers
        .get("x-amz-security-token")
        .map(|v| v.to_str().unwrap().to_string());
    if let Some(t) = &token {
        if *t != token_for(cred) {
            return Err(format!(
                "session token {t} is not the one issued with {cred}"
            ));
        }
    }
    let input = serde_json::json!({
        "method": method,
        "url": url,
        "headers": hs,
        "access_key": cred,
        "secret_key": secret_for(cred),
        "token": token,
        "region": region,
        "service": service,
        "amz_date": headers.get("x-amz-date").ok_or("no x-amz-date")?.to_str().unwrap(),
    });
    if auth.starts_with("AWS4-ECDSA-P256-SHA256 ") {
        let mut input = input;
        input["op"] = "v4a".into();
        input["signature"] = auth.rsplit("Signature=").next().unwrap_or_default().into();
        let out = oracle.expected(&input);
        let prefix = out["authorization_prefix"]
            .as_str()
            .ok_or_else(|| format!("oracle failed: {out}"))?;
        return if out["valid"] == true && auth.starts_with(prefix) {
            Ok(cred.to_string())
        } else {
            Err(format!(
                "SigV4A signature invalid (valid={})\n got:  {auth}\n want: {prefix}...\n canonical request:\n{}",
                out["valid"],
                out["canonical_request"].as_str().unwrap_or_default()
            ))
        };
    }
    let out = oracle.expected(&input);
    let want = out["authorization"]
        .as_str()
        .ok_or_else(|| format!("oracle failed: {out}"))?;
    if want == auth {
        Ok(cred.to_string())
    } else {
        Err(format!(
            "signature mismatch\n got:  {auth}\n want: {want}\n botocore canonical request:\n{}",
            out["canonical_request"].as_str().unwrap_or_default()
        ))
    }
}

/// The in-process TLS upstream standing in for a Lattice service.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// TCP connections accepted, whatever came over them (a TLS handshake, or nothing).
    pub accepted: Arc<AtomicUsize>,
    /// Requests that reached the handler, signature valid or not.
    pub requests: Arc<AtomicUsize>,
    pub pki: TestPki,
    /// Connections that served `/then-close`, to be dropped by [`Upstream::close_marked`].
    marked: Arc<Mutex<Vec<Arc<tokio::sync::Notify>>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// An upstream that also answers ACM PCA's GetCertificateAuthorityCertificate with
    /// `pca_pem` as the CA certificate.
    pub async fn start_with(pca_pem: Option<String>) -> Self {
        Self::start_inner(pca_pem, true).await
    }

    /// An upstream that offers only HTTP/1.1 by ALPN (Lattice offers both).
    pub async fn start_http1() -> Self {
        Self::start_inner(None, false).await
    }

    async fn start_inner(pca_pem: Option<String>, h2: bool) -> Self {
        let pca_pem = Arc::new(pca_pem);
        let mut pki = TestPki::new();
        if !h2 {
            let mut c = (*pki.server_config).clone();
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            pki.server_config = Arc::new(c);
        }
        let oracle = Arc::new(Oracle::spawn());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let marked: Arc<Mutex<Vec<Arc<tokio::sync::Notify>>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config.clone());
        let seen2 = seen.clone();
        let marked2 = marked.clone();
        let (accepted2, requests2) = (accepted.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                accepted2.fetch_add(1, Ordering::SeqCst);
                let requests = requests2.clone();
                let acceptor = acceptor.clone();
                let oracle = oracle.clone();
                let seen = seen2.clone();
                let pca_pem = pca_pem.clone();
                let marked = marked2.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    // `/then-close`: answer normally (keep-alive) and mark the connection;
                    // the test drops it with `close_marked` once the response has arrived,
                    // so the connection is idle when it goes, as with a load balancer's
                    // idle timeout (a timer here could cut the response off on a slow run).
                    let close = Arc::new(tokio::sync::Notify::new());
                    let close2 = close.clone();
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        requests.fetch_add(1, Ordering::SeqCst);
                        let oracle = oracle.clone();
                        let seen = seen.clone();
                        let pca_pem = pca_pem.clone();
                        if req.uri().path() == "/then-close" {
                            marked.lock().unwrap().push(close2.clone());
                        }
                        async move {
                            Ok::<_, Infallible>(upstream_handle(req, oracle, seen, pca_pem).await)
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(tls), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = close.notified() => {}
                    }
                });
            }
        });
        Upstream {
            addr,
            seen,
            accepted,
            requests,
            pki,
            marked,
            _task: task,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// (connections accepted, requests received): what reached this upstream at all.
    pub fn reached(&self) -> (usize, usize) {
        (
            self.accepted.load(Ordering::SeqCst),
            self.requests.load(Ordering::SeqCst),
        )
    }

    /// Drops the connections that served `/then-close`; returns how many. Call it after the
    /// response has arrived: the connection is then idle on the proxy's side.
    pub fn close_marked(&self) -> usize {
        let marked = std::mem::take(&mut *self.marked.lock().unwrap());
        for close in &marked {
            // A stored permit if the connection task is not waiting yet: never lost.
            close.notify_one();
        }
        marked.len()
    }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<UpBody> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r
}

async fn upstream_handle(
    req: Request<Incoming>,
    oracle: Arc<Oracle>,
    seen: Arc<Mutex<Vec<Seen>>>,
    pca_pem: Arc<Option<String>>,
) -> Response<UpBody> {
    // Like nginx (400, "client sent duplicate host header"): an HTTP/2 request carries its
    // authority in :authority, and a Host header besides it is refused.
    if req.version() == http::Version::HTTP_2 && req.headers().contains_key("host") {
        return full(StatusCode::BAD_REQUEST, "duplicate host header\n");
    }
    let host = req
        .headers()
        .get("host")
        .map(|h| h.to_str().unwrap().to_string())
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let url = format!("https://{host}{pq}");
    let method = req.method().as_str().to_string();
    let mut headers = req.headers().clone();
    // HTTP/2 carries the host as :authority; SigV4 servers sign it as `host`.
    if !headers.contains_key("host") {
        headers.insert("host", host.parse().unwrap());
    }
    let verified = {
        let oracle = oracle.clone();
        let (m, u, h) = (method.clone(), url.clone(), headers.clone());
        tokio::task::spawn_blocking(move || verify(&oracle, &m, &u, &h))
            .await
            .unwrap()
    };
    let access_key = match verified {
        Ok(a) => a,
        Err(e) => return full(StatusCode::UNAUTHORIZED, format!("oracle: {e}\n")),
    };
    seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path_and_query: pq.clone(),
        version: req.version(),
        headers: headers.clone(),
        access_key: access_key.clone(),
    });
    let path = req.uri().path().to_string();
    let target = headers
        .get("x-amz-target")
        .map(|v| v.to_str().unwrap().to_string());
    if let (Some(pem), Some("ACMPrivateCA.GetCertificateAuthorityCertificate")) =
        (pca_pem.as_ref(), target.as_deref())
    {
        let data = req.into_body().collect().await.unwrap().to_bytes();
        use sha2::Digest;
        let got: String = sha2::Sha256::digest(&data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if headers["x-amz-content-sha256"] != got.as_str() {
            return full(StatusCode::BAD_REQUEST, "payload hash mismatch");
        }
        let req: serde_json::Value = serde_json::from_slice(&data).unwrap();
        assert!(req["CertificateAuthorityArn"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:acm-pca:"));
        let body = serde_json::json!({ "Certificate": pem, "CertificateChain": "" });
        return full(StatusCode::OK, body.to_string());
    }
    match path.as_str() {
        // Counts a streamed body without keeping it.
        "/count" => {
            let mut body = req.into_body();
            let mut n: u64 = 0;
            while let Some(f) = body.frame().await {
                match f {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            n += d.len() as u64
                        }
                    }
                    Err(e) => return full(StatusCode::BAD_REQUEST, format!("body error: {e}")),
                }
            }
            full(StatusCode::OK, n.to_string())
        }
        // Streams `n` bytes back.
        p if p.starts_with("/download/") => {
            let n: u64 = p["/download/".len()..].parse().unwrap();
            let body = StreamBody { left: n };
            Response::new(body.boxed())
        }
        // gRPC-style: echo the body, end with trailers, check the request's trailers.
        "/grpc" => {
            let collected = req.into_body().collect().await.unwrap();
            let req_trailers = collected.trailers().cloned().unwrap_or_default();
            let data = collected.to_bytes();
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            if let Some(v) = req_trailers.get("x-request-trailer") {
                trailers.insert("x-echo-trailer", v.clone());
            }
            let body = FramesBody([Frame::data(data), Frame::trailers(trailers)].into());
            let mut r = Response::new(body.boxed());
            r.headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            r
        }
        // Hashes the body and compares with x-amz-content-sha256 (signed-payload mode).
        "/hash" => {
            let data = req.into_body().collect().await.unwrap().to_bytes();
            use sha2::Digest;
            let got: String = sha2::Sha256::digest(&data)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let claimed = headers
                .get("x-amz-content-sha256")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            if got == claimed {
                full(StatusCode::OK, got)
            } else {
                full(
                    StatusCode::BAD_REQUEST,
                    format!("hash {got} != header {claimed}"),
                )
            }
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            full(StatusCode::OK, "late")
        }
        // What Lattice answers when the auth policy denies.
        "/denied" => {
            let mut r = full(
                StatusCode::FORBIDDEN,
                "AccessDeniedException: User: arn:aws:sts::123456789012:assumed-role/app/x is not authorized to perform: vpc-lattice-svcs:Invoke on resource: arn:aws:vpc-lattice:eu-west-1:123456789012:service/svc-0123/ because no service-based policy allows the vpc-lattice-svcs:Invoke action",
            );
            r.headers_mut()
                .insert("x-amzn-errortype", "AccessDeniedException".parse().unwrap());
            r.headers_mut()
                .insert("content-type", "text/plain".parse().unwrap());
            r
        }
        _ => {
            let _ = req.into_body().collect().await;
            full(StatusCode::OK, format!("ok {method} {pq}"))
        }
    }
}

/// A body of `left` zero bytes in 64 KiB frames, produced on demand.
pub struct StreamBody {
    pub left: u64,
}
impl Body for StreamBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        static CHUNK: [u8; 65536] = [0u8; 65536];
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(CHUNK.len() as u64) as usize;
        self.left -= n as u64;
        std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

/// A body made of given frames (data, then trailers).
pub struct FramesBody(pub std::collections::VecDeque<Frame<Bytes>>);
impl Body for FramesBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// Builds a proxy configuration for the given upstream from extra flags.
pub fn config(up: &Upstream, extra: &[&str]) -> Config {
    config_for(up.addr.port(), &up.pki.ca_file, extra)
}

/// Builds a proxy configuration for an upstream on 127.0.0.1:`port` (as [`HOST`]) whose
/// certificate `ca_file` issued, from extra flags.
pub fn config_for(port: u16, ca_file: &std::path::Path, extra: &[&str]) -> Config {
    let port = port.to_string();
    let resolve = format!("{HOST}:127.0.0.1");
    let ca = ca_file.to_str().unwrap().to_string();
    let mut argv: Vec<String> = [
        "lattice-proxy",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--region",
        REGION,
        "--allowed-domain",
        "example.com",
        "--upstream-port",
        &port,
        "--resolve",
        &resolve,
        "--ca-file",
        &ca,
        "--system-roots=false",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend(extra.iter().map(|s| s.to_string()));
    let args = Args::try_parse_from(argv).unwrap();
    Config::from_args(&args).unwrap()
}

/// Static credentials as the chain would hand them out.
pub fn static_provider() -> aws_credential_types::provider::SharedCredentialsProvider {
    aws_credential_types::provider::SharedCredentialsProvider::new(
        aws_credential_types::Credentials::new(
            AKID,
            secret_for(AKID),
            Some(token_for(AKID)),
            None,
            "test",
        ),
    )
}

/// Starts the proxy in-process and waits for its credentials.
pub async fn start_proxy(config: Config) -> lattice_proxy::server::Running {
    let running = lattice_proxy::server::start(config, static_provider())
        .await
        .unwrap();
    running.credentials().first_fetch_done().await;
    running
}

/// A plain HTTP/1.1 client for talking to the proxy.
pub type TestClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

pub fn client() -> TestClient {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// Sends `method path` with Host `host` through the proxy; returns status, headers, body.
pub async fn send(
    proxy: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    body: &'static [u8],
) -> (StatusCode, HeaderMap, String) {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{proxy}{path}"))
        .header("host", host)
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// How long a test waits for something that should happen before it gives up: only a hung
/// test ever waits this long, so it is generous.
pub const HANG: Duration = Duration::from_secs(60);

/// Polls `f` until it returns true; [`HANG`] only stops a hung test.
pub async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + HANG;
    while !f().await {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the admin's /metrics has the sample line `line` (name, labels and value).
pub async fn has_metric(admin: SocketAddr, line: &str) -> bool {
    admin_get(admin, "/metrics")
        .await
        .1
        .lines()
        .any(|l| l == line)
}

/// Raw HTTP/1.1 exchange: writes `request` and reads until the peer closes the connection
/// (a peer that keeps it open fails the test after [`HANG`]).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(HANG, s.read_to_end(&mut out))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the connection is still open after {HANG:?}; got so far: {}",
                String::from_utf8_lossy(&out)
            )
        })
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 3339 UTC timestamp (the Pod Identity agent's `Expiration` format).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// How the fake Pod Identity agent answers (see [`PodIdentity::fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentFault {
    /// Credentials, as the real agent hands them out.
    Healthy,
    /// 500 with the agent's JSON error body.
    Error500,
    /// 200 with a body that is not the credentials JSON.
    Garbage,
}

/// A fake EKS Pod Identity agent: checks the Authorization token and hands out
/// credentials that expire after `lifetime`, a new access key each time.
pub struct PodIdentity {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    /// What the agent does with the next requests; [`AgentFault::Healthy`] at start.
    pub fault: Arc<Mutex<AgentFault>>,
    /// Requests answered with a fault.
    pub faulted: Arc<AtomicUsize>,
    pub token_file: PathBuf,
    _dir: TempDir,
    _task: tokio::task::JoinHandle<()>,
}

impl PodIdentity {
    pub async fn start(lifetime: Duration) -> Self {
        let dir = TempDir::new("podid");
        let token_file = dir.0.join("eks-pod-identity-token");
        std::fs::write(&token_file, "pod-identity-jwt-token").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let hits2 = hits.clone();
        let fault = Arc::new(Mutex::new(AgentFault::Healthy));
        let faulted = Arc::new(AtomicUsize::new(0));
        let (fault2, faulted2) = (fault.clone(), faulted.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let hits = hits2.clone();
                let (fault, faulted) = (fault2.clone(), faulted2.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let hits = hits.clone();
                        let (fault, faulted) = (fault.clone(), faulted.clone());
                        async move {
                            let now = *fault.lock().unwrap();
                            if now != AgentFault::Healthy {
                                faulted.fetch_add(1, Ordering::SeqCst);
                                return Ok::<_, Infallible>(match now {
                                    AgentFault::Error500 => full(
                                        StatusCode::INTERNAL_SERVER_ERROR,
                                        "{\"Message\":\"Internal error\"}",
                                    ),
                                    _ => full(StatusCode::OK, "<html>gateway</html>"),
                                });
                            }
                            let authorized = req
                                .headers()
                                .get("authorization")
                                .is_some_and(|v| v == "pod-identity-jwt-token");
                            if !authorized {
                                return Ok::<_, Infallible>(full(
                                    StatusCode::UNAUTHORIZED,
                                    "{\"Message\":\"missing token\"}",
                                ));
                            }
                            let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
                            let akid = format!("ASIAPODIDENTITY{n:05}");
                            let body = serde_json::json!({
                                "AccessKeyId": akid,
                                "SecretAccessKey": secret_for(&akid),
                                "Token": token_for(&akid),
                                "AccountId": "123456789012",
                                "Expiration": rfc3339(SystemTime::now() + lifetime),
                            });
                            Ok(full(StatusCode::OK, body.to_string()))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        PodIdentity {
            addr,
            hits,
            fault,
            faulted,
            token_file,
            _dir: dir,
            _task: task,
        }
    }
}

/// The proxy binary as a child process with a clean AWS environment.
pub struct ProxyProcess {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl ProxyProcess {
    pub fn spawn(args: &[String], env: &[(&str, String)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lattice-proxy"));
        cmd.args(args)
            .args([
                "--log-format",
                "json",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("AWS_") || k.starts_with("LATTICE_PROXY_") {
                cmd.env_remove(k);
            }
        }
        // Nothing in the chain may leave loopback: no IMDS, no real profile files.
        cmd.env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent/lattice-proxy-test")
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/lattice-proxy-test",
            )
            .env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel::<(String, SocketAddr)>();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "listening" {
                        let addr = v["addr"].as_str().unwrap().parse().unwrap();
                        let _ = tx.send((v["listener"].as_str().unwrap().to_string(), addr));
                    }
                }
                log2.lock().unwrap().push(line);
            }
        });
        let mut addrs: HashMap<String, SocketAddr> = HashMap::new();
        while addrs.len() < 2 {
            let (name, addr) = rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("proxy did not start: {:?}", log.lock().unwrap()));
            addrs.insert(name, addr);
        }
        ProxyProcess {
            child,
            proxy: addrs["proxy"],
            admin: addrs["admin"],
            log,
        }
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Resident set size in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    pub fn sigterm(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Common flags for a child proxy pointed at `up`.
pub fn child_args(up: &Upstream, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "--region".into(),
        REGION.into(),
        "--allowed-domain".into(),
        "example.com".into(),
        "--upstream-port".into(),
        up.addr.port().to_string(),
        "--resolve".into(),
        format!("{HOST}:127.0.0.1"),
        "--ca-file".into(),
        up.pki.ca_file.to_str().unwrap().into(),
        "--system-roots=false".into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// GET on the admin address.
pub async fn admin_get(admin: SocketAddr, path: &str) -> (StatusCode, String) {
    let req = Request::builder()
        .uri(format!("http://{admin}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A request body fed through a channel, for tests that control when bytes arrive.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Bytes>);
impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}
