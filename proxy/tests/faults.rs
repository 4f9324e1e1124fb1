//! Faults (issue 16, docs/RELIABILITY.md "Faults"): an upstream that resets in the middle
//! of a response, stalls, sends a TLS record that does not decrypt, or closes a pooled
//! connection when the next request arrives. Each time the app gets a clean answer (a
//! 502/504 the proxy writes, or a response cut off so that the app sees it was cut), and
//! other requests are served meanwhile. The upstream is a scripted HTTP/1.1-over-TLS
//! server whose behaviour the request path picks. And the credentials endpoint (the EKS
//! Pod Identity agent) failing, then recovering.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::StatusCode;
use lattice_proxy::error::ERROR_HEADER;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The scripted upstream: its address, its PKI, how many connections it accepted, and the
/// signal on which `/reset` resets its connection.
struct Faulty {
    port: u16,
    pki: TestPki,
    connections: Arc<AtomicUsize>,
    reset: Arc<tokio::sync::Notify>,
}

/// Reads one request head; `None` when the peer closed first.
async fn read_head<S: AsyncReadExt + Unpin>(s: &mut S) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

impl Faulty {
    async fn start() -> Faulty {
        let pki = TestPki::new();
        let mut config = (*pki.server_config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let reset = Arc::new(tokio::sync::Notify::new());
        let reset_signal = reset.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let reset_signal = reset_signal.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut answered = 0;
                    while let Some(head) = read_head(&mut tls).await {
                        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                        match path.as_str() {
                            "/ok" => {
                                let _ = tls
                                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                    .await;
                            }
                            // 10 of the 100 bytes promised; once the test says the app has
                            // them, a reset. `/reset-early`: a reset instead of an answer.
                            "/reset" | "/reset-early" => {
                                if path == "/reset" {
                                    let _ = tls
                                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                                        .await;
                                    let _ = tls.flush().await;
                                    reset_signal.notified().await;
                                }
                                let (tcp, _) = tls.get_ref();
                                let _ = nix::sys::socket::setsockopt(
                                    tcp,
                                    nix::sys::socket::sockopt::Linger,
                                    &libc::linger {
                                        l_onoff: 1,
                                        l_linger: 0,
                                    },
                                );
                                return;
                            }
                            // Never answers (the connection stays open until the test ends).
                            "/stall" => {
                                let mut rest = Vec::new();
                                let _ = tls.read_to_end(&mut rest).await;
                                return;
                            }
                            // A TLS application-data record that does not decrypt, written
                            // beneath the TLS layer.
                            "/bad-record" => {
                                let (tcp, _) = tls.get_mut();
                                let _ = tcp.write_all(b"\x17\x03\x03\x00\x20").await;
                                let _ = tcp.write_all(&[0x42; 32]).await;
                                let _ = tcp.flush().await;
                                let mut rest = Vec::new();
                                let _ = tcp.read_to_end(&mut rest).await;
                                return;
                            }
                            // Answered once per connection, kept alive; the next request on
                            // the same connection is read and the connection closed
                            // unanswered (an upstream's idle timeout racing a reuse).
                            "/once" if answered == 0 => {
                                let _ = tls
                                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nonce")
                                    .await;
                            }
                            "/once" => return,
                            _ => {
                                let _ = tls
                                    .write_all(
                                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
                                    )
                                    .await;
                            }
                        }
                        answered += 1;
                    }
                });
            }
        });
        Faulty {
            port,
            pki,
            connections,
            reset,
        }
    }

    async fn proxy(&self, extra: &[&str]) -> lattice_proxy::server::Running {
        start_proxy(config_for(self.port, &self.pki.ca_file, extra)).await
    }
}

/// A request through the proxy with Connection: close; the raw answer, or what the client
/// saw when the proxy cut it.
async fn get(proxy: std::net::SocketAddr, path: &str) -> String {
    raw(
        proxy,
        format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
}

fn error_kind(answer: &str) -> Option<&str> {
    answer
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{ERROR_HEADER}: ")))
        .map(str::trim)
}

#[tokio::test]
async fn an_upstream_reset_mid_response_cuts_the_apps_response_and_others_are_served() {
    let up = Faulty::start().await;
    let p = up.proxy(&[]).await;
    let addr = p.proxy_addrs()[0];
    let mut app = tokio::net::TcpStream::connect(addr).await.unwrap();
    app.write_all(format!("GET /reset HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // The app has the head and the first 10 bytes before the upstream resets.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"0123456789") {
        let n = tokio::time::timeout(HANG, app.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    up.reset.notify_one();
    // Then the connection ends short of content-length: 100, which every HTTP client
    // reports as a truncated body (never a complete-looking response).
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(HANG, app.read_to_end(&mut rest))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 100"),
        "{head}"
    );
    assert_eq!((body, rest.len()), ("0123456789", 0), "{answer}");

    // Reset before any answer: a clean 502 that says so.
    let answer = get(addr, "/reset-early").await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert_eq!(error_kind(&answer), Some("upstream"), "{answer}");
    assert!(answer.contains("Connection reset by peer"), "{answer}");
    let ok = get(addr, "/ok").await;
    assert!(ok.starts_with("HTTP/1.1 200") && ok.ends_with("ok"), "{ok}");
    p.shutdown().await;
}

#[tokio::test]
async fn a_stalled_upstream_gets_a_504_at_the_response_timeout_and_others_are_served() {
    let up = Faulty::start().await;
    let p = up.proxy(&["--response-timeout", "300ms"]).await;
    let addr = p.proxy_addrs()[0];
    let stalled = tokio::spawn(async move { get(addr, "/stall").await });
    // Served while the other request waits on the stalled upstream.
    let ok = get(addr, "/ok").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let answer = stalled.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert_eq!(error_kind(&answer), Some("response-timeout"), "{answer}");
    p.shutdown().await;
}

#[tokio::test]
async fn a_tls_record_that_does_not_decrypt_is_a_502_and_others_are_served() {
    let up = Faulty::start().await;
    let p = up.proxy(&[]).await;
    let addr = p.proxy_addrs()[0];
    let answer = get(addr, "/bad-record").await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert_eq!(error_kind(&answer), Some("upstream"), "{answer}");
    assert!(!answer.contains('{'), "one readable line: {answer}");
    let ok = get(addr, "/ok").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    p.shutdown().await;
}

#[tokio::test]
async fn a_pooled_connection_closed_under_a_request_is_a_clean_502_then_a_new_one_serves() {
    let up = Faulty::start().await;
    // One worker, one pool: the second request finds the first one's connection.
    let p = up.proxy(&["--workers", "1"]).await;
    let addr = p.proxy_addrs()[0];
    let first = get(addr, "/once").await;
    assert!(
        first.starts_with("HTTP/1.1 200") && first.ends_with("once"),
        "{first}"
    );
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    // The pooled connection takes the request and is closed unanswered: the request had
    // been sent, so it is not replayed (the proxy cannot know whether the upstream acted).
    let second = get(addr, "/once").await;
    assert!(second.starts_with("HTTP/1.1 502"), "{second}");
    assert_eq!(error_kind(&second), Some("upstream"), "{second}");
    // The closed connection left the pool: the next request opens a new one.
    let third = get(addr, "/once").await;
    assert!(third.starts_with("HTTP/1.1 200"), "{third}");
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
    p.shutdown().await;
}

#[tokio::test]
async fn a_failing_pod_identity_agent_gets_clear_503s_and_its_recovery_needs_no_restart() {
    let up = Upstream::start().await;
    let agent = PodIdentity::start(Duration::from_secs(3600)).await;
    *agent.fault.lock().unwrap() = AgentFault::Garbage;
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
    // Each failure in turn: /readyz and every request say so in one line, and nothing is
    // forwarded, signed or not.
    for (fault, words) in [
        (AgentFault::Garbage, "credentials"),
        (AgentFault::Error500, "credentials"),
    ] {
        *agent.fault.lock().unwrap() = fault;
        let before = agent.faulted.load(Ordering::SeqCst);
        eventually("the agent's fault reached the proxy", async || {
            agent.faulted.load(Ordering::SeqCst) > before
        })
        .await;
        let (status, text) = admin_get(p.admin, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{fault:?}: {text}");
        assert!(
            text.contains(words) && !text.trim().contains('\n'),
            "{fault:?}: {text}"
        );
        let (status, headers, body) = send(p.proxy, "GET", HOST, "/", b"").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{fault:?}: {body}");
        assert_eq!(headers[ERROR_HEADER], "no-credentials", "{fault:?}");
        assert!(!body.trim().contains('\n'), "{fault:?}: {body}");
    }
    assert!(up.seen().is_empty(), "forwarded without credentials");

    // The agent recovers: the proxy's own retry picks it up, no restart.
    *agent.fault.lock().unwrap() = AgentFault::Healthy;
    eventually("ready again", async || {
        admin_get(p.admin, "/readyz").await.0 == StatusCode::OK
    })
    .await;
    let (status, _, body) = send(p.proxy, "GET", HOST, "/", b"").await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", p.logs());
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].access_key.starts_with("ASIAPODIDENTITY"),
        "{}",
        seen[0].access_key
    );
    let (_, m) = admin_get(p.admin, "/metrics").await;
    assert!(m.contains("lattice_proxy_credentials_valid 1"), "{m}");
}

/// Descriptors open in process `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// TCP sockets of this network namespace whose local port is `port`, listeners (state 0A)
/// and TIME_WAIT (06, held by the kernel, not by a descriptor) excluded: the connections a
/// server on `port` holds, closing ones too.
fn connections_on(port: u16) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            local_port == Some(port) && !matches!(f.get(3), Some(&"0A" | &"06"))
        })
        .count()
}

/// The short version of `cargo xtask bench soak`'s connection and vanishing-client phases,
/// on the real binary: keep-alive connections opened and closed, and clients that reset
/// mid-head or mid-body, leave no client connection and no descriptor behind.
#[tokio::test]
async fn vanishing_clients_leave_no_connection_or_descriptor_behind() {
    let up = Upstream::start().await;
    let p = ProxyProcess::spawn(
        &child_args(&up, &[]),
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
    let (status, _, _) = send(p.proxy, "GET", HOST, "/warm", b"").await;
    assert_eq!(status, StatusCode::OK);
    let pid = p.child.id();
    // Settled: no client connection, and no descriptor beyond those of before plus the
    // upstream connections the pools opened meanwhile (one pool per worker).
    let upstream_open = async || -> usize {
        let (_, m) = admin_get(p.admin, "/metrics").await;
        m.lines()
            .find_map(|l| l.strip_prefix("lattice_proxy_upstream_connections_open "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    };
    // Admin connections (these checks' own) are counted out: they come and go.
    let settled = async |before: usize, upstream_before: usize| {
        eventually("no client connection and no extra descriptor", async || {
            let none = has_metric(p.admin, "lattice_proxy_http_client_connections_open 0").await;
            let pooled = upstream_open().await.saturating_sub(upstream_before);
            let admin = connections_on(p.admin.port());
            none && connections_on(p.proxy.port()) == 0 && fds(pid) <= before + pooled + admin
        })
        .await;
    };

    // 200 keep-alive connections, one request each, then closed by the clients.
    let upstream_before = upstream_open().await;
    let before = fds(pid) - connections_on(p.admin.port());
    let mut open = Vec::new();
    for _ in 0..200 {
        let mut s = tokio::net::TcpStream::connect(p.proxy).await.unwrap();
        s.write_all(format!("GET /held HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        open.push(s);
    }
    assert!(fds(pid) >= before + 200, "the connections are held");
    drop(open);
    settled(before, upstream_before).await;

    // Clients that reset after half a head, or after a head and 1 000 of 100 000 body bytes.
    let upstream_before = upstream_open().await;
    let before = fds(pid) - connections_on(p.admin.port());
    for i in 0..100 {
        let s = tokio::net::TcpStream::connect(p.proxy).await.unwrap();
        let mut s = s.into_std().unwrap();
        s.set_nonblocking(false).unwrap();
        use std::io::Write as _;
        if i % 2 == 0 {
            write!(s, "GET /vanish HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: gon").unwrap();
        } else {
            write!(
                s,
                "POST /vanish HTTP/1.1\r\nHost: {HOST}\r\ncontent-length: 100000\r\n\r\n"
            )
            .unwrap();
            s.write_all(&[b'b'; 1000]).unwrap();
        }
        nix::sys::socket::setsockopt(
            &s,
            nix::sys::socket::sockopt::Linger,
            &libc::linger {
                l_onoff: 1,
                l_linger: 0,
            },
        )
        .unwrap();
    }
    settled(before, upstream_before).await;
    let (status, _, _) = send(p.proxy, "GET", HOST, "/after", b"").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn expired_credentials_are_never_used_while_the_agent_fails() {
    let up = Upstream::start().await;
    // Credentials for 6 s (the agent's expiry is in whole seconds: at least 5 s, room for
    // one request on a starved machine); then the agent fails.
    let agent = PodIdentity::start(Duration::from_secs(6)).await;
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
    *agent.fault.lock().unwrap() = AgentFault::Error500;
    let (status, _, body) = send(p.proxy, "GET", HOST, "/fresh", b"").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Once the credentials have expired, with every refresh failing, the proxy stops
    // signing instead of signing with what it has.
    eventually("not ready once the credentials expired", async || {
        admin_get(p.admin, "/readyz").await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let (status, headers, body) = send(p.proxy, "GET", HOST, "/stale", b"").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(headers[ERROR_HEADER], "no-credentials");
    let paths: Vec<String> = up.seen().into_iter().map(|s| s.path_and_query).collect();
    assert!(
        !paths.iter().any(|p| p == "/stale"),
        "signed with expired credentials: {paths:?}"
    );
    assert!(
        agent.faulted.load(Ordering::SeqCst) >= 1,
        "the refresh was tried"
    );
}
