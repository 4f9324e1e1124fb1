//! End to end: the Kubernetes variant of the two-cluster demo (`cargo xtask demo
//! --kubernetes`, see `lattice_tests::demo`): every pod comes from a Kubernetes API (a fake
//! API server per cluster, pods built from the rendered deploy/examples/seed Deployments),
//! kubelet-like cgroup trees (systemd driver on cluster1, cgroupfs on cluster2), one real
//! lattice-redirector per cluster in Kubernetes mode started as deploy/base/daemonset.yaml
//! starts it, the real lattice-proxy. Asserts the seed's four outcomes, then that a pod
//! deleted from the API server is unenrolled and its app's calls are no longer redirected.
//!
//! Needs root (network namespaces, cgroups, eBPF) and kubectl: it fails, never skips,
//! without them. The redirector and proxy binaries are taken from the cargo output directory
//! of this test (build them first with `cargo build -p lattice-redirector -p
//! lattice-proxy`). Names carry this process's id; everything is removed at the end, pass or
//! fail.

use std::path::{Path, PathBuf};

use lattice_tests::demo::{kube, Binaries, Expect, Mode, Scenario, Settings, CLUSTERS};

#[test]
fn two_clusters_with_every_pod_from_the_kubernetes_api() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root (network namespaces, cgroups, eBPF): run it with sudo"
    );
    let emulator = PathBuf::from(env!("CARGO_BIN_EXE_lattice-emulator"));
    let bin_dir = emulator.parent().expect("binaries live in a directory");
    let bins = Binaries {
        redirector: required(bin_dir, "lattice-redirector"),
        proxy: required(bin_dir, "lattice-proxy"),
        emulator: emulator.clone(),
        app: PathBuf::from(env!("CARGO_BIN_EXE_demo-app")),
        kube_api: PathBuf::from(env!("CARGO_BIN_EXE_demo-kube-api")),
        injector: required(bin_dir, "lattice-injector"),
    };
    let prefix = format!("le-e2ek-{}", std::process::id());
    let state_dir = std::env::temp_dir().join(&prefix);
    let mut scenario = Scenario::up(Settings {
        prefix,
        state_dir: state_dir.clone(),
        bins,
        mode: Mode::kubernetes(),
    })
    .unwrap_or_else(|e| panic!("the scenario did not come up: {e:#}"));
    let logs = state_dir.join("logs");

    // The pods as the API server holds them and the kubelets run them.
    let cgroup2 = scenario.names().cgroup2().to_path_buf();
    let mut pod_names = Vec::new();
    for c in CLUSTERS {
        let pod = scenario
            .pod(c)
            .expect("the Kubernetes variant plans a pod per cluster");
        let prefix = format!("{}-", c.version());
        assert!(pod.name.starts_with(&prefix), "{}", pod.name);
        assert_eq!(pod.namespace, "apps");
        // The seed's containers request cpu and memory but limit memory only: Burstable.
        assert_eq!(pod.qos, kube::QosClass::Burstable, "{}", pod.qos_reason);
        assert_eq!(pod.object["status"]["qosClass"], "Burstable");
        assert_eq!(pod.object["spec"]["nodeName"], c.node_name());
        check_injected(&pod.object, &format!("{}'s pod", c.name()));
        // The injector answered exactly this one review, with the sidecar.
        let admin = scenario
            .injector_admin(c)
            .expect("the injector's admin address");
        let (_, metrics) = kube::http_request(admin, "GET", "/metrics", "").unwrap();
        assert_eq!(
            kube::metric(
                &metrics,
                "lattice_injector_admissions_total{result=\"injected\"}"
            ),
            Some(1),
            "{}'s injector:\n{metrics}",
            c.name()
        );
        assert_eq!(
            kube::metric(&metrics, "lattice_injector_ca_published"),
            Some(1),
            "{metrics}"
        );
        let pod_cgroup = pod
            .cgroup
            .strip_prefix(scenario.names().kubelet_root(c))
            .expect("the pod cgroup is under the cluster's kubelet root")
            .to_path_buf();
        let expected = match c.n {
            1 => PathBuf::from(format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
                pod.uid.replace('-', "_")
            )),
            _ => PathBuf::from(format!("kubepods/burstable/pod{}", pod.uid)),
        };
        assert_eq!(pod_cgroup, expected);
        let app_leaf = pod.app.cgroup.file_name().unwrap().to_str().unwrap();
        match c.n {
            1 => assert_eq!(app_leaf, format!("cri-containerd-{}.scope", pod.app.id)),
            _ => assert_eq!(app_leaf, pod.app.id),
        }
        // The app runs in its container's cgroup.
        let app_pids = std::fs::read_to_string(pod.app.cgroup.join("cgroup.procs")).unwrap();
        assert!(
            !app_pids.trim().is_empty(),
            "no process in {}",
            pod.app.cgroup.display()
        );
        let log =
            std::fs::read_to_string(logs.join(format!("{}-redirector.log", c.name()))).unwrap();
        let key = format!("pod=apps/{}", pod.name);
        let waited = log
            .lines()
            .position(|l| l.contains("pod waits for its cgroup") && l.contains(&key));
        let enrolled = log
            .lines()
            .position(|l| l.contains("pod enrolled") && l.contains(&key));
        assert!(
            matches!((waited, enrolled), (Some(w), Some(e)) if w < e),
            "{}'s agent saw the pod before its cgroup, then enrolled it:\n{log}",
            c.name()
        );
        let enrolled_line = log.lines().nth(enrolled.unwrap()).unwrap();
        assert!(
            enrolled_line.contains(&format!("cgroup={}", pod.cgroup.display())),
            "{enrolled_line}"
        );
        assert!(pod.cgroup.starts_with(&cgroup2));
        pod_names.push(pod.name.clone());
    }

    let mut checks = scenario
        .run_checks()
        .unwrap_or_else(|e| panic!("the checks could not run: {e:#}"));
    checks.push(
        scenario
            .run_unenroll_check()
            .unwrap_or_else(|e| panic!("the fifth check could not run: {e:#}")),
    );
    drop(scenario);

    assert_eq!(checks.len(), 5);
    for check in &checks {
        assert!(
            check.ok,
            "{} -> {}: expected {}, got:\n{}\n({}; command: {}; logs in {})",
            check.from.name(),
            check.to.host(),
            check.expected_text(),
            check.output,
            check.detail,
            check.command,
            logs.display()
        );
    }
    for (from, own_pod) in CLUSTERS.iter().zip(&pod_names) {
        let allowed = checks
            .iter()
            .find(|c| c.from == *from && c.expect == Expect::Allowed)
            .expect("one allowed call per cluster");
        assert_eq!(allowed.to, from.other());
        let other_pod = &pod_names[usize::from(from.other().n) - 1];
        assert_eq!(
            allowed.output,
            format!(
                "Requsting to Pod({other_pod}): Hello from {}",
                from.other().version()
            )
        );
        assert_ne!(own_pod, other_pod);
        let denied = checks
            .iter()
            .find(|c| c.from == *from && c.expect == Expect::Denied)
            .expect("one denied call per cluster");
        assert_eq!(denied.to, *from);
        assert!(
            denied.output.starts_with(&format!(
                "AccessDeniedException: User: arn:aws:sts::111122223333:assumed-role/eks-{}-pod-identity-role/",
                from.name()
            )),
            "{}",
            denied.output
        );
    }
    let fifth = &checks[4];
    assert_eq!(fifth.expect, Expect::NotRedirected);
    assert_eq!((fifth.from, fifth.to), (CLUSTERS[0], CLUSTERS[1]));
    assert!(
        fifth
            .output
            .starts_with("AccessDeniedException: User: anonymous is not authorized"),
        "{}",
        fifth.output
    );
    let log = std::fs::read_to_string(logs.join("cluster1-redirector.log")).unwrap();
    assert!(
        log.lines().any(|l| l.contains("pod unenrolled: deleted")
            && l.contains(&format!("pod=apps/{}", pod_names[0]))),
        "{log}"
    );
    // cluster2's agent never unenrolled anything.
    let log2 = std::fs::read_to_string(logs.join("cluster2-redirector.log")).unwrap();
    assert!(!log2.contains("pod unenrolled"), "{log2}");
    // Torn down: no cgroup, pin or namespace left.
    let names =
        lattice_tests::demo::Names::new(&format!("le-e2ek-{}", std::process::id())).unwrap();
    assert!(!names.leftovers_exist(), "the teardown left something");
    let _ = std::fs::remove_dir_all(&state_dir);
}

/// What lattice-injector added to a seed pod, whose template has no sidecar: lattice-proxy
/// first among the init containers, a native sidecar running as 1337, the opt-in annotation
/// the agent selects by, and every container within Pod Security "restricted" (the apps
/// namespace enforces it).
fn check_injected(pod: &serde_json::Value, what: &str) {
    let inits = pod["spec"]["initContainers"]
        .as_array()
        .expect("init containers");
    let proxy = &inits[0];
    assert_eq!(proxy["name"], "lattice-proxy", "{what}: {pod}");
    assert_eq!(proxy["restartPolicy"], "Always", "{what}");
    assert_eq!(proxy["securityContext"]["runAsGroup"], 1337, "{what}");
    assert_eq!(
        pod["metadata"]["annotations"]["lattice-egress.io/inject"], "true",
        "{what}"
    );
    let spec_sc = &pod["spec"]["securityContext"];
    for c in inits
        .iter()
        .chain(pod["spec"]["containers"].as_array().unwrap())
    {
        let sc = &c["securityContext"];
        let who = format!("{what}: container {}", c["name"]);
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{who}");
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{who}"
        );
        assert!(
            sc["runAsNonRoot"] == true || spec_sc["runAsNonRoot"] == true,
            "{who}: runAsNonRoot"
        );
        let seccomp = if sc["seccompProfile"]["type"].is_string() {
            &sc["seccompProfile"]["type"]
        } else {
            &spec_sc["seccompProfile"]["type"]
        };
        assert_eq!(seccomp, "RuntimeDefault", "{who}");
    }
}

fn required(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first with `cargo build -p lattice-redirector -p lattice-proxy` \
         (the redirector needs `cargo xtask build-ebpf` once before)",
        path.display()
    );
    path
}
