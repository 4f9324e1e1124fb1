//! The admin listener: `/healthz`, `/readyz`, `/metrics`.
//!
//! Kept on its own address so probes and scrapes never share a port (or limits) with
//! application traffic. Readiness is a latch on the credentials: not ready until valid
//! credentials are held (and, with `--redirect-check`, until this pod's connects are
//! redirected: see [`crate::redirect_check`]), and not ready again once draining starts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::ProxyBody;
use crate::credentials::CredentialsCache;
use crate::error;
use crate::redirect_check::RedirectCheck;

/// What the admin endpoints report on.
#[derive(Clone)]
pub struct AdminState {
    /// Credentials held (readiness).
    pub credentials: CredentialsCache,
    /// Set when shutdown starts.
    pub draining: Arc<AtomicBool>,
    /// The metrics registry.
    pub registry: Arc<Registry>,
    /// Readiness also waits for this pod's connects to be redirected, when set.
    pub redirect_check: Option<Arc<RedirectCheck>>,
}

impl AdminState {
    async fn respond(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
        }
        match req.uri().path() {
            "/healthz" | "/livez" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" | "/ready" => {
                if self.draining.load(Ordering::Relaxed) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
                } else {
                    let redirected = match &self.redirect_check {
                        Some(check) => check.run().await,
                        None => Ok(()),
                    };
                    match (self.credentials.identity(), redirected) {
                        (Ok(_), Ok(())) => text(StatusCode::OK, "ready\n".into()),
                        (Err(e), _) => text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {}\n", error::chain(&e)),
                        ),
                        (_, Err(why)) => text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {}\n", error::one_line(&why)),
                        ),
                    }
                }
            }
            "/metrics" => {
                let mut r = Response::new(ProxyBody::full(crate::metrics::encode(&self.registry)));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                r
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /healthz, /readyz or /metrics\n".into(),
            ),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Serves the admin endpoints until `stop` turns true.
pub async fn serve(listener: TcpListener, state: AdminState, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(state.respond(&req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %error::chain(&e), "admin connection ended with an error");
            }
        });
    }
}

/// Binds the admin address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
