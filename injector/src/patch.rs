//! The mutation itself: which pods are injected, and the JSONPatch (RFC 6902 `add`
//! operations only) that adds what `deploy/components/sidecar` adds to a pod template.
//!
//! Works on the raw pod (`serde_json::Value`), never on typed structs, so fields this
//! binary does not know (newer Kubernetes, alpha fields) are never dropped: the patch only
//! adds.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::settings::{Settings, SettingsError};

/// The opt-in annotation, also what the injector sets (the node agent selects by it).
pub const INJECT: &str = "lattice-egress.io/inject";
/// The EKS Blueprints pattern's opt-in annotation.
pub const BLUEPRINTS_INJECT: &str = "vpc-lattices-svcs.amazonaws.com/agent-inject";
/// The sidecar's container name: a pod with a container or init container of this name is
/// already injected.
pub const PROXY_NAME: &str = "lattice-proxy";

/// Credential environment the EKS Pod Identity webhook (and IRSA's) puts on every container
/// it sees. When that webhook ran before this one, the sidecar would miss it, so it is
/// copied from the app container; when it runs after, it adds the same to the sidecar.
const CREDENTIAL_ENV: [&str; 5] = [
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_STS_REGIONAL_ENDPOINTS",
];
/// The token volumes those webhooks mount (Pod Identity, IRSA).
const CREDENTIAL_VOLUMES: [&str; 2] = ["eks-pod-identity-token", "aws-iam-token"];

/// Which webhook entry sent the review: the namespace-level one (namespace labelled
/// `lattice-egress.io/inject=enabled`: every pod is in unless it says `"false"`) or the
/// pod-level one (only pods that carry an opt-in annotation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Namespace,
    Pod,
}

/// What was decided for one pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Neither the namespace nor the pod opted in.
    NotOptedIn,
    /// The pod says `"false"` (wins over the namespace).
    OptedOut,
    /// It already has the sidecar: no patch.
    AlreadyInjected,
    /// Opted in but `hostNetwork`: no patch, a warning.
    HostNetwork,
    Injected,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    pub decision: Decision,
    /// JSONPatch operations; empty unless `Injected`.
    pub patch: Vec<Value>,
    /// For the AdmissionReview's `response.warnings` (and the log).
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("the object is not a Pod: it has no spec")]
    NoSpec,
    #[error("spec.{field} is not a list")]
    NotAList { field: &'static str },
    #[error(transparent)]
    Override(#[from] SettingsError),
}

/// JSON Pointer escaping of one reference token (RFC 6901): `~` → `~0`, `/` → `~1`.
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn annotations(pod: &Value) -> BTreeMap<String, String> {
    pod.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn list<'a>(pod: &'a Value, field: &'static str) -> Result<&'a [Value], PatchError> {
    match pod.get("spec").and_then(|s| s.get(field)) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(PatchError::NotAList { field }),
    }
}

fn name(container: &Value) -> &str {
    container.get("name").and_then(Value::as_str).unwrap_or("")
}

/// The sidecar container, as `deploy/components/sidecar/lattice-proxy.yaml` has it, plus
/// the optional environment of the settings and the copied credential env and mounts.
pub fn proxy_container(settings: &Settings, credential_env: &[Value], mounts: &[Value]) -> Value {
    let mut c = json!({
        "name": PROXY_NAME,
        "image": settings.image,
        "restartPolicy": "Always",
        "command": ["/lattice-proxy"],
        "args": settings.args(),
        "ports": [{"name": "proxy-admin", "containerPort": settings.admin_port, "protocol": "TCP"}],
        "startupProbe": {
            "httpGet": {"path": "/readyz", "port": "proxy-admin"},
            "periodSeconds": 1,
            "failureThreshold": 120
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "proxy-admin"},
            "periodSeconds": 5
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "proxy-admin"},
            "periodSeconds": 10,
            "failureThreshold": 3
        },
        "securityContext": {
            "runAsUser": settings.proxy_uid,
            "runAsGroup": settings.proxy_gid,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}
        }
    });
    let obj = c.as_object_mut().expect("a JSON object literal");
    if let Some(p) = &settings.image_pull_policy {
        obj.insert("imagePullPolicy".into(), json!(p));
    }
    if !settings.config_map.is_empty() {
        obj.insert(
            "envFrom".into(),
            json!([{"configMapRef": {"name": settings.config_map, "optional": false}}]),
        );
    }
    let mut env: Vec<Value> = [
        ("AWS_REGION", &settings.region),
        ("LATTICE_PROXY_CA_FILE", &settings.ca_file),
        ("LATTICE_PROXY_PRIVATE_CA_ARN", &settings.private_ca_arn),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some(json!({"name": k, "value": v.as_ref()?})))
    .collect();
    env.extend(credential_env.iter().cloned());
    if !env.is_empty() {
        obj.insert("env".into(), Value::Array(env));
    }
    if !mounts.is_empty() {
        obj.insert("volumeMounts".into(), Value::Array(mounts.to_vec()));
    }
    let r = &settings.resources;
    let quantities = |pairs: [(&str, &Option<String>); 2]| -> Map<String, Value> {
        pairs
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), json!(v.as_ref()?))))
            .collect()
    };
    let requests = quantities([("cpu", &r.cpu_request), ("memory", &r.memory_request)]);
    let limits = quantities([("cpu", &r.cpu_limit), ("memory", &r.memory_limit)]);
    let mut resources = Map::new();
    if !requests.is_empty() {
        resources.insert("requests".into(), Value::Object(requests));
    }
    if !limits.is_empty() {
        resources.insert("limits".into(), Value::Object(limits));
    }
    if !resources.is_empty() {
        obj.insert("resources".into(), Value::Object(resources));
    }
    c
}

/// The credential env entries and token mounts of the first app container that has them
/// (left there by a credentials webhook that ran first).
fn credentials(containers: &[Value]) -> (Vec<Value>, Vec<Value>) {
    for c in containers {
        let env: Vec<Value> = c
            .get("env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|e| CREDENTIAL_ENV.contains(&name(e)))
            .cloned()
            .collect();
        if env.is_empty() {
            continue;
        }
        let mounts = c
            .get("volumeMounts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|m| CREDENTIAL_VOLUMES.contains(&name(m)))
            .cloned()
            .collect();
        return (env, mounts);
    }
    (Vec::new(), Vec::new())
}

/// Warnings for app containers that run with a GID the agent never redirects.
fn gid_warnings(pod: &Value, settings: &Settings) -> Result<Vec<String>, PatchError> {
    let mut warnings = Vec::new();
    let exempt = |gid: Option<i64>| gid.filter(|g| settings.exempt_gids.contains(g));
    let pod_gid = pod
        .pointer("/spec/securityContext/runAsGroup")
        .and_then(Value::as_i64);
    if let Some(g) = exempt(pod_gid) {
        warnings.push(format!(
            "pod securityContext.runAsGroup is {g}, a GID lattice-redirector never redirects \
             (exempt {:?}): its app containers' calls to VPC Lattice go out unsigned; use {}",
            settings.exempt_gids, settings.app_gid
        ));
    }
    let apps = list(pod, "initContainers")?
        .iter()
        .chain(list(pod, "containers")?)
        .filter(|c| name(c) != PROXY_NAME);
    for c in apps {
        let gid = c
            .pointer("/securityContext/runAsGroup")
            .and_then(Value::as_i64);
        if let Some(g) = exempt(gid) {
            warnings.push(format!(
                "container {:?} sets securityContext.runAsGroup {g}, a GID lattice-redirector \
                 never redirects (exempt {:?}): its calls to VPC Lattice go out unsigned; use {}",
                name(c),
                settings.exempt_gids,
                settings.app_gid
            ));
        }
    }
    Ok(warnings)
}

/// Decides and computes the patch for one pod (the `object` of a CREATE review).
pub fn mutate(pod: &Value, scope: Scope, settings: &Settings) -> Result<Mutation, PatchError> {
    let spec = pod
        .get("spec")
        .filter(|s| s.is_object())
        .ok_or(PatchError::NoSpec)?;
    let annotations = annotations(pod);
    let says = |v: &str| {
        [INJECT, BLUEPRINTS_INJECT]
            .iter()
            .any(|k| annotations.get(*k).map(String::as_str) == Some(v))
    };
    let nothing = |decision| Mutation {
        decision,
        patch: Vec::new(),
        warnings: Vec::new(),
    };
    if says("false") {
        return Ok(nothing(Decision::OptedOut));
    }
    if scope == Scope::Pod && !says("true") {
        return Ok(nothing(Decision::NotOptedIn));
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        // The agent never redirects hostNetwork pods, so the sidecar's redirect check would
        // hold the app for good (and 15000/15001 would be taken on the node).
        return Ok(Mutation {
            decision: Decision::HostNetwork,
            patch: Vec::new(),
            warnings: vec![
                "lattice-injector: a hostNetwork pod is never redirected by lattice-redirector; \
                 not injected (its calls to VPC Lattice go out unsigned)"
                    .into(),
            ],
        });
    }
    let warnings = gid_warnings(pod, settings)?;
    let init = list(pod, "initContainers")?;
    let containers = list(pod, "containers")?;
    if init.iter().chain(containers).any(|c| name(c) == PROXY_NAME) {
        return Ok(Mutation {
            decision: Decision::AlreadyInjected,
            patch: Vec::new(),
            warnings,
        });
    }
    let settings = settings.for_pod(&annotations)?;
    let (env, mounts) = credentials(containers);
    let proxy = proxy_container(&settings, &env, &mounts);

    let mut patch = Vec::new();
    if annotations.get(INJECT).map(String::as_str) != Some("true") {
        match pod.get("metadata") {
            Some(Value::Object(m)) if m.get("annotations").is_some_and(Value::is_object) => {
                patch.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", escape(INJECT)), "value": "true"}));
            }
            Some(Value::Object(_)) => {
                patch.push(json!({"op": "add", "path": "/metadata/annotations", "value": {INJECT: "true"}}));
            }
            _ => {
                patch.push(json!({"op": "add", "path": "/metadata", "value": {"annotations": {INJECT: "true"}}}));
            }
        }
    }
    // First: a native sidecar starts before every other init container.
    if init.is_empty() && !spec.get("initContainers").is_some_and(Value::is_array) {
        patch.push(json!({"op": "add", "path": "/spec/initContainers", "value": [proxy]}));
    } else {
        patch.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": proxy}));
    }
    match spec.get("securityContext") {
        Some(Value::Object(sc)) => {
            if sc.get("runAsGroup").is_none_or(Value::is_null) {
                patch.push(json!({"op": "add", "path": "/spec/securityContext/runAsGroup", "value": settings.app_gid}));
            }
        }
        _ => {
            patch.push(json!({"op": "add", "path": "/spec/securityContext", "value": {"runAsGroup": settings.app_gid}}));
        }
    }
    Ok(Mutation {
        decision: Decision::Injected,
        patch,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: Value) -> Value {
        v
    }

    #[test]
    fn escaping() {
        assert_eq!(
            escape("lattice-egress.io/inject"),
            "lattice-egress.io~1inject"
        );
        assert_eq!(escape("a~b/c"), "a~0b~1c");
    }

    #[test]
    fn missing_parents_are_created_and_existing_ones_extended() {
        let s = Settings::default();
        let bare =
            pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app"}]}}));
        let m = mutate(&bare, Scope::Namespace, &s).unwrap();
        let paths: Vec<&str> = m
            .patch
            .iter()
            .map(|o| o["path"].as_str().unwrap())
            .collect();
        assert_eq!(
            paths,
            [
                "/metadata/annotations",
                "/spec/initContainers",
                "/spec/securityContext"
            ]
        );

        let full = pod(json!({
            "metadata": {"annotations": {"a": "b", INJECT: "true"}},
            "spec": {"securityContext": {"runAsUser": 1}, "initContainers": [{"name": "x"}], "containers": []}
        }));
        let m = mutate(&full, Scope::Pod, &s).unwrap();
        let paths: Vec<&str> = m
            .patch
            .iter()
            .map(|o| o["path"].as_str().unwrap())
            .collect();
        assert_eq!(
            paths,
            ["/spec/initContainers/0", "/spec/securityContext/runAsGroup"]
        );
    }

    #[test]
    fn opt_in_and_out() {
        let s = Settings::default();
        let with = |ann: Value| json!({"metadata": {"annotations": ann}, "spec": {"containers": [{"name": "app"}]}});
        let d = |p: &Value, scope| mutate(p, scope, &s).unwrap().decision;
        assert_eq!(d(&with(json!({})), Scope::Pod), Decision::NotOptedIn);
        assert_eq!(d(&with(json!({})), Scope::Namespace), Decision::Injected);
        assert_eq!(
            d(&with(json!({INJECT: "false"})), Scope::Namespace),
            Decision::OptedOut
        );
        assert_eq!(
            d(&with(json!({BLUEPRINTS_INJECT: "false"})), Scope::Namespace),
            Decision::OptedOut
        );
        assert_eq!(
            d(&with(json!({BLUEPRINTS_INJECT: "true"})), Scope::Pod),
            Decision::Injected
        );
        assert_eq!(
            d(&with(json!({INJECT: "yes"})), Scope::Pod),
            Decision::NotOptedIn
        );
        let mut host = with(json!({}));
        host["spec"]["hostNetwork"] = json!(true);
        let m = mutate(&host, Scope::Namespace, &s).unwrap();
        assert_eq!(m.decision, Decision::HostNetwork);
        assert!(m.patch.is_empty() && m.warnings[0].contains("hostNetwork"));
    }

    #[test]
    fn not_a_pod() {
        let e = mutate(
            &json!({"metadata": {}}),
            Scope::Namespace,
            &Settings::default(),
        )
        .unwrap_err();
        assert!(matches!(e, PatchError::NoSpec));
        let e = mutate(
            &json!({"spec": {"containers": 3}}),
            Scope::Namespace,
            &Settings::default(),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "spec.containers is not a list");
    }
}
