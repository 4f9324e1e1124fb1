//! The emulator's configuration (serde, JSON) and its validation into the [`Model`] that
//! the server runs. Every error names its place (`services[1] "app2".routes[0].target_group`)
//! and what to write instead; nothing is silently defaulted past load.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    credentials::{CredentialsRegistry, Identity, StoredCredential},
    policy::{AuthPolicy, PolicyError},
    target::Target,
};

/// A configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}: {message}")]
pub struct ConfigError {
    /// Where: the file (when there is one) and the path inside it.
    pub place: String,
    /// What is wrong and what to do.
    pub message: String,
}

fn fail<T>(place: impl Into<String>, message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError {
        place: place.into(),
        message: message.into(),
    })
}

/// How a Lattice service authenticates callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum AuthType {
    /// No authentication: requests are forwarded without a signature check.
    #[serde(rename = "NONE")]
    #[default]
    None,
    /// SigV4 and the service's auth policy.
    #[serde(rename = "AWS_IAM")]
    AwsIam,
}

/// The Lattice emulator's configuration: the account, the service network, the services with
/// their routes and auth policies, the target groups and the access keys it knows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmulatorConfig {
    /// AWS region of the emulated service network, used in ARNs and required in SigV4 scopes.
    #[serde(default = "default_region")]
    pub region: String,
    /// 12-digit account that owns the services.
    pub account_id: String,
    /// The service network the services belong to.
    #[serde(default)]
    pub service_network: ServiceNetworkConfig,
    /// Extra DNS names for the TLS certificate (e.g. `*.example.com`); the services' hosts are
    /// always included.
    #[serde(default)]
    pub tls_names: Vec<String>,
    /// VPCs that clients are taken to come from, by source address (for
    /// `vpc-lattice-svcs:SourceVpc` and `x-amzn-lattice-network`).
    #[serde(default)]
    pub source_vpcs: Vec<SourceVpcConfig>,
    /// Access keys the emulator accepts.
    #[serde(default)]
    pub credentials: Vec<CredentialConfig>,
    /// Lattice services.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// Target groups that services route to.
    #[serde(default)]
    pub target_groups: Vec<TargetGroupConfig>,
}

fn default_region() -> String {
    "us-west-2".to_owned()
}

/// The service network.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNetworkConfig {
    /// Id, `sn-` followed by 17 hex digits.
    pub id: String,
    /// Name.
    pub name: String,
}

impl Default for ServiceNetworkConfig {
    fn default() -> Self {
        Self {
            id: "sn-0e1a7c0de0e1a7c0d".to_owned(),
            name: "lattice-emulator".to_owned(),
        }
    }
}

/// A VPC that clients come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceVpcConfig {
    /// VPC id, `vpc-…`.
    pub id: String,
    /// Owner account; the emulator's account when absent.
    #[serde(default)]
    pub owner_account: Option<String>,
    /// Client address ranges taken to be in this VPC (first match wins).
    pub cidrs: Vec<String>,
}

/// An access key and the assumed-role session behind it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token; when set, requests must carry it in `x-amz-security-token`.
    #[serde(default)]
    pub session_token: Option<String>,
    /// Account of the role; the emulator's account when absent.
    #[serde(default)]
    pub account_id: Option<String>,
    /// Role name.
    pub role_name: String,
    /// Role path (`/` when absent).
    #[serde(default)]
    pub role_path: Option<String>,
    /// Role session name.
    pub session_name: String,
    /// Session tags (`eks-cluster-name`, `kubernetes-namespace`, …).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Absolute expiry, RFC 3339 (`2030-01-01T00:00:00Z`).
    #[serde(default)]
    pub expiration: Option<String>,
    /// Expiry relative to the emulator's start, in seconds.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

/// A Lattice service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Service name.
    pub name: String,
    /// Service id (`svc-` and 17 hex digits); derived from the name when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Host names (custom domain names) that reach this service.
    pub hosts: Vec<String>,
    /// `NONE` or `AWS_IAM`.
    #[serde(default)]
    pub auth_type: AuthType,
    /// Auth policy document (AWS_IAM only). Without a policy an AWS_IAM service denies all,
    /// as Lattice does.
    #[serde(default)]
    pub auth_policy: Option<serde_json::Value>,
    /// Auth policy read from a file, relative to the configuration file's directory.
    #[serde(default)]
    pub auth_policy_file: Option<PathBuf>,
    /// Listener rules: the longest matching path prefix wins.
    pub routes: Vec<RouteConfig>,
}

/// A listener rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Path prefix, starting with `/`.
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    /// Name of the target group.
    pub target_group: String,
}

fn default_prefix() -> String {
    "/".to_owned()
}

/// The protocol version spoken to a target group's targets (plain HTTP in both cases).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum TargetProtocol {
    /// HTTP/1.1.
    #[serde(rename = "HTTP1")]
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c); `GRPC` is accepted as the same.
    #[serde(rename = "HTTP2", alias = "GRPC")]
    Http2,
}

/// A target group.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetGroupConfig {
    /// Name.
    pub name: String,
    /// `HTTP1` (default), `HTTP2` or `GRPC`.
    #[serde(default)]
    pub protocol_version: TargetProtocol,
    /// Id (`tg-` and 17 hex digits); derived from the name when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Targets, used in turn.
    pub targets: Vec<Target>,
}

/// Everything the `lattice-emulator` binary reads from its configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Addresses to listen on.
    pub listeners: Vec<ListenerConfig>,
    /// Where to write the private CA certificate (PEM) for clients' `--ca-file`.
    #[serde(default)]
    pub ca_cert_out: Option<PathBuf>,
    /// Fake EKS Pod Identity agents to run.
    #[serde(default)]
    pub pod_identity_agents: Vec<PodIdentityAgentConfig>,
    /// The emulator itself.
    pub emulator: EmulatorConfig,
}

/// Plain HTTP or HTTPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Plain HTTP/1.1 (and h2c prior knowledge).
    Http,
    /// TLS with ALPN `h2` and `http/1.1`.
    Https,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
        })
    }
}

/// A listening address.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address and port.
    pub address: SocketAddr,
    /// `http` or `https`.
    pub protocol: Protocol,
    /// Network namespace file to listen in (e.g. `/run/netns/lattice`); the emulator's own
    /// namespace when absent.
    #[serde(default)]
    pub netns: Option<PathBuf>,
}

/// A fake EKS Pod Identity agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodIdentityAgentConfig {
    /// Address to listen on.
    pub address: SocketAddr,
    /// The `Authorization` header value that clients must send (the content of
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`).
    pub token: String,
    /// Access key (from `emulator.credentials`) to hand out.
    pub access_key_id: String,
    /// Network namespace file to listen in (e.g. `/run/netns/cluster1`, so that the
    /// cluster's proxy reaches the agent on its own loopback); the emulator's own namespace
    /// when absent.
    #[serde(default)]
    pub netns: Option<PathBuf>,
}

impl FileConfig {
    /// Reads and validates a configuration file. Relative paths inside it are taken from the
    /// file's directory.
    pub fn load(path: &Path, now: SystemTime) -> Result<(Self, Model), ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).or_else(|e| {
            fail(
                origin.clone(),
                format!("cannot read the configuration file: {e}"),
            )
        })?;
        let config: FileConfig = serde_json::from_str(&text).or_else(|e| {
            fail(
                format!("{origin}, line {}, column {}", e.line(), e.column()),
                format!("invalid configuration: {e}"),
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let model = config
            .emulator
            .compile(Some(base), now)
            .map_err(|e| ConfigError {
                place: format!("{origin}: emulator.{}", e.place),
                message: e.message,
            })?;
        for (i, agent) in config.pod_identity_agents.iter().enumerate() {
            if model.registry.get(&agent.access_key_id).is_none() {
                return fail(
                    format!("{origin}: pod_identity_agents[{i}].access_key_id"),
                    format!(
                        "'{}' is not in emulator.credentials; add it there so the emulator \
                         accepts what the agent hands out",
                        agent.access_key_id
                    ),
                );
            }
            if agent.token.is_empty() {
                return fail(
                    format!("{origin}: pod_identity_agents[{i}].token"),
                    "empty; give the token clients send in Authorization",
                );
            }
        }
        let namespaces = config
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("listeners[{i}].netns"), &l.netns))
            .chain(
                config
                    .pod_identity_agents
                    .iter()
                    .enumerate()
                    .map(|(i, a)| (format!("pod_identity_agents[{i}].netns"), &a.netns)),
            );
        for (place, netns) in namespaces {
            if let Some(ns) = netns.as_ref().filter(|ns| !ns.exists()) {
                return fail(
                    format!("{origin}: {place}"),
                    format!(
                        "'{}' does not exist; give a network namespace file such as \
                         /run/netns/<name>",
                        ns.display()
                    ),
                );
            }
        }
        if config.listeners.is_empty() {
            return fail(
                format!("{origin}: listeners"),
                "no listener; add e.g. {\"address\": \"127.0.0.1:8443\", \"protocol\": \"https\"}",
            );
        }
        Ok((config, model))
    }
}

/// A validated service.
#[derive(Debug, Clone)]
pub struct Service {
    /// Name.
    pub name: String,
    /// `svc-…` id.
    pub id: String,
    /// `arn:aws:vpc-lattice:<region>:<acct>:service/<id>`.
    pub arn: String,
    /// How callers are authenticated.
    pub auth_type: AuthType,
    /// The auth policy (AWS_IAM only).
    pub policy: Option<AuthPolicy>,
    /// Routes, longest prefix first.
    pub routes: Vec<Route>,
}

impl Service {
    /// The route for a request path: the longest matching prefix.
    pub fn route(&self, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| path.starts_with(&r.path_prefix))
    }
}

/// A validated listener rule.
#[derive(Debug, Clone)]
pub struct Route {
    /// Path prefix.
    pub path_prefix: String,
    /// Where requests go.
    pub target_group: Arc<TargetGroup>,
}

/// A validated target group.
#[derive(Debug)]
pub struct TargetGroup {
    /// Name.
    pub name: String,
    /// `arn:aws:vpc-lattice:<region>:<acct>:targetgroup/<id>`.
    pub arn: String,
    /// Protocol version toward the targets.
    pub protocol_version: TargetProtocol,
    /// Targets.
    pub targets: Vec<Target>,
    next: std::sync::atomic::AtomicUsize,
}

impl TargetGroup {
    /// The next target, in turn.
    pub fn pick(&self) -> &Target {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.targets[i % self.targets.len()]
    }
}

/// A source VPC with its address ranges.
#[derive(Debug, Clone)]
pub struct SourceVpc {
    /// VPC id.
    pub id: String,
    /// `arn:aws:ec2:<region>:<owner>:vpc/<id>`.
    pub arn: String,
    /// Owner account.
    pub owner_account: String,
    /// Client address ranges.
    pub cidrs: Vec<IpNet>,
}

/// The validated configuration the server runs.
#[derive(Debug, Clone)]
pub struct Model {
    /// Region.
    pub region: String,
    /// Account.
    pub account_id: String,
    /// Service network ARN.
    pub service_network_arn: String,
    /// Services.
    pub services: Vec<Service>,
    /// Lower-case host → index in `services`.
    pub hosts: HashMap<String, usize>,
    /// Access keys.
    pub registry: CredentialsRegistry,
    /// Source VPCs.
    pub source_vpcs: Vec<SourceVpc>,
    /// DNS names for the certificate.
    pub tls_names: Vec<String>,
}

impl Model {
    /// The service that answers a host name (port and trailing dot ignored, case-insensitive).
    pub fn service_for_host(&self, host: &str) -> Option<&Service> {
        self.hosts
            .get(&normalize_host(host))
            .map(|&i| &self.services[i])
    }

    /// The VPC a client address belongs to.
    pub fn source_vpc(&self, ip: IpAddr) -> Option<&SourceVpc> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.source_vpcs
            .iter()
            .find(|v| v.cidrs.iter().any(|c| c.contains(&ip)))
    }
}

/// Lower-cases a host and drops the port and a trailing dot.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let without_port = if host.starts_with('[') {
        host.split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1])
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h)
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_dns_name(name: &str, wildcard_ok: bool) -> bool {
    let name = match name.strip_prefix("*.") {
        Some(rest) if wildcard_ok => rest,
        _ => name,
    };
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A stable 17-hex-digit id from a name, so configurations need not invent ids.
fn derived_id(prefix: &str, name: &str) -> String {
    let digest = hex::encode(Sha256::digest(format!("{prefix}{name}").as_bytes()));
    format!("{prefix}{}", &digest[..17])
}

fn check_id(place: &str, id: &str, prefix: &str) -> Result<(), ConfigError> {
    let ok = id
        .strip_prefix(prefix)
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        fail(
            place,
            format!("'{id}' is not an id; expected '{prefix}' followed by hex digits"),
        )
    }
}

impl EmulatorConfig {
    /// Parses a configuration from JSON text (the `emulator` object of a [`FileConfig`]).
    pub fn from_json_str(text: &str) -> Result<Self, ConfigError> {
        serde_json::from_str(text).or_else(|e| {
            fail(
                format!("line {}, column {}", e.line(), e.column()),
                format!("invalid configuration: {e}"),
            )
        })
    }

    /// Validates the configuration into the model the server runs. `base_dir` resolves
    /// relative `auth_policy_file` paths; `now` anchors `expires_in_secs`.
    pub fn compile(&self, base_dir: Option<&Path>, now: SystemTime) -> Result<Model, ConfigError> {
        if self.region.is_empty()
            || !self
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return fail(
                "region",
                format!(
                    "'{}' is not a region name; use e.g. \"us-west-2\"",
                    self.region
                ),
            );
        }
        if !is_account_id(&self.account_id) {
            return fail(
                "account_id",
                format!("'{}' is not a 12-digit account id", self.account_id),
            );
        }
        check_id("service_network.id", &self.service_network.id, "sn-")?;
        let arn_prefix = format!("arn:aws:vpc-lattice:{}:{}", self.region, self.account_id);
        let service_network_arn =
            format!("{arn_prefix}:servicenetwork/{}", self.service_network.id);

        let mut registry = CredentialsRegistry::new();
        for (i, c) in self.credentials.iter().enumerate() {
            let place = format!("credentials[{i}]");
            registry.insert(self.compile_credential(c, &place, now)?);
            if registry.len() != i + 1 {
                return fail(
                    format!("{place}.access_key_id"),
                    format!("'{}' is listed twice", c.access_key_id),
                );
            }
        }

        let mut groups: HashMap<&str, Arc<TargetGroup>> = HashMap::new();
        for (i, g) in self.target_groups.iter().enumerate() {
            let place = format!("target_groups[{i}] \"{}\"", g.name);
            if g.name.is_empty() {
                return fail(format!("target_groups[{i}].name"), "empty name");
            }
            let id = match &g.id {
                Some(id) => {
                    check_id(&format!("{place}.id"), id, "tg-")?;
                    id.clone()
                }
                None => derived_id("tg-", &g.name),
            };
            if g.targets.is_empty() {
                return fail(
                    format!("{place}.targets"),
                    "no target; add e.g. {\"address\": \"127.0.0.1:8090\"}",
                );
            }
            for (j, t) in g.targets.iter().enumerate() {
                if let Some(ns) = &t.netns {
                    if !ns.exists() {
                        return fail(
                            format!("{place}.targets[{j}].netns"),
                            format!(
                                "'{}' does not exist; give a network namespace file such as \
                                 /run/netns/<name>",
                                ns.display()
                            ),
                        );
                    }
                }
            }
            let group = Arc::new(TargetGroup {
                name: g.name.clone(),
                arn: format!("{arn_prefix}:targetgroup/{id}"),
                protocol_version: g.protocol_version,
                targets: g.targets.clone(),
                next: Default::default(),
            });
            if groups.insert(g.name.as_str(), group).is_some() {
                return fail(
                    format!("target_groups[{i}].name"),
                    format!("'{}' is used by two target groups", g.name),
                );
            }
        }

        let mut services = Vec::new();
        let mut hosts = HashMap::new();
        let mut ids = HashSet::new();
        let mut tls_names = Vec::new();
        for (i, s) in self.services.iter().enumerate() {
            let place = format!("services[{i}] \"{}\"", s.name);
            if s.name.is_empty() {
                return fail(format!("services[{i}].name"), "empty name");
            }
            let id = match &s.id {
                Some(id) => {
                    check_id(&format!("{place}.id"), id, "svc-")?;
                    id.clone()
                }
                None => derived_id("svc-", &s.name),
            };
            if !ids.insert(id.clone()) {
                return fail(
                    format!("{place}.id"),
                    format!("'{id}' is used by two services"),
                );
            }
            if s.hosts.is_empty() {
                return fail(
                    format!("{place}.hosts"),
                    "no host; add the service's custom domain name, e.g. \"app.example.com\"",
                );
            }
            for (j, h) in s.hosts.iter().enumerate() {
                if !is_dns_name(h, false) {
                    return fail(
                        format!("{place}.hosts[{j}]"),
                        format!("'{h}' is not a DNS name (no port, no wildcard)"),
                    );
                }
                if hosts.insert(normalize_host(h), i).is_some() {
                    return fail(
                        format!("{place}.hosts[{j}]"),
                        format!("'{h}' already belongs to another service"),
                    );
                }
                tls_names.push(h.to_ascii_lowercase());
            }
            let policy = self.compile_policy(s, &place, base_dir)?;
            if s.routes.is_empty() {
                return fail(
                    format!("{place}.routes"),
                    "no route; add e.g. {\"path_prefix\": \"/\", \"target_group\": \"<name>\"}",
                );
            }
            let mut routes = Vec::new();
            for (j, r) in s.routes.iter().enumerate() {
                if !r.path_prefix.starts_with('/') {
                    return fail(
                        format!("{place}.routes[{j}].path_prefix"),
                        format!("'{}' does not start with '/'", r.path_prefix),
                    );
                }
                let Some(group) = groups.get(r.target_group.as_str()) else {
                    return fail(
                        format!("{place}.routes[{j}].target_group"),
                        format!(
                            "'{}' is not a target group; define it in target_groups",
                            r.target_group
                        ),
                    );
                };
                routes.push(Route {
                    path_prefix: r.path_prefix.clone(),
                    target_group: group.clone(),
                });
            }
            // Longest prefix first, so `route()` can take the first match.
            routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
            services.push(Service {
                name: s.name.clone(),
                arn: format!("{arn_prefix}:service/{id}"),
                id,
                auth_type: s.auth_type,
                policy,
                routes,
            });
        }

        for (i, name) in self.tls_names.iter().enumerate() {
            if !is_dns_name(name, true) {
                return fail(
                    format!("tls_names[{i}]"),
                    format!("'{name}' is not a DNS name or a '*.' wildcard name"),
                );
            }
            tls_names.push(name.to_ascii_lowercase());
        }
        tls_names.sort();
        tls_names.dedup();

        let mut source_vpcs = Vec::new();
        for (i, v) in self.source_vpcs.iter().enumerate() {
            let place = format!("source_vpcs[{i}]");
            check_id(&format!("{place}.id"), &v.id, "vpc-")?;
            let owner = v.owner_account.clone().unwrap_or(self.account_id.clone());
            if !is_account_id(&owner) {
                return fail(
                    format!("{place}.owner_account"),
                    format!("'{owner}' is not a 12-digit account id"),
                );
            }
            let mut cidrs = Vec::new();
            for (j, c) in v.cidrs.iter().enumerate() {
                let net = c
                    .parse::<IpNet>()
                    .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                    .or_else(|_| {
                        fail(
                            format!("{place}.cidrs[{j}]"),
                            format!("'{c}' is not a CIDR block such as 10.0.0.0/16"),
                        )
                    })?;
                cidrs.push(net);
            }
            source_vpcs.push(SourceVpc {
                arn: format!("arn:aws:ec2:{}:{owner}:vpc/{}", self.region, v.id),
                id: v.id.clone(),
                owner_account: owner,
                cidrs,
            });
        }

        Ok(Model {
            region: self.region.clone(),
            account_id: self.account_id.clone(),
            service_network_arn,
            services,
            hosts,
            registry,
            source_vpcs,
            tls_names,
        })
    }

    fn compile_credential(
        &self,
        c: &CredentialConfig,
        place: &str,
        now: SystemTime,
    ) -> Result<StoredCredential, ConfigError> {
        for (field, value) in [
            ("access_key_id", &c.access_key_id),
            ("secret_access_key", &c.secret_access_key),
            ("role_name", &c.role_name),
            ("session_name", &c.session_name),
        ] {
            if value.is_empty() || value.contains(char::is_whitespace) {
                return fail(
                    format!("{place}.{field}"),
                    format!("'{value}' must be non-empty and without spaces"),
                );
            }
        }
        let account_id = c.account_id.clone().unwrap_or(self.account_id.clone());
        if !is_account_id(&account_id) {
            return fail(
                format!("{place}.account_id"),
                format!("'{account_id}' is not a 12-digit account id"),
            );
        }
        let role_path = c.role_path.clone().unwrap_or("/".to_owned());
        if !role_path.starts_with('/') || !role_path.ends_with('/') {
            return fail(
                format!("{place}.role_path"),
                format!("'{role_path}' must start and end with '/'"),
            );
        }
        for key in c.tags.keys() {
            if key.is_empty() {
                return fail(format!("{place}.tags"), "a tag key is empty");
            }
        }
        let expiration = match (&c.expiration, c.expires_in_secs) {
            (Some(_), Some(_)) => {
                return fail(
                    format!("{place}.expires_in_secs"),
                    "give expiration or expires_in_secs, not both",
                )
            }
            (Some(text), None) => Some(
                time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                    .map(SystemTime::from)
                    .or_else(|e| {
                        fail(
                            format!("{place}.expiration"),
                            format!("'{text}' is not an RFC 3339 time such as 2030-01-01T00:00:00Z: {e}"),
                        )
                    })?,
            ),
            (None, Some(secs)) => Some(now + Duration::from_secs(secs)),
            (None, None) => None,
        };
        Ok(StoredCredential {
            access_key_id: c.access_key_id.clone(),
            secret_access_key: c.secret_access_key.clone(),
            session_token: c.session_token.clone().filter(|t| !t.is_empty()),
            expiration,
            identity: Arc::new(Identity {
                account_id,
                role_name: c.role_name.clone(),
                role_path,
                session_name: c.session_name.clone(),
                tags: c.tags.clone(),
            }),
        })
    }

    fn compile_policy(
        &self,
        s: &ServiceConfig,
        place: &str,
        base_dir: Option<&Path>,
    ) -> Result<Option<AuthPolicy>, ConfigError> {
        let with_place = |prefix: String| {
            move |e: PolicyError| ConfigError {
                place: format!("{prefix}: {}", e.place),
                message: e.message,
            }
        };
        let policy = match (&s.auth_policy, &s.auth_policy_file) {
            (Some(_), Some(_)) => {
                return fail(
                    format!("{place}.auth_policy_file"),
                    "give auth_policy or auth_policy_file, not both",
                )
            }
            (Some(doc), None) => Some(
                AuthPolicy::from_value(doc).map_err(with_place(format!("{place}.auth_policy")))?,
            ),
            (None, Some(file)) => {
                let path = match base_dir {
                    Some(base) if file.is_relative() => base.join(file),
                    _ => file.clone(),
                };
                let text = std::fs::read_to_string(&path).or_else(|e| {
                    fail(
                        format!("{place}.auth_policy_file"),
                        format!("cannot read '{}': {e}", path.display()),
                    )
                })?;
                Some(AuthPolicy::from_json_str(&text).map_err(with_place(format!(
                    "{place}.auth_policy_file '{}'",
                    path.display()
                )))?)
            }
            (None, None) => None,
        };
        match (s.auth_type, &policy) {
            (AuthType::None, Some(_)) => fail(
                format!("{place}.auth_type"),
                "NONE with an auth policy: the policy would never be evaluated; \
                 set auth_type to AWS_IAM or remove the policy",
            ),
            (AuthType::AwsIam, None) => {
                tracing::warn!(service = %s.name, "AWS_IAM service without an auth policy denies every request");
                Ok(None)
            }
            _ => Ok(policy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("App.Example.com:443"), "app.example.com");
        assert_eq!(normalize_host("app.example.com."), "app.example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
    }

    #[test]
    fn derived_ids_are_stable_and_well_formed() {
        let id = derived_id("svc-", "demo");
        assert_eq!(id, derived_id("svc-", "demo"));
        assert_eq!(id.len(), 4 + 17);
        check_id("x", &id, "svc-").unwrap();
    }
}
