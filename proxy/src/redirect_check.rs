//! The redirect check: is this pod's traffic really sent to this proxy?
//!
//! An app container must not start before its connects are redirected, or its first calls
//! leave unsigned. lattice-redirector rewrites a connect to loopback on its check port
//! (default 15009) to the proxy for any caller in an enrolled cgroup, the proxy's own GID
//! included; nothing listens on that port, so from a pod that is not enrolled (yet) the
//! connect is refused. `/readyz` (the native sidecar's startupProbe) therefore connects
//! there and asks for this process's token: the answer comes back only through the
//! redirect, from this very proxy, and not from whatever else might listen on the port.
//! Once it has passed, the check is not repeated: enrollment lasts as long as the pod.

use http::{HeaderMap, HeaderValue};
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The service name the check asks for: under `.invalid` (RFC 2606), so it can never be a
/// real service, and never allowed, so an app cannot have it forwarded.
pub const HOST: &str = "redirect-check.lattice-proxy.invalid";
/// The header that carries the token both ways.
pub const HEADER: &str = "x-lattice-proxy-check";
/// How long one check may take before it counts as failed (the probe repeats it).
const TIMEOUT: Duration = Duration::from_secs(2);

/// This process's token: random per process, so only this proxy can echo it.
pub fn token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        // RandomState is seeded from the OS's randomness for every process.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        format!("{:016x}", h.finish())
    })
}

/// The proxy's side: the answer to a request for [`HOST`] that carries this process's
/// token, `None` for any other (it is refused like every host that is not allowed).
pub fn answer(headers: &HeaderMap) -> Option<HeaderValue> {
    let got = headers.get(HEADER)?;
    (got.as_bytes() == token().as_bytes()).then(|| got.clone())
}

/// The readiness side: connects to the check address until it once reaches this proxy.
#[derive(Debug)]
pub struct RedirectCheck {
    addr: SocketAddr,
    passed: AtomicBool,
}

impl RedirectCheck {
    /// A check against `addr` (loopback on the redirector's check port).
    pub fn new(addr: SocketAddr) -> RedirectCheck {
        RedirectCheck {
            addr,
            passed: AtomicBool::new(false),
        }
    }

    /// Ok once a connect to the check address has reached this proxy; why not otherwise.
    pub async fn run(&self) -> Result<(), String> {
        if self.passed.load(Ordering::Relaxed) {
            return Ok(());
        }
        match tokio::time::timeout(TIMEOUT, self.exchange()).await {
            Ok(Ok(())) => {
                if !self.passed.swap(true, Ordering::Relaxed) {
                    tracing::info!(addr = %self.addr, "redirect check passed: this pod's connects reach the proxy");
                }
                Ok(())
            }
            Ok(Err(why)) => Err(format!(
                "this pod's connects are not redirected to the proxy yet (a connect to {} \
                 did not reach it: {why}); is the pod enrolled by lattice-redirector \
                 (`lattice-redirector status` on its node)?",
                self.addr
            )),
            Err(_) => Err(format!(
                "the redirect check to {} got no answer within {TIMEOUT:?}",
                self.addr
            )),
        }
    }

    async fn exchange(&self) -> Result<(), String> {
        let mut stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {HOST}\r\n{HEADER}: {}\r\nConnection: close\r\n\r\n",
            token()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        // The answer is a header section only (204): read until the connection closes.
        let mut reply = Vec::new();
        (&mut stream)
            .take(8 * 1024)
            .read_to_end(&mut reply)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&reply);
        let head = text.split("\r\n\r\n").next().unwrap_or_default();
        let status_ok = head.starts_with("HTTP/1.1 204");
        let echoed = head.lines().any(|l| {
            l.split_once(':').is_some_and(|(name, value)| {
                name.trim().eq_ignore_ascii_case(HEADER) && value.trim() == token()
            })
        });
        if status_ok && echoed {
            Ok(())
        } else {
            let first = head.lines().next().unwrap_or("nothing");
            Err(format!("something else answered there ({first})"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_process_token_is_answered() {
        let mut headers = HeaderMap::new();
        assert_eq!(answer(&headers), None);
        headers.insert(HEADER, HeaderValue::from_static("0123456789abcdef"));
        assert_eq!(answer(&headers), None, "a guessed token");
        headers.insert(HEADER, HeaderValue::from_str(token()).unwrap());
        assert_eq!(answer(&headers).unwrap(), token());
        assert_eq!(token().len(), 16);
        assert_eq!(token(), token(), "one token per process");
    }
}
