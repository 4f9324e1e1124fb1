//! The answers Lattice itself writes (as opposed to the target's): status codes and bodies.
//!
//! Bodies are plain text, `<Exception>: <message>`, as Lattice returns them to callers, e.g.
//! `AccessDeniedException: User: arn:aws:sts::111122223333:assumed-role/app/s is not
//! authorized to perform: vpc-lattice-svcs:Invoke on resource:
//! arn:aws:vpc-lattice:us-west-2:111122223333:service/svc-0123456789abcdef0/ because no
//! service-based policy allows the vpc-lattice-svcs:Invoke action`.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::{credentials::Identity, server::Body, sigv4::SigV4Error};

/// The action every request through Lattice is authorized as.
pub const INVOKE_ACTION: &str = "vpc-lattice-svcs:Invoke";

/// A response written by the emulator.
pub fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The body of an authorization failure: who, on what, and which policy layer refused.
pub fn access_denied_body(
    caller: Option<&Identity>,
    resource: &str,
    explicit_deny: bool,
) -> String {
    let user = caller.map_or_else(|| "anonymous".to_owned(), Identity::assumed_role_arn);
    let reason = if explicit_deny {
        "with an explicit deny in a service-based policy".to_owned()
    } else {
        format!("because no service-based policy allows the {INVOKE_ACTION} action")
    };
    format!(
        "AccessDeniedException: User: {user} is not authorized to perform: {INVOKE_ACTION} on resource: {resource} {reason}"
    )
}

/// 403 for a request the auth policy does not allow.
pub fn access_denied(
    caller: Option<&Identity>,
    resource: &str,
    explicit_deny: bool,
) -> Response<Body> {
    text(
        StatusCode::FORBIDDEN,
        access_denied_body(caller, resource, explicit_deny),
    )
}

/// 403 for a request whose signature is incomplete, invalid, expired or from an unknown key.
pub fn signature_error(error: &SigV4Error) -> Response<Body> {
    text(
        StatusCode::FORBIDDEN,
        format!("{}: {error}", error.exception()),
    )
}

/// 404 for a host that no service answers. Lattice resolves only its services' names to its
/// addresses, so a caller gets here only with a forged `Host`; the emulator answers 404
/// rather than dropping the connection so that tests see a clear verdict.
pub fn unknown_host(host: &str) -> Response<Body> {
    text(
        StatusCode::NOT_FOUND,
        format!("NotFoundException: no service in this service network answers host '{host}'"),
    )
}

/// 404 for a path that no listener rule matches (Lattice's default fixed response).
pub fn no_route() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "Not Found".to_owned())
}

/// 413 for a body too large to hash for the signature check.
pub fn payload_too_large(limit: usize) -> Response<Body> {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "PayloadTooLargeException: the body exceeds {limit} bytes; sign with \
             x-amz-content-sha256: UNSIGNED-PAYLOAD to stream larger bodies"
        ),
    )
}

/// 400 for a request that could not be read.
pub fn bad_request(reason: &str) -> Response<Body> {
    text(
        StatusCode::BAD_REQUEST,
        format!("BadRequestException: {reason}"),
    )
}

/// 502 when the target cannot be reached or fails mid-request.
pub fn target_unreachable(target: &str) -> Response<Body> {
    text(
        StatusCode::BAD_GATEWAY,
        format!("Bad Gateway: target {target} did not answer"),
    )
}

/// 504 when the target does not answer in time.
pub fn target_timeout(target: &str) -> Response<Body> {
    text(
        StatusCode::GATEWAY_TIMEOUT,
        format!("Gateway Timeout: target {target} did not answer in time"),
    )
}
