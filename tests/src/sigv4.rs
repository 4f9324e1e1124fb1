//! AWS Signature Version 4 verification with VPC Lattice's rules.
//!
//! This is an independent implementation: it shares no code with the proxy's signer
//! (`proxy/src/sign.rs`, the proxy's own canonical request with aws-sigv4's key derivation
//! and final HMAC) nor with aws-sigv4, and is checked in the test suite against signatures
//! made by botocore. It
//! verifies the `Authorization` header form only (`AWS4-HMAC-SHA256`); presigned query
//! strings and SigV4A are not accepted, which Lattice clients do not use either.
//!
//! Lattice's rules on top of plain SigV4:
//! - the credential scope's service must be `vpc-lattice-svcs` and its region the emulator's;
//! - `host` and `x-amz-date` must be signed, and so must `x-amz-content-sha256` and
//!   `x-amz-security-token` whenever they are sent;
//! - `x-amz-content-sha256: UNSIGNED-PAYLOAD` is accepted; without that header the body is
//!   hashed;
//! - the request time must be within five minutes of the emulator's clock.
//!
//! Canonicalization follows the SigV4 rules for services other than S3: the path is
//! normalized (dot segments and empty segments removed) and encoded once more (so an
//! escaped `%20` becomes `%2520`), query parameters are decoded, re-encoded with only the
//! unreserved characters left as they are (space as `%20`, a literal `+` as `%2B`) and
//! sorted by key then value, header values are trimmed with inner whitespace runs collapsed.

use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use http::{HeaderMap, Method, Uri};
use sha2::{Digest, Sha256};
use time::{format_description::BorrowedFormatItem, macros::format_description, OffsetDateTime};

use crate::credentials::{CredentialsRegistry, StoredCredential};

/// The only signing algorithm accepted.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The signing name of VPC Lattice service invocations.
pub const SERVICE: &str = "vpc-lattice-svcs";
/// The `x-amz-content-sha256` value that exempts the body from the signature.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// How far the request time may be from the verifier's clock, either way.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// SHA-256 of the empty string, the payload hash of a request without a body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

const AMZ_DATE_FORMAT: &[BorrowedFormatItem<'static>] =
    format_description!("[year][month][day]T[hour][minute][second]Z");

/// Why a signed request was refused. Each variant renders as the exception name and message
/// that Lattice puts in its 403 body (see [`SigV4Error::exception`] and its `Display`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    /// The `Authorization` header lacks a part or is not SigV4 at all.
    #[error("{0}")]
    Incomplete(String),
    /// A header that Lattice requires to be signed is missing from `SignedHeaders`.
    #[error("'{0}' must be a 'SignedHeader' in the AWS Authorization.")]
    HeaderNotSigned(&'static str),
    /// A header listed in `SignedHeaders` is absent from the request.
    #[error("The header '{0}' is listed in SignedHeaders but is not present in the request.")]
    SignedHeaderAbsent(String),
    /// The credential scope names another service.
    #[error("Credential should be scoped to correct service: '{SERVICE}'. ")]
    WrongService(String),
    /// The credential scope names another region.
    #[error("Credential should be scoped to a valid region, not '{0}'. ")]
    WrongRegion(String),
    /// The credential scope's date is not the date of `x-amz-date`.
    #[error("Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{scope}' != '{date}', from '{amz_date}'.")]
    ScopeDateMismatch {
        /// Date in the credential scope.
        scope: String,
        /// Date part of `x-amz-date`.
        date: String,
        /// The whole `x-amz-date` value.
        amz_date: String,
    },
    /// `x-amz-date` is not `YYYYMMDDTHHMMSSZ`.
    #[error("X-Amz-Date '{0}' is not in the ISO-8601 basic format YYYYMMDD'T'HHMMSS'Z'.")]
    BadDate(String),
    /// The request was signed more than five minutes before the verifier's clock.
    #[error("Signature expired: {signed} is now earlier than {earliest} ({now} - 5 min.)")]
    Expired {
        /// `x-amz-date` of the request.
        signed: String,
        /// Earliest acceptable time.
        earliest: String,
        /// Verifier's clock.
        now: String,
    },
    /// The request was signed more than five minutes after the verifier's clock.
    #[error("Signature not yet current: {signed} is still later than {latest} ({now} + 5 min.)")]
    NotYetValid {
        /// `x-amz-date` of the request.
        signed: String,
        /// Latest acceptable time.
        latest: String,
        /// Verifier's clock.
        now: String,
    },
    /// The access key is not in the registry, or the session token does not belong to it.
    #[error("The security token included in the request is invalid.")]
    UnknownAccessKey(String),
    /// The temporary credentials have expired.
    #[error("The security token included in the request is expired")]
    ExpiredToken(String),
    /// `x-amz-content-sha256` is neither `UNSIGNED-PAYLOAD` nor the body's hash.
    #[error("The provided 'x-amz-content-sha256' header does not match what was computed.")]
    PayloadHashMismatch,
    /// The recomputed signature differs from the one sent.
    #[error("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.")]
    SignatureMismatch {
        /// The canonical request the verifier computed, for logs.
        canonical_request: String,
    },
}

impl SigV4Error {
    /// The exception name that prefixes the message in the response body.
    pub fn exception(&self) -> &'static str {
        match self {
            SigV4Error::Incomplete(_)
            | SigV4Error::HeaderNotSigned(_)
            | SigV4Error::SignedHeaderAbsent(_) => "IncompleteSignatureException",
            SigV4Error::UnknownAccessKey(_) => "UnrecognizedClientException",
            SigV4Error::ExpiredToken(_) => "ExpiredTokenException",
            _ => "InvalidSignatureException",
        }
    }
}

/// The parts of a SigV4 `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// Access key id from the credential scope.
    pub access_key_id: String,
    /// `YYYYMMDD` from the credential scope.
    pub date: String,
    /// Region from the credential scope.
    pub region: String,
    /// Service from the credential scope.
    pub service: String,
    /// Signed header names, in the order sent.
    pub signed_headers: Vec<String>,
    /// Hex signature.
    pub signature: String,
}

impl Authorization {
    /// Parses `AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request,
    /// SignedHeaders=a;b, Signature=hex`.
    pub fn parse(value: &str) -> Result<Self, SigV4Error> {
        let value = value.trim();
        let (algorithm, rest) = value.split_once(' ').unwrap_or((value, ""));
        if algorithm != ALGORITHM {
            return Err(SigV4Error::Incomplete(format!(
                "Unsupported AWS 'algorithm': '{algorithm}'. Only '{ALGORITHM}' is accepted."
            )));
        }
        let (mut credential, mut signed_headers, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let Some((name, value)) = part.split_once('=') else {
                return Err(SigV4Error::Incomplete(format!(
                    "Authorization header requires each component to be 'Name=Value', got '{part}'."
                )));
            };
            match name.trim() {
                "Credential" => credential = Some(value.trim()),
                "SignedHeaders" => signed_headers = Some(value.trim()),
                "Signature" => signature = Some(value.trim()),
                _ => {}
            }
        }
        let mut missing = Vec::new();
        for (name, part) in [
            ("Credential", &credential),
            ("Signature", &signature),
            ("SignedHeaders", &signed_headers),
        ] {
            if part.is_none_or(str::is_empty) {
                missing.push(format!("Authorization header requires '{name}' parameter."));
            }
        }
        if !missing.is_empty() {
            return Err(SigV4Error::Incomplete(format!(
                "{} Authorization={value}",
                missing.join(" ")
            )));
        }
        let credential = credential.unwrap_or_default();
        let scope: Vec<&str> = credential.split('/').collect();
        if scope.len() != 5 || scope[4] != "aws4_request" || scope.iter().any(|p| p.is_empty()) {
            return Err(SigV4Error::Incomplete(format!(
                "Credential '{credential}' is not of the form \
                 <access key>/<YYYYMMDD>/<region>/<service>/aws4_request."
            )));
        }
        Ok(Authorization {
            access_key_id: scope[0].to_owned(),
            date: scope[1].to_owned(),
            region: scope[2].to_owned(),
            service: scope[3].to_owned(),
            signed_headers: signed_headers
                .unwrap_or_default()
                .split(';')
                .map(str::to_owned)
                .collect(),
            signature: signature.unwrap_or_default().to_ascii_lowercase(),
        })
    }
}

/// What the verifier needs to know about the request's body.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// The body was read; its hash is checked against `x-amz-content-sha256` or used as the
    /// payload hash when that header is absent.
    Bytes(&'a [u8]),
    /// The body was not read. Only valid when `x-amz-content-sha256` is `UNSIGNED-PAYLOAD`
    /// (see [`needs_body`]).
    NotRead,
}

/// Whether [`verify`] needs the body: true unless the request declares `UNSIGNED-PAYLOAD`.
pub fn needs_body(headers: &HeaderMap) -> bool {
    headers
        .get("x-amz-content-sha256")
        .is_none_or(|v| v.as_bytes() != UNSIGNED_PAYLOAD.as_bytes())
}

/// A request whose signature checked out.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The credential that signed it, with the identity behind it.
    pub credential: StoredCredential,
}

/// The request as the verifier sees it.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// HTTP method.
    pub method: &'a Method,
    /// URI as received (origin-form for HTTP/1.1, with authority for HTTP/2).
    pub uri: &'a Uri,
    /// Headers as received.
    pub headers: &'a HeaderMap,
}

impl RequestParts<'_> {
    /// The `host` value that was signed: the `Host` header, else the URI's authority (HTTP/2
    /// `:authority`).
    fn host(&self) -> Option<String> {
        if let Some(host) = self.headers.get(http::header::HOST) {
            return Some(String::from_utf8_lossy(host.as_bytes()).into_owned());
        }
        self.uri.authority().map(|a| a.as_str().to_owned())
    }
}

/// Verifies the SigV4 signature of a request that carries an `Authorization` header.
///
/// `region` is the region the emulator runs in; `now` is the verifier's clock (a parameter so
/// tests never depend on wall-clock time).
pub fn verify(
    request: RequestParts<'_>,
    payload: Payload<'_>,
    registry: &CredentialsRegistry,
    region: &str,
    now: SystemTime,
) -> Result<Verified, SigV4Error> {
    let header = request
        .headers
        .get(http::header::AUTHORIZATION)
        .ok_or_else(|| SigV4Error::Incomplete("Missing Authorization header.".to_owned()))?;
    let auth = Authorization::parse(&String::from_utf8_lossy(header.as_bytes()))?;

    let amz_date = request
        .headers
        .get("x-amz-date")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .ok_or_else(|| {
            SigV4Error::Incomplete(
                "Authorization header requires existence of a 'X-Amz-Date' header.".to_owned(),
            )
        })?;
    let signed_at = parse_amz_date(&amz_date)?;

    for required in ["host", "x-amz-date"] {
        if !auth.signed_headers.iter().any(|h| h == required) {
            return Err(SigV4Error::HeaderNotSigned(required));
        }
    }
    for when_sent in ["x-amz-content-sha256", "x-amz-security-token"] {
        if request.headers.contains_key(when_sent)
            && !auth.signed_headers.iter().any(|h| h == when_sent)
        {
            return Err(SigV4Error::HeaderNotSigned(when_sent));
        }
    }

    if auth.service != SERVICE {
        return Err(SigV4Error::WrongService(auth.service));
    }
    if auth.region != region {
        return Err(SigV4Error::WrongRegion(auth.region));
    }
    if !amz_date.starts_with(&auth.date) || auth.date.len() != 8 {
        return Err(SigV4Error::ScopeDateMismatch {
            scope: auth.date.clone(),
            date: amz_date.get(..8).unwrap_or_default().to_owned(),
            amz_date: amz_date.clone(),
        });
    }
    check_skew(&amz_date, signed_at, now)?;

    let credential = registry
        .get(&auth.access_key_id)
        .ok_or_else(|| SigV4Error::UnknownAccessKey(auth.access_key_id.clone()))?;
    let sent_token = request
        .headers
        .get("x-amz-security-token")
        .map(|v| v.as_bytes());
    if credential.session_token.as_deref().map(str::as_bytes) != sent_token {
        return Err(SigV4Error::UnknownAccessKey(auth.access_key_id.clone()));
    }
    if credential.is_expired(now) {
        return Err(SigV4Error::ExpiredToken(auth.access_key_id.clone()));
    }

    let payload_hash = payload_hash(request.headers, payload)?;
    let canonical_request = canonical_request(request, &auth.signed_headers, &payload_hash)?;
    let string_to_sign = string_to_sign(&amz_date, &auth.date, region, &canonical_request);
    let key = signing_key(&credential.secret_access_key, &auth.date, region, SERVICE);
    let mut mac = <Hmac<Sha256>>::new_from_slice(&key).expect("HMAC accepts any key length");
    mac.update(string_to_sign.as_bytes());
    let sent = hex::decode(&auth.signature).unwrap_or_default();
    // Constant-time comparison: this is an authentication check, even in an emulator.
    if mac.clone().verify_slice(&sent).is_err() {
        tracing::debug!(
            expected = %hex::encode(mac.finalize().into_bytes()),
            sent = %auth.signature,
            %canonical_request,
            "signature mismatch"
        );
        return Err(SigV4Error::SignatureMismatch { canonical_request });
    }
    Ok(Verified {
        credential: credential.clone(),
    })
}

fn payload_hash(headers: &HeaderMap, payload: Payload<'_>) -> Result<String, SigV4Error> {
    let declared = headers
        .get("x-amz-content-sha256")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match (declared, payload) {
        (Some(declared), _) if declared == UNSIGNED_PAYLOAD => Ok(declared),
        (Some(declared), Payload::Bytes(body)) => {
            if declared.eq_ignore_ascii_case(&hex::encode(Sha256::digest(body))) {
                Ok(declared)
            } else {
                Err(SigV4Error::PayloadHashMismatch)
            }
        }
        (None, Payload::Bytes(body)) => Ok(hex::encode(Sha256::digest(body))),
        (_, Payload::NotRead) => Err(SigV4Error::Incomplete(
            "The request body is needed to verify this signature but was not read.".to_owned(),
        )),
    }
}

fn parse_amz_date(value: &str) -> Result<OffsetDateTime, SigV4Error> {
    time::PrimitiveDateTime::parse(value, AMZ_DATE_FORMAT)
        .map(|t| t.assume_utc())
        .map_err(|_| SigV4Error::BadDate(value.to_owned()))
}

/// Formats a time as SigV4's `YYYYMMDDTHHMMSSZ`.
pub fn format_amz_date(at: SystemTime) -> String {
    OffsetDateTime::from(at)
        .format(AMZ_DATE_FORMAT)
        .expect("the x-amz-date format only has numeric components")
}

fn check_skew(
    amz_date: &str,
    signed_at: OffsetDateTime,
    now: SystemTime,
) -> Result<(), SigV4Error> {
    let now = OffsetDateTime::from(now);
    let skew = time::Duration::try_from(MAX_CLOCK_SKEW).expect("five minutes fits");
    let fmt = |t: OffsetDateTime| format_amz_date(t.into());
    if signed_at < now - skew {
        return Err(SigV4Error::Expired {
            signed: amz_date.to_owned(),
            earliest: fmt(now - skew),
            now: fmt(now),
        });
    }
    if signed_at > now + skew {
        return Err(SigV4Error::NotYetValid {
            signed: amz_date.to_owned(),
            latest: fmt(now + skew),
            now: fmt(now),
        });
    }
    Ok(())
}

/// Builds the canonical request from the request as received.
pub fn canonical_request(
    request: RequestParts<'_>,
    signed_headers: &[String],
    payload_hash: &str,
) -> Result<String, SigV4Error> {
    let mut out = String::new();
    out.push_str(request.method.as_str());
    out.push('\n');
    out.push_str(&canonical_path(request.uri.path()));
    out.push('\n');
    out.push_str(&canonical_query(request.uri.query().unwrap_or("")));
    out.push('\n');
    for name in signed_headers {
        let value = if name == "host" {
            request.host()
        } else {
            let values: Vec<String> = request
                .headers
                .get_all(name.as_str())
                .iter()
                .map(|v| trim_all(&String::from_utf8_lossy(v.as_bytes())))
                .collect();
            (!values.is_empty()).then(|| values.join(","))
        };
        let value = value.ok_or_else(|| SigV4Error::SignedHeaderAbsent(name.clone()))?;
        out.push_str(name);
        out.push(':');
        out.push_str(&trim_all(&value));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(payload_hash);
    Ok(out)
}

/// Trims a header value and collapses inner whitespace runs to one space.
fn trim_all(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Normalizes the path as sent (dot segments and empty segments removed, as AWS services
/// other than S3 do) and encodes it once more, `/` kept.
pub fn canonical_path(raw: &str) -> String {
    if raw.is_empty() {
        return "/".to_owned();
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in raw.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut normalized = String::new();
    if raw.starts_with('/') {
        normalized.push('/');
    }
    normalized.push_str(&segments.join("/"));
    if raw.ends_with('/') && !segments.is_empty() {
        normalized.push('/');
    }
    uri_encode(normalized.as_bytes(), true)
}

/// Canonical query: each `name=value` pair decoded and re-encoded strictly (a raw `+` is a
/// literal plus, not a space), sorted by encoded name then encoded value.
pub fn canonical_query(raw: &str) -> String {
    let mut pairs: Vec<(String, String)> = raw
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (
                uri_encode(&percent_decode(name), false),
                uri_encode(&percent_decode(value), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-decodes bytes; malformed escapes are kept as they are.
fn percent_decode(input: &str) -> Vec<u8> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// SigV4 URI encoding: unreserved characters (`A-Z a-z 0-9 - _ . ~`) as they are, `/` too
/// when `keep_slash`, everything else `%XX` in upper case.
pub fn uri_encode(input: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(input.len());
    for &b in input {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn string_to_sign(amz_date: &str, date: &str, region: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{date}/{region}/{SERVICE}/aws4_request\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    )
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256>>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

/// Credentials for [`sign`].
#[derive(Debug, Clone)]
pub struct SigningCredentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
}

/// Signs a request the way Lattice clients do (`UNSIGNED-PAYLOAD`, signed headers
/// `host;x-amz-content-sha256;x-amz-date[;x-amz-security-token]`), adding the headers to
/// `headers`. `uri` must carry the authority unless `headers` has `Host`.
///
/// For tests and demos that need a signed request without an SDK. It shares the
/// canonicalization code with [`verify`], so it is not an independent check by itself: the
/// test suite checks both against botocore.
pub fn sign(
    method: &Method,
    uri: &Uri,
    headers: &mut HeaderMap,
    credentials: &SigningCredentials,
    region: &str,
    at: SystemTime,
) -> Result<(), SigV4Error> {
    use http::HeaderValue;
    let header = |s: &str| {
        HeaderValue::from_str(s)
            .map_err(|_| SigV4Error::Incomplete(format!("'{s}' is not a valid header value")))
    };
    let amz_date = format_amz_date(at);
    headers.remove(http::header::AUTHORIZATION);
    headers.insert("x-amz-date", header(&amz_date)?);
    headers.insert("x-amz-content-sha256", header(UNSIGNED_PAYLOAD)?);
    let mut signed: Vec<String> = vec![
        "host".into(),
        "x-amz-content-sha256".into(),
        "x-amz-date".into(),
    ];
    match &credentials.session_token {
        Some(token) => {
            headers.insert("x-amz-security-token", header(token)?);
            signed.push("x-amz-security-token".into());
        }
        None => {
            headers.remove("x-amz-security-token");
        }
    }
    let parts = RequestParts {
        method,
        uri,
        headers,
    };
    let canonical = canonical_request(parts, &signed, UNSIGNED_PAYLOAD)?;
    let date = &amz_date[..8];
    let sts = string_to_sign(&amz_date, date, region, &canonical);
    let key = signing_key(&credentials.secret_access_key, date, region, SERVICE);
    let signature = hex::encode(hmac(&key, sts.as_bytes()));
    let value = format!(
        "{ALGORITHM} Credential={}/{date}/{region}/{SERVICE}/aws4_request, SignedHeaders={}, Signature={signature}",
        credentials.access_key_id,
        signed.join(";")
    );
    headers.insert(http::header::AUTHORIZATION, header(&value)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_is_normalized_then_encoded_again() {
        assert_eq!(canonical_path(""), "/");
        assert_eq!(canonical_path("/"), "/");
        assert_eq!(canonical_path("/a%20b/c"), "/a%2520b/c");
        assert_eq!(canonical_path("/a/./b/../c//d/"), "/a/c/d/");
        assert_eq!(canonical_path("/.."), "/");
        assert_eq!(canonical_path("/~user/x:y"), "/~user/x%3Ay");
    }

    #[test]
    fn query_is_decoded_reencoded_and_sorted() {
        assert_eq!(canonical_query(""), "");
        assert_eq!(canonical_query("b=2&a=1&a=0"), "a=0&a=1&b=2");
        assert_eq!(canonical_query("x=a%20b"), "x=a%20b");
        assert_eq!(canonical_query("x=a+b"), "x=a%2Bb");
        assert_eq!(canonical_query("k&j="), "j=&k=");
        assert_eq!(canonical_query("x=%7e%2f"), "x=~%2F");
        assert_eq!(canonical_query("bad=%zz%"), "bad=%25zz%25");
    }

    #[test]
    fn authorization_header_parts_are_required() {
        let err = Authorization::parse(
            "AWS4-HMAC-SHA256 Credential=AK/20240101/us-west-2/vpc-lattice-svcs/aws4_request",
        )
        .unwrap_err();
        assert_eq!(err.exception(), "IncompleteSignatureException");
        assert!(err.to_string().contains("'Signature'"), "{err}");
        assert!(err.to_string().contains("'SignedHeaders'"), "{err}");
        let err = Authorization::parse("AWS4-ECDSA-P256-SHA256 Credential=x").unwrap_err();
        assert!(err.to_string().contains("AWS4-ECDSA-P256-SHA256"), "{err}");
        let ok = Authorization::parse(
            "AWS4-HMAC-SHA256 Credential=AK/20240101/us-west-2/vpc-lattice-svcs/aws4_request, SignedHeaders=host;x-amz-date, Signature=ABCD",
        )
        .unwrap();
        assert_eq!(ok.access_key_id, "AK");
        assert_eq!(ok.signed_headers, ["host", "x-amz-date"]);
        assert_eq!(ok.signature, "abcd");
    }
}
