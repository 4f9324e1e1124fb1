//! Credentials: the standard AWS chain, fetched at start, cached, refreshed before expiry.
//!
//! aws-config's chain (env, EKS Pod Identity, IRSA web identity, profile, IMDSv2) resolves
//! lazily and does not cache. A background task fetches at start and again ahead of each
//! expiry (retrying with backoff and jitter); requests only read the current value from a
//! `watch` channel, so no request ever waits for a fetch. Until the first credentials arrive
//! the proxy is not ready; without valid credentials requests get 503 — never forwarded
//! unsigned.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_types::region::Region;
use tokio::sync::watch;

use crate::error;
use crate::metrics::{Metrics, RefreshLabels, RefreshResult};

/// How long a single fetch from the chain may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Refresh at most this long before expiry (EKS Pod Identity credentials last hours).
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Credentials without expiry (env, static profile) are re-read this often.
const STATIC_REFRESH: Duration = Duration::from_secs(60 * 60);
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What the cache holds.
#[derive(Clone, Debug)]
pub enum State {
    /// The first fetch has not finished.
    Loading,
    /// Credentials are held (they may have expired if refreshes keep failing).
    Ready {
        /// The credentials as a signing identity.
        identity: Identity,
        /// When they expire, if they do.
        expiry: Option<SystemTime>,
        /// The last refresh failure, if the last attempt failed.
        last_error: Option<Arc<str>>,
    },
    /// No credentials could be had.
    Failed {
        /// Why (the provider chain's error, without secrets).
        cause: Arc<str>,
    },
}

impl State {
    /// The identity to sign with now, or why there is none.
    fn identity(&self) -> Result<Identity, CredentialsUnavailable> {
        match self {
            State::Loading => Err(CredentialsUnavailable::Loading),
            State::Failed { cause } => Err(CredentialsUnavailable::Failed(cause.clone())),
            State::Ready {
                identity,
                expiry,
                last_error,
            } => {
                if matches!(expiry, Some(e) if *e <= SystemTime::now()) {
                    let cause = last_error
                        .clone()
                        .unwrap_or_else(|| Arc::from("no refresh has succeeded yet"));
                    Err(CredentialsUnavailable::Expired(cause))
                } else {
                    Ok(identity.clone())
                }
            }
        }
    }

    /// The same state with an identity of its own: cloning it per request then bumps
    /// reference counts no other worker touches (the credentials inside stay shared, and
    /// are only read).
    fn unshared(&self) -> State {
        match self {
            State::Ready {
                identity,
                expiry,
                last_error,
            } => State::Ready {
                identity: match identity.data::<Credentials>() {
                    Some(creds) => Identity::new(creds.clone(), identity.expiration()),
                    None => identity.clone(),
                },
                expiry: *expiry,
                last_error: last_error.clone(),
            },
            other => other.clone(),
        }
    }
}

/// One worker's copy of the credentials, taken again from the shared cache when that
/// changes. Requests then touch only their worker's memory: reading the shared `watch`
/// takes a lock, and cloning the shared identity bumps reference counts, on cache lines
/// every worker would write for every request.
#[derive(Debug)]
pub struct WorkerCredentials {
    inner: Mutex<(watch::Receiver<State>, State)>,
}

impl WorkerCredentials {
    /// The identity to sign with now, or why there is none.
    pub fn identity(&self) -> Result<Identity, CredentialsUnavailable> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (rx, state) = &mut *guard;
        // A version check (an atomic load) unless the refresh task sent something new.
        if rx.has_changed().unwrap_or(false) {
            *state = rx.borrow_and_update().unshared();
        }
        state.identity()
    }
}

/// Why no credentials are available for a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialsUnavailable {
    /// Start-up fetch still running.
    #[error("credentials are still being fetched from the AWS provider chain")]
    Loading,
    /// The chain failed and nothing valid is held.
    #[error("{0}")]
    Failed(Arc<str>),
    /// The held credentials expired and refreshing failed.
    #[error("credentials expired and refreshing failed: {0}")]
    Expired(Arc<str>),
}

/// Shared handle to the cached credentials.
#[derive(Clone, Debug)]
pub struct CredentialsCache {
    rx: watch::Receiver<State>,
}

impl CredentialsCache {
    /// Starts the background fetch/refresh task on the current tokio runtime.
    pub fn spawn(provider: SharedCredentialsProvider, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = watch::channel(State::Loading);
        tokio::spawn(refresh_loop(provider, tx, metrics));
        CredentialsCache { rx }
    }

    /// The identity to sign with now, or why there is none.
    pub fn identity(&self) -> Result<Identity, CredentialsUnavailable> {
        self.rx.borrow().identity()
    }

    /// A copy for one worker's request path (see [`WorkerCredentials`]).
    pub fn for_worker(&self) -> WorkerCredentials {
        let rx = self.rx.clone();
        let state = rx.borrow().unshared();
        WorkerCredentials {
            inner: Mutex::new((rx, state)),
        }
    }

    /// Whether valid credentials are held.
    pub fn is_ready(&self) -> bool {
        self.identity().is_ok()
    }

    /// Waits until the first fetch has finished (successfully or not).
    pub async fn first_fetch_done(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|s| !matches!(s, State::Loading)).await;
    }
}

async fn refresh_loop(
    provider: SharedCredentialsProvider,
    tx: watch::Sender<State>,
    metrics: Arc<Metrics>,
) {
    let mut backoff = BACKOFF_START;
    loop {
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, provider.provide_credentials()).await;
        let wait = match fetched {
            Ok(Ok(creds)) => {
                metrics
                    .credential_refreshes
                    .get_or_create(&RefreshLabels {
                        result: RefreshResult::success,
                    })
                    .inc();
                metrics.credentials_valid.set(1);
                backoff = BACKOFF_START;
                let expiry = creds.expiry();
                // Never log the credentials themselves: the key id and expiry are enough.
                tracing::info!(
                    access_key_id = creds.access_key_id(),
                    expires_in_s = expiry.map(|e| secs_until(e).as_secs()),
                    "AWS credentials loaded"
                );
                let identity = Identity::new(creds, expiry);
                tx.send_replace(State::Ready {
                    identity,
                    expiry,
                    last_error: None,
                });
                match expiry {
                    Some(e) => {
                        let left = secs_until(e);
                        let margin = MAX_REFRESH_MARGIN.min(left / 2);
                        (left - margin).max(Duration::from_millis(100))
                    }
                    None => STATIC_REFRESH,
                }
            }
            failed => {
                metrics
                    .credential_refreshes
                    .get_or_create(&RefreshLabels {
                        result: RefreshResult::failure,
                    })
                    .inc();
                let cause: Arc<str> = match failed {
                    Ok(Err(e)) => chain_failure(&e).into(),
                    _ => format!(
                        "the AWS credential provider chain gave no answer within {FETCH_TIMEOUT:?}"
                    )
                    .into(),
                };
                let mut still_valid_for = None;
                tx.send_modify(|state| match state {
                    State::Ready {
                        expiry, last_error, ..
                    } if expiry.is_none_or(|e| e > SystemTime::now()) => {
                        still_valid_for = Some(expiry.map(secs_until));
                        *last_error = Some(cause.clone());
                    }
                    _ => {
                        *state = State::Failed {
                            cause: cause.clone(),
                        }
                    }
                });
                if still_valid_for.is_none() {
                    metrics.credentials_valid.set(0);
                }
                tracing::warn!(error = %cause, retry_in_s = backoff.as_secs(), "could not refresh AWS credentials");
                let mut wait = jitter(backoff);
                if let Some(Some(left)) = still_valid_for {
                    // Keep several attempts before the held credentials run out.
                    wait = wait.min(left / 4).max(Duration::from_millis(100));
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                wait
            }
        };
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(wait).await;
    }
}

/// Why the chain gave no credentials, in one line (readiness, 503 bodies, the warning); the
/// chain's whole error, Debug form included, goes to the debug log only.
fn chain_failure(e: &CredentialsError) -> String {
    tracing::debug!(detail = %DisplayErrorContext(e), "the AWS credential provider chain's error");
    let mut cause = format!(
        "the AWS credential provider chain failed: {}",
        error::chain(e)
    );
    if matches!(e, CredentialsError::CredentialsNotLoaded(_)) {
        // No provider is configured at all (each one declined): say how to configure one.
        cause.push_str(
            "; give the pod an IAM role (EKS Pod Identity, or IRSA on its service account) \
             or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        );
    }
    cause
}

fn secs_until(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::now()).unwrap_or_default()
}

/// ±20 % jitter so that a fleet of sidecars does not retry in lockstep.
fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    let r = (h.finish() % 401) as f64 / 1000.0; // 0.0 ..= 0.4
    d.mul_f64(0.8 + r)
}

/// Region and credentials provider from the standard AWS chain, with a pure-Rust
/// (rustls + ring) HTTP client for the network providers.
///
/// `region` wins when given; otherwise the chain's region (env, profile, IMDS) is used.
pub async fn default_chain(
    region: Option<String>,
) -> (Option<SharedCredentialsProvider>, Option<String>) {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
    // With no system CA certificates (a minimal image without a bundle), the SDK's TLS
    // context would assert on an empty native store: start from an empty one instead, say
    // what that costs, and let the HTTP providers (Pod Identity, IMDS) and env work.
    let native = rustls_native_certs::load_native_certs();
    let trust = if native.certs.is_empty() {
        let errors: Vec<String> = native.errors.iter().map(|e| error::chain(e)).collect();
        tracing::warn!(
            errors = %errors.join("; "),
            "no system CA certificates: credential providers that use HTTPS (STS, for IRSA) \
             cannot verify TLS; mount a CA bundle or set SSL_CERT_FILE (EKS Pod Identity, \
             IMDS and environment credentials need none)"
        );
        TrustStore::empty()
    } else {
        TrustStore::default()
    };
    let mut builder = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring));
    match TlsContext::builder().with_trust_store(trust).build() {
        Ok(ctx) => builder = builder.tls_context(ctx),
        Err(e) => tracing::warn!(
            error = %error::chain(&e),
            "the credential providers' TLS settings could not be applied"
        ),
    }
    let http = builder.build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
    if let Some(r) = region {
        loader = loader.region(Region::new(r));
    }
    let conf = loader.load().await;
    (
        conf.credentials_provider(),
        conf.region().map(|r| r.as_ref().to_owned()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(key_id: &str, expiry: Option<SystemTime>) -> State {
        let creds = Credentials::new(key_id, "SECRET", None, expiry, "test");
        State::Ready {
            identity: Identity::new(creds, expiry),
            expiry,
            last_error: Some(Arc::from("refresh failed: test")),
        }
    }

    fn key_id(id: &Identity) -> String {
        id.data::<Credentials>().unwrap().access_key_id().to_owned()
    }

    /// A worker's copy follows every change of the shared cache.
    #[test]
    fn worker_copies_follow_the_shared_cache() {
        let (tx, rx) = watch::channel(State::Loading);
        let shared = CredentialsCache { rx };
        let worker = shared.for_worker();
        assert!(matches!(
            worker.identity(),
            Err(CredentialsUnavailable::Loading)
        ));
        tx.send(ready("AKID1", None)).unwrap();
        assert_eq!(key_id(&worker.identity().unwrap()), "AKID1");
        // Unchanged: the same copy again.
        assert_eq!(key_id(&worker.identity().unwrap()), "AKID1");
        tx.send(ready("AKID2", None)).unwrap();
        assert_eq!(key_id(&worker.identity().unwrap()), "AKID2");
        // A worker made later starts from the current value.
        assert_eq!(key_id(&shared.for_worker().identity().unwrap()), "AKID2");
        tx.send(ready(
            "AKID3",
            Some(SystemTime::now() - Duration::from_secs(1)),
        ))
        .unwrap();
        match worker.identity() {
            Err(CredentialsUnavailable::Expired(cause)) => assert!(cause.contains("test")),
            other => panic!("expired credentials were handed out: {other:?}"),
        }
        tx.send(State::Failed {
            cause: Arc::from("no provider"),
        })
        .unwrap();
        assert!(matches!(
            worker.identity(),
            Err(CredentialsUnavailable::Failed(_))
        ));
    }

    /// The chain's error reads as one line; the hint is for a chain with nothing configured.
    #[test]
    fn chain_failures_read_as_one_line() {
        let none = chain_failure(&CredentialsError::not_loaded(
            "no credentials found in chain. Attempted:\n  Environment: not set\n  Profile: none",
        ));
        assert_eq!(
            none,
            "the AWS credential provider chain failed: the credential provider was not enabled: \
             no credentials found in chain. Attempted: Environment: not set; Profile: none; \
             give the pod an IAM role (EKS Pod Identity, or IRSA on its service account) or set \
             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        );
        let denied = chain_failure(&CredentialsError::provider_error(
            "AssumeRoleWithWebIdentity: AccessDenied",
        ));
        assert_eq!(
            denied,
            "the AWS credential provider chain failed: an error occurred while loading \
             credentials: AssumeRoleWithWebIdentity: AccessDenied"
        );
    }

    #[tokio::test]
    async fn static_credentials_become_ready() {
        let mut reg = prometheus_client::registry::Registry::default();
        let metrics = Metrics::new(&mut reg, 1);
        let creds = Credentials::new("AKID", "SECRET", None, None, "test");
        let cache = CredentialsCache::spawn(SharedCredentialsProvider::new(creds), metrics);
        cache.first_fetch_done().await;
        assert!(cache.is_ready());
    }

    #[tokio::test]
    async fn expired_credentials_are_refused() {
        let mut reg = prometheus_client::registry::Registry::default();
        let metrics = Metrics::new(&mut reg, 1);
        let creds = Credentials::new(
            "AKID",
            "SECRET",
            None,
            Some(SystemTime::now() - Duration::from_secs(1)),
            "test",
        );
        let cache = CredentialsCache::spawn(SharedCredentialsProvider::new(creds), metrics);
        cache.first_fetch_done().await;
        assert!(matches!(
            cache.identity(),
            Err(CredentialsUnavailable::Expired(_))
        ));
    }
}
