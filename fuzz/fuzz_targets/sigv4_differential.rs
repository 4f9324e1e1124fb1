//! lattice-proxy's SigV4 signer (`proxy/src/sign.rs`) against aws-sigv4's
//! `http_request::sign` for the same request, credentials, time, region and signed-header
//! set: the `Authorization` values must be equal.
//!
//! The request goes through the proxy's own steps first, as it does in service: the
//! request target is parsed as hyper parses it (`http::Uri`), rewritten by `upstream_uri`
//! (https, the route's authority, the query in canonical form), and the headers are
//! stripped by `strip_request_headers`. aws-sigv4 then signs the URI and headers that go
//! upstream, with the settings the proxy documents: `SigningSettings::default()` with
//! `PayloadChecksumKind::XAmzSha256`, `UNSIGNED-PAYLOAD` or the body's hash, and only the
//! configured `--sign-header` headers besides the ones the signer adds.
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbitrary::Arbitrary;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http::header::{HeaderName, HeaderValue};
use http::uri::Authority;
use http::{HeaderMap, Method, Uri};
use lattice_proxy::proxy::fuzzing::{strip_request_headers, upstream_uri};
use lattice_proxy::sign::{hex, PayloadMode, Signer, DEFAULT_SIGNING_NAME};
use libfuzzer_sys::fuzz_target;

const REGION: &str = "us-west-2";

/// Headers the generator names: two that may be configured with `--sign-header`, one that
/// never is, and hop-by-hop ones the filter removes.
const NAMES: &[&str] = &[
    "content-type",
    "x-custom",
    "accept",
    "connection",
    "te",
    "x-amz-date",
];
/// `--sign-header` candidates (valid per `Config::from_args`).
const SIGNABLE: &[&str] = &["content-type", "x-custom"];

/// Pieces of a request target: the characters SigV4 canonicalization treats specially are
/// more likely than in random text.
#[derive(Arbitrary, Debug)]
enum Piece {
    Slash,
    Dot,
    DotDot,
    Question,
    Amp,
    Eq,
    Plus,
    Percent(u8),
    Ascii(u8),
    Char(char),
    Text(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    method: u8,
    custom_method: String,
    target: Vec<Piece>,
    headers: Vec<(u8, Vec<u8>)>,
    sign_headers: u8,
    token: u8,
    body_sha256: Option<[u8; 32]>,
    secs: u64,
    port: bool,
}

fn target(pieces: &[Piece]) -> String {
    let mut s = String::new();
    for p in pieces {
        match p {
            Piece::Slash => s.push('/'),
            Piece::Dot => s.push('.'),
            Piece::DotDot => s.push_str(".."),
            Piece::Question => s.push('?'),
            Piece::Amp => s.push('&'),
            Piece::Eq => s.push('='),
            Piece::Plus => s.push('+'),
            Piece::Percent(b) => s.push_str(&format!("%{b:02X}")),
            Piece::Ascii(b) => s.push(char::from(b & 0x7f)),
            Piece::Char(c) => s.push(*c),
            Piece::Text(t) => s.push_str(t),
        }
    }
    s
}

fuzz_target!(|input: Input| {
    let method = match input.method % 8 {
        0 => Method::GET,
        1 => Method::POST,
        2 => Method::PUT,
        3 => Method::DELETE,
        4 => Method::HEAD,
        5 => Method::OPTIONS,
        6 => Method::PATCH,
        // Any token hyper accepts as a method.
        _ => match Method::from_bytes(input.custom_method.as_bytes()) {
            Ok(m) => m,
            Err(_) => return,
        },
    };
    if method == Method::CONNECT {
        return; // answered 501 by the proxy, never signed
    }
    // hyper parses the request target with `http::Uri`; what it refuses gets a 400.
    let Ok(inbound) = target(&input.target).parse::<Uri>() else {
        return;
    };
    let authority = Authority::from_static(if input.port {
        "svc-0abc.7d67968.vpc-lattice-svcs.us-west-2.on.aws:8443"
    } else {
        "svc-0abc.7d67968.vpc-lattice-svcs.us-west-2.on.aws"
    });
    let Ok(uri) = upstream_uri(authority, inbound.path_and_query()) else {
        return; // the proxy answers 400
    };

    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        let name = HeaderName::from_static(NAMES[usize::from(*name) % NAMES.len()]);
        // hyper (httparse, h2) accepts exactly the bytes `HeaderValue` accepts.
        let Ok(value) = HeaderValue::from_bytes(value) else {
            return;
        };
        headers.append(name, value);
    }
    strip_request_headers(&mut headers);

    let extra: Vec<HeaderName> = SIGNABLE
        .iter()
        .enumerate()
        .filter(|(i, _)| input.sign_headers & (1 << i) != 0)
        .map(|(_, n)| HeaderName::from_static(n))
        .collect();
    let long_token = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ".repeat(20);
    let token = match input.token % 3 {
        0 => None,
        1 => Some("IQoJb3JpZ2luX2Vj+/token=="),
        _ => Some(long_token.as_str()),
    };
    let identity: Identity = Credentials::new(
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        token.map(str::to_owned),
        None,
        "fuzz",
    )
    .into();
    // Up to 9999-12-31T23:59:59Z: both format four-digit years.
    let time: SystemTime = UNIX_EPOCH + Duration::from_secs(input.secs % 253_402_300_800);
    let body_sha256 = input.body_sha256.map(|h| hex(&h));

    let signer = Signer::new(
        REGION.into(),
        DEFAULT_SIGNING_NAME.into(),
        match body_sha256 {
            None => PayloadMode::Unsigned,
            Some(_) => PayloadMode::SignedUpTo(65536),
        },
        extra.clone(),
    );
    let mut ours = headers.clone();
    signer
        .sign(
            &identity,
            &method,
            &uri,
            &mut ours,
            body_sha256.clone(),
            time,
        )
        .expect("the proxy signs every request it forwards");

    // The reference: aws-sigv4, given the headers that are signed as they go upstream.
    let mut reference_values: Vec<(&str, String)> = Vec::new();
    for name in &extra {
        for value in headers.get_all(name) {
            // aws-sigv4 takes header values as `&str`: bytes that are not UTF-8 cannot be
            // given to it (the proxy signs them as received: unit test
            // `sign::tests::signed_header_values_keep_every_value_and_byte`).
            let Ok(value) = std::str::from_utf8(value.as_bytes()) else {
                return;
            };
            // A tab is whitespace to the proxy and to botocore (`' '.join(v.split())`:
            // `x-custom:\t` canonicalizes to `x-custom:`), while aws-sigv4's trim_all
            // trims and collapses spaces only and signs the tab. botocore is the tie-breaker
            // (and RFC 9110 strips a field value's leading and trailing tabs before any
            // server sees it), so aws-sigv4 is given the tabs as spaces.
            reference_values.push((name.as_str(), value.replace('\t', " ")));
        }
    }
    let reference_headers: Vec<(&str, &str)> = reference_values
        .iter()
        .map(|(n, v)| (*n, v.as_str()))
        .collect();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name(DEFAULT_SIGNING_NAME)
        .time(time)
        .settings(settings)
        .build()
        .expect("complete signing parameters")
        .into();
    let uri_s = uri.to_string();
    let body = match &body_sha256 {
        None => SignableBody::UnsignedPayload,
        Some(h) => SignableBody::Precomputed(h.clone()),
    };
    let request = SignableRequest::new(
        method.as_str(),
        uri_s.as_str(),
        reference_headers.iter().copied(),
        body,
    )
    .unwrap_or_else(|e| panic!("aws-sigv4 refuses {method} {uri_s} {reference_headers:?}: {e}"));
    let (instructions, _) = sign(request, &params)
        .unwrap_or_else(|e| panic!("aws-sigv4 cannot sign {method} {uri_s}: {e}"))
        .into_parts();
    let (reference, _) = instructions.into_parts();
    for h in reference {
        assert_eq!(
            ours.get(h.name()).map(HeaderValue::as_bytes),
            Some(h.value().as_bytes()),
            "{}: {method} {uri_s} headers {reference_headers:?} token {token:?} time {time:?}",
            h.name()
        );
    }
});
