//! Header filtering (`proxy/src/proxy.rs`: `strip_request_headers`, `strip_hop_by_hop`) and
//! what the signer then signs (`proxy/src/sign.rs`), with `--sign-header` names accepted by
//! `Config::from_args`:
//! - no hop-by-hop header, nor one a `Connection` header nominates, goes upstream, except
//!   `te: trailers` (gRPC); nor `authorization`, `proxy-*`, `x-amz-*`, `x-amzn-lattice-*`;
//! - every other header goes upstream unchanged, all its values in order;
//! - only `host`, `x-amz-content-sha256`, `x-amz-date`, `x-amz-security-token` and accepted
//!   `--sign-header` names are signed, never a name of `NEVER_SIGNED`;
//! - responses lose their hop-by-hop and `Connection`-nominated headers, nothing else.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use arbitrary::Arbitrary;
use aws_credential_types::Credentials;
use aws_smithy_runtime_api::client::identity::Identity;
use clap::Parser;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri};
use lattice_proxy::config::{Args, Config};
use lattice_proxy::proxy::fuzzing::{strip_request_headers, strip_response_headers};
use lattice_proxy::sign::{Signer, NEVER_SIGNED};
use libfuzzer_sys::fuzz_target;

const NAMES: &[&str] = &[
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "authorization",
    "proxy-authorization",
    "proxy-connection",
    "proxy-authenticate",
    "x-amz-date",
    "x-amz-security-token",
    "x-amzn-lattice-identity",
    "x-amzn-trace-id",
    "user-agent",
    "content-type",
    "content-length",
    "accept",
    "x-custom",
    "x-forwarded-for",
    "host",
];

#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Any(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    headers: Vec<(Name, Vec<u8>)>,
    sign_headers: Vec<String>,
}

fn name(n: &Name) -> Option<HeaderName> {
    match n {
        Name::Known(i) => Some(HeaderName::from_static(
            NAMES[usize::from(*i) % NAMES.len()],
        )),
        Name::Any(s) => HeaderName::from_bytes(s.as_bytes()).ok(),
    }
}

const REQUEST_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "authorization",
];
const RESPONSE_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-connection",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The names the `Connection` headers nominate, from their bytes (RFC 9110 §7.6.1: a list
/// of tokens, compared case-insensitively).
fn nominated(headers: &HeaderMap) -> Vec<Vec<u8>> {
    headers
        .get_all("connection")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|t| t.trim_ascii().to_ascii_lowercase())
        // `close` is the connection option; a field of that name is reserved (RFC 9110
        // §16.3.2.2) and the proxy leaves it alone.
        .filter(|t| !t.is_empty() && t.as_slice() != b"close")
        .collect()
}

fn has_te_trailers(headers: &HeaderMap) -> bool {
    headers.get_all("te").iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
    })
}

fuzz_target!(|input: Input| {
    let mut headers = HeaderMap::new();
    for (n, v) in &input.headers {
        let (Some(n), Ok(v)) = (name(n), HeaderValue::from_bytes(v)) else {
            return; // hyper refuses such a header line
        };
        headers.append(n, v);
    }
    let original = headers.clone();
    let named = nominated(&original);

    let mut request = headers.clone();
    strip_request_headers(&mut request);
    for (n, _) in &request {
        let s = n.as_str();
        if s == "te" {
            // Kept only as `te: trailers`, and only when the application asked for it.
            assert!(has_te_trailers(&original), "te kept without trailers");
            let values: Vec<_> = request.get_all("te").iter().collect();
            assert_eq!(values, [HeaderValue::from_static("trailers")]);
            continue;
        }
        assert!(
            !REQUEST_HOP.contains(&s)
                && !s.starts_with("proxy-")
                && !s.starts_with("x-amz-")
                && !s.starts_with("x-amzn-lattice-"),
            "{s} went upstream"
        );
        assert!(
            !named.iter().any(|t| t.as_slice() == s.as_bytes()),
            "{s} is nominated by Connection {:?} and went upstream",
            original.get_all("connection").iter().collect::<Vec<_>>()
        );
    }
    for n in original.keys() {
        let s = n.as_str();
        let dropped = REQUEST_HOP.contains(&s)
            || s.starts_with("proxy-")
            || s.starts_with("x-amz-")
            || s.starts_with("x-amzn-lattice-")
            || named.iter().any(|t| t.as_slice() == s.as_bytes());
        if !dropped {
            let before: Vec<_> = original.get_all(n).iter().collect();
            let after: Vec<_> = request.get_all(n).iter().collect();
            assert_eq!(before, after, "{s} changed on its way upstream");
        }
    }

    // Signing what is left, with the --sign-header names the configuration accepts.
    let mut argv = vec!["lattice-proxy".to_owned()];
    for h in &input.sign_headers {
        argv.push(format!("--sign-header={h}"));
    }
    if let Ok(config) = Args::try_parse_from(argv)
        .map_err(|_| ())
        .and_then(|a| Config::from_args(&a).map_err(|_| ()))
    {
        let signer = Signer::new(
            "us-west-2".into(),
            "vpc-lattice-svcs".into(),
            config.payload,
            config.sign_headers.clone(),
        );
        let identity: Identity =
            Credentials::new("AKIDEXAMPLE", "secret", Some("token".into()), None, "fuzz").into();
        let uri: Uri = "https://svc.example.on.aws/".parse().unwrap();
        let mut signed = request.clone();
        signer
            .sign(
                &identity,
                &Method::GET,
                &uri,
                &mut signed,
                None,
                UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            )
            .unwrap();
        let auth = signed["authorization"].to_str().unwrap();
        let list = auth
            .split("SignedHeaders=")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .unwrap();
        for s in list.split(';') {
            assert!(!NEVER_SIGNED.contains(&s), "{s} signed");
            assert!(
                [
                    "host",
                    "x-amz-content-sha256",
                    "x-amz-date",
                    "x-amz-security-token"
                ]
                .contains(&s)
                    || (config.sign_headers.iter().any(|h| h == s) && request.contains_key(s)),
                "{s} signed but not configured or not sent"
            );
            assert!(
                !s.starts_with("x-forwarded-")
                    && !named.iter().any(|t| t.as_slice() == s.as_bytes()),
                "{s} signed"
            );
        }
    }

    // Responses.
    let mut response = headers;
    strip_response_headers(&mut response);
    for (n, _) in &response {
        let s = n.as_str();
        assert!(!RESPONSE_HOP.contains(&s), "{s} went back to the app");
        assert!(
            !named.iter().any(|t| t.as_slice() == s.as_bytes()),
            "{s} is nominated by Connection and went back"
        );
    }
    for n in original.keys() {
        let s = n.as_str();
        if !RESPONSE_HOP.contains(&s) && !named.iter().any(|t| t.as_slice() == s.as_bytes()) {
            let before: Vec<_> = original.get_all(n).iter().collect();
            let after: Vec<_> = response.get_all(n).iter().collect();
            assert_eq!(before, after, "response header {s} changed");
        }
    }
});
