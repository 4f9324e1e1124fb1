//! Field and label selectors, applied to Pods as the API server applies them.
//!
//! Field selectors: comma-separated `field=value`, `field==value` or `field!=value` over the
//! fields the API server makes selectable on Pods (`pkg/registry/core/pod/strategy.go`,
//! `PodToSelectableFields`); a missing field selects as the empty string, so
//! `spec.nodeName=` selects unscheduled pods. Any other field is refused with 400, as the
//! real server does (`field label not supported: ...`).
//!
//! Label selectors: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`; as in
//! Kubernetes, `!=` and `notin` also select objects without the label.

use serde_json::Value;

use super::Status;

/// The fields of a Pod that a field selector may name, with where they sit in the object.
const POD_FIELDS: &[(&str, &[&str])] = &[
    ("metadata.name", &["metadata", "name"]),
    ("metadata.namespace", &["metadata", "namespace"]),
    ("spec.nodeName", &["spec", "nodeName"]),
    ("spec.restartPolicy", &["spec", "restartPolicy"]),
    ("spec.schedulerName", &["spec", "schedulerName"]),
    ("spec.serviceAccountName", &["spec", "serviceAccountName"]),
    ("spec.hostNetwork", &["spec", "hostNetwork"]),
    ("status.phase", &["status", "phase"]),
    ("status.podIP", &["status", "podIP"]),
    ("status.nominatedNodeName", &["status", "nominatedNodeName"]),
];

/// What a list or a watch selects: the namespace of the path, then both selectors.
#[derive(Debug, Clone, Default)]
pub(super) struct Selector {
    namespace: Option<String>,
    fields: Vec<FieldRequirement>,
    labels: Vec<LabelRequirement>,
}

#[derive(Debug, Clone)]
struct FieldRequirement {
    path: &'static [&'static str],
    equal: bool,
    value: String,
}

#[derive(Debug, Clone)]
enum LabelRequirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Selector {
    /// Parses the `fieldSelector` and `labelSelector` query parameters of a request on the
    /// pods of `namespace` (all namespaces when `None`). Errors are the 400 to answer.
    pub(super) fn parse(
        namespace: Option<&str>,
        fields: Option<&str>,
        labels: Option<&str>,
    ) -> Result<Self, Status> {
        Ok(Self {
            namespace: namespace.map(str::to_owned),
            fields: terms(fields.unwrap_or(""))
                .into_iter()
                .map(parse_field)
                .collect::<Result<_, _>>()?,
            labels: terms(labels.unwrap_or(""))
                .into_iter()
                .map(parse_label)
                .collect::<Result<_, _>>()?,
        })
    }

    /// A `metav1.LabelSelector` object (`matchLabels`, `matchExpressions` with `In`,
    /// `NotIn`, `Exists`, `DoesNotExist`), as a webhook's `namespaceSelector` and
    /// `objectSelector` are; absent or `{}` selects everything. Errors name the bad part.
    pub(super) fn from_label_selector(selector: &Value) -> Result<Self, String> {
        let mut labels = Vec::new();
        if let Some(map) = selector.get("matchLabels").and_then(Value::as_object) {
            for (key, value) in map {
                let value = value
                    .as_str()
                    .ok_or_else(|| format!("matchLabels.{key} is not a string"))?;
                labels.push(LabelRequirement::In(key.clone(), vec![value.to_owned()]));
            }
        }
        for e in selector
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = e["key"]
                .as_str()
                .ok_or_else(|| format!("matchExpressions entry without a key: {e}"))?
                .to_owned();
            let values: Vec<String> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            labels.push(match e["operator"].as_str() {
                Some("In") => LabelRequirement::In(key, values),
                Some("NotIn") => LabelRequirement::NotIn(key, values),
                Some("Exists") => LabelRequirement::Exists(key),
                Some("DoesNotExist") => LabelRequirement::NotExists(key),
                other => return Err(format!("matchExpressions operator {other:?} of {key}")),
            });
        }
        Ok(Self {
            labels,
            ..Self::default()
        })
    }

    /// Whether `pod` is selected.
    pub(super) fn matches(&self, pod: &Value) -> bool {
        if let Some(namespace) = &self.namespace {
            if pod["metadata"]["namespace"].as_str() != Some(namespace) {
                return false;
            }
        }
        let fields = self.fields.iter().all(|requirement| {
            let value = lookup(pod, requirement.path);
            (value == requirement.value) == requirement.equal
        });
        let labels = &pod["metadata"]["labels"];
        fields
            && self.labels.iter().all(|requirement| match requirement {
                LabelRequirement::In(key, values) => labels[key]
                    .as_str()
                    .is_some_and(|v| values.iter().any(|x| x == v)),
                LabelRequirement::NotIn(key, values) => labels[key]
                    .as_str()
                    .is_none_or(|v| values.iter().all(|x| x != v)),
                LabelRequirement::Exists(key) => labels.get(key).is_some(),
                LabelRequirement::NotExists(key) => labels.get(key).is_none(),
            })
    }
}

/// A selectable field's value as the API server renders it: strings as they are, booleans as
/// `true`/`false`, missing as empty (`false` for `spec.hostNetwork`).
fn lookup(pod: &Value, path: &[&str]) -> String {
    let value = path.iter().fold(pod, |value, key| &value[*key]);
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Null if path == ["spec", "hostNetwork"] => "false".to_owned(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Splits a selector on the commas that are not inside `(...)`, dropping empty terms.
fn terms(selector: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    terms
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

fn parse_field(term: &str) -> Result<FieldRequirement, Status> {
    let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
        (f, false, v)
    } else if let Some((f, v)) = term.split_once("==") {
        (f, true, v)
    } else if let Some((f, v)) = term.split_once('=') {
        (f, true, v)
    } else {
        return Err(Status::bad_request(format!(
            "invalid selector: '{term}'; can't understand '{term}'"
        )));
    };
    let field = field.trim();
    let path = POD_FIELDS
        .iter()
        .find(|(name, _)| *name == field)
        .map(|(_, path)| *path)
        .ok_or_else(|| Status::bad_request(format!("field label not supported: {field}")))?;
    Ok(FieldRequirement {
        path,
        equal,
        value: value.trim().to_owned(),
    })
}

fn parse_label(term: &str) -> Result<LabelRequirement, Status> {
    let invalid = || Status::bad_request(format!("unable to parse requirement: {term:?}"));
    let single = |key: &str, value: &str| (key.trim().to_owned(), vec![value.trim().to_owned()]);
    if let Some(key) = term.strip_prefix('!') {
        return Ok(LabelRequirement::NotExists(key.trim().to_owned()));
    }
    if let Some((key, value)) = term.split_once("!=") {
        let (key, values) = single(key, value);
        return Ok(LabelRequirement::NotIn(key, values));
    }
    if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
        let (key, values) = single(key, value);
        return Ok(LabelRequirement::In(key, values));
    }
    if let Some(open) = term.find('(') {
        let (head, set) = term.split_at(open);
        let set = set.strip_prefix('(').and_then(|s| s.strip_suffix(')'));
        let values = set
            .ok_or_else(invalid)?
            .split(',')
            .map(|v| v.trim().to_owned())
            .collect();
        let mut words = head.split_whitespace();
        let requirement = match (words.next(), words.next(), words.next()) {
            (Some(key), Some("in"), None) => LabelRequirement::In(key.to_owned(), values),
            (Some(key), Some("notin"), None) => LabelRequirement::NotIn(key.to_owned(), values),
            _ => return Err(invalid()),
        };
        return Ok(requirement);
    }
    if term.split_whitespace().count() == 1 {
        return Ok(LabelRequirement::Exists(term.to_owned()));
    }
    Err(invalid())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(ns: &str, node: Option<&str>, labels: Value) -> Value {
        let mut pod = json!({
            "metadata": {"name": "p", "namespace": ns, "labels": labels},
            "spec": {"containers": []},
        });
        if let Some(node) = node {
            pod["spec"]["nodeName"] = json!(node);
        }
        pod
    }

    fn selects(ns: Option<&str>, fields: &str, labels: &str, pod: &Value) -> bool {
        Selector::parse(ns, Some(fields), Some(labels))
            .unwrap()
            .matches(pod)
    }

    #[test]
    fn field_selectors_on_the_node_name() {
        let on_a = pod("default", Some("node-a"), json!({}));
        let unscheduled = pod("default", None, json!({}));
        for selector in [
            "spec.nodeName=node-a",
            "spec.nodeName==node-a",
            " spec.nodeName = node-a ",
        ] {
            assert!(selects(None, selector, "", &on_a), "{selector}");
            assert!(!selects(None, selector, "", &unscheduled), "{selector}");
        }
        assert!(!selects(None, "spec.nodeName!=node-a", "", &on_a));
        assert!(selects(None, "spec.nodeName=", "", &unscheduled));
        assert!(selects(
            None,
            "spec.nodeName=node-a,metadata.namespace=default",
            "",
            &on_a
        ));
        assert!(!selects(Some("other"), "spec.nodeName=node-a", "", &on_a));
        assert!(selects(None, "spec.hostNetwork=false", "", &on_a));
    }

    #[test]
    fn unsupported_or_malformed_field_selectors_are_refused() {
        let error = Selector::parse(None, Some("spec.foo=bar"), None).unwrap_err();
        assert_eq!(error.code, 400);
        assert_eq!(error.message, "field label not supported: spec.foo");
        let error = Selector::parse(None, Some("spec.nodeName"), None).unwrap_err();
        assert_eq!(error.reason, "BadRequest");
    }

    #[test]
    fn label_selectors() {
        let web = pod("default", None, json!({"app": "web", "tier": "front"}));
        let bare = pod("default", None, json!({}));
        assert!(selects(None, "", "app=web", &web));
        assert!(selects(None, "", "app==web,tier", &web));
        assert!(selects(None, "", "app in (web, api),!missing", &web));
        assert!(!selects(None, "", "app notin (web)", &web));
        assert!(selects(None, "", "app notin (web)", &bare));
        assert!(selects(None, "", "app!=web", &bare));
        assert!(!selects(None, "", "app", &bare));
        assert!(Selector::parse(None, None, Some("app in web")).is_err());
    }
}
