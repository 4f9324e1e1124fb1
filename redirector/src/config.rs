//! The agent's configuration: defaults, an optional TOML file, environment variables and
//! flags (in rising precedence), validated before anything touches the kernel.

use crate::error::{Error, Result};
use redirector_common::{capacity, GidMode};
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// A destination prefix, normalized (no host bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for Prefix {
    type Err = String;

    /// Parses `ADDRESS/LEN`; a bare address is a host prefix. Host bits must be zero, so a
    /// typo like `169.254.171.5/24` is caught rather than silently widened.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{} is not ADDRESS/LEN (e.g. 169.254.171.0/24)", quoted(s)))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{}: prefix length must be 0..={max}", quoted(s)))?,
        };
        let masked = mask(addr, len);
        if masked != addr {
            return Err(format!(
                "{} has host bits set; did you mean {masked}/{len}?",
                quoted(s)
            ));
        }
        Ok(Prefix { addr, len })
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

/// Which GIDs are redirected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GidPolicy {
    pub mode: GidMode,
    pub gids: Vec<u32>,
}

/// `redirect 1000` or `all but 0,1337`, as the logs say it.
impl std::fmt::Display for GidPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = join(&self.gids);
        match self.mode {
            GidMode::Only => write!(f, "only {list}"),
            GidMode::AllExcept if self.gids.is_empty() => write!(f, "all"),
            GidMode::AllExcept => write!(f, "all but {list}"),
        }
    }
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// One line for the logs: every setting, in the words of the configuration keys.
impl std::fmt::Display for Redirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "prefixes {}; ports {}; gids {}; proxy {}:{} and [{}]:{}; proxy-gid {}; \
             canary-port {}; log-redirects {}; {} cgroup(s) enrolled by configuration",
            join(&self.prefixes),
            join(&self.ports),
            self.gids,
            self.proxy_v4,
            self.proxy_port,
            self.proxy_v6,
            self.proxy_port,
            self.proxy_gid.map_or("none".to_string(), |g| g.to_string()),
            self.canary_port
                .map_or("off".to_string(), |p| p.to_string()),
            self.log_redirects,
            self.cgroups.len()
        )
    }
}

/// The validated configuration the maps are written from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    pub prefixes: Vec<Prefix>,
    pub ports: Vec<u16>,
    pub gids: GidPolicy,
    pub proxy_v4: Ipv4Addr,
    pub proxy_v6: Ipv6Addr,
    pub proxy_port: u16,
    /// The proxy's GID: its connects are never rewritten.
    pub proxy_gid: Option<u32>,
    /// The redirect check's port (see `RedirectConfig::canary_port`); `None`: off.
    pub canary_port: Option<u16>,
    /// Log every redirected connect (through aya-log).
    pub log_redirects: bool,
    /// Cgroups enrolled by configuration (absolute paths inside the cgroup2 mount).
    pub cgroups: Vec<PathBuf>,
}

/// Defaults: the seed pattern's ranges, port 80, app GID 1000, proxy on :15001.
pub mod defaults {
    pub const PREFIXES: [&str; 2] = ["169.254.171.0/24", "fd00:ec2:80::/64"];
    pub const PORTS: [u16; 1] = [80];
    pub const REDIRECT_GIDS: [u32; 1] = [1000];
    pub const PROXY_V4: &str = "127.0.0.1";
    pub const PROXY_V6: &str = "::1";
    pub const PROXY_PORT: u16 = 15001;
    /// Istio's convention for the sidecar's uid/gid.
    pub const PROXY_GID: u32 = 1337;
    /// The redirect check: the proxy connects to 127.0.0.1 on it to learn that it is
    /// redirected (15000 and 15001 are the proxy's own admin and listen ports).
    pub const CANARY_PORT: u16 = 15009;
    /// The admin endpoint (/healthz, /metrics): `--admin-addr`.
    pub const METRICS_ADDR: &str = "0.0.0.0:15090";
}

/// The configuration file (TOML); every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct File {
    pub prefixes: Option<Vec<String>>,
    pub ports: Option<Vec<i64>>,
    pub redirect_gids: Option<Vec<i64>>,
    pub exempt_gids: Option<Vec<i64>>,
    pub proxy_v4: Option<String>,
    pub proxy_v6: Option<String>,
    pub proxy_port: Option<i64>,
    pub proxy_gid: Option<i64>,
    /// A port, or "off".
    pub canary_port: Option<toml::Value>,
    pub log_redirects: Option<bool>,
    pub cgroups: Option<Vec<PathBuf>>,
}

impl File {
    /// Reads and parses `path`; errors name the file and the offending key.
    pub fn load(path: &Path) -> Result<File> {
        File::parse(path, &crate::reload::read(path))
    }

    /// Parses what one read of `path` found (see [`crate::reload`]).
    pub fn parse(path: &Path, read: &crate::reload::Snapshot) -> Result<File> {
        let bytes = read.as_ref().map_err(|e| Error::Config {
            what: format!("cannot read config file {}: {e}", path.display()),
        })?;
        let text = std::str::from_utf8(bytes).map_err(|e| Error::Config {
            what: format!("config file {}: not UTF-8 ({e})", path.display()),
        })?;
        toml::from_str(text).map_err(|e| {
            let mut what = format!("config file {}: {}", path.display(), toml_error(text, &e));
            // Accepted once and never used: say where the admin address is set instead.
            if what.contains("unknown field `metrics-addr`") {
                what.push_str(
                    "; the admin address (/healthz, /metrics) is not a file key: set it with \
                     --admin-addr or LATTICE_REDIRECTOR_ADMIN_ADDR",
                );
            }
            Error::Config { what }
        })
    }
}

/// A TOML error on one line: `line L, column C: message`. toml's own `Display` draws the
/// offending line with a caret over several lines, which splits a log line (found by
/// fuzzing).
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// A value from the file or a flag, quoted for an error message: control characters (a
/// newline in a TOML string) are escaped so the message stays one line.
fn quoted(v: &str) -> String {
    format!("'{}'", v.escape_debug())
}

/// Values given on the command line or in the environment (they win over the file).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub prefixes: Option<Vec<String>>,
    pub ports: Option<Vec<String>>,
    pub redirect_gids: Option<Vec<String>>,
    pub exempt_gids: Option<Vec<String>>,
    pub proxy_v4: Option<String>,
    pub proxy_v6: Option<String>,
    pub proxy_port: Option<String>,
    pub proxy_gid: Option<String>,
    pub canary_port: Option<String>,
    pub log_redirects: Option<bool>,
    pub cgroups: Option<Vec<PathBuf>>,
}

fn bad(source: &str, what: String) -> Error {
    Error::Config {
        what: format!("{source}: {what}"),
    }
}

fn parse_port(source: &str, v: &str) -> Result<u16> {
    v.trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad(source, format!("{} is not a TCP port (1-65535)", quoted(v))))
}

fn parse_gid(source: &str, v: &str) -> Result<u32> {
    // u32::MAX is (gid_t)-1, "no group" to the kernel.
    v.trim()
        .parse::<u32>()
        .ok()
        .filter(|g| *g != u32::MAX)
        .ok_or_else(|| bad(source, format!("{} is not a GID (0-4294967294)", quoted(v))))
}

fn strings(v: &[i64]) -> Vec<String> {
    v.iter().map(|n| n.to_string()).collect()
}

/// Splits comma-separated list items, so `--port 80,8080` and repeated flags both work.
fn split_list(items: &[String]) -> Vec<String> {
    items
        .iter()
        .flat_map(|s| s.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Builds the validated configuration. `cgroup_root` is the cgroup2 mount: relative cgroup
/// paths are taken inside it, and every path must exist there.
pub fn resolve(file: &File, over: &Overrides, cgroup_root: &Path) -> Result<Redirect> {
    let (src, prefixes) = match (&over.prefixes, &file.prefixes) {
        (Some(p), _) => ("--prefix", split_list(p)),
        (None, Some(p)) => ("config key prefixes", p.clone()),
        (None, None) => (
            "default prefixes",
            defaults::PREFIXES.iter().map(|s| s.to_string()).collect(),
        ),
    };
    let mut parsed = Vec::new();
    for p in &prefixes {
        let prefix: Prefix = p.parse().map_err(|e| bad(src, e))?;
        if !parsed.contains(&prefix) {
            parsed.push(prefix);
        }
    }
    if parsed.is_empty() {
        return Err(bad(
            src,
            "no prefix given; nothing would be redirected".into(),
        ));
    }
    for family_v4 in [true, false] {
        let n = parsed
            .iter()
            .filter(|p| p.addr.is_ipv4() == family_v4)
            .count();
        if n > capacity::PREFIXES as usize {
            return Err(bad(
                src,
                format!("{n} prefixes, at most {} per family", capacity::PREFIXES),
            ));
        }
    }

    let (src, ports) = match (&over.ports, &file.ports) {
        (Some(p), _) => ("--port", split_list(p)),
        (None, Some(p)) => ("config key ports", strings(p)),
        (None, None) => ("default ports", strings(&defaults::PORTS.map(i64::from))),
    };
    let mut port_list = Vec::new();
    for p in &ports {
        let port = parse_port(src, p)?;
        if !port_list.contains(&port) {
            port_list.push(port);
        }
    }
    if port_list.is_empty() || port_list.len() > capacity::PORTS as usize {
        return Err(bad(src, format!("give 1 to {} ports", capacity::PORTS)));
    }

    let redirect = over
        .redirect_gids
        .as_ref()
        .map(|v| ("--redirect-gid", split_list(v)))
        .or_else(|| {
            file.redirect_gids
                .as_ref()
                .map(|v| ("config key redirect-gids", strings(v)))
        });
    let exempt = over
        .exempt_gids
        .as_ref()
        .map(|v| ("--exempt-gid", split_list(v)))
        .or_else(|| {
            file.exempt_gids
                .as_ref()
                .map(|v| ("config key exempt-gids", strings(v)))
        });
    let (mode, src, gid_strings) = match (redirect, exempt) {
        (Some((a, _)), Some((b, _))) => {
            return Err(bad(
                a,
                format!(
                "cannot be combined with {b}: choose \"redirect these GIDs\" or \"all but these\""
            ),
            ))
        }
        (Some((s, v)), None) => (GidMode::Only, s, v),
        (None, Some((s, v))) => (GidMode::AllExcept, s, v),
        (None, None) => (
            GidMode::Only,
            "default redirect GIDs",
            strings(&defaults::REDIRECT_GIDS.map(i64::from)),
        ),
    };
    let mut gids = Vec::new();
    for g in &gid_strings {
        let gid = parse_gid(src, g)?;
        if !gids.contains(&gid) {
            gids.push(gid);
        }
    }
    if gids.len() > capacity::GIDS as usize {
        return Err(bad(src, format!("at most {} GIDs", capacity::GIDS)));
    }
    if mode == GidMode::Only && gids.is_empty() {
        return Err(bad(src, "no GID given; nothing would be redirected".into()));
    }

    let proxy_v4 = match over.proxy_v4.as_deref().or(file.proxy_v4.as_deref()) {
        Some(v) => v.trim().parse::<Ipv4Addr>().map_err(|_| {
            bad(
                "--proxy-v4",
                format!("{} is not an IPv4 address (e.g. 127.0.0.1)", quoted(v)),
            )
        })?,
        None => defaults::PROXY_V4.parse().expect("valid default"),
    };
    let proxy_v6 = match over.proxy_v6.as_deref().or(file.proxy_v6.as_deref()) {
        Some(v) => v
            .trim()
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<Ipv6Addr>()
            .map_err(|_| {
                bad(
                    "--proxy-v6",
                    format!("{} is not an IPv6 address (e.g. ::1)", quoted(v)),
                )
            })?,
        None => defaults::PROXY_V6.parse().expect("valid default"),
    };
    let proxy_port = match (&over.proxy_port, file.proxy_port) {
        (Some(p), _) => parse_port("--proxy-port", p)?,
        (None, Some(p)) => parse_port("config key proxy-port", &p.to_string())?,
        (None, None) => defaults::PROXY_PORT,
    };
    let proxy_gid = match (&over.proxy_gid, file.proxy_gid) {
        (Some(g), _) if g.eq_ignore_ascii_case("none") => None,
        (Some(g), _) => Some(parse_gid("--proxy-gid", g)?),
        (None, Some(g)) => Some(parse_gid("config key proxy-gid", &g.to_string())?),
        (None, None) => Some(defaults::PROXY_GID),
    };
    if let Some(pg) = proxy_gid {
        if mode == GidMode::Only && gids.contains(&pg) {
            return Err(bad(
                "--redirect-gid",
                format!(
                    "GID {pg} is also the proxy's GID (--proxy-gid): the proxy would be \
                     redirected to itself; run the app and the proxy in different groups"
                ),
            ));
        }
    }

    let canary = match (&over.canary_port, &file.canary_port) {
        (Some(p), _) => Some(("--canary-port", p.clone())),
        (None, Some(toml::Value::String(s))) => Some(("config key canary-port", s.clone())),
        (None, Some(v)) => Some(("config key canary-port", v.to_string())),
        (None, None) => None,
    };
    let canary_port = match canary {
        Some((_, v)) if v.trim().eq_ignore_ascii_case("off") => None,
        Some((src, v)) => Some(parse_port(src, &v)?),
        None => Some(defaults::CANARY_PORT),
    };
    if let Some(c) = canary_port {
        if c == proxy_port {
            return Err(bad(
                "--canary-port",
                format!(
                    "{c} is also the proxy's port (--proxy-port): choose another port for \
                     the redirect check, or `off`"
                ),
            ));
        }
    }

    let cgroup_list = over
        .cgroups
        .clone()
        .or_else(|| file.cgroups.clone())
        .unwrap_or_default();
    let mut cgroups = Vec::new();
    for c in &cgroup_list {
        let path = cgroup_path(cgroup_root, c)?;
        if !cgroups.contains(&path) {
            cgroups.push(path);
        }
    }

    Ok(Redirect {
        prefixes: parsed,
        ports: port_list,
        gids: GidPolicy { mode, gids },
        proxy_v4,
        proxy_v6,
        proxy_port,
        proxy_gid,
        canary_port,
        log_redirects: over.log_redirects.or(file.log_redirects).unwrap_or(false),
        cgroups,
    })
}

/// Resolves a cgroup given by the user to an existing directory inside the cgroup2 mount.
/// Relative paths are taken inside the mount; `..` that would leave it is refused.
pub fn cgroup_path(cgroup_root: &Path, given: &Path) -> Result<PathBuf> {
    let joined = if given.is_absolute() {
        given.to_path_buf()
    } else {
        cgroup_root.join(given)
    };
    let real = std::fs::canonicalize(&joined).map_err(|_| Error::Config {
        what: format!(
            "cgroup {} does not exist (looked for {}); create it, or give a path inside the \
             cgroup2 mount {}",
            given.display().to_string().escape_debug(),
            joined.display().to_string().escape_debug(),
            cgroup_root.display()
        ),
    })?;
    let root = std::fs::canonicalize(cgroup_root).unwrap_or_else(|_| cgroup_root.to_path_buf());
    if !real.starts_with(&root) || !real.join("cgroup.procs").exists() {
        return Err(Error::Config {
            what: format!(
                "{} is not a cgroup of the cgroup2 hierarchy mounted at {}; give a directory \
                 under it",
                given.display().to_string().escape_debug(),
                root.display()
            ),
        });
    }
    Ok(real)
}

impl Redirect {
    /// Warnings about configurations that are legal but likely wrong.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.gids.mode == GidMode::Only && self.gids.gids.contains(&0) {
            w.push(
                "GID 0 is redirected: every root-group process in an enrolled cgroup, the \
                 proxy too if it runs as group 0, goes through the proxy"
                    .to_string(),
            );
        }
        if self.gids.mode == GidMode::AllExcept && self.gids.gids.contains(&0) {
            w.push(
                "GID 0 is exempt (the seed's `--gid-owner 0 RETURN`): an app that runs as \
                 group 0 is silently never redirected; prefer --redirect-gid with the app's \
                 runAsGroup"
                    .to_string(),
            );
        }
        if self.proxy_gid.is_none() && self.gids.mode == GidMode::AllExcept {
            w.push(
                "no --proxy-gid and GID mode all-except: make sure the proxy's GID is in \
                 --exempt-gid, or its upstream connects on redirected ports loop back"
                    .to_string(),
            );
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        std::env::temp_dir()
    }

    #[test]
    fn prefixes_parse_and_normalize() {
        let p: Prefix = "169.254.171.0/24".parse().unwrap();
        assert_eq!(p.len, 24);
        let p: Prefix = "fd00:ec2:80::/64".parse().unwrap();
        assert_eq!(p.to_string(), "fd00:ec2:80::/64");
        let p: Prefix = "10.1.2.3".parse().unwrap();
        assert_eq!(p.len, 32);
        let e = "169.254.171.5/24".parse::<Prefix>().unwrap_err();
        assert!(e.contains("did you mean 169.254.171.0/24"), "{e}");
        let e = "169.254.171.0/33".parse::<Prefix>().unwrap_err();
        assert!(e.contains("0..=32"), "{e}");
        let e = "lattice/24".parse::<Prefix>().unwrap_err();
        assert!(e.contains("'lattice/24'"), "{e}");
    }

    #[test]
    fn defaults_are_the_seed_pattern() {
        let c = resolve(&File::default(), &Overrides::default(), &root()).unwrap();
        assert_eq!(c.ports, vec![80]);
        assert_eq!(
            c.gids,
            GidPolicy {
                mode: GidMode::Only,
                gids: vec![1000]
            }
        );
        assert_eq!(c.proxy_port, 15001);
        assert_eq!(c.prefixes.len(), 2);
        assert_eq!(c.proxy_gid, Some(1337));
    }

    #[test]
    fn the_redirect_check_port_is_on_by_default_and_can_be_turned_off() {
        let none = Overrides::default();
        let c = resolve(&File::default(), &none, &root()).unwrap();
        assert_eq!(c.canary_port, Some(15009));
        let file: File = toml::from_str("canary-port = 15123").unwrap();
        assert_eq!(
            resolve(&file, &none, &root()).unwrap().canary_port,
            Some(15123)
        );
        let file: File = toml::from_str("canary-port = \"off\"").unwrap();
        assert_eq!(resolve(&file, &none, &root()).unwrap().canary_port, None);
        let over = Overrides {
            canary_port: Some("off".into()),
            ..Default::default()
        };
        assert_eq!(
            resolve(&File::default(), &over, &root())
                .unwrap()
                .canary_port,
            None
        );
        let clash: File = toml::from_str("canary-port = 15001").unwrap();
        let e = resolve(&clash, &none, &root()).unwrap_err().to_string();
        assert!(e.contains("also the proxy's port"), "{e}");
        let bad: File = toml::from_str("canary-port = \"http\"").unwrap();
        let e = resolve(&bad, &none, &root()).unwrap_err().to_string();
        assert!(
            e.contains("config key canary-port") && e.contains("'http'"),
            "{e}"
        );
    }

    #[test]
    fn flags_win_over_file() {
        let file: File = toml::from_str("ports = [8080]\nproxy-port = 15006").unwrap();
        let over = Overrides {
            ports: Some(vec!["80,443".into()]),
            ..Default::default()
        };
        let c = resolve(&file, &over, &root()).unwrap();
        assert_eq!(c.ports, vec![80, 443]);
        assert_eq!(c.proxy_port, 15006);
    }

    #[test]
    fn bad_values_are_named() {
        let over = Overrides {
            ports: Some(vec!["99999".into()]),
            ..Default::default()
        };
        let e = resolve(&File::default(), &over, &root())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--port") && e.contains("'99999'"), "{e}");

        let over = Overrides {
            redirect_gids: Some(vec!["app".into()]),
            ..Default::default()
        };
        let e = resolve(&File::default(), &over, &root())
            .unwrap_err()
            .to_string();
        assert!(e.contains("'app' is not a GID"), "{e}");

        let over = Overrides {
            redirect_gids: Some(vec!["1000".into()]),
            exempt_gids: Some(vec!["0".into()]),
            ..Default::default()
        };
        let e = resolve(&File::default(), &over, &root())
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot be combined"), "{e}");

        let over = Overrides {
            redirect_gids: Some(vec!["1337".into()]),
            ..Default::default()
        };
        let e = resolve(&File::default(), &over, &root())
            .unwrap_err()
            .to_string();
        assert!(e.contains("proxy's GID"), "{e}");
    }

    /// Found by fuzzing (redirector_config): TOML syntax errors and values with newlines
    /// made errors of several lines.
    #[test]
    fn config_errors_are_one_line() {
        let path = Path::new("/etc/lattice-redirector/config.toml");
        let err = File::parse(path, &Ok(b"ports = [80\nproxy-port = \"x".to_vec()))
            .unwrap_err()
            .to_string();
        assert!(!err.contains('\n'), "{err}");
        assert!(
            err.contains("config.toml: line 2, column")
                || err.contains("config.toml: line 1, column"),
            "{err}"
        );
        let file = File::parse(path, &Ok(b"prefixes = [\"10.0\\n.0.0/8\"]".to_vec())).unwrap();
        let err = resolve(&file, &Overrides::default(), &root())
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains('\n') && err.contains("'10.0\\n.0.0/8'"),
            "{err}"
        );
        let over = Overrides {
            ports: Some(vec!["8\r0".into()]),
            ..Overrides::default()
        };
        let err = resolve(&File::default(), &over, &root())
            .unwrap_err()
            .to_string();
        assert!(!err.contains('\r'), "{err}");
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let e = toml::from_str::<File>("portz = [80]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("portz"), "{e}");
    }

    #[test]
    fn cgroup_paths_must_exist_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pod")).unwrap();
        std::fs::write(dir.path().join("pod/cgroup.procs"), "").unwrap();
        let p = cgroup_path(dir.path(), Path::new("pod")).unwrap();
        assert!(p.ends_with("pod"));
        let e = cgroup_path(dir.path(), Path::new("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing") && e.contains("does not exist"), "{e}");
        let e = cgroup_path(&dir.path().join("pod"), Path::new(".."))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a cgroup"), "{e}");
        // `..` inside the root resolves to the cgroup it names.
        std::fs::create_dir(dir.path().join("other")).unwrap();
        let p = cgroup_path(dir.path(), Path::new("other/../pod")).unwrap();
        assert_eq!(p, std::fs::canonicalize(dir.path().join("pod")).unwrap());
    }

    #[test]
    fn symlinked_cgroup_paths_resolve_and_may_not_leave_the_root() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("pod")).unwrap();
        std::fs::write(root.path().join("pod/cgroup.procs"), "").unwrap();
        std::fs::write(outside.path().join("cgroup.procs"), "").unwrap();
        std::os::unix::fs::symlink(root.path().join("pod"), root.path().join("alias")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).unwrap();
        // A link to a cgroup inside: the real cgroup is enrolled (its inode is its id).
        let p = cgroup_path(root.path(), Path::new("alias")).unwrap();
        assert_eq!(p, std::fs::canonicalize(root.path().join("pod")).unwrap());
        // A link that leads out of the hierarchy is refused, naming what was given.
        let e = cgroup_path(root.path(), Path::new("escape"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("escape") && e.contains("not a cgroup"), "{e}");
    }

    #[test]
    fn the_configuration_reads_as_one_line_of_its_keys() {
        let c = resolve(&File::default(), &Overrides::default(), &root()).unwrap();
        assert_eq!(
            c.to_string(),
            "prefixes 169.254.171.0/24,fd00:ec2:80::/64; ports 80; gids only 1000; proxy \
             127.0.0.1:15001 and [::1]:15001; proxy-gid 1337; canary-port 15009; \
             log-redirects false; 0 cgroup(s) enrolled by configuration"
        );
        let over = Overrides {
            exempt_gids: Some(vec!["0".into(), "1337".into()]),
            ..Default::default()
        };
        let c = resolve(&File::default(), &over, &root()).unwrap();
        assert_eq!(c.gids.to_string(), "all but 0,1337");
    }

    #[test]
    fn metrics_addr_is_refused_with_where_to_set_it() {
        let path = Path::new("/etc/lattice-redirector/redirector.toml");
        let read: crate::reload::Snapshot = Ok(b"metrics-addr = \"0.0.0.0:9090\"\n".to_vec());
        let e = File::parse(path, &read).unwrap_err().to_string();
        assert!(
            e.contains("unknown field `metrics-addr`") && e.contains("--admin-addr"),
            "{e}"
        );
    }

    #[test]
    fn gid_zero_exemption_warns() {
        let over = Overrides {
            exempt_gids: Some(vec!["0".into()]),
            ..Default::default()
        };
        let c = resolve(&File::default(), &over, &root()).unwrap();
        assert!(c.warnings().iter().any(|w| w.contains("never redirected")));
    }
}
