//! The HTTPS webhook answered over the network by a hyper + rustls client that trusts only
//! the CA the injector generated (what it publishes as the caBundle), under the Service's
//! DNS name; bad input over the wire; the admin listener's probes and metrics.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use lattice_injector::certs;
use lattice_injector::metrics::Metrics;
use lattice_injector::serve::{self, State, MAX_BODY};
use lattice_injector::settings::Settings;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

const SERVICE: &str = "lattice-injector";
const NAMESPACE: &str = "lattice-egress";

struct Injector {
    webhook: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    ca_pem: String,
    ready: Arc<AtomicBool>,
}

async fn start() -> Injector {
    let serving = certs::generate(&certs::service_names(SERVICE, NAMESPACE)).unwrap();
    let tls = certs::server_config(&serving).unwrap();
    let ready = Arc::new(AtomicBool::new(false));
    let state = Arc::new(State {
        settings: Settings::default(),
        metrics: Arc::new(Metrics::new()),
        ready: ready.clone(),
    });
    let webhook = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let injector = Injector {
        webhook: webhook.local_addr().unwrap(),
        admin: admin.local_addr().unwrap(),
        ca_pem: serving.ca_pem.clone().unwrap(),
        ready,
    };
    tokio::spawn(serve::serve_tls(webhook, tls, state.clone()));
    tokio::spawn(serve::serve_admin(admin, state));
    injector
}

fn tls_client(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(certs::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One HTTPS request as the API server makes it (to `service.namespace.svc`).
async fn https(
    inj: &Injector,
    ca_pem: &str,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(StatusCode, Bytes), String> {
    let tcp = TcpStream::connect(inj.webhook).await.unwrap();
    let name = ServerName::try_from(format!("{SERVICE}.{NAMESPACE}.svc")).unwrap();
    let tls = tls_client(ca_pem)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("{SERVICE}.{NAMESPACE}.svc"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Ok((status, body))
}

async fn plain(inj: &Injector, path: &str) -> (StatusCode, String) {
    let tcp = TcpStream::connect(inj.admin).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "admin")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn review_body(annotations: Value) -> Vec<u8> {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "apps",
            "operation": "CREATE",
            "object": {"metadata": {"generateName": "app-", "annotations": annotations},
                       "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]}}
        }
    })
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn webhook_answers_over_tls_trusting_only_the_generated_ca() {
    let inj = start().await;
    let ca = inj.ca_pem.clone();

    let (status, body) = https(
        &inj,
        &ca,
        "POST",
        "/mutate/pod",
        review_body(json!({"lattice-egress.io/inject": "true"})),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(v["response"]["allowed"], true);
    assert_eq!(v["response"]["patchType"], "JSONPatch");

    // The namespace entry injects without an annotation; the pod entry does not.
    let (_, body) = https(
        &inj,
        &ca,
        "POST",
        "/mutate/namespace",
        review_body(json!({})),
    )
    .await
    .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["response"]["patch"].is_string(), "{v}");
    let (_, body) = https(&inj, &ca, "POST", "/mutate/pod", review_body(json!({})))
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["response"].get("patch").is_none(), "{v}");

    // Another CA (another replica's, or none of ours) is refused by the client.
    let other = certs::generate(&certs::service_names(SERVICE, NAMESPACE)).unwrap();
    let err = https(
        &inj,
        other.ca_pem.as_deref().unwrap(),
        "GET",
        "/healthz",
        Vec::new(),
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_input_over_the_wire_gets_clear_errors_and_the_server_lives_on() {
    let inj = start().await;
    let ca = inj.ca_pem.clone();

    let (status, body) = https(
        &inj,
        &ca,
        "POST",
        "/mutate/pod",
        b"{\"apiVersion\": ".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("not JSON"));

    let (status, body) = https(&inj, &ca, "POST", "/mutate/pod", vec![b' '; MAX_BODY + 1])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(String::from_utf8_lossy(&body).contains("larger than 3145728 bytes"));

    let mut wrong: Value = serde_json::from_slice(&review_body(json!({}))).unwrap();
    wrong["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let (status, body) = https(
        &inj,
        &ca,
        "POST",
        "/mutate/namespace",
        wrong.to_string().into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["response"]["allowed"], false);
    assert!(
        v["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("v1beta1"),
        "{v}"
    );

    let (status, _) = https(&inj, &ca, "GET", "/mutate/pod", Vec::new())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = https(&inj, &ca, "POST", "/metrics", Vec::new())
        .await
        .unwrap();
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "metrics are on the admin port only"
    );

    // Still serving.
    let (status, _) = https(&inj, &ca, "GET", "/healthz", Vec::new())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let (_, metrics) = plain(&inj, "/metrics").await;
    assert!(
        metrics.contains("lattice_injector_admissions_total{result=\"error\"} 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn admin_port_probes_and_metrics() {
    let inj = start().await;
    assert_eq!(plain(&inj, "/healthz").await.0, StatusCode::OK);
    let (status, body) = plain(&inj, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("not published"), "{body}");
    inj.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(plain(&inj, "/readyz").await.0, StatusCode::OK);
    // The admin port never answers reviews.
    assert_eq!(plain(&inj, "/mutate/pod").await.0, StatusCode::NOT_FOUND);

    let ca = inj.ca_pem.clone();
    let warn = review_body(json!({"lattice-egress.io/inject": "true"}));
    let mut warn: Value = serde_json::from_slice(&warn).unwrap();
    warn["request"]["object"]["spec"]["securityContext"] = json!({"runAsGroup": 0});
    let (_, body) = https(
        &inj,
        &ca,
        "POST",
        "/mutate/pod",
        warn.to_string().into_bytes(),
    )
    .await
    .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v["response"]["warnings"].as_array().unwrap().len(),
        1,
        "{v}"
    );
    assert_eq!(v["response"]["allowed"], true);

    let (_, metrics) = plain(&inj, "/metrics").await;
    for line in [
        "lattice_injector_admissions_total{result=\"injected\"} 1",
        "lattice_injector_admissions_total{result=\"skipped\"} 0",
        "lattice_injector_warnings_total 1",
        "lattice_injector_ca_published 0",
    ] {
        assert!(metrics.contains(line), "no {line:?} in\n{metrics}");
    }
}
