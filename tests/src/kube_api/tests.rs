//! The fake API server against a plain hyper client, a raw socket, and kube-runtime's
//! watcher (the client of the node agent).

use std::{
    io::{Read, Write},
    time::Duration,
};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    config::{KubeConfigOptions, Kubeconfig},
    runtime::watcher::{self, watcher, Event},
    Api, ResourceExt,
};
use serde_json::{json, Value};

use base64::Engine as _;

use super::*;

/// Bound on every wait of these tests; none is reached when things work.
const WAIT: Duration = Duration::from_secs(10);

fn pod(namespace: &str, name: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "busybox"}]},
        "status": {"phase": "Running"},
    })
}

/// One GET over a fresh HTTP/1.1 connection, with the kubeconfig's token if `token`.
async fn get(server: &FakeApiServer, path_and_query: &str, token: bool) -> Response<Incoming> {
    let stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = Request::get(path_and_query).header(header::HOST, server.addr().to_string());
    if token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
    }
    let request = request.body(Empty::<Bytes>::new()).unwrap();
    tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .expect("response in time")
        .unwrap()
}

async fn get_json(server: &FakeApiServer, path_and_query: &str) -> (StatusCode, Value) {
    let response = get(server, path_and_query, true).await;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

/// The lines of a watch body.
struct Lines {
    body: Incoming,
    buffer: Vec<u8>,
}

impl Lines {
    async fn open(server: &FakeApiServer, path_and_query: &str) -> Self {
        let response = get(server, path_and_query, true).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        Self {
            body: response.into_body(),
            buffer: Vec::new(),
        }
    }

    /// The next event; `Ok(None)` at the clean end of the body, `Err` when it is cut.
    async fn next(&mut self) -> Result<Option<Value>, hyper::Error> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Ok(Some(serde_json::from_slice(&line).unwrap()));
            }
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .expect("watch line in time");
            match frame {
                None => {
                    assert!(self.buffer.is_empty(), "a partial line at the end");
                    return Ok(None);
                }
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    async fn event(&mut self) -> (String, Value) {
        let event = self.next().await.unwrap().expect("an event");
        (
            event["type"].as_str().unwrap().to_owned(),
            event["object"].clone(),
        )
    }
}

fn names(items: &Value) -> Vec<&str> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|pod| pod["metadata"]["name"].as_str().unwrap())
        .collect()
}

#[test]
fn apply_assigns_versions_and_keeps_immutable_fields() {
    let server = FakeApiServer::start();
    assert_eq!(server.resource_version(), 1);
    let created = server.apply(json!({"metadata": {"name": "a1"}, "spec": {"nodeName": "node-a"}}));
    assert_eq!(created["kind"], "Pod");
    assert_eq!(created["apiVersion"], "v1");
    assert_eq!(created["metadata"]["namespace"], "default");
    assert_eq!(created["metadata"]["resourceVersion"], "2");
    let uid = created["metadata"]["uid"].as_str().unwrap().to_owned();
    assert_eq!(uid.len(), 36);
    assert!(created["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .ends_with('Z'));

    let updated = server.apply(pod("default", "a1", "node-b"));
    assert_eq!(updated["metadata"]["uid"], uid.as_str());
    assert_eq!(
        updated["metadata"]["creationTimestamp"],
        created["metadata"]["creationTimestamp"]
    );
    assert_eq!(updated["metadata"]["resourceVersion"], "3");
    assert_eq!(server.get("default", "a1"), Some(updated.clone()));

    let deleted = server.delete("default", "a1").unwrap();
    assert_eq!(deleted["metadata"]["resourceVersion"], "4");
    assert_eq!(deleted["spec"]["nodeName"], "node-b");
    assert_eq!(server.delete("default", "a1"), None);
    assert_eq!(server.resource_version(), 4);
}

#[tokio::test]
async fn lists_select_pods_and_page_through_one_snapshot() {
    let server = FakeApiServer::start();
    server.apply(pod("default", "a1", "node-a"));
    server.apply(pod("default", "b1", "node-b"));
    server.apply(pod("kube-system", "a2", "node-a"));
    server.apply(pod("default", "a0", "node-a"));
    let rv = server.resource_version().to_string();

    let (status, list) =
        get_json(&server, "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(list["metadata"]["resourceVersion"], rv.as_str());
    assert_eq!(list["metadata"].get("continue"), None);
    // Key order (namespace, name), and items without apiVersion/kind like the real server.
    assert_eq!(names(&list["items"]), ["a0", "a1", "a2"]);
    assert_eq!(list["items"][0].get("kind"), None);

    let (_, list) = get_json(
        &server,
        "/api/v1/namespaces/default/pods?fieldSelector=spec.nodeName%3D%3Dnode-a",
    )
    .await;
    assert_eq!(names(&list["items"]), ["a0", "a1"]);
    let (_, list) = get_json(&server, "/api/v1/pods?labelSelector=app%20in%20(b1,a2)").await;
    assert_eq!(names(&list["items"]), ["b1", "a2"]);

    // Pages: the second keeps the first one's snapshot, whatever changed in between.
    let (_, first) = get_json(
        &server,
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a&limit=2",
    )
    .await;
    assert_eq!(names(&first["items"]), ["a0", "a1"]);
    let token = first["metadata"]["continue"].as_str().unwrap().to_owned();
    server.apply(pod("kube-system", "a3", "node-a"));
    server.delete("kube-system", "a2");
    let next_page =
        format!("/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a&limit=2&continue={token}");
    let (_, second) = get_json(&server, &next_page).await;
    assert_eq!(names(&second["items"]), ["a2"]);
    assert_eq!(second["metadata"]["resourceVersion"], rv.as_str());
    assert_eq!(second["metadata"].get("continue"), None);
    // A token can be used again.
    assert_eq!(get_json(&server, &next_page).await.1, second);

    // A continue token older than a compaction has expired; a made-up one is invalid.
    let (_, first) = get_json(&server, "/api/v1/pods?limit=1").await;
    let token = first["metadata"]["continue"].as_str().unwrap().to_owned();
    server.apply(pod("default", "c1", "node-c"));
    server.compact();
    let (status, expired) =
        get_json(&server, &format!("/api/v1/pods?limit=1&continue={token}")).await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(expired["reason"], "Expired");
    let (status, _) = get_json(&server, "/api/v1/pods?limit=1&continue=nonsense").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, single) = get_json(&server, "/api/v1/namespaces/default/pods/a1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(single["kind"], "Pod");
    let (status, missing) = get_json(&server, "/api/v1/namespaces/default/pods/zz").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(missing["message"], "pods \"zz\" not found");
}

#[tokio::test]
async fn watches_replay_the_history_then_stream_changes_of_their_selection() {
    let server = FakeApiServer::start();
    server.apply(pod("default", "a1", "node-a"));
    let from = server.resource_version();
    server.apply(pod("default", "b1", "node-b"));
    server.apply(pod("default", "a2", "node-a"));

    let mut lines = Lines::open(
        &server,
        &format!(
            "/api/v1/pods?watch=1&fieldSelector=spec.nodeName%3Dnode-a&resourceVersion={from}\
             &allowWatchBookmarks=true&timeoutSeconds=290"
        ),
    )
    .await;
    assert!(server.wait_for_watches_async(1, WAIT).await);
    assert_eq!(server.open_watches(), 1);
    let (kind, object) = lines.event().await;
    assert_eq!(
        (kind.as_str(), object["metadata"]["name"].as_str()),
        ("ADDED", Some("a2"))
    );
    assert_eq!(object["kind"], "Pod");

    let mut modified = pod("default", "a1", "node-a");
    modified["status"]["phase"] = json!("Succeeded");
    server.apply(modified);
    server.apply(pod("default", "b2", "node-b"));
    let (kind, object) = lines.event().await;
    assert_eq!(
        (kind.as_str(), object["status"]["phase"].as_str()),
        ("MODIFIED", Some("Succeeded"))
    );

    // Leaving the selection is a DELETED (previous state, new version); entering, ADDED.
    let moved = server.apply(pod("default", "a2", "node-b"));
    let (kind, object) = lines.event().await;
    assert_eq!(kind, "DELETED");
    assert_eq!(object["spec"]["nodeName"], "node-a");
    assert_eq!(
        object["metadata"]["resourceVersion"],
        moved["metadata"]["resourceVersion"]
    );
    server.apply(pod("default", "b1", "node-a"));
    let (kind, object) = lines.event().await;
    assert_eq!(
        (kind.as_str(), object["metadata"]["name"].as_str()),
        ("ADDED", Some("b1"))
    );

    let deleted = server.delete("default", "a1").unwrap();
    assert_eq!(lines.event().await, ("DELETED".to_owned(), deleted));

    server.bookmark();
    let (kind, object) = lines.event().await;
    assert_eq!(kind, "BOOKMARK");
    assert_eq!(
        object["metadata"]["resourceVersion"],
        server.resource_version().to_string()
    );

    // Without a resourceVersion: the current state as ADDED, then changes.
    let mut current = Lines::open(&server, "/api/v1/namespaces/default/pods?watch=true").await;
    let (kind, object) = current.event().await;
    assert_eq!(
        (kind.as_str(), object["metadata"]["name"].as_str()),
        ("ADDED", Some("a2"))
    );
    let (_, object) = current.event().await;
    assert_eq!(object["metadata"]["name"], "b1");
    let (_, object) = current.event().await;
    assert_eq!(object["metadata"]["name"], "b2");
    assert!(server.wait_for_watches_async(2, WAIT).await);
    server.apply(pod("default", "a3", "node-a"));
    assert_eq!(lines.event().await.0, "ADDED");
    assert_eq!(current.event().await.0, "ADDED");
}

#[tokio::test]
async fn a_streaming_list_ends_its_initial_events_with_a_bookmark() {
    let server = FakeApiServer::start();
    server.apply(pod("default", "a1", "node-a"));
    server.apply(pod("default", "b1", "node-b"));
    let mut lines = Lines::open(
        &server,
        "/api/v1/pods?watch=true&timeoutSeconds=290&fieldSelector=spec.nodeName%3Dnode-a\
         &allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan\
         &resourceVersion=0",
    )
    .await;
    let (kind, object) = lines.event().await;
    assert_eq!(
        (kind.as_str(), object["metadata"]["name"].as_str()),
        ("ADDED", Some("a1"))
    );
    let (kind, object) = lines.event().await;
    assert_eq!(kind, "BOOKMARK");
    assert_eq!(
        object["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(object["metadata"]["resourceVersion"], "3");
}

#[tokio::test]
async fn a_watch_from_a_compacted_version_gets_410_and_ends() {
    let server = FakeApiServer::start();
    server.apply(pod("default", "a1", "node-a"));
    let old = server.resource_version();
    server.apply(pod("default", "a2", "node-a"));
    server.compact();
    let now = server.resource_version();

    let mut lines = Lines::open(
        &server,
        &format!("/api/v1/pods?watch=true&resourceVersion={old}"),
    )
    .await;
    let event = lines.next().await.unwrap().unwrap();
    assert_eq!(
        event,
        json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {old} ({now})"),
            "reason": "Expired", "code": 410,
        }})
    );
    assert_eq!(lines.next().await.unwrap(), None);
    assert_eq!(server.open_watches(), 0);

    // From the compaction point on, the watch is served.
    let mut lines = Lines::open(
        &server,
        &format!("/api/v1/pods?watch=true&resourceVersion={now}"),
    )
    .await;
    assert!(server.wait_for_watches_async(1, WAIT).await);
    server.delete("default", "a1");
    assert_eq!(lines.event().await.0, "DELETED");
}

#[tokio::test]
async fn watches_end_when_dropped_timed_out_or_abandoned() {
    let server = FakeApiServer::start();
    let mut first = Lines::open(&server, "/api/v1/pods?watch=true&resourceVersion=1").await;
    let mut second = Lines::open(&server, "/api/v1/pods?watch=true&resourceVersion=1").await;
    assert!(server.wait_for_watches_async(2, WAIT).await);
    server.drop_watches();
    assert_eq!(server.open_watches(), 0);
    // What kube-client reads as the resumable end of a watch: EOF inside the chunked body.
    let cut = first.next().await.unwrap_err();
    let io = std::error::Error::source(&cut)
        .and_then(|source| source.downcast_ref::<std::io::Error>())
        .unwrap_or_else(|| panic!("{cut:?}"));
    assert_eq!(io.kind(), std::io::ErrorKind::UnexpectedEof);
    assert!(
        io.to_string().contains("unexpected EOF during chunk"),
        "{io}"
    );
    assert!(second.next().await.is_err());

    let mut timed = Lines::open(
        &server,
        "/api/v1/pods?watch=true&resourceVersion=1&timeoutSeconds=1",
    )
    .await;
    assert_eq!(timed.next().await.unwrap(), None);
    assert!(server.wait_for_watches_async(0, WAIT).await);

    // A client that goes away closes its watch too.
    let gone = Lines::open(&server, "/api/v1/pods?watch=true").await;
    assert!(server.wait_for_watches_async(1, WAIT).await);
    drop(gone);
    assert!(server.wait_for_watches_async(0, WAIT).await);
}

#[tokio::test]
async fn errors_are_status_objects_and_deny_answers_everything_until_lifted() {
    let server = FakeApiServer::start();
    let response = get(&server, "/api/v1/pods", false).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = get(&server, "/version", false).await;
    assert_eq!(response.status(), StatusCode::OK);

    let (status, body) = get_json(&server, "/api/v1/pods?fieldSelector=spec.foo%3Dx").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["message"], "field label not supported: spec.foo");
    let (status, body) = get_json(&server, "/api/v1/services").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["kind"], "Status");

    server.deny(Some(403));
    let (status, body) = get_json(&server, "/api/v1/pods?limit=500").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "pods is forbidden: User \"system:serviceaccount:lattice-egress:lattice-redirector\" \
                        cannot list resource \"pods\" in API group \"\" at the cluster scope",
            "reason": "Forbidden", "details": {"kind": "pods"}, "code": 403,
        })
    );
    let (_, body) = get_json(&server, "/api/v1/namespaces/default/pods?watch=true").await;
    assert!(body["message"].as_str().unwrap().ends_with(
        "cannot watch resource \"pods\" in API group \"\" in the namespace \"default\""
    ));
    server.deny(Some(503));
    let (status, body) = get_json(&server, "/api/v1/pods").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["reason"], "ServiceUnavailable");
    server.deny(None);
    let (status, _) = get_json(&server, "/api/v1/pods").await;
    assert_eq!(status, StatusCode::OK);

    let requests = server.requests();
    assert_eq!(requests[0], "GET /api/v1/pods");
    assert_eq!(requests[2], "GET /api/v1/pods?fieldSelector=spec.foo=x");
    assert_eq!(requests.len(), 8);
}

/// A sync test with a raw socket: the wire format, and the blocking wait.
#[test]
fn a_watch_on_the_wire_is_chunked_json_lines() {
    let server = FakeApiServer::start();
    let mut stream = std::net::TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET /api/v1/pods?watch=true&fieldSelector=spec.nodeName%3Dnode-a HTTP/1.1\r\n\
         Host: {}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n",
        server.addr()
    )
    .unwrap();
    assert!(server.wait_for_watches(1, WAIT));
    server.apply(pod("default", "b1", "node-b"));
    server.apply(pod("default", "a1", "node-a"));

    let mut received = Vec::new();
    let mut buffer = [0; 4096];
    // Until the end of the chunk that carries a1 (b1 is on another node).
    while !(String::from_utf8_lossy(&received).contains("\"a1\"") && received.ends_with(b"\n\r\n"))
    {
        let n = stream.read(&mut buffer).expect("the ADDED event in time");
        assert!(n > 0, "connection closed early");
        received.extend_from_slice(&buffer[..n]);
    }
    let text = String::from_utf8(received).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("\r\ntransfer-encoding: chunked"), "{head}");
    assert!(
        head.contains("\r\ncontent-type: application/json"),
        "{head}"
    );
    // One chunk: its size, the line, CRLF.
    let (size, rest) = body.split_once("\r\n").unwrap();
    let line = &rest[..usize::from_str_radix(size, 16).unwrap()];
    let event: Value = serde_json::from_str(line.strip_suffix('\n').unwrap()).unwrap();
    assert_eq!(event["type"], "ADDED");
    assert_eq!(event["object"]["metadata"]["name"], "a1");
}

#[tokio::test]
async fn dropping_the_server_closes_its_watches() {
    let server = FakeApiServer::start();
    let mut lines = Lines::open(&server, "/api/v1/pods?watch=true&resourceVersion=1").await;
    assert!(server.wait_for_watches_async(1, WAIT).await);
    drop(server);
    assert!(lines.next().await.is_err());
}

async fn kube_client(server: &FakeApiServer) -> kube::Client {
    // The agent installs ring too; only one provider may be the process default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    server.write_kubeconfig(&path).unwrap();
    // What Client::try_default does with KUBECONFIG=path, without touching the environment
    // that the other tests of this process share.
    let kubeconfig = Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    assert_eq!(config.cluster_url.to_string(), format!("{}/", server.url()));
    kube::Client::try_from(config).unwrap()
}

type Events = futures::stream::BoxStream<'static, watcher::Result<Event<Pod>>>;

async fn next(events: &mut Events) -> watcher::Result<Event<Pod>> {
    tokio::time::timeout(WAIT, events.next())
        .await
        .expect("a watcher event in time")
        .expect("the watcher goes on")
}

/// `Init`, the `InitApply` names, `InitDone`: a full relist.
async fn relist(events: &mut Events) -> Vec<String> {
    assert!(matches!(next(events).await, Ok(Event::Init)));
    let mut names = Vec::new();
    loop {
        match next(events).await {
            Ok(Event::InitApply(pod)) => names.push(pod.name_any()),
            Ok(Event::InitDone) => return names,
            other => panic!("in a relist: {other:?}"),
        }
    }
}

/// Polls the watcher until its next event while `change` runs once its watch is open.
async fn next_after(
    server: &FakeApiServer,
    events: &mut Events,
    change: impl FnOnce(&FakeApiServer),
) -> watcher::Result<Event<Pod>> {
    let (event, ()) = tokio::join!(next(events), async {
        assert!(server.wait_for_watches_async(1, WAIT).await);
        change(server);
    });
    event
}

#[tokio::test]
async fn kube_runtime_watcher_lists_watches_and_recovers() {
    let server = FakeApiServer::start();
    server.apply(pod("default", "a1", "node-a"));
    server.apply(pod("default", "b1", "node-b"));
    server.apply(pod("kube-system", "a2", "node-a"));
    let api = Api::<Pod>::all(kube_client(&server).await);
    let mut events: Events = watcher(
        api,
        watcher::Config::default().fields("spec.nodeName=node-a"),
    )
    .boxed();

    assert_eq!(relist(&mut events).await, ["a1", "a2"]);

    let event = next_after(&server, &mut events, |server| {
        server.apply(pod("default", "b2", "node-b"));
        server.apply(pod("default", "a3", "node-a"));
    })
    .await;
    assert!(matches!(event, Ok(Event::Apply(pod)) if pod.name_any() == "a3"));
    server.delete("default", "a1");
    assert!(matches!(next(&mut events).await, Ok(Event::Delete(pod)) if pod.name_any() == "a1"));

    // Other nodes move the version on, the history goes, the connection is lost: the
    // watcher resumes from its version, gets 410, and relists.
    server.apply(pod("default", "b3", "node-b"));
    server.compact();
    server.drop_watches();
    match next(&mut events).await {
        Err(watcher::Error::WatchError(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
        }
        other => panic!("expected the 410, got {other:?}"),
    }
    assert_eq!(relist(&mut events).await, ["a3", "a2"]);

    // RBAC refuses the watch, then allows it again.
    server.deny(Some(403));
    match next(&mut events).await {
        Err(watcher::Error::WatchStartFailed(kube::Error::Api(status))) => {
            assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
        }
        other => panic!("expected the 403, got {other:?}"),
    }
    server.deny(None);
    let event = next_after(&server, &mut events, |server| {
        server.apply(pod("default", "a4", "node-a"));
    })
    .await;
    assert!(matches!(event, Ok(Event::Apply(pod)) if pod.name_any() == "a4"));

    let requests = server.requests();
    let lists: Vec<_> = requests
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .collect();
    let watches: Vec<_> = requests
        .iter()
        .filter(|r| r.contains("watch=true"))
        .collect();
    assert_eq!(
        lists,
        ["GET /api/v1/pods?fieldSelector=spec.nodeName=node-a&limit=500"; 2]
    );
    assert!(watches.len() >= 3, "{watches:?}");
    for watch in watches {
        assert!(
            watch.contains("fieldSelector=spec.nodeName=node-a"),
            "{watch}"
        );
        assert!(watch.contains("&resourceVersion="), "{watch}");
    }
}

#[tokio::test]
async fn kube_runtime_watcher_pages_and_streams_initial_lists() {
    let server = FakeApiServer::start();
    server.apply(pod("default", "a1", "node-a"));
    server.apply(pod("default", "b1", "node-b"));
    server.apply(pod("default", "a2", "node-a"));
    server.apply(pod("default", "a3", "node-a"));
    let client = kube_client(&server).await;
    let config = watcher::Config::default().fields("spec.nodeName=node-a");

    let mut paged: Events = watcher(Api::all(client.clone()), config.clone().page_size(2)).boxed();
    assert_eq!(relist(&mut paged).await, ["a1", "a2", "a3"]);
    assert!(server
        .requests()
        .iter()
        .any(|r| r.contains("limit=2&continue=")));

    let mut streamed: Events =
        watcher(Api::namespaced(client, "default"), config.streaming_lists()).boxed();
    assert_eq!(relist(&mut streamed).await, ["a1", "a2", "a3"]);
    let event = next_after(&server, &mut streamed, |server| {
        server.delete("default", "a2");
    })
    .await;
    assert!(matches!(event, Ok(Event::Delete(pod)) if pod.name_any() == "a2"));
}

// ---------------------------------------------------------------------------------------
// Mutating admission and the webhook configurations

/// What the scripted webhook does with a review, by path.
#[derive(Debug, Clone, Copy)]
enum Hook {
    /// Adds the annotation `hook/<path>` when the pod has none (idempotent, as a real
    /// injector is), with a warning.
    Annotate,
    /// Refuses with a message.
    Deny,
    /// Answers with another uid.
    WrongUid,
}

/// A TLS webhook on 127.0.0.1 for `hook.webhooks.svc`, answering each path with `hooks`;
/// returns its address, its CA (PEM) and the reviews it received.
async fn webhook(
    hooks: &'static [(&'static str, Hook)],
) -> (SocketAddr, String, Arc<Mutex<Vec<(String, Value)>>>) {
    let tls = crate::tls::generate(&["hook.webhooks.svc".to_owned()]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config.clone());
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, log) = (acceptor.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let review: Value =
                            serde_json::from_slice(&req.into_body().collect().await?.to_bytes())
                                .unwrap();
                        lock(&log).push((path.clone(), review.clone()));
                        let uid = review["request"]["uid"].clone();
                        let hook = hooks.iter().find(|(p, _)| *p == path).map(|(_, h)| *h);
                        let response = match hook {
                            Some(Hook::Annotate) => {
                                let key = format!("hook{}", path.replace('/', "~1"));
                                let obj = &review["request"]["object"];
                                let mut r = json!({"uid": uid, "allowed": true,
                                                   "warnings": [format!("{path} looked")]});
                                if obj["metadata"]["annotations"][format!("hook{path}")].is_null() {
                                    let ops = if obj["metadata"]["annotations"].is_object() {
                                        json!([{"op": "add", "path": format!("/metadata/annotations/{key}"), "value": "yes"}])
                                    } else {
                                        json!([{"op": "add", "path": "/metadata/annotations", "value": {format!("hook{path}"): "yes"}}])
                                    };
                                    r["patchType"] = json!("JSONPatch");
                                    r["patch"] = json!(base64::engine::general_purpose::STANDARD
                                        .encode(ops.to_string()));
                                }
                                r
                            }
                            Some(Hook::Deny) => json!({"uid": uid, "allowed": false,
                                "status": {"message": "pods here need an owner"}}),
                            Some(Hook::WrongUid) => json!({"uid": "not-it", "allowed": true}),
                            None => json!({"uid": uid, "allowed": true}),
                        };
                        let answer = json!({"apiVersion": "admission.k8s.io/v1",
                                            "kind": "AdmissionReview", "response": response});
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(
                            answer.to_string(),
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, tls.ca_pem, seen)
}

/// A webhook entry for `path` on Service webhooks/hook, selecting namespaces labelled
/// `inject=on`.
fn webhook_entry(name: &str, path: &str, ca_pem: &str, extra: Value) -> Value {
    let mut entry = json!({
        "name": name,
        "clientConfig": {
            "service": {"namespace": "webhooks", "name": "hook", "path": path, "port": 443},
            "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem),
        },
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                   "resources": ["pods"], "scope": "Namespaced"}],
        "namespaceSelector": {"matchLabels": {"inject": "on"}},
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 5,
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        entry[k] = v.clone();
    }
    entry
}

fn webhook_config(name: &str, webhooks: Vec<Value>) -> Value {
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
           "metadata": {"name": name}, "webhooks": webhooks})
}

/// The namespaces `apps` (opted in) and `other`, and Service + Endpoints webhooks/hook on
/// `port` (named `https`, target port 8443 → `port` through the Endpoints).
fn cluster(server: &FakeApiServer, port: u16) {
    for (name, labels) in [("apps", json!({"inject": "on"})), ("other", json!({}))] {
        server
            .put_object(
                json!({"kind": "Namespace", "metadata": {"name": name, "labels": labels}}),
                None,
            )
            .unwrap();
    }
    server
        .put_object(
            json!({"kind": "Service", "metadata": {"name": "hook"},
                   "spec": {"ports": [{"name": "https", "port": 443, "targetPort": 8443}]}}),
            Some("webhooks"),
        )
        .unwrap();
    server
        .put_object(
            json!({"kind": "Endpoints", "metadata": {"name": "hook"},
                   "subsets": [{"addresses": [{"ip": "127.0.0.1"}],
                                "ports": [{"name": "https", "port": port}]}]}),
            Some("webhooks"),
        )
        .unwrap();
}

#[tokio::test]
async fn admission_calls_the_selected_webhooks_and_stores_the_patched_pod() {
    let (addr, ca, seen) = webhook(&[("/a", Hook::Annotate)]).await;
    let server = FakeApiServer::start();
    cluster(&server, addr.port());
    server
        .put_object(
            webhook_config(
                "hooks",
                vec![webhook_entry("a.hooks.io", "/a", &ca, json!({}))],
            ),
            None,
        )
        .unwrap();

    let created = server.create_pod(pod("apps", "p1", "n")).await.unwrap();
    assert_eq!(created.object["metadata"]["annotations"]["hook/a"], "yes");
    assert_eq!(created.calls, ["a.hooks.io: patched (1 operations)"]);
    assert_eq!(created.warnings, ["/a looked"]);
    // What the API server adds to a created pod, and the store has it.
    assert_eq!(created.object["status"]["qosClass"], "BestEffort");
    assert_eq!(server.get("apps", "p1").unwrap(), created.object);
    {
        let seen = lock(&seen);
        let (path, review) = &seen[0];
        assert_eq!(path, "/a");
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(review["request"]["operation"], "CREATE");
        assert_eq!(review["request"]["namespace"], "apps");
        assert_eq!(review["request"]["object"]["metadata"]["name"], "p1");
    }

    // Not selected: stored as sent, no call.
    let plain = server.create_pod(pod("other", "p2", "n")).await.unwrap();
    assert!(plain.calls.is_empty());
    assert!(plain.object["metadata"]["annotations"].is_null());
    assert_eq!(lock(&seen).len(), 1);

    // No namespace, or a pod that exists: refused as the real server refuses.
    let e = server
        .create_pod(pod("nowhere", "p3", "n"))
        .await
        .unwrap_err();
    assert_eq!(e.code, 404);
    assert_eq!(e.status["message"], "namespaces \"nowhere\" not found");
    let e = server.create_pod(pod("apps", "p1", "n")).await.unwrap_err();
    assert_eq!(
        (e.code, e.status["reason"].as_str()),
        (409, Some("AlreadyExists"))
    );
}

#[tokio::test]
async fn a_webhook_that_fails_or_denies_refuses_the_pod_unless_ignored() {
    let (addr, ca, _) = webhook(&[("/deny", Hook::Deny), ("/uid", Hook::WrongUid)]).await;
    let other_ca = crate::tls::generate(&["hook.webhooks.svc".to_owned()])
        .unwrap()
        .ca_pem;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cases = [
        (
            "/deny",
            ca.as_str(),
            400,
            "admission webhook \"w.hooks.io\" denied the request: pods here need an owner",
        ),
        ("/uid", ca.as_str(), 500, "expected response.uid="),
        (
            "/deny",
            other_ca.as_str(),
            500,
            "failed calling webhook \"w.hooks.io\"",
        ),
    ];
    for (path, ca, code, text) in cases {
        let server = FakeApiServer::start();
        cluster(&server, addr.port());
        server
            .put_object(
                webhook_config(
                    "hooks",
                    vec![webhook_entry("w.hooks.io", path, ca, json!({}))],
                ),
                None,
            )
            .unwrap();
        let e = server.create_pod(pod("apps", "p", "n")).await.unwrap_err();
        assert_eq!(e.code, code, "{path}: {e}");
        assert!(e.to_string().contains(text), "{path}: {e}");
        assert!(
            server.get("apps", "p").is_none(),
            "{path}: a refused pod is not stored"
        );
    }

    // Nothing listens: Fail refuses, Ignore admits the pod as it was.
    for (policy, admitted) in [("Fail", false), ("Ignore", true)] {
        let server = FakeApiServer::start();
        cluster(&server, closed);
        let entry = webhook_entry("w.hooks.io", "/a", &ca, json!({"failurePolicy": policy}));
        server
            .put_object(webhook_config("hooks", vec![entry]), None)
            .unwrap();
        let result = server.create_pod(pod("apps", "p", "n")).await;
        assert_eq!(result.is_ok(), admitted, "{policy}: {result:?}");
        match result {
            Ok(a) => assert!(a.calls[0].contains("failed, ignored"), "{:?}", a.calls),
            Err(e) => assert!(e.to_string().contains("failed calling webhook"), "{e}"),
        }
    }
}

#[tokio::test]
async fn a_webhook_is_reinvoked_when_a_later_one_changed_the_pod() {
    let (addr, ca, seen) = webhook(&[("/a", Hook::Annotate), ("/b", Hook::Annotate)]).await;
    let server = FakeApiServer::start();
    cluster(&server, addr.port());
    // Configurations run in name order: a-... before b-....
    let a = webhook_entry(
        "a.hooks.io",
        "/a",
        &ca,
        json!({"reinvocationPolicy": "IfNeeded"}),
    );
    let b = webhook_entry("b.hooks.io", "/b", &ca, json!({}));
    server
        .put_object(webhook_config("b-config", vec![b]), None)
        .unwrap();
    server
        .put_object(webhook_config("a-config", vec![a]), None)
        .unwrap();
    let created = server.create_pod(pod("apps", "p", "n")).await.unwrap();
    assert_eq!(
        created.calls,
        [
            "a.hooks.io: patched (1 operations)",
            "b.hooks.io: patched (1 operations)",
            "a.hooks.io: no patch"
        ]
    );
    let paths: Vec<String> = lock(&seen).iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(paths, ["/a", "/b", "/a"]);
    // The reinvocation saw b's change.
    assert_eq!(
        lock(&seen)[2].1["request"]["object"]["metadata"]["annotations"]["hook/b"],
        "yes"
    );
}

#[tokio::test]
async fn a_webhook_configuration_is_patched_by_strategic_merge_with_its_resource_version() {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use kube::api::{Patch, PatchParams};
    let server = FakeApiServer::start();
    let entries = vec![
        webhook_entry("a.hooks.io", "/a", "old-ca", json!({})),
        webhook_entry("b.hooks.io", "/b", "old-ca", json!({})),
    ];
    let stored = server
        .put_object(webhook_config("hooks", entries), None)
        .unwrap();
    let rv = stored["metadata"]["resourceVersion"].clone();
    let client = kube_client(&server).await;
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let got = api.get("hooks").await.unwrap();
    assert_eq!(got.webhooks.as_ref().unwrap().len(), 2);

    let patch = json!({"metadata": {"resourceVersion": rv},
                       "webhooks": [{"name": "b.hooks.io", "clientConfig": {"caBundle": "bmV3"}}]});
    api.patch("hooks", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    let now = server
        .object("MutatingWebhookConfiguration", "", "hooks")
        .unwrap();
    assert_eq!(now["webhooks"][1]["clientConfig"]["caBundle"], "bmV3");
    assert_eq!(
        now["webhooks"][1]["clientConfig"]["service"]["path"], "/b",
        "merged, not replaced"
    );
    assert_eq!(
        now["webhooks"][0], stored["webhooks"][0],
        "the other entry is untouched"
    );

    // The same patch again carries a stale resourceVersion: 409, as for two replicas racing.
    match api
        .patch("hooks", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 409, "{status:?}"),
        other => panic!("expected a 409, got {other:?}"),
    }
    // Another patch type is refused; an absent object is 404.
    match api
        .patch("hooks", &PatchParams::default(), &Patch::Merge(&json!({})))
        .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 415, "{status:?}"),
        other => panic!("expected a 415, got {other:?}"),
    }
    match api.get("nope").await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 404, "{status:?}"),
        other => panic!("expected a 404, got {other:?}"),
    }
}
