//! The pods, their change history and the open watches: everything a list or a watch reads,
//! kept under one lock so that a watch registers and replays atomically with respect to
//! changes (no event can fall between its replay and its live part).

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{
    objects::{strategic_merge, Kind},
    selector::Selector,
    Status,
};

/// Annotation on the bookmark that ends the initial events of a streaming list.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// One change, as the watch cache keeps it: the object after the change (for a deletion,
/// the last object with the deletion's resourceVersion) and the object before it.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    deleted: bool,
    object: Value,
    prev: Option<Value>,
}

/// An open watch: what it selects and where its lines go.
#[derive(Debug)]
struct Watcher {
    selector: Selector,
    bookmarks: bool,
    /// Changes at or before this resourceVersion are not sent.
    after: u64,
    tx: mpsc::UnboundedSender<Bytes>,
}

/// A consistent list being paged through: every pod at `rv`, in key order.
#[derive(Debug)]
struct Snapshot {
    rv: u64,
    pods: Vec<Value>,
}

/// A watch request, parsed.
#[derive(Debug)]
pub(super) struct WatchRequest {
    pub(super) selector: Selector,
    /// `resourceVersion` as sent (`None` when absent).
    pub(super) resource_version: Option<String>,
    pub(super) bookmarks: bool,
    pub(super) send_initial_events: bool,
}

/// How a watch starts.
#[derive(Debug)]
pub(super) enum WatchStart {
    /// The watch is open: send `lines` first, then what `rx` brings; `id` closes it.
    Open {
        id: u64,
        lines: Vec<Bytes>,
        rx: mpsc::UnboundedReceiver<Bytes>,
    },
    /// The resourceVersion is older than the history: send this one ERROR line and end.
    Expired(Bytes),
}

/// The pods of the fake API server.
#[derive(Debug)]
pub(super) struct Store {
    /// The current resourceVersion: the last one assigned.
    rv: u64,
    pods: BTreeMap<(String, String), Value>,
    /// The objects of [`super::objects::KINDS`], by (kind, namespace or "", name).
    others: BTreeMap<(String, String, String), Value>,
    /// Every change with a resourceVersion above `compacted`, oldest first.
    history: VecDeque<Change>,
    compacted: u64,
    watchers: BTreeMap<u64, Watcher>,
    next_watch: u64,
    snapshots: HashMap<u64, Snapshot>,
    next_snapshot: u64,
    next_uid: u64,
}

impl Store {
    pub(super) fn new() -> Self {
        Self {
            rv: 1,
            pods: BTreeMap::new(),
            others: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: 1,
            watchers: BTreeMap::new(),
            next_watch: 0,
            snapshots: HashMap::new(),
            next_snapshot: 0,
            next_uid: 1,
        }
    }

    pub(super) fn resource_version(&self) -> u64 {
        self.rv
    }

    pub(super) fn get(&self, namespace: &str, name: &str) -> Option<Value> {
        self.pods
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    pub(super) fn open_watches(&self) -> usize {
        self.watchers.len()
    }

    /// Creates or updates a pod (see [`super::FakeApiServer::apply`]); `now` is the RFC 3339
    /// creation time for a new pod without one.
    pub(super) fn apply(&mut self, mut pod: Value, now: &str) -> Value {
        let object = pod
            .as_object_mut()
            .expect("FakeApiServer::apply: a pod is a JSON object");
        for (key, expected) in [("apiVersion", "v1"), ("kind", "Pod")] {
            match object.get(key) {
                None => {
                    object.insert(key.to_owned(), json!(expected));
                }
                Some(value) => assert_eq!(
                    value, expected,
                    "FakeApiServer::apply serves pods only ({key})"
                ),
            }
        }
        let metadata = object
            .entry("metadata")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("FakeApiServer::apply: metadata is an object");
        let name = metadata
            .get("name")
            .and_then(Value::as_str)
            .expect("FakeApiServer::apply: metadata.name is required")
            .to_owned();
        let namespace = metadata
            .entry("namespace")
            .or_insert_with(|| json!("default"))
            .as_str()
            .expect("FakeApiServer::apply: metadata.namespace is a string")
            .to_owned();
        let key = (namespace, name);
        let prev = self.pods.get(&key).cloned();
        match &prev {
            // uid and creationTimestamp are immutable: an update keeps them.
            Some(prev) => {
                let uid = &prev["metadata"]["uid"];
                if let Some(given) = metadata.get("uid") {
                    assert_eq!(
                        given, uid,
                        "FakeApiServer::apply: the uid of {}/{} is immutable; delete the pod first",
                        key.0, key.1
                    );
                }
                metadata.insert("uid".to_owned(), uid.clone());
                metadata.insert(
                    "creationTimestamp".to_owned(),
                    prev["metadata"]["creationTimestamp"].clone(),
                );
            }
            None => {
                if !metadata.contains_key("uid") {
                    metadata.insert("uid".to_owned(), json!(self.new_uid()));
                }
                if !metadata.contains_key("creationTimestamp") {
                    metadata.insert("creationTimestamp".to_owned(), json!(now));
                }
            }
        }
        self.rv += 1;
        metadata.insert("resourceVersion".to_owned(), json!(self.rv.to_string()));
        self.pods.insert(key, pod.clone());
        self.record(Change {
            rv: self.rv,
            deleted: false,
            object: pod.clone(),
            prev,
        });
        pod
    }

    /// Creates or replaces an object of another kind (already [`normalise`]d): a new
    /// resourceVersion, and a uid and creationTimestamp kept from the object it replaces or
    /// made for a new one.
    pub(super) fn put_object(&mut self, kind: Kind, mut object: Value, now: &str) -> Value {
        let key = other_key(kind, &object);
        let prev_meta = self.others.get(&key).map(|p| p["metadata"].clone());
        let uid = match &prev_meta {
            Some(prev) => prev["uid"].clone(),
            None => json!(self.new_uid()),
        };
        let created = prev_meta
            .map(|p| p["creationTimestamp"].clone())
            .unwrap_or_else(|| json!(now));
        self.rv += 1;
        let metadata = &mut object["metadata"];
        metadata["uid"] = uid;
        metadata["creationTimestamp"] = created;
        metadata["resourceVersion"] = json!(self.rv.to_string());
        self.others.insert(key, object.clone());
        object
    }

    /// An object of another kind.
    pub(super) fn object(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let ns = if kind.namespaced { namespace } else { "" };
        self.others
            .get(&(kind.name.to_owned(), ns.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every object of `kind`, by namespace and name.
    pub(super) fn objects(&self, kind: Kind) -> Vec<Value> {
        self.others
            .iter()
            .filter(|((k, _, _), _)| k == kind.name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// A strategic merge patch of a cluster-scoped object, as `PATCH` with
    /// `application/strategic-merge-patch+json` does: 404 when absent, 409 when the patch
    /// carries a `metadata.resourceVersion` other than the stored one (an optimistic
    /// concurrency precondition), 422 when it cannot be applied.
    pub(super) fn patch_object(
        &mut self,
        kind: Kind,
        name: &str,
        patch: &Value,
        now: &str,
    ) -> Result<Value, Status> {
        let Some(mut object) = self.object(kind, "", name) else {
            return Err(Status::new(
                404,
                "NotFound",
                format!("{}.{} \"{name}\" not found", kind.resource, group(kind)),
            ));
        };
        let stored_rv = object["metadata"]["resourceVersion"].clone();
        if let Some(rv) = patch.pointer("/metadata/resourceVersion") {
            if *rv != stored_rv {
                return Err(Status::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {}.{} \"{name}\": the object has \
                         been modified; please apply your changes to the latest version and \
                         try again",
                        kind.resource,
                        group(kind)
                    ),
                ));
            }
        }
        strategic_merge(kind, &mut object, patch)
            .map_err(|e| Status::new(422, "Invalid", format!("{} {name}: {e}", kind.name)))?;
        // What the patch may not change.
        object["metadata"]["name"] = json!(name);
        object["kind"] = json!(kind.name);
        Ok(self.put_object(kind, object, now))
    }

    /// Deletes a pod; returns it as the DELETED event carries it, or `None` if it is absent
    /// (then nothing changes).
    pub(super) fn delete(&mut self, namespace: &str, name: &str) -> Option<Value> {
        let prev = self.pods.remove(&(namespace.to_owned(), name.to_owned()))?;
        self.rv += 1;
        let mut object = prev.clone();
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(Change {
            rv: self.rv,
            deleted: true,
            object: object.clone(),
            prev: Some(prev),
        });
        Some(object)
    }

    /// Forgets the history up to the current resourceVersion, and the list snapshots older
    /// than it.
    pub(super) fn compact(&mut self) {
        self.compacted = self.rv;
        self.history.clear();
        let compacted = self.compacted;
        self.snapshots
            .retain(|_, snapshot| snapshot.rv >= compacted);
    }

    /// Sends a BOOKMARK at the current resourceVersion to every watch that allows them.
    pub(super) fn bookmark(&mut self) {
        let line = bookmark_line(self.rv, false);
        for watcher in self.watchers.values().filter(|w| w.bookmarks) {
            let _ = watcher.tx.send(line.clone());
        }
    }

    /// A list page: the selected pods from the continue token's position (or the start),
    /// at most `limit` of them (0: no limit), as a `PodList`.
    pub(super) fn list(
        &mut self,
        selector: &Selector,
        limit: usize,
        continue_token: Option<&str>,
    ) -> Result<Value, Status> {
        let (id, start) = match continue_token {
            Some(token) => self.parse_continue(token)?,
            None => {
                let id = self.next_snapshot;
                self.next_snapshot += 1;
                let pods = self.pods.values().cloned().collect();
                self.snapshots.insert(id, Snapshot { rv: self.rv, pods });
                (id, 0)
            }
        };
        let snapshot = &self.snapshots[&id];
        let rv = snapshot.rv;
        let mut selected = snapshot
            .pods
            .iter()
            .enumerate()
            .skip(start)
            .filter(|(_, pod)| selector.matches(pod));
        let limit = if limit == 0 { usize::MAX } else { limit };
        let items: Vec<Value> = selected
            .by_ref()
            .take(limit)
            .map(|(_, pod)| list_item(pod))
            .collect();
        // A continue token only while selected pods remain (the real server may also hand
        // one out before an empty last page; kube-runtime's watcher copes with both).
        let next = selected.next().map(|(index, _)| index);
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        match next {
            Some(index) => metadata["continue"] = json!(format!("fake-continue:{id}:{index}")),
            // A list in one page needs no snapshot; those of paged lists stay (continue
            // tokens can be used again, as with the real server) until a compaction.
            None if continue_token.is_none() => {
                self.snapshots.remove(&id);
            }
            None => {}
        }
        Ok(json!({
            "apiVersion": "v1",
            "kind": "PodList",
            "metadata": metadata,
            "items": items,
        }))
    }

    fn parse_continue(&self, token: &str) -> Result<(u64, usize), Status> {
        let parsed = token
            .strip_prefix("fake-continue:")
            .and_then(|rest| rest.split_once(':'))
            .and_then(|(id, index)| Some((id.parse::<u64>().ok()?, index.parse().ok()?)));
        match parsed {
            Some((id, index)) if self.snapshots.contains_key(&id) => Ok((id, index)),
            Some((id, _)) if id < self.next_snapshot => Err(Status::new(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list \
                 result. You can start a new list without the continue parameter."
                    .to_owned(),
            )),
            _ => Err(Status::bad_request(format!(
                "continue key is not valid: {token}"
            ))),
        }
    }

    /// Opens a watch: the initial events or the replayed history, then live changes.
    pub(super) fn watch(&mut self, request: WatchRequest) -> Result<WatchStart, Status> {
        let from =
            match request.resource_version.as_deref() {
                None | Some("") | Some("0") => None,
                Some(rv) => Some(rv.parse::<u64>().map_err(|_| {
                    Status::bad_request(format!("invalid resource version: {rv:?}"))
                })?),
            };
        let mut lines = Vec::new();
        let after = match from.filter(|_| !request.send_initial_events) {
            // "Get state and start at most recent" (also what a streaming list asks for):
            // the current pods as ADDED.
            None => {
                lines.extend(
                    self.pods
                        .values()
                        .filter(|pod| request.selector.matches(pod))
                        .map(|pod| event_line("ADDED", pod)),
                );
                if request.send_initial_events && request.bookmarks {
                    lines.push(bookmark_line(self.rv, true));
                }
                self.rv
            }
            Some(rv) if rv < self.compacted => {
                let status = Status::new(
                    410,
                    "Expired",
                    format!("too old resource version: {rv} ({})", self.compacted),
                );
                return Ok(WatchStart::Expired(line(
                    &json!({"type": "ERROR", "object": status.to_json()}),
                )));
            }
            // "Start at exact": every change after it, from the history.
            Some(rv) => {
                lines.extend(
                    self.history
                        .iter()
                        .filter(|change| change.rv > rv)
                        .filter_map(|change| watch_line(&request.selector, change)),
                );
                rv
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next_watch;
        self.next_watch += 1;
        self.watchers.insert(
            id,
            Watcher {
                selector: request.selector,
                bookmarks: request.bookmarks,
                after,
                tx,
            },
        );
        Ok(WatchStart::Open { id, lines, rx })
    }

    /// Forgets a watch (its stream ended or was dropped).
    pub(super) fn close_watch(&mut self, id: u64) {
        self.watchers.remove(&id);
    }

    /// Forgets every watch: their senders drop, so each stream sees its channel close.
    pub(super) fn drop_watches(&mut self) {
        self.watchers.clear();
    }

    fn record(&mut self, change: Change) {
        for watcher in self.watchers.values() {
            if change.rv > watcher.after {
                if let Some(line) = watch_line(&watcher.selector, &change) {
                    let _ = watcher.tx.send(line);
                }
            }
        }
        self.history.push_back(change);
    }

    fn new_uid(&mut self) -> String {
        let n = self.next_uid;
        self.next_uid += 1;
        format!("fa4e0000-0000-4000-8000-{n:012x}")
    }
}

/// The event a watch with `selector` sees for `change`, as the watch cache decides
/// (`cacheWatcher.convertToWatchEvent`): a pod that starts to match is ADDED, one that
/// stops matching is DELETED (its previous state with the change's resourceVersion).
fn watch_line(selector: &Selector, change: &Change) -> Option<Bytes> {
    let now = !change.deleted && selector.matches(&change.object);
    let before = change.prev.as_ref().is_some_and(|p| selector.matches(p));
    match (before, now) {
        (false, true) => Some(event_line("ADDED", &change.object)),
        (true, true) => Some(event_line("MODIFIED", &change.object)),
        (true, false) => {
            let mut object = change.prev.clone().expect("matched before");
            object["metadata"]["resourceVersion"] = json!(change.rv.to_string());
            Some(event_line("DELETED", &object))
        }
        (false, false) => None,
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    line(&json!({"type": kind, "object": object}))
}

fn bookmark_line(rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({INITIAL_EVENTS_END: "true"});
    }
    line(&json!({
        "type": "BOOKMARK",
        "object": {"kind": "Pod", "apiVersion": "v1", "metadata": metadata},
    }))
}

fn line(value: &Value) -> Bytes {
    let mut line = serde_json::to_vec(value).expect("JSON values serialize");
    line.push(b'\n');
    line.into()
}

/// A pod as list items carry it: without `apiVersion` and `kind`, which the real server
/// leaves to the list.
fn list_item(pod: &Value) -> Value {
    let mut item = pod.clone();
    if let Some(object) = item.as_object_mut() {
        object.remove("apiVersion");
        object.remove("kind");
    }
    item
}

/// The key of an object of another kind in [`Store::others`].
fn other_key(kind: Kind, object: &Value) -> (String, String, String) {
    let ns = if kind.namespaced {
        object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
    } else {
        ""
    };
    (
        kind.name.to_owned(),
        ns.to_owned(),
        object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// The API group of `kind`, as `resource.group` in messages (`""` for the core group).
fn group(kind: Kind) -> &'static str {
    kind.api_version.rsplit_once('/').map_or("", |(g, _)| g)
}
