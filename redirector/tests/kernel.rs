//! lattice-redirector on the real kernel: redirection, exclusions, IPv6, pin life cycle,
//! live configuration, enrollment commands, metrics, logs and bad input. Root is required
//! (the tests fail, never skip, without it). Each test has its own cgroup subtree, netns and
//! pins, removed when it ends, pass or fail.

mod support;

use std::io::{BufRead, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;
use support::{Sandbox, PROBE_ENV};

/// Address in a prefix (default 169.254.171.0/24) and port (80) that is redirected.
const LATTICE_V4: &str = "169.254.171.5";
const LATTICE_V6: &str = "fd00:ec2:80::5";
const APP: u32 = 1000;
const PROXY: u32 = 1337;
/// How long a test waits for a condition before it calls the agent hung; never a delay
/// that a passing run depends on.
const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// The probe: this binary re-executed inside a sandbox (see support::Probe).

fn orig_dst(stream: &TcpStream, v6: bool) -> String {
    let fd = stream.as_raw_fd();
    let mut buf = [0u8; 28];
    let mut len: libc::socklen_t = if v6 { 28 } else { 16 };
    let level = if v6 { libc::SOL_IPV6 } else { libc::SOL_IP };
    // SAFETY: buf is large enough for the length we pass.
    let r = unsafe { libc::getsockopt(fd, level, 80, buf.as_mut_ptr().cast(), &mut len) };
    if r != 0 {
        return format!("none({})", std::io::Error::last_os_error());
    }
    let port = u16::from_be_bytes([buf[2], buf[3]]);
    let addr: IpAddr = if v6 {
        let mut a = [0u8; 16];
        a.copy_from_slice(&buf[8..24]);
        IpAddr::from(a)
    } else {
        IpAddr::from([buf[4], buf[5], buf[6], buf[7]])
    };
    SocketAddr::new(addr, port).to_string()
}

#[test]
#[ignore = "entry point of the probes the other tests start (support::Probe)"]
fn probe() {
    let Ok(cmd) = std::env::var(PROBE_ENV) else {
        return; // An ordinary run: nothing to do.
    };
    let args: Vec<&str> = cmd.split_whitespace().collect();
    match args.as_slice() {
        ["connect", addr, port] => {
            let sa = SocketAddr::new(addr.parse().unwrap(), port.parse().unwrap());
            match TcpStream::connect_timeout(&sa, Duration::from_secs(2)) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                    let peer = s.peer_addr().unwrap();
                    let mut line = String::new();
                    let _ = std::io::BufReader::new(&s).read_line(&mut line);
                    println!("PROBE connected peer={peer} got={}", line.trim());
                }
                Err(e) => println!("PROBE error {e}"),
            }
        }
        ["listen", addr, port, n] => {
            let l = TcpListener::bind((addr.parse::<IpAddr>().unwrap(), port.parse().unwrap()))
                .unwrap();
            println!("PROBE listening");
            for _ in 0..n.parse::<u32>().unwrap() {
                let (mut s, peer) = l.accept().unwrap();
                let orig = orig_dst(&s, peer.is_ipv6());
                println!("PROBE accepted orig={orig}");
                let _ = s.write_all(b"hello\n");
            }
        }
        ["http-get", addr, port, path] => {
            let sa = SocketAddr::new(addr.parse().unwrap(), port.parse().unwrap());
            match TcpStream::connect_timeout(&sa, Duration::from_secs(5)) {
                Ok(mut s) => {
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    write!(
                        s,
                        "GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
                    )
                    .unwrap();
                    let mut text = String::new();
                    let _ = std::io::Read::read_to_string(&mut s, &mut text);
                    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
                    let status = head.lines().next().unwrap_or_default();
                    println!("PROBE http {status} | {}", body.replace('\n', " "));
                }
                Err(e) => println!("PROBE error {e}"),
            }
        }
        ["storm", addr, port, n] => {
            // n connects one after the other, each waiting for the listener's ack and
            // closed with a reset (SO_LINGER 0: no TIME_WAIT to run out of ports with).
            let sa = SocketAddr::new(addr.parse().unwrap(), port.parse().unwrap());
            let n: u32 = n.parse().unwrap();
            let (mut ok, mut errors, mut first_error) = (0u32, 0u32, String::new());
            for i in 0..n {
                if i == n / 4 {
                    println!("PROBE progress {i}");
                }
                match TcpStream::connect_timeout(&sa, Duration::from_secs(5)) {
                    Ok(s) => {
                        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        nix::sys::socket::setsockopt(
                            &s,
                            nix::sys::socket::sockopt::Linger,
                            &libc::linger {
                                l_onoff: 1,
                                l_linger: 0,
                            },
                        )
                        .unwrap();
                        let mut line = String::new();
                        let _ = std::io::BufReader::new(&s).read_line(&mut line);
                        if line == "hello\n" && s.peer_addr().unwrap() == sa {
                            ok += 1;
                        } else {
                            errors += 1;
                            if first_error.is_empty() {
                                first_error = format!("peer {:?} said {line:?}", s.peer_addr());
                            }
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        if first_error.is_empty() {
                            first_error = e.to_string();
                        }
                    }
                }
            }
            println!("PROBE storm ok={ok} errors={errors} first_error={first_error}");
        }
        ["sink", addr, port, n, expect] => {
            // Accepts n connections; each must carry `expect` as its original destination.
            let l = TcpListener::bind((addr.parse::<IpAddr>().unwrap(), port.parse().unwrap()))
                .unwrap();
            println!("PROBE listening");
            let mut wrong = 0u32;
            for _ in 0..n.parse::<u32>().unwrap() {
                let (mut s, peer) = l.accept().unwrap();
                if orig_dst(&s, peer.is_ipv6()) != *expect {
                    wrong += 1;
                }
                let _ = s.write_all(b"hello\n");
            }
            println!("PROBE sink wrong_orig={wrong}");
        }
        other => panic!("unknown probe command {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------

/// Starts the proxy stand-in: a listener on the proxy port in the proxy's cgroup, as the
/// unprivileged proxy GID.
fn proxy(sb: &Sandbox, addr: &str, n: u32) -> support::Probe {
    let mut p = sb.probe(
        &sb.proxy,
        PROXY,
        PROXY,
        &["listen", addr, "15001", &n.to_string()],
    );
    assert_eq!(p.line(), "listening");
    p
}

/// Connects from `cgroup` as `gid` to `addr:port` and checks both views of a redirect: the
/// app sees `addr:port` as its peer, and the proxy recovers it as the original destination
/// (in IPv4 form for a v4-mapped address).
fn expect_redirect(
    sb: &Sandbox,
    proxy: &mut support::Probe,
    cgroup: &std::path::Path,
    gid: u32,
    addr: &str,
    port: u16,
) {
    let ip: IpAddr = addr.parse().unwrap();
    let shown = SocketAddr::new(ip, port);
    let orig = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(shown, |v4| SocketAddr::new(v4.into(), port)),
        IpAddr::V4(_) => shown,
    };
    assert_eq!(
        sb.connect(cgroup, gid, addr, port),
        format!("connected peer={shown} got=hello")
    );
    assert_eq!(proxy.line(), format!("accepted orig={orig}"));
}

fn unreachable(result: &str) -> bool {
    // Inside the test netns only loopback exists: a connect that is not redirected to the
    // proxy finds no route (the Lattice range is never reachable from here).
    result.starts_with("error") && result.to_lowercase().contains("unreachable")
}

fn counters(sb: &Sandbox) -> String {
    let out = sb.command(&["status"]);
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn counter(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(name)).then(|| f.next().unwrap().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no counter {name} in:\n{status}"))
}

#[test]
fn redirects_an_enrolled_app_and_restores_both_views() {
    let sb = Sandbox::new("v4");
    let mut agent = sb.agent(&["--log-redirects"]);
    let mut proxy = proxy(&sb, "127.0.0.1", 1);

    let result = sb.connect(&sb.app, APP, LATTICE_V4, 80);
    // The app believes it talks to Lattice (getpeername) but reached the proxy.
    assert_eq!(result, "connected peer=169.254.171.5:80 got=hello");
    // The unprivileged proxy recovers the original destination with getsockopt.
    assert_eq!(proxy.line(), "accepted orig=169.254.171.5:80");

    // aya-log records reach tracing.
    agent.wait_for("redirect 169.254.171.5:80 -> proxy port 15001", WAIT);
    let status = counters(&sb);
    assert_eq!(counter(&status, "redirected"), 1, "{status}");
    assert_eq!(counter(&status, "orig_dst_answered"), 1, "{status}");
    assert!(counter(&status, "peer_restored") >= 1, "{status}");
}

#[test]
fn leaves_other_gids_cgroups_ports_and_addresses_alone() {
    let sb = Sandbox::new("skip");
    let _agent = sb.agent(&[]);
    let mut proxy = proxy(&sb, "127.0.0.1", 1);

    let cases = [
        ("gid 0", sb.connect(&sb.app, 0, LATTICE_V4, 80), "skip_gid"),
        (
            "the proxy's gid",
            sb.connect(&sb.app, PROXY, LATTICE_V4, 80),
            "skip_proxy_gid",
        ),
        (
            "a cgroup not enrolled",
            sb.connect(&sb.other, APP, LATTICE_V4, 80),
            "skip_not_enrolled",
        ),
        (
            "port 8080",
            sb.connect(&sb.app, APP, LATTICE_V4, 8080),
            "skip_port",
        ),
        (
            "169.254.172.5",
            sb.connect(&sb.app, APP, "169.254.172.5", 80),
            "skip_prefix",
        ),
    ];
    let status = counters(&sb);
    for (what, result, skip) in &cases {
        assert!(
            unreachable(result),
            "{what}: expected no redirect, got {result}"
        );
        assert_eq!(counter(&status, skip), 1, "{what}: {skip}\n{status}");
    }
    assert_eq!(counter(&status, "redirected"), 0, "{status}");

    // The same app, GID and destination is redirected: the cases above differ only in the
    // one property each checks.
    expect_redirect(&sb, &mut proxy, &sb.app, APP, LATTICE_V4, 80);
}

#[test]
fn exempt_mode_redirects_all_gids_but_the_listed_ones() {
    let sb = Sandbox::new("exempt");
    let agent = sb.agent(&["--exempt-gid", "0"]);
    assert!(
        agent.log().contains("silently never redirected"),
        "gid-0 warning missing:\n{}",
        agent.log()
    );
    let mut proxy = proxy(&sb, "127.0.0.1", 1);
    assert!(unreachable(&sb.connect(&sb.app, 0, LATTICE_V4, 80)));
    expect_redirect(&sb, &mut proxy, &sb.app, 2000, LATTICE_V4, 80);
}

#[test]
fn redirects_ipv6_and_v4_mapped_destinations() {
    let sb = Sandbox::new("v6");
    let _agent = sb.agent(&[]);

    let mut proxy6 = proxy(&sb, "::1", 1);
    expect_redirect(&sb, &mut proxy6, &sb.app, APP, LATTICE_V6, 80);
    drop(proxy6);

    // A dual-stack socket to ::ffff:169.254.171.9 goes through connect6 but is IPv4.
    let mut proxy4 = proxy(&sb, "127.0.0.1", 1);
    expect_redirect(&sb, &mut proxy4, &sb.app, APP, "::ffff:169.254.171.9", 80);
    assert!(unreachable(&sb.connect(&sb.app, APP, "fd00:ec2:81::5", 80)));
}

#[test]
fn pins_survive_kill_9_are_adopted_and_uninstall_removes_them() {
    let sb = Sandbox::new("pins");
    let mut agent = sb.agent(&[]);
    agent.wait_for("attached and pinned programs", WAIT);
    agent.kill9();

    // No agent: redirection goes on.
    let mut p = proxy(&sb, "127.0.0.1", 2);
    expect_redirect(&sb, &mut p, &sb.app, APP, LATTICE_V4, 80);

    // A new agent adopts the pins instead of attaching again.
    let mut agent = sb.agent(&[]);
    agent.wait_for("adopted pinned programs", WAIT);
    let status = counters(&sb);
    assert_eq!(
        status.matches("attached: generation").count(),
        1,
        "{status}"
    );
    expect_redirect(&sb, &mut p, &sb.app, APP, LATTICE_V4, 80);

    // SIGTERM (a rollout) does not detach either.
    assert!(agent.terminate().success());
    assert!(counters(&sb).contains("le_connect4"));

    let out = sb.command(&["uninstall"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!sb.pins.exists(), "pins left after uninstall");
    assert!(
        unreachable(&sb.connect(&sb.app, APP, LATTICE_V4, 80)),
        "still redirected after uninstall"
    );
    let out = sb.command(&["status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing is installed"));
}

/// The link lines of `status`: the same ids mean nothing was re-attached.
fn links(status: &str) -> Vec<String> {
    status
        .lines()
        .filter(|l| l.contains(" link "))
        .map(str::to_string)
        .collect()
}

/// `lattice_redirector_config_reloads_total` by result, as the agent's /metrics shows them.
fn reloads(agent: &support::Agent) -> (u64, u64) {
    let (_, metrics) = agent.http_get("/metrics");
    let get = |result: &str| {
        let key = format!("lattice_redirector_config_reloads_total{{result=\"{result}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .unwrap_or_else(|| panic!("no {key} in:\n{metrics}"))
            .trim()
            .parse()
            .unwrap()
    };
    (get("ok"), get("error"))
}

#[test]
fn sighup_applies_a_configuration_change_once_without_reattaching() {
    let sb = Sandbox::new("hup");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redirector.toml");
    support::write_atomically(&file, "ports = [80]\n");
    // The periodic check is effectively off: only SIGHUP reloads here.
    let mut agent = sb.agent(&[
        "--config",
        file.to_str().unwrap(),
        "--reload-interval",
        "86400",
    ]);
    let before = counters(&sb);
    let mut p = proxy(&sb, "127.0.0.1", 2);
    assert!(unreachable(&sb.connect(&sb.app, APP, LATTICE_V4, 8080)));

    support::write_atomically(&file, "ports = [80, 8080]\n");
    let mark = agent.mark();
    agent.signal(libc::SIGHUP);
    let line = agent.wait_after(mark, "configuration applied", WAIT);
    assert!(line.contains("SIGHUP"), "{line}");
    expect_redirect(&sb, &mut p, &sb.app, APP, LATTICE_V4, 8080);

    // A bad file is refused and the previous configuration stays.
    support::write_atomically(&file, "ports = [80, 99999]\n");
    let mark = agent.mark();
    agent.signal(libc::SIGHUP);
    let line = agent.wait_after(mark, "configuration refused", WAIT);
    assert!(
        line.contains("99999"),
        "the refusal names the value: {line}"
    );

    // The same content again: nothing is loaded, nothing counted.
    let mark = agent.mark();
    agent.signal(libc::SIGHUP);
    agent.wait_after(mark, "unchanged since it was last loaded", WAIT);

    assert_eq!(reloads(&agent), (1, 1), "{}", agent.log());
    assert_eq!(links(&before), links(&counters(&sb)));
    expect_redirect(&sb, &mut p, &sb.app, APP, LATTICE_V4, 8080);
}

#[test]
fn a_changed_file_is_applied_once_by_the_periodic_check() {
    let sb = Sandbox::new("poll");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redirector.toml");
    support::write_atomically(&file, "ports = [80]\n");
    let mut agent = sb.agent(&["--config", file.to_str().unwrap(), "--reload-interval", "1"]);
    let before = counters(&sb);
    let mut p = proxy(&sb, "127.0.0.1", 2);
    assert!(unreachable(&sb.connect(&sb.app, APP, LATTICE_V4, 8080)));

    // No SIGHUP anywhere in this test.
    let mark = agent.mark();
    support::write_atomically(&file, "ports = [80, 8080]\n");
    let line = agent.wait_after(mark, "configuration applied", WAIT);
    assert!(line.contains("configuration file changed"), "{line}");
    expect_redirect(&sb, &mut p, &sb.app, APP, LATTICE_V4, 8080);

    let mark = agent.mark();
    support::write_atomically(&file, "ports = [80, 99999]\n");
    agent.wait_after(mark, "configuration refused", WAIT);

    // Checks go on every second; had one loaded the refused file again, it would have done
    // so before it loads the next content, so the counts below are exact.
    let mark = agent.mark();
    support::write_atomically(&file, "ports = [80, 8080, 8443]\n");
    agent.wait_after(mark, "configuration applied", WAIT);
    expect_redirect(&sb, &mut p, &sb.app, APP, LATTICE_V4, 8443);

    assert_eq!(reloads(&agent), (2, 1), "{}", agent.log());
    assert_eq!(links(&before), links(&counters(&sb)));
}

#[test]
fn sighup_and_the_periodic_check_load_one_change_once() {
    // Both paths on: whichever sees the change first loads it, the other does nothing.
    let sb = Sandbox::new("both");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redirector.toml");
    support::write_atomically(&file, "ports = [80]\n");
    let mut agent = sb.agent(&["--config", file.to_str().unwrap(), "--reload-interval", "1"]);
    for (i, ports) in ["[80, 8080]", "[80, 99999]", "[80, 8443]"]
        .iter()
        .enumerate()
    {
        let mark = agent.mark();
        support::write_atomically(&file, &format!("ports = {ports}\n"));
        agent.signal(libc::SIGHUP);
        let expect = if i == 1 {
            "configuration refused"
        } else {
            "configuration applied"
        };
        agent.wait_after(mark, expect, WAIT);
    }
    assert_eq!(reloads(&agent), (2, 1), "{}", agent.log());
}

#[test]
fn enroll_and_unenroll_commands_act_on_the_live_installation() {
    let sb = Sandbox::new("enroll");
    let _agent = sb.agent(&[]);
    let mut p = proxy(&sb, "127.0.0.1", 1);
    assert!(unreachable(&sb.connect(&sb.other, APP, LATTICE_V4, 80)));

    let out = sb.command(&["enroll", sb.other.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    expect_redirect(&sb, &mut p, &sb.other, APP, LATTICE_V4, 80);
    assert!(counters(&sb).contains("command"));

    let out = sb.command(&["unenroll", sb.other.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(unreachable(&sb.connect(&sb.other, APP, LATTICE_V4, 80)));

    // A child of an enrolled cgroup (a container in a pod) is covered by its parent.
    let child = sb.app.join("container");
    std::fs::create_dir(&child).unwrap();
    let mut p = proxy(&sb, "127.0.0.1", 1);
    let r = sb.connect(&child, APP, LATTICE_V4, 80);
    std::fs::remove_dir(&child).unwrap();
    assert_eq!(r, "connected peer=169.254.171.5:80 got=hello");
    assert_eq!(p.line(), "accepted orig=169.254.171.5:80");
}

#[test]
fn closed_connections_leave_no_entries_and_metrics_report() {
    let sb = Sandbox::new("metrics");
    let agent = sb.agent(&[]);
    let n = 20;
    let mut p = proxy(&sb, "127.0.0.1", n);
    for _ in 0..n {
        expect_redirect(&sb, &mut p, &sb.app, APP, LATTICE_V4, 80);
    }
    drop(p);
    // Both ends are closed now; the sock_ops program removed the entries at TCP_CLOSE.
    let status = counters(&sb);
    assert!(
        status.contains("tracked connections: 0 sockets, 0 peers"),
        "{status}"
    );

    let (head, body) = agent.http_get("/healthz");
    assert!(head.contains("200"), "{head} {body}");
    let (head, metrics) = agent.http_get("/metrics");
    assert!(head.contains("200"));
    assert!(
        metrics.contains(&format!(
            "lattice_redirector_connects_total{{result=\"redirected\"}} {n}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("lattice_redirector_enrolled_cgroups 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lattice_redirector_tracked_connections{map=\"sockets\"} 0"),
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------------------
// Bad input: a clear error naming the value, a non-zero exit, nothing left attached.

fn run_bad(sb: &Sandbox, extra: &[&str]) -> (i32, String) {
    let mut args = sb.pin_args();
    args.extend(
        ["run", "--attach-cgroup", sb.root.to_str().unwrap()]
            .iter()
            .map(|s| s.to_string()),
    );
    if !extra.contains(&"--admin-addr") {
        args.extend(["--admin-addr".to_string(), "127.0.0.1:0".to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = std::process::Command::new(support::AGENT)
        .args(&args)
        .env_remove("NODE_NAME")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .unwrap();
    assert!(
        !sb.pins.join("links").exists(),
        "links left behind after {extra:?}"
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_input_is_named_and_leaves_nothing_attached() {
    let sb = Sandbox::new("bad");
    let not_a_root = sb.root.to_str().unwrap();
    let cases: [(&[&str], i32, &str); 11] = [
        (&["--bogus"], 2, "unexpected argument '--bogus'"),
        (
            &["--prefix", "169.254.171.0/33"],
            64,
            "'169.254.171.0/33': prefix length must be 0..=32",
        ),
        (
            &["--prefix", "169.254.171.5/24"],
            64,
            "did you mean 169.254.171.0/24",
        ),
        (&["--port", "http"], 64, "'http' is not a TCP port"),
        (
            &["--redirect-gid", "4294967295"],
            64,
            "'4294967295' is not a GID",
        ),
        (
            &["--cgroup", "no/such/pod"],
            64,
            "cgroup no/such/pod does not exist",
        ),
        (
            &["--admin-addr", "localhost"],
            64,
            "'localhost' is not ADDRESS:PORT",
        ),
        (&["--kubernetes"], 64, "--kubernetes needs this node's name"),
        (
            &[
                "--kubernetes",
                "--node-name",
                "n",
                "--cgroup-root",
                not_a_root,
            ],
            64,
            "not the root of the hierarchy",
        ),
        (
            &["--kubernetes", "--node-name", "n", "--cgroup-root", "/tmp"],
            64,
            "is not a cgroup2 filesystem",
        ),
        (
            &["--kubernetes", "--node-name", "n"],
            64,
            "no Kubernetes client configuration",
        ),
    ];
    for (args, code, message) in cases {
        let (got, stderr) = run_bad(&sb, args);
        assert_eq!(got, code, "{args:?}: exit {got}\n{stderr}");
        assert!(
            stderr.contains(message),
            "{args:?}: expected {message:?} in:\n{stderr}"
        );
    }
    let bad = std::env::temp_dir().join(format!("le-bad-{}.toml", std::process::id()));
    std::fs::write(&bad, "portz = [80]\n").unwrap();
    let (got, stderr) = run_bad(&sb, &["--config", bad.to_str().unwrap()]);
    std::fs::remove_file(&bad).unwrap();
    assert_eq!(got, 64, "{stderr}");
    assert!(
        stderr.contains("unknown field `portz`") && stderr.contains(bad.to_str().unwrap()),
        "{stderr}"
    );
}

#[test]
fn a_new_object_is_attached_before_the_old_generation_goes() {
    let sb = Sandbox::new("upgrade");
    let mut agent = sb.agent(&[]);
    agent.wait_for("attached and pinned programs", WAIT);
    agent.kill9();
    let mut p = proxy(&sb, "127.0.0.1", 2);
    expect_redirect(&sb, &mut p, &sb.app, APP, LATTICE_V4, 80);

    // Make the pinned generation look like one of another object (an older agent's).
    let links = sb.pins.join("links");
    let current = std::fs::read_dir(&links)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let name = current.file_name().unwrap().to_str().unwrap().to_string();
    let (_, cgroup) = name.split_once('-').unwrap();
    let old = links.join(format!("0000000000000000-{cgroup}"));
    std::fs::rename(&current, &old).unwrap();
    let before = counters(&sb);
    assert!(before.contains("generation 0000000000000000-"), "{before}");

    let mut agent = sb.agent(&[]);
    // Not adopted: attached afresh, then the old generation was removed.
    agent.wait_for("attached and pinned programs", WAIT);
    let after = counters(&sb);
    assert_eq!(after.matches("attached: generation").count(), 1, "{after}");
    assert!(after.contains(&format!("generation {name}")), "{after}");
    assert!(!old.exists(), "the old generation's pins are left");
    let link_ids = |s: &str| {
        s.lines()
            .filter(|l| l.contains(" link "))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_ne!(
        link_ids(&before),
        link_ids(&after),
        "no new links were attached"
    );
    // The maps carried over: the counter keeps the connect made under the old generation.
    expect_redirect(&sb, &mut p, &sb.app, APP, LATTICE_V4, 80);
    assert_eq!(counter(&counters(&sb), "redirected"), 2);
}

// ---------------------------------------------------------------------------------------
// Kubernetes mode, against the scripted API server (lattice-tests' kube_api).

/// kubelet's cgroups for the test's pods, under the sandbox's cgroup; removed deepest first
/// on drop (before the sandbox removes its own), pass or fail.
#[derive(Default)]
struct KubeletTree(Vec<std::path::PathBuf>);

impl KubeletTree {
    fn create(&mut self, path: std::path::PathBuf) -> std::path::PathBuf {
        std::fs::create_dir(&path).unwrap();
        self.0.push(path.clone());
        path
    }
}

impl Drop for KubeletTree {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let deadline = std::time::Instant::now() + WAIT;
            // Probes end by themselves; a cgroup is removable once its last one has exited.
            while std::fs::remove_dir(dir).is_err()
                && dir.exists()
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A Pod as the API server returns it.
fn pod(name: &str, uid: &str, node: &str, qos: &str, inject: bool) -> serde_json::Value {
    let annotations = if inject {
        serde_json::json!({ "lattice-egress.io/inject": "true" })
    } else {
        serde_json::json!({})
    };
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": "apps", "uid": uid, "annotations": annotations },
        "spec": {
            "nodeName": node,
            "containers": [{ "name": "app", "image": "demo" }],
            "securityContext": { "runAsGroup": 1000 }
        },
        "status": { "phase": "Running", "qosClass": qos }
    })
}

/// The value of one sample of the agent's /metrics.
fn metric(agent: &support::Agent, sample: &str) -> String {
    let (_, metrics) = agent.http_get("/metrics");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(sample).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no {sample} in:\n{metrics}"))
}

#[test]
fn kubernetes_mode_enrolls_the_pods_of_its_node_and_only_those() {
    use lattice_tests::kube_api::FakeApiServer;
    const WEB: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
    const API: &str = "6f1c9a3e-0d2b-4c55-9e1a-7b3d2c4e5f60";
    const PLAIN: &str = "0a0b0c0d-1111-2222-3333-444455556666";
    const BAD: &str = "0badbad0-1111-2222-3333-444455556666";
    let sb = Sandbox::new("kube");
    let server = FakeApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();

    // Pods that exist before the agent starts: one selected whose cgroup kubelet has not
    // made yet, one selected on another node, one of this node that did not opt in, and
    // one whose annotation is malformed.
    server.apply(pod("web", WEB, "node-a", "Burstable", true));
    server.apply(pod("elsewhere", API, "node-b", "Burstable", true));
    server.apply(pod("plain", PLAIN, "node-a", "BestEffort", false));
    let mut bad = pod("bad", BAD, "node-a", "Burstable", true);
    bad["metadata"]["annotations"]["lattice-egress.io/ports"] = "80,http".into();
    server.apply(bad);

    // No kubelet tree yet: unhealthy, with the reason, and nothing enrolled by guess.
    let mut agent = sb.kube_agent(&kubeconfig, "node-a");
    agent.wait_for(
        "no pod is enrolled until the cgroup layout is recognised",
        WAIT,
    );
    let (status, body) = agent.http_get("/healthz");
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable", "{body}");
    assert!(body.contains("cgroup layout is not recognised"), "{body}");

    // kubelet's systemd layout appears under the sandbox's cgroup (the kubelet root).
    let mut tree = KubeletTree::default();
    let kubepods = tree.create(sb.root.join("kubepods.slice"));
    let burstable = tree.create(kubepods.join("kubepods-burstable.slice"));
    let besteffort = tree.create(kubepods.join("kubepods-besteffort.slice"));
    let plain = tree.create(besteffort.join(format!(
        "kubepods-besteffort-pod{}.slice",
        PLAIN.replace('-', "_")
    )));
    let plain_app = tree.create(plain.join("cri-containerd-plain.scope"));

    agent.wait_for("kubelet cgroup layout recognised", WAIT);
    agent.wait_for("pod watch synced", WAIT);
    agent.wait_for("pod waits for its cgroup", WAIT);
    let line = agent.wait_for("pod not enrolled", WAIT);
    assert!(
        line.contains("apps/bad") && line.contains("'80,http'"),
        "{line}"
    );
    let (status, body) = agent.http_get("/healthz");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(body.contains("pod apps/bad is not enrolled"), "{body}");
    assert_eq!(
        metric(&agent, "lattice_redirector_pods{state=\"refused\"}"),
        "1"
    );
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.contains("fieldSelector=spec.nodeName=node-a")),
        "{:?}",
        server.requests()
    );
    assert_eq!(
        metric(&agent, "lattice_redirector_pods{state=\"watched\"}"),
        "3"
    );
    assert_eq!(
        metric(&agent, "lattice_redirector_pods{state=\"pending\"}"),
        "1"
    );

    // kubelet creates the pod's cgroup late: it is found and enrolled.
    let web = tree.create(burstable.join(format!(
        "kubepods-burstable-pod{}.slice",
        WEB.replace('-', "_")
    )));
    let web_app = tree.create(web.join("cri-containerd-web.scope"));
    agent.wait_for("pod enrolled", WAIT);
    let mut p = proxy(&sb, "127.0.0.1", 4);
    expect_redirect(&sb, &mut p, &web_app, APP, LATTICE_V4, 80);
    assert!(unreachable(&sb.connect(&plain_app, APP, LATTICE_V4, 80)));
    assert!(counters(&sb).contains("kubernetes"), "{}", counters(&sb));

    // kill -9 and a new agent: redirection never stops, and the new agent resyncs.
    agent.kill9();
    expect_redirect(&sb, &mut p, &web_app, APP, LATTICE_V4, 80);
    let mut agent = sb.kube_agent(&kubeconfig, "node-a");
    agent.wait_for("pod watch synced", WAIT);
    agent.wait_for("pod enrolled", WAIT);
    assert_eq!(
        metric(&agent, "lattice_redirector_pods{state=\"enrolled\"}"),
        "1"
    );

    // RBAC denied: logged, retried, never fatal; what is enrolled stays.
    let mark = agent.mark();
    server.deny(Some(403));
    server.drop_watches();
    let line = agent.wait_after(mark, "watching this node's pods failed", WAIT);
    assert!(line.contains("forbidden"), "{line}");
    expect_redirect(&sb, &mut p, &web_app, APP, LATTICE_V4, 80);

    // The pod is deleted while the agent cannot watch, and the history is compacted: the
    // agent's next watch gets 410, it relists, and unenrolls only what is really gone.
    server.apply(pod("api", API, "node-a", "Burstable", true));
    server.delete("apps", "web");
    server.compact();
    let mark = agent.mark();
    server.deny(None);
    agent.wait_after(mark, "missing from the relist", WAIT);
    assert!(unreachable(&sb.connect(&web_app, APP, LATTICE_V4, 80)));
    assert_eq!(
        metric(&agent, "lattice_redirector_pods{state=\"pending\"}"),
        "1"
    );
    let restarts: u64 = metric(&agent, "lattice_redirector_pod_watch_restarts_total")
        .parse()
        .unwrap();
    assert!(restarts >= 1, "{restarts}");

    // A Guaranteed pod's cgroup sits directly under kubepods.slice; a delete event
    // unenrolls it.
    let api = tree.create(kubepods.join(format!("kubepods-pod{}.slice", API.replace('-', "_"))));
    let api_app = tree.create(api.join("cri-containerd-api.scope"));
    server.apply(pod("api", API, "node-a", "Guaranteed", true));
    agent.wait_after(mark, "pod enrolled", WAIT);
    expect_redirect(&sb, &mut p, &api_app, APP, LATTICE_V4, 80);
    server.delete("apps", "api");
    agent.wait_after(mark, "pod unenrolled: deleted", WAIT);
    assert!(unreachable(&sb.connect(&api_app, APP, LATTICE_V4, 80)));
    assert_eq!(agent.http_get("/healthz").0, "HTTP/1.1 200 OK");
}

#[test]
fn the_redirect_check_reaches_the_proxy_from_enrolled_cgroups_only() {
    let sb = Sandbox::new("canary");
    let _agent = sb.agent(&[]);
    let mut p = proxy(&sb, "127.0.0.1", 2);
    // From the enrolled cgroup it reaches the proxy whatever the GID, the proxy's own
    // included; nothing is recorded for it.
    for gid in [PROXY, 0] {
        assert_eq!(
            sb.connect(&sb.app, gid, "127.0.0.1", 15009),
            "connected peer=127.0.0.1:15001 got=hello",
            "gid {gid}"
        );
        assert!(p.line().starts_with("accepted orig=none"), "gid {gid}");
    }
    // From a cgroup that is not enrolled: nothing listens on the port.
    let refused = sb.connect(&sb.other, PROXY, "127.0.0.1", 15009);
    assert!(refused.contains("refused"), "{refused}");
    let status = counters(&sb);
    assert_eq!(counter(&status, "canary_redirected"), 2, "{status}");
    assert_eq!(counter(&status, "redirected"), 0, "{status}");
    assert!(status.contains("redirect check port 15009"), "{status}");
}

/// `GET path` on the proxy's admin port from inside the sandbox's netns.
fn admin_get(sb: &Sandbox, path: &str) -> String {
    sb.probe(
        &sb.other,
        APP,
        APP,
        &["http-get", "127.0.0.1", "15000", path],
    )
    .finish()
}

#[test]
fn the_proxy_is_ready_only_once_its_pod_is_enrolled() {
    let sb = Sandbox::new("ready");
    let _agent = sb.agent(&[]);
    // The real sidecar, as the sidecar component runs it: the proxy's uid/gid, in a cgroup
    // that is not enrolled yet, its readiness waiting for the redirect check.
    let built = std::path::Path::new(support::AGENT).with_file_name("lattice-proxy");
    assert!(
        built.is_file(),
        "{} is missing: build it first (`cargo build --workspace --bins`; `cargo xtask test` does)",
        built.display()
    );
    // Run a copy beside the probe's: the checkout may live where only root may enter (a
    // mktemp -d clone is 0700), and the proxy runs as its unprivileged uid.
    let proxy_bin = sb.probe_exe.with_file_name("lattice-proxy");
    std::fs::copy(&built, &proxy_bin).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let ca = dir.path().join("ca.pem");
    let tls = lattice_tests::tls::generate(&["example.com".to_string()]).unwrap();
    std::fs::write(&ca, tls.ca_pem).unwrap();
    let mut cmd = std::process::Command::new(&proxy_bin);
    cmd.args([
        "--redirect-check",
        "127.0.0.1:15009",
        "--region",
        "us-west-2",
    ])
    .args(["--workers", "1", "--system-roots=false", "--ca-file"])
    .arg(&ca)
    .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    .env(
        "AWS_SECRET_ACCESS_KEY",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    )
    .env("AWS_EC2_METADATA_DISABLED", "true")
    .env("RUST_LOG", "info")
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(dir.path().join("proxy.log")).unwrap());
    let mut proxy = support::spawn_in_pod(&mut cmd, &sb.other, &sb.netns, PROXY, PROXY);
    let log = || std::fs::read_to_string(dir.path().join("proxy.log")).unwrap_or_default();
    struct Reap<'a>(&'a mut std::process::Child);
    impl Drop for Reap<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let proxy = Reap(&mut proxy);

    // Wait for the admin port to answer; until the pod is enrolled it answers 503.
    let deadline = std::time::Instant::now() + WAIT;
    let first = loop {
        let got = admin_get(&sb, "/readyz");
        if got.starts_with("http ") {
            break got;
        }
        if let Some(status) = proxy.0.try_wait().unwrap() {
            panic!("lattice-proxy exited with {status}:\n{}", log());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no admin answer: {got}; lattice-proxy's log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        first.starts_with("http HTTP/1.1 503") && first.contains("not redirected"),
        "{first}"
    );
    // Still not ready however often it is asked: nothing redirects its pod.
    let again = admin_get(&sb, "/readyz");
    assert!(again.starts_with("http HTTP/1.1 503"), "{again}");

    let out = sb.command(&["enroll", sb.other.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(admin_get(&sb, "/readyz"), "http HTTP/1.1 200 OK | ready");
    assert_eq!(counter(&counters(&sb), "canary_redirected"), 1);
    drop(proxy);
}

#[test]
fn an_older_layout_is_removed_once_the_new_one_is_attached() {
    let sb = Sandbox::new("layout");
    // A bpffs instance of the test's own (every mount is a new, empty one), so that the
    // default layout path can be used without touching the host's /sys/fs/bpf.
    let dir = tempfile::tempdir().unwrap();
    let bpffs = dir.path().join("bpf");
    std::fs::create_dir(&bpffs).unwrap();
    nix::mount::mount(
        Some("bpf"),
        &bpffs,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            for v in ["v1", "v2"] {
                let _ = std::process::Command::new(support::AGENT)
                    .arg("--pin-dir")
                    .arg(self.0.join("lattice-egress").join(v))
                    .arg("uninstall")
                    .output();
            }
            let _ = nix::mount::umount(&self.0);
        }
    }
    let _unmount = Unmount(bpffs.clone());
    let root = bpffs.join("lattice-egress");
    let v1 = root.join("v1");
    let common = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "--bpffs",
            bpffs.to_str().unwrap(),
            "run",
            "--attach-cgroup",
            sb.root.to_str().unwrap(),
            "--cgroup",
            sb.app.to_str().unwrap(),
            "--admin-addr",
            "127.0.0.1:0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };

    // An older agent's installation, pinned where layout v1 lives.
    let mut old = support::Agent::start(&common(&["--pin-dir", v1.to_str().unwrap()]));
    old.wait_for("attached and pinned programs", WAIT);
    old.kill9();
    let mut p = proxy(&sb, "127.0.0.1", 2);
    expect_redirect(&sb, &mut p, &sb.app, APP, LATTICE_V4, 80);

    // The new agent (default layout): attaches v2 first, then removes v1.
    let mut new = support::Agent::start(&common(&[]));
    new.wait_for("removed an older agent's programs and pins", WAIT);
    assert!(!v1.exists(), "the v1 pins are left");
    assert!(root.join("v2/links").is_dir(), "no v2 links");
    expect_redirect(&sb, &mut p, &sb.app, APP, LATTICE_V4, 80);
}

/// Waits until one sample of the agent's /metrics has `value`.
fn wait_metric(agent: &support::Agent, sample: &str, value: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    while metric(agent, sample) != value {
        assert!(
            std::time::Instant::now() < deadline,
            "{sample} stayed {} (waited for {value}):\n{}",
            metric(agent, sample),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_pod_with_its_own_ports_and_gids_is_redirected_by_them_alone() {
    use lattice_tests::kube_api::FakeApiServer;
    const PLAIN: &str = "2b4e28ba-2fa1-11d2-883f-0016d3cca427";
    const OWN: &str = "3c4e28ba-2fa1-11d2-883f-0016d3cca427";
    let sb = Sandbox::new("policy");
    let server = FakeApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let mut tree = KubeletTree::default();
    let kubepods = tree.create(sb.root.join("kubepods.slice"));
    let burstable = tree.create(kubepods.join("kubepods-burstable.slice"));
    let mut app = |uid: &str| {
        let pod = tree.create(burstable.join(format!(
            "kubepods-burstable-pod{}.slice",
            uid.replace('-', "_")
        )));
        tree.create(pod.join("cri-containerd-app.scope"))
    };
    let (plain_app, own_app) = (app(PLAIN), app(OWN));

    server.apply(pod("plain", PLAIN, "node-a", "Burstable", true));
    let mut own = pod("own", OWN, "node-a", "Burstable", true);
    own["metadata"]["annotations"]["lattice-egress.io/ports"] = "8080".into();
    own["metadata"]["annotations"]["lattice-egress.io/redirect-gids"] = "2000".into();
    server.apply(own.clone());
    let mut agent = sb.kube_agent(&kubeconfig, "node-a");
    wait_metric(&agent, "lattice_redirector_pods{state=\"enrolled\"}", "2");
    assert!(
        counters(&sb).contains("per-pod policies in use: 1"),
        "{}",
        counters(&sb)
    );

    let mut p = proxy(&sb, "127.0.0.1", 3);
    // The plain pod: the node-wide port 80 and GID 1000.
    expect_redirect(&sb, &mut p, &plain_app, APP, LATTICE_V4, 80);
    assert!(unreachable(&sb.connect(&plain_app, APP, LATTICE_V4, 8080)));
    assert!(unreachable(&sb.connect(&plain_app, 2000, LATTICE_V4, 8080)));
    // Its own: port 8080 and GID 2000 only.
    expect_redirect(&sb, &mut p, &own_app, 2000, LATTICE_V4, 8080);
    assert!(unreachable(&sb.connect(&own_app, APP, LATTICE_V4, 8080)));
    assert!(unreachable(&sb.connect(&own_app, 2000, LATTICE_V4, 80)));

    // Its annotation changes: enrolled again under the new ports, without a gap.
    let mark = agent.mark();
    own["metadata"]["annotations"]["lattice-egress.io/ports"] = "8443".into();
    server.apply(own);
    agent.wait_after(mark, "pod enrolled", WAIT);
    expect_redirect(&sb, &mut p, &own_app, 2000, LATTICE_V4, 8443);
    assert!(unreachable(&sb.connect(&own_app, 2000, LATTICE_V4, 8080)));

    // Deleted: unenrolled, and its policy slot is freed.
    server.delete("apps", "own");
    agent.wait_after(mark, "pod unenrolled: deleted", WAIT);
    assert!(unreachable(&sb.connect(&own_app, 2000, LATTICE_V4, 8443)));
    let status = counters(&sb);
    assert!(status.contains("per-pod policies in use: 0"), "{status}");
}

#[test]
fn the_agents_own_pod_confirms_the_cgroup_layout_or_says_it_is_wrong() {
    use lattice_tests::kube_api::FakeApiServer;
    const AGENT_POD: &str = "4d4e28ba-2fa1-11d2-883f-0016d3cca427";
    let sb = Sandbox::new("own");
    let server = FakeApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let mut tree = KubeletTree::default();
    let kubepods = tree.create(sb.root.join("kubepods.slice"));
    let burstable = tree.create(kubepods.join("kubepods-burstable.slice"));
    // The agent's own pod: hostNetwork, never selected, but listed on its node.
    let mut agent_pod = pod("agent", AGENT_POD, "node-a", "Burstable", false);
    agent_pod["metadata"]["namespace"] = "lattice-egress".into();
    agent_pod["spec"]["hostNetwork"] = true.into();
    server.apply(agent_pod);

    // Its cgroup is missing where the layout says: the layout is wrong, and /healthz says so.
    let mut agent = sb.kube_agent_with(&kubeconfig, "node-a", &[("POD_UID", AGENT_POD)]);
    agent.wait_for("has no cgroup at", WAIT);
    let (status, body) = agent.http_get("/healthz");
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable", "{body}");
    assert!(
        body.contains(&format!("own pod (uid {AGENT_POD})")),
        "{body}"
    );
    agent.kill9();

    // Where kubelet puts it: confirmed.
    tree.create(burstable.join(format!(
        "kubepods-burstable-pod{}.slice",
        AGENT_POD.replace('-', "_")
    )));
    let mut agent = sb.kube_agent_with(&kubeconfig, "node-a", &[("POD_UID", AGENT_POD)]);
    agent.wait_for("cgroup layout confirmed", WAIT);
    agent.wait_for("pod watch synced", WAIT);
    assert_eq!(agent.http_get("/healthz").0, "HTTP/1.1 200 OK");
}

// ---------------------------------------------------------------------------------------
// Faults: the agent killed mid-storm, its pins removed, the proxy gone.

#[test]
fn killing_the_agent_during_a_connect_storm_misroutes_no_connect() {
    let sb = Sandbox::new("storm");
    let mut agent = sb.agent(&[]);
    agent.wait_for("attached and pinned programs", WAIT);
    let n: u32 = 5000;
    let target = format!("{LATTICE_V4}:80");
    let mut sink = sb.probe(
        &sb.proxy,
        PROXY,
        PROXY,
        &["sink", "127.0.0.1", "15001", &(2 * n).to_string(), &target],
    );
    assert_eq!(sink.line(), "listening");

    // Killed a quarter of the way in; the rest of the storm runs with no agent, then while
    // a new one adopts the pins.
    let mut storm = sb.probe(
        &sb.app,
        APP,
        APP,
        &["storm", LATTICE_V4, "80", &n.to_string()],
    );
    assert_eq!(storm.line(), format!("progress {}", n / 4));
    agent.kill9();
    let mut agent = sb.agent(&[]);
    // Every connect reached the proxy with its original destination: none was refused, none
    // was left unredirected (in this netns the Lattice range has no route at all).
    assert_eq!(
        storm.finish(),
        format!("storm ok={n} errors=0 first_error=")
    );
    agent.wait_for("adopted pinned programs", WAIT);
    let mut storm = sb.probe(
        &sb.app,
        APP,
        APP,
        &["storm", LATTICE_V4, "80", &n.to_string()],
    );
    assert_eq!(storm.line(), format!("progress {}", n / 4));
    assert_eq!(
        storm.finish(),
        format!("storm ok={n} errors=0 first_error=")
    );
    assert_eq!(sink.finish(), "sink wrong_orig=0");

    // 2n connects, all closed: the tracking maps are empty again.
    let status = counters(&sb);
    assert!(
        status.contains("tracked connections: 0 sockets, 0 peers"),
        "{status}"
    );
    assert_eq!(counter(&status, "redirected"), u64::from(2 * n), "{status}");
}

#[test]
fn removed_pins_are_restored_by_the_running_agent() {
    let sb = Sandbox::new("restore");
    let mut agent = sb.agent(&[]);
    agent.wait_for("attached and pinned programs", WAIT);
    let before = links(&counters(&sb));
    let mut p = proxy(&sb, "127.0.0.1", 3);
    expect_redirect(&sb, &mut p, &sb.app, APP, LATTICE_V4, 80);

    // Every pin gone at once, links and maps: the agent's own references keep the programs
    // attached, and it pins them again.
    let mark = agent.mark();
    std::fs::remove_dir_all(&sb.pins).unwrap();
    expect_redirect(&sb, &mut p, &sb.app, APP, LATTICE_V4, 80);
    agent.wait_after(
        mark,
        "pins were removed under the running agent; restored",
        WAIT,
    );
    assert_eq!(
        links(&counters(&sb)),
        before,
        "the same links, pinned again"
    );

    // The restored pins are whole: a new agent adopts them.
    agent.kill9();
    let mut agent = sb.agent(&[]);
    agent.wait_for("adopted pinned programs", WAIT);
    expect_redirect(&sb, &mut p, &sb.app, APP, LATTICE_V4, 80);
}

#[test]
fn a_dead_proxy_refuses_the_apps_connects_at_once_and_a_restarted_one_serves() {
    let sb = Sandbox::new("noproxy");
    let mut agent = sb.agent(&[]);
    agent.wait_for("attached and pinned programs", WAIT);
    // Nothing listens on the proxy port: the redirected connect is refused at once (not
    // left to time out, and never sent to the Lattice address instead).
    let r = sb.connect(&sb.app, APP, LATTICE_V4, 80);
    assert!(r.starts_with("error") && r.contains("refused"), "{r}");
    let mut p = proxy(&sb, "127.0.0.1", 1);
    expect_redirect(&sb, &mut p, &sb.app, APP, LATTICE_V4, 80);
    let status = counters(&sb);
    assert_eq!(counter(&status, "redirected"), 2, "{status}");
}

#[test]
fn a_map_of_another_layout_is_refused_by_name_and_nothing_is_attached() {
    let sb = Sandbox::new("foreign");
    // The cgroup map as another layout might have had it: 8-byte keys, 4-byte values.
    let wrong = sb.pins.join("maps/LE_CGROUPS");
    support::pin_hash_map(&wrong, "LE_CGROUPS", 8, 4, 64);
    let (code, stderr) = run_bad(&sb, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(wrong.to_str().unwrap())
            && stderr.contains("a pinned map of another layout")
            && stderr.contains("value size 4")
            && !stderr.contains("Verifier"),
        "{stderr}"
    );
    assert!(
        unreachable(&sb.connect(&sb.app, APP, LATTICE_V4, 80)),
        "nothing may be attached"
    );
    // The foreign map is left for whoever owns it.
    assert!(wrong.exists());
}
