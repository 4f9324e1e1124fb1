//! AdmissionReview fixtures → the webhook's answer → its patch applied with json-patch (the
//! implementation kube-core uses) → the pod equals what `deploy/components/sidecar` makes
//! of the same pod template (rendered with `kubectl kustomize`), validates with
//! `kubernetes-validate --strict` for 1.29 and 1.33, and a second review returns no patch.
//!
//! Needs `kubectl` and kubernetes-validate for python3, like tests/tests/deploy.rs.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use lattice_injector::patch::{Scope, BLUEPRINTS_INJECT, INJECT};
use lattice_injector::review::review;
use lattice_injector::settings::Settings;
use serde::Deserialize;
use serde_json::{json, Value};

const APP_GID: i64 = 1000;
const KUBE_VERSIONS: [&str; 2] = ["1.29", "1.33"];

struct Fixture {
    name: &'static str,
    scope: Scope,
    pod: Value,
    /// The EKS Pod Identity webhook ran before ours.
    pod_identity_first: bool,
    /// Fields no Kubernetes schema knows: kept, but not schema-validated.
    unknown_fields: bool,
    /// Substrings the warnings must contain (empty: no warning).
    warnings: &'static [&'static str],
}

fn pod(name: &str, annotations: Value, spec: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "apps", "labels": {"app": name}, "annotations": annotations},
        "spec": spec,
    })
}

fn app() -> Value {
    json!({"name": "app", "image": "example.com/app:1"})
}

fn fixtures() -> Vec<Fixture> {
    let f = |name, scope, pod| Fixture {
        name,
        scope,
        pod,
        pod_identity_first: false,
        unknown_fields: false,
        warnings: &[],
    };
    vec![
        // Annotated, no securityContext at all: runAsGroup is added.
        f(
            "annotated",
            Scope::Pod,
            pod(
                "annotated",
                json!({INJECT: "true"}),
                json!({"containers": [app()]}),
            ),
        ),
        // The Blueprints annotation, a GID of its own kept.
        f(
            "blueprints",
            Scope::Pod,
            pod(
                "blueprints",
                json!({BLUEPRINTS_INJECT: "true", "team": "a/b"}),
                json!({"securityContext": {"runAsUser": 1000, "runAsGroup": 1001}, "containers": [app()]}),
            ),
        ),
        // Namespace opt-in, no annotation, init containers of its own.
        f(
            "with-init",
            Scope::Namespace,
            pod(
                "with-init",
                json!({}),
                json!({
                    "securityContext": {"runAsUser": 1000},
                    "initContainers": [{"name": "migrate", "image": "example.com/migrate:1"}],
                    "containers": [app()]
                }),
            ),
        ),
        Fixture {
            pod_identity_first: true,
            ..f(
                "pod-identity",
                Scope::Namespace,
                pod(
                    "pod-identity",
                    json!({}),
                    json!({
                        "serviceAccountName": "app",
                        "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
                        "initContainers": [{"name": "migrate", "image": "example.com/migrate:1"}],
                        "containers": [app(), {"name": "second", "image": "example.com/second:1"}]
                    }),
                ),
            )
        },
        Fixture {
            unknown_fields: true,
            ..f(
                "unknown-fields",
                Scope::Pod,
                pod(
                    "unknown-fields",
                    json!({INJECT: "true"}),
                    json!({
                        "futurePodField": {"x": [1, 2]},
                        "securityContext": {"futureSecurityField": true},
                        "containers": [{"name": "app", "image": "example.com/app:1", "futureContainerField": "y"}]
                    }),
                ),
            )
        },
        Fixture {
            warnings: &[
                "pod securityContext.runAsGroup is 0",
                "container \"app\" sets securityContext.runAsGroup 1337",
            ],
            ..f(
                "gid-zero",
                Scope::Pod,
                pod(
                    "gid-zero",
                    json!({INJECT: "true"}),
                    json!({
                        "securityContext": {"runAsGroup": 0},
                        "containers": [{"name": "app", "image": "example.com/app:1", "securityContext": {"runAsGroup": 1337}}]
                    }),
                ),
            )
        },
    ]
}

fn admission_review(uid: &str, object: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "apps",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "dryRun": false
        }
    })
}

/// Reviews `pod` and returns the response and the decoded patch (empty when none).
fn ask(pod: &Value, scope: Scope) -> (Value, Vec<Value>) {
    let answer = review(
        admission_review("0f3c", pod).to_string().as_bytes(),
        scope,
        &Settings::default(),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let response = answer.body["response"].clone();
    assert_eq!(response["uid"], "0f3c");
    assert_eq!(response["allowed"], true, "{response}");
    let patch = match response.get("patch").and_then(Value::as_str) {
        Some(b64) => {
            assert_eq!(response["patchType"], "JSONPatch");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("base64 patch");
            serde_json::from_slice(&bytes).expect("JSON patch")
        }
        None => Vec::new(),
    };
    (response, patch)
}

fn apply(pod: &Value, patch: &[Value]) -> Value {
    let ops: Vec<json_patch::PatchOperation> =
        serde_json::from_value(Value::Array(patch.to_vec())).expect("RFC 6902 operations");
    for op in &ops {
        assert!(
            matches!(
                op,
                json_patch::PatchOperation::Add(_) | json_patch::PatchOperation::Replace(_)
            ),
            "only add/replace operations: {op:?}"
        );
    }
    let mut out = pod.clone();
    json_patch::patch(&mut out, &ops).unwrap_or_else(|e| panic!("patch {patch:?} fails: {e}"));
    out
}

/// What the EKS Pod Identity webhook does to a pod: env and the token mount on every
/// container and init container, and the projected token volume.
fn pod_identity(pod: &Value) -> Value {
    let mut pod = pod.clone();
    let dir = "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount";
    for list in ["initContainers", "containers"] {
        let Some(cs) = pod["spec"].get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in cs {
            let env = c.as_object_mut().unwrap().entry("env").or_insert(json!([]));
            env.as_array_mut().unwrap().extend([
                json!({"name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://169.254.170.23/v1/credentials"}),
                json!({"name": "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "value": format!("{dir}/eks-pod-identity-token")}),
            ]);
            let mounts = c
                .as_object_mut()
                .unwrap()
                .entry("volumeMounts")
                .or_insert(json!([]));
            mounts.as_array_mut().unwrap().push(
                json!({"name": "eks-pod-identity-token", "mountPath": dir, "readOnly": true}),
            );
        }
    }
    let volumes = pod["spec"]
        .as_object_mut()
        .unwrap()
        .entry("volumes")
        .or_insert(json!([]));
    volumes.as_array_mut().unwrap().push(json!({
        "name": "eks-pod-identity-token",
        "projected": {"defaultMode": 420, "sources": [{"serviceAccountToken": {
            "audience": "pods.eks.amazonaws.com", "expirationSeconds": 86400, "path": "eks-pod-identity-token"}}]}
    }));
    pod
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("deploy")
}

fn relative(from: &Path, to: &Path) -> PathBuf {
    let (from, to) = (from.canonicalize().unwrap(), to.canonicalize().unwrap());
    let common = from
        .components()
        .zip(to.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut out = PathBuf::new();
    for _ in from.components().skip(common) {
        out.push("..");
    }
    for c in to.components().skip(common) {
        out.push(c);
    }
    out
}

fn run(cmd: &mut Command, what: &str) -> std::process::Output {
    cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {what} ({e}): install it (see tests/tests/deploy.rs)")
    })
}

/// The pod templates the sidecar component makes of the fixtures' pods, by name: each pod
/// becomes a labelled Deployment's template, all rendered in one `kubectl kustomize`.
fn component_renders(fixtures: &[Fixture]) -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("injector-kustomize-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let docs: Vec<String> = fixtures
        .iter()
        .map(|f| {
            let d = json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": f.name, "labels": {INJECT: "true"}},
                "spec": {
                    "selector": {"matchLabels": {"app": f.name}},
                    "template": {"metadata": {
                        "labels": f.pod["metadata"]["labels"],
                        "annotations": f.pod["metadata"]["annotations"]},
                    "spec": f.pod["spec"]}
                }
            });
            d.to_string()
        })
        .collect();
    std::fs::write(dir.join("workloads.yaml"), docs.join("\n---\n")).unwrap();
    let component = relative(&dir, &deploy_dir().join("components/sidecar"));
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!(
            "resources:\n  - workloads.yaml\ncomponents:\n  - {}\n",
            component.display()
        ),
    )
    .unwrap();
    let out = run(
        Command::new("kubectl").arg("kustomize").arg(&dir),
        "kubectl",
    );
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    serde_yaml::Deserializer::from_slice(&out.stdout)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .map(|d| {
            (
                d["metadata"]["name"].as_str().unwrap().to_string(),
                d["spec"]["template"].clone(),
            )
        })
        .collect()
}

/// `kubernetes-validate --strict` for 1.29 and 1.33 over the pods; returns the report on failure.
fn validate(pods: &[&Value]) -> Result<(), String> {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("injector-validate-{}-{call}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "kubernetes_validate", "--strict", "--quiet"]);
    for v in KUBE_VERSIONS {
        cmd.args(["-k", v]);
    }
    for (i, p) in pods.iter().enumerate() {
        let file = dir.join(format!("pod-{i}.yaml"));
        std::fs::write(&file, p.to_string()).unwrap();
        cmd.arg(file);
    }
    let out = run(&mut cmd, "python3 -m kubernetes_validate");
    let _ = std::fs::remove_dir_all(&dir);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A kind without a schema is only a warning there, and a file it cannot open only a
    // message: both are failures here.
    let clean = !report.lines().any(|l| {
        l.starts_with("ERROR")
            || l.starts_with("WARN")
            || l.starts_with("FATAL")
            || l.starts_with("Couldn't")
    });
    if out.status.success() && clean {
        Ok(())
    } else {
        Err(report)
    }
}

#[test]
fn injected_pods_equal_the_sidecar_component_validate_and_are_patched_once() {
    let fixtures = fixtures();
    let renders = component_renders(&fixtures);
    let mut patched_pods = Vec::new();
    for f in &fixtures {
        let before = if f.pod_identity_first {
            pod_identity(&f.pod)
        } else {
            f.pod.clone()
        };
        let (response, patch) = ask(&before, f.scope);
        assert!(!patch.is_empty(), "{}: no patch", f.name);
        let warnings: Vec<&str> = response
            .get("warnings")
            .and_then(Value::as_array)
            .map(|w| w.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert_eq!(
            warnings.len(),
            f.warnings.len(),
            "{}: warnings {warnings:?}",
            f.name
        );
        for (w, want) in warnings.iter().zip(f.warnings) {
            assert!(w.contains(want), "{}: warning {w:?} lacks {want:?}", f.name);
        }
        let after = apply(&before, &patch);

        // What the component makes of the same template (then the Pod Identity webhook, when
        // it is in the picture: it runs at pod creation, after the component), plus the one
        // thing the component cannot do: runAsGroup when unset.
        let template = &renders
            .iter()
            .find(|(n, _)| n == f.name)
            .expect("rendered")
            .1;
        let mut expected = f.pod.clone();
        expected["metadata"]["annotations"] = template["metadata"]["annotations"].clone();
        expected["spec"] = template["spec"].clone();
        if f.pod_identity_first {
            expected = pod_identity(&expected);
        }
        let sc = expected["spec"]
            .as_object_mut()
            .unwrap()
            .entry("securityContext")
            .or_insert(json!({}));
        sc.as_object_mut()
            .unwrap()
            .entry("runAsGroup")
            .or_insert(json!(APP_GID));
        assert_eq!(
            after["spec"]["initContainers"][0], expected["spec"]["initContainers"][0],
            "{}: the lattice-proxy container differs from the component's",
            f.name
        );
        assert_eq!(
            after, expected,
            "{}: the injected pod differs from the component's",
            f.name
        );
        assert_eq!(after["metadata"]["annotations"][INJECT], "true");

        // Idempotent: a second pass (reinvocation) patches nothing.
        let (_, again) = ask(&after, f.scope);
        assert!(
            again.is_empty(),
            "{}: second pass patched {again:?}",
            f.name
        );
        if !f.unknown_fields {
            patched_pods.push(after);
        }
    }
    let refs: Vec<&Value> = patched_pods.iter().collect();
    validate(&refs)
        .unwrap_or_else(|report| panic!("kubernetes-validate --strict failed:\n{report}"));
}

#[test]
fn the_validation_is_live() {
    // A patched pod with a field the schema lacks must fail, or the check above proves nothing.
    let f = &fixtures()[4];
    assert!(f.unknown_fields);
    let (_, patch) = ask(&f.pod, f.scope);
    let after = apply(&f.pod, &patch);
    let report = validate(&[&after]).expect_err("kubernetes-validate accepted unknown fields");
    assert!(
        report.contains("futurePodField") || report.contains("future"),
        "{report}"
    );
}

#[test]
fn unknown_fields_survive_untouched() {
    let f = &fixtures()[4];
    let (_, patch) = ask(&f.pod, f.scope);
    let after = apply(&f.pod, &patch);
    assert_eq!(after["spec"]["futurePodField"], json!({"x": [1, 2]}));
    assert_eq!(
        after["spec"]["securityContext"],
        json!({"futureSecurityField": true, "runAsGroup": APP_GID})
    );
    assert_eq!(after["spec"]["containers"][0]["futureContainerField"], "y");
}

#[test]
fn pods_not_opted_in_opted_out_or_already_injected_get_no_patch() {
    let plain = pod(
        "plain",
        json!({"other": "x"}),
        json!({"containers": [app()]}),
    );
    let (r, p) = ask(&plain, Scope::Pod);
    assert!(p.is_empty() && r.get("warnings").is_none(), "{r}");
    for key in [INJECT, BLUEPRINTS_INJECT] {
        let out = pod("out", json!({key: "false"}), json!({"containers": [app()]}));
        assert!(
            ask(&out, Scope::Namespace).1.is_empty(),
            "{key}=false must win over the namespace"
        );
    }
    let proxy = json!({"name": "lattice-proxy", "image": "example.com/lattice-proxy:old", "restartPolicy": "Always"});
    let has = pod(
        "has",
        json!({INJECT: "true"}),
        json!({"initContainers": [proxy], "containers": [app()]}),
    );
    assert!(ask(&has, Scope::Pod).1.is_empty());
    // An old-style sidecar (a regular container) counts too.
    let old = pod(
        "old",
        json!({}),
        json!({"containers": [app(), {"name": "lattice-proxy", "image": "x"}]}),
    );
    assert!(ask(&old, Scope::Namespace).1.is_empty());
}

#[test]
fn annotation_overrides_reach_the_container() {
    let p = pod(
        "tuned",
        json!({INJECT: "true",
               "lattice-egress.io/proxy-image": "registry.example.com/lattice-proxy:0.2.0",
               "lattice-egress.io/proxy-cpu-request": "50m",
               "lattice-egress.io/proxy-memory-limit": "128Mi"}),
        json!({"containers": [app()]}),
    );
    let (_, patch) = ask(&p, Scope::Pod);
    let proxy = &apply(&p, &patch)["spec"]["initContainers"][0];
    assert_eq!(proxy["image"], "registry.example.com/lattice-proxy:0.2.0");
    assert_eq!(
        proxy["resources"],
        json!({"requests": {"cpu": "50m", "memory": "16Mi"}, "limits": {"memory": "128Mi"}})
    );

    let bad = pod(
        "bad",
        json!({INJECT: "true", "lattice-egress.io/proxy-cpu-request": "lots"}),
        json!({"containers": [app()]}),
    );
    let answer = review(
        admission_review("u1", &bad).to_string().as_bytes(),
        Scope::Pod,
        &Settings::default(),
    );
    let r = &answer.body["response"];
    assert_eq!(r["allowed"], false, "{r}");
    let msg = r["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("apps/bad")
            && msg.contains("lattice-egress.io/proxy-cpu-request")
            && msg.contains("\"lots\""),
        "{msg}"
    );
}

#[test]
fn bad_reviews_get_clear_answers() {
    let s = Settings::default();
    let answer = review(b"{not json", Scope::Pod, &s);
    assert_eq!(answer.status, 400);
    assert!(
        answer.body["error"].as_str().unwrap().contains("not JSON"),
        "{}",
        answer.body
    );

    let deny = |body: Value, want: &str| {
        let a = review(body.to_string().as_bytes(), Scope::Namespace, &s);
        assert_eq!(a.status, 200);
        let r = &a.body["response"];
        assert_eq!(r["allowed"], false, "{r}");
        assert_eq!(r["status"]["code"], 400);
        let msg = r["status"]["message"].as_str().unwrap();
        assert!(msg.contains(want), "{msg:?} lacks {want:?}");
    };
    let ok = pod("p", json!({}), json!({"containers": [app()]}));
    let mut v1beta1 = admission_review("u", &ok);
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    deny(v1beta1, "got apiVersion \"admission.k8s.io/v1beta1\"");
    let mut deployment = admission_review("u", &ok);
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    deny(deployment, "Pods only, got \"apps\"/v1 Deployment");
    let mut no_object = admission_review("u", &ok);
    no_object["request"]
        .as_object_mut()
        .unwrap()
        .remove("object");
    deny(no_object, "no request.object");
    let mut no_uid = admission_review("u", &ok);
    no_uid["request"].as_object_mut().unwrap().remove("uid");
    deny(no_uid, "no request.uid");
    deny(
        admission_review("u", &json!({"metadata": {"name": "x"}})),
        "no spec",
    );
    deny(json!([1, 2]), "AdmissionReview");

    // Not a CREATE: passes untouched.
    let mut update = admission_review("u", &ok);
    update["request"]["operation"] = json!("UPDATE");
    let a = review(update.to_string().as_bytes(), Scope::Namespace, &s);
    assert_eq!(a.body["response"]["allowed"], true);
    assert!(a.body["response"].get("patch").is_none());
}

#[test]
fn the_shipped_settings_file_is_the_component_defaults() {
    let file = deploy_dir().join("components/injector/injector.toml");
    let settings = Settings::load(&file).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(settings, Settings::default());
}
