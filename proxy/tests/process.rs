//! The `lattice-proxy` binary as a child process: the real AWS credential chain (env,
//! EKS Pod Identity), fail-closed behaviour, memory while streaming, SIGTERM drain.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioExecutor;
use lattice_proxy::error::ERROR_HEADER;

/// Starts the proxy binary with static credentials in the environment and waits for /readyz.
async fn spawn_ready(up: &Upstream, args: &[&str]) -> ProxyProcess {
    let p = ProxyProcess::spawn(
        &child_args(up, args),
        &[
            ("AWS_ACCESS_KEY_ID", AKID.to_string()),
            ("AWS_SECRET_ACCESS_KEY", secret_for(AKID)),
            ("AWS_SESSION_TOKEN", token_for(AKID)),
        ],
    );
    eventually("ready", async || {
        admin_get(p.admin, "/readyz").await.0 == StatusCode::OK
    })
    .await;
    p
}

#[tokio::test]
async fn env_credentials_sign_requests() {
    let up = Upstream::start().await;
    let p = spawn_ready(&up, &[]).await;
    let (status, _, body) = send(p.proxy, "GET", HOST, "/env", b"").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(up.seen()[0].access_key, AKID);
    let logs = p.logs();
    assert!(
        !logs.contains(&secret_for(AKID)) && !logs.contains(&token_for(AKID)),
        "{logs}"
    );
}

#[tokio::test]
async fn fails_closed_without_credentials() {
    let up = Upstream::start().await;
    let p = ProxyProcess::spawn(&child_args(&up, &[]), &[]);
    eventually("the first credentials fetch to fail", async || {
        let (status, body) = admin_get(p.admin, "/readyz").await;
        status == StatusCode::SERVICE_UNAVAILABLE && body.contains("provider chain")
    })
    .await;
    let (status, headers, body) = send(p.proxy, "GET", HOST, "/secret", b"").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(headers[ERROR_HEADER], "no-credentials");
    assert!(
        body.starts_with("lattice-proxy: no AWS credentials, request not forwarded: "),
        "{body}"
    );
    assert_eq!(body.lines().count(), 1);
    assert!(
        up.seen().is_empty(),
        "an unsigned request reached the upstream"
    );
    // The real chain's error reads as one line everywhere a person sees it: the answer, the
    // readiness text and the info-level log; its Debug form is for debug logs only.
    let (_, ready) = admin_get(p.admin, "/readyz").await;
    assert_eq!(ready.lines().count(), 1, "{ready}");
    for text in [&body, &ready] {
        assert!(
            !text.contains('{') && !text.contains("CredentialsNotLoaded"),
            "{text}"
        );
    }
    // The warning reaches the log through a pipe and a reader thread: wait for it, not for
    // /readyz, which can say it first.
    eventually("the credentials warning in the log", async || {
        p.logs()
            .contains("Ec2InstanceMetadata: the credential provider was not enabled: IMDS disabled")
    })
    .await;
    // JSON lines (so `{` is everywhere); info level, so no detail.
    let logs = p.logs();
    assert!(!logs.contains("CredentialsNotLoaded"), "{logs}");
}

#[tokio::test]
async fn pod_identity_credentials_are_refreshed_before_expiry() {
    let up = Upstream::start().await;
    // "Before expiry" is a deadline by nature: the proxy refreshes at half the remaining
    // lifetime, and every request below must find valid credentials. The agent's expiry is
    // in whole seconds, so 10 s leaves at least 4.5 s between a refresh falling due and the
    // old key expiring: room for a starved scheduler, where 4 s left only 1.5 s.
    let agent = PodIdentity::start(Duration::from_secs(10)).await;
    let p = ProxyProcess::spawn(
        &child_args(&up, &[]),
        &[
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                format!("http://{}/v1/credentials", agent.addr),
            ),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                agent.token_file.to_str().unwrap().to_string(),
            ),
        ],
    );
    eventually("ready", async || {
        admin_get(p.admin, "/readyz").await.0 == StatusCode::OK
    })
    .await;
    // Keep sending: every request must be signed (and verified) while keys rotate underneath.
    eventually("a request signed with refreshed credentials", async || {
        let (status, _, body) = send(p.proxy, "GET", HOST, "/rotate", b"").await;
        assert_eq!(status, StatusCode::OK, "{body}\n{}", p.logs());
        let keys: std::collections::BTreeSet<String> =
            up.seen().into_iter().map(|s| s.access_key).collect();
        keys.len() >= 3
    })
    .await;
    assert!(agent.hits.load(std::sync::atomic::Ordering::SeqCst) >= 3);
    let (_, m) = admin_get(p.admin, "/metrics").await;
    assert!(
        m.contains("lattice_proxy_credentials_refreshes_total{result=\"success\"}"),
        "{m}"
    );
    let logs = p.logs();
    assert!(
        !logs.contains("secret/") && !logs.contains("token/"),
        "secret in logs:\n{logs}"
    );
}

#[tokio::test]
async fn streams_100_mib_each_way_in_flat_memory() {
    const SIZE: u64 = 100 * 1024 * 1024;
    let up = Upstream::start().await;
    let p = spawn_ready(&up, &[]).await;
    // Warm up so the pool, TLS session and buffers exist before the baseline.
    let (status, _, _) = send(p.proxy, "POST", HOST, "/count", &[0u8; 70_000]).await;
    assert_eq!(status, StatusCode::OK);
    let before = p.rss_kib();

    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{}/count", p.proxy))
        .header("host", HOST)
        .body(StreamBody { left: SIZE })
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, Bytes::from(SIZE.to_string()));
    let after_upload = p.rss_kib();

    let req = Request::builder()
        .uri(format!("http://{}/download/{SIZE}", p.proxy))
        .header("host", HOST)
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http()
        .request(req)
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(f) = body.frame().await {
        if let Some(d) = f.unwrap().data_ref() {
            n += d.len() as u64;
        }
    }
    assert_eq!(n, SIZE);
    let after_download = p.rss_kib();
    let grown = after_upload.max(after_download).saturating_sub(before);
    eprintln!("proxy RSS: {before} KiB before, {after_upload} KiB after upload, {after_download} KiB after download");
    assert!(
        grown <= 6 * 1024,
        "RSS grew by {grown} KiB streaming 100 MiB"
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests() {
    let up = Upstream::start().await;
    let mut p = spawn_ready(&up, &["--drain-timeout", "30s"]).await;
    // A request whose body is still arriving when SIGTERM comes.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{}/count", p.proxy))
        .header("host", HOST)
        .body(ChannelBody(rx))
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let inflight = tokio::spawn(async move { client.request(req).await });
    tx.send(Bytes::from_static(b"first half ")).await.unwrap();
    eventually("the request to reach the upstream", async || {
        !up.seen().is_empty()
    })
    .await;
    p.sigterm();
    eventually("draining to start", async || {
        p.logs().contains("draining in-flight")
    })
    .await;
    // The listener closes while the request is still in flight, and new connections are
    // refused. Polled: the workers log "draining" when they see the stop, but the listener
    // belongs to the accepting task, which drops it when it sees the same stop: which of the
    // two comes first is up to the scheduler. The request cannot finish before the second
    // half of its body is sent below, so the listener must close during the drain.
    eventually(
        "the listener to close",
        async || match tokio::net::TcpStream::connect(p.proxy).await {
            Ok(_) => false,
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
                true
            }
        },
    )
    .await;
    assert!(
        !inflight.is_finished(),
        "the request ended before its body was sent (did the drain deadline pass first?)"
    );
    tx.send(Bytes::from_static(b"second half")).await.unwrap();
    drop(tx);
    let resp = inflight.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"22");
    let status = tokio::task::spawn_blocking(move || p.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn invalid_configuration_exits_64() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lattice-proxy"))
        .args([
            "--region",
            "eu-west-1",
            "--allowed-domain",
            "10.0.0.0",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allowed-domain"), "{err}");
}

#[tokio::test]
async fn starts_and_signs_on_a_host_without_ca_certificates() {
    // A minimal image without a CA bundle (SSL_CERT_FILE naming an empty file is what
    // rustls-native-certs then reads): the proxy warns and still serves with env
    // credentials and its --ca-file for the upstream.
    let up = Upstream::start().await;
    let dir = TempDir::new("no-roots");
    let empty = dir.0.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let p = ProxyProcess::spawn(
        &child_args(&up, &[]),
        &[
            ("AWS_ACCESS_KEY_ID", AKID.to_string()),
            ("AWS_SECRET_ACCESS_KEY", secret_for(AKID)),
            ("AWS_SESSION_TOKEN", token_for(AKID)),
            ("SSL_CERT_FILE", empty.display().to_string()),
            ("SSL_CERT_DIR", dir.0.display().to_string()),
        ],
    );
    eventually("ready", async || {
        admin_get(p.admin, "/readyz").await.0 == StatusCode::OK
    })
    .await;
    let (status, _, body) = send(p.proxy, "GET", HOST, "/no-roots", b"").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Logged at start; read through a pipe: wait for the line rather than assume it is there.
    eventually("the no-system-CA warning in the log", async || {
        p.logs().contains("no system CA certificates")
    })
    .await;
}

#[test]
fn version_names_the_git_revision() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lattice-proxy"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let revision = text
        .trim()
        .strip_prefix(concat!("lattice-proxy ", env!("CARGO_PKG_VERSION"), " ("))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{text}"));
    let hex = revision.strip_suffix("-dirty").unwrap_or(revision);
    assert!(
        revision == "unknown" || (hex.len() == 12 && hex.bytes().all(|b| b.is_ascii_hexdigit())),
        "{text}"
    );
}
