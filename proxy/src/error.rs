//! The one place where failures become responses.
//!
//! Every failure the proxy itself answers is a [`ProxyError`]: it names a status, a short
//! kind (sent in the `x-lattice-proxy-error` header and used as a metrics label) and a
//! one-line text body that says what failed and what to do. Lattice's own answers (403
//! AccessDeniedException and the rest) are not errors here: they pass through unchanged.
//!
//! What a person reads — a response body, the readiness text, a log line's `error` — is
//! one line made by [`chain`]; an error's Debug form (or aws-smithy's `DisplayErrorContext`,
//! which appends it) goes only to debug-level log events, as their `detail`.

use std::error::Error;

use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use http::{Response, StatusCode};
use prometheus_client::encoding::EncodeLabelValue;

use crate::allow::Refusal;
use crate::body::ProxyBody;
use crate::upstream::ConnectError;

/// Header naming the step that failed on responses the proxy made up itself.
pub const ERROR_HEADER: &str = "x-lattice-proxy-error";

/// Why the proxy answered a request itself instead of forwarding Lattice's response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The host is not on the allow-list (or is an IP literal).
    #[error("{0}")]
    HostRefused(Refusal),
    /// An expectation other than `100-continue` (RFC 9110 §10.1.1).
    #[error("Expect: {0:?} is not supported; lattice-proxy only understands Expect: 100-continue")]
    ExpectationFailed(String),
    /// A transfer coding other than `chunked` (RFC 9112 §6.1): the body would go upstream
    /// still coded, with nothing saying so.
    #[error("Transfer-Encoding {0:?} is not supported; send the body with chunked alone or with Content-Length")]
    TransferCodingUnsupported(String),
    /// `OPTIONS *`, which asks about the proxy itself rather than a service.
    #[error("OPTIONS * is not forwarded: VPC Lattice routes by path; send OPTIONS with a path, e.g. OPTIONS / HTTP/1.1")]
    ServerWideOptions,
    /// The request names no host at all.
    #[error("the request has no Host header or absolute URI; lattice-proxy needs the Lattice service name")]
    MissingHost,
    /// The request is malformed in a way hyper did not catch.
    #[error("malformed request: {0}")]
    BadRequest(String),
    /// `CONNECT` (an explicit proxy asked to tunnel TLS): the proxy must see the request to sign it.
    #[error("CONNECT is not supported: send plain http:// requests; lattice-proxy originates TLS and signs them itself")]
    ConnectUnsupported,
    /// A protocol upgrade such as WebSocket, which VPC Lattice does not support.
    #[error("protocol upgrades (WebSocket, {0}) are not supported by VPC Lattice")]
    UpgradeUnsupported(String),
    /// No valid AWS credentials: the request is never forwarded unsigned.
    #[error("no AWS credentials, request not forwarded: {0}")]
    NoCredentials(String),
    /// The signer refused the request.
    #[error("could not sign the request: {0}")]
    Signing(String),
    /// The body could not be read for payload signing.
    #[error("could not read the request body: {0}")]
    RequestBody(String),
    /// Opening the upstream connection failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The upstream did not answer the request headers within the response timeout.
    #[error("upstream {host} sent no response within {timeout:?}; raise --response-timeout if it is slow")]
    ResponseTimeout {
        /// Upstream host.
        host: String,
        /// The configured timeout.
        timeout: std::time::Duration,
    },
    /// The upstream connection failed after it was established.
    #[error("upstream {host} failed: {cause}")]
    Upstream {
        /// Upstream host.
        host: String,
        /// What hyper reported, with its sources.
        cause: String,
    },
}

/// `err` and its causes as one line a person reads: the texts of the [`Error::source`]
/// chain joined by ": ", leaving out a cause whose text is already said before it (many
/// wrappers print their source themselves), each text folded onto one line by
/// [`one_line`]. Never a Debug form.
pub fn chain(err: &dyn Error) -> String {
    let mut line = one_line(&err.to_string());
    // Bounded: a source chain is finite, but nothing makes it so.
    for cause in std::iter::successors(err.source(), |&e| e.source()).take(32) {
        let text = one_line(&cause.to_string());
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// `text` on one line: each line trimmed, empty ones dropped, and the rest joined by "; "
/// (or by a space after a line that ends in punctuation, as in "Attempted:" lists).
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for part in text
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        if !out.is_empty() {
            out.push_str(if out.ends_with([':', ';', ',', '.']) {
                " "
            } else {
                "; "
            });
        }
        out.push_str(part);
    }
    out
}

/// Bounded set of error kinds, used as the `x-lattice-proxy-error` value and metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ErrorKind {
    /// Host refused by the allow-list.
    host_not_allowed,
    /// Malformed request.
    bad_request,
    /// CONNECT, Upgrade, `OPTIONS *`, a transfer coding other than chunked.
    not_implemented,
    /// No credentials.
    no_credentials,
    /// Signing failed.
    signing,
    /// DNS lookup failed.
    dns,
    /// Connection refused.
    connect_refused,
    /// Other TCP connect failure.
    connect,
    /// TCP connect timed out.
    connect_timeout,
    /// TLS handshake or verification failed.
    tls,
    /// TLS handshake timed out.
    tls_timeout,
    /// No response headers in time.
    response_timeout,
    /// The upstream broke the connection or the protocol.
    upstream,
    /// An `Expect` other than `100-continue`.
    expectation_failed,
}

impl ErrorKind {
    /// Every kind, in declaration order (`kind as usize` indexes it).
    pub const ALL: [ErrorKind; 14] = [
        ErrorKind::host_not_allowed,
        ErrorKind::bad_request,
        ErrorKind::not_implemented,
        ErrorKind::no_credentials,
        ErrorKind::signing,
        ErrorKind::dns,
        ErrorKind::connect_refused,
        ErrorKind::connect,
        ErrorKind::connect_timeout,
        ErrorKind::tls,
        ErrorKind::tls_timeout,
        ErrorKind::response_timeout,
        ErrorKind::upstream,
        ErrorKind::expectation_failed,
    ];

    /// The kind as sent in the `x-lattice-proxy-error` header.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::host_not_allowed => "host-not-allowed",
            ErrorKind::bad_request => "bad-request",
            ErrorKind::not_implemented => "not-implemented",
            ErrorKind::no_credentials => "no-credentials",
            ErrorKind::signing => "signing",
            ErrorKind::dns => "dns",
            ErrorKind::connect_refused => "connect-refused",
            ErrorKind::connect => "connect",
            ErrorKind::connect_timeout => "connect-timeout",
            ErrorKind::tls => "tls",
            ErrorKind::tls_timeout => "tls-timeout",
            ErrorKind::response_timeout => "response-timeout",
            ErrorKind::upstream => "upstream",
            ErrorKind::expectation_failed => "expectation-failed",
        }
    }

    /// Whether the kind is a failure to reach or talk to the upstream (as opposed to a
    /// request the proxy refused on its own).
    pub fn is_upstream(self) -> bool {
        matches!(
            self,
            ErrorKind::dns
                | ErrorKind::connect_refused
                | ErrorKind::connect
                | ErrorKind::connect_timeout
                | ErrorKind::tls
                | ErrorKind::tls_timeout
                | ErrorKind::response_timeout
                | ErrorKind::upstream
        )
    }
}

impl ProxyError {
    /// The bounded kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            // A Host that is not a name is a malformed request (RFC 9112 §3.2: 400).
            ProxyError::HostRefused(Refusal::NotAName(_)) => ErrorKind::bad_request,
            ProxyError::HostRefused(_) => ErrorKind::host_not_allowed,
            ProxyError::MissingHost | ProxyError::BadRequest(_) | ProxyError::RequestBody(_) => {
                ErrorKind::bad_request
            }
            ProxyError::ConnectUnsupported
            | ProxyError::UpgradeUnsupported(_)
            | ProxyError::TransferCodingUnsupported(_)
            | ProxyError::ServerWideOptions => ErrorKind::not_implemented,
            ProxyError::ExpectationFailed(_) => ErrorKind::expectation_failed,
            ProxyError::NoCredentials(_) => ErrorKind::no_credentials,
            ProxyError::Signing(_) => ErrorKind::signing,
            ProxyError::Connect(c) => match c {
                ConnectError::Dns { .. } => ErrorKind::dns,
                ConnectError::Refused { .. } => ErrorKind::connect_refused,
                ConnectError::Connect { .. } => ErrorKind::connect,
                ConnectError::ConnectTimeout { .. } => ErrorKind::connect_timeout,
                ConnectError::Tls { .. } => ErrorKind::tls,
                ConnectError::TlsTimeout { .. } => ErrorKind::tls_timeout,
            },
            ProxyError::ResponseTimeout { .. } => ErrorKind::response_timeout,
            ProxyError::Upstream { .. } => ErrorKind::upstream,
        }
    }

    /// The status the application receives.
    pub fn status(&self) -> StatusCode {
        match self.kind() {
            ErrorKind::host_not_allowed => StatusCode::FORBIDDEN,
            ErrorKind::bad_request => StatusCode::BAD_REQUEST,
            ErrorKind::not_implemented => StatusCode::NOT_IMPLEMENTED,
            ErrorKind::expectation_failed => StatusCode::EXPECTATION_FAILED,
            ErrorKind::no_credentials => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::signing => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::connect_timeout | ErrorKind::tls_timeout | ErrorKind::response_timeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ErrorKind::dns
            | ErrorKind::connect_refused
            | ErrorKind::connect
            | ErrorKind::tls
            | ErrorKind::upstream => StatusCode::BAD_GATEWAY,
        }
    }

    /// The synthetic response: status, a one-line `text/plain` body, the error header, and
    /// `Connection: close` when the request body may be left unread on the connection.
    pub fn to_response(&self) -> Response<ProxyBody> {
        let kind = self.kind();
        // One line: causes from deep inside (TLS, io, the credential chain) may carry newlines.
        let body = format!("lattice-proxy: {}\n", chain(self));
        let mut resp = Response::new(ProxyBody::full(body));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(ERROR_HEADER, HeaderValue::from_static(kind.as_str()));
        if matches!(
            kind,
            ErrorKind::bad_request | ErrorKind::not_implemented | ErrorKind::expectation_failed
        ) {
            // The request (or upgrade) may have left bytes on the connection we will not read.
            h.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test error with an optional cause.
    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);

    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for E {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    fn nest(texts: &[&'static str]) -> E {
        let (first, rest) = texts.split_first().unwrap();
        E(first, (!rest.is_empty()).then(|| Box::new(nest(rest))))
    }

    #[test]
    fn a_chain_of_causes_is_joined() {
        assert_eq!(chain(&nest(&["a", "b", "c"])), "a: b: c");
        assert_eq!(chain(&nest(&["alone"])), "alone");
    }

    #[test]
    fn a_cause_already_said_is_left_out() {
        // A wrapper that prints its source (`#[error("{0}")]`, hyper's, io's), then the source.
        let e = nest(&[
            "connection error: broken pipe",
            "broken pipe",
            "os error 32",
        ]);
        assert_eq!(chain(&e), "connection error: broken pipe: os error 32");
        let e = nest(&[
            "client error (Connect)",
            "client error (Connect)",
            "dns failed",
        ]);
        assert_eq!(chain(&e), "client error (Connect): dns failed");
    }

    #[test]
    fn no_line_break_survives() {
        // The shape of aws-config's ProviderChainError, under a CredentialsError.
        let e = nest(&[
            "the credential provider was not enabled",
            "no credentials found in chain. Attempted:\n  Environment: not set\r\n  Profile: none\n",
            "deep\ncause",
        ]);
        let line = chain(&e);
        assert!(!line.contains(['\n', '\r']), "{line:?}");
        assert_eq!(
            line,
            "the credential provider was not enabled: no credentials found in chain. \
             Attempted: Environment: not set; Profile: none: deep; cause"
        );
        assert_eq!(one_line("\n\n"), "");
    }

    #[test]
    fn responses_carry_status_kind_and_one_line() {
        let e = ProxyError::NoCredentials("no providers in chain\nprovided credentials".into());
        let r = e.to_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[ERROR_HEADER], "no-credentials");
        assert_eq!(
            ProxyError::ResponseTimeout {
                host: "a".into(),
                timeout: std::time::Duration::from_secs(1)
            }
            .status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            ProxyError::ConnectUnsupported.to_response().headers()[CONNECTION],
            "close"
        );
    }
}
