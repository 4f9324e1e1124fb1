//! The Kubernetes side of `lattice-demo --kubernetes`: what a control plane and a kubelet
//! would do, reduced to what the node agent can observe.
//!
//! - [`kustomize`] renders a directory of `deploy/` with `kubectl kustomize`;
//! - [`PodRequest::from_deployment`] builds the Pod a ReplicaSet of that Deployment asks the
//!   API server to create: name `<deployment>-<pod-template-hash>-<5 chars>`, a fresh uid,
//!   the template's labels, annotations and spec with `nodeName`; the API server admits it
//!   (lattice-injector adds the sidecar), then [`prepare_for_create`] does what it does to
//!   a created pod: container requests defaulted to limits, and `status.qosClass` computed
//!   as Kubernetes computes it ([`qos_class`]);
//! - [`PodPlan::from_admitted`] plans how kubelet runs the stored pod;
//! - [`Kubelet`] lays out kubelet's cgroups for one driver (systemd or cgroupfs) under a
//!   cgroupRoot of the demo's own subtree: the QoS parents at start, then per pod the pod
//!   cgroup and one cgroup per container, named as containerd names them;
//! - [`Invocation::from_workload`] turns the rendered DaemonSet (or the injector's
//!   Deployment) into the command line and environment of its process, with each
//!   host-specific value (volume mounts, downward API, listening addresses) replaced and
//!   said so;
//! - [`ApiControl`] is the client of `demo-kube-api`, the process that serves one cluster's
//!   Pods with [`crate::kube_api::FakeApiServer`] and takes the changes other clients of the
//!   cluster would make (the ReplicaSet controller creating a pod, `kubectl delete pod`) on a
//!   small control port that mirrors the API's paths.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};

/// Renders `dir` with `kubectl kustomize` and returns its objects.
pub fn kustomize(dir: &Path) -> Result<Vec<Value>> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .context(
            "cannot run `kubectl` (the Kubernetes demo renders deploy/ with `kubectl \
             kustomize`; install kubectl 1.27 or newer)",
        )?;
    if !out.status.success() {
        bail!(
            "`kubectl kustomize {}` failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8(out.stdout).context("kubectl printed something not UTF-8")?;
    let mut objects = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = Value::deserialize(doc).with_context(|| {
            format!("reading what `kubectl kustomize {}` printed", dir.display())
        })?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

/// The object of `kind` named `name` among `objects`.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .with_context(|| format!("the rendered manifests have no {kind} {name}"))
}

/// A pod's QoS class, as `status.qosClass` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    /// Every container has CPU and memory limits, and requests equal to limits.
    Guaranteed,
    /// Some request or limit, not Guaranteed.
    Burstable,
    /// No CPU or memory request or limit anywhere.
    BestEffort,
}

impl QosClass {
    /// `Guaranteed`, `Burstable`, `BestEffort`.
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

/// The resources QoS is computed from (kubernetes `pkg/apis/core/helper/qos`:
/// `isSupportedQoSComputeResource`).
const QOS_RESOURCES: [&str; 2] = ["cpu", "memory"];

/// The QoS class of a pod with this (defaulted, see [`default_requests`]) spec, as the API
/// server computes it at creation (kubernetes `pkg/apis/core/helper/qos/qos.go`
/// `ComputePodQOS`, without pod-level resources): requests and limits of cpu and memory are
/// summed over the containers and the init containers (native sidecars included); the pod is
/// BestEffort when there is none at all, Guaranteed when every container has both limits and
/// the summed requests equal the summed limits, Burstable otherwise. Zero quantities count as
/// absent. Also returns the reason, in words.
pub fn qos_class(spec: &Value) -> Result<(QosClass, String)> {
    if !spec["resources"].is_null() {
        bail!("pod-level resources (spec.resources) are not handled by the demo's QoS computation");
    }
    let mut requests: BTreeMap<&str, i128> = BTreeMap::new();
    let mut limits: BTreeMap<&str, i128> = BTreeMap::new();
    let mut guaranteed = true;
    let mut why_not = Vec::new();
    let containers = spec["containers"]
        .as_array()
        .into_iter()
        .chain(spec["initContainers"].as_array())
        .flatten();
    for c in containers {
        let name = c["name"].as_str().unwrap_or("?");
        let mut found_limits = Vec::new();
        for (kind, sums) in [("requests", &mut requests), ("limits", &mut limits)] {
            for resource in QOS_RESOURCES {
                let Some(q) = c["resources"][kind][resource]
                    .as_str()
                    .map(str::to_owned)
                    .or_else(|| {
                        c["resources"][kind][resource]
                            .as_f64()
                            .map(|n| n.to_string())
                    })
                else {
                    continue;
                };
                let n = parse_quantity(&q)
                    .with_context(|| format!("container {name}: {kind}.{resource}: '{q}'"))?;
                if n > 0 {
                    *sums.entry(resource).or_insert(0) += n;
                    if kind == "limits" {
                        found_limits.push(resource);
                    }
                }
            }
        }
        if found_limits.len() != QOS_RESOURCES.len() {
            guaranteed = false;
            let missing: Vec<&str> = QOS_RESOURCES
                .iter()
                .filter(|r| !found_limits.contains(r))
                .copied()
                .collect();
            why_not.push(format!("{name} has no {} limit", missing.join("/")));
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return Ok((
            QosClass::BestEffort,
            "no container requests or limits cpu or memory".into(),
        ));
    }
    if guaranteed {
        for (resource, request) in &requests {
            if limits.get(resource) != Some(request) {
                guaranteed = false;
                why_not.push(format!("the {resource} requests differ from the limits"));
            }
        }
    }
    if guaranteed && requests.len() == limits.len() {
        return Ok((
            QosClass::Guaranteed,
            "every container's cpu and memory requests equal its limits".into(),
        ));
    }
    Ok((QosClass::Burstable, why_not.join(", ")))
}

/// A resource quantity (`10m`, `32Mi`, `1.5`, `2e3`, `1G`) in billionths of its unit, rounded
/// up (kubernetes `resource.Quantity`; precision below 1n does not matter for QoS).
pub fn parse_quantity(s: &str) -> Result<i128> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let (negative, number) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number.strip_prefix('+').unwrap_or(number)),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty())
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        bail!("'{s}' is not a quantity");
    }
    let digits = format!("{whole}{fraction}");
    let mantissa: i128 = digits
        .parse()
        .with_context(|| format!("'{s}' has too many digits"))?;
    // value = mantissa * 2^pow2 * 10^pow10; in nano units, 10^(pow10 + 9).
    let (pow2, pow10): (u32, i32) = match suffix {
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "" => (0, 0),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        e if e.starts_with(['e', 'E']) => (
            0,
            e[1..]
                .parse()
                .with_context(|| format!("'{s}' has a bad exponent"))?,
        ),
        other => bail!("'{s}': unknown suffix '{other}'"),
    };
    let exp10 = pow10 + 9 - fraction.len() as i32;
    let overflow = || anyhow::anyhow!("'{s}' is too large");
    let scaled = mantissa.checked_mul(1i128 << pow2).ok_or_else(overflow)?;
    let value = if exp10 >= 0 {
        scaled
            .checked_mul(10i128.checked_pow(exp10 as u32).ok_or_else(overflow)?)
            .ok_or_else(overflow)?
    } else {
        let div = 10i128
            .checked_pow(exp10.unsigned_abs())
            .ok_or_else(overflow)?;
        (scaled + div - 1) / div
    };
    Ok(if negative { -value } else { value })
}

/// The API server's defaulting of a Pod (kubernetes `pkg/apis/core/v1/defaults.go`
/// `SetDefaults_Pod`): a container (or init container) with a limit but no request for a
/// resource gets the limit as its request. It applies to Pods, not to pod templates, so a
/// Deployment's template does not show it; it changes the QoS class of a pod that sets only
/// limits.
pub fn default_requests(spec: &mut Value) {
    for list in ["containers", "initContainers"] {
        let Some(containers) = spec[list].as_array_mut() else {
            continue;
        };
        for c in containers {
            let Some(limits) = c["resources"]["limits"].as_object().cloned() else {
                continue;
            };
            let requests = &mut c["resources"]["requests"];
            if !requests.is_object() {
                *requests = json!({});
            }
            let requests = requests.as_object_mut().expect("made an object above");
            for (name, value) in limits {
                requests.entry(name).or_insert(value);
            }
        }
    }
}

/// kubelet's cgroup driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// systemd slices and scopes (EKS AL2023, Bottlerocket).
    Systemd,
    /// Plain directories.
    Cgroupfs,
}

impl Driver {
    /// `systemd`, `cgroupfs`.
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Systemd => "systemd",
            Driver::Cgroupfs => "cgroupfs",
        }
    }
}

/// One node's kubelet, as far as cgroups go: the tree it keeps under its cgroupRoot.
#[derive(Debug, Clone)]
pub struct Kubelet {
    /// The driver the tree is named for.
    pub driver: Driver,
    /// kubelet's cgroupRoot, absolute (under the cgroup2 mount).
    pub root: PathBuf,
}

impl Kubelet {
    /// The parent of the pods of class `qos` (kubelet's QoS cgroups).
    pub fn qos_parent(&self, qos: QosClass) -> PathBuf {
        let rel = match (self.driver, qos) {
            (Driver::Systemd, QosClass::Guaranteed) => "kubepods.slice",
            (Driver::Systemd, QosClass::Burstable) => "kubepods.slice/kubepods-burstable.slice",
            (Driver::Systemd, QosClass::BestEffort) => "kubepods.slice/kubepods-besteffort.slice",
            (Driver::Cgroupfs, QosClass::Guaranteed) => "kubepods",
            (Driver::Cgroupfs, QosClass::Burstable) => "kubepods/burstable",
            (Driver::Cgroupfs, QosClass::BestEffort) => "kubepods/besteffort",
        };
        self.root.join(rel)
    }

    /// What kubelet creates at start, before any pod: kubepods and the QoS cgroups.
    pub fn start_dirs(&self) -> Vec<PathBuf> {
        [
            QosClass::Guaranteed,
            QosClass::Burstable,
            QosClass::BestEffort,
        ]
        .iter()
        .map(|q| self.qos_parent(*q))
        .collect()
    }

    /// The pod cgroup of pod `uid` of class `qos` (kubelet `pkg/kubelet/cm`).
    pub fn pod_cgroup(&self, qos: QosClass, uid: &str) -> PathBuf {
        let name = match (self.driver, qos) {
            (Driver::Systemd, QosClass::Guaranteed) => {
                format!("kubepods-pod{}.slice", uid.replace('-', "_"))
            }
            (Driver::Systemd, QosClass::Burstable) => {
                format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_"))
            }
            (Driver::Systemd, QosClass::BestEffort) => {
                format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_"))
            }
            (Driver::Cgroupfs, _) => format!("pod{uid}"),
        };
        self.qos_parent(qos).join(name)
    }

    /// The cgroup containerd gives container `id` of a pod: a `cri-containerd-<id>.scope`
    /// unit with the systemd driver, a directory named by the id with cgroupfs.
    pub fn container_cgroup(&self, pod_cgroup: &Path, id: &str) -> PathBuf {
        match self.driver {
            Driver::Systemd => pod_cgroup.join(format!("cri-containerd-{id}.scope")),
            Driver::Cgroupfs => pod_cgroup.join(id),
        }
    }
}

/// One container of a planned pod.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    /// Its name in the pod spec.
    pub name: String,
    /// Its container id (64 hex digits, as containerd's).
    pub id: String,
    /// Its cgroup.
    pub cgroup: PathBuf,
    /// runAsUser, from the container's or the pod's securityContext.
    pub uid: u32,
    /// runAsGroup, likewise.
    pub gid: u32,
}

/// A pod as the demo's control plane creates it and its kubelet runs it.
#[derive(Debug, Clone)]
pub struct PodPlan {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `status.qosClass`.
    pub qos: QosClass,
    /// Why that class, in words.
    pub qos_reason: String,
    /// The Pod as the API server stored it, with the status of a scheduled, started pod.
    pub object: Value,
    /// The pod cgroup.
    pub cgroup: PathBuf,
    /// The app container (the first container).
    pub app: ContainerPlan,
    /// The lattice-proxy native sidecar.
    pub proxy: ContainerPlan,
}

/// The Pod the ReplicaSet controller asks the API server to create: before admission (no
/// sidecar unless the template has one), before the API server's defaulting and status.
#[derive(Debug, Clone)]
pub struct PodRequest {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.uid` (the demo picks it, so that the emulator's Pod Identity can name the
    /// pod before it exists).
    pub uid: String,
    /// The Pod object to create.
    pub object: Value,
}

impl PodRequest {
    /// The pod a ReplicaSet of `deployment` creates, already bound to `node` (the scheduler's
    /// part, done at once: one node per cluster).
    pub fn from_deployment(deployment: &Value, node: &str) -> Result<PodRequest> {
        let deploy_name = deployment["metadata"]["name"]
            .as_str()
            .context("the Deployment has no name")?;
        let namespace = deployment["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        let template = &deployment["spec"]["template"];
        if !template["spec"].is_object() {
            bail!("Deployment {deploy_name} has no spec.template.spec");
        }
        // kube-controller-manager names the ReplicaSet after the template's hash and the pod
        // after the ReplicaSet, with 5 random characters of the same alphabet.
        let hash = pod_template_hash(template);
        let replica_set = format!("{deploy_name}-{hash}");
        let name = format!("{replica_set}-{}", random_suffix(5));
        let uid = random_uid();

        let mut spec = template["spec"].clone();
        spec["nodeName"] = json!(node);
        let mut labels = template["metadata"]["labels"].clone();
        if !labels.is_object() {
            labels = json!({});
        }
        labels["pod-template-hash"] = json!(hash);
        let mut metadata = json!({
            "name": name,
            "generateName": format!("{replica_set}-"),
            "namespace": namespace,
            "uid": uid,
            "labels": labels,
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": replica_set,
                "uid": random_uid(),
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        });
        if template["metadata"]["annotations"].is_object() {
            metadata["annotations"] = template["metadata"]["annotations"].clone();
        }
        let object = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": spec,
        });
        Ok(PodRequest {
            name,
            namespace,
            uid,
            object,
        })
    }
}

/// What the API server does to a created pod after admission (`PrepareForCreate` and the
/// defaulting of the patched object): container requests default to their limits,
/// `status.phase` is Pending and `status.qosClass` is computed.
pub fn prepare_for_create(pod: &mut Value) -> Result<()> {
    default_requests(&mut pod["spec"]);
    let (qos, _) = qos_class(&pod["spec"])?;
    pod["status"] = json!({"phase": "Pending", "qosClass": qos.as_str()});
    Ok(())
}

impl PodPlan {
    /// How `kubelet` runs `pod`, the pod as the API server stored it after admission (see
    /// [`prepare_for_create`]), with the pod address `pod_ip`. It must have the lattice-proxy
    /// native sidecar: the injector's, or one rendered with deploy/components/sidecar.
    pub fn from_admitted(pod: &Value, pod_ip: &str, kubelet: &Kubelet) -> Result<PodPlan> {
        let name = pod["metadata"]["name"]
            .as_str()
            .context("the pod has no name")?
            .to_owned();
        let namespace = pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        let uid = pod["metadata"]["uid"]
            .as_str()
            .context("the pod has no uid")?
            .to_owned();
        let spec = &pod["spec"];
        let (qos, qos_reason) =
            qos_class(spec).with_context(|| format!("the QoS class of pod {namespace}/{name}"))?;
        if pod["status"]["qosClass"] != qos.as_str() {
            bail!(
                "pod {namespace}/{name}: the API server stored qosClass {}, the spec gives {}",
                pod["status"]["qosClass"],
                qos.as_str()
            );
        }

        let cgroup = kubelet.pod_cgroup(qos, &uid);
        let container = |c: &Value| -> Result<ContainerPlan> {
            let cname = c["name"].as_str().context("a container without a name")?;
            let id = hex(&random_bytes::<32>());
            let id_of = |field: &str| -> Result<u32> {
                let v = c["securityContext"][field]
                    .as_u64()
                    .or_else(|| spec["securityContext"][field].as_u64())
                    .with_context(|| {
                        format!(
                            "container {cname} of pod {name} has no {field} (neither its \
                             securityContext nor the pod's): the demo runs every container \
                             as the user and group its spec names"
                        )
                    })?;
                u32::try_from(v).with_context(|| format!("{field} {v} is out of range"))
            };
            Ok(ContainerPlan {
                name: cname.to_owned(),
                cgroup: kubelet.container_cgroup(&cgroup, &id),
                id,
                uid: id_of("runAsUser")?,
                gid: id_of("runAsGroup")?,
            })
        };
        let app = container(
            spec["containers"]
                .get(0)
                .with_context(|| format!("pod {name} has no container"))?,
        )?;
        let sidecar = spec["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "lattice-proxy" && c["restartPolicy"] == "Always")
            .with_context(|| {
                format!(
                    "pod {namespace}/{name} has no lattice-proxy native sidecar (an init \
                     container with restartPolicy: Always): lattice-injector adds it to pods of \
                     namespaces labelled lattice-egress.io/inject=enabled and to pods annotated \
                     lattice-egress.io/inject: \"true\"; deploy/components/sidecar renders it \
                     without the webhook"
                )
            })?;
        let proxy = container(sidecar)?;

        let mut object = pod.clone();
        object["status"]["phase"] = json!("Running");
        object["status"]["podIP"] = json!(pod_ip);
        object["status"]["podIPs"] = json!([{"ip": pod_ip}]);
        Ok(PodPlan {
            name,
            namespace,
            uid,
            qos,
            qos_reason,
            object,
            cgroup,
            app,
            proxy,
        })
    }

    /// Every cgroup kubelet makes for the pod, parents first.
    pub fn cgroups(&self) -> Vec<PathBuf> {
        vec![
            self.cgroup.clone(),
            self.proxy.cgroup.clone(),
            self.app.cgroup.clone(),
        ]
    }

    /// The pod with the status kubelet reports once its containers run: container ids and
    /// states, Ready.
    pub fn running_object(&self) -> Value {
        let mut pod = self.object.clone();
        let status = |c: &ContainerPlan, image: &Value| {
            json!({
                "name": c.name,
                "containerID": format!("containerd://{}", c.id),
                "image": image,
                "imageID": "",
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": now_rfc3339()}},
            })
        };
        let image = |list: &str, name: &str| -> Value {
            pod["spec"][list]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["name"] == name)
                .map(|c| c["image"].clone())
                .unwrap_or(Value::Null)
        };
        let app = status(&self.app, &image("containers", &self.app.name));
        let proxy = status(&self.proxy, &image("initContainers", &self.proxy.name));
        pod["status"]["containerStatuses"] = json!([app]);
        pod["status"]["initContainerStatuses"] = json!([proxy]);
        pod["status"]["conditions"] = json!(["Initialized", "ContainersReady", "Ready"]
            .iter()
            .map(|t| json!({"type": t, "status": "True"}))
            .collect::<Vec<_>>());
        pod
    }
}

/// `2026-11-30T10:00:00Z`, now.
fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The alphabet of generated Kubernetes names (k8s.io/apimachinery `util/rand`): no vowels,
/// no 0/1/3, so that no word is spelled by accident.
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The pod-template-hash label: FNV-32a of the template, its decimal value safe-encoded
/// (kubernetes `controller.ComputeHash` + `rand.SafeEncodeString`). kube-controller-manager
/// hashes the Go struct; this hashes the template's JSON, so the value differs from a real
/// cluster's but has its form.
pub fn pod_template_hash(template: &Value) -> String {
    let text = serde_json::to_string(template).expect("JSON values serialize");
    let mut hash: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash.to_string()
        .bytes()
        .map(|b| NAME_ALPHABET[usize::from(b) % NAME_ALPHABET.len()] as char)
        .collect()
}

fn random_suffix(n: usize) -> String {
    let bytes = random_bytes::<16>();
    bytes[..n]
        .iter()
        .map(|b| NAME_ALPHABET[usize::from(*b) % NAME_ALPHABET.len()] as char)
        .collect()
}

/// A random (version 4) UUID, as the API server gives every object.
pub fn random_uid() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: getrandom writes at most N - filled bytes into the buffer's tail.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), N - filled, 0) };
        if n > 0 {
            filled += n as usize;
        }
    }
    buf
}

/// The strings of a JSON array (none when it is not one).
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the host provides in place of a workload's pod: see [`Invocation::from_workload`].
#[derive(Debug, Clone)]
pub struct PodHost<'a> {
    /// Where the ConfigMap volumes are written, one subdirectory per volume.
    pub volumes_dir: &'a Path,
    /// This machine's cgroup2 mount (the node's cgroup2 root).
    pub cgroup2: &'a Path,
    /// `spec.nodeName`.
    pub node_name: &'a str,
    /// The pod's `metadata.uid`.
    pub pod_uid: &'a str,
    /// Listening addresses to use instead of the workload's, by flag (`--admin-addr`,
    /// `--listen`), with why: the real ones listen on the pod's own addresses.
    pub addresses: &'a [(&'a str, &'a str)],
}

/// A container's command line and environment, derived from its workload.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The arguments as the DaemonSet has them (command after the program, then args).
    pub original_args: Vec<String>,
    /// The arguments to run, host paths and addresses substituted.
    pub args: Vec<String>,
    /// The environment to set.
    pub env: Vec<(String, String)>,
    /// Each substitution, in words.
    pub notes: Vec<String>,
}

impl Invocation {
    /// The container `container` of `workload` (a DaemonSet or a Deployment), as the kubelet
    /// would start it on `host`: ConfigMap volumes are written under `host.volumes_dir` from
    /// `configmaps`; hostPath volumes are the host's paths, except the node's cgroup2 root
    /// (`/sys/fs/cgroup`), which on a hybrid host is `host.cgroup2`; the downward API gives
    /// `host.node_name`, `host.pod_uid` and the workload's namespace; the flags of
    /// `host.addresses` get their addresses (on loopback, where the real pod listens on its
    /// own address).
    pub fn from_workload(
        workload: &Value,
        container: &str,
        configmaps: &[Value],
        host: &PodHost<'_>,
    ) -> Result<Invocation> {
        let kind = workload["kind"].as_str().unwrap_or("workload");
        let pod = &workload["spec"]["template"]["spec"];
        let container = pod["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == container)
            .with_context(|| format!("the {kind} has no {container} container"))?;
        let mut original_args: Vec<String> =
            strings(&container["command"]).into_iter().skip(1).collect();
        original_args.extend(strings(&container["args"]));
        let mut notes = Vec::new();

        // Volumes: where each mount path is on this host.
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        for m in container["volumeMounts"].as_array().into_iter().flatten() {
            let (Some(vname), Some(path)) = (m["name"].as_str(), m["mountPath"].as_str()) else {
                continue;
            };
            let volume = pod["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == vname)
                .with_context(|| format!("volume mount {vname} names no volume"))?;
            let host_path = if let Some(cm) = volume["configMap"]["name"].as_str() {
                let object = configmaps
                    .iter()
                    .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == cm)
                    .with_context(|| format!("the rendered manifests have no ConfigMap {cm}"))?;
                let dir = host.volumes_dir.join(vname);
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let mut files = Vec::new();
                for (key, value) in object["data"].as_object().into_iter().flatten() {
                    let file = dir.join(key);
                    std::fs::write(&file, value.as_str().unwrap_or_default())
                        .with_context(|| format!("writing {}", file.display()))?;
                    files.push(key.clone());
                }
                notes.push(format!(
                    "{path} (ConfigMap {cm}: {}) -> {}",
                    files.join(", "),
                    dir.display()
                ));
                dir
            } else if let Some(hp) = volume["hostPath"]["path"].as_str() {
                if hp == "/sys/fs/cgroup" && Path::new(hp) != host.cgroup2 {
                    notes.push(format!(
                        "{path} (hostPath {hp}, the node's cgroup2 root) -> {} (this machine's \
                         cgroup2 mount)",
                        host.cgroup2.display()
                    ));
                    host.cgroup2.to_path_buf()
                } else {
                    PathBuf::from(hp)
                }
            } else {
                bail!("volume {vname} is neither a ConfigMap nor a hostPath");
            };
            mounts.push((path.to_owned(), host_path));
        }
        let translate = |s: &str| -> String {
            for (mount, host_path) in &mounts {
                if let Some(rest) = s.strip_prefix(mount.as_str()) {
                    if rest.is_empty() || rest.starts_with('/') {
                        return format!("{}{rest}", host_path.display());
                    }
                }
            }
            s.to_owned()
        };

        let mut args = Vec::new();
        let mut iter = original_args.iter();
        while let Some(arg) = iter.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag, Some(value)),
                None => (arg.as_str(), None),
            };
            let Some((_, address)) = host.addresses.iter().find(|(f, _)| *f == flag) else {
                args.push(match inline {
                    Some(value) => format!("{flag}={}", translate(value)),
                    None => translate(arg),
                });
                continue;
            };
            let original = match inline {
                Some(value) => value.to_owned(),
                None => iter
                    .next()
                    .with_context(|| format!("{flag} without a value"))?
                    .clone(),
            };
            notes.push(format!(
                "{flag} {original} -> {address} (loopback only, a free port: the pods of both \
                 clusters share this machine's network namespace)"
            ));
            args.push(flag.to_owned());
            args.push((*address).to_owned());
        }

        let mut env = Vec::new();
        for e in container["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().context("an env entry without a name")?;
            let value = if let Some(v) = e["value"].as_str() {
                let t = translate(v);
                if t != v {
                    notes.push(format!("{name}={v} -> {t}"));
                }
                t
            } else if let Some(field) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                let v = match field {
                    "spec.nodeName" => host.node_name.to_owned(),
                    "metadata.uid" => host.pod_uid.to_owned(),
                    "metadata.namespace" => workload["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("default")
                        .to_owned(),
                    other => bail!("env {name}: the demo does not provide fieldRef {other}"),
                };
                notes.push(format!("{name}={v} (downward API {field})"));
                v
            } else {
                bail!("env {name}: only value and valueFrom.fieldRef are provided by the demo");
            };
            env.push((name.to_owned(), value));
        }
        Ok(Invocation {
            original_args,
            args,
            env,
            notes,
        })
    }
}

/// A pod created through admission.
#[derive(Debug, Clone)]
pub struct Created {
    /// The pod as stored.
    pub object: Value,
    /// The webhooks' warnings.
    pub warnings: Vec<String>,
    /// One line per webhook call (name, and what it did).
    pub calls: Vec<String>,
}

/// The client of one `demo-kube-api` process's control port (see the module documentation).
#[derive(Debug, Clone)]
pub struct ApiControl {
    /// The control address.
    pub addr: SocketAddr,
}

impl ApiControl {
    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates `pod` as the ReplicaSet controller does, through the API server's mutating
    /// admission; returns the pod as stored, the webhooks' warnings and calls.
    pub fn create(&self, pod: &Value) -> Result<Created> {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let (status, body) = self.request(
            "POST",
            &format!("/api/v1/namespaces/{ns}/pods"),
            &serde_json::to_string(pod)?,
        )?;
        if status != 201 {
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or(body);
            bail!("the API server refused to create the pod ({status}): {message}");
        }
        let mut answer: Value =
            serde_json::from_str(&body).context("the API server's answer is not JSON")?;
        Ok(Created {
            warnings: strings(&answer["warnings"]),
            calls: strings(&answer["calls"]),
            object: answer["object"].take(),
        })
    }

    /// Updates `pod` (kubelet's status updates); returns the object as stored.
    pub fn update(&self, pod: &Value) -> Result<Value> {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let (status, body) = self.request(
            "PUT",
            &format!("/api/v1/namespaces/{ns}/pods/{name}"),
            &serde_json::to_string(pod)?,
        )?;
        if status != 200 {
            bail!("the API server refused the update of {ns}/{name} ({status}): {body}");
        }
        serde_json::from_str(&body).context("the API server's answer is not JSON")
    }

    /// Creates or replaces a Namespace, Service, Endpoints or MutatingWebhookConfiguration
    /// (`kubectl apply` of it); returns it as stored.
    pub fn put(&self, object: &Value) -> Result<Value> {
        let kind = object["kind"].as_str().unwrap_or_default();
        let k = crate::kube_api::objects::Kind::named(kind)
            .with_context(|| format!("the demo's API server keeps no {kind}"))?;
        let path = if k.namespaced {
            let ns = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default");
            format!("{}/namespaces/{ns}/{}", k.prefix, k.resource)
        } else {
            format!("{}/{}", k.prefix, k.resource)
        };
        let (status, body) = self.request("POST", &path, &serde_json::to_string(object)?)?;
        if status != 200 {
            bail!(
                "the API server refused {kind} {} ({status}): {body}",
                object["metadata"]["name"]
            );
        }
        serde_json::from_str(&body).context("the API server's answer is not JSON")
    }

    /// Deletes a pod (as `kubectl delete pod --grace-period=0 --force` ends); false when
    /// there was no such pod.
    pub fn delete(&self, namespace: &str, name: &str) -> Result<bool> {
        let (status, body) = self.request(
            "DELETE",
            &format!("/api/v1/namespaces/{namespace}/pods/{name}"),
            "",
        )?;
        match status {
            200 => Ok(true),
            404 => Ok(false),
            _ => bail!("deleting {namespace}/{name} failed ({status}): {body}"),
        }
    }

    fn request(&self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        http_request(self.addr, method, path, body)
    }
}

/// One HTTP/1.1 request on loopback (Connection: close); returns the status and the body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String)> {
    let timeout = Duration::from_secs(10);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .with_context(|| format!("sending {method} {path} to {addr}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .with_context(|| format!("reading the answer to {method} {path} from {addr}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, rest) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("{addr} answered {method} {path} with no HTTP header"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{addr} answered with a bad status line: {head}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
    }
    out
}

/// The value of the sample `name` (with its labels, e.g.
/// `lattice_redirector_connects_total{result="redirected"}`) in OpenMetrics `text`.
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        rest.starts_with(' ')
            .then(|| rest.trim().parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: &str, resources: Value) -> Value {
        json!({"name": name, "image": "x", "resources": resources})
    }

    fn spec(app: Value, sidecar: Value) -> Value {
        let mut sidecar = sidecar;
        sidecar["restartPolicy"] = json!("Always");
        json!({"containers": [app], "initContainers": [sidecar]})
    }

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        let nano = 1_000_000_000i128;
        for (text, value) in [
            ("10m", 10_000_000),
            ("1", nano),
            ("0.5", nano / 2),
            ("1.5", 3 * nano / 2),
            ("32Mi", 32 * 1024 * 1024 * nano),
            ("128Mi", 128 * 1024 * 1024 * nano),
            ("1Gi", 1024 * 1024 * 1024 * nano),
            ("1G", 1_000_000_000 * nano),
            ("1k", 1000 * nano),
            ("2e3", 2000 * nano),
            ("100n", 100),
            ("1u", 1000),
            ("0", 0),
            ("-1", -nano),
        ] {
            assert_eq!(parse_quantity(text).unwrap(), value, "{text}");
        }
        assert_eq!(
            parse_quantity("1000m").unwrap(),
            parse_quantity("1").unwrap()
        );
        assert_eq!(
            parse_quantity("1024Ki").unwrap(),
            parse_quantity("1Mi").unwrap()
        );
        for bad in ["", "Mi", "1x", "1.2.3", "m10", "1Mi2"] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn qos_classes_are_computed_as_kubernetes_computes_them() {
        let seed_app = json!({"requests": {"cpu": "10m", "memory": "32Mi"},
                              "limits": {"memory": "128Mi"}});
        let seed_proxy = json!({"requests": {"cpu": "10m", "memory": "16Mi"},
                                "limits": {"memory": "64Mi"}});
        let (class, why) = qos_class(&spec(
            container("app", seed_app),
            container("lattice-proxy", seed_proxy),
        ))
        .unwrap();
        assert_eq!(class, QosClass::Burstable);
        assert!(why.contains("app has no cpu limit"), "{why}");

        let equal = json!({"requests": {"cpu": "100m", "memory": "64Mi"},
                           "limits": {"cpu": "0.1", "memory": "64Mi"}});
        let s = spec(
            container("app", equal.clone()),
            container("lattice-proxy", equal.clone()),
        );
        assert_eq!(qos_class(&s).unwrap().0, QosClass::Guaranteed);

        // The sidecar counts: without limits of its own the pod is Burstable.
        let s = spec(
            container("app", equal.clone()),
            container("lattice-proxy", json!({"requests": {"cpu": "10m"}})),
        );
        assert_eq!(qos_class(&s).unwrap().0, QosClass::Burstable);

        let s = spec(
            container("app", json!({})),
            container("lattice-proxy", json!({})),
        );
        assert_eq!(qos_class(&s).unwrap().0, QosClass::BestEffort);

        // Only other resources, or zero quantities: still BestEffort.
        let other = json!({"requests": {"ephemeral-storage": "1Gi", "cpu": "0"},
                           "limits": {"hugepages-2Mi": "2Mi"}});
        let s = spec(
            container("app", other),
            container("lattice-proxy", json!({})),
        );
        assert_eq!(qos_class(&s).unwrap().0, QosClass::BestEffort);

        // Limits only: the API server defaults the requests to them, which makes the pod
        // Guaranteed; without that defaulting it would look Burstable.
        let limits = json!({"limits": {"cpu": "200m", "memory": "64Mi"}});
        let mut s = spec(
            container("app", limits.clone()),
            container("lattice-proxy", limits),
        );
        default_requests(&mut s);
        assert_eq!(
            s["containers"][0]["resources"]["requests"],
            json!({"cpu": "200m", "memory": "64Mi"})
        );
        assert_eq!(qos_class(&s).unwrap().0, QosClass::Guaranteed);

        // Sums are compared, not container by container (as Kubernetes does).
        let a = json!({"requests": {"cpu": "100m", "memory": "64Mi"},
                       "limits": {"cpu": "200m", "memory": "64Mi"}});
        let b = json!({"requests": {"cpu": "300m", "memory": "64Mi"},
                       "limits": {"cpu": "200m", "memory": "64Mi"}});
        let s = spec(container("app", a), container("lattice-proxy", b));
        assert_eq!(qos_class(&s).unwrap().0, QosClass::Guaranteed);
    }

    #[test]
    fn kubelet_cgroups_are_named_per_driver() {
        let uid = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
        let systemd = Kubelet {
            driver: Driver::Systemd,
            root: PathBuf::from("/cg/p/cluster1"),
        };
        let pod = systemd.pod_cgroup(QosClass::Burstable, uid);
        assert_eq!(
            pod,
            PathBuf::from(
                "/cg/p/cluster1/kubepods.slice/kubepods-burstable.slice/\
                 kubepods-burstable-pod1b4e28ba_2fa1_11d2_883f_0016d3cca427.slice"
            )
        );
        assert_eq!(
            systemd.pod_cgroup(QosClass::Guaranteed, uid),
            PathBuf::from(
                "/cg/p/cluster1/kubepods.slice/kubepods-pod1b4e28ba_2fa1_11d2_883f_0016d3cca427.slice"
            )
        );
        assert_eq!(
            systemd.container_cgroup(&pod, "ab12"),
            pod.join("cri-containerd-ab12.scope")
        );
        let cgroupfs = Kubelet {
            driver: Driver::Cgroupfs,
            root: PathBuf::from("/cg/p/cluster2"),
        };
        let pod = cgroupfs.pod_cgroup(QosClass::BestEffort, uid);
        assert_eq!(
            pod,
            PathBuf::from(
                "/cg/p/cluster2/kubepods/besteffort/pod1b4e28ba-2fa1-11d2-883f-0016d3cca427"
            )
        );
        assert_eq!(
            cgroupfs.pod_cgroup(QosClass::Guaranteed, uid),
            PathBuf::from("/cg/p/cluster2/kubepods/pod1b4e28ba-2fa1-11d2-883f-0016d3cca427")
        );
        assert_eq!(cgroupfs.container_cgroup(&pod, "ab12"), pod.join("ab12"));
        assert_eq!(
            cgroupfs.start_dirs(),
            [
                PathBuf::from("/cg/p/cluster2/kubepods"),
                PathBuf::from("/cg/p/cluster2/kubepods/burstable"),
                PathBuf::from("/cg/p/cluster2/kubepods/besteffort"),
            ]
        );
    }

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web-v1", "namespace": "apps"},
            "spec": {"template": {
                "metadata": {"labels": {"app": "web-v1"},
                             "annotations": {"lattice-egress.io/inject": "true"}},
                "spec": {
                    "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
                    "containers": [{"name": "web-v1", "image": "web:1",
                                    "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}],
                    "initContainers": [{"name": "lattice-proxy", "image": "proxy:1",
                                        "restartPolicy": "Always",
                                        "securityContext": {"runAsUser": 1337, "runAsGroup": 1337},
                                        "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]
                }
            }}
        })
    }

    #[test]
    fn a_pod_is_built_from_the_deployment_as_a_replica_set_builds_it() {
        let kubelet = Kubelet {
            driver: Driver::Systemd,
            root: PathBuf::from("/cg/p/cluster1"),
        };
        let d = deployment();
        let request = PodRequest::from_deployment(&d, "node-1").unwrap();
        assert!(
            request.object["status"].is_null(),
            "the API server sets the status"
        );
        assert!(
            request.object["spec"]["containers"][0]["resources"]["requests"].is_null(),
            "the API server defaults the requests"
        );
        let mut stored = request.object.clone();
        prepare_for_create(&mut stored).unwrap();
        assert_eq!(stored["status"]["phase"], "Pending");
        let plan = PodPlan::from_admitted(&stored, "10.0.0.10", &kubelet).unwrap();
        assert_eq!((&plan.name, &plan.uid), (&request.name, &request.uid));
        let hash = pod_template_hash(&d["spec"]["template"]);
        assert!(!hash.is_empty() && hash.bytes().all(|b| NAME_ALPHABET.contains(&b)));
        let prefix = format!("web-v1-{hash}-");
        assert!(plan.name.starts_with(&prefix), "{}", plan.name);
        assert_eq!(plan.name.len(), prefix.len() + 5);
        assert_eq!(plan.uid.len(), 36);
        assert_eq!(plan.uid.as_bytes()[14], b'4');
        assert_ne!(plan.uid, random_uid());
        let o = &plan.object;
        assert_eq!(o["metadata"]["namespace"], "apps");
        assert_eq!(o["metadata"]["uid"], plan.uid.as_str());
        assert_eq!(o["metadata"]["labels"]["pod-template-hash"], hash.as_str());
        assert_eq!(o["metadata"]["labels"]["app"], "web-v1");
        assert_eq!(
            o["metadata"]["annotations"]["lattice-egress.io/inject"],
            "true"
        );
        assert_eq!(o["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
        assert_eq!(o["spec"]["nodeName"], "node-1");
        assert_eq!(o["status"]["phase"], "Running");
        // Limits only, defaulted into requests: Guaranteed, directly under kubepods.slice.
        assert_eq!(o["status"]["qosClass"], "Guaranteed");
        assert_eq!(
            o["spec"]["containers"][0]["resources"]["requests"]["cpu"],
            "1"
        );
        assert_eq!(
            plan.cgroup,
            kubelet.pod_cgroup(QosClass::Guaranteed, &plan.uid)
        );
        assert_eq!((plan.app.uid, plan.app.gid), (1000, 1000));
        assert_eq!((plan.proxy.uid, plan.proxy.gid), (1337, 1337));
        assert_eq!(plan.app.id.len(), 64);
        assert_eq!(
            plan.app.cgroup,
            plan.cgroup
                .join(format!("cri-containerd-{}.scope", plan.app.id))
        );
        let running = plan.running_object();
        assert_eq!(
            running["status"]["containerStatuses"][0]["containerID"],
            format!("containerd://{}", plan.app.id)
        );
        assert_eq!(
            running["status"]["initContainerStatuses"][0]["name"],
            "lattice-proxy"
        );

        let mut no_sidecar = stored.clone();
        no_sidecar["spec"]["initContainers"][0]["restartPolicy"] = json!(null);
        let e = PodPlan::from_admitted(&no_sidecar, "10.0.0.10", &kubelet).unwrap_err();
        assert!(e.to_string().contains("native sidecar"), "{e}");
        let mut other_qos = stored;
        other_qos["status"]["qosClass"] = json!("BestEffort");
        let e = PodPlan::from_admitted(&other_qos, "10.0.0.10", &kubelet).unwrap_err();
        assert!(e.to_string().contains("qosClass"), "{e}");
    }

    #[test]
    fn the_agent_runs_as_the_daemonset_says_with_host_values_substituted() {
        let ds = json!({
            "kind": "DaemonSet",
            "metadata": {"name": "lattice-redirector", "namespace": "lattice-egress"},
            "spec": {"template": {"spec": {
                "containers": [{
                    "name": "lattice-redirector",
                    "command": ["/lattice-redirector"],
                    "args": ["run", "--kubernetes", "--config",
                             "/etc/lattice-redirector/redirector.toml",
                             "--admin-addr", "0.0.0.0:15090"],
                    "env": [
                        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                        {"name": "LATTICE_REDIRECTOR_CGROUP_ROOT", "value": "/host/cgroup"},
                        {"name": "RUST_LOG", "value": "info"}
                    ],
                    "volumeMounts": [
                        {"name": "cgroup", "mountPath": "/host/cgroup"},
                        {"name": "config", "mountPath": "/etc/lattice-redirector"}
                    ]
                }],
                "volumes": [
                    {"name": "cgroup", "hostPath": {"path": "/sys/fs/cgroup"}},
                    {"name": "config", "configMap": {"name": "lattice-redirector"}}
                ]
            }}}
        });
        let cm = json!({"kind": "ConfigMap", "metadata": {"name": "lattice-redirector"},
                        "data": {"redirector.toml": "ports = [80]\n"}});
        let dir = std::env::temp_dir().join(format!("le-unit-volumes-{}", std::process::id()));
        let host = PodHost {
            volumes_dir: &dir,
            cgroup2: Path::new("/sys/fs/cgroup/unified"),
            node_name: "node-1",
            pod_uid: "0000-1111",
            addresses: &[("--admin-addr", "127.0.0.1:0"), ("--listen", "127.0.0.1:0")],
        };
        let inv = Invocation::from_workload(&ds, "lattice-redirector", &[cm], &host).unwrap();
        let config = dir.join("config/redirector.toml");
        assert_eq!(std::fs::read_to_string(&config).unwrap(), "ports = [80]\n");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            inv.original_args,
            [
                "run",
                "--kubernetes",
                "--config",
                "/etc/lattice-redirector/redirector.toml",
                "--admin-addr",
                "0.0.0.0:15090"
            ]
        );
        assert_eq!(
            inv.args,
            [
                "run",
                "--kubernetes",
                "--config",
                config.to_str().unwrap(),
                "--admin-addr",
                "127.0.0.1:0"
            ]
        );
        assert_eq!(
            inv.env,
            [
                ("NODE_NAME".to_owned(), "node-1".to_owned()),
                ("POD_UID".to_owned(), "0000-1111".to_owned()),
                (
                    "LATTICE_REDIRECTOR_CGROUP_ROOT".to_owned(),
                    "/sys/fs/cgroup/unified".to_owned()
                ),
                ("RUST_LOG".to_owned(), "info".to_owned()),
            ]
        );
        assert!(
            inv.notes.iter().any(|n| n.contains("cgroup2")),
            "{:?}",
            inv.notes
        );
    }

    #[test]
    fn metrics_are_read_by_full_sample_name() {
        let text = "# TYPE x counter\n\
                    lattice_redirector_connects_total{result=\"redirected\"} 3\n\
                    lattice_redirector_connects_total{result=\"skip_not_enrolled\"} 12\n";
        assert_eq!(
            metric(
                text,
                "lattice_redirector_connects_total{result=\"redirected\"}"
            ),
            Some(3)
        );
        assert_eq!(
            metric(
                text,
                "lattice_redirector_connects_total{result=\"skip_not_enrolled\"}"
            ),
            Some(12)
        );
        assert_eq!(metric(text, "lattice_redirector_connects_total"), None);
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }
}
