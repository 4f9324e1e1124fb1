//! `demo-kube-api`: one cluster's Kubernetes API server for `lattice-demo --kubernetes`.
//!
//! It serves Pods with [`lattice_tests::kube_api::FakeApiServer`] (what the node agent's
//! watch reads, with the bearer token of the kubeconfig it writes) and takes the changes that
//! the cluster's other clients would make on a separate control port, on paths that mirror
//! the API's:
//!
//! - `POST /api/v1/namespaces/{ns}/pods` with a Pod (JSON): creates it (the ReplicaSet
//!   controller), through mutating admission as the real server runs it (the webhooks of
//!   the MutatingWebhookConfigurations put here; see `lattice_tests::kube_api`); 201 and
//!   `{"object": <the pod as stored>, "warnings": [...], "calls": [...]}` (the webhooks'
//!   warnings, which a client sees as `Warning` headers, and one line per webhook call), or
//!   the refusal's `Status` (409 when it exists, 404 without its Namespace, admission's
//!   400/500);
//! - `PUT /api/v1/namespaces/{ns}/pods/{name}` with the Pod: updates it (kubelet's status
//!   updates; no admission: the webhooks here ask for CREATE only); 200 and the pod, or 404;
//! - `DELETE /api/v1/namespaces/{ns}/pods/{name}`: deletes it at once (a deletion whose grace
//!   period has ended); 200 and its last state, or 404;
//! - `GET /api/v1/namespaces/{ns}/pods/{name}`: the pod as stored, or 404;
//! - `POST` of a Namespace, Service, Endpoints or MutatingWebhookConfiguration to its
//!   collection path (`/api/v1/namespaces`, `/api/v1/namespaces/{ns}/services`, ...):
//!   creates or replaces it (`kubectl apply`; the Endpoints are what the endpoints
//!   controller would write for a ready pod); 200 and the object as stored.
//!
//! On the API port, besides the Pods, a MutatingWebhookConfiguration can be read and
//! patched (a strategic merge patch), which is how a webhook publishes its caBundle.
//!
//! Both listen on 127.0.0.1 only. Once ready it writes `DIR/kubeconfig` and `DIR/control`
//! (the control address) and prints `ready api=URL control=URL`; it runs until SIGINT or
//! SIGTERM. It is a process of its own, rather than a part of `lattice-demo`, so that it keeps
//! serving after `lattice-demo --keep` has exited.

use std::{
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use lattice_tests::kube_api::{objects::Kind, FakeApiServer};
use serde_json::{json, Value};

#[derive(Debug, Parser)]
#[command(
    about = "A cluster's fake Kubernetes API server for `lattice-demo --kubernetes`, \
                   with a control port to create and delete pods"
)]
struct Args {
    /// Directory for `kubeconfig` (and its CA) and `control` (the control address).
    #[arg(long)]
    dir: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo-kube-api: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo-kube-api: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    let server = Arc::new(FakeApiServer::start());
    let kubeconfig = args.dir.join("kubeconfig");
    server
        .write_kubeconfig(&kubeconfig)
        .with_context(|| format!("writing {}", kubeconfig.display()))?;
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .context("binding the control port on 127.0.0.1")?;
    let control: SocketAddr = listener.local_addr()?;
    // Written last and atomically: whoever sees the file can use both ports.
    let file = args.dir.join("control");
    let tmp = args.dir.join(".control.tmp");
    std::fs::write(&tmp, control.to_string())
        .and_then(|()| std::fs::rename(&tmp, &file))
        .with_context(|| format!("writing {}", file.display()))?;
    println!("ready api={} control=http://{control}", server.url());

    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("control accept failed: {e}");
                        continue;
                    }
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(handle(&server, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping");
    Ok(())
}

async fn handle(server: &FakeApiServer, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (namespace, name) = match segments.as_slice() {
        ["api", "v1", "namespaces", ns, "pods"] => ((*ns).to_owned(), None),
        ["api", "v1", "namespaces", ns, "pods", name] => {
            ((*ns).to_owned(), Some((*name).to_owned()))
        }
        _ => match (&method, Kind::of_collection(&path)) {
            (&Method::POST, Some((kind, namespace))) => {
                return match body_json(req).await {
                    Ok(object) if object["kind"] != kind.name => answer(
                        StatusCode::BAD_REQUEST,
                        json!({"message": format!(
                            "kind {} does not belong under {path}", object["kind"]
                        )}),
                    ),
                    Ok(object) => match server.put_object(object, namespace.as_deref()) {
                        Ok(stored) => {
                            tracing::info!(
                                kind = kind.name,
                                name = %stored["metadata"]["name"],
                                "object applied"
                            );
                            answer(StatusCode::OK, stored)
                        }
                        Err(why) => answer(StatusCode::BAD_REQUEST, json!({"message": why})),
                    },
                    Err(response) => response,
                };
            }
            _ => return answer(StatusCode::NOT_FOUND, json!({"message": "no such path"})),
        },
    };
    match (method, name) {
        (Method::POST, None) => {
            let mut pod = match body_json(req).await {
                Ok(pod) => pod,
                Err(response) => return response,
            };
            if let Err(why) = check_pod(&mut pod, &namespace, None) {
                return answer(StatusCode::BAD_REQUEST, json!({"message": why}));
            }
            let name = pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            match server.create_pod(pod).await {
                Ok(admitted) => {
                    tracing::info!(
                        pod = %format!("{namespace}/{name}"),
                        resource_version = %admitted.object["metadata"]["resourceVersion"],
                        webhooks = %admitted.calls.join("; "),
                        "pod created"
                    );
                    for warning in &admitted.warnings {
                        tracing::warn!(pod = %format!("{namespace}/{name}"), "admission warning: {warning}");
                    }
                    answer(
                        StatusCode::CREATED,
                        json!({"object": admitted.object, "warnings": admitted.warnings,
                               "calls": admitted.calls}),
                    )
                }
                Err(refused) => {
                    tracing::warn!(pod = %format!("{namespace}/{name}"), "pod refused: {refused}");
                    answer(
                        StatusCode::from_u16(refused.code)
                            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                        refused.status,
                    )
                }
            }
        }
        (Method::PUT, Some(name)) => {
            let mut pod = match body_json(req).await {
                Ok(pod) => pod,
                Err(response) => return response,
            };
            if let Err(why) = check_pod(&mut pod, &namespace, Some(&name)) {
                return answer(StatusCode::BAD_REQUEST, json!({"message": why}));
            }
            let Some(stored) = server.get(&namespace, &name) else {
                return answer(
                    StatusCode::NOT_FOUND,
                    json!({"message": format!("pods \"{name}\" not found")}),
                );
            };
            if pod["metadata"]["uid"].is_string()
                && pod["metadata"]["uid"] != stored["metadata"]["uid"]
            {
                return answer(
                    StatusCode::CONFLICT,
                    json!({"message": format!(
                        "{namespace}/{name} exists with another uid: delete it first"
                    )}),
                );
            }
            let stored = server.apply(pod);
            tracing::info!(
                pod = %format!("{namespace}/{name}"),
                resource_version = %stored["metadata"]["resourceVersion"],
                "pod updated"
            );
            answer(StatusCode::OK, stored)
        }
        (Method::DELETE, Some(name)) => match server.delete(&namespace, &name) {
            Some(last) => {
                tracing::info!(pod = %format!("{namespace}/{name}"), "pod deleted");
                answer(StatusCode::OK, last)
            }
            None => answer(
                StatusCode::NOT_FOUND,
                json!({"message": format!("pods \"{name}\" not found")}),
            ),
        },
        (Method::GET, Some(name)) => match server.get(&namespace, &name) {
            Some(pod) => answer(StatusCode::OK, pod),
            None => answer(
                StatusCode::NOT_FOUND,
                json!({"message": format!("pods \"{name}\" not found")}),
            ),
        },
        (method, _) => answer(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"message": format!("{method} is not served here")}),
        ),
    }
}

/// The request's body as JSON, or the 400 to answer.
async fn body_json(req: Request<Incoming>) -> Result<Value, Response<Full<Bytes>>> {
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(|e| answer(StatusCode::BAD_REQUEST, json!({"message": e.to_string()})))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| {
        answer(
            StatusCode::BAD_REQUEST,
            json!({"message": format!("not JSON: {e}")}),
        )
    })
}

/// What `FakeApiServer::apply` would otherwise panic on, and the namespace of the path.
fn check_pod(pod: &mut Value, namespace: &str, name: Option<&str>) -> Result<(), String> {
    if !pod.is_object() {
        return Err("the body is not a JSON object".into());
    }
    if pod.get("kind").is_some_and(|k| k != "Pod") {
        return Err(format!("kind {} is not Pod", pod["kind"]));
    }
    match (pod["metadata"]["name"].as_str(), name) {
        (None, _) => return Err("metadata.name is missing".into()),
        (Some(given), Some(path)) if given != path => {
            return Err(format!(
                "metadata.name {given} differs from the path's name {path}"
            ))
        }
        _ => {}
    }
    match pod["metadata"]["namespace"].as_str() {
        None => pod["metadata"]["namespace"] = json!(namespace),
        Some(ns) if ns == namespace => {}
        Some(ns) => {
            return Err(format!(
                "metadata.namespace {ns} differs from the path's namespace {namespace}"
            ))
        }
    }
    Ok(())
}

fn answer(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(&body).unwrap_or_default(),
    )));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
