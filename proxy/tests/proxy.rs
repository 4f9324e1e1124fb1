//! In-process tests: the proxy against a TLS upstream that verifies every signature with
//! botocore (tests/sigv4_oracle.py).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lattice_proxy::error::ERROR_HEADER;

#[tokio::test]
async fn signs_forwards_and_canonicalizes_the_query() {
    let up = Upstream::start().await;
    let p = start_proxy(config(&up, &[])).await;
    let addr = p.proxy_addrs()[0];
    let (status, headers, body) = send(addr, "GET", HOST, "/hello?x=a+b&b=2&a", b"").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(headers.get(ERROR_HEADER).is_none());
    // The query goes upstream in the encoding that was signed.
    assert_eq!(body, "ok GET /hello?x=a%20b&b=2&a=");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    let auth = seen[0].headers["authorization"].to_str().unwrap();
    assert!(
        auth.contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token,"),
        "{auth}"
    );
    assert!(
        auth.contains(&format!("/{REGION}/{SERVICE}/aws4_request")),
        "{auth}"
    );
    assert_eq!(seen[0].headers["x-amz-content-sha256"], "UNSIGNED-PAYLOAD");
    // The test upstream is not on 443, so the signed and sent host carries its port.
    assert_eq!(
        seen[0].headers["host"],
        format!("{HOST}:{}", up.addr.port()).as_str()
    );
    p.shutdown().await;
}

#[tokio::test]
async fn signatures_agree_with_botocore_on_tricky_targets() {
    let up = Upstream::start().await;
    let p = start_proxy(config(&up, &[])).await;
    let addr = p.proxy_addrs()[0];
    let targets = [
        "/",
        "/a%20b/c",
        "/a/./b/../c",
        "//double//slash/",
        "/%7Euser/%C3%BC",
        "/x?plus=%2B&space=a%20b&raw=a+b",
        "/x?k=2&k=1&k",
        "/x?=v&empty=",
        "/x?slash=/&q=%3F&amp=%26",
        "/x?tilde=~&star=*&utf=%C3%A9",
        "/x?",
    ];
    for t in targets {
        for method in ["GET", "POST", "DELETE"] {
            let (status, _, body) = send(addr, method, HOST, t, b"body").await;
            assert_eq!(status, StatusCode::OK, "{method} {t}: {body}");
        }
    }
    // Host in another case and with the app's port: the service name decides, lowercased.
    let (status, _, body) = send(addr, "GET", "SVC.Example.COM:80", "/p", b"").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        up.seen().last().unwrap().headers["host"],
        format!("{HOST}:{}", up.addr.port()).as_str()
    );
    p.shutdown().await;
}

#[tokio::test]
async fn app_credentials_and_lattice_identity_headers_never_pass() {
    let up = Upstream::start().await;
    let p = start_proxy(config(&up, &["--strip", "x-debug-token,X-Internal"])).await;
    let addr = p.proxy_addrs()[0];
    let req = Request::builder()
        .uri(format!("http://{addr}/h"))
        .header("host", HOST)
        .header("authorization", "AWS4-HMAC-SHA256 Credential=AKIDFORGED/x")
        .header("x-amz-date", "19990101T000000Z")
        .header("x-amz-security-token", "forged")
        .header("x-amz-content-sha256", "forged")
        .header(
            "x-amzn-lattice-identity",
            "Principal=arn:aws:iam::1:role/admin",
        )
        .header("x-amzn-lattice-network", "forged")
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-forwarded-for", "10.1.2.3")
        .header(
            "x-amzn-trace-id",
            "Root=1-5759e988-bd862e3fe1be46a994272793",
        )
        .header("content-type", "application/json")
        .header("x-debug-token", "dropped by --strip")
        .header("x-internal", "dropped by --strip")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = up.seen().pop().unwrap();
    assert_eq!(seen.access_key, AKID);
    for gone in [
        "x-debug-token",
        "x-internal",
        "x-amzn-lattice-identity",
        "x-amzn-lattice-network",
        "x-hop",
        "proxy-authorization",
    ] {
        assert!(!seen.headers.contains_key(gone), "{gone} was forwarded");
    }
    assert_eq!(
        seen.headers["x-amz-security-token"],
        token_for(AKID).as_str()
    );
    // Forwarded but not signed (hops may change them).
    assert_eq!(seen.headers["x-forwarded-for"], "10.1.2.3");
    assert_eq!(seen.headers["content-type"], "application/json");
    let auth = seen.headers["authorization"].to_str().unwrap();
    assert!(!auth.contains("x-forwarded-for") && !auth.contains("x-amzn-trace-id"));
    p.shutdown().await;
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    let up = Upstream::start().await;
    // Also covers serving on the caller's runtime instead of dedicated workers.
    let mut cfg = config(&up, &[]);
    cfg.workers = 0;
    let p = start_proxy(cfg).await;
    let addr = p.proxy_addrs()[0];
    // Content-Length body.
    let (status, _, body) = send(addr, "POST", HOST, "/count", &[7u8; 300_000]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "300000"));
    // Chunked body of unknown length, 8 MiB.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        for _ in 0..128 {
            tx.send(Bytes::from(vec![1u8; 65536])).await.unwrap();
        }
    });
    let req = Request::builder()
        .method("PUT")
        .uri(format!("http://{addr}/count"))
        .header("host", HOST)
        .body(ChannelBody(rx))
        .unwrap();
    let resp = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http()
        .request(req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"8388608");
    // A large download.
    let (status, _, body) = send(addr, "GET", HOST, "/download/5000000", b"").await;
    assert_eq!((status, body.len()), (StatusCode::OK, 5_000_000));
    p.shutdown().await;
}

#[tokio::test]
async fn small_payloads_can_be_signed() {
    let up = Upstream::start().await;
    let p = start_proxy(config(
        &up,
        &[
            "--unsigned-payload=false",
            "--signed-payload-max-bytes",
            "1024",
        ],
    ))
    .await;
    let addr = p.proxy_addrs()[0];
    let (status, _, body) = send(addr, "POST", HOST, "/hash", b"{\"hello\":\"lattice\"}").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body.len(), 64);
    let (status, _, body) = send(addr, "GET", HOST, "/hash", b"").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Over the limit: streamed with UNSIGNED-PAYLOAD instead of being buffered.
    let (status, _, body) = send(addr, "POST", HOST, "/count", &[0u8; 4096]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "4096"));
    assert_eq!(
        up.seen().last().unwrap().headers["x-amz-content-sha256"],
        "UNSIGNED-PAYLOAD"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn hosts_outside_the_allow_list_get_403() {
    let up = Upstream::start().await;
    let p = start_proxy(config(&up, &[])).await;
    let addr = p.proxy_addrs()[0];
    for host in [
        "169.254.169.254",
        "127.0.0.1:8080",
        "[::1]",
        "evil.net",
        "example.com.evil.net",
        "localhost",
    ] {
        let (status, headers, body) = send(addr, "GET", host, "/latest/meta-data/", b"").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{host}");
        assert_eq!(headers[ERROR_HEADER], "host-not-allowed");
        assert!(
            body.starts_with("lattice-proxy: host ") && body.ends_with('\n'),
            "{body}"
        );
        assert_eq!(body.lines().count(), 1, "{body}");
    }
    assert!(
        up.seen().is_empty(),
        "a refused request reached the upstream"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn lattice_responses_pass_through_unchanged() {
    let up = Upstream::start().await;
    let p = start_proxy(config(&up, &[])).await;
    let (status, headers, body) = send(p.proxy_addrs()[0], "GET", HOST, "/denied", b"").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(headers.get(ERROR_HEADER).is_none());
    assert_eq!(headers["x-amzn-errortype"], "AccessDeniedException");
    assert!(body.starts_with("AccessDeniedException: User: arn:aws:sts::123456789012:assumed-role/app/x is not authorized"));
    assert!(
        body.ends_with("because no service-based policy allows the vpc-lattice-svcs:Invoke action")
    );
    p.shutdown().await;
}

async fn expect_error(
    cfg: lattice_proxy::config::Config,
    host: &str,
    path: &str,
    status: StatusCode,
    kind: &str,
    words: &str,
) {
    let p = start_proxy(cfg).await;
    let (got, headers, body) = send(p.proxy_addrs()[0], "GET", host, path, b"").await;
    assert_eq!(got, status, "{body}");
    assert_eq!(headers[ERROR_HEADER], kind, "{body}");
    assert!(body.contains(words), "{kind}: {body:?} lacks {words:?}");
    assert_eq!(body.lines().count(), 1, "{body}");
    let (_, metrics) = admin_get(p.admin_addr(), "/metrics").await;
    assert!(
        metrics.contains(&format!(
            "lattice_proxy_http_errors_total{{kind=\"{}\"}} 1",
            kind.replace('-', "_")
        )),
        "{metrics}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn upstream_failures_are_readable() {
    let up = Upstream::start().await;

    // Connection refused: a port that is bound but not listening. Held for the whole test,
    // so no other socket can take the port meanwhile (a port closed just before could be).
    let unlistened = tokio::net::TcpSocket::new_v4().unwrap();
    unlistened.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut cfg = config(&up, &[]);
    cfg.upstream.port = unlistened.local_addr().unwrap().port();
    expect_error(
        cfg,
        HOST,
        "/",
        StatusCode::BAD_GATEWAY,
        "connect-refused",
        "refused the connection",
    )
    .await;

    // DNS failure.
    let mut cfg = config(&up, &[]);
    cfg.upstream.resolve.insert("nx.example.com".into(), vec![]);
    expect_error(
        cfg,
        "nx.example.com",
        "/",
        StatusCode::BAD_GATEWAY,
        "dns",
        "DNS lookup of nx.example.com failed",
    )
    .await;

    // Unknown issuer: the private CA is not configured.
    let mut cfg = config(&up, &[]);
    cfg.upstream.ca_file = None;
    cfg.upstream.system_roots = true;
    expect_error(
        cfg,
        HOST,
        "/",
        StatusCode::BAD_GATEWAY,
        "tls",
        "unknown issuer; add the private CA with --ca-file",
    )
    .await;

    // Name mismatch: the certificate is for *.example.com.
    let cfg = config(
        &up,
        &[
            "--allowed-domain",
            "example.org",
            "--resolve",
            "svc.example.org:127.0.0.1",
        ],
    );
    expect_error(
        cfg,
        "svc.example.org",
        "/",
        StatusCode::BAD_GATEWAY,
        "tls",
        "name mismatch",
    )
    .await;

    // Response timeout.
    let cfg = config(&up, &["--response-timeout", "200ms"]);
    expect_error(
        cfg,
        HOST,
        "/slow",
        StatusCode::GATEWAY_TIMEOUT,
        "response-timeout",
        "--response-timeout",
    )
    .await;

    // Connect timeout: a listener whose accept queue is full drops further SYNs.
    let (full_port, _full) = full_listener();
    let mut cfg = config(&up, &["--connect-timeout", "300ms"]);
    cfg.upstream.port = full_port;
    expect_error(
        cfg,
        HOST,
        "/",
        StatusCode::GATEWAY_TIMEOUT,
        "connect-timeout",
        "--connect-timeout",
    )
    .await;

    // TLS handshake timeout: a peer that accepts TCP and never speaks.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let mut cfg = config(&up, &["--tls-timeout", "200ms"]);
    cfg.upstream.port = silent_port;
    expect_error(
        cfg,
        HOST,
        "/",
        StatusCode::GATEWAY_TIMEOUT,
        "tls-timeout",
        "TLS handshake",
    )
    .await;
}

#[tokio::test]
async fn h2c_grpc_with_trailers_round_trips() {
    let up = Upstream::start().await;
    let p = start_proxy(config(&up, &[])).await;
    let tcp = tokio::net::TcpStream::connect(p.proxy_addrs()[0])
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-request-trailer", "from-client".parse().unwrap());
    let body = FramesBody(
        [
            Frame::data(Bytes::from_static(b"\x00\x00\x00\x00\x05hello")),
            Frame::trailers(trailers),
        ]
        .into(),
    );
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{HOST}/grpc"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let collected = resp.into_body().collect().await.unwrap();
    let t = collected.trailers().cloned().expect("response trailers");
    assert_eq!(t["grpc-status"], "0");
    assert_eq!(t["x-echo-trailer"], "from-client");
    assert_eq!(&collected.to_bytes()[..], b"\x00\x00\x00\x00\x05hello");
    let seen = up.seen().pop().unwrap();
    assert_eq!(
        seen.version,
        http::Version::HTTP_2,
        "ALPN should pick h2 upstream"
    );
    assert_eq!(seen.headers["te"], "trailers");
    p.shutdown().await;
}

#[tokio::test]
async fn absolute_form_works_as_an_explicit_proxy() {
    let up = Upstream::start().await;
    let p = start_proxy(config(&up, &[])).await;
    let proxy = format!("http://{}", p.proxy_addrs()[0]);
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "",
            "-x",
            &proxy,
            "-D",
            "-",
            "http://svc.example.com/abs?q=a+b",
        ])
        .output()
        .await
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.ends_with("ok GET /abs?q=a%20b"), "{text}");
    p.shutdown().await;
}

#[tokio::test]
async fn raw_protocol_edges() {
    let up = Upstream::start().await;
    let p = start_proxy(config(&up, &[])).await;
    let addr = p.proxy_addrs()[0];

    // CONNECT (curl -x with https://) and WebSocket upgrades: 501 with a reason.
    let r = raw(
        addr,
        b"CONNECT svc.example.com:443 HTTP/1.1\r\nHost: svc.example.com:443\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 501"), "{r}");
    assert!(r.contains("send plain http://"), "{r}");
    let r = raw(addr, b"GET /ws HTTP/1.1\r\nHost: svc.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").await;
    assert!(
        r.starts_with("HTTP/1.1 501") && r.contains("WebSocket"),
        "{r}"
    );

    // Malformed request line and missing Host.
    let r = raw(addr, b"NOT HTTP AT ALL\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = raw(addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(
        r.starts_with("HTTP/1.0 400") && r.contains("no Host header"),
        "{r}"
    );

    // Header section over --max-header-bytes (64 KiB by default).
    let mut big = b"GET / HTTP/1.1\r\nHost: svc.example.com\r\n".to_vec();
    for i in 0..40 {
        big.extend_from_slice(format!("x-big-{i}: {}\r\n", "a".repeat(2000)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    let r = raw(addr, &big).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");

    // Expect: 100-continue: the proxy answers 100, then the body streams upstream.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /count HTTP/1.1\r\nHost: svc.example.com\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n").await.unwrap();
    // Read up to the end of the interim response, however the bytes are split into reads;
    // nothing else can come before the body is sent.
    let mut head = Vec::new();
    tokio::time::timeout(HANG, async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut byte).await.unwrap();
            assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
            head.push(byte[0]);
        }
    })
    .await
    .expect("no interim response");
    assert_eq!(head, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.contains("200 OK") && rest.ends_with("\r\n\r\n5"),
        "{rest}"
    );
    assert!(up.seen().iter().all(|s| !s.headers.contains_key("expect")));
    p.shutdown().await;
}

/// --header-read-timeout closes a connection whose request head does not arrive in time
/// (slowloris), not sooner, and leaves a connection that sends its head in time alone.
#[tokio::test]
async fn slow_request_heads_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let mut cfg = config(&up, &["--header-read-timeout", "400ms"]);
    // Worker runtimes, as in production: the timer is per worker.
    cfg.workers = 1;
    let p = start_proxy(cfg).await;
    let addr = p.proxy_addrs()[0];

    let start = std::time::Instant::now();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: svc.exa")
        .await
        .unwrap();
    // A well-behaved client on another connection is served meanwhile.
    let r = raw(
        addr,
        format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");

    let mut out = Vec::new();
    tokio::time::timeout(HANG, slow.read_to_end(&mut out))
        .await
        .expect("the connection with an unfinished head was never closed")
        .unwrap();
    // One-sided on purpose: the timer starts when the proxy first reads the connection,
    // after `start`, and fires no earlier than its deadline (a monotonic clock), so "not
    // before 400 ms" holds on any machine; how much later it fires depends on the load,
    // and only the bound above limits that.
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(400),
        "closed after {waited:?}, before the 400 ms timeout"
    );
    // hyper 1.x closes without a response on a header timeout (it has no 408).
    assert_eq!(String::from_utf8_lossy(&out), "");
    p.shutdown().await;
}

#[tokio::test]
async fn admin_endpoints() {
    let up = Upstream::start().await;
    let p = start_proxy(config(&up, &[])).await;
    let admin = p.admin_addr();
    assert_eq!(admin_get(admin, "/healthz").await.0, StatusCode::OK);
    assert_eq!(
        admin_get(admin, "/readyz").await,
        (StatusCode::OK, "ready\n".into())
    );
    let (status, _, _) = send(p.proxy_addrs()[0], "GET", HOST, "/m", b"").await;
    assert_eq!(status, StatusCode::OK);
    let (status, m) = admin_get(admin, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for want in [
        "lattice_proxy_http_requests_total{status=\"200\"} 1",
        "lattice_proxy_http_request_duration_seconds_count 1",
        "lattice_proxy_upstream_connections_open 1",
        "lattice_proxy_upstream_connections_total 1",
        "lattice_proxy_credentials_refreshes_total{result=\"success\"} 1",
        "lattice_proxy_credentials_valid 1",
        "# EOF",
    ] {
        assert!(m.contains(want), "missing {want} in\n{m}");
    }
    assert!(!m.contains(&secret_for(AKID)) && !m.contains(&token_for(AKID)));
    p.shutdown().await;
}

#[tokio::test]
async fn sigv4a_signatures_verify() {
    // The oracle's SigV4A key derivation against the official suite's public key.
    let oracle = Oracle::spawn();
    let pk = oracle.expected(&serde_json::json!({
        "op": "v4a_public_key",
        "access_key": "AKIDEXAMPLE",
        "secret_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    }));
    assert_eq!(
        pk["x"],
        "b6618f6a65740a99e650b33b6b4b5bd0d43b176d721a3edfea7e7d2d56d936b1"
    );
    assert_eq!(
        pk["y"],
        "865ed22a7eadc9c5cb9d2cbaca1b3699139fedc5043dc6661864218330c8e518"
    );

    let up = Upstream::start().await;
    let p = start_proxy(config(
        &up,
        &["--sigv4a", "--region-set", "eu-west-1,us-east-1"],
    ))
    .await;
    for target in ["/", "/a%20b/?x=a+b&k", "//p/./q/../r"] {
        let (status, _, body) = send(p.proxy_addrs()[0], "GET", HOST, target, b"").await;
        assert_eq!(status, StatusCode::OK, "{target}: {body}");
    }
    let seen = up.seen().pop().unwrap();
    assert_eq!(seen.headers["x-amz-region-set"], "eu-west-1,us-east-1");
    assert!(seen.headers["authorization"]
        .to_str()
        .unwrap()
        .starts_with("AWS4-ECDSA-P256-SHA256 Credential="));
    p.shutdown().await;
}

#[tokio::test]
async fn private_ca_is_fetched_from_acm_pca() {
    let up = Upstream::start().await;
    // A second server (own test CA) plays ACM PCA and hands out the upstream's CA.
    let ca_pem = std::fs::read_to_string(&up.pki.ca_file).unwrap();
    let acm = Upstream::start_with(Some(ca_pem)).await;
    let endpoint = format!("https://acm.example.com:{}/", acm.addr.port());
    let mut cfg = config(
        &up,
        &[
            "--private-ca-arn",
            "arn:aws:acm-pca:eu-west-1:123456789012:certificate-authority/0f1e2d3c-test",
            "--acm-pca-endpoint",
            &endpoint,
            "--resolve",
            "acm.example.com:127.0.0.1",
        ],
    );
    // Trust only the ACM stand-in's CA up front: the upstream is reachable only if the
    // fetched CA is trusted.
    cfg.upstream.ca_file = Some(acm.pki.ca_file.clone());
    let p = start_proxy(cfg).await;
    let (status, _, body) = send(p.proxy_addrs()[0], "GET", HOST, "/via-fetched-ca", b"").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let call = acm.seen().pop().expect("ACM PCA was called");
    let auth = call.headers["authorization"].to_str().unwrap();
    assert!(auth.contains("/eu-west-1/acm-pca/aws4_request"), "{auth}");
    assert!(
        auth.contains(
            "content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token;x-amz-target"
        ),
        "{auth}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn http1_upstream_path() {
    let up = Upstream::start_http1().await;
    // One worker, so the connection count below is exact: each request here comes on a new
    // client connection, which the balancer gives to the worker with the fewest open, and
    // whether a worker has yet noticed that the previous client closed is a race (the
    // default, one worker per CPU, made it 1 or 2 upstream connections).
    let p = start_proxy(config(&up, &["--workers", "1"])).await;
    let addr = p.proxy_addrs()[0];
    let (status, _, body) = send(addr, "GET", HOST, "/one?x=a+b&b=2&a", b"").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "ok GET /one?x=a%20b&b=2&a=");
    let (status, _, body) = send(addr, "DELETE", HOST, "/a/./b/../c//d", b"").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A chunked body of unknown length goes upstream chunked.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        for _ in 0..64 {
            tx.send(Bytes::from(vec![1u8; 65536])).await.unwrap();
        }
    });
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/count"))
        .header("host", HOST)
        .body(ChannelBody(rx))
        .unwrap();
    let resp = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http()
        .request(req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        &resp.into_body().collect().await.unwrap().to_bytes()[..],
        b"4194304"
    );
    let (status, _, body) = send(addr, "GET", HOST, "/download/3000000", b"").await;
    assert_eq!((status, body.len()), (StatusCode::OK, 3_000_000));
    let seen = up.seen();
    assert!(seen.iter().all(|s| s.version == http::Version::HTTP_11));
    assert_eq!(
        seen[0].headers["host"],
        format!("{HOST}:{}", up.addr.port()).as_str()
    );
    // Pooled: sequential requests reuse one connection (it goes back to the pool before the
    // last byte of each response is passed on).
    let (_, m) = admin_get(p.admin_addr(), "/metrics").await;
    assert!(
        m.contains("lattice_proxy_upstream_connections_total 1\n"),
        "{m}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn pooled_http1_connections_are_reused_and_reaped() {
    let up = Upstream::start_http1().await;
    let p = start_proxy(config(
        &up,
        &["--workers", "1", "--pool-idle-timeout", "300ms"],
    ))
    .await;
    let addr = p.proxy_addrs()[0];
    // GETs, then a HEAD (whose empty body is never polled) and more GETs: one connection.
    for method in ["GET", "GET", "HEAD", "GET", "HEAD", "GET"] {
        let (status, _, _) = send(addr, method, HOST, "/one", b"").await;
        assert_eq!(status, StatusCode::OK, "{method}");
    }
    let (_, m) = admin_get(p.admin_addr(), "/metrics").await;
    assert!(
        m.contains("lattice_proxy_upstream_connections_total 1\n"),
        "{m}"
    );
    assert!(
        m.contains("lattice_proxy_upstream_connections_open 1\n"),
        "{m}"
    );
    // The upstream drops an idle pooled connection: the next request still succeeds, on a
    // new connection, with no error for the application. The upstream closes it only once
    // the response has arrived, and the request waits until the proxy has seen the close.
    let (status, _, _) = send(addr, "GET", HOST, "/then-close", b"").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(up.close_marked(), 1);
    let admin = p.admin_addr();
    eventually("the proxy to see the upstream close", async || {
        has_metric(admin, "lattice_proxy_upstream_connections_open 0").await
    })
    .await;
    // Counted from before the request that opens the next connection: its idle time can
    // only start later.
    let before = std::time::Instant::now();
    let (status, _, body) = send(addr, "GET", HOST, "/one", b"").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, m) = admin_get(p.admin_addr(), "/metrics").await;
    assert!(
        m.contains("lattice_proxy_upstream_connections_total 2\n"),
        "{m}"
    );
    // Idle past the timeout: the pool closes it, and the next request opens a new one.
    eventually("the pool to close the idle connection", async || {
        has_metric(admin, "lattice_proxy_upstream_connections_open 0").await
    })
    .await;
    // One-sided on purpose: the connection became idle after `before` and is reaped no
    // earlier than 300 ms later (a monotonic clock), so "not before the timeout" holds on any
    // machine; "after it" is the wait above, however late the reaper runs.
    let idle = before.elapsed();
    assert!(
        idle >= Duration::from_millis(300),
        "closed {idle:?} after the request, before the 300 ms idle timeout"
    );
    let (status, _, _) = send(addr, "GET", HOST, "/one", b"").await;
    assert_eq!(status, StatusCode::OK);
    let (_, m) = admin_get(p.admin_addr(), "/metrics").await;
    assert!(
        m.contains("lattice_proxy_upstream_connections_total 3\n"),
        "{m}"
    );
    p.shutdown().await;
}

/// A loopback listener with a backlog of 0 whose accept queue is already full, so the
/// kernel drops further SYNs and a connect to it hangs: a connect timeout on 127.0.0.1.
/// Returns its port and the sockets to keep open (never accepting) while it is used.
fn full_listener() -> (u16, (std::net::TcpListener, Vec<std::net::TcpStream>)) {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: plain socket calls on a descriptor we own; it is wrapped in a TcpListener
    // (closed on drop) right after listen.
    let listener = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let rc = libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0);
        assert_eq!(libc::listen(fd, 0), 0);
        std::net::TcpListener::from_raw_fd(fd)
    };
    let addr = listener.local_addr().unwrap();
    // For a listener, TCP_INFO reports the connections waiting to be accepted (tcpi_unacked)
    // and the backlog (tcpi_sacked); the kernel drops SYNs once the first exceeds the second.
    let queue = || {
        // SAFETY: getsockopt writes at most `len` bytes into the zeroed struct.
        unsafe {
            let mut info: libc::tcp_info = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            let rc = libc::getsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            );
            assert_eq!(rc, 0);
            (info.tcpi_unacked, info.tcpi_sacked)
        }
    };
    // Fill the queue with connects that complete (there is room for each when it is made),
    // and wait for the kernel to have queued them: a state read, not a timed-out connect
    // taken as proof that the queue is full.
    let mut held = Vec::new();
    let deadline = std::time::Instant::now() + HANG;
    loop {
        let (queued, backlog) = queue();
        if queued > backlog {
            break;
        }
        if held.len() <= backlog as usize {
            held.push(std::net::TcpStream::connect(addr).unwrap());
        } else {
            assert!(
                std::time::Instant::now() < deadline,
                "the accept queue never filled: {queued} queued, backlog {backlog}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    (addr.port(), (listener, held))
}

/// What answers at the redirect check's address in [`readiness_waits_for_the_redirect`].
const CHECK_NOTHING: u8 = 0;
const CHECK_OTHER_SERVER: u8 = 1;
const CHECK_REDIRECTED: u8 = 2;

#[tokio::test]
async fn readiness_waits_for_the_redirect() {
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let up = Upstream::start().await;
    // The check address stays bound for the whole test (so no other test can take it):
    // first not listening (a pod not yet enrolled: refused), then served by a task that
    // stands for what may be there — another server, or the eBPF redirect to the proxy.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let check_addr = socket.local_addr().unwrap().to_string();
    let p = start_proxy(config(&up, &["--redirect-check", &check_addr])).await;
    let admin = p.admin_addr();

    let (status, body) = admin_get(admin, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body.contains("not redirected") && body.contains("refused"),
        "{body}"
    );

    let mode = Arc::new(AtomicU8::new(CHECK_OTHER_SERVER));
    let listener = socket.listen(16).unwrap();
    let proxy_addr = p.proxy_addrs()[0];
    let served = mode.clone();
    let server = tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            match served.load(Ordering::SeqCst) {
                CHECK_REDIRECTED => {
                    let mut to_proxy = tokio::net::TcpStream::connect(proxy_addr).await.unwrap();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy_bidirectional(&mut conn, &mut to_proxy).await;
                    });
                }
                _ => {
                    let mut buf = [0u8; 1024];
                    let _ = conn.read(&mut buf).await;
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                }
            }
        }
    });

    // Something else listens on the port: not the proxy, so not ready.
    let (status, body) = admin_get(admin, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("something else answered"), "{body}");

    // Redirected to this proxy: ready, and it stays so (the check is not repeated).
    mode.store(CHECK_REDIRECTED, Ordering::SeqCst);
    assert_eq!(
        admin_get(admin, "/readyz").await,
        (StatusCode::OK, "ready\n".into())
    );
    mode.store(CHECK_NOTHING, Ordering::SeqCst);
    assert_eq!(admin_get(admin, "/readyz").await.0, StatusCode::OK);

    // An app asking for the check's name gets what any host off the list gets.
    let (status, headers, _) = send(
        proxy_addr,
        "GET",
        lattice_proxy::redirect_check::HOST,
        "/",
        b"",
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(headers.get(lattice_proxy::redirect_check::HEADER).is_none());
    assert!(up.seen().is_empty(), "nothing may go upstream");
    server.abort();
    p.shutdown().await;
}

/// A provider of the chain that is not configured, answering as aws-config's own do.
#[derive(Debug)]
struct NotConfigured(&'static str);

impl aws_credential_types::provider::ProvideCredentials for NotConfigured {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::ready(Err(
            aws_credential_types::provider::error::CredentialsError::not_loaded(self.0),
        ))
    }
}

/// With no provider configured, the 503 and /readyz say so in one line a person reads —
/// which providers were tried, why each declined, what to do — never the chain's Debug form.
#[tokio::test]
async fn without_credentials_the_answers_are_one_readable_line() {
    let up = Upstream::start().await;
    let chain = aws_config::meta::credentials::CredentialsProviderChain::first_try(
        "Environment",
        NotConfigured("environment variable not set"),
    )
    .or_else(
        "WebIdentityToken",
        NotConfigured("$AWS_WEB_IDENTITY_TOKEN_FILE was not set"),
    )
    .or_else("EcsContainer", NotConfigured("ECS provider not configured"));
    let p = lattice_proxy::server::start(
        config(&up, &[]),
        aws_credential_types::provider::SharedCredentialsProvider::new(chain),
    )
    .await
    .unwrap();
    p.credentials().first_fetch_done().await;

    let (status, ready) = admin_get(p.admin_addr(), "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert!(
        ready.starts_with("not ready: the AWS credential provider chain failed: "),
        "{ready}"
    );
    let (status, headers, body) = send(p.proxy_addrs()[0], "GET", HOST, "/x", b"").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(headers[ERROR_HEADER], "no-credentials");
    assert!(
        body.starts_with("lattice-proxy: no AWS credentials, request not forwarded: "),
        "{body}"
    );
    for text in [&ready, &body] {
        let line = text
            .strip_suffix('\n')
            .unwrap_or_else(|| panic!("no final newline: {text:?}"));
        assert!(!line.contains(['\n', '\r']), "more than one line: {text:?}");
        for dump in [
            "{",
            "Error {",
            "source:",
            "DisplayErrorContext",
            "ProviderError",
            "CredentialsNotLoaded",
            "Some(",
        ] {
            assert!(!line.contains(dump), "{dump:?} in {line}");
        }
        for cause in [
            "Attempted: Environment: the credential provider was not enabled: environment variable not set; WebIdentityToken: ",
            "EcsContainer: the credential provider was not enabled: ECS provider not configured",
            "EKS Pod Identity",
            "AWS_ACCESS_KEY_ID",
        ] {
            assert!(line.contains(cause), "{cause:?} missing from {line}");
        }
    }
    assert!(
        up.seen().is_empty(),
        "an unsigned request reached the upstream"
    );
    p.shutdown().await;
}

/// Replaces `file` as kubelet updates a mounted ConfigMap or Secret: a new file renamed
/// over the old one, so the proxy never reads it half-written.
fn replace_file(file: &std::path::Path, contents: &[u8]) {
    let tmp = file.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

#[tokio::test]
async fn a_replaced_ca_bundle_is_trusted_by_new_connections_without_a_restart() {
    let up = Upstream::start().await;
    // The bundle starts with another CA's certificate (before an AWS Private CA rotation
    // reaches the pod): Lattice's certificate is not trusted.
    let other = TestPki::new();
    let dir = TempDir::new("ca-rotation");
    let bundle = dir.0.join("ca.pem");
    std::fs::copy(&other.ca_file, &bundle).unwrap();
    // No idle pooling: every request opens a new upstream connection with the trust of now.
    let mut cfg = config(
        &up,
        &[
            "--ca-reload-interval",
            "50ms",
            "--pool-max-idle-per-host",
            "0",
        ],
    );
    cfg.upstream.ca_file = Some(bundle.clone());
    let proxy = start_proxy(cfg).await;
    let (addr, admin) = (proxy.proxy_addrs()[0], proxy.admin_addr());
    let (status, _, body) = send(addr, "GET", HOST, "/", b"").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    // Both test CAs have the same name, as a rotated Private CA often has.
    assert!(body.contains("after a CA rotation"), "{body}");
    assert!(has_metric(admin, "lattice_proxy_ca_reloads_total{result=\"ok\"} 0").await);

    // The rotation: the new bundle holds Lattice's CA.
    replace_file(&bundle, &std::fs::read(&up.pki.ca_file).unwrap());
    eventually("the new CA bundle is loaded", async || {
        has_metric(admin, "lattice_proxy_ca_reloads_total{result=\"ok\"} 1").await
    })
    .await;
    let (status, _, body) = send(addr, "GET", HOST, "/", b"").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A broken bundle is refused and the trust in use is kept.
    replace_file(&bundle, b"not a PEM bundle\n");
    eventually("the broken CA bundle is refused", async || {
        has_metric(admin, "lattice_proxy_ca_reloads_total{result=\"error\"} 1").await
    })
    .await;
    let (status, _, body) = send(addr, "GET", HOST, "/", b"").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(has_metric(admin, "lattice_proxy_ca_reloads_total{result=\"ok\"} 1").await);
    proxy.shutdown().await;
}
