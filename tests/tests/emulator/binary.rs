//! The `lattice-emulator` binary with the example configuration: it announces its
//! addresses, writes the CA, serves the Pod Identity agents and the services, and exits
//! cleanly on SIGTERM.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::SystemTime,
};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{pem::PemObject, CertificateDer};
use serde_json::{json, Value};
use tokio::net::TcpStream;

use crate::end_to_end::{collect, https_to, signed_at_time, start_target};

/// Kills the child on drop so a failing test leaves no emulator behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn binary_serves_the_example_configuration() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/lattice-emulator.json"
    );
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(example).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    // Same configuration, but on ports the kernel picks and with local targets.
    config["listeners"] = json!([
        {"address": "127.0.0.1:0", "protocol": "https"},
        {"address": "127.0.0.1:0", "protocol": "http"}
    ]);
    config["ca_cert_out"] = json!(ca_path);
    for agent in config["pod_identity_agents"].as_array_mut().unwrap() {
        agent["address"] = json!("127.0.0.1:0");
    }
    let app1 = start_target("demo-cluster1-v1").await;
    let app2 = start_target("demo-cluster2-v1").await;
    config["emulator"]["target_groups"][0]["targets"] = json!([{"address": app1}]);
    config["emulator"]["target_groups"][1]["targets"] = json!([{"address": app2}]);
    let path = dir.path().join("lattice.json");
    std::fs::write(&path, config.to_string()).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_lattice-emulator"))
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut running = Running(child);
    let (mut https, mut agents) = (None, Vec::new());
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["listening", "https", address] => https = Some(address.parse::<SocketAddr>().unwrap()),
            ["listening", "http", _] => {}
            ["pod-identity", uri] => agents.push(uri.to_string()),
            ["ready"] => break,
            _ => panic!("unexpected announcement: {line}"),
        }
    }
    let https = https.expect("an https listener was announced");
    assert_eq!(agents.len(), 2);
    let ca = CertificateDer::from_pem_file(&ca_path).expect("the CA was written as PEM");

    // Credentials from the cluster2 agent, as the cluster2 proxy would get them.
    let uri: http::Uri = agents[1].parse().unwrap();
    let stream = TcpStream::connect(uri.authority().unwrap().as_str())
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::builder()
        .uri(uri.path())
        .header("host", uri.authority().unwrap().as_str())
        .header("authorization", "cluster2-agent-token")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = collect(sender.send_request(request).await.unwrap(), None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let credentials: Value = serde_json::from_str(&answer.body).unwrap();
    let sign = |url: &str| {
        signed_at_time(
            // The binary runs on the system clock; sign with it.
            SystemTime::now(),
            Method::GET,
            url,
            credentials["AccessKeyId"].as_str().unwrap(),
            credentials["SecretAccessKey"].as_str().unwrap(),
            credentials["Token"].as_str(),
        )
    };

    // The seed's checks from cluster2: app1 answers, app2 denies.
    let allowed = https_to(
        https,
        &ca,
        b"h2",
        sign("https://demo-cluster1.example.com/"),
    )
    .await;
    assert_eq!(allowed.status, StatusCode::OK, "{}", allowed.body);
    assert_eq!(
        allowed.body,
        "Requsting to Pod(demo-pod): Hello from demo-cluster1-v1"
    );
    let denied = https_to(
        https,
        &ca,
        b"http/1.1",
        sign("https://demo-cluster2.example.com/"),
    )
    .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert!(
        denied.body.starts_with(
            "AccessDeniedException: User: arn:aws:sts::111122223333:assumed-role/\
             eks-cluster2-pod-identity-role/eks-eks-cluster-demo-cluster2-v1-4e5f6a7b is not authorized"
        ),
        "{}",
        denied.body
    );

    // SIGTERM: a clean exit.
    let pid = nix::unistd::Pid::from_raw(running.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = running.0.wait().unwrap();
    assert!(status.success(), "{status}");
}
