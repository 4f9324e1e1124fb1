//! A fake EKS Pod Identity agent: the credentials endpoint that AWS SDKs reach through
//! `AWS_CONTAINER_CREDENTIALS_FULL_URI` (e.g. `http://127.0.0.1:8081/v1/credentials`) with
//! the token from `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` in `Authorization`.
//!
//! It hands out credentials that the emulator's registry knows, so a proxy that signs with
//! them is recognized with the role and the session tags configured for that access key.
//! Answer on success (200, JSON), as the EKS agent writes it:
//! `{"AccessKeyId": "...", "SecretAccessKey": "...", "Token": "...", "AccountId": "...",
//! "Expiration": "2030-01-01T00:00:00Z"}`.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::{debug, info, warn};

use crate::{credentials::StoredCredential, server::Clock};

/// The path the EKS Pod Identity agent serves.
pub const CREDENTIALS_PATH: &str = "/v1/credentials";

/// Credentials without an expiry are reported as valid for this long from each request; the
/// emulator itself never expires them.
const REPORTED_LIFETIME: Duration = Duration::from_secs(6 * 3600);

/// What one agent serves.
#[derive(Debug, Clone)]
pub struct PodIdentityAgent {
    /// `Authorization` value that clients must send.
    pub token: String,
    /// The credentials handed out.
    pub credential: StoredCredential,
    /// Clock for the reported expiry of credentials that never expire.
    pub clock: Clock,
}

/// A running agent; dropping the handle stops it too.
#[derive(Debug)]
pub struct PodIdentityHandle {
    address: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl PodIdentityHandle {
    /// The address served.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// The full URI for `AWS_CONTAINER_CREDENTIALS_FULL_URI`.
    pub fn credentials_uri(&self) -> String {
        format!("http://{}{CREDENTIALS_PATH}", self.address)
    }

    /// Stops the agent.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Serves the agent on `listener` until [`PodIdentityHandle::shutdown`].
pub fn serve(listener: TcpListener, agent: PodIdentityAgent) -> std::io::Result<PodIdentityHandle> {
    let address = listener.local_addr()?;
    let (shutdown, mut stop) = watch::channel(false);
    let agent = Arc::new(agent);
    info!(%address, access_key_id = %agent.credential.access_key_id, "pod identity agent listening");
    let task = tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        warn!(error = %e, "pod identity agent: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.changed() => break,
            };
            let agent = agent.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let agent = agent.clone();
                    async move { Ok::<_, Infallible>(answer(&agent, &req)) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(%peer, error = %e, "pod identity agent connection failed");
                }
            });
        }
    });
    Ok(PodIdentityHandle {
        address,
        shutdown,
        task,
    })
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn answer(agent: &PodIdentityAgent, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != CREDENTIALS_PATH {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"message": format!("not found; credentials are at {CREDENTIALS_PATH}")}),
        );
    }
    if req.method() != Method::GET {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"message": "use GET"}),
        );
    }
    let sent = req.headers().get(header::AUTHORIZATION);
    if sent.is_none_or(|v| v.as_bytes() != agent.token.as_bytes()) {
        let message = if sent.is_none() {
            "Service account token cannot be empty"
        } else {
            "Service account token is not valid"
        };
        return json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"message": message}),
        );
    }
    let c = &agent.credential;
    let expiration = c.expiration_rfc3339().unwrap_or_else(|| {
        let reported = StoredCredential {
            expiration: Some(agent.clock.now() + REPORTED_LIFETIME),
            ..c.clone()
        };
        reported.expiration_rfc3339().unwrap_or_default()
    });
    json(
        StatusCode::OK,
        serde_json::json!({
            "AccessKeyId": c.access_key_id,
            "SecretAccessKey": c.secret_access_key,
            "Token": c.session_token.clone().unwrap_or_default(),
            "AccountId": c.identity.account_id,
            "Expiration": expiration,
        }),
    )
}
