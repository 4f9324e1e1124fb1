//! `cargo xtask bench proxy`: lattice-proxy against nginx and a direct TLS baseline.
//!
//! One run, interleaved rounds, same machine: wrk sends keep-alive 1 KiB GETs
//! - straight to the TLS upstream (nginx serving a fixed 1 KiB body): the limit;
//! - through nginx (Debian's nginx-light, 2 workers) as a TLS-originating reverse proxy with
//!   upstream keepalive and certificate verification: the unsigned anchor;
//! - through lattice-proxy (release build), which signs every request with SigV4.
//!
//! It also measures lattice-proxy's start-up (spawn → first accepted connection and →
//! ready), its RSS idle and with 1 000 open keep-alive connections, and prints a table.
//! Everything listens on 127.0.0.1 and is torn down at the end, also on error.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::setup::{apt_install, output, run as run_cmd, step, workspace_root};

/// Options of `cargo xtask bench proxy`.
#[derive(Debug, Args)]
pub struct BenchProxy {
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 5)]
    pub duration: u64,
    /// Concurrent keep-alive connections per wrk run.
    #[arg(long, default_value_t = 16)]
    pub connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    /// Rounds; each runs direct, then nginx and lattice-proxy back to back in alternating
    /// order (medians reported). Many short rounds pair the two proxies more closely in time
    /// than a few long ones.
    #[arg(long, default_value_t = 6)]
    pub rounds: u32,
    /// Open connections for the memory-under-connections figure.
    #[arg(long, default_value_t = 1000)]
    pub open_connections: usize,
    /// Extra lattice-proxy flag (repeatable), e.g. --proxy-arg=--workers=1.
    #[arg(long = "proxy-arg", allow_hyphen_values = true)]
    pub proxy_args: Vec<String>,
    /// Let the upstream offer HTTP/2 by ALPN, as VPC Lattice does (lattice-proxy then
    /// multiplexes; nginx still proxies over HTTP/1.1, it cannot use h2 upstream).
    #[arg(long)]
    pub upstream_h2: bool,
    /// Benchmark this lattice-proxy binary instead of building the release one.
    #[arg(long)]
    pub proxy_bin: Option<PathBuf>,
    /// Also write the Markdown table to this file.
    #[arg(long)]
    pub write: Option<PathBuf>,
    /// Instead of the wrk rounds, count the instructions each proxy executes per request
    /// under valgrind's callgrind (one worker each, the same wrk load): a figure that other
    /// load on the machine cannot disturb.
    #[arg(long)]
    pub instructions: bool,
}

pub(crate) const HOST: &str = "svc.example.com";
pub(crate) const BODY_BYTES: usize = 1024;

/// Kills a child process on drop (benchmark servers must never outlive the run).
pub(crate) struct Guard(pub(crate) Child, pub(crate) &'static str);
impl Drop for Guard {
    fn drop(&mut self) {
        // SIGTERM first so nginx removes its pid file and lattice-proxy drains; then reap.
        // SAFETY: kill(2) on the pid of a child we have not reaped yet (so not reused).
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        eprintln!("    ({} did not stop on SIGTERM; killed)", self.1);
    }
}

/// Removes the scratch directory on drop.
pub(crate) struct Scratch(pub(crate) PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WrkResult {
    pub(crate) rps: f64,
    p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) errors: u64,
    pub(crate) requests: u64,
    /// CPU time (user + system) the proxying processes spent per request, in µs: less
    /// sensitive than requests/s to other load on a shared machine.
    cpu_us: f64,
    /// The part of `cpu_us` spent in the kernel (system time).
    sys_us: f64,
}

/// The lattice-proxy binary to benchmark: `given`, or the release build made here.
pub(crate) fn proxy_binary(given: Option<&PathBuf>) -> Result<PathBuf> {
    if let Some(bin) = given {
        return Ok(bin.clone());
    }
    let root = workspace_root();
    step("building lattice-proxy (release)");
    run_cmd(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&root)
            .args([
                "build",
                "--release",
                "-p",
                "lattice-proxy",
                "--bin",
                "lattice-proxy",
            ]),
    )?;
    Ok(std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("release/lattice-proxy"))
}

pub fn run(opts: &BenchProxy) -> Result<()> {
    apt_install(&["wrk", "nginx-light", "openssl"])?;
    raise_nofile();

    let proxy_bin = proxy_binary(opts.proxy_bin.as_ref())?;

    let dir = std::env::temp_dir().join(format!("lattice-bench-proxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let scratch = Scratch(dir.clone());

    step("generating a test CA and a certificate for svc.example.com");
    make_certs(&scratch.0)?;

    let up_port = free_port()?;
    let nginx_port = free_port()?;
    let proxy_port = free_port()?;
    let admin_port = free_port()?;
    if opts.instructions {
        return instructions(
            opts,
            &dir,
            &proxy_bin,
            [up_port, nginx_port, proxy_port, admin_port],
        );
    }

    step("starting the TLS upstream (nginx) and the nginx reverse proxy");
    let upstream = start_nginx(
        &dir,
        "upstream",
        &upstream_conf(&dir, up_port, opts.upstream_h2),
    )?;
    wait_port(up_port)?;
    let anchor = start_nginx(&dir, "anchor", &anchor_conf(&dir, nginx_port, up_port))?;
    wait_port(nginx_port)?;

    step("starting lattice-proxy");
    let started = Instant::now();
    let proxy = Guard(
        proxy_command(&proxy_bin, &dir, [up_port, proxy_port, admin_port])
            .args(&opts.proxy_args)
            .spawn()
            .with_context(|| format!("starting {}", proxy_bin.display()))?,
        "lattice-proxy",
    );
    let accepting = wait_port(proxy_port)?;
    let accept_ms = started.elapsed().min(accepting).as_secs_f64() * 1e3;
    let ready_ms = wait_ready(admin_port, started)?.as_secs_f64() * 1e3;
    let rss_idle = rss_kib(proxy.0.id())?;

    // Sanity: all three paths answer 200 with the 1 KiB body before measuring.
    check_200(proxy_port)?;
    check_200(nginx_port)?;

    let mut direct = Vec::new();
    let mut nginx = Vec::new();
    let mut ours = Vec::new();
    for round in 1..=opts.rounds {
        step(&format!("round {round}/{}", opts.rounds));
        direct.push(wrk(
            opts,
            &format!("https://127.0.0.1:{up_port}/"),
            upstream.0.id(),
        )?);
        // nginx and lattice-proxy run back to back, in alternating order, so that a
        // machine getting busier or quieter during a round does not favour either.
        let run_nginx = || {
            wrk(
                opts,
                &format!("http://127.0.0.1:{nginx_port}/"),
                anchor.0.id(),
            )
        };
        let run_ours = || {
            wrk(
                opts,
                &format!("http://127.0.0.1:{proxy_port}/"),
                proxy.0.id(),
            )
        };
        if round % 2 == 1 {
            nginx.push(run_nginx()?);
            ours.push(run_ours()?);
        } else {
            ours.push(run_ours()?);
            nginx.push(run_nginx()?);
        }
    }
    let rss_after_load = rss_kib(proxy.0.id())?;

    step(&format!(
        "opening {} keep-alive connections to lattice-proxy",
        opts.open_connections
    ));
    let conns = open_connections(proxy_port, opts.open_connections)?;
    let rss_conns = rss_kib(proxy.0.id())?;
    drop(conns);

    drop(proxy);
    drop(anchor);
    drop(upstream);

    let (d, n, p) = (median(&direct), median(&nginx), median(&ours));
    // The ratios are taken round by round, from runs a few seconds apart, and their median
    // reported: drift of the machine between rounds then cancels out.
    let rps_ratio = median_of(ours.iter().zip(&nginx).map(|(o, n)| o.rps / n.rps));
    let p99_ratio = median_of(ours.iter().zip(&nginx).map(|(o, n)| o.p99_ms / n.p99_ms));
    let direct_rps_ratio = median_of(direct.iter().zip(&nginx).map(|(d, n)| d.rps / n.rps));
    let direct_p99_ratio = median_of(direct.iter().zip(&nginx).map(|(d, n)| d.p99_ms / n.p99_ms));
    let errors: u64 = ours
        .iter()
        .chain(&nginx)
        .chain(&direct)
        .map(|r| r.errors)
        .sum();
    let table = format!(
        "keep-alive {BODY_BYTES} B GETs, wrk -t{} -c{} -d{}s, {} interleaved rounds (medians; \
         ratios: median of the per-round ratios, nginx and lattice-proxy in alternating order), {} CPUs\n\n\
         | path | requests/s | p50 | p99 | req/s vs nginx | p99 vs nginx | server CPU per request |\n\
         |---|---:|---:|---:|---:|---:|---:|\n\
         | direct TLS to upstream (limit) | {:.0} | {:.2} ms | {:.2} ms | {:.2} | {:.2} | {:.1} µs (upstream) |\n\
         | nginx reverse proxy, TLS, unsigned (anchor) | {:.0} | {:.2} ms | {:.2} ms | 1.00 | 1.00 | {:.1} µs |\n\
         | lattice-proxy, SigV4 + TLS | {:.0} | {:.2} ms | {:.2} ms | {:.2} | {:.2} | {:.1} µs |\n\n\
         | lattice-proxy | measured | target |\n|---|---:|---:|\n\
         | spawn → accepting | {:.1} ms | ≤ 50 ms |\n\
         | spawn → ready (credentials loaded) | {:.1} ms | |\n\
         | RSS idle after start | {:.1} MiB | ≤ 10 MiB |\n\
         | RSS after the load runs | {:.1} MiB | |\n\
         | RSS with {} open connections | {:.1} MiB | ≤ 40 MiB |\n\
         | requests/s vs nginx | {:.2} × | ≥ 1.0 × |\n\
         | p99 vs nginx | {:.2} × | ≤ 1.0 × |\n\
         \nwrk socket errors/timeouts/non-2xx over all runs: {errors}\n",
        opts.threads,
        opts.connections,
        opts.duration,
        opts.rounds,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        d.rps,
        d.p50_ms,
        d.p99_ms,
        direct_rps_ratio,
        direct_p99_ratio,
        d.cpu_us,
        n.rps,
        n.p50_ms,
        n.p99_ms,
        n.cpu_us,
        p.rps,
        p.p50_ms,
        p.p99_ms,
        rps_ratio,
        p99_ratio,
        p.cpu_us,
        accept_ms,
        ready_ms,
        rss_idle as f64 / 1024.0,
        rss_after_load as f64 / 1024.0,
        opts.open_connections,
        rss_conns as f64 / 1024.0,
        rps_ratio,
        p99_ratio,
    );
    println!("\n{table}");
    let per_round: String = (0..direct.len())
        .map(|i| {
            format!(
                "round {}: direct {:.0}/s p99 {:.2} ms · nginx {:.0}/s p99 {:.2} ms {:.1} µs CPU/req ({:.1} sys) · lattice-proxy {:.0}/s p99 {:.2} ms {:.1} µs CPU/req ({:.1} sys) · ratios {:.3} × req/s, {:.2} × p99\n",
                i + 1,
                direct[i].rps,
                direct[i].p99_ms,
                nginx[i].rps,
                nginx[i].p99_ms,
                nginx[i].cpu_us,
                nginx[i].sys_us,
                ours[i].rps,
                ours[i].p99_ms,
                ours[i].cpu_us,
                ours[i].sys_us,
                ours[i].rps / nginx[i].rps,
                ours[i].p99_ms / nginx[i].p99_ms,
            )
        })
        .collect();
    println!("{per_round}");
    if let Some(path) = &opts.write {
        std::fs::write(path, format!("{table}\n{per_round}"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if errors > 0 {
        bail!("wrk reported {errors} errors; the figures above are not trustworthy");
    }
    Ok(())
}

/// 1 000 connections need more descriptors than the usual soft limit of 1 024; children
/// (lattice-proxy, nginx) inherit the raised limit.
pub(crate) fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct they are given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max.min(65536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

pub(crate) fn free_port() -> Result<u16> {
    // Bind port 0 and release it: nginx needs the number in its configuration.
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn wait_port(port: u16) -> Result<Duration> {
    let start = Instant::now();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(s) = TcpStream::connect(addr) {
            // The ports come from the ephemeral range: with nothing listening yet, the kernel
            // can pick the destination as the source port and connect the socket to itself.
            if s.local_addr().ok() != Some(addr) {
                return Ok(start.elapsed());
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    bail!("nothing listens on 127.0.0.1:{port} after 20 s")
}

pub(crate) fn wait_ready(admin_port: u16, since: Instant) -> Result<Duration> {
    while since.elapsed() < Duration::from_secs(20) {
        if let Ok(resp) = http_get(admin_port, "/readyz", "localhost") {
            if resp.starts_with("HTTP/1.1 200") {
                return Ok(since.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    bail!("lattice-proxy did not become ready within 20 s")
}

pub(crate) fn http_get(port: u16, path: &str, host: &str) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

pub(crate) fn check_200(port: u16) -> Result<()> {
    let resp = http_get(port, "/", HOST)?;
    if !resp.starts_with("HTTP/1.1 200") || !resp.ends_with(&"x".repeat(BODY_BYTES)) {
        bail!("127.0.0.1:{port} did not answer 200 with the 1 KiB body:\n{resp}");
    }
    Ok(())
}

pub(crate) fn make_certs(dir: &Path) -> Result<()> {
    let d = |f: &str| dir.join(f).to_str().unwrap().to_string();
    output(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=lattice-bench private CA",
        "-keyout",
        &d("ca.key"),
        "-out",
        &d("ca.pem"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]))?;
    output(Command::new("openssl").args([
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        &format!("/CN={HOST}"),
        "-keyout",
        &d("server.key"),
        "-out",
        &d("server.csr"),
    ]))?;
    std::fs::write(
        dir.join("ext.cnf"),
        format!(
            "subjectAltName=DNS:{HOST}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        ),
    )?;
    output(Command::new("openssl").args([
        "x509",
        "-req",
        "-in",
        &d("server.csr"),
        "-CA",
        &d("ca.pem"),
        "-CAkey",
        &d("ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &d("ext.cnf"),
        "-out",
        &d("server.pem"),
    ]))?;
    Ok(())
}

pub(crate) fn upstream_conf(dir: &Path, port: u16, h2: bool) -> String {
    let body = "x".repeat(BODY_BYTES);
    format!(
        "worker_processes 2;\ndaemon off;\npid {d}/upstream.pid;\nerror_log {d}/upstream.err warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/up-body;\n  proxy_temp_path {d}/up-proxy;\n\
           keepalive_requests 1000000;\n\
           server {{\n    listen 127.0.0.1:{port} ssl{h2};\n    ssl_certificate {d}/server.pem;\n    ssl_certificate_key {d}/server.key;\n\
               location / {{ default_type text/plain; return 200 \"{body}\"; }}\n  }}\n}}\n",
        d = dir.display(),
        h2 = if h2 { " http2" } else { "" },
    )
}

fn anchor_conf(dir: &Path, port: u16, up_port: u16) -> String {
    anchor_conf_with(dir, port, up_port, "worker_processes 2;")
}

/// The anchor with `processes` (the worker count, or a single process without master).
fn anchor_conf_with(dir: &Path, port: u16, up_port: u16, processes: &str) -> String {
    format!(
        "{processes}\ndaemon off;\npid {d}/anchor.pid;\nerror_log {d}/anchor.err warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/an-body;\n  proxy_temp_path {d}/an-proxy;\n\
           keepalive_requests 1000000;\n\
           upstream lattice {{ server 127.0.0.1:{up_port}; keepalive 64; }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{\n\
               proxy_pass https://lattice;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
               proxy_set_header Host {HOST};\n      proxy_ssl_server_name on;\n      proxy_ssl_name {HOST};\n\
               proxy_ssl_verify on;\n      proxy_ssl_trusted_certificate {d}/ca.pem;\n      proxy_ssl_session_reuse on;\n    }}\n  }}\n}}\n",
        d = dir.display()
    )
}

/// The proxy command line of the wrk rounds, with the environment the benchmark gives it.
pub(crate) fn proxy_command(program: &Path, dir: &Path, ports: [u16; 3]) -> Command {
    let [up_port, proxy_port, admin_port] = ports;
    let mut cmd = Command::new(program);
    cmd.args([
        "--listen",
        &format!("127.0.0.1:{proxy_port}"),
        "--admin",
        &format!("127.0.0.1:{admin_port}"),
        "--region",
        "eu-west-1",
        "--allowed-domain",
        "example.com",
        "--upstream-port",
        &up_port.to_string(),
        "--resolve",
        &format!("{HOST}:127.0.0.1"),
        "--ca-file",
        dir.join("ca.pem").to_str().unwrap(),
        "--system-roots=false",
    ])
    .env_clear()
    .env("AWS_ACCESS_KEY_ID", "AKIDBENCHMARK")
    .env("AWS_SECRET_ACCESS_KEY", "bench/secret/key")
    .env("AWS_SESSION_TOKEN", "bench-session-token")
    .env("AWS_EC2_METADATA_DISABLED", "true")
    // The production default: what operators run is what is measured.
    .env("RUST_LOG", "info")
    .stdout(Stdio::null());
    cmd
}

/// `--instructions`: nginx and lattice-proxy, one after the other, each a single process
/// under callgrind, warmed up, then counted over the same wrk load (`-t1 -c4`).
fn instructions(opts: &BenchProxy, dir: &Path, proxy_bin: &Path, ports: [u16; 4]) -> Result<()> {
    let [up_port, nginx_port, proxy_port, admin_port] = ports;
    apt_install(&["valgrind"])?;
    step("starting the TLS upstream (nginx)");
    let _upstream = start_nginx(dir, "upstream", &upstream_conf(dir, up_port, false))?;
    wait_port(up_port)?;

    let callgrind = |out: &Path| {
        let mut cmd = Command::new("valgrind");
        cmd.args([
            "--tool=callgrind",
            &format!("--callgrind-out-file={}", out.display()),
        ]);
        cmd
    };
    let mut counts = Vec::new();
    for name in ["nginx", "lattice-proxy"] {
        step(&format!(
            "{name} under callgrind: warming up, then {}s of wrk -t1 -c4",
            opts.duration
        ));
        let out = dir.join(format!("{name}.callgrind"));
        let (mut cmd, port) = if name == "nginx" {
            let conf = dir.join("anchor-single.conf");
            std::fs::write(
                &conf,
                anchor_conf_with(
                    dir,
                    nginx_port,
                    up_port,
                    "master_process off;\nworker_processes 1;",
                ),
            )?;
            let mut cmd = callgrind(&out);
            cmd.args([
                "nginx",
                "-p",
                dir.to_str().unwrap(),
                "-c",
                conf.to_str().unwrap(),
            ]);
            (cmd, nginx_port)
        } else {
            let mut cmd = callgrind(&out);
            let proxy = proxy_command(proxy_bin, dir, [up_port, proxy_port, admin_port]);
            cmd.arg(proxy.get_program())
                .args(proxy.get_args())
                .arg("--workers=1")
                .args(&opts.proxy_args)
                .env_clear()
                .envs(proxy.get_envs().filter_map(|(k, v)| Some((k, v?))));
            (cmd, proxy_port)
        };
        let server = Guard(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting valgrind")?,
            "callgrind",
        );
        // Slow under valgrind: wait for a whole answer, not just the port.
        let start = Instant::now();
        while check_200(port).is_err() {
            if start.elapsed() > Duration::from_secs(60) {
                bail!("{name} under callgrind did not answer within 60 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let load = |secs: u64| {
            output(Command::new("wrk").args([
                "-t1",
                "-c4",
                &format!("-d{secs}s"),
                "-H",
                &format!("Host: {HOST}"),
                &format!("http://127.0.0.1:{port}/"),
            ]))
        };
        load(2)?;
        let pid = server.0.id().to_string();
        output(Command::new("callgrind_control").args(["-z", &pid]))?;
        let r = parse_wrk(&load(opts.duration)?)?;
        output(Command::new("callgrind_control").args(["-d", &pid]))?;
        drop(server);
        // The dump after zeroing is part 1.
        let dump = std::fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with(&format!("{name}.callgrind")) && n.ends_with(".1")
                })
            })
            .with_context(|| format!("no callgrind dump of {name} in {}", dir.display()))?;
        let (total, sha) = callgrind_totals(&std::fs::read_to_string(&dump)?)?;
        if r.requests == 0 || r.errors > 0 {
            bail!(
                "wrk against {name} under callgrind: {} requests, {} errors",
                r.requests,
                r.errors
            );
        }
        counts.push((
            name,
            r.requests,
            total as f64 / r.requests as f64,
            sha as f64 / r.requests as f64,
        ));
    }
    let (n, p) = (counts[0], counts[1]);
    println!(
        "\ninstructions per request in user space (callgrind, one worker, wrk -t1 -c4 -d{}s)\n\n\
         | proxy | requests counted | instructions/request | of which SHA-256 blocks | without them | vs nginx |\n\
         |---|---:|---:|---:|---:|---:|\n\
         | nginx reverse proxy, TLS, unsigned | {} | {:.0} | {:.0} | {:.0} | 1.00 |\n\
         | lattice-proxy, SigV4 + TLS | {} | {:.0} | {:.0} | {:.0} | {:.2} ({:.2} without) |\n\n\
         valgrind hides SHA-NI, so SHA-256 runs its portable code here: natively the signature's\n\
         hashing costs a fraction of the 'SHA-256 blocks' column.",
        opts.duration, n.1, n.2, n.3, n.2 - n.3, p.1, p.2, p.3, p.2 - p.3, p.2 / n.2, (p.2 - p.3) / (n.2 - n.3),
    );
    Ok(())
}

/// Total instructions, and those in SHA-256's block function, from a callgrind dump:
/// exclusive costs are the cost lines outside `calls=` records.
fn callgrind_totals(dump: &str) -> Result<(u64, u64)> {
    let mut names = std::collections::HashMap::new();
    let mut in_sha = false;
    let mut after_call = false;
    let (mut total, mut sha) = (0u64, 0u64);
    for line in dump.lines() {
        if let Some(f) = line.strip_prefix("fn=") {
            // Compressed names: "(id) name" defines, "(id)" refers.
            let name = match f.split_once(") ") {
                Some((id, name)) => {
                    names.insert(id.to_string(), name.to_string());
                    name.to_string()
                }
                None => names
                    .get(f.trim_end_matches(')'))
                    .cloned()
                    .unwrap_or_default(),
            };
            in_sha = name.contains("sha256") && name.contains("compress");
        } else if let Some(f) = line.strip_prefix("cfn=") {
            if let Some((id, name)) = f.split_once(") ") {
                names.insert(id.to_string(), name.to_string());
            }
        } else if line.starts_with("calls=") {
            after_call = true;
        } else if line.starts_with(|c: char| c.is_ascii_digit() || c == '+' || c == '-' || c == '*')
        {
            let cost: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            if after_call {
                after_call = false;
            } else {
                total += cost;
                if in_sha {
                    sha += cost;
                }
            }
        }
    }
    if total == 0 {
        bail!("the callgrind dump has no costs");
    }
    Ok((total, sha))
}

pub(crate) fn start_nginx(dir: &Path, name: &'static str, conf: &str) -> Result<Guard> {
    let path = dir.join(format!("{name}.conf"));
    std::fs::write(&path, conf)?;
    let child = Command::new("nginx")
        .args(["-p", dir.to_str().unwrap(), "-c", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting nginx ({name})"))?;
    Ok(Guard(child, name))
}

fn wrk(opts: &BenchProxy, url: &str, server_pid: u32) -> Result<WrkResult> {
    wrk_run(
        opts.threads,
        opts.connections,
        opts.duration,
        url,
        server_pid,
    )
}

/// One wrk run of keep-alive GETs with Host svc.example.com, with the CPU time the
/// processes of `server_pid` spent per request.
pub(crate) fn wrk_run(
    threads: u32,
    connections: u32,
    seconds: u64,
    url: &str,
    server_pid: u32,
) -> Result<WrkResult> {
    let (user_before, sys_before) = cpu_ticks_tree(server_pid);
    let out = output(Command::new("wrk").args([
        &format!("-t{threads}"),
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
        "-H",
        &format!("Host: {HOST}"),
        url,
    ]))?;
    let (user, sys) = cpu_ticks_tree(server_pid);
    let (user, sys) = (
        user.saturating_sub(user_before),
        sys.saturating_sub(sys_before),
    );
    let mut r = parse_wrk(&out).with_context(|| format!("parsing wrk output:\n{out}"))?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let per_request = |ticks: u64| ticks as f64 / hz * 1e6 / r.requests.max(1) as f64;
    r.cpu_us = per_request(user + sys);
    r.sys_us = per_request(sys);
    Ok(r)
}

/// (utime, stime) of `pid` and its direct children (nginx's workers), in clock ticks.
fn cpu_ticks_tree(pid: u32) -> (u64, u64) {
    let stat = |p: &str| -> Option<(u32, (u64, u64))> {
        let s = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        // Fields after the parenthesised command name; ppid is the 2nd, utime the 12th.
        let rest = &s[s.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some((
            f[1].parse().ok()?,
            (f[11].parse().ok()?, f[12].parse().ok()?),
        ))
    };
    let (mut user, mut sys) = stat(&pid.to_string()).map_or((0, 0), |(_, t)| t);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.bytes().all(|b| b.is_ascii_digit()) {
                if let Some((ppid, t)) = stat(&name) {
                    if ppid == pid {
                        user += t.0;
                        sys += t.1;
                    }
                }
            }
        }
    }
    (user, sys)
}

fn parse_wrk(out: &str) -> Result<WrkResult> {
    let mut r = WrkResult::default();
    for line in out.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        match t.as_slice() {
            ["Requests/sec:", v] => r.rps = v.parse()?,
            [n, "requests", "in", ..] => r.requests = n.parse()?,
            ["50%", v] => r.p50_ms = ms(v)?,
            ["99%", v] => r.p99_ms = ms(v)?,
            ["Non-2xx", "or", "3xx", "responses:", v] => r.errors += v.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                for n in rest
                    .iter()
                    .filter_map(|s| s.trim_end_matches(',').parse::<u64>().ok())
                {
                    r.errors += n;
                }
            }
            _ => {}
        }
    }
    if r.rps == 0.0 {
        bail!("no Requests/sec line");
    }
    Ok(r)
}

fn ms(v: &str) -> Result<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        bail!("unknown latency unit in {v}")
    };
    Ok(num.parse::<f64>()? * scale)
}

/// The median of at least one value (the mean of the middle two for an even count).
fn median_of(values: impl Iterator<Item = f64>) -> f64 {
    let mut x: Vec<f64> = values.collect();
    x.sort_by(|a, b| a.total_cmp(b));
    let mid = x.len() / 2;
    if x.len().is_multiple_of(2) {
        (x[mid - 1] + x[mid]) / 2.0
    } else {
        x[mid]
    }
}

fn median(v: &[WrkResult]) -> WrkResult {
    let pick = |f: fn(&WrkResult) -> f64| median_of(v.iter().map(f));
    WrkResult {
        rps: pick(|r| r.rps),
        p50_ms: pick(|r| r.p50_ms),
        p99_ms: pick(|r| r.p99_ms),
        errors: v.iter().map(|r| r.errors).sum(),
        requests: v.iter().map(|r| r.requests).sum(),
        cpu_us: pick(|r| r.cpu_us),
        sys_us: pick(|r| r.sys_us),
    }
}

/// Opens `n` keep-alive connections and sends one request on each, so each is a live,
/// used HTTP connection (with its upstream side pooled) when memory is measured.
pub(crate) fn open_connections(port: u16, n: usize) -> Result<Vec<TcpStream>> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n")?;
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !(got.ends_with(&b"x".repeat(BODY_BYTES)[..])) {
            let k = s.read(&mut buf)?;
            if k == 0 {
                bail!("connection closed before the response finished");
            }
            got.extend_from_slice(&buf[..k]);
        }
        conns.push(s);
    }
    Ok(conns)
}

pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/PID/status")
}
