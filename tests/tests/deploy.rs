//! The Kubernetes manifests in `deploy/`: every kustomization renders with `kubectl
//! kustomize` and passes `kubernetes-validate --strict` for Kubernetes 1.29 (the first
//! release with native sidecars on by default) and 1.33; and the rendered objects keep the
//! properties the design depends on (the agent's privileges and mounts, read-only RBAC, app
//! pods without any capability, the proxy's GID apart from the app's, the seed's AWS files
//! agreeing with the manifests).
//!
//! Needs `kubectl` (with its built-in Kustomize) and kubernetes-validate for python3
//! (`python3 -m pip install 'kubernetes-validate~=1.37.0'`; `cargo xtask test` installs it);
//! no cluster. A missing tool fails the tests with a message naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};

use lattice_tests::credentials::Identity;
use lattice_tests::policy::{AuthPolicy, Decision, RequestContext};
use serde::Deserialize;
use serde_json::Value;

const AGENT_IMAGE: &str = "public.ecr.aws/lattice-egress/lattice-redirector:0.1.0";
const PROXY_IMAGE: &str = "public.ecr.aws/lattice-egress/lattice-proxy:0.1.0";
const INJECTOR_IMAGE: &str = "public.ecr.aws/lattice-egress/lattice-injector:0.1.0";
/// The Kubernetes versions the manifests must validate for.
const KUBE_VERSIONS: [&str; 2] = ["1.29", "1.33"];
/// The directories (relative to `deploy/`) that must exist among the discovered ones: the
/// discovery itself is what covers a new overlay, this guards against it finding nothing.
const EXPECTED: [&str; 8] = [
    ".",
    "base",
    "uninstall",
    "components/injector",
    "components/sidecar",
    "examples/seed/apps",
    "examples/seed/cluster1",
    "examples/seed/cluster2",
];

// ---------------------------------------------------------------------------------------
// Rendering

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

/// Runs a tool; a missing tool panics with `missing`, which says how to get it.
fn output(cmd: &mut Command, missing: &str) -> Output {
    match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{missing}"),
        Err(e) => panic!("cannot run {cmd:?}: {e}"),
    }
}

fn kustomize(dir: &Path) -> String {
    let out = output(
        Command::new("kubectl").arg("kustomize").arg(dir),
        "kubectl is not installed (the deploy tests render deploy/ with `kubectl kustomize`, \
         checked with kubectl 1.32 / Kustomize 5.5); install kubectl",
    );
    assert!(
        out.status.success(),
        "`kubectl kustomize {}` failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("kustomize prints UTF-8")
}

fn parse_docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("kustomize output is YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// One rendered kustomization.
struct Render {
    /// Where it came from, relative to `deploy/` (`fixture:…` for the test's own).
    name: String,
    yaml: String,
    docs: Vec<Value>,
}

struct Renders {
    all: Vec<Render>,
}

impl Renders {
    fn get(&self, name: &str) -> &Render {
        self.all
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no render named {name}"))
    }
}

/// Every directory under `deploy/` with a kustomization, relative to `deploy/`, and
/// whether it is a Component (those cannot be built alone).
fn discover() -> Vec<(String, bool)> {
    fn walk(dir: &Path, base: &Path, found: &mut Vec<(String, bool)>) {
        let file = dir.join("kustomization.yaml");
        if file.is_file() {
            let text = std::fs::read_to_string(&file).expect("readable kustomization");
            let is_component = text.lines().any(|l| l.trim() == "kind: Component");
            let rel = dir.strip_prefix(base).expect("under deploy/");
            let name = if rel.as_os_str().is_empty() {
                ".".to_owned()
            } else {
                rel.to_string_lossy().into_owned()
            };
            found.push((name, is_component));
        }
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("readable directory")
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.is_dir())
            .collect();
        entries.sort();
        for e in entries {
            walk(&e, base, found);
        }
    }
    let base = deploy_dir();
    let mut found = Vec::new();
    walk(&base, &base, &mut found);
    found
}

/// `to` as a path relative to the directory `from` (Kustomize refuses absolute paths).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from = from.canonicalize().expect("existing directory");
    let to = to.canonicalize().expect("existing directory");
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

/// Workloads a user could have, to apply the sidecar component to: two labelled ones (one
/// with an init container of its own) and one without the label.
const SIDECAR_FIXTURE: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: lattice-proxy
data:
  AWS_REGION: eu-west-1
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: labelled
  labels:
    lattice-egress.io/inject: "true"
spec:
  selector:
    matchLabels: {app: labelled}
  template:
    metadata:
      labels: {app: labelled}
    spec:
      securityContext: {runAsUser: 1000, runAsGroup: 1000}
      initContainers:
        - name: migrate
          image: example.com/migrate:1
      containers:
        - name: app
          image: example.com/app:1
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: stateful
  labels:
    lattice-egress.io/inject: "true"
spec:
  serviceName: stateful
  selector:
    matchLabels: {app: stateful}
  template:
    metadata:
      labels: {app: stateful}
    spec:
      containers:
        - name: app
          image: example.com/app:1
          securityContext: {runAsUser: 1000, runAsGroup: 1000}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: not-opted-in
spec:
  selector:
    matchLabels: {app: not-opted-in}
  template:
    metadata:
      labels: {app: not-opted-in}
    spec:
      containers:
        - name: app
          image: example.com/app:1
"#;

/// Renders a component through a throw-away kustomization (under cargo's target tmp dir)
/// that includes it over [`SIDECAR_FIXTURE`].
fn render_component(name: &str) -> String {
    // The injector component brings its own objects (namespaced itself): rendered alone.
    let fixture = match name {
        "components/sidecar" => SIDECAR_FIXTURE,
        "components/injector" => "",
        _ => panic!("a new component {name}: give it a fixture in tests/tests/deploy.rs"),
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("deploy-fixture-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create fixture dir");
    let component = relative(&dir, &deploy_dir().join(name));
    let kustomization = if fixture.is_empty() {
        format!("components:\n  - {}\n", component.display())
    } else {
        std::fs::write(dir.join("workloads.yaml"), fixture).expect("write fixture");
        format!(
            "namespace: fixture\nresources:\n  - workloads.yaml\ncomponents:\n  - {}\n",
            component.display()
        )
    };
    std::fs::write(dir.join("kustomization.yaml"), kustomization).expect("write fixture");
    let yaml = kustomize(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    yaml
}

/// Renders every kustomization once for all tests of this binary.
fn renders() -> &'static Renders {
    static RENDERS: OnceLock<Renders> = OnceLock::new();
    RENDERS.get_or_init(|| {
        let found = discover();
        let names: BTreeSet<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        for e in EXPECTED {
            assert!(names.contains(e), "deploy/{e} has no kustomization.yaml");
        }
        let all = found
            .iter()
            .map(|(name, is_component)| {
                let yaml = if *is_component {
                    render_component(name)
                } else {
                    kustomize(&deploy_dir().join(name))
                };
                let docs = parse_docs(&yaml);
                assert!(!docs.is_empty(), "deploy/{name} renders no object");
                Render {
                    name: name.clone(),
                    yaml,
                    docs,
                }
            })
            .collect();
        Renders { all }
    })
}

// ---------------------------------------------------------------------------------------
// Looking into objects

/// The value at a JSON pointer, or a panic naming the path and the object.
fn at<'a>(v: &'a Value, pointer: &str) -> &'a Value {
    v.pointer(pointer)
        .unwrap_or_else(|| panic!("{} has no {pointer}", describe(v)))
}

fn describe(v: &Value) -> String {
    format!(
        "{}/{}",
        v["kind"].as_str().unwrap_or("?"),
        v["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    at(v, pointer)
        .as_str()
        .unwrap_or_else(|| panic!("{} {pointer} is not a string", describe(v)))
}

fn list<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in the render"))
}

/// Workloads with a pod template.
fn workloads(docs: &[Value]) -> impl Iterator<Item = &Value> {
    docs.iter().filter(|d| {
        matches!(
            d["kind"].as_str(),
            Some("Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job")
        )
    })
}

fn container<'a>(pod_spec: &'a Value, list_name: &str, name: &str) -> &'a Value {
    list(pod_spec, &format!("/{list_name}"))
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {list_name} entry named {name}"))
}

/// A probe's or a port reference's number: numeric, or a named port of the container.
fn port_number(container: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = port.as_str().expect("port is a number or a name");
    list(container, "/ports")
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("container {} has no port named {name}", container["name"]))
}

/// The value following `flag` in a container's command + args.
fn flag_value<'a>(container: &'a Value, flag: &str) -> Option<&'a str> {
    let argv: Vec<&str> = strings(&container["command"])
        .into_iter()
        .chain(strings(&container["args"]))
        .collect();
    argv.iter()
        .position(|a| *a == flag)
        .and_then(|i| argv.get(i + 1).copied())
}

fn int_or_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The agent's GID configuration, from its ConfigMap's TOML.
struct AgentGids {
    proxy_gid: i64,
    /// The redirect check's port (`canary-port`, default 15009).
    canary_port: i64,
    redirect: Option<Vec<i64>>,
    exempt: Option<Vec<i64>>,
}

impl AgentGids {
    fn redirects(&self, gid: i64) -> bool {
        match (&self.redirect, &self.exempt) {
            (Some(r), _) => r.contains(&gid),
            (None, Some(e)) => !e.contains(&gid),
            // The agent's default: redirect-gids = [1000].
            (None, None) => gid == 1000,
        }
    }
}

fn agent_gids() -> AgentGids {
    let docs = &renders().get(".").docs;
    let text = str_at(
        find(docs, "ConfigMap", "lattice-redirector"),
        "/data/redirector.toml",
    );
    let table: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("redirector.toml does not parse: {e}"));
    let ints = |key: &str| {
        table.get(key).map(|v| {
            v.as_array()
                .unwrap_or_else(|| panic!("{key} is not an array"))
                .iter()
                .map(|g| g.as_integer().expect("GIDs are integers"))
                .collect::<Vec<_>>()
        })
    };
    AgentGids {
        proxy_gid: table
            .get("proxy-gid")
            .and_then(toml::Value::as_integer)
            .expect("redirector.toml sets proxy-gid (the sidecar's GID is checked against it)"),
        redirect: ints("redirect-gids"),
        exempt: ints("exempt-gids"),
        canary_port: table
            .get("canary-port")
            .map(|v| v.as_integer().expect("canary-port is a port number here"))
            .unwrap_or(15009),
    }
}

// ---------------------------------------------------------------------------------------
// Schema validation

fn require_kubernetes_validate() {
    let out = output(
        Command::new("python3").args(["-c", "import kubernetes_validate"]),
        "python3 is not installed (needed for kubernetes-validate)",
    );
    assert!(
        out.status.success(),
        "kubernetes-validate is not installed for python3: run `python3 -m pip install \
         'kubernetes-validate~=1.37.0'` (`cargo xtask test` does)\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `python3 -m kubernetes_validate --strict` on the renders for the given versions
/// (one process for all: its start-up dominates); returns success and the report.
fn kubernetes_validate(renders: &[&Render], versions: &[&str]) -> (bool, String) {
    require_kubernetes_validate();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "deploy-validate-{}-{}",
        std::process::id(),
        versions.join("-")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create validation dir");
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "kubernetes_validate", "--strict", "--quiet"]);
    for v in versions {
        cmd.args(["-k", v]);
    }
    for r in renders {
        let file = dir.join(format!("{}.yaml", r.name.replace(['/', ':', '.'], "_")));
        std::fs::write(&file, &r.yaml).expect("write render");
        cmd.arg(file);
    }
    let out = output(
        &mut cmd,
        "python3 is not installed (needed for kubernetes-validate)",
    );
    let _ = std::fs::remove_dir_all(&dir);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A kind without a schema is only a warning there: here it is a failure too.
    let clean = !report
        .lines()
        .any(|l| l.starts_with("ERROR") || l.starts_with("WARN") || l.starts_with("FATAL"));
    (out.status.success() && clean, report)
}

#[test]
fn every_kustomization_renders_and_validates_strictly_for_1_29_and_1_33() {
    let renders = renders();
    let all: Vec<&Render> = renders.all.iter().collect();
    let (ok, report) = kubernetes_validate(&all, &KUBE_VERSIONS);
    assert!(
        ok,
        "kubernetes-validate --strict -k {KUBE_VERSIONS:?} failed:\n{report}"
    );
}

#[test]
fn the_validator_is_strict_enough_to_reject_a_native_sidecar_under_1_27() {
    // Proves the validation above can fail: 1.27's schema has no initContainers[].restartPolicy.
    let render = renders().get("components/sidecar");
    let (ok, report) = kubernetes_validate(&[render], &["1.27"]);
    assert!(
        !ok && report.contains("restartPolicy"),
        "kubernetes-validate accepted a native sidecar for 1.27:\n{report}"
    );
}

// ---------------------------------------------------------------------------------------
// The node agent

#[test]
fn the_default_install_is_the_base_and_the_injector() {
    let renders = renders();
    let key = |d: &Value| {
        format!(
            "{}/{}/{}",
            d["kind"].as_str().unwrap_or_default(),
            d["metadata"]["namespace"].as_str().unwrap_or_default(),
            d["metadata"]["name"].as_str().unwrap_or_default()
        )
    };
    let sorted = |docs: Vec<&Value>| {
        let mut docs: Vec<(String, Value)> =
            docs.into_iter().map(|d| (key(d), d.clone())).collect();
        docs.sort_by(|a, b| a.0.cmp(&b.0));
        docs
    };
    let parts = renders
        .get("base")
        .docs
        .iter()
        .chain(&renders.get("components/injector").docs)
        .collect();
    assert_eq!(
        sorted(renders.get(".").docs.iter().collect()),
        sorted(parts),
        "`kubectl apply -k deploy/` should install exactly deploy/base and components/injector"
    );
}

#[test]
fn agent_daemonset_has_the_privileges_and_mounts_the_pins_need() {
    let docs = &renders().get(".").docs;
    let ds = find(docs, "DaemonSet", "lattice-redirector");
    assert_eq!(str_at(ds, "/metadata/namespace"), "lattice-egress");
    let ns = find(docs, "Namespace", "lattice-egress");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged",
        "Pod Security admission must admit the privileged agent in its namespace"
    );

    // Rollout: one node at a time, never two agents on a node.
    assert_eq!(str_at(ds, "/spec/updateStrategy/type"), "RollingUpdate");
    let rolling = at(ds, "/spec/updateStrategy/rollingUpdate");
    assert_eq!(
        int_or_string(&rolling["maxSurge"]),
        "0",
        "maxSurge must be 0"
    );
    assert_eq!(int_or_string(&rolling["maxUnavailable"]), "1");

    let pod = at(ds, "/spec/template/spec");
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["serviceAccountName"], "lattice-redirector");
    assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(pod["terminationGracePeriodSeconds"], 10);
    assert!(
        list(pod, "/tolerations")
            .iter()
            .any(|t| t["operator"] == "Exists"
                && t.get("key").is_none()
                && t.get("effect").is_none()),
        "the agent must tolerate every taint: {}",
        pod["tolerations"]
    );
    let fargate_excluded = list(
        pod,
        "/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms",
    )
    .iter()
    .all(|term| {
        list(term, "/matchExpressions").iter().any(|e| {
            e["key"] == "eks.amazonaws.com/compute-type"
                && e["operator"] == "NotIn"
                && strings(&e["values"]) == ["fargate"]
        })
    });
    assert!(
        fargate_excluded && pod.pointer("/affinity/nodeAffinity").is_some(),
        "Fargate nodes must be excluded"
    );
    assert!(
        list(pod, "/initContainers").is_empty(),
        "the agent has no init container"
    );

    let agent = container(pod, "containers", "lattice-redirector");
    assert_eq!(agent["image"], AGENT_IMAGE);
    assert_eq!(agent["securityContext"]["privileged"], true);
    assert_eq!(agent["securityContext"]["readOnlyRootFilesystem"], true);
    for c in list(pod, "/containers") {
        assert!(
            c.pointer("/lifecycle/preStop").is_none(),
            "container {} has a preStop hook: the agent must never detach on a rollout",
            c["name"]
        );
    }

    // Command line.
    let argv: Vec<&str> = strings(&agent["command"])
        .into_iter()
        .chain(strings(&agent["args"]))
        .collect();
    assert_eq!(argv.first(), Some(&"/lattice-redirector"), "argv {argv:?}");
    assert_eq!(argv.get(1), Some(&"run"), "argv {argv:?}");
    assert!(argv.contains(&"--kubernetes"), "argv {argv:?}");
    let admin = flag_value(agent, "--admin-addr").expect("--admin-addr");
    let admin_port: u64 = admin
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("--admin-addr ADDR:PORT");
    assert_eq!(admin_port, 15090);

    // Environment: the node's name from the downward API, never the hostname.
    let env = |name: &str| {
        list(agent, "/env")
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no env {name}"))
    };
    assert_eq!(
        env("NODE_NAME").pointer("/valueFrom/fieldRef/fieldPath"),
        Some(&Value::from("spec.nodeName"))
    );
    assert_eq!(
        env("POD_UID").pointer("/valueFrom/fieldRef/fieldPath"),
        Some(&Value::from("metadata.uid"))
    );

    // Probes and the metrics port.
    assert_eq!(port_number(agent, &Value::from("metrics")), admin_port);
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = at(agent, &format!("/{probe}/httpGet"));
        assert_eq!(get["path"], "/healthz", "{probe}");
        assert_eq!(port_number(agent, &get["port"]), admin_port, "{probe}");
    }
    assert_eq!(agent["resources"]["requests"]["cpu"], "10m");
    assert_eq!(agent["resources"]["requests"]["memory"], "32Mi");
    assert_eq!(agent["resources"]["limits"]["memory"], "128Mi");

    // Mounts.
    let volume = |mount_path: &str| {
        let mount = list(agent, "/volumeMounts")
            .iter()
            .find(|m| m["mountPath"] == mount_path)
            .unwrap_or_else(|| panic!("nothing mounted at {mount_path}"));
        let vol = list(pod, "/volumes")
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume {}", mount["name"]));
        (mount, vol)
    };
    let (bpffs, bpffs_vol) = volume("/sys/fs/bpf");
    assert_eq!(bpffs["mountPropagation"], "Bidirectional");
    assert_ne!(bpffs["readOnly"], true, "the agent pins into bpffs");
    assert_eq!(bpffs_vol["hostPath"]["path"], "/sys/fs/bpf");
    assert_eq!(bpffs_vol["hostPath"]["type"], "DirectoryOrCreate");

    // By environment, so that commands run with `kubectl exec` inherit it.
    let cgroup_root = list(agent, "/env")
        .iter()
        .find(|e| e["name"] == "LATTICE_REDIRECTOR_CGROUP_ROOT")
        .and_then(|e| e["value"].as_str())
        .expect("LATTICE_REDIRECTOR_CGROUP_ROOT in the agent's env");
    let (cgroup, cgroup_vol) = volume(cgroup_root);
    assert_eq!(
        cgroup["readOnly"], true,
        "the node's cgroup root is mounted read-only"
    );
    assert_eq!(cgroup_vol["hostPath"]["path"], "/sys/fs/cgroup");

    // The configuration file is the ConfigMap's key, where --config says.
    let config = Path::new(flag_value(agent, "--config").expect("--config"));
    let (_, config_vol) = volume(
        config
            .parent()
            .and_then(Path::to_str)
            .expect("--config has a directory"),
    );
    let cm_name = str_at(config_vol, "/configMap/name");
    let cm = find(docs, "ConfigMap", cm_name);
    let key = config
        .file_name()
        .and_then(|f| f.to_str())
        .expect("file name");
    assert!(
        cm["data"].get(key).is_some(),
        "ConfigMap {cm_name} has no key {key} (--config {})",
        config.display()
    );
    assert_eq!(cm["metadata"]["namespace"], "lattice-egress");
}

#[test]
fn agent_rbac_is_get_list_watch_on_pods_and_nothing_else() {
    let renders = renders();
    let docs = &renders.get(".").docs;
    let role = find(docs, "ClusterRole", "lattice-redirector");
    let rules = list(role, "/rules");
    assert_eq!(rules.len(), 1, "exactly one rule: {}", role["rules"]);
    let rule = rules[0].as_object().expect("a rule is an object");
    let keys: BTreeSet<&str> = rule.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["apiGroups", "resources", "verbs"]),
        "no resourceNames or nonResourceURLs"
    );
    assert_eq!(strings(&rules[0]["apiGroups"]), [""]);
    assert_eq!(strings(&rules[0]["resources"]), ["pods"]);
    let verbs: BTreeSet<&str> = strings(&rules[0]["verbs"]).into_iter().collect();
    assert_eq!(verbs, BTreeSet::from(["get", "list", "watch"]));
    assert!(
        role.get("aggregationRule").is_none(),
        "an aggregated role would widen itself"
    );

    let binding = find(docs, "ClusterRoleBinding", "lattice-redirector");
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["roleRef"]["name"], "lattice-redirector");
    let subjects = list(binding, "/subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0]["kind"], "ServiceAccount");
    assert_eq!(subjects[0]["name"], "lattice-redirector");
    assert_eq!(subjects[0]["namespace"], "lattice-egress");
    find(docs, "ServiceAccount", "lattice-redirector");

    // No other grant anywhere in deploy/.
    for r in &renders.all {
        for d in &r.docs {
            let kind = d["kind"].as_str().unwrap_or_default();
            if matches!(
                kind,
                "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding"
            ) {
                assert!(
                    d["metadata"]["name"] == "lattice-redirector"
                        || d["metadata"]["name"] == "lattice-injector",
                    "{}: unexpected {kind} {}",
                    r.name,
                    d["metadata"]["name"]
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// App pods and the sidecar

/// The pod templates of workloads outside the agent's namespace, with their render.
fn app_pods() -> Vec<(&'static str, &'static Value)> {
    let mut pods = Vec::new();
    for r in &renders().all {
        for w in workloads(&r.docs) {
            if w["metadata"]["namespace"] != "lattice-egress" {
                pods.push((r.name.as_str(), w));
            }
        }
    }
    pods
}

fn opted_in(workload: &Value) -> bool {
    workload
        .pointer("/spec/template/metadata/annotations/lattice-egress.io~1inject")
        .and_then(Value::as_str)
        == Some("true")
}

/// Checks one opted-in pod: the native sidecar, its GID against the agent's configuration,
/// the app containers' GIDs, and that nothing in the pod holds a privilege.
fn check_opted_in_pod(source: &str, docs: &[Value], workload: &Value, gids: &AgentGids) {
    let what = format!("{source}: {}", describe(workload));
    let pod = at(workload, "/spec/template/spec");

    let inits = list(pod, "/initContainers");
    assert_eq!(
        inits.first().map(|c| &c["name"]),
        Some(&Value::from("lattice-proxy")),
        "{what}: lattice-proxy must be the first init container"
    );
    let proxy = &inits[0];
    assert_eq!(
        proxy["restartPolicy"], "Always",
        "{what}: lattice-proxy must be a native sidecar"
    );
    assert_eq!(proxy["image"], PROXY_IMAGE, "{what}");

    // The proxy's identity: never redirected, never the app's.
    let sc = &proxy["securityContext"];
    let proxy_gid = sc["runAsGroup"]
        .as_i64()
        .unwrap_or_else(|| panic!("{what}: lattice-proxy has no runAsGroup"));
    assert_eq!(
        proxy_gid, gids.proxy_gid,
        "{what}: the sidecar's GID must be the agent's proxy-gid"
    );
    assert!(
        !gids.redirects(proxy_gid),
        "{what}: the agent would redirect the proxy's own GID {proxy_gid}"
    );
    assert_eq!(sc["runAsUser"], 1337, "{what}");
    assert_eq!(sc["runAsNonRoot"], true, "{what}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{what}");
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{what}");

    // Admin address, probes and port agree.
    let admin = flag_value(proxy, "--admin").expect("lattice-proxy --admin");
    assert_eq!(admin, "0.0.0.0:15000", "{what}");
    // The startupProbe holds the app until the agent has enrolled the pod: the proxy's
    // redirect check must aim at the agent's check port.
    assert_eq!(
        flag_value(proxy, "--redirect-check"),
        Some(format!("127.0.0.1:{}", gids.canary_port).as_str()),
        "{what}: lattice-proxy --redirect-check must be the agent's canary-port on loopback"
    );
    assert_eq!(
        port_number(proxy, &Value::from("proxy-admin")),
        15000,
        "{what}"
    );
    for (probe, path) in [
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ] {
        let get = at(proxy, &format!("/{probe}/httpGet"));
        assert_eq!(get["path"], path, "{what}: {probe}");
        assert_eq!(port_number(proxy, &get["port"]), 15000, "{what}: {probe}");
    }
    assert_eq!(proxy["startupProbe"]["periodSeconds"], 1, "{what}");
    assert_eq!(proxy["startupProbe"]["failureThreshold"], 120, "{what}");
    assert_eq!(proxy["resources"]["requests"]["memory"], "16Mi", "{what}");
    assert_eq!(proxy["resources"]["limits"]["memory"], "64Mi", "{what}");

    // Its settings come from a ConfigMap that exists next to the workload.
    let from = list(proxy, "/envFrom");
    assert_eq!(from.len(), 1, "{what}: envFrom {}", proxy["envFrom"]);
    assert_eq!(from[0]["configMapRef"]["optional"], false, "{what}");
    let cm_name = str_at(&from[0], "/configMapRef/name");
    let cm = find(docs, "ConfigMap", cm_name);
    assert_eq!(
        cm["metadata"]["namespace"], workload["metadata"]["namespace"],
        "{what}: ConfigMap {cm_name} must be in the workload's namespace"
    );
    assert!(
        cm["data"]["AWS_REGION"].is_string(),
        "{what}: ConfigMap {cm_name} sets no AWS_REGION"
    );

    // Every other container is the app: its GID is redirected and is not the proxy's.
    let pod_gid = pod
        .pointer("/securityContext/runAsGroup")
        .and_then(Value::as_i64);
    for c in list(pod, "/containers").iter().chain(&inits[1..]) {
        let gid = c
            .pointer("/securityContext/runAsGroup")
            .and_then(Value::as_i64)
            .or(pod_gid)
            .unwrap_or_else(|| {
                panic!(
                    "{what}: container {} has no runAsGroup: the image's GID decides whether \
                     it is redirected (set the pod's securityContext.runAsGroup)",
                    c["name"]
                )
            });
        assert_ne!(gid, 0, "{what}: container {} runs as GID 0", c["name"]);
        assert_ne!(
            gid, proxy_gid,
            "{what}: container {} shares the proxy's GID: never redirected",
            c["name"]
        );
        assert!(
            gids.redirects(gid),
            "{what}: container {} runs as GID {gid}, which the agent does not redirect",
            c["name"]
        );
    }
}

/// No capability, privilege or host namespace in any container of an app pod.
fn check_unprivileged(what: &str, workload: &Value) {
    let pod = at(workload, "/spec/template/spec");
    for flag in ["hostNetwork", "hostPID", "hostIPC"] {
        assert_ne!(pod[flag], true, "{what}: {flag}");
    }
    assert!(
        list(pod, "/volumes")
            .iter()
            .all(|v| v.get("hostPath").is_none()),
        "{what}: an app pod mounts a hostPath"
    );
    for c in list(pod, "/containers")
        .iter()
        .chain(list(pod, "/initContainers"))
    {
        let sc = &c["securityContext"];
        assert_ne!(
            sc["privileged"], true,
            "{what}: {} is privileged",
            c["name"]
        );
        let added = strings(&sc["capabilities"]["add"]);
        assert!(
            added.is_empty(),
            "{what}: {} adds capabilities {added:?} (no NET_ADMIN, nothing)",
            c["name"]
        );
    }
}

#[test]
fn opted_in_app_pods_have_no_privilege_and_the_proxy_as_a_native_sidecar() {
    let gids = agent_gids();
    let mut checked = Vec::new();
    for (source, workload) in app_pods() {
        let what = format!("{source}: {}", describe(workload));
        check_unprivileged(&what, workload);
        if opted_in(workload) {
            check_opted_in_pod(source, &renders().get(source).docs, workload, &gids);
            checked.push(what);
        }
    }
    for expected in [
        "components/sidecar: Deployment/labelled",
        "components/sidecar: StatefulSet/stateful",
    ] {
        assert!(
            checked.iter().any(|c| c == expected),
            "{expected} was not opted in; opted in: {checked:?}"
        );
    }
}

#[test]
fn seed_examples_are_injected_by_namespace_and_meet_restricted() {
    for cluster in ["cluster1", "cluster2"] {
        let source = format!("examples/seed/{cluster}");
        let docs = &renders().get(&source).docs;
        let name = format!("demo-{cluster}-v1");
        let d = find(docs, "Deployment", &name);
        assert_eq!(d["metadata"]["namespace"], "apps");
        let pod = at(d, "/spec/template/spec");
        // lattice-injector adds the sidecar at pod creation (the demo and
        // injector/tests/admission.rs check what it adds): the template has none, and no
        // other init container either.
        assert!(
            list(pod, "/initContainers").is_empty(),
            "{source}: the seed's pods get lattice-proxy from the injector, not the template"
        );
        let ns = find(docs, "Namespace", "apps");
        assert_eq!(
            ns["metadata"]["labels"]["lattice-egress.io/inject"], "enabled",
            "{source}: the apps namespace opts its pods in to the injector"
        );
        // Set in the example itself (the injector would set it only when unset; the
        // component cannot set it at all).
        assert_eq!(pod["securityContext"]["runAsGroup"], 1000, "{source}");
        assert_eq!(pod["securityContext"]["runAsUser"], 1000, "{source}");
        let sa = str_at(pod, "/serviceAccountName");
        find(docs, "ServiceAccount", sa);

        // Pod Security "restricted" in the apps namespace: check what it requires.
        let ns = find(docs, "Namespace", "apps");
        assert_eq!(
            ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
            "restricted"
        );
        for c in list(pod, "/containers")
            .iter()
            .chain(list(pod, "/initContainers"))
        {
            let sc = &c["securityContext"];
            let what = format!("{source}: container {}", c["name"]);
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
            assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{what}");
            let non_root =
                sc["runAsNonRoot"] == true || pod["securityContext"]["runAsNonRoot"] == true;
            assert!(non_root, "{what}: runAsNonRoot");
            let seccomp = sc["seccompProfile"]["type"]
                .as_str()
                .or(pod["securityContext"]["seccompProfile"]["type"].as_str());
            assert_eq!(seccomp, Some("RuntimeDefault"), "{what}");
        }
    }
}

#[test]
fn sidecar_component_patches_only_labelled_workloads_and_goes_first() {
    let docs = &renders().get("components/sidecar").docs;
    let labelled = find(docs, "Deployment", "labelled");
    let inits: Vec<&str> = list(labelled, "/spec/template/spec/initContainers")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        inits,
        ["lattice-proxy", "migrate"],
        "the workload's own init container is kept, after the proxy"
    );
    assert!(opted_in(find(docs, "StatefulSet", "stateful")));

    let untouched = find(docs, "Deployment", "not-opted-in");
    assert!(
        !opted_in(untouched),
        "a workload without the label got the annotation"
    );
    assert!(
        list(untouched, "/spec/template/spec/initContainers").is_empty(),
        "a workload without the label got the sidecar"
    );
}

// ---------------------------------------------------------------------------------------
// The injector webhook

#[test]
fn injector_webhook_rbac_and_deployment_are_what_the_readme_says() {
    let docs = &renders().get(".").docs;
    let webhook = find(docs, "MutatingWebhookConfiguration", "lattice-injector");
    let service = find(docs, "Service", "lattice-injector");
    assert_eq!(service["metadata"]["namespace"], "lattice-egress");
    let entries = list(webhook, "/webhooks");
    let names: Vec<&str> = entries.iter().filter_map(|w| w["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "namespace.inject.lattice-egress.io",
            "pod.inject.lattice-egress.io"
        ]
    );
    for (w, path, ns_operator) in [
        (&entries[0], "/mutate/namespace", "In"),
        (&entries[1], "/mutate/pod", "NotIn"),
    ] {
        let what = str_at(w, "/name");
        assert_eq!(w["failurePolicy"], "Fail", "{what}");
        assert_eq!(w["sideEffects"], "None", "{what}");
        assert_eq!(w["timeoutSeconds"], 5, "{what}");
        assert_eq!(strings(&w["admissionReviewVersions"]), ["v1"], "{what}");
        assert_eq!(w["reinvocationPolicy"], "IfNeeded", "{what}");
        assert!(
            w["clientConfig"].get("caBundle").is_none(),
            "{what}: caBundle is published at run time"
        );
        let svc = &w["clientConfig"]["service"];
        assert_eq!(svc["name"], service["metadata"]["name"], "{what}");
        assert_eq!(svc["namespace"], "lattice-egress", "{what}");
        assert_eq!(svc["path"], path, "{what}");
        assert!(
            list(service, "/spec/ports")
                .iter()
                .any(|p| p["port"] == svc["port"]),
            "{what}: port {} not on the Service",
            svc["port"]
        );
        let rules = list(w, "/rules");
        assert_eq!(rules.len(), 1, "{what}");
        assert_eq!(strings(&rules[0]["operations"]), ["CREATE"], "{what}");
        assert_eq!(strings(&rules[0]["resources"]), ["pods"], "{what}");
        let exprs = list(w, "/namespaceSelector/matchExpressions");
        assert!(
            exprs
                .iter()
                .any(|e| e["key"] == "kubernetes.io/metadata.name"
                    && e["operator"] == "NotIn"
                    && strings(&e["values"]) == ["kube-system", "lattice-egress"]),
            "{what}: kube-system and lattice-egress must be excluded: {exprs:?}"
        );
        assert!(
            exprs.iter().any(|e| e["key"] == "lattice-egress.io/inject"
                && e["operator"] == ns_operator
                && strings(&e["values"]) == ["enabled"]),
            "{what}: the namespace label split: {exprs:?}"
        );
    }

    // RBAC: get and patch of its own webhook configuration, by name, nothing else.
    let role = find(docs, "ClusterRole", "lattice-injector");
    let rules = list(role, "/rules");
    assert_eq!(rules.len(), 1, "{}", role["rules"]);
    assert_eq!(
        strings(&rules[0]["apiGroups"]),
        ["admissionregistration.k8s.io"]
    );
    assert_eq!(
        strings(&rules[0]["resources"]),
        ["mutatingwebhookconfigurations"]
    );
    assert_eq!(strings(&rules[0]["resourceNames"]), ["lattice-injector"]);
    let verbs: BTreeSet<&str> = strings(&rules[0]["verbs"]).into_iter().collect();
    assert_eq!(verbs, BTreeSet::from(["get", "patch"]));
    let binding = find(docs, "ClusterRoleBinding", "lattice-injector");
    assert_eq!(binding["roleRef"]["name"], "lattice-injector");
    let subjects = list(binding, "/subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0]["name"], "lattice-injector");
    assert_eq!(subjects[0]["namespace"], "lattice-egress");

    // Two unprivileged replicas under a PodDisruptionBudget, serving the Service's port.
    let d = find(docs, "Deployment", "lattice-injector");
    assert_eq!(d["spec"]["replicas"], 2);
    check_unprivileged("Deployment/lattice-injector", d);
    let pod = at(d, "/spec/template/spec");
    assert_eq!(pod["serviceAccountName"], "lattice-injector");
    let c = container(pod, "containers", "lattice-injector");
    assert_eq!(c["image"], INJECTOR_IMAGE);
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let args = strings(&c["args"]);
    assert!(
        args.contains(&"--webhook-config=lattice-injector"),
        "{args:?}"
    );
    assert!(args.contains(&"--service=lattice-injector"), "{args:?}");
    let target = &list(service, "/spec/ports")[0]["targetPort"];
    assert!(
        list(c, "/ports").iter().any(|p| &p["name"] == target),
        "the Service's targetPort {target} is not a container port"
    );
    let labels = &pod_labels(d);
    assert_eq!(
        &service["spec"]["selector"], labels,
        "the Service selects the injector's pods"
    );
    let pdb = find(docs, "PodDisruptionBudget", "lattice-injector");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    // The settings file is mounted from the generated ConfigMap.
    let cm = str_at(pod, "/volumes/0/configMap/name");
    assert!(cm.starts_with("lattice-injector-settings-"), "{cm}");
    let cm = find(docs, "ConfigMap", cm);
    assert!(cm["data"]["injector.toml"]
        .as_str()
        .unwrap_or_default()
        .contains(PROXY_IMAGE));
}

/// The labels the Service and the PodDisruptionBudget select the injector by.
fn pod_labels(deployment: &Value) -> Value {
    let labels = at(deployment, "/spec/template/metadata/labels");
    serde_json::json!({"app.kubernetes.io/name": labels["app.kubernetes.io/name"]})
}

// ---------------------------------------------------------------------------------------
// The seed's AWS side

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The session EKS Pod Identity gives a pod of `association`, with its session tags.
fn pod_identity(association: &Value) -> Identity {
    let role_arn = str_at(association, "/roleArn");
    let (account, role) = role_arn
        .strip_prefix("arn:aws:iam::")
        .and_then(|r| r.split_once(":role/"))
        .unwrap_or_else(|| panic!("roleArn {role_arn} is not arn:aws:iam::<acct>:role/<name>"));
    assert!(
        account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()),
        "{role_arn}"
    );
    let cluster = str_at(association, "/clusterName");
    let namespace = str_at(association, "/namespace");
    let sa = str_at(association, "/serviceAccount");
    Identity {
        account_id: account.to_owned(),
        role_name: role.to_owned(),
        role_path: "/".to_owned(),
        session_name: format!("eks-{cluster}-pod-0a1b2c3d"),
        tags: BTreeMap::from([
            ("eks-cluster-name".to_owned(), cluster.to_owned()),
            ("kubernetes-namespace".to_owned(), namespace.to_owned()),
            ("kubernetes-service-account".to_owned(), sa.to_owned()),
            ("kubernetes-pod-name".to_owned(), format!("{sa}-0a1b2c3d")),
        ]),
    }
}

#[test]
fn seed_aws_files_agree_with_the_manifests_and_the_seed_outcomes() {
    let seed = deploy_dir().join("examples/seed");
    let trust = read_json(&seed.join("iam-role-trust-policy.json"));
    let statements = list(&trust, "/Statement");
    assert!(
        statements.iter().any(|s| {
            s["Effect"] == "Allow"
                && s["Principal"]["Service"] == "pods.eks.amazonaws.com"
                && strings(&s["Action"]).contains(&"sts:AssumeRole")
                && strings(&s["Action"]).contains(&"sts:TagSession")
        }),
        "the role must trust EKS Pod Identity with sts:AssumeRole and sts:TagSession (the \
         session tags are what the auth policies check): {trust}"
    );
    read_json(&seed.join("iam-role-policy.json"));

    let mut associations = BTreeMap::new();
    for cluster in ["cluster1", "cluster2"] {
        let dir = seed.join(cluster);
        let assoc = read_json(&dir.join("pod-identity-association.json"));
        assert_eq!(assoc["clusterName"], format!("eks-{cluster}"));
        // The association names what the manifests create.
        let docs = &renders().get(&format!("examples/seed/{cluster}")).docs;
        let deployment = find(docs, "Deployment", &format!("demo-{cluster}-v1"));
        assert_eq!(assoc["namespace"], deployment["metadata"]["namespace"]);
        assert_eq!(
            assoc["serviceAccount"],
            deployment["spec"]["template"]["spec"]["serviceAccountName"]
        );
        // AWS files are not Kubernetes objects: never in the kustomization.
        let kustomization =
            std::fs::read_to_string(dir.join("kustomization.yaml")).expect("kustomization");
        assert!(
            !kustomization.contains(".json"),
            "{cluster}: a JSON file is listed in kustomization.yaml"
        );
        associations.insert(cluster, assoc);
    }

    // Each service's policy: the other cluster's apps are allowed, the own cluster's and
    // another namespace are not (the seed's four outcomes).
    for (cluster, other) in [("cluster1", "cluster2"), ("cluster2", "cluster1")] {
        let path = seed.join(cluster).join("lattice-auth-policy.json");
        let policy = AuthPolicy::from_value(&read_json(&path))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let resource = format!(
            "arn:aws:vpc-lattice:us-west-2:111122223333:service/svc-0d3e0c1a55e1{cluster}/"
        );
        let decide = |identity: Identity| {
            let ctx = RequestContext::for_principal(
                Some(Arc::new(identity)),
                "vpc-lattice-svcs:Invoke",
                &resource,
            );
            policy.evaluate(&ctx)
        };
        assert_eq!(
            decide(pod_identity(&associations[other])),
            Decision::Allow,
            "{cluster}'s service must allow eks-{other}'s apps"
        );
        assert_ne!(
            decide(pod_identity(&associations[cluster])),
            Decision::Allow,
            "{cluster}'s service must deny its own cluster's apps (the seed's denied call)"
        );
        let mut elsewhere = associations[other].clone();
        elsewhere["namespace"] = Value::from("default");
        assert_ne!(
            decide(pod_identity(&elsewhere)),
            Decision::Allow,
            "{cluster}'s service must deny eks-{other} outside the apps namespace"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Uninstall

#[test]
fn uninstall_job_template_detaches_on_one_node_as_the_readme_says() {
    let render = renders().get("uninstall");
    let job = find(
        &render.docs,
        "Job",
        "lattice-redirector-uninstall-REPLACE_WITH_INDEX",
    );
    assert_eq!(job["metadata"]["namespace"], "lattice-egress");
    let pod = at(job, "/spec/template/spec");
    assert_eq!(pod["nodeName"], "REPLACE_WITH_NODE_NAME");
    assert_eq!(pod["restartPolicy"], "Never");
    assert!(list(pod, "/tolerations")
        .iter()
        .any(|t| t["operator"] == "Exists" && t.get("key").is_none()));
    let c = container(pod, "containers", "uninstall");
    assert_eq!(c["image"], AGENT_IMAGE);
    let argv: Vec<&str> = strings(&c["command"])
        .into_iter()
        .chain(strings(&c["args"]))
        .collect();
    assert_eq!(argv, ["/lattice-redirector", "uninstall"]);
    assert_eq!(c["securityContext"]["privileged"], true);
    let mount = list(c, "/volumeMounts")
        .iter()
        .find(|m| m["mountPath"] == "/sys/fs/bpf")
        .expect("bpffs mounted at /sys/fs/bpf");
    let vol = list(pod, "/volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("bpffs volume");
    assert_eq!(vol["hostPath"]["path"], "/sys/fs/bpf");

    // The README's loop replaces both placeholders; with a long EKS node name the result
    // is still a valid Job name and node name.
    let readme = std::fs::read_to_string(deploy_dir().join("README.md")).expect("deploy/README.md");
    for placeholder in ["REPLACE_WITH_NODE_NAME", "REPLACE_WITH_INDEX"] {
        assert!(
            readme.contains(&format!("s/{placeholder}/")),
            "deploy/README.md does not replace {placeholder}"
        );
    }
    let node = "ip-192-168-100-200.eu-south-2.compute.internal";
    let filled = render
        .yaml
        .replace("REPLACE_WITH_NODE_NAME", node)
        .replace("REPLACE_WITH_INDEX", "999");
    let job = parse_docs(&filled).remove(0);
    let name = str_at(&job, "/metadata/name");
    assert!(name.len() <= 63, "Job name {name} is longer than 63");
    assert_eq!(job["spec"]["template"]["spec"]["nodeName"], node);
}
