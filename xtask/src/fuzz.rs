//! `cargo xtask fuzz [TARGET] [--seconds N]`: the fuzz targets of `fuzz/` (cargo fuzz,
//! libFuzzer), each run for N seconds, with the executions and any crash input reported.
//!
//! cargo-fuzz is built once per machine into `$LATTICE_EGRESS_CACHE/cargo-fuzz` (like
//! bpf-linker); the targets build with the nightly toolchain into `fuzz/target`. Inputs
//! that found new coverage go to `fuzz/corpus/<target>` (not committed), crashes to
//! `fuzz/artifacts/<target>`; `fuzz/regressions/<target>` (committed: the inputs of past
//! findings) is replayed at the start of every run.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::setup::{self, step};

/// The cargo-fuzz release we install (`cargo install --locked` resolves it with stable).
const CARGO_FUZZ_VERSION: &str = "0.13.1";

/// Options of `cargo xtask fuzz`.
#[derive(Debug, clap::Args)]
pub struct Fuzz {
    /// The target to run (default: every target, one after the other).
    pub target: Option<String>,
    /// How long each target runs.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
}

/// What one target's run showed.
struct Outcome {
    target: String,
    executions: Option<u64>,
    crash: Option<String>,
}

pub fn run(opts: &Fuzz) -> Result<()> {
    let fuzz_dir = setup::workspace_root().join("fuzz");
    let targets = targets(&fuzz_dir)?;
    let chosen: Vec<String> = match &opts.target {
        Some(t) if targets.contains(t) => vec![t.clone()],
        Some(t) => bail!(
            "no fuzz target {t:?}; the targets are {}",
            targets.join(", ")
        ),
        None => targets,
    };
    setup::output(Command::new("rustc").args(["+nightly", "--version"])).context(
        "the nightly toolchain is missing: cargo fuzz needs it; \
         install it with `rustup toolchain install nightly`",
    )?;
    let bin = cargo_fuzz()?;
    let path = prepend_path(&bin);

    // No sanitizer: the code under test is safe Rust (the panics and assertions are what
    // is looked for), and without ASan a 2-core machine runs several times more inputs.
    // Debug assertions are on, so arithmetic overflows panic too.
    let flags = ["--sanitizer", "none", "--debug-assertions"];
    step(&format!(
        "building the fuzz targets ({}) with nightly and coverage instrumentation into \
         fuzz/target (the first build compiles the proxy, the agent and the emulator: \
         several minutes on 2 cores)",
        chosen.join(", ")
    ));
    setup::run(
        Command::new("cargo")
            .args(["+nightly", "fuzz", "build"])
            .args(flags)
            .current_dir(&fuzz_dir)
            .env("PATH", &path),
    )?;

    let mut outcomes = Vec::new();
    for target in &chosen {
        step(&format!(
            "fuzzing {target} for {} s (corpus fuzz/corpus/{target}, crashes in \
             fuzz/artifacts/{target})",
            opts.seconds
        ));
        outcomes.push(run_target(&fuzz_dir, target, opts.seconds, flags, &path)?);
    }

    eprintln!();
    eprintln!("{:<20} {:>14}  result", "target", "executions");
    let mut failed = false;
    for o in &outcomes {
        let execs = o.executions.map_or("?".into(), |n| n.to_string());
        let result = match &o.crash {
            Some(path) => {
                failed = true;
                format!(
                    "CRASH: {path} (replay: cd fuzz && cargo +nightly fuzz run -s none -a {} {path})",
                    o.target
                )
            }
            None => "no finding".into(),
        };
        eprintln!("{:<20} {execs:>14}  {result}", o.target);
    }
    if failed {
        bail!("a fuzz target found a crash; make its input a unit test and keep it under fuzz/regressions/<target>/");
    }
    Ok(())
}

/// The targets: the files of `fuzz/fuzz_targets`.
fn targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let dir = fuzz_dir.join("fuzz_targets");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let p = e.path();
            (p.extension()? == "rs").then(|| p.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    names.sort();
    Ok(names)
}

/// cargo-fuzz, built once per machine; returns the directory holding it.
fn cargo_fuzz() -> Result<PathBuf> {
    let root = setup::cache_dir().join("cargo-fuzz");
    let bin = root.join("bin");
    let stamp = root.join("version");
    let want = format!("cargo-fuzz {CARGO_FUZZ_VERSION}\n");
    if bin.join("cargo-fuzz").is_file()
        && std::fs::read_to_string(&stamp).unwrap_or_default() == want
    {
        return Ok(bin);
    }
    step(&format!(
        "building cargo-fuzz {CARGO_FUZZ_VERSION} into {} (once per machine, about a minute)",
        root.display()
    ));
    setup::run(
        Command::new("cargo")
            .args(["install", "--locked", "--force", "cargo-fuzz", "--version"])
            .arg(CARGO_FUZZ_VERSION)
            .arg("--root")
            .arg(&root),
    )
    .with_context(|| {
        format!(
            "installing cargo-fuzz failed; retry by hand with `cargo install --locked \
             cargo-fuzz --version {CARGO_FUZZ_VERSION} --root {}`",
            root.display()
        )
    })?;
    std::fs::write(&stamp, want)?;
    Ok(bin)
}

fn prepend_path(dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![dir.to_path_buf()];
    if let Some(old) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&old));
    }
    std::env::join_paths(paths).expect("PATH entries without separators")
}

/// Runs one target for `seconds`, echoing libFuzzer's output, and reads its final stats.
fn run_target(
    fuzz_dir: &Path,
    target: &str,
    seconds: u64,
    flags: [&str; 3],
    path: &std::ffi::OsStr,
) -> Result<Outcome> {
    let corpus = fuzz_dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus)?;
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "fuzz", "run"])
        .args(flags)
        .arg(target)
        .arg(&corpus);
    // Committed inputs are read, never written: libFuzzer adds to the first directory only.
    for extra in ["seeds", "regressions"] {
        let dir = fuzz_dir.join(extra).join(target);
        if dir.is_dir() {
            cmd.arg(dir);
        }
    }
    cmd.arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // An input that takes more than 10 s is a finding (a hang), not a slow unit.
        .arg("-timeout=10")
        .arg("-print_final_stats=1")
        .current_dir(fuzz_dir)
        .env("PATH", path)
        .stderr(Stdio::piped());
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start {shown}"))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut outcome = Outcome {
        target: target.to_owned(),
        executions: None,
        crash: None,
    };
    let mut echo = std::io::stderr().lock();
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        let _ = writeln!(echo, "{line}");
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            outcome.executions = n.trim().parse().ok();
        } else if let Some(rest) = line.split("Test unit written to ").nth(1) {
            outcome.crash = Some(rest.trim().to_owned());
        } else if outcome.executions.is_none() && line.contains(" DONE ") {
            // `#123456 DONE cov: …`, in case the stats line is missing.
            outcome.executions = line
                .trim_start_matches('#')
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok());
        }
    }
    let status = child.wait()?;
    if !status.success() && outcome.crash.is_none() {
        bail!("{shown} failed with {status}");
    }
    Ok(outcome)
}
