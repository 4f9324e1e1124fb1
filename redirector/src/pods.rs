//! Which pods are redirected, and the per-pod overrides their annotations ask for.
//!
//! Pure functions of a [`Pod`] as the API server returns it, so the watcher's decisions can be
//! tested from JSON fixtures without a cluster.
//!
//! The rule, in the order it is applied:
//! 1. a `hostNetwork` pod is never selected: it shares the node's network namespace, and the
//!    node's own processes must not be redirected;
//! 2. a pod in phase `Succeeded` or `Failed` is never selected: its containers have stopped
//!    for good;
//! 3. a pod running the `lattice-proxy` sidecar is selected: as a regular container, or as a
//!    native sidecar (an init container with `restartPolicy: Always`). A plain init container
//!    of that name runs to completion before the app starts, so it proxies nothing and does
//!    not count;
//! 4. otherwise `lattice-egress.io/inject: "true"` selects the pod, `"false"` opts it out,
//!    and the EKS Blueprints pattern's `vpc-lattices-svcs.amazonaws.com/agent-inject: "true"`
//!    selects it when ours is absent.
//!
//! `"false"` opts out of the annotation path only: a pod that runs the sidecar is always
//! redirected, because a proxy nobody is sent to is a pod whose Lattice calls go out unsigned
//! and fail. `"false"` wins over the Blueprints annotation, so a team can opt one workload out
//! of a namespace-wide policy that adds it. Values are matched exactly (`"true"`, `"false"`);
//! anything else opts neither in nor out and is reported as such.
//!
//! A pod being deleted (`metadata.deletionTimestamp` set) stays selected until it is gone: its
//! containers run until their grace period ends, and their connects must still be redirected.

use k8s_openapi::api::core::v1::Pod;
use std::fmt;

/// The sidecar's container name.
pub const SIDECAR: &str = "lattice-proxy";
/// Our opt-in (`"true"`) and opt-out (`"false"`) annotation.
pub const INJECT: &str = "lattice-egress.io/inject";
/// The EKS Blueprints VPC Lattice pattern's opt-in annotation (their spelling, with
/// `lattices`), honoured so workloads annotated for that pattern move over unchanged.
pub const BLUEPRINTS_INJECT: &str = "vpc-lattices-svcs.amazonaws.com/agent-inject";
/// Per-pod GIDs to redirect, e.g. `"1000,1001"`.
pub const REDIRECT_GIDS: &str = "lattice-egress.io/redirect-gids";
/// Per-pod destination ports to redirect, e.g. `"80,8080"`.
pub const PORTS: &str = "lattice-egress.io/ports";

/// Whether a pod is redirected, and why: the reason is fixed text, fit for a log field or a
/// metric label (a bounded set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// Redirected. `reason` is `"sidecar"`, `"annotation"` or `"blueprints-annotation"`.
    Selected { reason: &'static str },
    /// Not redirected, with why.
    NotSelected(&'static str),
}

impl Selection {
    /// True for [`Selection::Selected`].
    pub fn is_selected(self) -> bool {
        matches!(self, Selection::Selected { .. })
    }
}

/// Applies the module's selection rule to `pod`.
pub fn selected(pod: &Pod) -> Selection {
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network) == Some(true) {
        return Selection::NotSelected("hostNetwork pod");
    }
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => return Selection::NotSelected("terminal phase Succeeded"),
        Some("Failed") => return Selection::NotSelected("terminal phase Failed"),
        _ => {}
    }
    if spec.is_some_and(|s| s.containers.iter().any(|c| c.name == SIDECAR)) {
        return Selection::Selected { reason: "sidecar" };
    }
    let init_sidecars = || {
        spec.and_then(|s| s.init_containers.as_ref())
            .into_iter()
            .flatten()
            .filter(|c| c.name == SIDECAR)
    };
    if init_sidecars().any(|c| c.restart_policy.as_deref() == Some("Always")) {
        return Selection::Selected { reason: "sidecar" };
    }
    let inject = annotation(pod, INJECT);
    match inject {
        Some("true") => {
            return Selection::Selected {
                reason: "annotation",
            }
        }
        Some("false") => {
            return Selection::NotSelected("opted out (lattice-egress.io/inject: \"false\")")
        }
        _ => {}
    }
    if annotation(pod, BLUEPRINTS_INJECT) == Some("true") {
        return Selection::Selected {
            reason: "blueprints-annotation",
        };
    }
    if inject.is_some() {
        return Selection::NotSelected(
            "lattice-egress.io/inject is neither \"true\" nor \"false\", and no lattice-proxy \
             sidecar",
        );
    }
    // Say so when the sidecar lost its restartPolicy: a mutating webhook rebuilding init
    // containers has stripped it before (kops#16802), and the pod then looks opted in to
    // whoever reads its manifest.
    if init_sidecars().next().is_some() {
        return Selection::NotSelected(
            "lattice-proxy is a plain init container (no restartPolicy: Always), not a \
             sidecar, and no opt-in annotation",
        );
    }
    Selection::NotSelected("no lattice-proxy sidecar and no opt-in annotation")
}

/// The value of annotation `key` on `pod`.
fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// Identifies a pod in logs and maps: namespace, name and UID (a pod recreated under the same
/// name is another pod).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} ({})", self.namespace, self.name, self.uid)
    }
}

/// The pod's key; `None` when the object lacks a namespace, name or UID (never so for a pod
/// read from the API server).
pub fn key(pod: &Pod) -> Option<PodKey> {
    let m = &pod.metadata;
    Some(PodKey {
        namespace: m.namespace.clone()?,
        name: m.name.clone()?,
        uid: m.uid.clone()?,
    })
}

/// `namespace/name` for messages, with `?` for what is missing.
fn display_name(pod: &Pod) -> String {
    let m = &pod.metadata;
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or("?"),
        m.name.as_deref().unwrap_or("?")
    )
}

/// Per-pod settings from annotations; `None` where the annotation is absent or empty, so the
/// node's configuration applies.
///
/// Lists are sets: sorted, duplicates removed. The eBPF side does not apply them per pod yet;
/// the watcher logs and exposes them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// From `lattice-egress.io/redirect-gids`: the GIDs whose connects are redirected.
    pub redirect_gids: Option<Vec<u32>>,
    /// From `lattice-egress.io/ports`: the destination ports that are redirected.
    pub ports: Option<Vec<u16>>,
}

/// An override annotation that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "pod {pod}: {key}: '{value}' is not {expected} ({item:?} is not one); write e.g. \
     \"{example}\""
)]
pub struct BadAnnotation {
    /// `namespace/name` of the pod.
    pub pod: String,
    /// The annotation.
    pub key: &'static str,
    /// Its whole value, as written.
    pub value: String,
    /// The first item that is wrong.
    pub item: String,
    /// What the value must be.
    pub expected: &'static str,
    /// A valid value to copy.
    pub example: &'static str,
}

/// Parses the pod's override annotations, strictly: every item must be a plain decimal
/// number in range; spaces around items are allowed, empty items (`"80,,8080"`, a trailing
/// comma) are not.
pub fn overrides(pod: &Pod) -> Result<Overrides, BadAnnotation> {
    Ok(Overrides {
        redirect_gids: parse_list(
            pod,
            REDIRECT_GIDS,
            // (gid_t)-1 means "no change" to the kernel; it is never a task's GID.
            |gid: &u32| *gid != u32::MAX,
            "a list of group IDs 0-4294967294 separated by commas",
            "1000,1001",
        )?,
        ports: parse_list(
            pod,
            PORTS,
            |port: &u16| *port != 0,
            "a list of ports 1-65535 separated by commas",
            "80,8080",
        )?,
    })
}

/// Parses annotation `key` as a comma-separated set of numbers accepted by `valid`.
fn parse_list<T: std::str::FromStr + Ord>(
    pod: &Pod,
    key: &'static str,
    valid: impl Fn(&T) -> bool,
    expected: &'static str,
    example: &'static str,
) -> Result<Option<Vec<T>>, BadAnnotation> {
    let Some(value) = annotation(pod, key) else {
        return Ok(None);
    };
    if value.trim().is_empty() {
        return Ok(None);
    }
    let mut out = Vec::new();
    for item in value.split(',') {
        let item = item.trim_matches(' ');
        // Digits only: FromStr would also take "+80".
        let parsed = (!item.is_empty() && item.bytes().all(|b| b.is_ascii_digit()))
            .then(|| item.parse::<T>().ok())
            .flatten()
            .filter(|v| valid(v));
        match parsed {
            Some(v) => out.push(v),
            None => {
                return Err(BadAnnotation {
                    pod: display_name(pod),
                    key,
                    value: value.to_owned(),
                    item: item.to_owned(),
                    expected,
                    example,
                })
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    /// A running pod of `default/web` with the given spec and annotations.
    fn running(spec: serde_json::Value, annotations: serde_json::Value) -> Pod {
        pod(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web",
                "namespace": "default",
                "uid": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
                "annotations": annotations
            },
            "spec": spec,
            "status": {"phase": "Running", "qosClass": "Burstable"}
        }))
    }

    fn app() -> serde_json::Value {
        json!({"name": "app", "image": "app:1"})
    }

    fn proxy() -> serde_json::Value {
        json!({"name": "lattice-proxy", "image": "lattice-proxy:1"})
    }

    fn native_proxy() -> serde_json::Value {
        json!({"name": "lattice-proxy", "image": "lattice-proxy:1", "restartPolicy": "Always"})
    }

    #[test]
    fn the_sidecar_container_selects() {
        let p = running(json!({"containers": [app(), proxy()]}), json!({}));
        assert_eq!(selected(&p), Selection::Selected { reason: "sidecar" });
    }

    #[test]
    fn a_native_sidecar_selects() {
        let p = running(
            json!({"initContainers": [native_proxy()], "containers": [app()]}),
            json!({}),
        );
        assert_eq!(selected(&p), Selection::Selected { reason: "sidecar" });
    }

    #[test]
    fn a_plain_init_container_named_lattice_proxy_does_not() {
        let p = running(
            json!({"initContainers": [proxy()], "containers": [app()]}),
            json!({}),
        );
        let s = selected(&p);
        assert!(!s.is_selected());
        assert!(
            matches!(s, Selection::NotSelected(why) if why.contains("plain init container")),
            "{s:?}"
        );
        let other = running(
            json!({"initContainers": [{"name": "setup", "image": "x", "restartPolicy": "Always"}],
                   "containers": [app()]}),
            json!({}),
        );
        assert_eq!(
            selected(&other),
            Selection::NotSelected("no lattice-proxy sidecar and no opt-in annotation")
        );
    }

    #[test]
    fn the_annotations_select() {
        let spec = json!({"containers": [app()]});
        let ours = running(spec.clone(), json!({"lattice-egress.io/inject": "true"}));
        assert_eq!(
            selected(&ours),
            Selection::Selected {
                reason: "annotation"
            }
        );
        let blueprints = running(
            spec.clone(),
            json!({"vpc-lattices-svcs.amazonaws.com/agent-inject": "true"}),
        );
        assert_eq!(
            selected(&blueprints),
            Selection::Selected {
                reason: "blueprints-annotation"
            }
        );
        let both = running(
            spec.clone(),
            json!({"lattice-egress.io/inject": "true",
                   "vpc-lattices-svcs.amazonaws.com/agent-inject": "true"}),
        );
        assert_eq!(
            selected(&both),
            Selection::Selected {
                reason: "annotation"
            }
        );
        let none = running(spec, json!({}));
        assert_eq!(
            selected(&none),
            Selection::NotSelected("no lattice-proxy sidecar and no opt-in annotation")
        );
    }

    #[test]
    fn annotation_values_are_matched_exactly() {
        let spec = json!({"containers": [app()]});
        for value in ["True", "yes", "1", ""] {
            let p = running(spec.clone(), json!({"lattice-egress.io/inject": value}));
            assert!(
                matches!(selected(&p), Selection::NotSelected(why) if why.contains("neither")),
                "{value:?}"
            );
            let p = running(
                spec.clone(),
                json!({"vpc-lattices-svcs.amazonaws.com/agent-inject": value}),
            );
            assert!(!selected(&p).is_selected(), "{value:?}");
        }
    }

    #[test]
    fn false_opts_out_of_the_annotations_but_not_the_sidecar() {
        let out = json!({"lattice-egress.io/inject": "false",
                         "vpc-lattices-svcs.amazonaws.com/agent-inject": "true"});
        let p = running(json!({"containers": [app()]}), out.clone());
        let s = selected(&p);
        assert!(
            matches!(s, Selection::NotSelected(why) if why.starts_with("opted out")),
            "{s:?}"
        );
        let with_sidecar = running(json!({"containers": [app(), proxy()]}), out);
        assert_eq!(
            selected(&with_sidecar),
            Selection::Selected { reason: "sidecar" }
        );
    }

    #[test]
    fn host_network_pods_are_never_selected() {
        let p = running(
            json!({"hostNetwork": true, "containers": [app(), proxy()]}),
            json!({"lattice-egress.io/inject": "true"}),
        );
        assert_eq!(selected(&p), Selection::NotSelected("hostNetwork pod"));
        let p = running(
            json!({"hostNetwork": false, "containers": [app(), proxy()]}),
            json!({}),
        );
        assert!(selected(&p).is_selected());
    }

    #[test]
    fn finished_pods_are_never_selected() {
        for phase in ["Succeeded", "Failed"] {
            let p = pod(json!({
                "metadata": {"name": "job", "namespace": "default", "uid": "ab-cd",
                             "annotations": {"lattice-egress.io/inject": "true"}},
                "spec": {"containers": [app(), proxy()]},
                "status": {"phase": phase}
            }));
            let s = selected(&p);
            assert!(
                matches!(s, Selection::NotSelected(why) if why.ends_with(phase)),
                "{phase}: {s:?}"
            );
        }
        for phase in ["Pending", "Running", "Unknown"] {
            let p = pod(json!({
                "metadata": {"name": "job", "namespace": "default", "uid": "ab-cd"},
                "spec": {"containers": [app(), proxy()]},
                "status": {"phase": phase}
            }));
            assert!(selected(&p).is_selected(), "{phase}");
        }
    }

    #[test]
    fn a_pod_being_deleted_stays_selected() {
        let p = pod(json!({
            "metadata": {
                "name": "web", "namespace": "default", "uid": "ab-cd",
                "deletionTimestamp": "2026-11-30T10:00:00Z",
                "deletionGracePeriodSeconds": 30
            },
            "spec": {"containers": [app(), proxy()]},
            "status": {"phase": "Running"}
        }));
        assert_eq!(selected(&p), Selection::Selected { reason: "sidecar" });
    }

    #[test]
    fn key_names_the_pod() {
        let p = running(json!({"containers": [app()]}), json!({}));
        let k = key(&p).unwrap();
        assert_eq!(k.namespace, "default");
        assert_eq!(k.name, "web");
        assert_eq!(k.uid, "1b4e28ba-2fa1-11d2-883f-0016d3cca427");
        assert_eq!(
            k.to_string(),
            "default/web (1b4e28ba-2fa1-11d2-883f-0016d3cca427)"
        );
        assert_eq!(key(&pod(json!({"metadata": {"name": "web"}}))), None);
    }

    #[test]
    fn overrides_parse() {
        let spec = json!({"containers": [app()]});
        let p = running(
            spec.clone(),
            json!({"lattice-egress.io/redirect-gids": "1001,1000, 1001",
                   "lattice-egress.io/ports": "8080,80"}),
        );
        assert_eq!(
            overrides(&p).unwrap(),
            Overrides {
                redirect_gids: Some(vec![1000, 1001]),
                ports: Some(vec![80, 8080]),
            }
        );
        let p = running(
            spec.clone(),
            json!({"lattice-egress.io/redirect-gids": "0,4294967294",
                   "lattice-egress.io/ports": "65535"}),
        );
        assert_eq!(
            overrides(&p).unwrap(),
            Overrides {
                redirect_gids: Some(vec![0, 4294967294]),
                ports: Some(vec![65535]),
            }
        );
        let empty = running(
            spec.clone(),
            json!({"lattice-egress.io/redirect-gids": "", "lattice-egress.io/ports": "  "}),
        );
        assert_eq!(overrides(&empty).unwrap(), Overrides::default());
        let absent = running(spec, json!({}));
        assert_eq!(overrides(&absent).unwrap(), Overrides::default());
        let no_annotations = pod(json!({"metadata": {"name": "web"}}));
        assert_eq!(overrides(&no_annotations).unwrap(), Overrides::default());
    }

    #[test]
    fn bad_overrides_name_the_pod_key_and_value() {
        let spec = json!({"containers": [app()]});
        let cases = [
            (PORTS, "80,http", "http"),
            (PORTS, "0", "0"),
            (PORTS, "65536", "65536"),
            (PORTS, "+80", "+80"),
            (PORTS, "-1", "-1"),
            (PORTS, "80,,8080", ""),
            (PORTS, "80,", ""),
            (PORTS, "80;8080", "80;8080"),
            (PORTS, "80 8080", "80 8080"),
            (REDIRECT_GIDS, "1000,root", "root"),
            (REDIRECT_GIDS, "4294967295", "4294967295"),
            (REDIRECT_GIDS, "4294967296", "4294967296"),
            (REDIRECT_GIDS, "1e3", "1e3"),
        ];
        for (key, value, item) in cases {
            let p = running(spec.clone(), json!({ key: value }));
            let e = overrides(&p).unwrap_err();
            assert_eq!(
                (e.key, e.value.as_str(), e.item.as_str()),
                (key, value, item)
            );
            let text = e.to_string();
            assert!(text.starts_with("pod default/web: "), "{text}");
            assert!(text.contains(&format!("{key}: '{value}'")), "{text}");
            assert!(text.contains("write e.g."), "{text}");
        }
        let p = running(spec, json!({"lattice-egress.io/ports": "80,http"}));
        assert_eq!(
            overrides(&p).unwrap_err().to_string(),
            "pod default/web: lattice-egress.io/ports: '80,http' is not a list of ports 1-65535 \
             separated by commas (\"http\" is not one); write e.g. \"80,8080\""
        );
    }
}
