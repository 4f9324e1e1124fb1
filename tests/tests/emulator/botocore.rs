//! Runs `scripts/botocore_sign.py` (botocore's SigV4Auth) and turns its output into
//! requests the verifier can check.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use serde::Deserialize;
use serde_json::Value;

/// A request signed by botocore, as it would be sent.
#[derive(Debug, Clone, Deserialize)]
pub struct Signed {
    pub name: String,
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Signed {
    /// Method, origin-form URI and headers (with `Host` from the URL, as an HTTP client
    /// would send it).
    pub fn parts(&self) -> (Method, Uri, HeaderMap) {
        let full: Uri = self.url.parse().expect("botocore URL parses");
        let origin: Uri = full
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .parse()
            .expect("origin-form URI");
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::HOST,
            HeaderValue::from_str(full.authority().expect("absolute URL").as_str()).unwrap(),
        );
        for (name, value) in &self.headers {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        (self.method.parse().unwrap(), origin, headers)
    }

    /// The `Authorization` header botocore produced.
    pub fn authorization(&self) -> &str {
        &self
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
            .expect("signed request has Authorization")
            .1
    }
}

/// Signs `items` (see the script's docstring for the fields) with botocore.
pub fn sign(items: &Value) -> Vec<Signed> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/botocore_sign.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed (with botocore) to run the SigV4 agreement tests");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(items.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "botocore_sign.py failed (is botocore installed for python3?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("botocore_sign.py prints JSON")
}
