//! End to end: the two-cluster demo of `cargo xtask demo` (see `lattice_tests::demo`) with the
//! real lattice-redirector and lattice-proxy, asserting the seed's four outcomes.
//!
//! Needs root (network namespaces, cgroups, eBPF): it fails, never skips, without it. The
//! redirector and proxy binaries are taken from the cargo output directory of this test
//! (target/debug, CARGO_TARGET_DIR aware); build them first with
//! `cargo build -p lattice-redirector -p lattice-proxy`. Names carry this process's id, so a
//! demo running at the same time is not disturbed; everything is removed at the end, pass or
//! fail.

use std::path::{Path, PathBuf};

use lattice_tests::demo::{Binaries, Expect, Mode, Scenario, Settings, CLUSTERS};

#[test]
fn two_clusters_allowed_and_denied_as_the_seed() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root (network namespaces, cgroups, eBPF): run it with sudo"
    );
    let emulator = PathBuf::from(env!("CARGO_BIN_EXE_lattice-emulator"));
    let bin_dir = emulator.parent().expect("binaries live in a directory");
    let bins = Binaries {
        redirector: required(bin_dir, "lattice-redirector"),
        proxy: required(bin_dir, "lattice-proxy"),
        emulator: emulator.clone(),
        app: PathBuf::from(env!("CARGO_BIN_EXE_demo-app")),
        kube_api: PathBuf::from(env!("CARGO_BIN_EXE_demo-kube-api")),
        injector: required(bin_dir, "lattice-injector"),
    };
    let prefix = format!("le-e2e-{}", std::process::id());
    // Under the temporary directory: the proxies (uid 1337) must reach it even when the
    // checkout is closed to other users.
    let state_dir = std::env::temp_dir().join(&prefix);
    let mut scenario = Scenario::up(Settings {
        prefix,
        state_dir: state_dir.clone(),
        bins,
        mode: Mode::Config,
    })
    .unwrap_or_else(|e| panic!("the scenario did not come up: {e:#}"));

    let checks = scenario
        .run_checks()
        .unwrap_or_else(|e| panic!("the checks could not run: {e:#}"));
    // The command the demo prints for each check, run by hand (through sh, as a reader
    // pastes it), answers what the check saw.
    for check in &checks {
        let out = std::process::Command::new("sh")
            .args(["-c", &check.command])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim_end(),
            check.output.lines().next().unwrap_or_default(),
            "the printed command `{}` answers otherwise than the check: {}",
            check.command,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(scenario);

    assert_eq!(checks.len(), 4);
    for check in &checks {
        assert!(
            check.ok,
            "{} -> {}: expected {}, got:\n{}\n(command: {}; logs in {})",
            check.from.name(),
            check.to.host(),
            check.expected_text(),
            check.output,
            check.command,
            state_dir.join("logs").display()
        );
    }
    // The seed's table: each cluster reaches the other's service only.
    for from in CLUSTERS {
        let allowed = checks
            .iter()
            .find(|c| c.from == from && c.expect == Expect::Allowed)
            .expect("one allowed call per cluster");
        assert_eq!(allowed.to, from.other());
        assert_eq!(
            allowed.output,
            format!(
                "Requsting to Pod({}): Hello from {}",
                from.other().pod_name(),
                from.other().version()
            )
        );
        let denied = checks
            .iter()
            .find(|c| c.from == from && c.expect == Expect::Denied)
            .expect("one denied call per cluster");
        assert_eq!(denied.to, from);
        assert!(
            denied.output.starts_with(&format!(
                "AccessDeniedException: User: arn:aws:sts::111122223333:assumed-role/eks-{}-pod-identity-role/",
                from.name()
            )),
            "{}",
            denied.output
        );
        assert!(
            denied.output.ends_with(
                "because no service-based policy allows the vpc-lattice-svcs:Invoke action"
            ),
            "{}",
            denied.output
        );
    }
    // Passed: the logs are not needed any more (on failure they stay for the message).
    let _ = std::fs::remove_dir_all(&state_dir);
}

fn required(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first with `cargo build -p lattice-redirector -p lattice-proxy` \
         (the redirector needs `cargo xtask build-ebpf` once before)",
        path.display()
    );
    path
}
