//! The verifier's verdicts agree with botocore: what botocore signs is accepted, tampered
//! copies are refused with the reason Lattice would give.

use std::time::Duration;

use http::{HeaderValue, Method};
use lattice_tests::{
    credentials::CredentialsRegistry,
    sigv4::{self, Payload, RequestParts, SigV4Error, SigningCredentials},
};
use serde_json::{json, Value};

use crate::{
    botocore::{self, Signed},
    fixtures::*,
};

fn case(name: &str, method: &str, url: &str) -> Value {
    json!({
        "name": name, "method": method, "url": url, "headers": {}, "body": "",
        "access_key": TEMP_KEY, "secret_key": TEMP_SECRET, "token": TEMP_TOKEN,
        "region": REGION, "service": "vpc-lattice-svcs", "timestamp": AMZ_DATE,
        "unsigned_payload": true,
    })
}

fn with(mut item: Value, field: &str, value: Value) -> Value {
    item[field] = value;
    item
}

/// Requests that botocore signs and the verifier must accept.
fn accepted_cases() -> Vec<Value> {
    vec![
        case("root", "GET", "https://demo-cluster2.example.com/"),
        case(
            "plain path",
            "GET",
            "https://demo-cluster2.example.com/api/v1/items",
        ),
        case(
            "sorted query with repeated keys and empty value",
            "GET",
            "https://demo-cluster2.example.com/search?b=2&a=1&a=0&empty=",
        ),
        case(
            "query with encoded space, slash and unicode",
            "GET",
            "https://demo-cluster2.example.com/q?text=a%20b&path=%2Fx%2Fy&name=caf%C3%A9",
        ),
        case(
            "escaped path segments are encoded twice",
            "GET",
            "https://demo-cluster2.example.com/a%20b/c%2Fd/caf%C3%A9/~user",
        ),
        case(
            "dot segments and double slashes",
            "GET",
            "https://demo-cluster2.example.com/a/./b/../c//d/",
        ),
        case(
            "non-default port in host",
            "GET",
            "https://demo-cluster2.example.com:8443/x",
        ),
        with(
            with(
                case(
                    "custom header with runs of spaces",
                    "GET",
                    "https://demo-cluster2.example.com/h",
                ),
                "headers",
                json!({"X-Custom-Header": "  several   spaced    words  ", "Content-Type": "text/plain"}),
            ),
            "body",
            json!(""),
        ),
        with(
            case(
                "POST with unsigned payload",
                "POST",
                "https://demo-cluster2.example.com/orders",
            ),
            "body",
            json!("{\"item\": 1}"),
        ),
        with(
            with(
                case(
                    "POST with signed payload hash",
                    "POST",
                    "http://demo-cluster2.example.com/orders",
                ),
                "unsigned_payload",
                json!(false),
            ),
            "body",
            json!("hash me"),
        ),
        with(
            with(
                with(
                    case(
                        "long-term key without session token",
                        "PUT",
                        "https://demo-cluster2.example.com/k",
                    ),
                    "access_key",
                    json!(LONG_KEY),
                ),
                "secret_key",
                json!(LONG_SECRET),
            ),
            "token",
            Value::Null,
        ),
    ]
}

fn verify_at(
    signed: &Signed,
    registry: &CredentialsRegistry,
    now: std::time::SystemTime,
) -> Result<String, SigV4Error> {
    let (method, uri, headers) = signed.parts();
    verify_parts(
        &method,
        &uri,
        &headers,
        signed.body.as_bytes(),
        registry,
        now,
    )
}

fn verify_parts(
    method: &Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    body: &[u8],
    registry: &CredentialsRegistry,
    now: std::time::SystemTime,
) -> Result<String, SigV4Error> {
    let request = RequestParts {
        method,
        uri,
        headers,
    };
    let payload = if sigv4::needs_body(headers) {
        Payload::Bytes(body)
    } else {
        Payload::NotRead
    };
    sigv4::verify(request, payload, registry, REGION, now).map(|v| v.credential.access_key_id)
}

#[test]
fn botocore_signatures_are_accepted() {
    let signed = botocore::sign(&Value::Array(accepted_cases()));
    let registry = registry();
    for s in &signed {
        let key = verify_at(s, &registry, signed_at())
            .unwrap_or_else(|e| panic!("{}: botocore's signature refused: {e:?}", s.name));
        assert!(key == TEMP_KEY || key == LONG_KEY, "{}", s.name);
        // Inside the five-minute window either way.
        for skew in [-299i64, 299] {
            let now = if skew < 0 {
                signed_at() - Duration::from_secs(skew.unsigned_abs())
            } else {
                signed_at() + Duration::from_secs(skew as u64)
            };
            verify_at(s, &registry, now)
                .unwrap_or_else(|e| panic!("{}: refused at {skew:+} s: {e}", s.name));
        }
    }
}

/// Applies `tamper` to every accepted request and expects a refusal.
fn refuse_all(
    what: &str,
    tamper: impl Fn(&mut Method, &mut http::Uri, &mut http::HeaderMap, &mut Vec<u8>),
    expect: impl Fn(&SigV4Error) -> bool,
) {
    let signed = botocore::sign(&Value::Array(accepted_cases()));
    let registry = registry();
    for s in &signed {
        let (mut method, mut uri, mut headers) = s.parts();
        let mut body = s.body.as_bytes().to_vec();
        tamper(&mut method, &mut uri, &mut headers, &mut body);
        match verify_parts(&method, &uri, &headers, &body, &registry, signed_at()) {
            Ok(_) => panic!("{}: accepted although {what}", s.name),
            Err(e) => assert!(expect(&e), "{}: {what}: unexpected refusal {e:?}", s.name),
        }
    }
}

fn is_mismatch(e: &SigV4Error) -> bool {
    matches!(e, SigV4Error::SignatureMismatch { .. })
}

#[test]
fn tampered_method_is_refused() {
    refuse_all(
        "the method changed",
        |m, _, _, _| {
            *m = if *m == Method::DELETE {
                Method::GET
            } else {
                Method::DELETE
            }
        },
        is_mismatch,
    );
}

#[test]
fn tampered_path_is_refused() {
    refuse_all(
        "the path changed",
        |_, uri, _, _| {
            let pq = uri.path_and_query().unwrap().as_str();
            let (path, query) = pq.split_once('?').map_or((pq, None), |(p, q)| (p, Some(q)));
            let changed = match query {
                Some(q) => format!("{path}x?{q}"),
                None => format!("{path}x"),
            };
            *uri = changed.parse().unwrap();
        },
        is_mismatch,
    );
}

#[test]
fn tampered_query_is_refused() {
    refuse_all(
        "a query parameter was added",
        |_, uri, _, _| {
            let pq = uri.path_and_query().unwrap().as_str();
            let sep = if pq.contains('?') { '&' } else { '?' };
            *uri = format!("{pq}{sep}admin=true").parse().unwrap();
        },
        is_mismatch,
    );
}

#[test]
fn raw_plus_in_query_is_not_a_space() {
    // What was signed as `a%20b` must not be accepted when sent as `a+b`: the verifier takes
    // `+` literally, so a proxy that forwards another encoding than it signed is caught.
    let signed = botocore::sign(&json!([case(
        "space",
        "GET",
        "https://demo-cluster2.example.com/q?text=a%20b"
    )]));
    let (method, _, headers) = signed[0].parts();
    let uri: http::Uri = "/q?text=a+b".parse().unwrap();
    let err = verify_parts(&method, &uri, &headers, b"", &registry(), signed_at()).unwrap_err();
    assert!(is_mismatch(&err), "{err:?}");
}

#[test]
fn tampered_signed_header_is_refused() {
    refuse_all(
        "x-amz-date moved by one second",
        |_, _, h, _| {
            let date = h
                .get("x-amz-date")
                .unwrap()
                .to_str()
                .unwrap()
                .replace("05Z", "06Z");
            h.insert("x-amz-date", HeaderValue::from_str(&date).unwrap());
        },
        is_mismatch,
    );
    refuse_all(
        "the host changed",
        |_, _, h, _| {
            h.insert(
                http::header::HOST,
                HeaderValue::from_static("demo-cluster1.example.com"),
            );
        },
        is_mismatch,
    );
}

#[test]
fn tampered_signature_is_refused() {
    refuse_all(
        "one signature digit changed",
        |_, _, h, _| {
            let auth = h.get("authorization").unwrap().to_str().unwrap().to_owned();
            let last = auth.chars().last().unwrap();
            let swapped = if last == '0' { '1' } else { '0' };
            let changed = format!("{}{swapped}", &auth[..auth.len() - 1]);
            h.insert("authorization", HeaderValue::from_str(&changed).unwrap());
        },
        is_mismatch,
    );
}

#[test]
fn wrong_secret_is_refused() {
    let signed = botocore::sign(&json!([with(
        case(
            "signed with another secret",
            "GET",
            "https://demo-cluster2.example.com/"
        ),
        "secret_key",
        json!("notTheSecret")
    )]));
    assert!(is_mismatch(
        &verify_at(&signed[0], &registry(), signed_at()).unwrap_err()
    ));
}

#[test]
fn tampered_body_is_refused_when_the_payload_is_signed() {
    let signed = botocore::sign(&json!([with(
        with(
            case("payload", "POST", "http://demo-cluster2.example.com/p"),
            "unsigned_payload",
            json!(false)
        ),
        "body",
        json!("original")
    )]));
    let (method, uri, headers) = signed[0].parts();
    let err = verify_parts(
        &method,
        &uri,
        &headers,
        b"changed!",
        &registry(),
        signed_at(),
    )
    .unwrap_err();
    assert!(is_mismatch(&err), "{err:?}");
    // A declared (and signed) body hash that does not match the body is refused.
    use sha2::Digest;
    let declared = hex::encode(sha2::Sha256::digest(b"original"));
    let signed = botocore::sign(&json!([with(
        with(
            with(
                case(
                    "declared hash",
                    "POST",
                    "https://demo-cluster2.example.com/p"
                ),
                "unsigned_payload",
                json!(false)
            ),
            "body",
            json!("original")
        ),
        "headers",
        json!({"X-Amz-Content-SHA256": declared})
    )]));
    assert!(verify_at(&signed[0], &registry(), signed_at()).is_ok());
    let (method, uri, headers) = signed[0].parts();
    let err = verify_parts(
        &method,
        &uri,
        &headers,
        b"changed!",
        &registry(),
        signed_at(),
    )
    .unwrap_err();
    assert_eq!(err, SigV4Error::PayloadHashMismatch);
}

#[test]
fn clock_skew_beyond_five_minutes_is_refused() {
    let signed = botocore::sign(&json!([case(
        "skew",
        "GET",
        "https://demo-cluster2.example.com/"
    )]));
    let registry = registry();
    let late = verify_at(
        &signed[0],
        &registry,
        signed_at() + Duration::from_secs(301),
    )
    .unwrap_err();
    assert!(matches!(late, SigV4Error::Expired { .. }), "{late:?}");
    assert_eq!(
        format!("{}: {late}", late.exception()),
        "InvalidSignatureException: Signature expired: 20240102T030405Z is now earlier than \
         20240102T030406Z (20240102T030906Z - 5 min.)"
    );
    let early = verify_at(
        &signed[0],
        &registry,
        signed_at() - Duration::from_secs(301),
    )
    .unwrap_err();
    assert!(matches!(early, SigV4Error::NotYetValid { .. }), "{early:?}");
}

#[test]
fn unknown_expired_and_tokenless_keys_are_refused() {
    let signed = botocore::sign(&json!([
        with(
            case("unknown key", "GET", "https://demo-cluster2.example.com/"),
            "access_key",
            json!("ASIAUNKNOWNKEY")
        ),
        with(
            with(
                with(
                    case("expired key", "GET", "https://demo-cluster2.example.com/"),
                    "access_key",
                    json!(EXPIRED_KEY)
                ),
                "secret_key",
                json!(EXPIRED_SECRET)
            ),
            "token",
            json!(EXPIRED_TOKEN)
        ),
        with(
            case("wrong token", "GET", "https://demo-cluster2.example.com/"),
            "token",
            json!("someone-elses-token")
        ),
        with(
            case("no token", "GET", "https://demo-cluster2.example.com/"),
            "token",
            Value::Null
        ),
    ]));
    let registry = registry();
    let errors: Vec<SigV4Error> = signed
        .iter()
        .map(|s| verify_at(s, &registry, signed_at()).unwrap_err())
        .collect();
    assert_eq!(
        errors[0],
        SigV4Error::UnknownAccessKey("ASIAUNKNOWNKEY".into())
    );
    assert_eq!(errors[0].exception(), "UnrecognizedClientException");
    assert_eq!(errors[1], SigV4Error::ExpiredToken(EXPIRED_KEY.into()));
    assert_eq!(
        format!("{}: {}", errors[1].exception(), errors[1]),
        "ExpiredTokenException: The security token included in the request is expired"
    );
    assert_eq!(errors[2], SigV4Error::UnknownAccessKey(TEMP_KEY.into()));
    assert_eq!(errors[3], SigV4Error::UnknownAccessKey(TEMP_KEY.into()));
}

#[test]
fn wrong_service_or_region_in_scope_is_refused() {
    let signed = botocore::sign(&json!([
        with(
            case("execute-api", "GET", "https://demo-cluster2.example.com/"),
            "service",
            json!("execute-api")
        ),
        with(
            case("other region", "GET", "https://demo-cluster2.example.com/"),
            "region",
            json!("eu-west-1")
        ),
    ]));
    let registry = registry();
    assert_eq!(
        verify_at(&signed[0], &registry, signed_at()).unwrap_err(),
        SigV4Error::WrongService("execute-api".into())
    );
    assert_eq!(
        verify_at(&signed[1], &registry, signed_at()).unwrap_err(),
        SigV4Error::WrongRegion("eu-west-1".into())
    );
}

#[test]
fn lattice_required_headers_must_be_signed() {
    let signed = botocore::sign(&json!([case(
        "base",
        "GET",
        "https://demo-cluster2.example.com/"
    )]));
    let (method, uri, headers) = signed[0].parts();
    let registry = registry();
    let auth = signed[0].authorization().to_owned();

    // host dropped from SignedHeaders.
    let mut h = headers.clone();
    h.insert(
        "authorization",
        HeaderValue::from_str(&auth.replace("SignedHeaders=host;", "SignedHeaders=")).unwrap(),
    );
    let err = verify_parts(&method, &uri, &h, b"", &registry, signed_at()).unwrap_err();
    assert_eq!(err, SigV4Error::HeaderNotSigned("host"));
    assert_eq!(
        format!("{}: {err}", err.exception()),
        "IncompleteSignatureException: 'host' must be a 'SignedHeader' in the AWS Authorization."
    );

    // x-amz-content-sha256 sent but not signed.
    let unsigned = botocore::sign(&json!([with(
        case("no sha header", "GET", "https://demo-cluster2.example.com/"),
        "unsigned_payload",
        json!(false)
    )]));
    let (method, uri, mut h) = unsigned[0].parts();
    h.insert(
        "x-amz-content-sha256",
        HeaderValue::from_static(sigv4::UNSIGNED_PAYLOAD),
    );
    let err = verify_parts(&method, &uri, &h, b"", &registry, signed_at()).unwrap_err();
    assert_eq!(err, SigV4Error::HeaderNotSigned("x-amz-content-sha256"));

    // No x-amz-date at all.
    let (method, uri, mut h) = signed[0].parts();
    h.remove("x-amz-date");
    let err = verify_parts(&method, &uri, &h, b"", &registry, signed_at()).unwrap_err();
    assert_eq!(err.exception(), "IncompleteSignatureException");

    // Incomplete Authorization header.
    let (method, uri, mut h) = signed[0].parts();
    h.insert(
        "authorization",
        HeaderValue::from_str(auth.split(", Signature=").next().unwrap()).unwrap(),
    );
    let err = verify_parts(&method, &uri, &h, b"", &registry, signed_at()).unwrap_err();
    assert!(
        err.to_string().contains("requires 'Signature' parameter"),
        "{err}"
    );
}

#[test]
fn rust_signer_matches_botocore() {
    // The helper signer (used by the end-to-end tests and demos) produces byte-for-byte the
    // Authorization header botocore produces for the same request.
    for (url, token) in [
        (
            "https://demo-cluster2.example.com/a%20b/../c?x=1&a=%2F",
            Some(TEMP_TOKEN),
        ),
        ("https://demo-cluster2.example.com:8443/", None),
    ] {
        let item = with(case("agreement", "GET", url), "token", json!(token));
        let item = if token.is_none() {
            with(
                with(item, "access_key", json!(LONG_KEY)),
                "secret_key",
                json!(LONG_SECRET),
            )
        } else {
            item
        };
        let signed = botocore::sign(&json!([item]));
        let (method, uri, _) = signed[0].parts();
        let mut headers = http::HeaderMap::new();
        let full: http::Uri = url.parse().unwrap();
        headers.insert(
            http::header::HOST,
            HeaderValue::from_str(full.authority().unwrap().as_str()).unwrap(),
        );
        let credentials = SigningCredentials {
            access_key_id: if token.is_some() { TEMP_KEY } else { LONG_KEY }.to_owned(),
            secret_access_key: if token.is_some() {
                TEMP_SECRET
            } else {
                LONG_SECRET
            }
            .to_owned(),
            session_token: token.map(str::to_owned),
        };
        sigv4::sign(
            &method,
            &uri,
            &mut headers,
            &credentials,
            REGION,
            signed_at(),
        )
        .unwrap();
        assert_eq!(
            headers.get("authorization").unwrap().to_str().unwrap(),
            signed[0].authorization(),
            "{url}"
        );
    }
}
