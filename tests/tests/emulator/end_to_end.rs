//! Requests through the running emulator: TLS (HTTP/1.1 and HTTP/2) trusting the generated
//! CA, SigV4-signed by Rust and by botocore, to local targets; Lattice's refusals; plain
//! HTTP; the fake Pod Identity agent; connecting to a target from a network namespace.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lattice_tests::{
    pod_identity::{self, PodIdentityAgent},
    sigv4::{self, SigningCredentials},
    target::{self, Target},
    Clock, Emulator, EmulatorConfig, EmulatorHandle, EmulatorOptions, Listener, Protocol,
};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

use crate::{botocore, fixtures::*};

const SERVICE_ID: &str = "svc-0123456789abcdef0";

/// A target app: answers like the seed's demo app and echoes what Lattice sent it.
pub async fn start_target(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: Request<hyper::body::Incoming>| async move {
                        let echo = |h: &str| {
                            req.headers()
                                .get(h)
                                .cloned()
                                .unwrap_or(HeaderValue::from_static("-"))
                        };
                        let mut response = Response::new(Full::new(Bytes::from(format!(
                            "Requsting to Pod(demo-pod): Hello from {name}"
                        ))));
                        let seen = response.headers_mut();
                        seen.insert("x-seen-identity", echo("x-amzn-lattice-identity"));
                        seen.insert("x-seen-target", echo("x-amzn-lattice-target"));
                        seen.insert("x-seen-network", echo("x-amzn-lattice-network"));
                        seen.insert("x-seen-host", echo("host"));
                        seen.insert(
                            "x-seen-path",
                            HeaderValue::from_str(req.uri().path_and_query().unwrap().as_str())
                                .unwrap(),
                        );
                        Ok::<_, Infallible>(response)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

/// An HTTP/2 (h2c) target: answers with the version and `te` it received.
async fn start_h2c_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let te = req.headers().get("te").map_or("-", |v| v.to_str().unwrap());
                        let body = format!("h2 target saw {:?} te={te}", req.version());
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

struct Setup {
    handle: EmulatorHandle,
    ca: CertificateDer<'static>,
}

async fn start_emulator() -> Setup {
    let app1 = start_target("demo-cluster1-v1").await;
    let app1_v2 = start_target("demo-cluster1-v2").await;
    let open = start_target("open-app").await;
    let grpc = start_h2c_target().await;
    let config = json!({
        "region": REGION,
        "account_id": ACCOUNT,
        "tls_names": ["*.example.com"],
        "source_vpcs": [{"id": "vpc-0aaa1111bbbb2222c", "cidrs": ["127.0.0.0/8"]}],
        "credentials": [
            {"access_key_id": TEMP_KEY, "secret_access_key": TEMP_SECRET, "session_token": TEMP_TOKEN,
             "role_name": "eks-cluster2-app-role", "session_name": "eks-eks-cluster2-demo-pod-0f3c9b1e",
             "tags": {"eks-cluster-name": "eks-cluster2", "kubernetes-namespace": "apps"},
             "expiration": "2024-01-02T04:04:05Z"},
            {"access_key_id": LONG_KEY, "secret_access_key": LONG_SECRET,
             "role_name": "eks-cluster1-app-role", "session_name": "eks-eks-cluster1-demo-pod-0f3c9b1e",
             "tags": {"eks-cluster-name": "eks-cluster1", "kubernetes-namespace": "apps"}}
        ],
        "services": [
            {"name": "demo-cluster1", "id": SERVICE_ID, "hosts": ["demo-cluster1.example.com"],
             "auth_type": "AWS_IAM",
             "auth_policy": {"Version": "2012-10-17", "Statement": [
                 {"Effect": "Allow", "Principal": "*", "Action": "vpc-lattice-svcs:Invoke", "Resource": "*",
                  "Condition": {"StringEquals": {
                      "aws:PrincipalTag/eks-cluster-name": "eks-cluster2",
                      "aws:PrincipalTag/kubernetes-namespace": "apps"}}},
                 {"Effect": "Deny", "Principal": "*", "Action": "*", "Resource": "*",
                  "Condition": {"StringLike": {"vpc-lattice-svcs:RequestPath": "/admin*"}}}
             ]},
             "routes": [{"path_prefix": "/", "target_group": "app1"},
                        {"path_prefix": "/v2/", "target_group": "app1-v2"}]},
            {"name": "grpc", "hosts": ["grpc.example.com"], "auth_type": "NONE",
             "routes": [{"target_group": "grpc"}]},
            {"name": "open", "hosts": ["open.example.com"], "auth_type": "NONE",
             "routes": [{"target_group": "open"}]}
        ],
        "target_groups": [
            {"name": "app1", "targets": [{"address": app1}]},
            {"name": "app1-v2", "targets": [{"address": app1_v2}]},
            {"name": "open", "targets": [{"address": open}]},
            {"name": "grpc", "protocol_version": "GRPC", "targets": [{"address": grpc}]}
        ]
    });
    let config: EmulatorConfig = serde_json::from_value(config).unwrap();
    let options = EmulatorOptions {
        clock: Clock::fixed(signed_at()),
        ..EmulatorOptions::default()
    };
    let emulator = Emulator::new(&config, options).unwrap();
    let ca = emulator.ca_certificate_der().clone();
    let listeners = vec![
        Listener::bind("127.0.0.1:0".parse().unwrap(), Protocol::Https)
            .await
            .unwrap(),
        Listener::bind("127.0.0.1:0".parse().unwrap(), Protocol::Http)
            .await
            .unwrap(),
    ];
    Setup {
        handle: emulator.serve(listeners),
        ca,
    }
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
    pub alpn: Option<Vec<u8>>,
}

/// Sends one request over TLS, trusting only the emulator's CA. `alpn` is `h2` or
/// `http/1.1`; the request URI must be absolute (origin-form is derived for HTTP/1.1).
async fn https(setup: &Setup, alpn: &[u8], request: Request<Full<Bytes>>) -> Answer {
    let address = setup.handle.local_addr(Protocol::Https).unwrap();
    https_to(address, &setup.ca, alpn, request).await
}

/// [`https`] to any address, trusting `ca`.
pub async fn https_to(
    address: SocketAddr,
    ca: &CertificateDer<'static>,
    alpn: &[u8],
    request: Request<Full<Bytes>>,
) -> Answer {
    let host = request.uri().host().unwrap().to_owned();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut config =
        rustls::ClientConfig::builder_with_provider(lattice_tests::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(address).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from(host).unwrap(), tcp)
        .await
        .expect("TLS handshake with the emulator, trusting its CA");
    let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let response = if negotiated.as_deref() == Some(b"h2") {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut request = request;
        request.headers_mut().remove(http::header::HOST);
        sender.send_request(request).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let (mut parts, body) = request.into_parts();
        parts.uri = parts
            .uri
            .path_and_query()
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        sender
            .send_request(Request::from_parts(parts, body))
            .await
            .unwrap()
    };
    collect(response, negotiated).await
}

pub async fn collect(response: Response<hyper::body::Incoming>, alpn: Option<Vec<u8>>) -> Answer {
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap(),
        alpn,
    }
}

/// A request signed by the Rust signer at the fixed test time.
fn signed(
    method: Method,
    url: &str,
    key: &str,
    secret: &str,
    token: Option<&str>,
) -> Request<Full<Bytes>> {
    signed_at_time(signed_at(), method, url, key, secret, token)
}

/// A request signed by the Rust signer at `at`.
pub fn signed_at_time(
    at: std::time::SystemTime,
    method: Method,
    url: &str,
    key: &str,
    secret: &str,
    token: Option<&str>,
) -> Request<Full<Bytes>> {
    let uri: http::Uri = url.parse().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::HOST,
        HeaderValue::from_str(uri.authority().unwrap().as_str()).unwrap(),
    );
    let credentials = SigningCredentials {
        access_key_id: key.to_owned(),
        secret_access_key: secret.to_owned(),
        session_token: token.map(str::to_owned),
    };
    sigv4::sign(&method, &uri, &mut headers, &credentials, REGION, at).unwrap();
    let mut request = Request::new(Full::new(Bytes::new()));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    request
}

fn cluster2(url: &str) -> Request<Full<Bytes>> {
    signed(Method::GET, url, TEMP_KEY, TEMP_SECRET, Some(TEMP_TOKEN))
}

fn cluster1(url: &str) -> Request<Full<Bytes>> {
    signed(Method::GET, url, LONG_KEY, LONG_SECRET, None)
}

fn header<'a>(answer: &'a Answer, name: &str) -> &'a str {
    answer.headers.get(name).map_or("", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn allowed_principal_reaches_the_target_over_http1_and_h2() {
    let setup = start_emulator().await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let answer = https(
            &setup,
            alpn,
            cluster2("https://demo-cluster1.example.com/hello?x=1"),
        )
        .await;
        assert_eq!(answer.alpn.as_deref(), Some(alpn));
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(
            answer.body,
            "Requsting to Pod(demo-pod): Hello from demo-cluster1-v1"
        );
        assert_eq!(
            header(&answer, "x-seen-identity"),
            format!(
                "Principal=arn:aws:sts::{ACCOUNT}:assumed-role/eks-cluster2-app-role/eks-eks-cluster2-demo-pod-0f3c9b1e; \
                 SessionName=eks-eks-cluster2-demo-pod-0f3c9b1e; Type=AWS_IAM"
            )
        );
        let target = header(&answer, "x-seen-target");
        assert!(
            target.starts_with(&format!(
                "ServiceArn=arn:aws:vpc-lattice:{REGION}:{ACCOUNT}:service/{SERVICE_ID}; ServiceNetworkArn=arn:aws:vpc-lattice:{REGION}:{ACCOUNT}:servicenetwork/sn-"
            )),
            "{target}"
        );
        assert!(
            target.contains("; TargetGroupArn=arn:aws:vpc-lattice:"),
            "{target}"
        );
        assert_eq!(
            header(&answer, "x-seen-network"),
            format!("SourceVpcArn=arn:aws:ec2:{REGION}:{ACCOUNT}:vpc/vpc-0aaa1111bbbb2222c")
        );
        assert_eq!(header(&answer, "x-seen-host"), "demo-cluster1.example.com");
        assert_eq!(header(&answer, "x-seen-path"), "/hello?x=1");
    }
    // The longest path prefix wins.
    let answer = https(
        &setup,
        b"h2",
        cluster2("https://demo-cluster1.example.com/v2/items"),
    )
    .await;
    assert_eq!(
        answer.body,
        "Requsting to Pod(demo-pod): Hello from demo-cluster1-v2"
    );
    setup.handle.shutdown().await;
}

#[tokio::test]
async fn denied_principal_gets_lattice_access_denied() {
    let setup = start_emulator().await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let answer = https(&setup, alpn, cluster1("https://demo-cluster1.example.com/")).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        assert_eq!(
            answer.body,
            format!(
                "AccessDeniedException: User: arn:aws:sts::{ACCOUNT}:assumed-role/eks-cluster1-app-role/eks-eks-cluster1-demo-pod-0f3c9b1e \
                 is not authorized to perform: vpc-lattice-svcs:Invoke on resource: \
                 arn:aws:vpc-lattice:{REGION}:{ACCOUNT}:service/{SERVICE_ID}/ \
                 because no service-based policy allows the vpc-lattice-svcs:Invoke action"
            )
        );
    }
    // Explicit deny, even for the otherwise allowed principal.
    let answer = https(
        &setup,
        b"h2",
        cluster2("https://demo-cluster1.example.com/admin/users"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert!(
        answer.body.ends_with(&format!(
            "on resource: arn:aws:vpc-lattice:{REGION}:{ACCOUNT}:service/{SERVICE_ID}/admin/users \
             with an explicit deny in a service-based policy"
        )),
        "{}",
        answer.body
    );
    setup.handle.shutdown().await;
}

#[tokio::test]
async fn botocore_signed_request_passes_end_to_end() {
    let setup = start_emulator().await;
    let signed = botocore::sign(&json!([{
        "name": "e2e", "method": "GET",
        "url": "https://demo-cluster1.example.com/items/a%20b?q=x%2Fy&a=1",
        "headers": {"Accept": "text/plain"}, "body": "",
        "access_key": TEMP_KEY, "secret_key": TEMP_SECRET, "token": TEMP_TOKEN,
        "region": REGION, "service": "vpc-lattice-svcs", "timestamp": AMZ_DATE,
        "unsigned_payload": true
    }]));
    let (method, _, headers) = signed[0].parts();
    let mut request = Request::new(Full::new(Bytes::new()));
    *request.method_mut() = method;
    *request.uri_mut() = signed[0].url.parse().unwrap();
    *request.headers_mut() = headers;
    let answer = https(&setup, b"http/1.1", request).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(header(&answer, "x-seen-path"), "/items/a%20b?q=x%2Fy&a=1");
    setup.handle.shutdown().await;
}

#[tokio::test]
async fn unsigned_badly_signed_and_unknown_host_requests_are_refused() {
    let setup = start_emulator().await;
    let unsigned = Request::builder()
        .uri("https://demo-cluster1.example.com/")
        .header("host", "demo-cluster1.example.com")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = https(&setup, b"http/1.1", unsigned).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(
        answer.body,
        format!(
            "AccessDeniedException: User: anonymous is not authorized to perform: vpc-lattice-svcs:Invoke \
             on resource: arn:aws:vpc-lattice:{REGION}:{ACCOUNT}:service/{SERVICE_ID}/ because no \
             service-based policy allows the vpc-lattice-svcs:Invoke action"
        )
    );

    let mut tampered = cluster2("https://demo-cluster1.example.com/");
    *tampered.uri_mut() = "https://demo-cluster1.example.com/other".parse().unwrap();
    let answer = https(&setup, b"h2", tampered).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert!(
        answer.body.starts_with(
            "InvalidSignatureException: The request signature we calculated does not match"
        ),
        "{}",
        answer.body
    );

    let mut incomplete = cluster2("https://demo-cluster1.example.com/");
    incomplete.headers_mut().insert(
        "authorization",
        HeaderValue::from_static(
            "AWS4-HMAC-SHA256 Credential=ASIAX/20240102/us-west-2/vpc-lattice-svcs/aws4_request",
        ),
    );
    let answer = https(&setup, b"http/1.1", incomplete).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert!(
        answer.body.starts_with("IncompleteSignatureException: "),
        "{}",
        answer.body
    );

    // The certificate covers *.example.com, so an unknown service name still gets through
    // TLS and is answered 404 by the emulator.
    let unknown = cluster2("https://nothing-here.example.com/");
    let answer = https(&setup, b"h2", unknown).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(
        answer.body,
        "NotFoundException: no service in this service network answers host 'nothing-here.example.com'"
    );
    setup.handle.shutdown().await;
}

#[tokio::test]
async fn plain_http_to_an_auth_none_service_drops_forged_lattice_headers() {
    let setup = start_emulator().await;
    let address = setup.handle.local_addr(Protocol::Http).unwrap();
    let stream = TcpStream::connect(address).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::builder()
        .uri("/status")
        .header("host", "open.example.com")
        .header(
            "x-amzn-lattice-identity",
            "Principal=arn:aws:sts::999999999999:assumed-role/admin/x; Type=AWS_IAM",
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = collect(sender.send_request(request).await.unwrap(), None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.body,
        "Requsting to Pod(demo-pod): Hello from open-app"
    );
    assert_eq!(header(&answer, "x-seen-identity"), "Type=Anonymous");
    setup.handle.shutdown().await;
}

#[tokio::test]
async fn pod_identity_agent_hands_out_credentials_the_emulator_accepts() {
    let setup = start_emulator().await;
    let registry = registry();
    let agent = pod_identity::serve(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        PodIdentityAgent {
            token: "agent-token".to_owned(),
            credential: registry.get(TEMP_KEY).unwrap().clone(),
            clock: Clock::fixed(signed_at()),
        },
    )
    .unwrap();
    let get = |token: Option<&'static str>| {
        let uri = agent.credentials_uri();
        async move {
            let uri: http::Uri = uri.parse().unwrap();
            let stream = TcpStream::connect(uri.authority().unwrap().as_str())
                .await
                .unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut request = Request::builder()
                .uri(uri.path())
                .header("host", uri.authority().unwrap().as_str());
            if let Some(token) = token {
                request = request.header("authorization", token);
            }
            let request = request.body(Full::new(Bytes::new())).unwrap();
            collect(sender.send_request(request).await.unwrap(), None).await
        }
    };
    let refused = get(Some("wrong")).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(get(None).await.status, StatusCode::UNAUTHORIZED);

    let answer = get(Some("agent-token")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(header(&answer, "content-type"), "application/json");
    let credentials: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(
        credentials,
        json!({
            "AccessKeyId": TEMP_KEY, "SecretAccessKey": TEMP_SECRET, "Token": TEMP_TOKEN,
            "AccountId": ACCOUNT, "Expiration": "2024-01-02T04:04:05Z"
        })
    );
    let request = signed(
        Method::GET,
        "https://demo-cluster1.example.com/",
        credentials["AccessKeyId"].as_str().unwrap(),
        credentials["SecretAccessKey"].as_str().unwrap(),
        credentials["Token"].as_str(),
    );
    assert_eq!(https(&setup, b"h2", request).await.status, StatusCode::OK);
    agent.shutdown().await;
    setup.handle.shutdown().await;
}

#[tokio::test]
async fn target_in_a_network_namespace_is_reached_through_setns() {
    // The test's own namespace stands in for another one: the connect still goes through the
    // setns thread. Joining a namespace needs CAP_SYS_ADMIN; the error then says so.
    let address = start_target("netns-app").await;
    let target = Target {
        address,
        netns: Some("/proc/self/ns/net".into()),
    };
    match target::connect(&target, Duration::from_secs(5)).await {
        Ok(stream) => assert_eq!(stream.peer_addr().unwrap(), address),
        // The suite runs as root (`cargo xtask test`): without it, fail and say why.
        Err(e) => panic!("{e} (run the tests as root: `sudo cargo xtask test`)"),
    }
    // Listening inside a namespace goes through the same thread.
    match lattice_tests::netns::bind(
        "127.0.0.1:0".parse().unwrap(),
        Some(std::path::Path::new("/proc/self/ns/net")),
    )
    .await
    {
        Ok(listener) => {
            let address = listener.local_addr().unwrap();
            let (connected, accepted) =
                tokio::join!(TcpStream::connect(address), listener.accept());
            assert_eq!(
                connected.unwrap().local_addr().unwrap(),
                accepted.unwrap().1
            );
        }
        Err(e) => panic!("{e} (run the tests as root: `sudo cargo xtask test`)"),
    }
    let missing = Target {
        address,
        netns: Some("/run/netns/lattice-test-no-such-ns".into()),
    };
    let err = target::connect(&missing, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("/run/netns/lattice-test-no-such-ns"),
        "{err}"
    );
}

#[tokio::test]
async fn http2_target_groups_get_http2_with_te_trailers() {
    let setup = start_emulator().await;
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let request = Request::builder()
            .method(Method::POST)
            .uri("https://grpc.example.com/helloworld.Greeter/SayHello")
            .header("host", "grpc.example.com")
            .header("te", "trailers")
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap();
        let answer = https(&setup, alpn, request).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body, "h2 target saw HTTP/2.0 te=trailers");
    }
    setup.handle.shutdown().await;
}
