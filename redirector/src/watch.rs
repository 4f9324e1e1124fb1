//! Kubernetes mode: watch the pods of this node and keep their cgroups enrolled.
//!
//! The watch (kube-runtime's watcher, field selector `spec.nodeName=<node>`) lists the pods
//! at start and after every 410 or dropped watch, then follows their changes. A selected
//! pod ([`crate::pods::selected`]) is enrolled by the id of its pod cgroup, recorded with
//! [`Source::Kubernetes`], so a configuration reload or `enroll`/`unenroll` never touch it.
//! What is enrolled is only ever removed for a pod that is really gone: deleted, terminal,
//! or missing from a complete relist. While the API server is unreachable, or refuses us,
//! the enrollments stay as they are and the watch is retried with backoff.
//!
//! A pod event can come before kubelet has created the pod's cgroup: such a pod is pending
//! and retried with backoff until its cgroup appears.

use crate::admin::Shared;
use crate::host;
use crate::kubelet::{self, Layout, Qos};
use crate::maps::Source;
use crate::pods::{self, Selection};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// First and longest wait before looking again for a cgroup that is not there yet.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What the admin endpoint shows of the watch.
#[derive(Debug, Default)]
pub struct Status {
    /// The first complete list has arrived (and every relist since has completed or is
    /// under way with the previous view kept).
    pub synced: AtomicBool,
    /// Why the node's cgroup layout is not recognised, while it is not.
    pub layout_error: Mutex<Option<String>>,
    /// The last watch error, until the next successful event.
    pub last_error: Mutex<Option<String>>,
    /// Pods of this node the watch knows.
    pub watched: AtomicU64,
    /// Selected pods whose cgroup is enrolled.
    pub enrolled: AtomicU64,
    /// Selected pods waiting for their cgroup (or for the layout).
    pub pending: AtomicU64,
    /// Times the watch failed and was restarted.
    pub restarts: AtomicU64,
    /// Pods refused for a malformed annotation (namespace/name: why).
    pub refused: Mutex<BTreeMap<String, String>>,
}

impl Status {
    /// Why the agent is not healthy in Kubernetes mode, if it is not.
    pub fn health(&self) -> Result<(), String> {
        if let Some(why) = lock(&self.layout_error).clone() {
            return Err(format!("the cgroup layout is not recognised: {why}"));
        }
        if !self.synced.load(Ordering::Relaxed) {
            let last = lock(&self.last_error)
                .clone()
                .unwrap_or_else(|| "waiting for the first list of this node's pods".into());
            return Err(format!("the pod watch has not synced yet: {last}"));
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a selected pod stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Its cgroup is enrolled under this id.
    Enrolled { id: u64, path: PathBuf },
    /// Its cgroup could not be enrolled yet; look again at `next`.
    Pending {
        why: String,
        next: Instant,
        delay: Duration,
    },
    /// Not enrolled, and not retried until the pod changes (a malformed annotation).
    Refused(String),
}

/// A pod of this node the watch has seen.
#[derive(Debug, Clone)]
struct Tracked {
    /// namespace/name, for logs.
    name: String,
    /// Some for a selected pod.
    state: Option<State>,
    /// What is needed to find its cgroup: the QoS class and the uid kubelet names it by.
    qos: Option<Qos>,
    cgroup_uid: String,
    /// Its own GIDs and ports, from its annotations.
    overrides: pods::Overrides,
    /// The per-pod policy written for those (0: none, the node-wide sets apply).
    policy: u32,
}

/// The pods of this node and what is enrolled for them.
pub struct Pods {
    shared: Arc<Shared>,
    status: Arc<Status>,
    cgroup_root: PathBuf,
    kubelet_root: PathBuf,
    layout: Option<Layout>,
    /// By pod uid.
    tracked: BTreeMap<String, Tracked>,
    /// Uids seen since the current relist began (Init … InitDone).
    relisting: Option<BTreeSet<String>>,
    /// Next time to look for the layout, while it is not recognised.
    layout_retry: (Instant, Duration),
    /// The agent's own pod uid, and whether its cgroup was looked for yet.
    own: Option<(String, bool)>,
}

impl Pods {
    /// Starts with nothing known; `cgroup_root` is the node's cgroup2 root, `kubelet_root`
    /// kubelet's cgroupRoot under it.
    pub fn new(
        shared: Arc<Shared>,
        status: Arc<Status>,
        cgroup_root: PathBuf,
        kubelet_root: PathBuf,
    ) -> Pods {
        let mut pods = Pods {
            shared,
            status,
            cgroup_root,
            kubelet_root,
            layout: None,
            tracked: BTreeMap::new(),
            relisting: None,
            layout_retry: (Instant::now(), RETRY_FIRST),
            own: None,
        };
        pods.detect_layout();
        pods
    }

    fn detect_layout(&mut self) {
        match Layout::detect_in(&self.cgroup_root, &self.kubelet_root) {
            Ok(layout) => {
                if self.layout.is_none() {
                    tracing::info!(kubepods_parent = %layout.root().display(), driver = layout.driver().as_str(), "kubelet cgroup layout recognised");
                }
                self.layout = Some(layout);
                *lock(&self.status.layout_error) = None;
            }
            Err(e) => {
                let why = e.to_string();
                let mut slot = lock(&self.status.layout_error);
                if slot.as_deref() != Some(why.as_str()) {
                    tracing::error!(
                        "no pod is enrolled until the cgroup layout is recognised: {why}"
                    );
                }
                *slot = Some(why);
                let (_, delay) = self.layout_retry;
                self.layout_retry = (Instant::now() + delay, (delay * 2).min(RETRY_MAX));
            }
        }
    }

    /// Names the agent's own pod (POD_UID): when the watch lists it, its cgroup must be
    /// where the layout puts pod cgroups; if it is not, no pod would ever be found, and the
    /// agent says so.
    pub fn own_pod(&mut self, uid: Option<String>) {
        self.own = uid.map(|u| (u, false));
    }

    fn check_own_pod(&mut self, pod: &Pod) {
        let Some((uid, checked)) = &self.own else {
            return;
        };
        if *checked || pod.metadata.uid.as_deref() != Some(uid.as_str()) {
            return;
        }
        let Some(layout) = &self.layout else {
            return;
        };
        let Some(qos) = Qos::of_pod(pod) else {
            return;
        };
        let found = kubelet::cgroup_uid(pod)
            .ok_or_else(|| "no uid".to_string())
            .and_then(|u| layout.pod_path(qos, u).map_err(|e| e.to_string()));
        match found {
            Ok(path) if path.is_dir() => {
                tracing::info!(cgroup = %path.display(), "cgroup layout confirmed: this agent's own pod cgroup is where pod cgroups are looked for");
            }
            Ok(path) => {
                let why = format!(
                    "this agent's own pod (uid {uid}) has no cgroup at {}: pods will not be \
                     found; check --cgroup-root (the node's cgroup2 root) and \
                     --kubelet-cgroup-root (kubelet's cgroupRoot)",
                    path.display()
                );
                tracing::error!("{why}");
                *lock(&self.status.layout_error) = Some(why);
            }
            Err(e) => tracing::warn!("this agent's own pod: {e}"),
        }
        if let Some(own) = self.own.as_mut() {
            own.1 = true;
        }
    }

    /// Applies one event of the watch.
    pub fn event(&mut self, event: Event<Pod>) {
        *lock(&self.status.last_error) = None;
        match event {
            Event::Init => {
                self.relisting = Some(BTreeSet::new());
            }
            Event::InitApply(pod) => {
                self.check_own_pod(&pod);
                if let Some(uid) = self.apply(&pod) {
                    if let Some(seen) = self.relisting.as_mut() {
                        seen.insert(uid);
                    }
                }
            }
            Event::InitDone => self.relisted(),
            Event::Apply(pod) => {
                self.check_own_pod(&pod);
                self.apply(&pod);
            }
            Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    self.forget(uid, "deleted");
                }
            }
        }
        self.publish();
    }

    /// A watch error: counted and logged; nothing enrolled changes.
    pub fn error(&mut self, error: &watcher::Error) {
        self.status.restarts.fetch_add(1, Ordering::Relaxed);
        let why = error.to_string();
        tracing::warn!(
            "watching this node's pods failed (retrying with backoff; enrollments stay): {why}"
        );
        *lock(&self.status.last_error) = Some(why);
    }

    /// The end of a complete list: pods not in it are gone, and so are the Kubernetes
    /// enrollments left in the pinned map by an earlier agent for pods that are gone.
    fn relisted(&mut self) {
        let Some(seen) = self.relisting.take() else {
            return;
        };
        let gone: Vec<String> = self
            .tracked
            .keys()
            .filter(|uid| !seen.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            self.forget(&uid, "missing from the relist");
        }
        let mine: BTreeSet<u64> = self
            .tracked
            .values()
            .filter_map(|t| match &t.state {
                Some(State::Enrolled { id, .. }) => Some(*id),
                _ => None,
            })
            .collect();
        let mut maps = lock(&self.shared.maps);
        let stale: Vec<u64> = maps
            .enrolled()
            .into_iter()
            .filter(|(id, source)| *source == Source::Kubernetes as u32 && !mine.contains(id))
            .map(|(id, _)| id)
            .collect();
        for id in stale {
            match maps.unenroll(id) {
                Ok(_) => {
                    tracing::info!(cgroup_id = id, "unenrolled a cgroup of a pod that is gone")
                }
                Err(e) => tracing::warn!(cgroup_id = id, "unenrolling failed: {e}"),
            }
        }
        // Per-pod policies no pod of ours uses any more (an earlier agent's, say).
        let ours: BTreeSet<u32> = self.tracked.values().map(|t| t.policy).collect();
        for policy in maps.policies_in_use() {
            if !ours.contains(&policy) {
                if let Err(e) = maps.clear_policy(policy) {
                    tracing::warn!(policy, "clearing an unused per-pod policy failed: {e}");
                }
            }
        }
        drop(maps);
        if !self.status.synced.swap(true, Ordering::Relaxed) {
            tracing::info!(
                pods = self.tracked.len(),
                "pod watch synced: the pods of this node are listed"
            );
        }
    }

    /// An added or changed pod; returns its uid.
    fn apply(&mut self, pod: &Pod) -> Option<String> {
        let name = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        );
        let Some(uid) = pod.metadata.uid.clone() else {
            tracing::warn!(pod = %name, "pod without metadata.uid ignored");
            return None;
        };
        let selection = pods::selected(pod);
        let Selection::Selected { reason } = selection else {
            if let Selection::NotSelected(why) = selection {
                self.deselect(&uid, why);
            }
            self.tracked.entry(uid.clone()).or_insert(Tracked {
                name,
                state: None,
                qos: None,
                cgroup_uid: String::new(),
                overrides: Default::default(),
                policy: 0,
            });
            return Some(uid);
        };
        let qos = Qos::of_pod(pod);
        // Static pods' cgroups are named after their config hash, not the mirror pod's uid.
        let cgroup_uid = kubelet::cgroup_uid(pod).unwrap_or(&uid).to_string();
        let (refused, overrides) = match pods::overrides(pod) {
            Ok(o) => {
                lock(&self.status.refused).remove(&name);
                (None, o)
            }
            Err(e) => (Some(e.to_string()), Default::default()),
        };
        let (previous, policy) = match self.tracked.get(&uid) {
            // Changed annotations: enrolled again (in place, no gap) with the new policy.
            Some(t) if t.overrides != overrides => (None, t.policy),
            Some(t) => (t.state.clone(), t.policy),
            None => (None, 0),
        };
        let state = match (refused, previous) {
            (Some(why), Some(State::Refused(old))) if old == why => State::Refused(why),
            (Some(why), prev) => {
                tracing::error!(pod = %name, "pod not enrolled: {why}");
                lock(&self.status.refused).insert(name.clone(), why.clone());
                if let Some(State::Enrolled { id, .. }) = prev {
                    self.unenroll(id, policy, &name, "its annotation is malformed");
                }
                State::Refused(why)
            }
            (None, Some(s @ State::Enrolled { .. })) => s,
            (None, _) => {
                if self.tracked.get(&uid).is_none_or(|t| t.state.is_none()) {
                    tracing::info!(pod = %name, reason, "pod selected for redirection");
                }
                State::Pending {
                    why: "not looked for yet".into(),
                    next: Instant::now(),
                    delay: RETRY_FIRST,
                }
            }
        };
        self.tracked.insert(
            uid.clone(),
            Tracked {
                name,
                state: Some(state),
                qos,
                cgroup_uid,
                overrides,
                policy,
            },
        );
        self.try_enroll(&uid);
        Some(uid)
    }

    /// A pod that is no longer selected (terminal, opted out…) keeps no enrollment.
    fn deselect(&mut self, uid: &str, why: &str) {
        let Some(t) = self.tracked.get_mut(uid) else {
            return;
        };
        let name = t.name.clone();
        let state = t.state.take();
        let policy = std::mem::take(&mut t.policy);
        lock(&self.status.refused).remove(&name);
        if let Some(State::Enrolled { id, .. }) = state {
            self.unenroll(id, policy, &name, why);
        }
    }

    /// A pod that is gone.
    fn forget(&mut self, uid: &str, why: &str) {
        if let Some(t) = self.tracked.remove(uid) {
            lock(&self.status.refused).remove(&t.name);
            if let Some(State::Enrolled { id, .. }) = t.state {
                self.unenroll(id, t.policy, &t.name, why);
            }
        }
    }

    fn unenroll(&self, id: u64, policy: u32, name: &str, why: &str) {
        let mut maps = lock(&self.shared.maps);
        // Only what this watch enrolled: an entry another source made stays.
        if maps.enrolled().get(&id) == Some(&(Source::Kubernetes as u32)) {
            match maps.unenroll(id) {
                Ok(_) => tracing::info!(pod = %name, cgroup_id = id, "pod unenrolled: {why}"),
                Err(e) => tracing::warn!(pod = %name, cgroup_id = id, "unenrolling failed: {e}"),
            }
        }
        if let Err(e) = maps.clear_policy(policy) {
            tracing::warn!(pod = %name, policy, "clearing the pod's policy failed: {e}");
        }
    }

    /// A free per-pod policy id: used neither by a pod of this watch nor in the map (an
    /// earlier agent's, still referenced until the relist re-enrolls its pods).
    fn free_policy(&self, in_map: &[u32]) -> Option<u32> {
        let ours: BTreeSet<u32> = self.tracked.values().map(|t| t.policy).collect();
        (1..redirector_common::capacity::POLICIES)
            .find(|p| !ours.contains(p) && !in_map.contains(p))
    }

    /// Looks for the cgroup of a pending pod and enrolls it when it is there.
    fn try_enroll(&mut self, uid: &str) {
        let Some(t) = self.tracked.get(uid) else {
            return;
        };
        let Some(State::Pending {
            why: old, delay, ..
        }) = &t.state
        else {
            return;
        };
        let (old, delay) = (old.clone(), *delay);
        let found = self.find_cgroup(&t.cgroup_uid, t.qos);
        match found {
            Ok((path, id)) => {
                let (old_policy, overrides) = (t.policy, t.overrides.clone());
                let result = self.enroll(id, old_policy, &overrides);
                let t = self.tracked.get_mut(uid).expect("looked up above");
                match result {
                    Ok(policy) => {
                        t.policy = policy;
                        tracing::info!(pod = %t.name, cgroup = %path.display(), cgroup_id = id, policy, "pod enrolled");
                        t.state = Some(State::Enrolled { id, path });
                    }
                    Err(e) => {
                        tracing::warn!(pod = %t.name, "enrolling failed (retrying): {e}");
                        t.state = Some(pending(e.to_string(), delay));
                    }
                }
            }
            Err(why) => {
                let t = self.tracked.get_mut(uid).expect("looked up above");
                if why != old {
                    tracing::info!(pod = %t.name, "pod waits for its cgroup: {why}");
                }
                t.state = Some(pending(why, delay));
            }
        }
    }

    /// Enrolls cgroup `id` with the pod's own ports and GIDs, if it has any, under a
    /// per-pod policy (reusing `policy` when it already has one); returns the policy.
    /// The entry is replaced in one map write, so a re-enrollment leaves no gap.
    fn enroll(&self, id: u64, policy: u32, overrides: &pods::Overrides) -> crate::Result<u32> {
        let mut maps = lock(&self.shared.maps);
        if let Some(source) = maps.enrolled().get(&id) {
            if *source != Source::Kubernetes as u32 {
                // Another source enrolled it (configuration, a command): that entry stays.
                return Ok(policy);
            }
        }
        let own = overrides.ports.is_some() || overrides.redirect_gids.is_some();
        let new = match (own, policy) {
            (false, _) => 0,
            (true, 0) => {
                self.free_policy(&maps.policies_in_use())
                    .ok_or_else(|| crate::Error::Map {
                        map: redirector_common::maps::POLICIES,
                        what: "every per-pod policy slot is in use".into(),
                    })?
            }
            (true, p) => p,
        };
        if new != 0 {
            maps.set_policy(
                new,
                overrides.ports.as_deref(),
                overrides.redirect_gids.as_deref(),
            )?;
        }
        maps.enroll_under(id, Source::Kubernetes, new)?;
        if policy != 0 && policy != new {
            maps.clear_policy(policy)?;
        }
        Ok(new)
    }

    fn find_cgroup(&self, uid: &str, qos: Option<Qos>) -> Result<(PathBuf, u64), String> {
        let layout = self
            .layout
            .as_ref()
            .ok_or("the cgroup layout is not recognised yet")?;
        let qos = qos.ok_or("the pod has no status.qosClass yet")?;
        let path = layout.pod_path(qos, uid).map_err(|e| e.to_string())?;
        if !path.is_dir() {
            return Err(format!("{} does not exist yet", path.display()));
        }
        let id = host::cgroup_id(&path).map_err(|e| e.to_string())?;
        Ok((path, id))
    }

    /// When the next retry is due, if any.
    pub fn next_retry(&self) -> Option<Instant> {
        let pods = self.tracked.values().filter_map(|t| match &t.state {
            Some(State::Pending { next, .. }) => Some(*next),
            _ => None,
        });
        let layout = self.layout.is_none().then_some(self.layout_retry.0);
        pods.chain(layout).min()
    }

    /// Retries what is due: the layout, then pending pods.
    pub fn retry(&mut self) {
        let now = Instant::now();
        if self.layout.is_none() && self.layout_retry.0 <= now {
            self.detect_layout();
        }
        let due: Vec<String> = self
            .tracked
            .iter()
            .filter(|(_, t)| matches!(&t.state, Some(State::Pending { next, .. }) if *next <= now))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in due {
            self.try_enroll(&uid);
        }
        self.publish();
    }

    fn publish(&self) {
        let (mut enrolled, mut pending) = (0, 0);
        for t in self.tracked.values() {
            match t.state {
                Some(State::Enrolled { .. }) => enrolled += 1,
                Some(State::Pending { .. }) => pending += 1,
                _ => {}
            }
        }
        let s = &self.status;
        s.watched
            .store(self.tracked.len() as u64, Ordering::Relaxed);
        s.enrolled.store(enrolled, Ordering::Relaxed);
        s.pending.store(pending, Ordering::Relaxed);
    }

    /// The cgroup2 root the pods' cgroups are looked for in.
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }
}

fn pending(why: String, delay: Duration) -> State {
    State::Pending {
        why,
        next: Instant::now() + delay,
        delay: (delay * 2).min(RETRY_MAX),
    }
}

/// Watches the pods of `node` until the task is dropped; never returns on an error.
pub async fn run(client: Client, node: String, mut pods: Pods) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    tracing::info!(node = %node, cgroup_root = %pods.cgroup_root().display(), kubelet_cgroup_root = %pods.kubelet_root.display(), "watching this node's pods");
    loop {
        let due = pods.next_retry();
        tokio::select! {
            item = stream.next() => match item {
                Some(Ok(event)) => pods.event(event),
                Some(Err(e)) => pods.error(&e),
                None => {
                    // The watcher's stream does not end; should it, enrollments stay.
                    tracing::error!("the pod watch ended; enrollments stay as they are");
                    std::future::pending::<()>().await;
                }
            },
            _ = sleep_until(due) => pods.retry(),
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
