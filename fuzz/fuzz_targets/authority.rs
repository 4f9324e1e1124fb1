//! The allow-list (`proxy/src/allow.rs`) and the route an application's authority resolves
//! to (`proxy/src/proxy.rs`, `resolve`): no panic, and a host that is forwarded to is a
//! name under an allowed suffix on a label boundary, never an IP literal, never with user
//! information, and the upstream authority is that host with the configured port.
#![no_main]

use std::net::IpAddr;

use arbitrary::Arbitrary;
use lattice_proxy::allow::AllowList;
use lattice_proxy::proxy::fuzzing::route;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    /// `--allowed-domain` values (plus `on.aws` unless `no_default`).
    domains: Vec<String>,
    no_default: bool,
    upstream_port: u16,
    /// The absolute-form authority or Host header, as sent.
    raw: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let mut domains = input.domains.clone();
    if !input.no_default {
        domains.insert(0, "on.aws".into());
    }
    let Ok(allow) = AllowList::new(&domains) else {
        return;
    };
    for s in allow.suffixes() {
        assert!(
            !s.is_empty() && s.parse::<IpAddr>().is_err(),
            "suffix {s:?}"
        );
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b)),
            "suffix {s:?}"
        );
    }
    // The check alone, on the raw text.
    if let Ok(text) = std::str::from_utf8(&input.raw) {
        if allow.check(text).is_ok() {
            accepted(&allow, text.trim_end_matches('.'));
        }
    }
    // The whole route.
    let Ok((host, upstream)) = route(&allow, input.upstream_port, &input.raw) else {
        return;
    };
    accepted(&allow, &host);
    assert!(!host.contains(':'), "port or IPv6 in host {host:?}");
    assert!(!upstream.as_str().contains('@'), "userinfo in {upstream}");
    assert_eq!(upstream.host(), host, "{:?}", input.raw);
    match input.upstream_port {
        443 => assert_eq!(upstream.port(), None),
        p => assert_eq!(upstream.port_u16(), Some(p)),
    }
    let raw = String::from_utf8_lossy(&input.raw);
    assert!(!raw.contains('@'), "userinfo accepted in {raw:?}");
});

/// Invariants of a host the proxy forwards to.
fn accepted(allow: &AllowList, host: &str) {
    let lower = host.to_ascii_lowercase();
    assert!(
        allow.suffixes().iter().any(|s| lower.len() > s.len()
            && lower.ends_with(s.as_str())
            && lower.as_bytes()[lower.len() - s.len() - 1] == b'.'),
        "{host:?} is not under {:?}",
        allow.suffixes()
    );
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    assert!(bare.parse::<IpAddr>().is_err(), "IP literal {host:?}");
    assert!(!host.contains('@'), "{host:?}");
}
