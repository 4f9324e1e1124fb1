//! Two targets with the same address and port in two network namespaces (as the demo's two
//! clusters with overlapping pod CIDRs): the emulator reaches each one through its `netns`.
//! Needs root and `ip`; the namespaces are deleted even when the test fails.

use std::{convert::Infallible, path::PathBuf, process::Command};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use lattice_tests::{netns, Emulator, EmulatorConfig, EmulatorOptions, Listener, Protocol};
use serde_json::json;
use tokio::net::TcpStream;

/// A network namespace named after this process, deleted on drop.
struct Namespace {
    name: String,
}

impl Namespace {
    fn create(suffix: &str) -> Result<Self, String> {
        let name = format!("lattice-test-{}-{suffix}", std::process::id());
        run(&["netns", "add", &name])?;
        let ns = Self { name };
        run(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = run(&["netns", "del", &self.name]);
    }
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Serves `answer` on `listener` (HTTP/1.1).
fn serve(listener: tokio::net::TcpListener, answer: &'static str) {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |_req: Request<hyper::body::Incoming>| async move {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            answer.as_bytes(),
                        ))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

#[tokio::test]
async fn same_address_in_two_namespaces_is_told_apart() {
    let (one, two) = match (Namespace::create("c1"), Namespace::create("c2")) {
        (Ok(one), Ok(two)) => (one, two),
        (Err(e), _) | (_, Err(e)) => panic!(
            "cannot create network namespaces: {e}; these tests need root and iproute2 \
             (`sudo cargo xtask test`)"
        ),
    };
    // Port 0 in the first namespace; the same port in the second, fresh, one.
    let first = netns::bind("127.0.0.1:0".parse().unwrap(), Some(&one.path()))
        .await
        .unwrap();
    let address = first.local_addr().unwrap();
    let second = netns::bind(address, Some(&two.path())).await.unwrap();
    serve(first, "Hello from demo-cluster1-v1");
    serve(second, "Hello from demo-cluster2-v1");

    let config: EmulatorConfig = serde_json::from_value(json!({
        "account_id": "111122223333",
        "services": [
            {"name": "demo-cluster1", "hosts": ["demo-cluster1.example.com"],
             "routes": [{"target_group": "app1"}]},
            {"name": "demo-cluster2", "hosts": ["demo-cluster2.example.com"],
             "routes": [{"target_group": "app2"}]}
        ],
        "target_groups": [
            {"name": "app1", "targets": [{"address": address, "netns": one.path()}]},
            {"name": "app2", "targets": [{"address": address, "netns": two.path()}]}
        ]
    }))
    .unwrap();
    let emulator = Emulator::new(&config, EmulatorOptions::default()).unwrap();
    let handle = emulator.serve(vec![Listener::bind(
        "127.0.0.1:0".parse().unwrap(),
        Protocol::Http,
    )
    .await
    .unwrap()]);
    let emulator_address = handle.local_addr(Protocol::Http).unwrap();
    for (host, expected) in [
        ("demo-cluster1.example.com", "Hello from demo-cluster1-v1"),
        ("demo-cluster2.example.com", "Hello from demo-cluster2-v1"),
    ] {
        let stream = TcpStream::connect(emulator_address).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let request = Request::builder()
            .uri("/")
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, expected.as_bytes());
    }
    handle.shutdown().await;
}
