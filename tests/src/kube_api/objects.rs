//! The objects other than Pods that the fake API server keeps: what mutating admission reads
//! ([`KINDS`]: the webhook configurations, the namespaces their `namespaceSelector` looks
//! at, and the Service and Endpoints a `clientConfig.service` resolves through), and the
//! strategic merge patch that a webhook's own replicas send to publish their caBundle.

use serde_json::{json, Map, Value};

/// A kind of object kept besides Pods: its name, API path prefix, plural resource, whether
/// it is namespaced, and the lists a strategic merge patch merges by key (`(list, key)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// `kind`.
    pub name: &'static str,
    /// `apiVersion`.
    pub api_version: &'static str,
    /// The path prefix of its group and version (`/api/v1`, `/apis/<group>/<version>`).
    pub prefix: &'static str,
    /// The plural resource of its paths.
    pub resource: &'static str,
    /// Whether objects of it live in a namespace.
    pub namespaced: bool,
    /// Lists that a strategic merge patch merges by a key (`patchMergeKey` in the API's
    /// Go types), the others being replaced.
    pub merge_keys: &'static [(&'static str, &'static str)],
}

/// The kinds kept besides Pods.
pub const KINDS: [Kind; 4] = [
    Kind {
        name: "Namespace",
        api_version: "v1",
        prefix: "/api/v1",
        resource: "namespaces",
        namespaced: false,
        merge_keys: &[],
    },
    Kind {
        name: "Service",
        api_version: "v1",
        prefix: "/api/v1",
        resource: "services",
        namespaced: true,
        merge_keys: &[("ports", "port")],
    },
    Kind {
        name: "Endpoints",
        api_version: "v1",
        prefix: "/api/v1",
        resource: "endpoints",
        namespaced: true,
        merge_keys: &[],
    },
    Kind {
        name: "MutatingWebhookConfiguration",
        api_version: "admissionregistration.k8s.io/v1",
        prefix: "/apis/admissionregistration.k8s.io/v1",
        resource: "mutatingwebhookconfigurations",
        namespaced: false,
        merge_keys: &[("webhooks", "name")],
    },
];

impl Kind {
    /// The kind named `name` (`kind` of an object).
    pub fn named(name: &str) -> Option<Kind> {
        KINDS.into_iter().find(|k| k.name == name)
    }

    /// The kind whose collection `path` is, with the namespace of the path.
    pub fn of_collection(path: &str) -> Option<(Kind, Option<String>)> {
        KINDS.into_iter().find_map(|k| {
            let rest = path.strip_prefix(k.prefix)?;
            let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
            match (k.namespaced, segments.as_slice()) {
                (false, [r]) if *r == k.resource => Some((k, None)),
                (true, ["namespaces", ns, r]) if *r == k.resource => {
                    Some((k, Some(ns.to_string())))
                }
                _ => None,
            }
        })
    }

    /// The kind and name of the object `path` names (cluster-scoped kinds only: the only
    /// object path the fake serves to clients is a webhook configuration's).
    pub fn of_object(path: &str) -> Option<(Kind, &str)> {
        KINDS.into_iter().filter(|k| !k.namespaced).find_map(|k| {
            let rest = path.strip_prefix(k.prefix)?;
            let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
            match segments.as_slice() {
                [r, name] if *r == k.resource => Some((k, *name)),
                _ => None,
            }
        })
    }
}

/// Fills what the API server fills in an object it stores: `apiVersion`, and for a
/// Namespace the immutable label `kubernetes.io/metadata.name` (which webhook
/// configurations select on to exclude namespaces by name). Errors name what is wrong.
pub fn normalise(kind: Kind, object: &mut Value, namespace: Option<&str>) -> Result<(), String> {
    let Some(map) = object.as_object_mut() else {
        return Err(format!("a {} must be a JSON object", kind.name));
    };
    map.insert("apiVersion".into(), json!(kind.api_version));
    let metadata = map
        .entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| format!("{}: metadata is not an object", kind.name))?;
    let name = metadata
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{}: metadata.name is missing", kind.name))?
        .to_owned();
    match (kind.namespaced, namespace) {
        (true, Some(ns)) => match metadata.get("namespace").and_then(Value::as_str) {
            None => {
                metadata.insert("namespace".into(), json!(ns));
            }
            Some(given) if given == ns => {}
            Some(given) => {
                return Err(format!(
                    "{} {name}: metadata.namespace {given} differs from the path's {ns}",
                    kind.name
                ))
            }
        },
        (true, None) => {
            if !metadata.get("namespace").is_some_and(Value::is_string) {
                metadata.insert("namespace".into(), json!("default"));
            }
        }
        (false, _) => {
            metadata.remove("namespace");
        }
    }
    if kind.name == "Namespace" {
        let labels = metadata
            .entry("labels")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| format!("Namespace {name}: metadata.labels is not an object"))?;
        labels.insert("kubernetes.io/metadata.name".into(), json!(name));
    }
    Ok(())
}

/// Applies a strategic merge patch to `target`: maps merge key by key, `null` deletes, the
/// lists of `kind.merge_keys` merge entry by entry on their key (an entry of the patch
/// merges into the target's entry with the same key, or is appended), other lists and
/// scalars are replaced. `$patch` directives are not supported and refused.
pub fn strategic_merge(kind: Kind, target: &mut Value, patch: &Value) -> Result<(), String> {
    merge(kind, target, patch, 0)
}

fn merge(kind: Kind, target: &mut Value, patch: &Value, depth: usize) -> Result<(), String> {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let map = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if key.starts_with('$') {
            return Err(format!(
                "strategic merge directive {key} is not supported here"
            ));
        }
        if value.is_null() {
            map.remove(key);
            continue;
        }
        let merge_key = kind
            .merge_keys
            .iter()
            .find(|(list, _)| list == key && depth == 0)
            .map(|(_, k)| *k);
        match (merge_key, value) {
            (Some(by), Value::Array(entries)) => {
                let list = map.entry(key.clone()).or_insert_with(|| json!([]));
                if !list.is_array() {
                    *list = json!([]);
                }
                let list = list.as_array_mut().expect("made an array above");
                for entry in entries {
                    let id = entry
                        .get(by)
                        .ok_or_else(|| format!("an entry of {key} has no merge key {by}"))?;
                    match list.iter_mut().find(|e| e.get(by) == Some(id)) {
                        Some(existing) => merge(kind, existing, entry, depth + 1)?,
                        None => list.push(entry.clone()),
                    }
                }
            }
            (_, Value::Object(_)) => merge(
                kind,
                map.entry(key.clone()).or_insert(Value::Null),
                value,
                depth + 1,
            )?,
            _ => {
                map.insert(key.clone(), value.clone());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook_kind() -> Kind {
        Kind::named("MutatingWebhookConfiguration").unwrap()
    }

    #[test]
    fn webhooks_merge_by_name_and_other_fields_stay() {
        let mut config = json!({"metadata": {"name": "x", "labels": {"a": "1"}},
            "webhooks": [{"name": "one", "clientConfig": {"service": {"name": "s"}}, "timeoutSeconds": 5},
                         {"name": "two", "clientConfig": {"caBundle": "b2xk"}}]});
        let patch = json!({"webhooks": [{"name": "two", "clientConfig": {"caBundle": "bmV3"}},
                                         {"name": "three", "sideEffects": "None"}],
                           "metadata": {"labels": {"a": null, "b": "2"}}});
        strategic_merge(webhook_kind(), &mut config, &patch).unwrap();
        assert_eq!(
            config,
            json!({"metadata": {"name": "x", "labels": {"b": "2"}},
                "webhooks": [{"name": "one", "clientConfig": {"service": {"name": "s"}}, "timeoutSeconds": 5},
                             {"name": "two", "clientConfig": {"caBundle": "bmV3"}},
                             {"name": "three", "sideEffects": "None"}]})
        );
    }

    #[test]
    fn lists_without_a_merge_key_are_replaced_and_directives_refused() {
        let mut config = json!({"webhooks": [{"name": "one", "rules": [{"a": 1}, {"b": 2}]}]});
        let patch = json!({"webhooks": [{"name": "one", "rules": [{"c": 3}]}]});
        strategic_merge(webhook_kind(), &mut config, &patch).unwrap();
        assert_eq!(config["webhooks"][0]["rules"], json!([{"c": 3}]));
        let e = strategic_merge(webhook_kind(), &mut config, &json!({"$patch": "replace"}))
            .unwrap_err();
        assert!(e.contains("$patch"), "{e}");
        let e = strategic_merge(
            webhook_kind(),
            &mut config,
            &json!({"webhooks": [{"x": 1}]}),
        )
        .unwrap_err();
        assert!(e.contains("merge key name"), "{e}");
    }

    #[test]
    fn paths_name_their_kind() {
        let (k, ns) = Kind::of_collection("/api/v1/namespaces/apps/services").unwrap();
        assert_eq!((k.name, ns.as_deref()), ("Service", Some("apps")));
        let (k, ns) = Kind::of_collection("/api/v1/namespaces").unwrap();
        assert_eq!((k.name, ns), ("Namespace", None));
        let (k, name) = Kind::of_object(
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/lattice-injector",
        )
        .unwrap();
        assert_eq!(
            (k.name, name),
            ("MutatingWebhookConfiguration", "lattice-injector")
        );
        assert!(Kind::of_collection("/api/v1/namespaces/apps/pods").is_none());
    }

    #[test]
    fn a_namespace_gets_its_name_label() {
        let mut ns =
            json!({"kind": "Namespace", "metadata": {"name": "apps", "labels": {"x": "y"}}});
        normalise(Kind::named("Namespace").unwrap(), &mut ns, None).unwrap();
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "apps"
        );
        assert_eq!(ns["metadata"]["labels"]["x"], "y");
        let mut svc = json!({"metadata": {"name": "s", "namespace": "a"}});
        let e = normalise(Kind::named("Service").unwrap(), &mut svc, Some("b")).unwrap_err();
        assert!(e.contains("differs"), "{e}");
    }
}
