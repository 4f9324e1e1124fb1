//! AdmissionReview in, AdmissionReview out (`admission.k8s.io/v1` only). The one place
//! where errors become responses: a body that is not JSON is an HTTP 400; anything else
//! wrong (not a v1 AdmissionReview, not a Pod, a bad override annotation) is a review that
//! denies with a message naming what was wrong.

use base64::Engine;
use serde_json::{json, Value};

use crate::metrics::AdmissionResult;
use crate::patch::{self, Decision, PatchError, Scope};
use crate::settings::Settings;

pub const API_VERSION: &str = "admission.k8s.io/v1";

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the body is not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error(
        "expected an {API_VERSION} AdmissionReview, got apiVersion {api_version:?} kind {kind:?}"
    )]
    NotAdmissionReview { api_version: String, kind: String },
    #[error("the AdmissionReview has no request.uid")]
    NoUid,
    #[error("lattice-injector mutates core/v1 Pods only, got {group:?}/{version} {kind}")]
    NotAPod {
        group: String,
        version: String,
        kind: String,
    },
    #[error("the AdmissionReview for {operation} has no request.object")]
    NoObject { operation: String },
    #[error("pod {pod}: {source}")]
    Patch {
        pod: String,
        source: Box<PatchError>,
    },
}

/// What [`review`] answers.
#[derive(Debug)]
pub struct Answer {
    /// 200, or 400 when the body could not be read as an AdmissionReview at all.
    pub status: u16,
    pub body: Value,
    pub result: AdmissionResult,
    /// namespace/name of the pod, for the log.
    pub pod: String,
    pub warnings: Vec<String>,
    pub error: Option<String>,
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Answers one AdmissionReview body.
pub fn review(body: &[u8], scope: Scope, settings: &Settings) -> Answer {
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            let e = ReviewError::from(e);
            return Answer {
                status: 400,
                body: json!({"error": e.to_string()}),
                result: AdmissionResult::Error,
                pod: String::new(),
                warnings: Vec::new(),
                error: Some(e.to_string()),
            };
        }
    };
    let uid = str_at(&parsed, "/request/uid").to_string();
    let pod = format!(
        "{}/{}",
        str_at(&parsed, "/request/namespace"),
        [
            "/request/name",
            "/request/object/metadata/name",
            "/request/object/metadata/generateName"
        ]
        .iter()
        .map(|p| str_at(&parsed, p))
        .find(|n| !n.is_empty())
        .unwrap_or("")
    );
    let response = |allowed: bool, extra: Value| {
        let mut r = json!({"uid": uid, "allowed": allowed});
        if let (Some(r), Value::Object(extra)) = (r.as_object_mut(), extra) {
            r.extend(extra);
        }
        json!({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": r})
    };
    match decide(&parsed, scope, settings, &pod) {
        Ok((result, patch, warnings)) => {
            let mut extra = serde_json::Map::new();
            if !patch.is_empty() {
                let bytes = serde_json::to_vec(&patch).expect("JSON values serialise");
                extra.insert("patchType".into(), json!("JSONPatch"));
                extra.insert(
                    "patch".into(),
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
                );
            }
            if !warnings.is_empty() {
                extra.insert("warnings".into(), json!(warnings));
            }
            Answer {
                status: 200,
                body: response(true, Value::Object(extra)),
                result,
                pod,
                warnings,
                error: None,
            }
        }
        Err(e) => {
            let message = format!("lattice-injector: {e}");
            Answer {
                status: 200,
                body: response(false, json!({"status": {"code": 400, "message": message}})),
                result: AdmissionResult::Error,
                pod,
                warnings: Vec::new(),
                error: Some(e.to_string()),
            }
        }
    }
}

type Decided = (AdmissionResult, Vec<Value>, Vec<String>);

fn decide(
    review: &Value,
    scope: Scope,
    settings: &Settings,
    pod: &str,
) -> Result<Decided, ReviewError> {
    let (api_version, kind) = (str_at(review, "/apiVersion"), str_at(review, "/kind"));
    if api_version != API_VERSION || kind != "AdmissionReview" {
        return Err(ReviewError::NotAdmissionReview {
            api_version: api_version.into(),
            kind: kind.into(),
        });
    }
    if str_at(review, "/request/uid").is_empty() {
        return Err(ReviewError::NoUid);
    }
    let (group, version, kind) = (
        str_at(review, "/request/kind/group"),
        str_at(review, "/request/kind/version"),
        str_at(review, "/request/kind/kind"),
    );
    if (group, version, kind) != ("", "v1", "Pod") {
        return Err(ReviewError::NotAPod {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
        });
    }
    let operation = str_at(review, "/request/operation");
    if operation != "CREATE" {
        // The webhook is registered for CREATE only; anything else passes untouched.
        return Ok((AdmissionResult::Skipped, Vec::new(), Vec::new()));
    }
    let object = review
        .pointer("/request/object")
        .filter(|o| o.is_object())
        .ok_or_else(|| ReviewError::NoObject {
            operation: operation.into(),
        })?;
    let m = patch::mutate(object, scope, settings).map_err(|source| ReviewError::Patch {
        pod: pod.to_string(),
        source: Box::new(source),
    })?;
    let result = match m.decision {
        Decision::Injected => AdmissionResult::Injected,
        Decision::AlreadyInjected => AdmissionResult::AlreadyInjected,
        Decision::NotOptedIn | Decision::OptedOut | Decision::HostNetwork => {
            AdmissionResult::Skipped
        }
    };
    Ok((result, m.patch, m.warnings))
}
