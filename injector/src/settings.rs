//! What the injected sidecar looks like: the settings file (the `lattice-injector`
//! ConfigMap, TOML, every key optional) and the few per-pod annotation overrides.
//!
//! The defaults reproduce `deploy/components/sidecar/lattice-proxy.yaml` exactly, so a pod
//! injected by the webhook and a pod template patched by the component get the same
//! container (the tests compare them).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// Per-pod override of the proxy image.
pub const IMAGE_ANNOTATION: &str = "lattice-egress.io/proxy-image";
/// Per-pod override of the proxy's CPU request.
pub const CPU_REQUEST_ANNOTATION: &str = "lattice-egress.io/proxy-cpu-request";
/// Per-pod override of the proxy's memory request.
pub const MEMORY_REQUEST_ANNOTATION: &str = "lattice-egress.io/proxy-memory-request";
/// Per-pod override of the proxy's memory limit.
pub const MEMORY_LIMIT_ANNOTATION: &str = "lattice-egress.io/proxy-memory-limit";

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read settings file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("settings file {path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("{what} = {value:?} is not a Kubernetes quantity (e.g. 10m, 16Mi)")]
    Quantity { what: String, value: String },
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("app-gid = {gid} is one of exempt-gids {exempt:?}: the app would never be redirected")]
    AppGidExempt { gid: i64, exempt: Vec<i64> },
    #[error("proxy-gid = {gid} is not in exempt-gids {exempt:?}: the proxy would be redirected to itself")]
    ProxyGidNotExempt { gid: i64, exempt: Vec<i64> },
}

/// The container's resources; `None` leaves the field out.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Resources {
    pub cpu_request: Option<String>,
    pub memory_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu_request: Some("10m".into()),
            memory_request: Some("16Mi".into()),
            cpu_limit: None,
            memory_limit: Some("64Mi".into()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Settings {
    /// The lattice-proxy image.
    pub image: String,
    /// `imagePullPolicy`; unset leaves Kubernetes' default.
    pub image_pull_policy: Option<String>,
    /// The ConfigMap in the pod's namespace the proxy takes its environment from (`envFrom`,
    /// required like the component's); empty for none.
    pub config_map: String,
    /// `AWS_REGION` for the proxy, when the ConfigMap does not carry it.
    pub region: Option<String>,
    /// `LATTICE_PROXY_CA_FILE`: a private CA bundle path inside the proxy container.
    pub ca_file: Option<String>,
    /// `LATTICE_PROXY_PRIVATE_CA_ARN`: the AWS Private CA to trust.
    pub private_ca_arn: Option<String>,
    /// The proxy's admin port (`--admin 0.0.0.0:PORT`, the probes' `proxy-admin` port).
    pub admin_port: u16,
    /// `--redirect-check ADDR` (the agent's canary port); empty to leave the flag out.
    pub redirect_check: String,
    /// More proxy flags, appended after the ones above.
    pub extra_args: Vec<String>,
    pub resources: Resources,
    /// The pod-level `runAsGroup` set when the pod has none: a GID the agent redirects.
    pub app_gid: i64,
    /// The proxy's uid and gid (the agent's `proxy-gid`).
    pub proxy_uid: i64,
    pub proxy_gid: i64,
    /// GIDs the agent never redirects: an app container running with one gets a warning.
    pub exempt_gids: Vec<i64>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            image: "public.ecr.aws/lattice-egress/lattice-proxy:0.1.0".into(),
            image_pull_policy: None,
            config_map: "lattice-proxy".into(),
            region: None,
            ca_file: None,
            private_ca_arn: None,
            admin_port: 15000,
            redirect_check: "127.0.0.1:15009".into(),
            extra_args: Vec::new(),
            resources: Resources::default(),
            app_gid: 1000,
            proxy_uid: 1337,
            proxy_gid: 1337,
            exempt_gids: vec![0, 1337],
        }
    }
}

impl Settings {
    /// Reads and checks a settings file; a bad file is an error, never a warning.
    pub fn load(path: &Path) -> Result<Settings, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Settings::parse(&text).map_err(|e| match e {
            SettingsError::Parse { source, .. } => SettingsError::Parse {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Settings, SettingsError> {
        let settings: Settings = toml::from_str(text).map_err(|source| SettingsError::Parse {
            path: "<text>".into(),
            source,
        })?;
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), SettingsError> {
        if self.image.trim().is_empty() {
            return Err(SettingsError::Empty { what: "image" });
        }
        let r = &self.resources;
        for (what, value) in [
            ("resources.cpu-request", &r.cpu_request),
            ("resources.memory-request", &r.memory_request),
            ("resources.cpu-limit", &r.cpu_limit),
            ("resources.memory-limit", &r.memory_limit),
        ] {
            if let Some(v) = value {
                check_quantity(what, v)?;
            }
        }
        if self.exempt_gids.contains(&self.app_gid) {
            return Err(SettingsError::AppGidExempt {
                gid: self.app_gid,
                exempt: self.exempt_gids.clone(),
            });
        }
        if !self.exempt_gids.contains(&self.proxy_gid) {
            return Err(SettingsError::ProxyGidNotExempt {
                gid: self.proxy_gid,
                exempt: self.exempt_gids.clone(),
            });
        }
        Ok(())
    }

    /// These settings with the pod's override annotations applied; a malformed value is an
    /// error naming the annotation.
    pub fn for_pod(
        &self,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Settings, SettingsError> {
        let mut s = self.clone();
        if let Some(image) = annotations.get(IMAGE_ANNOTATION) {
            if image.trim().is_empty() {
                return Err(SettingsError::Empty {
                    what: IMAGE_ANNOTATION,
                });
            }
            s.image = image.clone();
        }
        for (key, slot) in [
            (CPU_REQUEST_ANNOTATION, &mut s.resources.cpu_request),
            (MEMORY_REQUEST_ANNOTATION, &mut s.resources.memory_request),
            (MEMORY_LIMIT_ANNOTATION, &mut s.resources.memory_limit),
        ] {
            if let Some(v) = annotations.get(key) {
                check_quantity(key, v)?;
                *slot = Some(v.clone());
            }
        }
        Ok(s)
    }

    /// The proxy's command-line arguments.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--admin".to_string(),
            format!("0.0.0.0:{}", self.admin_port),
        ];
        if !self.redirect_check.is_empty() {
            args.push("--redirect-check".into());
            args.push(self.redirect_check.clone());
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// A Kubernetes resource quantity: a decimal number with an optional binary (`Ki`…`Ei`),
/// decimal (`n u m k M G T P E`) or exponent suffix.
fn check_quantity(what: &str, value: &str) -> Result<(), SettingsError> {
    let bad = || SettingsError::Quantity {
        what: what.to_string(),
        value: value.to_string(),
    };
    const SUFFIXES: [&str; 16] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E", "",
    ];
    let mut number = value;
    if let Some(pos) = value.find(['e', 'E']).filter(|p| *p > 0) {
        let exp = &value[pos + 1..];
        let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        number = &value[..pos];
    } else if let Some(s) = SUFFIXES
        .iter()
        .find(|s| !s.is_empty() && value.ends_with(*s))
    {
        number = &value[..value.len() - s.len()];
    }
    let number = number.strip_prefix('+').unwrap_or(number);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits_ok(int) || !digits_ok(frac) {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_component_defaults() {
        assert_eq!(Settings::parse("").unwrap(), Settings::default());
        assert_eq!(
            Settings::default().args(),
            [
                "--admin",
                "0.0.0.0:15000",
                "--redirect-check",
                "127.0.0.1:15009"
            ]
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_value() {
        let e = Settings::parse("imgae = \"x\"").unwrap_err().to_string();
        assert!(e.contains("imgae"), "{e}");
        let e = Settings::parse("[resources]\ncpu-request = \"ten\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("resources.cpu-request") && e.contains("\"ten\""),
            "{e}"
        );
        let e = Settings::parse("app-gid = 0").unwrap_err().to_string();
        assert!(e.contains("app-gid = 0"), "{e}");
        let e = Settings::parse("proxy-gid = 2000").unwrap_err().to_string();
        assert!(e.contains("proxy-gid = 2000"), "{e}");
    }

    #[test]
    fn quantities() {
        for ok in ["10m", "16Mi", "1", "0.5", "1e3", "2G", ".5", "1.5Gi"] {
            check_quantity("q", ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "ten", "10 m", "Mi", "1e", "1.2.3", "-1", "10mb"] {
            assert!(check_quantity("q", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn annotations_override_a_few_fields() {
        let mut a = BTreeMap::new();
        a.insert(IMAGE_ANNOTATION.to_string(), "example.com/p:2".to_string());
        a.insert(MEMORY_LIMIT_ANNOTATION.to_string(), "128Mi".to_string());
        let s = Settings::default().for_pod(&a).unwrap();
        assert_eq!(s.image, "example.com/p:2");
        assert_eq!(s.resources.memory_limit.as_deref(), Some("128Mi"));
        assert_eq!(s.resources.cpu_request.as_deref(), Some("10m"));
        a.insert(CPU_REQUEST_ANNOTATION.to_string(), "lots".to_string());
        let e = Settings::default().for_pod(&a).unwrap_err().to_string();
        assert!(
            e.contains(CPU_REQUEST_ANNOTATION) && e.contains("lots"),
            "{e}"
        );
    }
}
