//! Listeners, the accept loop, and start/stop of the whole proxy.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::provider::SharedCredentialsProvider;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::credentials::CredentialsCache;
use crate::deadline::Deadlines;
use crate::error;
use crate::metrics::Metrics;
use crate::orig_dst;
use crate::pool::Pool;
use crate::proxy::{ConnInfo, Proxy};
use crate::sign::Signer;
use crate::trust::Trust;
use crate::upstream::{self, Connector, TlsConfigError};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No region anywhere.
    #[error("no AWS region: give --region or set AWS_REGION")]
    NoRegion,
    /// TLS trust could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    /// The private CA could not be fetched from ACM PCA.
    #[error("{0}; check the pod's IAM permissions (acm-pca:GetCertificateAuthorityCertificate) or use --ca-file")]
    PrivateCa(#[from] crate::pca::PcaError),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}; is another process using the port?")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
}

/// A started proxy.
pub struct Running {
    proxy_addrs: Vec<SocketAddr>,
    admin_addr: SocketAddr,
    stop: watch::Sender<bool>,
    done: JoinHandle<()>,
    credentials: CredentialsCache,
}

impl Running {
    /// The bound proxy addresses (useful with port 0).
    pub fn proxy_addrs(&self) -> &[SocketAddr] {
        &self.proxy_addrs
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The credentials cache (readiness).
    pub fn credentials(&self) -> &CredentialsCache {
        &self.credentials
    }

    /// Stops accepting, lets in-flight requests finish up to the drain deadline, and
    /// returns when everything is closed.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.done.await;
    }
}

/// Binds the listeners and starts serving with credentials from `provider`.
pub async fn start(
    config: Config,
    provider: SharedCredentialsProvider,
) -> Result<Running, StartError> {
    let region = config.region.clone().ok_or(StartError::NoRegion)?;
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry, config.workers);

    // Credentials are fetched in the background from here on; /readyz reports them.
    let credentials = CredentialsCache::spawn(provider, metrics.clone());

    // The private CA from ACM PCA, when configured, before anything is served: without it
    // no request to a custom domain could succeed.
    let mut fetched_roots = Vec::new();
    if let Some(ca) = &config.private_ca {
        // The ACM PCA API has a public certificate: trust the system roots for this call
        // even when --system-roots=false limits Lattice traffic to the private CA.
        let mut api = config.upstream.clone();
        api.system_roots = true;
        let bootstrap = upstream::tls_config(&api, &[])?;
        let client = upstream::client(
            &config.upstream,
            Connector::new(&config.upstream, Trust::fixed(bootstrap), metrics.clone()),
        );
        fetched_roots = ca.fetch(&client, &credentials).await?;
    }
    let tls = Trust::new(
        upstream::tls_config(&config.upstream, &fetched_roots)?,
        &mut registry,
    );
    if config.upstream.ca_file.is_some() && !config.upstream.ca_reload_interval.is_zero() {
        tokio::spawn(tls.clone().watch(
            config.upstream.clone(),
            fetched_roots,
            config.upstream.ca_reload_interval,
        ));
    }

    let mut listeners = Vec::new();
    let mut proxy_addrs = Vec::new();
    for addr in &config.listen {
        match TcpListener::bind(addr).await {
            Ok(l) => {
                let local = l.local_addr().map_err(|source| StartError::Bind {
                    addr: *addr,
                    source,
                })?;
                tracing::info!(listener = "proxy", addr = %local, "listening");
                proxy_addrs.push(local);
                listeners.push(l);
            }
            // Pods without IPv6 have no ::1: the default dual listener must not stop them.
            Err(e) if addr.is_ipv6() && e.kind() == io::ErrorKind::AddrNotAvailable => {
                tracing::warn!(%addr, error = %e, "IPv6 loopback unavailable; not listening there");
            }
            Err(source) => {
                return Err(StartError::Bind {
                    addr: *addr,
                    source,
                })
            }
        }
    }
    if listeners.is_empty() {
        return Err(StartError::Bind {
            addr: config.listen[0],
            source: io::Error::new(io::ErrorKind::AddrNotAvailable, "no address could be bound"),
        });
    }
    let admin_listener = admin::bind(config.admin)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.admin,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: config.admin,
            source,
        })?;
    tracing::info!(listener = "admin", addr = %admin_addr, "listening");

    let signer = Arc::new(
        Signer::new(
            region,
            config.signing_name.clone(),
            config.payload,
            config.sign_headers.clone(),
        )
        .with_algorithm(config.algorithm.clone())
        .with_signing_log(config.log_signing_process),
    );
    let shared = Arc::new(Shared {
        config: config.clone(),
        tls,
        signer,
        credentials: credentials.clone(),
        metrics: metrics.clone(),
    });

    let (stop, stop_rx) = watch::channel(false);
    let draining = Arc::new(AtomicBool::new(false));
    let mut finished = Vec::new();
    if config.workers == 0 {
        // Serve on the caller's runtime (tests, embedding).
        let (tx, rx) = oneshot::channel();
        let shared = shared.clone();
        let stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            serve(shared, Source::Listeners(listeners), stop_rx, 0).await;
            let _ = tx.send(());
        });
        finished.push(rx);
    } else {
        // One single-threaded runtime per worker with its own upstream pool, like nginx's
        // workers: a request never hops threads, so there are no cross-thread wake-ups
        // (measured: a work-stealing runtime spent a fifth of its time in the scheduler's
        // wake-ups and lost a third of the throughput). Connections are accepted here and
        // handed to the worker with the fewest open ones, so a client's few long-lived
        // connections are spread evenly (workers racing to accept split 16 connections
        // anywhere from 8/8 to 12/4, and the busier worker set the pace).
        let mut workers = Vec::new();
        for i in 0..config.workers {
            let (tx, rx) = mpsc::unbounded_channel();
            let open = Arc::new(AtomicUsize::new(0));
            workers.push(WorkerHandle {
                tx,
                open: open.clone(),
            });
            let (done_tx, done_rx) = oneshot::channel();
            let shared = shared.clone();
            let stop_rx = stop_rx.clone();
            std::thread::Builder::new()
                .name(format!("lattice-proxy-w{i}"))
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => {
                            rt.block_on(serve(shared, Source::Handed { rx, open }, stop_rx, i))
                        }
                        Err(e) => {
                            tracing::error!(worker = i, error = %e, "cannot start a worker runtime")
                        }
                    }
                    let _ = done_tx.send(());
                })
                .map_err(|source| StartError::Bind {
                    addr: config.listen[0],
                    source,
                })?;
            finished.push(done_rx);
        }
        let workers: Arc<[WorkerHandle]> = workers.into();
        for l in listeners {
            tokio::spawn(balance(l, workers.clone(), stop_rx.clone()));
        }
    }

    let (admin_stop, admin_stop_rx) = watch::channel(false);
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        AdminState {
            credentials: credentials.clone(),
            draining: draining.clone(),
            registry: Arc::new(registry),
            redirect_check: config
                .redirect_check
                .map(|a| Arc::new(crate::redirect_check::RedirectCheck::new(a))),
        },
        admin_stop_rx,
    ));

    let mut stop_wait = stop_rx.clone();
    let done = tokio::spawn(async move {
        let _ = stop_wait.wait_for(|s| *s).await;
        draining.store(true, Ordering::Relaxed);
        for rx in finished {
            let _ = rx.await;
        }
        let _ = admin_stop.send(true);
        let _ = admin_task.await;
    });

    Ok(Running {
        proxy_addrs,
        admin_addr,
        stop,
        done,
        credentials,
    })
}

/// What every worker shares.
struct Shared {
    config: Config,
    tls: Arc<Trust>,
    signer: Arc<Signer>,
    credentials: CredentialsCache,
    metrics: Arc<Metrics>,
}

/// A worker's end of the balancer: accepted connections, and how many of them are open.
struct WorkerHandle {
    tx: mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>,
    open: Arc<AtomicUsize>,
}

/// Where a worker's connections come from.
enum Source {
    /// Its own accept loops (a single worker on the caller's runtime).
    Listeners(Vec<TcpListener>),
    /// The balancer; `open` counts the connections it handed over that are still open.
    Handed {
        rx: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
        open: Arc<AtomicUsize>,
    },
}

/// Accepts on `listener` until `stop` and hands each connection to the worker with the
/// fewest open connections.
async fn balance(
    listener: TcpListener,
    workers: Arc<[WorkerHandle]>,
    mut stop: watch::Receiver<bool>,
) {
    while let Some((stream, client)) = accept(&listener, &mut stop).await {
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let Some(worker) = workers
            .iter()
            .filter(|w| !w.tx.is_closed())
            .min_by_key(|w| w.open.load(Ordering::Relaxed))
        else {
            return;
        };
        worker.open.fetch_add(1, Ordering::Relaxed);
        if worker.tx.send((stream, client)).is_err() {
            worker.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One worker: its own upstream pool and HTTP server settings, serving the connections from
/// `source` until `stop`, then a drain bounded by the deadline.
async fn serve(shared: Arc<Shared>, source: Source, stop: watch::Receiver<bool>, worker: usize) {
    let config = &shared.config;
    let (deadlines, ticker) = Deadlines::new();
    tokio::spawn(ticker);
    let connector = Connector::new(&config.upstream, shared.tls.clone(), shared.metrics.clone());
    let pool = Pool::new(
        connector,
        config.upstream.pool_idle_timeout,
        config.upstream.pool_max_idle_per_host,
    );
    let proxy = Arc::new(Proxy::new(
        config.allow.clone(),
        // Per worker: the request path then writes no memory another worker writes.
        Arc::new(shared.signer.for_worker()),
        shared.credentials.for_worker(),
        pool,
        config.upstream.port,
        config.upstream.response_timeout,
        deadlines.clone(),
        config.strip_headers.clone(),
        shared.metrics.clone(),
        worker,
    ));

    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(deadlines.clone())
        .keep_alive(true)
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes);
    http.http2()
        .timer(deadlines.clone())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(1024);
    let http = Arc::new(http);

    let graceful = Arc::new(GracefulShutdown::new());
    let conns = Connections {
        proxy,
        http,
        graceful: graceful.clone(),
        metrics: shared.metrics.clone(),
        deadlines,
        header_read_timeout: config.header_read_timeout,
    };
    match source {
        Source::Listeners(listeners) => {
            let mut accept_tasks = Vec::new();
            for l in listeners {
                accept_tasks.push(tokio::spawn(accept_loop(l, conns.clone(), stop.clone())));
            }
            for t in accept_tasks {
                let _ = t.await;
            }
        }
        Source::Handed { mut rx, open } => {
            let mut stop = stop.clone();
            loop {
                let (stream, client) = tokio::select! {
                    biased;
                    _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
                    c = rx.recv() => match c {
                        Some(c) => c,
                        None => break,
                    },
                };
                match TcpStream::from_std(stream) {
                    Ok(stream) => conns.serve(stream, client, Some(open.clone())),
                    Err(e) => {
                        open.fetch_sub(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "cannot register a connection with the worker");
                    }
                }
            }
        }
    }
    // The accept loops have returned; this was the last other handle on `graceful`.
    drop(conns);
    let drain_timeout = config.drain_timeout;
    tracing::info!(
        worker,
        connections = graceful.count(),
        deadline_s = drain_timeout.as_secs_f64(),
        "stopped accepting; draining in-flight requests"
    );
    let drained = match Arc::try_unwrap(graceful) {
        Ok(g) => tokio::time::timeout(drain_timeout, g.shutdown())
            .await
            .is_ok(),
        Err(_) => false,
    };
    if drained {
        tracing::info!(worker, "drained");
    } else {
        tracing::warn!(
            worker,
            "drain deadline reached; closing remaining connections"
        );
    }
}

/// What a worker needs to serve a connection.
#[derive(Clone)]
struct Connections {
    proxy: Arc<Proxy>,
    http: Arc<auto::Builder<TokioExecutor>>,
    graceful: Arc<GracefulShutdown>,
    metrics: Arc<Metrics>,
    /// The worker's timer, for the first request's deadline.
    deadlines: Deadlines,
    header_read_timeout: Duration,
}

impl Connections {
    /// Serves one client connection in a task of its own; `open` is decremented when it ends.
    fn serve(&self, stream: TcpStream, client: SocketAddr, open: Option<Arc<AtomicUsize>>) {
        let info = ConnInfo {
            client,
            original_dst: original_dst(&stream),
        };
        // Debug level: an enabled span is entered on every poll of the connection, which the
        // default (info) configuration should not pay for; request events carry the client.
        let span = tracing::debug_span!("conn", %client);
        let proxy = self.proxy.clone();
        let metrics = self.metrics.clone();
        // No async block around `handle`: each level of async fn keeps its own copy of the
        // request, and hyper moves the whole future into place for every request.
        let served = Arc::new(AtomicBool::new(false));
        let first = served.clone();
        let svc = service_fn(move |req| {
            first.store(true, Ordering::Relaxed);
            proxy.clone().handle(req, info)
        });
        let _ = stream.set_nodelay(true);
        let conn = self
            .http
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        let conn = self.graceful.watch(conn);
        // hyper's header read timeout starts only once hyper-util has told HTTP/1 from the
        // HTTP/2 preface, which waits for bytes without a limit, and HTTP/2 has none at all:
        // a connection that sends nothing, part of the preface, or the preface alone would
        // stay open for ever. It gets the same time to complete its first request head.
        let first_request = first_request_deadline(
            self.deadlines
                .sleep_until(std::time::Instant::now() + self.header_read_timeout),
            served,
        );
        metrics.client_connections_open.inc();
        tokio::spawn(
            async move {
                let ended = tokio::select! {
                    ended = conn => ended,
                    () = first_request => {
                        tracing::debug!("no request head within the header read timeout; closing");
                        Ok(())
                    }
                };
                if let Err(e) = ended {
                    tracing::debug!(error = %error::chain(&*e), "client connection ended with an error");
                }
                metrics.client_connections_open.dec();
                if let Some(open) = open {
                    open.fetch_sub(1, Ordering::Relaxed);
                }
            }
            .instrument(span),
        );
    }
}

/// Completes at `deadline` unless a request head has arrived by then (`served`).
async fn first_request_deadline(deadline: crate::deadline::Deadline, served: Arc<AtomicBool>) {
    deadline.await;
    if served.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
}

async fn accept_loop(listener: TcpListener, conns: Connections, mut stop: watch::Receiver<bool>) {
    while let Some((stream, client)) = accept(&listener, &mut stop).await {
        conns.serve(stream, client, None);
    }
}

/// The next connection on `listener`, or `None` once `stop` is set.
async fn accept(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            biased;
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return None,
            r = listener.accept() => match r {
                Ok(c) => return Some(c),
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// The redirector's original destination, cross-checked against Lattice's ranges.
fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    match orig_dst::original_destination(stream, local) {
        // Conntrack without NAT answers the local address itself: not redirected.
        Ok(dst) if dst == local => None,
        Ok(dst) => {
            if !orig_dst::is_lattice_address(&dst) {
                tracing::warn!(original_dst = %dst, "connection redirected from outside VPC Lattice's ranges; the Host header still decides the upstream");
            }
            Some(dst)
        }
        Err(e) => {
            tracing::debug!(error = %e, "no original destination (connection not redirected)");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Handed = mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>;

    /// The next connection the balancer hands to any worker still listening: the worker's
    /// index and the client address. It waits for the hand-over itself, however long the
    /// balancer takes to be scheduled; the 30 s bound only stops a hung test.
    async fn next_handed(workers: &mut [Option<Handed>]) -> (usize, SocketAddr) {
        let handed = std::future::poll_fn(|cx| {
            for (i, rx) in workers.iter_mut().enumerate() {
                if let Some(rx) = rx {
                    match rx.poll_recv(cx) {
                        std::task::Poll::Ready(Some((_, client))) => {
                            return std::task::Poll::Ready((i, client))
                        }
                        std::task::Poll::Ready(None) => panic!("the balancer has stopped"),
                        std::task::Poll::Pending => {}
                    }
                }
            }
            std::task::Poll::Pending
        });
        tokio::time::timeout(Duration::from_secs(30), handed)
            .await
            .expect("no connection was handed to a worker within 30 s")
    }

    /// Connects once and returns the worker the balancer gave the connection to.
    async fn connect_and_see(
        addr: SocketAddr,
        workers: &mut [Option<Handed>],
        clients: &mut Vec<TcpStream>,
    ) -> usize {
        let client = TcpStream::connect(addr).await.unwrap();
        let (worker, from) = next_handed(workers).await;
        // The connection handed over is the one just made, not another.
        assert_eq!(from, client.local_addr().unwrap());
        clients.push(client);
        worker
    }

    fn open_counts(workers: &[WorkerHandle]) -> Vec<usize> {
        workers
            .iter()
            .map(|w| w.open.load(Ordering::Relaxed))
            .collect()
    }

    /// Connections go to the worker with the fewest open ones (the first of equals); a
    /// worker that has gone away is skipped. Each connection is followed to its worker before
    /// the next is made, so the order of the hand-overs is exact.
    #[tokio::test]
    async fn balancer_spreads_connections_evenly() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let mut rxs = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..3 {
            let (tx, rx) = mpsc::unbounded_channel();
            rxs.push(Some(rx));
            handles.push(WorkerHandle {
                tx,
                open: Arc::new(AtomicUsize::new(0)),
            });
        }
        // Worker 0 already serves two connections.
        handles[0].open.store(2, Ordering::Relaxed);
        let workers: Arc<[WorkerHandle]> = handles.into();
        let balancer = tokio::spawn(balance(listener, workers.clone(), stop_rx));

        // Open [2, 0, 0]: 1 and 2 take turns until they catch up with 0, then all three do.
        let mut clients = Vec::new();
        let mut got = Vec::new();
        for _ in 0..7 {
            got.push(connect_and_see(addr, &mut rxs, &mut clients).await);
        }
        assert_eq!(got, [1, 2, 1, 2, 0, 1, 2]);
        // 2+7 connections over three workers: three each.
        assert_eq!(open_counts(&workers), [3, 3, 3]);

        // Worker 1 stops: the next connections go to 0 and 2 only.
        rxs[1] = None;
        let mut later = Vec::new();
        for _ in 0..2 {
            later.push(connect_and_see(addr, &mut rxs, &mut clients).await);
        }
        assert_eq!(later, [0, 2]);
        assert_eq!(open_counts(&workers), [4, 3, 4]);
        for rx in rxs.iter_mut().flatten() {
            assert!(
                rx.try_recv().is_err(),
                "a connection nobody made was handed over"
            );
        }

        stop.send(true).unwrap();
        balancer.await.unwrap();
    }
}
