//! Configuration from flags and environment variables.
//!
//! The knobs carry the names users of Envoy's signing filter and of aws-sigv4-proxy know
//! (`--name`/`--service`, `--region`, `--unsigned-payload`, `--upstream-port`, ...). Every
//! flag also reads an environment variable so the sidecar can be configured from a pod spec.
//! Invalid configuration is an error at start (exit 64), never a warning.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};
use http::header::HeaderName;

use crate::allow::{AllowList, LATTICE_DOMAIN};
use crate::sign::{Algorithm, PayloadMode, DEFAULT_SIGNING_NAME, NEVER_SIGNED};
use crate::upstream::UpstreamConfig;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Command line of `lattice-proxy`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "lattice-proxy",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("LATTICE_EGRESS_REVISION"), ")"),
    about = "SigV4-signing, TLS-originating sidecar for Amazon VPC Lattice",
    after_help = "Exit status: 0 stopped by SIGTERM or SIGINT after draining; 1 a failure the \
                  error line names (a port in use, the Private CA fetch); 2 a malformed command \
                  line; 64 an invalid configuration (a flag or variable): restarting will not help."
)]
pub struct Args {
    /// Addresses to accept plain HTTP/1.1 and h2c on (comma-separated).
    #[arg(
        long,
        env = "LATTICE_PROXY_LISTEN",
        value_delimiter = ',',
        default_value = "127.0.0.1:15001,[::1]:15001"
    )]
    pub listen: Vec<SocketAddr>,

    /// Admin address serving /healthz, /readyz and /metrics.
    #[arg(long, env = "LATTICE_PROXY_ADMIN", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,

    /// SigV4 signing name.
    #[arg(
        long = "name",
        visible_alias = "service",
        env = "LATTICE_PROXY_SIGNING_NAME",
        default_value = DEFAULT_SIGNING_NAME
    )]
    pub signing_name: String,

    /// Region to sign for; defaults to AWS_REGION, then the AWS config chain.
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,

    /// Send and sign `x-amz-content-sha256: UNSIGNED-PAYLOAD` (what Lattice expects); with
    /// `--unsigned-payload=false`, bodies up to --signed-payload-max-bytes are hashed and signed.
    #[arg(
        long,
        env = "LATTICE_PROXY_UNSIGNED_PAYLOAD",
        action = ArgAction::Set,
        num_args = 0..=1,
        default_value_t = true,
        default_missing_value = "true"
    )]
    pub unsigned_payload: bool,

    /// Largest body hashed and signed when --unsigned-payload=false (bigger ones stream unsigned).
    #[arg(long, env = "LATTICE_PROXY_SIGNED_PAYLOAD_MAX_BYTES", default_value_t = 64 * 1024)]
    pub signed_payload_max_bytes: u64,

    /// Sign with SigV4A (ECDSA P-256) for a region set instead of SigV4 for one region.
    #[arg(long, env = "LATTICE_PROXY_SIGV4A")]
    pub sigv4a: bool,

    /// Region set for SigV4A (`*`, or comma-separated regions).
    #[arg(long, env = "LATTICE_PROXY_REGION_SET", default_value = "*")]
    pub region_set: String,

    /// Extra request headers to sign when present (e.g. content-type); comma-separated.
    #[arg(
        long = "sign-header",
        env = "LATTICE_PROXY_SIGN_HEADERS",
        value_delimiter = ','
    )]
    pub sign_headers: Vec<String>,

    /// Request headers to drop before signing and forwarding (aws-sigv4-proxy's --strip);
    /// comma-separated.
    #[arg(
        long = "strip",
        env = "LATTICE_PROXY_STRIP_HEADERS",
        value_delimiter = ','
    )]
    pub strip_headers: Vec<String>,

    /// Domain suffixes to forward to, in addition to Lattice's `on.aws` (comma-separated).
    #[arg(
        long = "allowed-domain",
        env = "LATTICE_PROXY_ALLOWED_DOMAINS",
        value_delimiter = ','
    )]
    pub allowed_domains: Vec<String>,

    /// Do not allow Lattice's generated `on.aws` names (only --allowed-domain ones).
    #[arg(long, env = "LATTICE_PROXY_NO_DEFAULT_DOMAIN")]
    pub no_default_domain: bool,

    /// PEM bundle of extra CA certificates to trust (the AWS Private CA of custom domains).
    #[arg(long, env = "LATTICE_PROXY_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// ARN of the AWS Private CA to fetch at start (GetCertificateAuthorityCertificate) and
    /// trust, instead of or in addition to --ca-file.
    #[arg(long, env = "LATTICE_PROXY_PRIVATE_CA_ARN")]
    pub private_ca_arn: Option<String>,

    /// ACM PCA endpoint override (VPC endpoints, tests); default https://acm-pca.<region>.amazonaws.com.
    #[arg(long, env = "LATTICE_PROXY_ACM_PCA_ENDPOINT")]
    pub acm_pca_endpoint: Option<String>,

    /// Trust the system root certificates too.
    #[arg(
        long,
        env = "LATTICE_PROXY_SYSTEM_ROOTS",
        action = ArgAction::Set,
        num_args = 0..=1,
        default_value_t = true,
        default_missing_value = "true"
    )]
    pub system_roots: bool,

    /// Port of the Lattice service's HTTPS listener.
    #[arg(long, env = "LATTICE_PROXY_UPSTREAM_PORT", default_value_t = 443)]
    pub upstream_port: u16,

    /// TCP connect timeout (e.g. 5s, 500ms).
    #[arg(long, env = "LATTICE_PROXY_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// TLS handshake timeout.
    #[arg(long, env = "LATTICE_PROXY_TLS_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub tls_timeout: Duration,

    /// Time allowed for the upstream's response headers.
    #[arg(long, env = "LATTICE_PROXY_RESPONSE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub response_timeout: Duration,

    /// How often --ca-file is checked for new content (a CA rotation: new connections trust
    /// the new bundle without a restart); 0s never checks.
    #[arg(long, env = "LATTICE_PROXY_CA_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub ca_reload_interval: Duration,

    /// How long idle upstream connections stay pooled.
    #[arg(long, env = "LATTICE_PROXY_POOL_IDLE_TIMEOUT", default_value = "90s", value_parser = parse_duration)]
    pub pool_idle_timeout: Duration,

    /// Idle upstream connections kept per host.
    #[arg(long, env = "LATTICE_PROXY_POOL_MAX_IDLE", default_value_t = 64)]
    pub pool_max_idle_per_host: usize,

    /// How long in-flight requests may finish after SIGTERM.
    #[arg(long, env = "LATTICE_PROXY_DRAIN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Largest request header section accepted (bigger gets 431).
    #[arg(long, env = "LATTICE_PROXY_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,

    /// Time a client has to send its request headers.
    #[arg(long, env = "LATTICE_PROXY_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Static name resolution, HOST:ADDR (repeatable), like curl's --resolve.
    #[arg(long = "resolve", env = "LATTICE_PROXY_RESOLVE", value_delimiter = ',')]
    pub resolve: Vec<String>,

    /// Log format.
    #[arg(
        long,
        env = "LATTICE_PROXY_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Worker threads, each a single-threaded runtime with its own upstream pool; default one
    /// per available CPU.
    #[arg(long, env = "LATTICE_PROXY_WORKERS")]
    pub workers: Option<usize>,

    /// Log each canonical request and string to sign (the session token is redacted).
    #[arg(long, env = "LATTICE_PROXY_LOG_SIGNING_PROCESS")]
    pub log_signing_process: bool,

    /// Ready only once a connect to this loopback address reaches this proxy: set it to
    /// lattice-redirector's check port (127.0.0.1:15009) so that the startupProbe holds the
    /// app until its pod is enrolled.
    #[arg(long, env = "LATTICE_PROXY_REDIRECT_CHECK")]
    pub redirect_check: Option<SocketAddr>,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Proxy listen addresses.
    pub listen: Vec<SocketAddr>,
    /// Admin address.
    pub admin: SocketAddr,
    /// Region; `None` until resolved from the AWS chain.
    pub region: Option<String>,
    /// SigV4 signing name.
    pub signing_name: String,
    /// Payload signing.
    pub payload: PayloadMode,
    /// SigV4 or SigV4A.
    pub algorithm: Algorithm,
    /// Extra headers to sign.
    pub sign_headers: Vec<HeaderName>,
    /// Extra headers to drop.
    pub strip_headers: Vec<HeaderName>,
    /// Hosts forwarded to.
    pub allow: AllowList,
    /// Upstream connection settings.
    pub upstream: UpstreamConfig,
    /// Drain deadline on shutdown.
    pub drain_timeout: Duration,
    /// Largest header section.
    pub max_header_bytes: usize,
    /// Header read timeout.
    pub header_read_timeout: Duration,
    /// Log canonical requests (token redacted).
    pub log_signing_process: bool,
    /// The redirect check's address, when readiness waits for the redirect.
    pub redirect_check: Option<SocketAddr>,
    /// Worker runtimes; 0 serves on the caller's runtime (tests, embedding).
    pub workers: usize,
    /// Private CA to fetch from ACM PCA at start.
    pub private_ca: Option<crate::pca::PrivateCa>,
}

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Bad value, with the flag it came from.
    #[error("{flag}: {message}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// What is wrong and what to give instead.
        message: String,
    },
}

fn invalid(flag: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        message: message.into(),
    }
}

impl Config {
    /// Validates parsed arguments.
    pub fn from_args(args: &Args) -> Result<Config, ConfigError> {
        if args.listen.is_empty() {
            return Err(invalid("--listen", "give at least one address"));
        }
        if args.signing_name.trim().is_empty() {
            return Err(invalid("--name", "the signing name is empty"));
        }
        let mut domains: Vec<String> = Vec::new();
        if !args.no_default_domain {
            domains.push(LATTICE_DOMAIN.into());
        }
        domains.extend(
            args.allowed_domains
                .iter()
                .filter(|d| !d.trim().is_empty())
                .cloned(),
        );
        let allow = AllowList::new(&domains).map_err(|m| invalid("--allowed-domain", m))?;

        let mut sign_headers = Vec::new();
        for h in args.sign_headers.iter().filter(|h| !h.trim().is_empty()) {
            let name = HeaderName::try_from(h.trim().to_ascii_lowercase())
                .map_err(|_| invalid("--sign-header", format!("{h:?} is not a header name")))?;
            if NEVER_SIGNED.contains(&name.as_str())
                || name.as_str().starts_with("x-amz-")
                || name.as_str().starts_with("x-forwarded-")
                || name.as_str() == "host"
            {
                return Err(invalid(
                    "--sign-header",
                    format!("{name} is hop-by-hop, volatile or set by the signer and is never signed from the app's value"),
                ));
            }
            sign_headers.push(name);
        }

        let mut strip_headers = Vec::new();
        for h in args.strip_headers.iter().filter(|h| !h.trim().is_empty()) {
            let name = HeaderName::try_from(h.trim().to_ascii_lowercase())
                .map_err(|_| invalid("--strip", format!("{h:?} is not a header name")))?;
            if name == http::header::HOST {
                return Err(invalid(
                    "--strip",
                    "the Host header names the service and cannot be stripped",
                ));
            }
            if sign_headers.contains(&name) {
                return Err(invalid(
                    "--strip",
                    format!("{name} is also given to --sign-header"),
                ));
            }
            strip_headers.push(name);
        }

        let mut resolve: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for entry in args.resolve.iter().filter(|e| !e.trim().is_empty()) {
            let (host, addr) = entry
                .split_once(':')
                .ok_or_else(|| invalid("--resolve", format!("{entry:?} is not HOST:ADDR")))?;
            let ip: IpAddr = addr
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| {
                    invalid(
                        "--resolve",
                        format!("{addr:?} in {entry:?} is not an IP address"),
                    )
                })?;
            resolve
                .entry(host.to_ascii_lowercase())
                .or_default()
                .push(ip);
        }

        let private_ca = match &args.private_ca_arn {
            None => None,
            Some(arn) => Some(
                crate::pca::PrivateCa::new(arn, args.acm_pca_endpoint.as_deref())
                    .map_err(|m| invalid("--private-ca-arn", m))?,
            ),
        };
        if args.ca_file.is_none() && !args.system_roots && private_ca.is_none() {
            return Err(invalid(
                "--system-roots",
                "with --system-roots=false a --ca-file is required, or nothing would be trusted",
            ));
        }
        for (flag, d) in [
            ("--connect-timeout", args.connect_timeout),
            ("--tls-timeout", args.tls_timeout),
            ("--response-timeout", args.response_timeout),
            ("--header-read-timeout", args.header_read_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(flag, "must be more than zero"));
            }
        }
        if args.max_header_bytes < 8192 {
            return Err(invalid("--max-header-bytes", "must be at least 8192"));
        }

        Ok(Config {
            listen: args.listen.clone(),
            admin: args.admin,
            region: args.region.clone().filter(|r| !r.trim().is_empty()),
            signing_name: args.signing_name.trim().to_owned(),
            payload: if args.unsigned_payload {
                PayloadMode::Unsigned
            } else {
                PayloadMode::SignedUpTo(args.signed_payload_max_bytes)
            },
            algorithm: if args.sigv4a {
                let set = args.region_set.trim();
                if set.is_empty()
                    || !set
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-,*".contains(&b))
                {
                    return Err(invalid(
                        "--region-set",
                        format!("{set:?} is not * or a comma-separated list of regions"),
                    ));
                }
                Algorithm::V4a {
                    region_set: set.to_owned(),
                }
            } else {
                Algorithm::V4
            },
            sign_headers,
            strip_headers,
            allow,
            upstream: UpstreamConfig {
                port: args.upstream_port,
                ca_file: args.ca_file.clone(),
                system_roots: args.system_roots,
                connect_timeout: args.connect_timeout,
                tls_timeout: args.tls_timeout,
                response_timeout: args.response_timeout,
                pool_idle_timeout: args.pool_idle_timeout,
                pool_max_idle_per_host: args.pool_max_idle_per_host,
                resolve,
                ca_reload_interval: args.ca_reload_interval,
            },
            drain_timeout: args.drain_timeout,
            max_header_bytes: args.max_header_bytes,
            header_read_timeout: args.header_read_timeout,
            log_signing_process: args.log_signing_process,
            redirect_check: match args.redirect_check {
                Some(a) if !a.ip().is_loopback() => {
                    return Err(invalid(
                        "--redirect-check",
                        format!(
                            "{a} is not a loopback address: give lattice-redirector's check \
                             port on loopback, e.g. 127.0.0.1:15009"
                        ),
                    ))
                }
                other => other,
            },
            workers: match args.workers {
                Some(0) => return Err(invalid("--workers", "must be at least 1")),
                Some(n) => n,
                None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            },
            private_ca,
        })
    }
}

/// Parses `250ms`, `5s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 5s, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut v = vec!["lattice-proxy"];
        v.extend_from_slice(args);
        let a = Args::try_parse_from(v).map_err(|e| e.to_string())?;
        Config::from_args(&a).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.admin, "127.0.0.1:15000".parse().unwrap());
        assert_eq!(c.signing_name, "vpc-lattice-svcs");
        assert_eq!(c.payload, PayloadMode::Unsigned);
        assert_eq!(c.allow.suffixes(), ["on.aws"]);
        assert_eq!(c.upstream.port, 443);
    }

    #[test]
    fn knobs() {
        let c = parse(&[
            "--service",
            "lattice",
            "--unsigned-payload=false",
            "--allowed-domain",
            "example.com,example.org",
            "--resolve",
            "a.example.com:127.0.0.1",
            "--resolve",
            "a.example.com:[::1]",
            "--connect-timeout",
            "250ms",
            "--sign-header",
            "Content-Type",
        ])
        .unwrap();
        assert_eq!(c.signing_name, "lattice");
        assert_eq!(c.payload, PayloadMode::SignedUpTo(65536));
        assert_eq!(c.allow.suffixes(), ["on.aws", "example.com", "example.org"]);
        assert_eq!(c.upstream.resolve["a.example.com"].len(), 2);
        assert_eq!(c.upstream.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.sign_headers[0].as_str(), "content-type");
    }

    #[test]
    fn bad_values_name_the_flag() {
        for (args, flag) in [
            (&["--allowed-domain", "10.0.0.1"][..], "--allowed-domain"),
            (&["--sign-header", "connection"][..], "--sign-header"),
            (&["--resolve", "nohost"][..], "--resolve"),
            (&["--system-roots=false"][..], "--system-roots"),
            (&["--tls-timeout", "5 parsecs"][..], "--tls-timeout"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(flag), "{args:?}: {e}");
        }
    }
}
