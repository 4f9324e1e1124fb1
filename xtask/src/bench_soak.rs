//! `cargo xtask bench soak`: lattice-proxy held under load for long enough to see what a
//! short benchmark hides, and the eBPF redirect under a connect storm (docs/RELIABILITY.md,
//! "Load").
//!
//! - **connections**: N keep-alive connections (10 000 by default) opened to lattice-proxy
//!   (release build, a TLS nginx upstream as in `bench proxy`), each after one request; the
//!   RSS per connection, and the RSS and descriptors once they are closed again;
//! - **requests**: M signed requests (1 000 000), run as wrk chunks of about a tenth each;
//!   per chunk the requests, p99 and RSS; the RSS drift between the chunk that crosses the
//!   first 10 % and the end (target ≤ 5 %);
//! - **vanishing clients**: clients that send half a request head, or a head and part of a
//!   body, then reset: the proxy's client connections must come back to 0 and its
//!   descriptors to where they were (no leak);
//! - **storm** (root only): S connects (50 000) through the eBPF redirect: each lands on the
//!   proxy's port, and the tracking maps are empty afterwards.
//!
//! Everything listens on 127.0.0.1 or inside the namespace the storm creates, and is removed
//! at the end, also on error.

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::bench_proxy::{
    check_200, free_port, http_get, make_certs, open_connections, proxy_binary, proxy_command,
    raise_nofile, rss_kib, start_nginx, upstream_conf, wait_port, wait_ready, wrk_run, Guard,
    Scratch, HOST,
};
use crate::setup::{apt_install, step};

/// Options of `cargo xtask bench soak`.
#[derive(Debug, Args)]
pub struct BenchSoak {
    /// Keep-alive connections held open at once.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Signed requests sent through the proxy.
    #[arg(long, default_value_t = 1_000_000)]
    pub requests: u64,
    /// Clients that vanish mid-request (half of them mid-head, half mid-body).
    #[arg(long, default_value_t = 2_000)]
    pub vanishing: usize,
    /// Connects of the storm through the eBPF redirect (0: skip; it needs root).
    #[arg(long, default_value_t = 50_000)]
    pub storm: u32,
    /// Benchmark this lattice-proxy binary instead of building the release one.
    #[arg(long)]
    pub proxy_bin: Option<PathBuf>,
}

/// How long the proxy may take to notice what the clients did (only a leak waits this long).
const SETTLE: Duration = Duration::from_secs(60);

pub fn run(opts: &BenchSoak) -> Result<()> {
    apt_install(&["wrk", "nginx-light", "openssl"])?;
    raise_nofile();
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // Each side (this client, the proxy) holds one descriptor per connection, plus a margin.
    let need = opts.connections as u64 + 1_000;
    // SAFETY: getrlimit/setrlimit read and write the struct they are given. Raising the hard
    // limit works for root (up to fs.nr_open); the children inherit it.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        if lim.rlim_cur < need {
            let raised = libc::rlimit {
                rlim_cur: need,
                rlim_max: lim.rlim_max.max(need),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    if lim.rlim_cur < need {
        bail!(
            "{} connections need about {need} descriptors and the limit is {}: run with a \
             higher `ulimit -n`, or pass --connections",
            opts.connections,
            lim.rlim_cur
        );
    }
    let proxy_bin = proxy_binary(opts.proxy_bin.as_ref())?;
    let dir = std::env::temp_dir().join(format!("lattice-bench-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let scratch = Scratch(dir.clone());
    step("generating a test CA and a certificate for svc.example.com");
    make_certs(&scratch.0)?;
    let (up_port, proxy_port, admin_port) = (free_port()?, free_port()?, free_port()?);
    step("starting the TLS upstream (nginx) and lattice-proxy");
    let _upstream = start_nginx(&dir, "upstream", &upstream_conf(&dir, up_port, false))?;
    wait_port(up_port)?;
    let started = Instant::now();
    let proxy = Guard(
        proxy_command(&proxy_bin, &dir, [up_port, proxy_port, admin_port])
            .spawn()
            .with_context(|| format!("starting {}", proxy_bin.display()))?,
        "lattice-proxy",
    );
    wait_port(proxy_port)?;
    wait_ready(admin_port, started)?;
    check_200(proxy_port)?;
    let pid = proxy.0.id();
    let ports = Ports {
        proxy: proxy_port,
        admin: admin_port,
    };
    let mut report = Vec::new();

    // Connections.
    let rss_before = rss_kib(pid)?;
    let before = baseline(ports, pid)?;
    let fds_before = before.fds;
    step(&format!(
        "opening {} keep-alive connections, one request each",
        opts.connections
    ));
    let conns = open_connections(proxy_port, opts.connections)?;
    let rss_open = rss_kib(pid)?;
    let fds_open = fds(pid)?;
    drop(conns);
    let settled = settle(ports, pid, before)?;
    let per_conn = (rss_open.saturating_sub(rss_before)) as f64 / opts.connections as f64;
    report.push(format!(
        "| {} open keep-alive connections | RSS {:.1} → {:.1} MiB: **{per_conn:.2} KiB per \
         connection**; descriptors {fds_before} → {fds_open} | |",
        opts.connections,
        rss_before as f64 / 1024.0,
        rss_open as f64 / 1024.0,
    ));
    report.push(format!(
        "| … all closed by the clients | client connections back to 0, descriptors {} (were \
         {fds_before}) after {:.1} s; RSS {:.1} MiB | no leak |",
        settled.fds,
        settled.after.as_secs_f64(),
        rss_kib(pid)? as f64 / 1024.0
    ));

    // Requests.
    step(&format!(
        "{} signed requests in wrk chunks of about a tenth (16 connections)",
        opts.requests
    ));
    let url = format!("http://127.0.0.1:{proxy_port}/");
    let probe = wrk_run(2, 16, 2, &url, pid)?;
    let tenth = (opts.requests / 10).max(1);
    let chunk_secs = ((tenth as f64 / probe.rps).ceil() as u64).max(1);
    let mut total = probe.requests;
    let mut errors = probe.errors;
    let mut rss_tenth = None;
    let mut rows = Vec::new();
    while total < opts.requests {
        let r = wrk_run(2, 16, chunk_secs, &url, pid)?;
        total += r.requests;
        errors += r.errors;
        let rss = rss_kib(pid)?;
        if rss_tenth.is_none() && total >= tenth {
            rss_tenth = Some(rss);
        }
        eprintln!(
            "    {total:>9} requests: {:.0}/s, p99 {:.2} ms, RSS {:.1} MiB, errors {}",
            r.rps,
            r.p99_ms,
            rss as f64 / 1024.0,
            r.errors
        );
        rows.push((total, r.p99_ms, rss));
    }
    let rss_end = rows.last().map_or(rss_kib(pid)?, |r| r.2);
    let rss_tenth = rss_tenth.unwrap_or(rss_end);
    let drift = (rss_end as f64 - rss_tenth as f64) / rss_tenth as f64 * 100.0;
    let p99s: Vec<String> = rows.iter().map(|r| format!("{:.2}", r.1)).collect();
    report.push(format!(
        "| {total} signed requests (wrk -t2 -c16, chunks of {chunk_secs} s ≈ {tenth}) | RSS \
         {:.1} MiB after the first tenth, {:.1} MiB at the end: **drift {drift:+.1} %**; p99 \
         per chunk (ms): {}; errors {errors} | drift ≤ 5 %: {} |",
        rss_tenth as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        p99s.join(", "),
        if drift.abs() <= 5.0 { "met" } else { "MISSED" }
    ));

    // Vanishing clients.
    step(&format!(
        "{} clients that reset mid-head or mid-body",
        opts.vanishing
    ));
    let before = baseline(ports, pid)?;
    let fds_before = before.fds;
    vanish(proxy_port, opts.vanishing)?;
    let settled = settle(ports, pid, before)?;
    check_200(proxy_port)?;
    report.push(format!(
        "| {} clients reset mid-head (half) or mid-body (half, 1 000 of 100 000 bytes sent) | \
         client connections back to 0 and descriptors {} (were {fds_before}) after {:.1} s; the \
         next request 200 | no leak |",
        opts.vanishing,
        settled.fds,
        settled.after.as_secs_f64()
    ));
    drop(proxy);

    // The storm.
    if opts.storm > 0 {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            report.push(
                "| connect storm | skipped: needs root (run as root, or --storm 0) | |".into(),
            );
        } else {
            let s = crate::bench_redirect::storm(opts.storm)?;
            report.push(format!(
                "| {} connects through the eBPF redirect, sequential, RST-closed | all {} \
                 accepted by the proxy's listener in {:.1} s (p99 {:.1} µs); `redirected` {}; \
                 after: {} | every connect lands, maps empty: {} |",
                opts.storm,
                s.connects,
                s.elapsed.as_secs_f64(),
                s.p99_us,
                s.redirected,
                s.tracked,
                if s.connects == opts.storm as usize && s.tracked.contains(": 0 sockets, 0 peers") {
                    "met"
                } else {
                    "MISSED"
                }
            ));
        }
    }

    println!(
        "\n| case | observed | target |\n|---|---|---|\n{}\n",
        report.join("\n")
    );
    if errors > 0 {
        bail!("wrk reported {errors} errors; the figures above are not trustworthy");
    }
    Ok(())
}

/// The number of open descriptors of `pid`.
fn fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count())
}

/// A sample of the proxy's /metrics.
fn metric(admin_port: u16, name: &str) -> Option<f64> {
    let text = http_get(admin_port, "/metrics", "localhost").ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        rest.starts_with(' ').then(|| rest.trim().parse().ok())?
    })
}

struct Settled {
    fds: usize,
    after: Duration,
}

/// TCP sockets whose local port is `port`, listeners (state 0A) and TIME_WAIT (06, held by
/// the kernel, not by a descriptor) excluded: the connections a server on `port` holds.
fn connections_on(port: u16) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            local_port == Some(port) && !matches!(f.get(3), Some(&"0A" | &"06"))
        })
        .count()
}

/// The proxy's descriptors and upstream connections, its admin connections counted out.
#[derive(Clone, Copy)]
struct Baseline {
    fds: usize,
    upstream: f64,
}

fn baseline(ports: Ports, pid: u32) -> Result<Baseline> {
    let upstream = metric(ports.admin, "lattice_proxy_upstream_connections_open").unwrap_or(0.0);
    Ok(Baseline {
        fds: fds(pid)?.saturating_sub(connections_on(ports.admin)),
        upstream,
    })
}

#[derive(Clone, Copy)]
struct Ports {
    proxy: u16,
    admin: u16,
}

/// Waits until the proxy holds no client connection (its gauge and the kernel agree) and no
/// descriptor beyond the baseline's, plus the upstream connections its pools opened
/// meanwhile and the admin connections of these checks; bounded by [`SETTLE`].
fn settle(ports: Ports, pid: u32, before: Baseline) -> Result<Settled> {
    let start = Instant::now();
    loop {
        let clients = metric(ports.admin, "lattice_proxy_http_client_connections_open");
        let pooled = metric(ports.admin, "lattice_proxy_upstream_connections_open")
            .map_or(0, |u| (u - before.upstream).max(0.0) as usize);
        let held = connections_on(ports.proxy);
        let now = fds(pid)?;
        let allowed = before.fds + pooled + connections_on(ports.admin);
        if clients == Some(0.0) && held == 0 && now <= allowed {
            return Ok(Settled {
                fds: now.saturating_sub(connections_on(ports.admin)),
                after: start.elapsed(),
            });
        }
        if start.elapsed() > SETTLE {
            bail!(
                "after {} s the proxy still holds {clients:?} client connections ({held} in the \
                 kernel) and {now} descriptors (allowed {allowed}): a leak",
                SETTLE.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `n` clients, each on its own connection: half send part of a request head, half a head
/// announcing 100 000 bytes of body and 1 000 of them; each waits until the proxy has read
/// what it sent (its send queue is empty), then resets the connection.
fn vanish(port: u16, n: usize) -> Result<()> {
    let body = vec![b'b'; 1_000];
    for i in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        if i % 2 == 0 {
            write!(
                s,
                "GET /slow HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: vanish"
            )?;
        } else {
            write!(
                s,
                "POST /upload HTTP/1.1\r\nHost: {HOST}\r\ncontent-length: 100000\r\n\r\n"
            )?;
            s.write_all(&body)?;
        }
        s.flush()?;
        reset(&s);
    }
    Ok(())
}

/// Closes with RST (SO_LINGER 0), as a client that crashes or loses its network does.
fn reset(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a valid linger struct on an open socket.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
