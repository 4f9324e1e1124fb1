//! lattice-redirector's configuration (`redirector/src/config.rs`): an arbitrary TOML file
//! and arbitrary flag values through `File::parse` and `resolve`. No panic, and every error
//! reads as one line (the agent logs it and exits; a log line must not be split).
#![no_main]

use std::path::Path;

use arbitrary::Arbitrary;
use lattice_redirector::config::{resolve, File, Overrides, Prefix};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    file: Vec<u8>,
    prefixes: Option<Vec<String>>,
    ports: Option<Vec<String>>,
    redirect_gids: Option<Vec<String>>,
    exempt_gids: Option<Vec<String>>,
    proxy_v4: Option<String>,
    proxy_v6: Option<String>,
    proxy_port: Option<String>,
    proxy_gid: Option<String>,
    canary_port: Option<String>,
    log_redirects: Option<bool>,
    prefix: String,
}

fn one_line(what: &str, text: &str) {
    assert!(
        !text.contains(['\n', '\r']),
        "{what}: multi-line error:\n{text}"
    );
}

fuzz_target!(|input: Input| {
    if let Err(e) = input.prefix.parse::<Prefix>() {
        one_line("prefix", &e);
    } else if let Ok(p) = input.prefix.parse::<Prefix>() {
        // Display and parse round-trip.
        assert_eq!(p.to_string().parse::<Prefix>(), Ok(p));
    }
    let path = Path::new("/etc/lattice-redirector/config.toml");
    let file = match File::parse(path, &Ok(input.file.clone())) {
        Ok(f) => f,
        Err(e) => {
            one_line("file", &e.to_string());
            File::default()
        }
    };
    let over = Overrides {
        prefixes: input.prefixes,
        ports: input.ports,
        redirect_gids: input.redirect_gids,
        exempt_gids: input.exempt_gids,
        proxy_v4: input.proxy_v4,
        proxy_v6: input.proxy_v6,
        proxy_port: input.proxy_port,
        proxy_gid: input.proxy_gid,
        canary_port: input.canary_port,
        log_redirects: input.log_redirects,
        // Paths are checked against the file system; the file's are enough.
        cgroups: None,
    };
    // A root without cgroups: every cgroup path is refused, after being looked at.
    match resolve(&file, &over, Path::new("/nonexistent-cgroup-root")) {
        Ok(r) => {
            assert!(!r.prefixes.is_empty() && !r.ports.is_empty());
            assert!(r.ports.iter().all(|p| *p != 0));
            assert!(r.canary_port != Some(r.proxy_port));
        }
        Err(e) => one_line("resolve", &e.to_string()),
    }
});
