//! A scripted, in-process Kubernetes API server that serves Pods, for the node agent's
//! Kubernetes mode (kube-runtime's `watcher` with `spec.nodeName=<node>`) without a cluster.
//!
//! [`FakeApiServer::start`] serves plain HTTP/1.1 on `127.0.0.1:0` from a thread of its own
//! with its own tokio runtime, so sync and async tests alike can script it; dropping it stops
//! the thread and closes every connection. [`FakeApiServer::write_kubeconfig`] writes a
//! kubeconfig that `kube::Client::try_default()` (with `KUBECONFIG`) connects with.
//!
//! What it answers, as the real API server does for what kube-runtime's watcher sends
//! (kube-core's `ListParams`/`WatchParams::populate_qp`):
//! - `GET /api/v1/pods` and `GET /api/v1/namespaces/{ns}/pods`: a `PodList` (items without
//!   `apiVersion`/`kind`, like the real server), `metadata.resourceVersion` the current one;
//!   `fieldSelector` and `labelSelector` as in [Selectors](self#selectors); `limit` and
//!   `continue` page through one consistent snapshot (a token older than a
//!   [`compact`](FakeApiServer::compact) is 410 `Expired`); `resourceVersion` and
//!   `resourceVersionMatch` are accepted and ignored (the list is always the latest).
//! - The same paths with `watch=true` (or `1`): 200, chunked, one
//!   `{"type":...,"object":...}` per line. `resourceVersion` absent, empty or `"0"`, or
//!   `sendInitialEvents=true`: the selected pods as ADDED first (then, for a streaming list
//!   with `allowWatchBookmarks=true`, the BOOKMARK annotated `k8s.io/initial-events-end`);
//!   `resourceVersion=N`: every change after N from the retained history, or, when N is older
//!   than the history, one ERROR `Status` 410 `Expired` (`too old resource version: N (M)`)
//!   and the end of the stream. Then changes live. A change that makes a pod leave the
//!   selection is a DELETED event, one that makes it enter is ADDED, as the watch cache does.
//!   `timeoutSeconds` ends the stream cleanly (default 1800 s).
//! - `GET /api/v1/namespaces/{ns}/pods/{name}`, `/version`, `/api`, `/api/v1`, `/apis`,
//!   and `/healthz`, `/livez`, `/readyz`.
//! - Errors as `Status` objects: 401 without the kubeconfig's bearer token, 404 for other
//!   paths, 405 for other methods, 400 for malformed parameters.
//!
//! Faults to script: [`compact`](FakeApiServer::compact) (watches from older versions get
//! 410), [`drop_watches`](FakeApiServer::drop_watches) (every watch connection is cut in
//! the middle of its chunked body), [`deny`](FakeApiServer::deny) (every request answered
//! with a status, e.g. RBAC's 403), [`bookmark`](FakeApiServer::bookmark). To make the
//! server unreachable, drop it. Observations: [`requests`](FakeApiServer::requests),
//! [`open_watches`](FakeApiServer::open_watches) and the waits on it.
//!
//! Pods are raw JSON so that tests write real Pod objects; [`apply`](FakeApiServer::apply)
//! and [`delete`](FakeApiServer::delete) stand for the other clients of the cluster.
//!
//! # Selectors
//! Field selectors: `field=value`, `field==value`, `field!=value`, comma-separated, over the
//! fields the real server makes selectable on Pods (`metadata.name`, `metadata.namespace`,
//! `spec.nodeName`, `spec.restartPolicy`, `spec.schedulerName`, `spec.serviceAccountName`,
//! `spec.hostNetwork`, `status.phase`, `status.podIP`, `status.nominatedNodeName`); others
//! are refused with 400 like the real server does. Label selectors: `k=v`, `k==v`, `k!=v`,
//! `k in (a,b)`, `k notin (a,b)`, `k`, `!k`.

mod admission;
pub mod objects;
mod selector;
mod store;

pub use admission::Admitted;

use std::{
    collections::VecDeque,
    convert::Infallible,
    future::Future,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    pin::Pin,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
    thread::JoinHandle,
    time::Duration,
};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body as HttpBody, Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::{
    sync::{mpsc, oneshot, watch},
    time::Sleep,
};
use tracing::debug;

use self::{
    selector::Selector,
    store::{Store, WatchRequest, WatchStart},
};

/// The user named in the 403 answers of [`FakeApiServer::deny`]: the agent's service
/// account.
pub const DENIED_USER: &str = "system:serviceaccount:lattice-egress:lattice-redirector";

/// The bearer token that the kubeconfig of [`FakeApiServer::write_kubeconfig`] carries and
/// the server requires.
pub const TOKEN: &str = "fake-api-server-token";

/// How long a watch without `timeoutSeconds` lasts (the real server picks 30 to 60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// How long the server waits after a failed `accept` before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// A fake Kubernetes API server serving Pods; see the [module](self) documentation.
#[derive(Debug)]
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// What the server thread and the script share.
#[derive(Debug)]
struct Shared {
    store: Mutex<Store>,
    /// Signalled whenever the number of open watches may have changed (waits on `store`).
    watches_changed: Condvar,
    /// The number of open watches, for async waiters.
    open_watches: watch::Sender<usize>,
    deny: Mutex<Option<u16>>,
    requests: Mutex<Vec<String>>,
}

impl FakeApiServer {
    /// Starts a server on `127.0.0.1:0`, with no pods, at resourceVersion 1.
    ///
    /// # Panics
    /// If the loopback port cannot be bound or the thread cannot start.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("fake API server: bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("fake API server: non-blocking listener");
        let addr = listener
            .local_addr()
            .expect("fake API server: local address");
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new()),
            watches_changed: Condvar::new(),
            open_watches: watch::Sender::new(0),
            deny: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
        });
        let (shutdown, stop) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("fake-kube-api-{}", addr.port()))
            .spawn({
                let shared = shared.clone();
                move || serve(listener, shared, stop)
            })
            .expect("fake API server: spawn its thread");
        Self {
            shared,
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig whose current context reaches this server (cluster `server` =
    /// [`url`](Self::url), a user with the bearer [`TOKEN`], namespace `default`). It is
    /// JSON, which YAML readers take as it is.
    ///
    /// It also names a CA (`<path>.ca.crt`, written beside it), as every real kubeconfig and
    /// the in-cluster configuration do: the server is plain HTTP and never uses it, but
    /// without one kube-client loads the system's roots, which a minimal VM does not have.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        let path = path.as_ref();
        let ca = crate::tls::generate(&["kubernetes.default.svc".to_string()])
            .map_err(std::io::Error::other)?;
        let mut ca_file = path.as_os_str().to_owned();
        ca_file.push(".ca.crt");
        std::fs::write(&ca_file, ca.ca_pem)?;
        let kubeconfig = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {
                "server": self.url(),
                "certificate-authority": Path::new(&ca_file),
            }}],
            "users": [{"name": "fake", "user": {"token": TOKEN}}],
            "contexts": [{
                "name": "fake",
                "context": {"cluster": "fake", "user": "fake", "namespace": "default"},
            }],
            "current-context": "fake",
            "preferences": {},
        });
        let text = serde_json::to_string_pretty(&kubeconfig).expect("JSON values serialize");
        std::fs::write(path, text)
    }

    /// Creates or updates a pod and returns it as stored; watches see ADDED or MODIFIED.
    ///
    /// `kind`/`apiVersion` default to `Pod`/`v1` and `metadata.namespace` to `default`;
    /// `metadata.resourceVersion` is assigned (the next of one counter for all changes),
    /// `metadata.uid` and `metadata.creationTimestamp` too when a new pod has none. An
    /// update keeps the stored uid and creationTimestamp (both are immutable).
    ///
    /// # Panics
    /// If `pod` is not a Pod object with a `metadata.name`, or if an update names another
    /// uid (delete the pod first to recreate it).
    pub fn apply(&self, pod: Value) -> Value {
        self.shared.store().apply(pod, &now())
    }

    /// Deletes a pod at once (as a deletion with grace period 0 ends) and returns the object
    /// that watches see in the DELETED event (the last state, with a new resourceVersion);
    /// `None`, and no change, if there is no such pod. A graceful deletion is an
    /// [`apply`](Self::apply) of the pod with `metadata.deletionTimestamp` first.
    pub fn delete(&self, namespace: &str, name: &str) -> Option<Value> {
        self.shared.store().delete(namespace, name)
    }

    /// The pod as stored.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Value> {
        self.shared.store().get(namespace, name)
    }

    /// Creates a pod as a client's `POST` does: mutating admission first (the webhooks of
    /// the MutatingWebhookConfigurations [put](Self::put_object) here, called as
    /// `admission` describes), then what the API server does to a created pod
    /// ([`crate::demo::kube::prepare_for_create`]: requests defaulted, `status.qosClass`),
    /// then the store (watches see ADDED). 409 `AlreadyExists` when the pod exists;
    /// admission's refusals as the real server words them.
    pub async fn create_pod(&self, mut pod: Value) -> Result<Admitted, Refused> {
        let namespace = pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        pod["metadata"]["namespace"] = json!(namespace);
        let name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let snapshot = {
            let store = self.shared.store();
            if store.get(&namespace, &name).is_some() {
                return Err(Status::new(
                    409,
                    "AlreadyExists",
                    format!("pods \"{name}\" already exists"),
                )
                .into());
            }
            admission::Snapshot::take(&store, &namespace)
        };
        let mut admitted = admission::admit(&snapshot, pod).await?;
        crate::demo::kube::prepare_for_create(&mut admitted.object)
            .map_err(|e| Status::new(422, "Invalid", format!("pods \"{name}\": {e:#}")))?;
        admitted.object = self.apply(admitted.object);
        Ok(admitted)
    }

    /// Creates or replaces an object of one of the [`objects::KINDS`] (what `kubectl apply`
    /// of a Namespace, Service, Endpoints or MutatingWebhookConfiguration leaves in the
    /// store); `namespace` is the path's, for the namespaced kinds. Returns it as stored, or
    /// what is wrong with it.
    pub fn put_object(&self, mut object: Value, namespace: Option<&str>) -> Result<Value, String> {
        let kind_name = object["kind"].as_str().unwrap_or_default().to_owned();
        let kind = objects::Kind::named(&kind_name).ok_or_else(|| {
            format!(
                "kind {kind_name:?} is not kept by the fake API server (it keeps Pods and {})",
                objects::KINDS.map(|k| k.name).join(", ")
            )
        })?;
        objects::normalise(kind, &mut object, namespace)?;
        Ok(self.shared.store().put_object(kind, object, &now()))
    }

    /// An object of one of the [`objects::KINDS`] as stored (`namespace` is ignored for the
    /// cluster-scoped kinds).
    pub fn object(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let kind = objects::Kind::named(kind)?;
        self.shared.store().object(kind, namespace, name)
    }

    /// The current resourceVersion (the last one assigned; 1 before any change).
    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version()
    }

    /// Forgets the change history up to now, as etcd compaction does: a watch from an
    /// older resourceVersion then gets a 410 `Expired` ERROR event, and so does a list
    /// continued with an older continue token.
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    /// Sends a BOOKMARK at the current resourceVersion on every open watch that allows
    /// bookmarks (the real server sends them about once a minute).
    pub fn bookmark(&self) {
        self.shared.store().bookmark();
    }

    /// Cuts every open watch connection in the middle of its chunked body (no terminating
    /// chunk), as a lost connection or a restarting API server does. When this returns,
    /// [`open_watches`](Self::open_watches) is 0.
    pub fn drop_watches(&self) {
        self.shared.with_watches(Store::drop_watches);
    }

    /// `Some(code)`: answers every new request with that status and a `Status` body (403 is
    /// RBAC's refusal to [`DENIED_USER`]); `None`: serves again. Open watches go on.
    pub fn deny(&self, code: Option<u16>) {
        *lock(&self.shared.deny) = code;
    }

    /// Every request seen so far, in order, as `METHOD /path?query` with the query decoded
    /// (e.g. `GET /api/v1/pods?fieldSelector=spec.nodeName=node-a&limit=500`).
    pub fn requests(&self) -> Vec<String> {
        lock(&self.shared.requests).clone()
    }

    /// The number of watches open now.
    pub fn open_watches(&self) -> usize {
        self.shared.store().open_watches()
    }

    /// Blocks until exactly `n` watches are open (true) or `timeout` passes (false). A
    /// watch counts from the moment its events are routed to it, so a change applied after
    /// this returns true reaches it; it stops counting when its stream ends, is cut, or its
    /// client goes away (noticed by the server within moments), so `n = 0` waits for that.
    ///
    /// # Panics
    /// On a current-thread tokio runtime, where blocking would also stop the client under
    /// test: use [`wait_for_watches_async`](Self::wait_for_watches_async) there.
    pub fn wait_for_watches(&self, n: usize, timeout: Duration) -> bool {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            assert!(
                handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread,
                "FakeApiServer::wait_for_watches blocks the runtime: use wait_for_watches_async"
            );
        }
        let store = self.shared.store();
        let (_store, result) = self
            .shared
            .watches_changed
            .wait_timeout_while(store, timeout, |store| store.open_watches() != n)
            .unwrap_or_else(PoisonError::into_inner);
        !result.timed_out()
    }

    /// [`wait_for_watches`](Self::wait_for_watches) for async tests.
    pub async fn wait_for_watches_async(&self, n: usize, timeout: Duration) -> bool {
        let mut open = self.shared.open_watches.subscribe();
        tokio::time::timeout(timeout, open.wait_for(|open| *open == n))
            .await
            .is_ok_and(|changed| changed.is_ok())
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                debug!("fake API server: its thread panicked");
            }
        }
    }
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    /// Runs `f` on the store, then wakes whoever waits on the number of open watches.
    fn with_watches<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut store = self.store();
        let result = f(&mut store);
        self.open_watches.send_replace(store.open_watches());
        self.watches_changed.notify_all();
        result
    }
}

/// A refusal of the API server: the HTTP status and its `Status` object.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The HTTP status code.
    pub code: u16,
    /// The `meta/v1` `Status` object of the answer.
    pub status: Value,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let message = self.status["message"].as_str().unwrap_or("no message");
        write!(f, "{message} ({})", self.code)
    }
}

impl std::error::Error for Refused {}

impl From<Status> for Refused {
    fn from(status: Status) -> Self {
        Refused {
            code: status.code,
            status: status.to_json(),
        }
    }
}

/// Now, as the API server writes creation times (RFC 3339, whole seconds, UTC).
fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 ns is valid")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 formats a UTC time")
}

/// Locks, going on after a panic elsewhere (a failed test must not hide behind a poison).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The server thread: accepts until `stop`, then drops its runtime, which cancels every
/// connection task and so closes every socket.
fn serve(listener: std::net::TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("fake API server: tokio runtime");
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::from_std(listener).expect("fake API server: listener");
        loop {
            let stream = tokio::select! {
                _ = &mut stop => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        debug!(%error, "fake API server: accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(respond(&shared, request).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(error) = connection.await {
                    // Includes the watches cut by drop_watches.
                    debug!(%error, "fake API server: connection ended with an error");
                }
            });
        }
    });
}

type Body = Either<Full<Bytes>, WatchBody>;

/// What a request asks for.
#[derive(Debug, Clone, Copy)]
enum Route<'a> {
    Health,
    Version,
    Api,
    ApiV1,
    Apis,
    Pods {
        namespace: Option<&'a str>,
    },
    Pod {
        namespace: &'a str,
        name: &'a str,
    },
    /// A cluster-scoped object of [`objects::KINDS`] (GET, and PATCH with a strategic merge
    /// patch: what a webhook's replicas do to publish their caBundle).
    Object {
        kind: objects::Kind,
        name: &'a str,
    },
    Unknown,
}

impl<'a> Route<'a> {
    fn of(path: &'a str) -> Self {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        match segments.as_slice() {
            ["healthz" | "livez" | "readyz"] => Self::Health,
            ["version"] => Self::Version,
            ["api"] => Self::Api,
            ["api", "v1"] => Self::ApiV1,
            ["apis"] => Self::Apis,
            ["api", "v1", "pods"] => Self::Pods { namespace: None },
            ["api", "v1", "namespaces", namespace, "pods"] => Self::Pods {
                namespace: Some(namespace),
            },
            ["api", "v1", "namespaces", namespace, "pods", name] => Self::Pod { namespace, name },
            _ => match objects::Kind::of_object(path) {
                Some((kind, name)) => Self::Object { kind, name },
                None => Self::Unknown,
            },
        }
    }

    /// Paths that the real server shows to everyone (`system:public-info-viewer`).
    fn is_public(self) -> bool {
        matches!(self, Self::Health | Self::Version)
    }
}

/// The query parameters of a request, decoded.
struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean parameter, read as Go's `strconv.ParseBool`; absent is false.
    fn flag(&self, key: &str) -> Result<bool, Status> {
        match self.get(key) {
            None | Some("") => Ok(false),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(other) => Err(Status::bad_request(format!(
                "invalid value for {key}: {other:?}"
            ))),
        }
    }

    fn number(&self, key: &str) -> Result<Option<u64>, Status> {
        self.get(key)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse()
                    .map_err(|_| Status::bad_request(format!("invalid value for {key}: {v:?}")))
            })
            .transpose()
    }

    fn is_watch(&self) -> bool {
        self.flag("watch").unwrap_or(false)
    }
}

/// The largest body the server reads (the real server's limit is 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// One place where a request becomes its answer.
async fn respond(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    if request.method() == Method::PATCH {
        if let Route::Object { kind, name } = Route::of(request.uri().path()) {
            let (kind, name) = (kind, name.to_owned());
            lock(&shared.requests).push(format!("PATCH {}", request.uri().path()));
            return patch_object(shared, kind, &name, request)
                .await
                .unwrap_or_else(|status| status.response());
        }
    }
    respond_get(shared, &request)
}

/// A PATCH of a kept cluster-scoped object: authorised, a strategic merge patch, applied.
async fn patch_object(
    shared: &Arc<Shared>,
    kind: objects::Kind,
    name: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, Status> {
    if let Some(code) = *lock(&shared.deny) {
        return Err(Status::denied(
            code,
            Route::Unknown,
            request.uri().path(),
            &Query(Vec::new()),
        ));
    }
    if !authorized(&request) {
        return Err(Status::new(401, "Unauthorized", "Unauthorized".to_owned()));
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if content_type != "application/strategic-merge-patch+json" {
        return Err(Status::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/strategic-merge-patch+json (got {content_type:?})"),
        ));
    }
    let body = http_body_util::Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            Status::new(
                413,
                "RequestEntityTooLarge",
                format!("reading the body: {e}"),
            )
        })?
        .to_bytes();
    let patch: Value = serde_json::from_slice(&body)
        .map_err(|e| Status::bad_request(format!("the patch is not JSON: {e}")))?;
    let patched = shared.store().patch_object(kind, name, &patch, &now())?;
    Ok(json_response(&patched))
}

/// The answer to every request but a PATCH.
fn respond_get(shared: &Arc<Shared>, request: &Request<Incoming>) -> Response<Body> {
    let path = request.uri().path();
    let query = Query(
        form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect(),
    );
    let line = request_line(request.method(), path, &query);
    debug!(request = %line, "fake API server");
    lock(&shared.requests).push(line);

    let route = Route::of(path);
    let denied = *lock(&shared.deny);
    let result = if let Some(code) = denied {
        Err(Status::denied(code, route, path, &query))
    } else if !route.is_public() && !authorized(request) {
        Err(Status::new(401, "Unauthorized", "Unauthorized".to_owned()))
    } else if request.method() != Method::GET {
        Err(Status::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource".to_owned(),
        ))
    } else {
        route_request(shared, route, &query)
    };
    result.unwrap_or_else(|status| status.response())
}

fn route_request(
    shared: &Arc<Shared>,
    route: Route,
    query: &Query,
) -> Result<Response<Body>, Status> {
    match route {
        Route::Health => Ok(response(StatusCode::OK, "text/plain", "ok".into())),
        Route::Version => Ok(json_response(&json!({
            "major": "1",
            "minor": "33",
            "gitVersion": "v1.33.0-fake",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2025-04-23T00:00:00Z",
            "goVersion": "go1.24.2",
            "compiler": "gc",
            "platform": "linux/amd64",
        }))),
        Route::Api => Ok(json_response(&json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [],
        }))),
        Route::ApiV1 => Ok(json_response(&json!({
            "kind": "APIResourceList",
            "groupVersion": "v1",
            "resources": [{
                "name": "pods",
                "singularName": "pod",
                "namespaced": true,
                "kind": "Pod",
                "verbs": ["get", "list", "watch"],
                "shortNames": ["po"],
            }],
        }))),
        Route::Apis => Ok(json_response(&json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [],
        }))),
        Route::Pods { namespace } => pods(shared, namespace, query),
        Route::Pod { namespace, name } => match shared.store().get(namespace, name) {
            Some(pod) => Ok(json_response(&pod)),
            None => Err(
                Status::new(404, "NotFound", format!("pods \"{name}\" not found"))
                    .with_details(json!({"name": name, "kind": "pods"})),
            ),
        },
        Route::Object { kind, name } => match shared.store().object(kind, "", name) {
            Some(object) => Ok(json_response(&object)),
            None => Err(Status::new(
                404,
                "NotFound",
                format!("{} \"{name}\" not found", kind.resource),
            )
            .with_details(json!({"name": name, "kind": kind.resource}))),
        },
        Route::Unknown => Err(Status::new(
            404,
            "NotFound",
            "the server could not find the requested resource".to_owned(),
        )),
    }
}

/// A list or a watch of pods.
fn pods(
    shared: &Arc<Shared>,
    namespace: Option<&str>,
    query: &Query,
) -> Result<Response<Body>, Status> {
    let selector = Selector::parse(
        namespace,
        query.get("fieldSelector"),
        query.get("labelSelector"),
    )?;
    if !query.flag("watch")? {
        let limit = query.number("limit")?.unwrap_or(0);
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let list = shared
            .store()
            .list(&selector, limit, query.get("continue"))?;
        return Ok(json_response(&list));
    }
    let request = WatchRequest {
        selector,
        resource_version: query.get("resourceVersion").map(str::to_owned),
        bookmarks: query.flag("allowWatchBookmarks")?,
        send_initial_events: query.flag("sendInitialEvents")?,
    };
    let timeout = query
        .number("timeoutSeconds")?
        .filter(|&seconds| seconds > 0)
        .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
    let body = match shared.with_watches(|store| store.watch(request))? {
        WatchStart::Open { id, lines, rx } => WatchBody {
            pending: lines.into(),
            live: Some(Live {
                rx,
                deadline: Box::pin(tokio::time::sleep(timeout)),
                _guard: WatchGuard {
                    shared: shared.clone(),
                    id,
                },
            }),
        },
        WatchStart::Expired(line) => WatchBody {
            pending: VecDeque::from([line]),
            live: None,
        },
    };
    let mut response = Response::new(Either::Right(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn authorized(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        == Some(TOKEN)
}

fn request_line(method: &Method, path: &str, query: &Query) -> String {
    if query.0.is_empty() {
        return format!("{method} {path}");
    }
    let query: Vec<String> = query.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{method} {path}?{}", query.join("&"))
}

fn json_response(value: &Value) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("JSON values serialize");
    response(StatusCode::OK, "application/json", body.into())
}

fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Either::Left(Full::new(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A failure as the API server reports it: a `meta/v1` `Status` object.
#[derive(Debug, Clone)]
struct Status {
    code: u16,
    reason: &'static str,
    message: String,
    details: Option<Value>,
}

impl Status {
    fn new(code: u16, reason: &'static str, message: String) -> Self {
        Self {
            code,
            reason,
            message,
            details: None,
        }
    }

    fn bad_request(message: String) -> Self {
        Self::new(400, "BadRequest", message)
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// The answer to any request while [`FakeApiServer::deny`] is set.
    fn denied(code: u16, route: Route, path: &str, query: &Query) -> Self {
        if code != 403 {
            let (reason, message) = match code {
                401 => ("Unauthorized", "Unauthorized"),
                404 => (
                    "NotFound",
                    "the server could not find the requested resource",
                ),
                410 => ("Expired", "the resource version is too old"),
                429 => (
                    "TooManyRequests",
                    "Too many requests, please try again later.",
                ),
                503 => (
                    "ServiceUnavailable",
                    "the server is currently unable to handle the request",
                ),
                504 => (
                    "Timeout",
                    "the server was unable to return a response in the time allotted",
                ),
                500..=599 => (
                    "InternalError",
                    "Internal error occurred: injected by FakeApiServer::deny",
                ),
                _ => ("", "injected by FakeApiServer::deny"),
            };
            return Self::new(code, reason, message.to_owned());
        }
        let (verb, name, namespace) = match route {
            Route::Pods { namespace } if query.is_watch() => ("watch", None, namespace),
            Route::Pods { namespace } => ("list", None, namespace),
            Route::Pod { namespace, name } => ("get", Some(name), Some(namespace)),
            _ => {
                let message =
                    format!("forbidden: User \"{DENIED_USER}\" cannot get path \"{path}\"");
                return Self::new(403, "Forbidden", message);
            }
        };
        let subject = match name {
            Some(name) => format!("pods \"{name}\""),
            None => "pods".to_owned(),
        };
        let scope = match namespace {
            Some(namespace) => format!("in the namespace \"{namespace}\""),
            None => "at the cluster scope".to_owned(),
        };
        let mut details = json!({"kind": "pods"});
        if let Some(name) = name {
            details["name"] = json!(name);
        }
        Self::new(
            403,
            "Forbidden",
            format!(
                "{subject} is forbidden: User \"{DENIED_USER}\" cannot {verb} resource \"pods\" \
                 in API group \"\" {scope}"
            ),
        )
        .with_details(details)
    }

    fn to_json(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }

    fn response(&self) -> Response<Body> {
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.to_json()).expect("JSON values serialize");
        response(status, "application/json", body.into())
    }
}

/// The body of a watch: lines to send first, then, while the watch is open, what the store
/// routes to it until `timeoutSeconds`.
#[derive(Debug)]
struct WatchBody {
    pending: VecDeque<Bytes>,
    live: Option<Live>,
}

#[derive(Debug)]
struct Live {
    rx: mpsc::UnboundedReceiver<Bytes>,
    deadline: Pin<Box<Sleep>>,
    _guard: WatchGuard,
}

/// Closes the watch in the store when its body goes (stream ended, client gone, or server
/// stopped).
#[derive(Debug)]
struct WatchGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.shared.with_watches(|store| store.close_watch(self.id));
    }
}

/// The error that makes hyper cut a watch connection (see [`FakeApiServer::drop_watches`]).
#[derive(Debug, thiserror::Error)]
#[error("watch dropped by FakeApiServer::drop_watches")]
struct WatchDropped;

impl HttpBody for WatchBody {
    type Data = Bytes;
    type Error = WatchDropped;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, WatchDropped>>> {
        let this = self.get_mut();
        if let Some(line) = this.pending.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(line))));
        }
        let Some(live) = &mut this.live else {
            return Poll::Ready(None);
        };
        match live.rx.poll_recv(cx) {
            Poll::Ready(Some(line)) => return Poll::Ready(Some(Ok(Frame::data(line)))),
            // drop_watches: the store let go of the sender.
            Poll::Ready(None) => {
                this.live = None;
                return Poll::Ready(Some(Err(WatchDropped)));
            }
            Poll::Pending => {}
        }
        if live.deadline.as_mut().poll(cx).is_ready() {
            // timeoutSeconds: a clean end of the chunked body.
            this.live = None;
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.live.is_none()
    }
}

#[cfg(test)]
mod tests;
