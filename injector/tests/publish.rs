//! The caBundle publication through the real kube client, against a small scripted API
//! server that serves one MutatingWebhookConfiguration (GET, and a strategic merge PATCH
//! that honours `metadata.resourceVersion` with a 409 like the real one).
//! `lattice_tests::kube_api::FakeApiServer` serves pods only, hence this one.

use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use lattice_injector::publish::{pem_blocks, publish};
use lattice_injector::{certs, publish::PublishError};
use serde_json::{json, Value};
use tokio::net::TcpListener;

const PATH: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/lattice-injector";

#[derive(Default)]
struct Api {
    object: Option<Value>,
    /// Simulate another writer between our GET and PATCH this many times.
    races: usize,
    requests: Vec<String>,
}

fn webhook_config() -> Value {
    let entry = |name: &str, path: &str| {
        json!({"name": name, "clientConfig": {"service": {"name": "lattice-injector", "namespace": "lattice-egress", "path": path, "port": 443}},
               "sideEffects": "None", "admissionReviewVersions": ["v1"], "failurePolicy": "Fail"})
    };
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
           "metadata": {"name": "lattice-injector", "resourceVersion": "1"},
           "webhooks": [entry("namespace.inject.lattice-egress.io", "/mutate/namespace"),
                        entry("pod.inject.lattice-egress.io", "/mutate/pod")]})
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Full<Bytes>> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code.as_u16()});
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn bump(object: &mut Value) {
    let rv: u64 = object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    object["metadata"]["resourceVersion"] = json!((rv + 1).to_string());
}

async fn answer(
    api: Arc<Mutex<Api>>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut api = api.lock().unwrap();
    api.requests.push(format!("{method} {path} {content_type}"));
    if path != PATH {
        return status(StatusCode::NOT_FOUND, "NotFound", &format!("no {path}"));
    }
    let races = api.races;
    let Some(object) = api.object.as_mut() else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "mutatingwebhookconfigurations \"lattice-injector\" not found",
        );
    };
    match method.as_str() {
        "GET" => {}
        "PATCH" => {
            assert_eq!(content_type, "application/strategic-merge-patch+json");
            let patch: Value = serde_json::from_slice(&body).unwrap();
            if races > 0 {
                bump(object);
            }
            if patch["metadata"]["resourceVersion"] != object["metadata"]["resourceVersion"] {
                if races > 0 {
                    api.races -= 1;
                }
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "the object has been modified",
                );
            }
            // The strategic merge of `webhooks` by name, for what the injector sends.
            for p in patch["webhooks"].as_array().unwrap() {
                let w = object["webhooks"]
                    .as_array_mut()
                    .unwrap()
                    .iter_mut()
                    .find(|w| w["name"] == p["name"])
                    .expect("a patch names an existing webhook");
                assert_eq!(
                    p["clientConfig"].as_object().unwrap().len(),
                    1,
                    "only the caBundle"
                );
                w["clientConfig"]["caBundle"] = p["clientConfig"]["caBundle"].clone();
            }
            bump(object);
        }
        other => panic!("unexpected {other}"),
    }
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(object.to_string())))
        .unwrap()
}

async fn start(api: Arc<Mutex<Api>>) -> kube::Client {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let api = api.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let api = api.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(api, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

fn bundles(api: &Arc<Mutex<Api>>) -> Vec<Vec<String>> {
    let api = api.lock().unwrap();
    api.object.as_ref().unwrap()["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let b64 = w["clientConfig"]["caBundle"].as_str().unwrap_or("");
            let pem = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            pem_blocks(&String::from_utf8(pem).unwrap())
        })
        .collect()
}

fn new_ca() -> String {
    certs::generate(&certs::service_names("lattice-injector", "lattice-egress"))
        .unwrap()
        .ca_pem
        .unwrap()
}

#[tokio::test]
async fn two_replicas_both_end_up_in_every_ca_bundle_once() {
    let api = Arc::new(Mutex::new(Api {
        object: Some(webhook_config()),
        ..Api::default()
    }));
    let client = start(api.clone()).await;
    let (a, b) = (new_ca(), new_ca());
    assert!(publish(&client, "lattice-injector", &a).await.unwrap());
    assert!(publish(&client, "lattice-injector", &b).await.unwrap());
    assert!(
        !publish(&client, "lattice-injector", &a).await.unwrap(),
        "already there: no patch"
    );
    let want = vec![pem_blocks(&a)[0].clone(), pem_blocks(&b)[0].clone()];
    assert_eq!(bundles(&api), vec![want.clone(), want]);
    let requests = api.lock().unwrap().requests.clone();
    assert_eq!(
        requests.iter().filter(|r| r.starts_with("PATCH")).count(),
        2,
        "{requests:#?}"
    );
}

#[tokio::test]
async fn a_concurrent_writer_gets_a_409_and_the_publisher_retries() {
    let api = Arc::new(Mutex::new(Api {
        object: Some(webhook_config()),
        races: 2,
        ..Api::default()
    }));
    let client = start(api.clone()).await;
    let ca = new_ca();
    assert!(publish(&client, "lattice-injector", &ca).await.unwrap());
    assert_eq!(bundles(&api)[1], pem_blocks(&ca));
    let requests = api.lock().unwrap().requests.clone();
    assert_eq!(
        requests.iter().filter(|r| r.starts_with("PATCH")).count(),
        3,
        "{requests:#?}"
    );

    api.lock().unwrap().races = 10;
    let e = publish(&client, "lattice-injector", &new_ca())
        .await
        .unwrap_err();
    assert!(matches!(e, PublishError::Conflicts { .. }), "{e}");
}

#[tokio::test]
async fn a_missing_configuration_is_an_error_naming_it() {
    let api = Arc::new(Mutex::new(Api::default()));
    let client = start(api).await;
    let e = publish(&client, "lattice-injector", &new_ca())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("MutatingWebhookConfiguration lattice-injector") && e.contains("not found"),
        "{e}"
    );
}
