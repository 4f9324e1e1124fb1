//! `cargo xtask bench redirect`: the cost of getting a connect to the proxy, three ways,
//! measured in one run and interleaved round by round:
//! - direct: connect to 127.0.0.1:15001 (the floor);
//! - ebpf: connect to 169.254.171.5:80 from an enrolled cgroup, rewritten by cgroup/connect4;
//! - attached: connect to 127.0.0.1:15001 from that enrolled cgroup (every program runs and
//!   returns early): the fixed cost the programs add to connections they leave alone;
//! - iptables: the seed pattern's nat OUTPUT REDIRECT rule (with its gid-0 RETURN), in its
//!   own network namespace.
//!
//! Each sample is one sequential connect + accept + close (the client closes with RST, so
//! no TIME_WAIT exhausts ports). Every case runs in its own namespace, as GID 1000.

use crate::setup::{self, step};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Options of `cargo xtask bench redirect`.
#[derive(Debug, Args)]
pub struct BenchRedirect {
    /// Connects per case and round.
    #[arg(long, default_value_t = 20_000)]
    pub count: u32,
    /// Rounds (each runs every case once, interleaved).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
}

/// The measuring loop, run by the re-executed xtask inside a case's netns and cgroup.
#[derive(Debug, Args)]
pub struct Loop {
    /// Where to connect.
    #[arg(long)]
    pub connect: SocketAddr,
    /// Where the accepting side listens.
    #[arg(long)]
    pub listen: SocketAddr,
    #[arg(long)]
    pub count: u32,
}

const APP_GID: u32 = 1000;
const NAME: &str = "le-bench";

/// Runs the loop: prints `samples <ns> <ns> …`.
pub fn run_loop(opts: &Loop) -> Result<()> {
    let listener =
        TcpListener::bind(opts.listen).with_context(|| format!("bind {}", opts.listen))?;
    let mut samples = Vec::with_capacity(opts.count as usize);
    for _ in 0..opts.count {
        let t0 = Instant::now();
        let client = TcpStream::connect(opts.connect)
            .with_context(|| format!("connect {}", opts.connect))?;
        let (server, _) = listener.accept()?;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt with a valid linger struct on an open socket.
        unsafe {
            libc::setsockopt(
                client.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        drop(client);
        drop(server);
        samples.push(t0.elapsed().as_nanos() as u64);
    }
    let text: Vec<String> = samples.iter().map(|s| s.to_string()).collect();
    println!("samples {}", text.join(" "));
    Ok(())
}

fn sh(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn cgroup2() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .context("no cgroup2 mount")
}

/// Everything the benchmark creates; removed on drop.
struct Env {
    cg_root: PathBuf,
    cg_plain: PathBuf,
    pins: PathBuf,
    agent: Option<Child>,
    agent_bin: PathBuf,
}

const CASES: [&str; 4] = ["direct", "ebpf", "attached", "iptables"];

fn netns(case: &str) -> String {
    format!("{NAME}-{case}")
}

impl Env {
    fn cleanup(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        if self.pins.exists() {
            let _ = Command::new(&self.agent_bin)
                .arg("--pin-dir")
                .arg(&self.pins)
                .arg("uninstall")
                .output();
        }
        for case in CASES {
            let _ = Command::new("ip")
                .args(["netns", "del", &netns(case)])
                .output();
        }
        for dir in [
            self.cg_root.join("app"),
            self.cg_root.clone(),
            self.cg_plain.clone(),
        ] {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn conntrack_count(ns: &str) -> u64 {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "cat",
            "/proc/sys/net/netfilter/nf_conntrack_count",
        ])
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0)
}

fn run_case(env: &Env, case: &str, count: u32) -> Result<(Vec<u64>, u64)> {
    let ns = netns(case);
    let (cgroup, target) = match case {
        "ebpf" => (env.cg_root.join("app"), "169.254.171.5:80"),
        "attached" => (env.cg_root.join("app"), "127.0.0.1:15001"),
        "iptables" => (env.cg_plain.clone(), "169.254.171.5:80"),
        _ => (env.cg_plain.clone(), "127.0.0.1:15001"),
    };
    // Start each run from an empty table (entries of the previous round would otherwise be
    // reused for the same port tuples and hide what this run creates).
    let _ = Command::new("ip")
        .args(["netns", "exec", &ns, "conntrack", "-F"])
        .output();
    let before = conntrack_count(&ns);
    let netns_file = std::fs::File::open(Path::new("/run/netns").join(&ns))?;
    let netns_fd = netns_file.as_raw_fd();
    let procs = std::ffi::CString::new(cgroup.join("cgroup.procs").to_str().unwrap())?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args([
        "bench-loop",
        "--connect",
        target,
        "--listen",
        "127.0.0.1:15001",
        "--count",
    ])
    .arg(count.to_string())
    .stdout(Stdio::piped());
    // SAFETY: only async-signal-safe syscalls on memory prepared before fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 || libc::write(fd, b"0\n".as_ptr().cast(), 2) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0
                || libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(APP_GID, APP_GID, APP_GID) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().context("running the bench loop")?;
    drop(netns_file);
    if !out.status.success() {
        bail!(
            "{case}: the bench loop failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let samples = line
        .lines()
        .find_map(|l| l.strip_prefix("samples "))
        .context("the bench loop printed no samples")?
        .split_whitespace()
        .map(|s| s.parse::<u64>())
        .collect::<Result<Vec<_>, _>>()?;
    let after = conntrack_count(&ns);
    Ok((samples, after.saturating_sub(before)))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Builds the agent, creates the namespaces of `cases` and the cgroups (and the iptables
/// rules when the iptables case is among them), and starts the agent for the ebpf case.
fn prepare(what: &str, cases: &[&str]) -> Result<Env> {
    setup::require_root(what)?;
    setup::apt_install(&["iproute2", "iptables", "conntrack"])?;
    crate::ebpf::run(&crate::ebpf::BuildEbpf {})?;
    let root = setup::workspace_root();
    step("building lattice-redirector");
    setup::run(Command::new("cargo").current_dir(&root).args([
        "build",
        "-p",
        "lattice-redirector",
    ]))?;
    let agent_bin = root.join("target/debug/lattice-redirector");

    let cg2 = cgroup2()?;
    let mut env = Env {
        cg_root: cg2.join(NAME),
        cg_plain: cg2.join(format!("{NAME}-plain")),
        pins: PathBuf::from("/sys/fs/bpf").join(NAME),
        agent: None,
        agent_bin: agent_bin.clone(),
    };
    env.cleanup(); // leftovers of an interrupted run
    step("creating one network namespace per case, the cgroups and the iptables rules");
    std::fs::create_dir_all(env.cg_root.join("app"))?;
    std::fs::create_dir_all(&env.cg_plain)?;
    for case in cases {
        let ns = netns(case);
        sh(Command::new("ip").args(["netns", "add", &ns]))?;
        sh(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]))?;
    }
    // The seed's rule, verbatim, inside its own namespace; the route makes 169.254.171.0/24
    // routable there (the nat OUTPUT hook runs after routing).
    let ipt = netns("iptables");
    if cases.contains(&"iptables") {
        sh(Command::new("ip").args(["-n", &ipt, "route", "add", "169.254.171.0/24", "dev", "lo"]))?;
        for rule in [
            "-t nat -N EGRESS_PROXY",
            "-t nat -A OUTPUT -p tcp -d 169.254.171.0/24 -j EGRESS_PROXY",
            "-t nat -A EGRESS_PROXY -m owner --gid-owner 0 -j RETURN",
            "-t nat -A EGRESS_PROXY -p tcp -j REDIRECT --to-ports 15001",
        ] {
            sh(Command::new("ip")
                .args(["netns", "exec", &ipt, "iptables"])
                .args(rule.split_whitespace()))?;
        }
    }
    step("starting lattice-redirector for the ebpf case");
    let mut agent = Command::new(&agent_bin)
        .arg("--pin-dir")
        .arg(&env.pins)
        .args(["run", "--admin-addr", "127.0.0.1:0", "--attach-cgroup"])
        .arg(&env.cg_root)
        .arg("--cgroup")
        .arg(env.cg_root.join("app"))
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = agent.stderr.take().unwrap();
    env.agent = Some(agent);
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("redirecting") => break,
            Some(Ok(_)) => {}
            _ => bail!("lattice-redirector did not start"),
        }
        if Instant::now() > deadline {
            bail!("lattice-redirector did not start within 30 s");
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    Ok(env)
}

/// What a connect storm through the eBPF redirect left behind.
pub(crate) struct Storm {
    /// Connects made, each accepted by the proxy's stand-in through the redirect.
    pub(crate) connects: usize,
    /// Wall time of the storm.
    pub(crate) elapsed: Duration,
    /// p99 of connect+accept+close, µs.
    pub(crate) p99_us: f64,
    /// The agent's `redirected` counter after the storm.
    pub(crate) redirected: u64,
    /// "tracked connections: …" of `status` after the storm.
    pub(crate) tracked: String,
}

/// `count` sequential connects from the app's cgroup (gid 1000) to 169.254.171.5:80,
/// redirected by the eBPF programs to a listener that accepts each; a connect that is not
/// redirected fails the loop (the address has no route in the namespace).
pub(crate) fn storm(count: u32) -> Result<Storm> {
    let env = prepare("cargo xtask bench soak (the connect storm)", &["ebpf"])?;
    step(&format!(
        "connect storm: {count} connects through the eBPF redirect"
    ));
    let started = Instant::now();
    let (mut samples, _) = run_case(&env, "ebpf", count)?;
    let elapsed = started.elapsed();
    samples.sort_unstable();
    let out = Command::new(&env.agent_bin)
        .arg("--pin-dir")
        .arg(&env.pins)
        .arg("status")
        .output()
        .context("lattice-redirector status")?;
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    let tracked = status
        .lines()
        .find(|l| l.contains("tracked connections"))
        .unwrap_or("(no tracked connections line)")
        .trim()
        .to_owned();
    let redirected = status
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some("redirected")).then(|| f.next()?.parse().ok())?
        })
        .unwrap_or(0);
    Ok(Storm {
        connects: samples.len(),
        elapsed,
        p99_us: percentile(&samples, 0.99),
        redirected,
        tracked,
    })
}

pub fn run(opts: &BenchRedirect) -> Result<()> {
    let env = prepare("cargo xtask bench redirect", &CASES)?;

    step(&format!(
        "measuring: {} rounds x {} cases x {} connect+accept+close, interleaved",
        opts.rounds,
        CASES.len(),
        opts.count
    ));
    let mut all: Vec<Vec<u64>> = vec![Vec::new(); CASES.len()];
    let mut conntrack = [0u64; CASES.len()];
    let mut round_medians: Vec<Vec<f64>> = vec![Vec::new(); CASES.len()];
    for round in 0..opts.rounds {
        for (i, case) in CASES.iter().enumerate() {
            let (mut samples, ct) = run_case(&env, case, opts.count)?;
            samples.sort_unstable();
            let med = percentile(&samples, 0.5);
            eprintln!(
                "    round {} {case:<9} median {med:7.2} µs, conntrack +{ct}",
                round + 1
            );
            round_medians[i].push(med);
            conntrack[i] = conntrack[i].max(ct);
            all[i].extend(samples);
        }
    }
    for s in &mut all {
        s.sort_unstable();
    }
    let med: Vec<f64> = all.iter().map(|s| percentile(s, 0.5)).collect();
    println!();
    println!(
        "connect+accept+close, {} samples per case ({} rounds x {}), interleaved:",
        all[0].len(),
        opts.rounds,
        opts.count
    );
    println!(
        "{:<10} {:>11} {:>11} {:>11} {:>22}",
        "case", "median µs", "p90 µs", "p99 µs", "conntrack entries/run"
    );
    for (i, case) in CASES.iter().enumerate() {
        println!(
            "{:<10} {:>11.2} {:>11.2} {:>11.2} {:>22}",
            case,
            med[i],
            percentile(&all[i], 0.9),
            percentile(&all[i], 0.99),
            conntrack[i]
        );
    }
    println!();
    println!("ebpf/direct     = {:.3} (target <= 1.01)", med[1] / med[0]);
    println!(
        "attached/direct = {:.3} (programs attached, connect not redirected)",
        med[2] / med[0]
    );
    println!("iptables/direct = {:.3}", med[3] / med[0]);
    let rounds: Vec<String> = CASES
        .iter()
        .zip(&round_medians)
        .map(|(case, m)| format!("{case} {m:?}"))
        .collect();
    println!("per-round medians (µs): {}", rounds.join(", "));
    Ok(())
}
