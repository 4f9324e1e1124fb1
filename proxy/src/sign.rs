//! SigV4 signing with aws-sigv4.
//!
//! Only what must be signed is given to the signer: the host, `x-amz-content-sha256` (added
//! by the settings), `x-amz-date` and the session token (added by the signer), plus headers
//! the operator names with `--sign-header`. The application's other headers are forwarded
//! unsigned, because hops may alter them and a signature over them would break.
//!
//! The query is forwarded in exactly the encoding that was signed ([`canonical_query`]): a
//! raw `+` or an unusual escape would otherwise be canonicalized differently by the server
//! than by the signer.

use std::borrow::Cow;
use std::time::SystemTime;

use aws_sigv4::http_request::{
    sign as sigv4_sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Lattice's signing name.
pub const DEFAULT_SIGNING_NAME: &str = "vpc-lattice-svcs";

/// Headers that are never signed (and, except the `x-forwarded-*`, `x-amzn-trace-id` and
/// `content-length` ones, never forwarded): hops add, remove or rewrite them.
pub const NEVER_SIGNED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "x-amzn-trace-id",
    "authorization",
    "user-agent",
];

/// Characters SigV4 leaves unescaped in query keys and values: `A-Z a-z 0-9 - . _ ~`
/// (RFC 3986 unreserved), the set aws-sigv4 canonicalizes with.
const QUERY_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// How the payload is covered by the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadMode {
    /// `x-amz-content-sha256: UNSIGNED-PAYLOAD` for every request (Lattice's default).
    Unsigned,
    /// Bodies with a declared length up to the limit are hashed and signed; larger or
    /// streamed bodies stay `UNSIGNED-PAYLOAD`.
    SignedUpTo(u64),
}

/// Errors from the signer.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// aws-sigv4 refused the request or its parameters.
    #[error("{0}")]
    Sigv4(String),
    /// A signed header value could not be written back into the request.
    #[error("signed header {0} has an invalid value")]
    InvalidHeader(&'static str),
}

/// Signs requests for one region and signing name.
#[derive(Debug, Clone)]
pub struct Signer {
    region: String,
    name: String,
    payload: PayloadMode,
    extra: Vec<HeaderName>,
    settings: SigningSettings,
}

impl Signer {
    /// A signer for `name` (`vpc-lattice-svcs`) in `region`; `extra` are additional request
    /// headers to sign when present.
    pub fn new(region: String, name: String, payload: PayloadMode, extra: Vec<HeaderName>) -> Self {
        let mut settings = SigningSettings::default();
        // Lattice wants `x-amz-content-sha256` sent *and* signed, UNSIGNED-PAYLOAD included.
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        Signer {
            region,
            name,
            payload,
            extra,
            settings,
        }
    }

    /// The payload mode.
    pub fn payload_mode(&self) -> PayloadMode {
        self.payload
    }

    /// The region signed for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Signs a request to `uri` (absolute, query already in [`canonical_query`] form) and
    /// writes `authorization`, `x-amz-date`, `x-amz-content-sha256` and
    /// `x-amz-security-token` into `headers`. `body_sha256` is the hex SHA-256 of the body,
    /// or `None` for `UNSIGNED-PAYLOAD`.
    pub fn sign(
        &self,
        identity: &Identity,
        method: &Method,
        uri: &Uri,
        headers: &mut HeaderMap,
        body_sha256: Option<String>,
        time: SystemTime,
    ) -> Result<(), SignError> {
        let mut signed: Vec<(&str, &str)> = Vec::with_capacity(1 + self.extra.len());
        for name in &self.extra {
            for v in headers.get_all(name) {
                if let Ok(v) = v.to_str() {
                    signed.push((name.as_str(), v));
                }
            }
        }
        let body = match body_sha256 {
            Some(hash) => SignableBody::Precomputed(hash),
            None => SignableBody::UnsignedPayload,
        };
        let uri_string = uri.to_string();
        let request = SignableRequest::new(
            method.as_str(),
            Cow::Borrowed(uri_string.as_str()),
            signed.into_iter(),
            body,
        )
        .map_err(|e| SignError::Sigv4(e.to_string()))?;
        let params = v4::SigningParams::builder()
            .identity(identity)
            .region(&self.region)
            .name(&self.name)
            .time(time)
            .settings(self.settings.clone())
            .build()
            .map_err(|e| SignError::Sigv4(e.to_string()))?
            .into();
        let (instructions, _signature) = sigv4_sign(request, &params)
            .map_err(|e| SignError::Sigv4(e.to_string()))?
            .into_parts();
        let (new_headers, _params) = instructions.into_parts();
        for h in new_headers {
            let mut value =
                HeaderValue::from_str(h.value()).map_err(|_| SignError::InvalidHeader(h.name()))?;
            // The signature is not a secret, but keep it out of Debug output and HPACK tables.
            value.set_sensitive(h.sensitive() || h.name() == "authorization");
            headers.insert(HeaderName::from_static(h.name()), value);
        }
        Ok(())
    }
}

/// Rewrites a query into the encoding SigV4 signs: each `key=value` pair form-decoded
/// (`+` is a space) and re-escaped with only the unreserved characters left bare, in the
/// original order; a valueless key becomes `key=`. Returns `None` for an empty query.
///
/// Forwarding this form means the server's canonicalization of what it receives is a no-op
/// and matches the signer's, whatever escaping the application used.
pub fn canonical_query(query: &str) -> Option<String> {
    let mut out = String::with_capacity(query.len());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if !out.is_empty() {
            out.push('&');
        }
        out.extend(utf8_percent_encode(&k, QUERY_ESCAPE));
        out.push('=');
        out.extend(utf8_percent_encode(&v, QUERY_ESCAPE));
    }
    if out.is_empty() {
        None
    } else {
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::Credentials;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn canonical_query_forms() {
        assert_eq!(canonical_query("x=a+b").as_deref(), Some("x=a%20b"));
        assert_eq!(canonical_query("b=2&a=1&a").as_deref(), Some("b=2&a=1&a="));
        assert_eq!(
            canonical_query("k=%7e%2F/~:").as_deref(),
            Some("k=~%2F%2F~%3A")
        );
        assert_eq!(canonical_query("&&"), None);
        assert_eq!(canonical_query(""), None);
    }

    /// The AWS SigV4 test suite's `get-vanilla` case with our settings: the known-good
    /// SignedHeaders and a signature botocore agrees with (see tests/sigv4_oracle.py).
    #[test]
    fn signs_host_and_payload_header_only() {
        let creds = Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            Some("token".into()),
            None,
            "test",
        );
        let identity: Identity = creds.into();
        let signer = Signer::new(
            "us-east-1".into(),
            "service".into(),
            PayloadMode::Unsigned,
            vec![],
        );
        let mut headers = HeaderMap::new();
        headers.insert("x-app", HeaderValue::from_static("not signed"));
        let uri: Uri = "https://example.amazonaws.com/".parse().unwrap();
        let time = UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 20150830T123600Z
        signer
            .sign(&identity, &Method::GET, &uri, &mut headers, None, time)
            .unwrap();
        let auth = headers["authorization"].to_str().unwrap();
        assert!(auth.starts_with(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token, Signature="
        ), "{auth}");
        assert_eq!(headers["x-amz-content-sha256"], "UNSIGNED-PAYLOAD");
        assert_eq!(headers["x-amz-date"], "20150830T123600Z");
        assert!(headers["x-amz-security-token"].is_sensitive());
        assert!(headers["authorization"].is_sensitive());
    }
}
