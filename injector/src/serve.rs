//! The HTTPS listener (the webhook: `POST /mutate/namespace`, `POST /mutate/pod`, plus
//! `/healthz` and `/readyz` for the kubelet) and the plain admin listener (`/healthz`,
//! `/readyz`, `/metrics`).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::metrics::{AdmissionResult, Metrics};
use crate::patch::Scope;
use crate::review;
use crate::settings::Settings;

/// Largest AdmissionReview body read (the API server's own request limit is 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct State {
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    /// Released once the serving CA is published (at once with a mounted certificate);
    /// lowered again at shutdown.
    pub ready: Arc<AtomicBool>,
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.into())))
        .expect("a valid response")
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

/// One request. `webhook` is true on the TLS listener only: the plain admin port never
/// answers admission reviews.
pub async fn handle<B>(state: Arc<State>, req: Request<B>, webhook: bool) -> Response<Full<Bytes>>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let scope = match req.uri().path() {
        "/healthz" => return text(StatusCode::OK, "ok\n"),
        "/readyz" if state.ready.load(Ordering::SeqCst) => return text(StatusCode::OK, "ready\n"),
        "/readyz" => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the serving CA is not published in the webhook configuration yet\n",
            )
        }
        "/metrics" if !webhook => {
            return Response::builder()
                .header(
                    header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
                .body(Full::new(Bytes::from(state.metrics.encode())))
                .expect("a valid response")
        }
        "/mutate/namespace" if webhook => Scope::Namespace,
        "/mutate/pod" if webhook => Scope::Pod,
        other => return text(StatusCode::NOT_FOUND, format!("no such path: {other}\n")),
    };
    if req.method() != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} takes POST, not {}\n", req.uri().path(), req.method()),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            state.metrics.admission(AdmissionResult::Error, 0);
            let too_large = e.is::<http_body_util::LengthLimitError>();
            let (status, message) = if too_large {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the AdmissionReview is larger than {MAX_BODY} bytes"),
                )
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}"),
                )
            };
            tracing::warn!(%message, "admission review refused");
            return json(status, &serde_json::json!({ "error": message }));
        }
    };
    let answer = review::review(&body, scope, &state.settings);
    state
        .metrics
        .admission(answer.result, answer.warnings.len());
    for w in &answer.warnings {
        tracing::warn!(pod = %answer.pod, warning = %w, "admitted with a warning");
    }
    match (&answer.error, answer.result) {
        (Some(e), _) => tracing::warn!(pod = %answer.pod, error = %e, "admission review denied"),
        (None, AdmissionResult::Injected) => {
            tracing::info!(pod = %answer.pod, "injected lattice-proxy")
        }
        (None, result) => tracing::debug!(pod = %answer.pod, result = result.as_str(), "no patch"),
    }
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(status, &answer.body)
}

async fn serve_connection<I>(io: I, state: Arc<State>, webhook: bool)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(state, req, webhook).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .header_read_timeout(Duration::from_secs(10))
        .timer(hyper_util::rt::TokioTimer::new());
    if let Err(e) = builder.serve_connection(TokioIo::new(io), service).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// The webhook's HTTPS accept loop; runs until the task is dropped.
pub async fn serve_tls(listener: TcpListener, tls: Arc<ServerConfig>, state: Arc<State>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, state) = (acceptor.clone(), state.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve_connection(tls, state, true).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// The admin listener (plain HTTP); runs until the task is dropped.
pub async fn serve_admin(listener: TcpListener, state: Arc<State>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, state.clone(), false));
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
