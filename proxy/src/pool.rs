//! The upstream connection pool of one worker: idle HTTP/1.1 connections per host, one
//! shared HTTP/2 connection per host when ALPN chose h2.
//!
//! This replaces hyper-util's general-purpose client on the request path, whose checkout
//! future, SipHash-keyed pool map and per-request task that only hands the HTTP/1.1
//! connection back cost about 1.3 µs of CPU per proxied request (proxy/BENCHMARKS.md).
//! Here a connection is checked out by popping a vector and goes back the moment its
//! response body ends (see [`PooledBody`]); each worker runs on one thread, so the lock is
//! never contended. A reused connection that turns out closed is retried once on a new one
//! when hyper hands the unsent request back.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::ProxyBody;
use crate::upstream::{ConnectError, Connector};

/// A map keyed by service names, hashed with foldhash: several lookups per request, and the
/// keys come from the pod's own applications (and the route cache is bounded), so SipHash's
/// flooding resistance buys nothing here.
pub type Names<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Why a request could not be exchanged with the upstream.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The connection failed while the request or the response headers were in flight.
    #[error("{0}")]
    Upstream(#[source] hyper::Error),
    /// The request has no authority to pick a connection by.
    #[error("request URI {0} has no host")]
    NoHost(Uri),
}

/// A worker's pool; cloning shares it.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    connector: Connector,
    idle_timeout: Duration,
    max_idle_per_host: usize,
    hosts: Mutex<Names<Arc<str>, Host>>,
}

struct Host {
    /// The map's key, shared with check-ins (no copy of the name per request).
    authority: Arc<str>,
    /// The Host header for this authority, made once.
    host_header: HeaderValue,
    /// Idle HTTP/1.1 senders, most recently used last, with the time they became idle.
    idle: Vec<(http1::SendRequest<ProxyBody>, Instant)>,
    /// The shared HTTP/2 connection, when the upstream negotiated h2.
    h2: Option<http2::SendRequest<ProxyBody>>,
}

impl Host {
    /// An empty entry; `None` if the authority cannot be a Host header.
    fn new(authority: Arc<str>) -> Option<Self> {
        Some(Host {
            host_header: HeaderValue::from_str(&authority).ok()?,
            authority,
            idle: Vec::new(),
            h2: None,
        })
    }
}

enum Sender {
    H1(http1::SendRequest<ProxyBody>),
    H2(http2::SendRequest<ProxyBody>),
}

impl Pool {
    /// A pool opening connections with `connector`; idle connections close after
    /// `idle_timeout`, and at most `max_idle_per_host` stay open per host.
    pub fn new(connector: Connector, idle_timeout: Duration, max_idle_per_host: usize) -> Self {
        let inner = Arc::new(Inner {
            connector,
            idle_timeout,
            max_idle_per_host,
            hosts: Mutex::new(Names::default()),
        });
        tokio::spawn(reap(Arc::downgrade(&inner)));
        Pool { inner }
    }

    /// Sends `req` (absolute URI, HTTP/1.1 version) and returns the response headers; the
    /// body streams afterwards and hands its connection back when it ends. `now` is the
    /// caller's recent reading of the clock, for the idle-timeout check.
    pub async fn send(
        &self,
        mut req: Request<ProxyBody>,
        now: Instant,
    ) -> Result<Response<ProxyBody>, PoolError> {
        let (key, host_header, idle) = match req.uri().authority() {
            Some(authority) => self.checkout(authority.as_str(), now)?,
            None => return Err(PoolError::NoHost(req.uri().clone())),
        };

        let mut sender = match idle {
            // Normally ready at once; otherwise the connection finishes its previous
            // exchange first (or fails, and a new one is opened).
            Some(Sender::H1(mut tx)) => tx.ready().await.ok().map(|()| Sender::H1(tx)),
            other => other,
        };
        // At most two rounds: a reused connection may have been closed by the upstream while
        // idle, in which case hyper hands the unsent request back and a new connection takes
        // it. A loop, not a second call, keeps one exchange in this (boxed) future.
        loop {
            let reused = sender.is_some();
            let tx = match sender.take() {
                Some(tx) => tx,
                // Connecting is boxed: its future (DNS, TCP, TLS and HTTP handshakes) is
                // several KiB, and would otherwise make every exchange that big.
                None => Box::pin(self.connect(&key)).await?,
            };
            match self.exchange(tx, &key, &host_header, req).await {
                Ok(resp) => return Ok(resp),
                Err((err, Some(unsent))) if reused => {
                    tracing::debug!(error = %err, "pooled connection was closed; reconnecting");
                    req = unsent;
                }
                Err((err, _)) => return Err(PoolError::Upstream(err)),
            }
        }
    }

    /// One exchange on `sender`. HTTP/1.1 gets `host` as a header; HTTP/2 carries it as
    /// :authority only (nginx refuses a request with both: "duplicate host header").
    async fn exchange(
        &self,
        sender: Sender,
        authority: &Arc<str>,
        host: &HeaderValue,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, (hyper::Error, Option<Request<ProxyBody>>)> {
        match sender {
            Sender::H1(mut tx) => {
                // Host as hyper-util's client and aws-sigv4 write it: the authority without
                // the default port (the URI only carries a port when it is not 443).
                req.headers_mut().insert(HOST, host.clone());
                // HTTP/1.1 wants origin-form on the wire.
                let pq = req
                    .uri()
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/"));
                *req.uri_mut() = Uri::from(pq);
                match tx.try_send_request(req).await {
                    Ok(resp) => {
                        let checkin = Checkin {
                            pool: Arc::downgrade(&self.inner),
                            authority: authority.clone(),
                            tx,
                        };
                        // An empty body (HEAD, 204, 304) is never polled: the connection is
                        // free already.
                        if resp.body().is_end_stream() {
                            checkin.done();
                            return Ok(resp.map(ProxyBody::from));
                        }
                        Ok(resp.map(|body| {
                            ProxyBody::Pooled(PooledBody {
                                body,
                                checkin: Some(checkin),
                            })
                        }))
                    }
                    Err(mut e) => {
                        let req = e.take_message();
                        Err((e.into_error(), req))
                    }
                }
            }
            Sender::H2(mut tx) => {
                // A request handed back by an HTTP/1.1 connection that closed has one.
                req.headers_mut().remove(HOST);
                match tx.try_send_request(req).await {
                    Ok(resp) => Ok(resp.map(ProxyBody::from)),
                    Err(mut e) => {
                        let req = e.take_message();
                        Err((e.into_error(), req))
                    }
                }
            }
        }
    }

    /// The pool entry for `authority` (its shared name and Host header), with a live idle
    /// connection if there is one.
    fn checkout(
        &self,
        authority: &str,
        now: Instant,
    ) -> Result<(Arc<str>, HeaderValue, Option<Sender>), PoolError> {
        let mut hosts = self.inner.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let host = match hosts.get_mut(authority) {
            Some(host) => host,
            // First request for this authority: the only time its name is copied.
            None => host_mut(&mut hosts, &Arc::from(authority))
                .ok_or_else(|| PoolError::NoHost(Uri::default()))?,
        };
        if host.h2.as_ref().is_some_and(|h2| h2.is_closed()) {
            host.h2 = None;
        }
        let sender = match &host.h2 {
            Some(h2) => Some(Sender::H2(h2.clone())),
            None => std::iter::from_fn(|| host.idle.pop())
                .find(|(tx, since)| {
                    !tx.is_closed()
                        && now.saturating_duration_since(*since) < self.inner.idle_timeout
                })
                .map(|(tx, _)| Sender::H1(tx)),
        };
        Ok((host.authority.clone(), host.host_header.clone(), sender))
    }

    async fn connect(&self, authority: &Arc<str>) -> Result<Sender, PoolError> {
        let uri = Uri::builder()
            .scheme("https")
            .authority(&**authority)
            .path_and_query("/")
            .build()
            .map_err(|_| PoolError::NoHost(Uri::default()))?;
        let conn = self.inner.connector.connect(uri).await?;
        if conn.is_h2() {
            let (tx, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(conn)
                .await
                .map_err(PoolError::Upstream)?;
            drive(connection);
            let mut hosts = self.inner.hosts.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(host) = host_mut(&mut hosts, authority) {
                host.h2 = Some(tx.clone());
            }
            Ok(Sender::H2(tx))
        } else {
            let (tx, connection) = http1::Builder::new()
                .handshake(conn)
                .await
                .map_err(PoolError::Upstream)?;
            drive(connection);
            Ok(Sender::H1(tx))
        }
    }
}

/// Runs a connection's I/O in its own task until it closes.
fn drive(connection: impl Future<Output = hyper::Result<()>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
}

impl Inner {
    fn checkin(&self, authority: &Arc<str>, tx: http1::SendRequest<ProxyBody>) {
        if tx.is_closed() {
            return;
        }
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(host) = host_mut(&mut hosts, authority) {
            if host.idle.len() < self.max_idle_per_host {
                host.idle.push((tx, Instant::now()));
            }
        }
    }
}

/// The entry for `authority`, made again if the reaper dropped it (it drops entries with
/// nothing idle, busy connections notwithstanding).
fn host_mut<'a>(
    hosts: &'a mut Names<Arc<str>, Host>,
    authority: &Arc<str>,
) -> Option<&'a mut Host> {
    match hosts.entry(authority.clone()) {
        Entry::Occupied(e) => Some(e.into_mut()),
        Entry::Vacant(e) => Host::new(authority.clone()).map(|host| e.insert(host)),
    }
}

/// Closes connections idle for longer than the timeout, until the pool is dropped.
async fn reap(pool: Weak<Inner>) {
    let period = match pool.upgrade() {
        Some(p) => (p.idle_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(30)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let mut hosts = pool.hosts.lock().unwrap_or_else(|p| p.into_inner());
        for host in hosts.values_mut() {
            host.idle
                .retain(|(tx, since)| !tx.is_closed() && since.elapsed() < pool.idle_timeout);
            if host.h2.as_ref().is_some_and(|h2| h2.is_closed()) {
                host.h2 = None;
            }
        }
        hosts.retain(|_, h| !h.idle.is_empty() || h.h2.is_some());
    }
}

/// Hands an HTTP/1.1 connection back to its pool.
struct Checkin {
    pool: Weak<Inner>,
    authority: Arc<str>,
    tx: http1::SendRequest<ProxyBody>,
}

impl Checkin {
    fn done(self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.checkin(&self.authority, self.tx);
        }
    }
}

/// A response body from an HTTP/1.1 upstream connection: when it ends, the connection goes
/// back to the pool. Dropped before its end, the connection is dropped too (hyper closes
/// it: the rest of the response would have to be read first).
#[derive(Debug)]
pub struct PooledBody {
    body: Incoming,
    checkin: Option<Checkin>,
}

impl std::fmt::Debug for Checkin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkin")
            .field("authority", &self.authority)
            .finish()
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let poll = Pin::new(&mut self.body).poll_frame(cx);
        match &poll {
            Poll::Ready(None) => {
                if let Some(c) = self.checkin.take() {
                    c.done();
                }
            }
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => {
                if let Some(c) = self.checkin.take() {
                    c.done();
                }
            }
            Poll::Ready(Some(Err(_))) => self.checkin = None,
            _ => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
