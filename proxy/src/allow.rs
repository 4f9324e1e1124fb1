//! The allow-list: which hosts the proxy signs for and forwards to.
//!
//! Signing a request hands the pod's AWS identity to whoever receives it, so only names under
//! the configured domain suffixes are forwarded. IP literals are always refused: a Lattice
//! service is reached by name (SNI and the certificate need one), and an address such as
//! `169.254.169.254` would point a signed request at the instance metadata service.

use std::fmt;
use std::net::IpAddr;

/// Lattice's generated service domain (`<service>-<id>.<hash>.vpc-lattice-svcs.<region>.on.aws`).
pub const LATTICE_DOMAIN: &str = "on.aws";

/// Domain suffixes that may be forwarded to.
#[derive(Debug, Clone)]
pub struct AllowList {
    suffixes: Vec<String>,
}

/// Why a host was refused; the `Display` text is the one-line body the app receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The host is an IP literal.
    IpLiteral(String),
    /// The host is not a DNS name (an empty label, a character outside letters, digits,
    /// `-` and `_`, or too long): no resolver could be trusted to read it as we do.
    NotAName(String),
    /// The host is not under any allowed domain.
    NotAllowed {
        /// The refused host.
        host: String,
        /// The allowed suffixes, comma-separated.
        allowed: String,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::IpLiteral(host) => write!(
                f,
                "host {host} is an IP address; lattice-proxy only forwards to service names under the allowed domains"
            ),
            Refusal::NotAName(host) => write!(
                f,
                "host {host:?} is not a DNS name (labels of letters, digits, '-' and '_', 1 to 63 bytes each); send the service name in Host"
            ),
            Refusal::NotAllowed { host, allowed } => write!(
                f,
                "host {host} is not under an allowed domain ({allowed}); add its domain with --allowed-domain"
            ),
        }
    }
}

impl AllowList {
    /// Builds an allow-list from domain suffixes such as `on.aws` or `example.com`.
    ///
    /// Suffixes are compared case-insensitively, without a trailing dot; a leading `*.` or
    /// `.` is accepted and ignored (`*.example.com` means the same as `example.com`).
    pub fn new<I, S>(suffixes: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out: Vec<String> = Vec::new();
        for s in suffixes {
            let raw = s.as_ref().trim();
            let norm = raw
                .trim_start_matches("*.")
                .trim_start_matches('.')
                .trim_end_matches('.')
                .to_ascii_lowercase();
            if norm.is_empty()
                || norm.parse::<IpAddr>().is_ok()
                || !norm
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                return Err(format!(
                    "allowed domain {raw:?} is not a DNS domain suffix (expected e.g. example.com)"
                ));
            }
            if !out.contains(&norm) {
                out.push(norm);
            }
        }
        if out.is_empty() {
            return Err("the allow-list is empty: give at least one --allowed-domain".into());
        }
        Ok(Self { suffixes: out })
    }

    /// The normalized suffixes.
    pub fn suffixes(&self) -> &[String] {
        &self.suffixes
    }

    /// Checks a host (without port). `Ok` when it is a name under an allowed suffix; one
    /// trailing dot (a fully qualified name) is allowed.
    pub fn check(&self, host: &str) -> Result<(), Refusal> {
        let trimmed = host.trim_start_matches('[').trim_end_matches(']');
        if trimmed.parse::<IpAddr>().is_ok() || looks_like_ipv4(trimmed) {
            return Err(Refusal::IpLiteral(host.to_owned()));
        }
        // Checked here, not only by the caller: an accepted host is a DNS name whatever the
        // caller did (fuzzing found `q@x.on.aws` accepted by the check alone).
        let h = host.strip_suffix('.').unwrap_or(host);
        if !is_dns_name(h) {
            return Err(Refusal::NotAName(host.to_owned()));
        }
        let allowed = self.suffixes.iter().any(|s| {
            h.len() > s.len()
                && h.as_bytes()[h.len() - s.len() - 1] == b'.'
                && h[h.len() - s.len()..].eq_ignore_ascii_case(s)
        });
        if allowed {
            Ok(())
        } else {
            Err(Refusal::NotAllowed {
                host: host.to_owned(),
                allowed: self.suffixes.join(", "),
            })
        }
    }
}

/// Whether `host` (without a trailing dot) is a DNS name: 1 to 253 bytes of labels of 1 to
/// 63 letters, digits, `-` or `_` (RFC 1035 §2.3.4; `_` as service names use it). Suffix
/// matching alone would let `.example.com`, `a..example.com` or `x%2e.example.com` through
/// to the resolver, which reads them its own way (or sends them to the network's DNS).
fn is_dns_name(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Numeric hosts that `IpAddr` does not parse but resolvers accept (`0x7f.1`, `2130706433`,
/// `127.1`): a name whose last label is all digits or hex is never a DNS name we forward to.
fn looks_like_ipv4(host: &str) -> bool {
    let last = host.trim_end_matches('.').rsplit('.').next().unwrap_or("");
    // Bytes, not `str` slices: `last[..2]` panicked inside a multi-byte character (found by
    // fuzzing; the proxy only passes ASCII hosts, but `check` takes any `&str`).
    let last = last.as_bytes();
    !last.is_empty()
        && (last.iter().all(u8::is_ascii_digit)
            || (last.len() > 2
                && last[..2].eq_ignore_ascii_case(b"0x")
                && last[2..].iter().all(u8::is_ascii_hexdigit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> AllowList {
        AllowList::new(["on.aws", "*.Example.com."]).unwrap()
    }

    #[test]
    fn names_under_suffixes_pass() {
        let l = list();
        assert_eq!(l.suffixes(), ["on.aws", "example.com"]);
        l.check("svc-0abc.7d67968.vpc-lattice-svcs.eu-west-1.on.aws")
            .unwrap();
        l.check("demo-cluster2.example.com").unwrap();
        l.check("DEMO.EXAMPLE.COM.").unwrap();
    }

    #[test]
    fn everything_else_is_refused() {
        let l = list();
        for host in [
            "example.com",
            "badexample.com",
            "example.com.evil.net",
            "169.254.169.254",
            "[::1]",
            "::1",
            "2130706433",
            "127.1",
            "0x7f.1",
            "localhost",
            "on.aws",
        ] {
            assert!(l.check(host).is_err(), "{host} must be refused");
        }
        for host in [
            ".example.com",
            "a..example.com",
            "svc.example.com..",
            "x%2e.example.com",
            "a b.example.com",
            &format!("{}.example.com", "a".repeat(64)),
            &format!("{}example.com", "a.".repeat(125)),
        ] {
            assert!(
                matches!(l.check(host), Err(Refusal::NotAName(_))),
                "{host} is not a name"
            );
        }
        l.check(&format!("{}.example.com", "a".repeat(63))).unwrap();
        l.check("_svc.x-1.example.com").unwrap();
        assert!(matches!(
            l.check("169.254.169.254"),
            Err(Refusal::IpLiteral(_))
        ));
        let msg = l.check("evil.net").unwrap_err().to_string();
        assert!(
            msg.contains("evil.net") && msg.contains("--allowed-domain"),
            "{msg}"
        );
    }

    /// Found by fuzzing (authority): user information, or any character no DNS name has,
    /// passed the check when the name ended with an allowed suffix.
    #[test]
    fn only_dns_names_are_accepted() {
        let l = list();
        for host in [
            "q@x.on.aws",
            "evil.net@svc.example.com",
            "a b.example.com",
            "a%2e.example.com",
            "svc.example.com:443",
            "svc!.example.com",
        ] {
            assert!(
                matches!(l.check(host), Err(Refusal::NotAName(_))),
                "{host} must be refused"
            );
        }
        l.check("svc_1-a.example.com").unwrap();
        let msg = l.check("q@x.on.aws").unwrap_err().to_string();
        assert_eq!(
            msg,
            r#"host "q@x.on.aws" is not a DNS name (labels of letters, digits, '-' and '_', 1 to 63 bytes each); send the service name in Host"#
        );
    }

    /// Found by fuzzing (authority): a last label starting with a multi-byte character
    /// panicked in the numeric-host test.
    #[test]
    fn non_ascii_hosts_are_refused_without_panic() {
        let l = list();
        assert!(l.check("11z1.0\u{1f2}").is_err());
        assert!(l.check("\u{1f2}x").is_err());
        assert!(l.check("0\u{e9}").is_err());
    }

    #[test]
    fn bad_suffixes_are_config_errors() {
        assert!(AllowList::new(["10.0.0.1"]).is_err());
        assert!(AllowList::new(["exa mple.com"]).is_err());
        assert!(AllowList::new([""]).is_err());
        assert!(AllowList::new(Vec::<String>::new()).is_err());
    }
}
