//! Mutating admission of a Pod creation, as kube-apiserver's `MutatingAdmissionWebhook`
//! plugin runs it (`k8s.io/apiserver/pkg/admission/plugin/webhook/mutating`), over the
//! objects the fake keeps ([`super::objects`]):
//!
//! - the namespace must exist (the `NamespaceLifecycle` plugin: 404 otherwise);
//! - the configurations in name order, their webhooks in order; a webhook is called when
//!   one of its `rules` covers CREATE of `pods` in the core group `v1`, its
//!   `namespaceSelector` selects the namespace's labels and its `objectSelector` the pod's;
//! - `clientConfig.service` resolves through the Service (its `port`, 443 by default, to
//!   the `targetPort`) and the Endpoints of the same name (the first ready address), as
//!   `--enable-aggregator-routing` does, since there is no kube-proxy behind a ClusterIP
//!   here; `clientConfig.url` may name an IP literal. TLS is verified against the
//!   `caBundle` for the name `<service>.<namespace>.svc`, the name the real server checks;
//! - an `AdmissionReview` v1 is POSTed to the path with `?timeout=<timeoutSeconds>s` and
//!   the call is bounded by `timeoutSeconds` (10 s by default); the answer must be a v1
//!   `AdmissionReview` whose `response.uid` is the request's;
//! - `allowed: false` refuses the creation with `admission webhook "<name>" denied the
//!   request: <message>` (400 or the response's code); a call that fails refuses it with
//!   500 `failed calling webhook "<name>": ...` under `failurePolicy: Fail` (the default)
//!   and is skipped under `Ignore`; a `JSONPatch` is applied to the object the next
//!   webhook sees; `warnings` are returned to the client;
//! - a webhook with `reinvocationPolicy: IfNeeded` is called once more when a webhook after
//!   it changed the object.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use base64::Engine;
use bytes::Bytes;
use http::{header, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use serde_json::{json, Value};

use super::{objects::Kind, selector::Selector, store::Store, Status};

/// How long a webhook call may take when its configuration says nothing.
const DEFAULT_TIMEOUT_SECONDS: u64 = 10;
/// The largest answer read from a webhook (the real server's limit on request bodies).
const MAX_ANSWER: usize = 3 * 1024 * 1024;

/// The objects admission reads, copied from the store before any webhook is called.
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    pub(super) namespace: Option<Value>,
    pub(super) configurations: Vec<Value>,
    pub(super) services: Vec<Value>,
    pub(super) endpoints: Vec<Value>,
}

impl Snapshot {
    /// What admission of a pod in `namespace` reads from `store`.
    pub(super) fn take(store: &Store, namespace: &str) -> Self {
        let kind = |name| Kind::named(name).expect("a kept kind");
        Snapshot {
            namespace: store.object(kind("Namespace"), "", namespace),
            configurations: store.objects(kind("MutatingWebhookConfiguration")),
            services: store.objects(kind("Service")),
            endpoints: store.objects(kind("Endpoints")),
        }
    }
}

/// A pod that passed mutating admission.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The pod after every webhook's patch.
    pub object: Value,
    /// The webhooks' warnings, in order (the `Warning` headers of the real answer).
    pub warnings: Vec<String>,
    /// One line per webhook call: its name, and what it did (`patched (N operations)`,
    /// `no patch`, `failed, ignored: ...`).
    pub calls: Vec<String>,
}

/// One webhook that applies, with its place for reinvocation.
struct Hook<'a> {
    webhook: &'a Value,
    name: String,
    reinvoke: bool,
}

/// Runs mutating admission on `pod`, a creation in `pod.metadata.namespace`.
pub(super) async fn admit(snapshot: &Snapshot, pod: Value) -> Result<Admitted, Status> {
    let namespace = pod["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_owned();
    let Some(ns_object) = &snapshot.namespace else {
        return Err(Status::new(
            404,
            "NotFound",
            format!("namespaces \"{namespace}\" not found"),
        )
        .with_details(json!({"name": namespace, "kind": "namespaces"})));
    };
    let mut configurations: Vec<&Value> = snapshot.configurations.iter().collect();
    configurations.sort_by_key(|c| {
        c["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    });
    let mut hooks = Vec::new();
    for configuration in configurations {
        for webhook in configuration["webhooks"].as_array().into_iter().flatten() {
            if applies(webhook, ns_object, &pod).map_err(|e| {
                Status::new(
                    500,
                    "InternalError",
                    format!("Internal error occurred: webhook {}: {e}", webhook["name"]),
                )
            })? {
                hooks.push(Hook {
                    webhook,
                    name: webhook["name"].as_str().unwrap_or_default().to_owned(),
                    reinvoke: webhook["reinvocationPolicy"] == "IfNeeded",
                });
            }
        }
    }

    let mut admitted = Admitted {
        object: pod,
        warnings: Vec::new(),
        calls: Vec::new(),
    };
    // The number of changes so far, and when each reinvocable webhook was last called.
    let mut changes = 0usize;
    let mut called_at = vec![None; hooks.len()];
    for (i, hook) in hooks.iter().enumerate() {
        if call_one(snapshot, hook, &mut admitted).await? {
            changes += 1;
        }
        called_at[i] = Some(changes);
    }
    for (i, hook) in hooks.iter().enumerate() {
        if hook.reinvoke && called_at[i].is_some_and(|at| at < changes) {
            call_one(snapshot, hook, &mut admitted).await?;
        }
    }
    Ok(admitted)
}

/// Calls one webhook and applies its answer; returns whether the object changed.
async fn call_one(
    snapshot: &Snapshot,
    hook: &Hook<'_>,
    admitted: &mut Admitted,
) -> Result<bool, Status> {
    let fail = hook.webhook["failurePolicy"].as_str() != Some("Ignore");
    let answer = match call(snapshot, hook.webhook, &admitted.object).await {
        Ok(answer) => answer,
        Err(e) if fail => {
            return Err(Status::new(
                500,
                "InternalError",
                format!(
                    "Internal error occurred: failed calling webhook \"{}\": {e}",
                    hook.name
                ),
            ))
        }
        Err(e) => {
            admitted.calls.push(format!(
                "{}: failed, ignored (failurePolicy Ignore): {e}",
                hook.name
            ));
            return Ok(false);
        }
    };
    let response = &answer["response"];
    for warning in response["warnings"].as_array().into_iter().flatten() {
        if let Some(w) = warning.as_str() {
            admitted.warnings.push(w.to_owned());
        }
    }
    if response["allowed"] != true {
        let message = response["status"]["message"]
            .as_str()
            .unwrap_or("without explanation");
        let code = response["status"]["code"]
            .as_u64()
            .and_then(|c| u16::try_from(c).ok())
            .filter(|&c| c >= 400)
            .unwrap_or(400);
        return Err(Status::new(
            code,
            "",
            format!(
                "admission webhook \"{}\" denied the request: {message}",
                hook.name
            ),
        ));
    }
    let Some(patch) = response["patch"].as_str() else {
        admitted.calls.push(format!("{}: no patch", hook.name));
        return Ok(false);
    };
    let applied = apply_patch(response, patch, &mut admitted.object);
    match applied {
        Ok(n) => {
            admitted
                .calls
                .push(format!("{}: patched ({n} operations)", hook.name));
            Ok(n > 0)
        }
        Err(e) => Err(Status::new(
            500,
            "InternalError",
            format!(
                "Internal error occurred: failed calling webhook \"{}\": {e}",
                hook.name
            ),
        )),
    }
}

/// Applies a webhook's base64 JSONPatch to `object`; returns its number of operations.
fn apply_patch(response: &Value, patch: &str, object: &mut Value) -> Result<usize, String> {
    if response["patchType"] != "JSONPatch" {
        return Err(format!(
            "the patch's patchType is {}, not JSONPatch",
            response["patchType"]
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .map_err(|e| format!("the patch is not base64: {e}"))?;
    let ops: json_patch::Patch = serde_json::from_slice(&bytes)
        .map_err(|e| format!("the patch is not a JSON patch: {e}"))?;
    let mut patched = object.clone();
    json_patch::patch(&mut patched, &ops).map_err(|e| format!("cannot apply the patch: {e}"))?;
    let n = ops.0.len();
    *object = patched;
    Ok(n)
}

/// Whether `webhook` is called for the creation of `pod` in namespace `ns_object`.
fn applies(webhook: &Value, ns_object: &Value, pod: &Value) -> Result<bool, String> {
    let has = |list: &Value, wanted: &str| {
        list.as_array()
            .into_iter()
            .flatten()
            .any(|v| v == "*" || v == wanted)
    };
    let ruled = webhook["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|rule| {
            has(&rule["operations"], "CREATE")
                && has(&rule["apiGroups"], "")
                && has(&rule["apiVersions"], "v1")
                && has(&rule["resources"], "pods")
                && matches!(rule["scope"].as_str(), None | Some("*" | "Namespaced"))
        });
    if !ruled {
        return Ok(false);
    }
    let namespaces = Selector::from_label_selector(&webhook["namespaceSelector"])
        .map_err(|e| format!("namespaceSelector: {e}"))?;
    let objects = Selector::from_label_selector(&webhook["objectSelector"])
        .map_err(|e| format!("objectSelector: {e}"))?;
    Ok(namespaces.matches(ns_object) && objects.matches(pod))
}

/// Sends the AdmissionReview of `object` to `webhook` and returns its checked answer.
async fn call(snapshot: &Snapshot, webhook: &Value, object: &Value) -> Result<Value, String> {
    let (addr, server_name, path) = resolve(snapshot, &webhook["clientConfig"])?;
    let ca = webhook["clientConfig"]["caBundle"]
        .as_str()
        .unwrap_or_default();
    if ca.is_empty() {
        return Err(format!(
            "no caBundle in clientConfig to verify {server_name} with (the fake API server has \
             no system roots to fall back on)"
        ));
    }
    let pem = base64::engine::general_purpose::STANDARD
        .decode(ca)
        .map_err(|e| format!("caBundle is not base64: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("caBundle: {e}"))?;
        roots.add(cert).map_err(|e| format!("caBundle: {e}"))?;
    }
    if roots.is_empty() {
        return Err("caBundle holds no certificate".into());
    }
    let timeout = webhook["timeoutSeconds"]
        .as_u64()
        .unwrap_or(DEFAULT_TIMEOUT_SECONDS);
    let uid = crate::demo::kube::random_uid();
    let review = review(&uid, object);
    let url = format!(
        "https://{server_name}:{}{path}?timeout={timeout}s",
        addr.port()
    );
    let exchange = async {
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(server_name.clone()).map_err(|e| e.to_string())?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("dial tcp {addr}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let (mut send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let request = Request::post(format!("{path}?timeout={timeout}s"))
            .header(header::HOST, format!("{server_name}:{}", addr.port()))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(review.to_string())))
            .map_err(|e| e.to_string())?;
        let answer = send
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = answer.status();
        let body = http_body_util::Limited::new(answer.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "the server answered {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        serde_json::from_slice::<Value>(&body).map_err(|e| format!("the answer is not JSON: {e}"))
    };
    let answer = tokio::time::timeout(Duration::from_secs(timeout), exchange)
        .await
        .map_err(|_| format!("failed to call webhook: Post \"{url}\": context deadline exceeded"))?
        .map_err(|e| format!("failed to call webhook: Post \"{url}\": {e}"))?;
    if answer["apiVersion"] != "admission.k8s.io/v1" || answer["kind"] != "AdmissionReview" {
        return Err(format!(
            "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got {}, Kind={}",
            answer["apiVersion"], answer["kind"]
        ));
    }
    if answer["response"]["uid"] != uid.as_str() {
        return Err(format!(
            "expected response.uid=\"{uid}\", got {}",
            answer["response"]["uid"]
        ));
    }
    Ok(answer)
}

/// Where a `clientConfig` points: the address to dial, the TLS name, the path.
fn resolve(snapshot: &Snapshot, client: &Value) -> Result<(SocketAddr, String, String), String> {
    if let Some(url) = client["url"].as_str() {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("clientConfig.url {url}: {e}"))?;
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
        let ip: std::net::IpAddr = host.parse().map_err(|_| {
            format!("clientConfig.url {url}: the fake API server dials IP literals only")
        })?;
        let port = uri.port_u16().unwrap_or(443);
        return Ok((
            SocketAddr::new(ip, port),
            host.to_owned(),
            uri.path().to_owned(),
        ));
    }
    let service = &client["service"];
    let (Some(ns), Some(name)) = (service["namespace"].as_str(), service["name"].as_str()) else {
        return Err("clientConfig has neither url nor service.namespace and service.name".into());
    };
    let port = service["port"].as_u64().unwrap_or(443);
    let path = service["path"].as_str().unwrap_or("/").to_owned();
    let find = |list: &[Value]| {
        list.iter()
            .find(|o| o["metadata"]["namespace"] == ns && o["metadata"]["name"] == name)
            .cloned()
    };
    let svc = find(&snapshot.services)
        .ok_or_else(|| format!("service \"{name}\" not found in namespace {ns}"))?;
    let svc_port = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["port"].as_u64() == Some(port))
        .ok_or_else(|| format!("service {ns}/{name} has no port {port}"))?;
    let endpoints =
        find(&snapshot.endpoints).ok_or_else(|| format!("no endpoints for service {ns}/{name}"))?;
    for subset in endpoints["subsets"].as_array().into_iter().flatten() {
        let Some(ip) = subset["addresses"][0]["ip"].as_str() else {
            continue;
        };
        let ports = subset["ports"].as_array().cloned().unwrap_or_default();
        let target = ports.iter().find(|p| match svc_port["name"].as_str() {
            Some(n) if !n.is_empty() => p["name"] == n,
            _ => ports.len() == 1,
        });
        if let Some(target) = target.and_then(|p| p["port"].as_u64()) {
            let ip: std::net::IpAddr = ip
                .parse()
                .map_err(|e| format!("endpoints {ns}/{name}: address {ip}: {e}"))?;
            let port = u16::try_from(target).map_err(|e| e.to_string())?;
            return Ok((SocketAddr::new(ip, port), format!("{name}.{ns}.svc"), path));
        }
    }
    Err(format!(
        "service {ns}/{name} port {port} has no ready endpoint address"
    ))
}

/// The AdmissionReview v1 request of a Pod creation by the ReplicaSet controller.
fn review(uid: &str, object: &Value) -> Value {
    let gvk = json!({"group": "", "version": "v1", "kind": "Pod"});
    let gvr = json!({"group": "", "version": "v1", "resource": "pods"});
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "name": object["metadata"]["name"],
            "namespace": object["metadata"]["namespace"],
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system",
                           "system:authenticated"],
            },
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    })
}
