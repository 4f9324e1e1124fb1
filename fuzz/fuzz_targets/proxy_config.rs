//! lattice-proxy's configuration (`proxy/src/config.rs`): arbitrary flag values through
//! clap and `Config::from_args`, and `parse_duration` on arbitrary text. No panic, and every
//! `ConfigError` reads as one line naming its flag (the process prints it and exits 64).
#![no_main]

use arbitrary::Arbitrary;
use clap::Parser;
use lattice_proxy::config::{parse_duration, Args, Config};
use libfuzzer_sys::fuzz_target;

const FLAGS: &[&str] = &[
    "--listen",
    "--admin",
    "--name",
    "--region",
    "--unsigned-payload",
    "--signed-payload-max-bytes",
    "--sigv4a",
    "--region-set",
    "--sign-header",
    "--strip",
    "--allowed-domain",
    "--no-default-domain",
    "--ca-file",
    "--private-ca-arn",
    "--acm-pca-endpoint",
    "--system-roots",
    "--upstream-port",
    "--connect-timeout",
    "--tls-timeout",
    "--response-timeout",
    "--pool-idle-timeout",
    "--pool-max-idle-per-host",
    "--drain-timeout",
    "--max-header-bytes",
    "--header-read-timeout",
    "--resolve",
    "--log-format",
    "--workers",
    "--log-signing-process",
    "--redirect-check",
];

/// Flags that take no value (`--flag` alone) or an optional one (`--flag=value`).
const SWITCHES: &[&str] = &[
    "--sigv4a",
    "--no-default-domain",
    "--log-signing-process",
    "--unsigned-payload",
    "--system-roots",
];

#[derive(Arbitrary, Debug)]
struct Input {
    args: Vec<(u8, String)>,
    duration: String,
}

fuzz_target!(|input: Input| {
    if let Err(e) = parse_duration(&input.duration) {
        assert!(!e.contains('\n'), "{e}");
    }
    let mut argv = vec!["lattice-proxy".to_owned()];
    for (flag, value) in &input.args {
        let flag = FLAGS[usize::from(*flag) % FLAGS.len()];
        if SWITCHES.contains(&flag) && value.is_empty() {
            argv.push(flag.to_owned());
        } else {
            argv.push(format!("{flag}={value}"));
        }
    }
    let Ok(args) = Args::try_parse_from(&argv) else {
        return; // clap's own usage errors
    };
    if let Err(e) = Config::from_args(&args) {
        let text = e.to_string();
        assert!(!text.contains(['\n', '\r']), "{argv:?}: {text}");
        assert!(text.starts_with("--"), "names no flag: {text}");
    }
});
