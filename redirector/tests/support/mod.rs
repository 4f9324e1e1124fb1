//! Sandboxes for the kernel tests: each test gets its own cgroup subtree (the agent attaches
//! there, so tests never touch the host's other processes and can run side by side), its own
//! network namespace and its own pin directory. Everything is removed by `Drop`, also when a
//! test fails.
//!
//! Processes "in a pod" are this test binary re-executed (the `probe` test below is its
//! entry point) after joining the cgroup, entering the netns and dropping to a uid/gid.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const AGENT: &str = env!("CARGO_BIN_EXE_lattice-redirector");
/// Env var that turns the re-executed test binary into a probe.
pub const PROBE_ENV: &str = "LATTICE_TEST_PROBE";

/// Fails the test unless root: these tests need cgroups, bpffs and netns.
pub fn require_root() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "the kernel tests need root (cgroups, bpffs, network namespaces): run them with \
             `sudo cargo xtask test`"
        );
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A test's cgroups, netns and pin directory.
pub struct Sandbox {
    pub name: String,
    /// The cgroup the agent attaches to.
    pub root: PathBuf,
    /// Enrolled cgroup of the app.
    pub app: PathBuf,
    /// A cgroup that is never enrolled.
    pub other: PathBuf,
    /// The proxy's cgroup (under the attach root, so its getsockopt is answered).
    pub proxy: PathBuf,
    pub netns: String,
    pub pins: PathBuf,
    pub cgroup2: PathBuf,
    /// A copy of this test binary that unprivileged probes can execute even when the
    /// checkout lives where only root may enter (e.g. under /root).
    pub probe_exe: PathBuf,
}

impl Sandbox {
    pub fn new(tag: &str) -> Sandbox {
        require_root();
        // The agent's own host discovery: the same code the tests exercise.
        lattice_redirector::host::ensure_bpffs(Path::new("/sys/fs/bpf"))
            .unwrap_or_else(|e| panic!("{e}"));
        let name = format!(
            "le-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let cgroup2 = lattice_redirector::host::cgroup2_mount()
            .unwrap_or_else(|e| panic!("the kernel tests need cgroup v2: {e}"));
        let root = cgroup2.join(&name);
        let probe_dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&probe_dir).unwrap();
        let probe_exe = probe_dir.join("probe");
        std::fs::copy(std::env::current_exe().unwrap(), &probe_exe).unwrap();
        for p in [&probe_dir, &probe_exe] {
            std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        let sb = Sandbox {
            probe_exe,
            app: root.join("app"),
            other: root.join("other"),
            proxy: root.join("proxy"),
            root,
            netns: name.clone(),
            pins: PathBuf::from("/sys/fs/bpf").join(&name),
            name,
            cgroup2,
        };
        for dir in [&sb.app, &sb.other, &sb.proxy] {
            std::fs::create_dir_all(dir).unwrap();
        }
        run(Command::new("ip").args(["netns", "add", &sb.netns]));
        run(Command::new("ip").args(["-n", &sb.netns, "link", "set", "lo", "up"]));
        sb
    }

    /// Arguments selecting this sandbox's pins.
    pub fn pin_args(&self) -> Vec<String> {
        vec!["--pin-dir".into(), self.pins.display().to_string()]
    }

    /// Starts the agent attached to this sandbox, enrolling `app`, plus `extra` args.
    pub fn agent(&self, extra: &[&str]) -> Agent {
        let mut args = self.pin_args();
        args.extend(
            [
                "run",
                "--attach-cgroup",
                self.root.to_str().unwrap(),
                "--cgroup",
                self.app.to_str().unwrap(),
                "--admin-addr",
                "127.0.0.1:0",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        if !extra.contains(&"--reload-interval") {
            args.extend(["--reload-interval".to_string(), "1".to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Agent::start(&args)
    }

    /// Starts the agent in Kubernetes mode as the DaemonSet does (node `node`, the node's
    /// cgroup2 root, kubelet's tree under this sandbox's cgroup), against the API server
    /// that `kubeconfig` names; nothing enrolled by configuration.
    pub fn kube_agent(&self, kubeconfig: &Path, node: &str) -> Agent {
        self.kube_agent_with(kubeconfig, node, &[])
    }

    /// [`Sandbox::kube_agent`] with extra environment variables (POD_UID, say).
    pub fn kube_agent_with(&self, kubeconfig: &Path, node: &str, env: &[(&str, &str)]) -> Agent {
        let kubelet_root = self.root.strip_prefix(&self.cgroup2).unwrap();
        let mut args = self.pin_args();
        args.extend(
            [
                "run",
                "--kubernetes",
                "--node-name",
                node,
                "--cgroup-root",
                self.cgroup2.to_str().unwrap(),
                "--kubelet-cgroup-root",
                kubelet_root.to_str().unwrap(),
                "--attach-cgroup",
                self.root.to_str().unwrap(),
                "--admin-addr",
                "127.0.0.1:0",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        let mut all = vec![("KUBECONFIG", kubeconfig.to_str().unwrap())];
        all.extend_from_slice(env);
        Agent::start_with(&args, &all)
    }

    /// Runs a one-shot agent command (status, enroll, uninstall…).
    pub fn command(&self, args: &[&str]) -> std::process::Output {
        let mut all = self.pin_args();
        all.extend(args.iter().map(|s| s.to_string()));
        Command::new(AGENT).args(&all).output().unwrap()
    }

    /// Starts a probe in `cgroup` and this netns as `uid`/`gid`.
    pub fn probe(&self, cgroup: &Path, uid: u32, gid: u32, args: &[&str]) -> Probe {
        Probe::start(&self.probe_exe, cgroup, &self.netns, uid, gid, args)
    }

    /// Connects from the app cgroup as `gid`; returns the probe's result line.
    pub fn connect(&self, cgroup: &Path, gid: u32, addr: &str, port: u16) -> String {
        let mut p = self.probe(cgroup, gid, gid, &["connect", addr, &port.to_string()]);
        p.finish()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Removing the link pins detaches the programs; the maps go with their pins.
        if self.pins.exists() {
            let _ = Command::new(AGENT)
                .args(self.pin_args())
                .arg("uninstall")
                .output();
            let _ = std::fs::remove_dir_all(&self.pins);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        for dir in [&self.app, &self.other, &self.proxy] {
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|p| p.parse::<i32>().ok()) {
                    // SAFETY: plain kill(2) of a probe left in our cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        if let Some(dir) = self.probe_exe.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for dir in [&self.app, &self.other, &self.proxy, &self.root] {
            while std::fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Replaces `file` with `text` the way operators are told to (and kubelet updates a
/// ConfigMap): write a temporary file beside it, then rename it over the old one, so no
/// reader ever sees it half-written.
pub fn write_atomically(file: &Path, text: &str) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

/// A running agent; killed with SIGKILL on drop (pins stay; the sandbox removes them).
pub struct Agent {
    pub child: Option<Child>,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub admin: String,
}

impl Agent {
    pub fn start(args: &[String]) -> Agent {
        Agent::start_with(args, &[])
    }

    /// [`Agent::start`] with extra environment variables.
    pub fn start_with(args: &[String], env: &[(&str, &str)]) -> Agent {
        let mut child = Command::new(AGENT)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut agent = Agent {
            child: Some(child),
            lines,
            admin: String::new(),
        };
        let line = agent.wait_for("admin endpoint", Duration::from_secs(20));
        agent.admin = line
            .split("addr=")
            .nth(1)
            .expect("the admin line names its address")
            .trim()
            .to_string();
        agent
    }

    /// Waits for a log line containing `needle`; panics with the log if the agent exits or
    /// the line does not come.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_after(0, needle, timeout)
    }

    /// How many lines the agent has logged so far: a mark for [`Agent::wait_after`].
    pub fn mark(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Like [`Agent::wait_for`], but only lines logged after `mark` count.
    pub fn wait_after(&mut self, mark: usize, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .skip(mark)
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "agent exited with {status} before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the agent's log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Kills the agent with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let mut c = self.child.take().unwrap();
        c.wait().unwrap()
    }

    /// GETs `path` from the admin endpoint; returns (status line, body).
    pub fn http_get(&self, path: &str) -> (String, String) {
        let mut s = TcpStream::connect(&self.admin).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (
            head.lines().next().unwrap_or_default().to_string(),
            body.to_string(),
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A probe process; its stdout lines are its results.
pub struct Probe {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

/// Spawns `cmd` "in a pod": in `cgroup` (joined first: entering the netns does not change
/// it), in network namespace `netns`, as `uid`/`gid` with no supplementary groups.
pub fn spawn_in_pod(cmd: &mut Command, cgroup: &Path, netns: &str, uid: u32, gid: u32) -> Child {
    let netns_path = PathBuf::from("/run/netns").join(netns);
    let netns_file = std::fs::File::open(&netns_path).unwrap();
    let procs = cgroup.join("cgroup.procs");
    let netns_fd = std::os::fd::AsRawFd::as_raw_fd(&netns_file);
    // SAFETY: between fork and exec we only make async-signal-safe syscalls on memory
    // prepared before the fork.
    unsafe {
        let procs = std::ffi::CString::new(procs.to_str().unwrap()).unwrap();
        cmd.pre_exec(move || {
            // Join the cgroup first: entering the netns does not change it.
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0\n".as_ptr().cast(), 2);
            libc::close(fd);
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(gid, gid, gid) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    drop(netns_file);
    child
}

impl Probe {
    fn start(exe: &Path, cgroup: &Path, netns: &str, uid: u32, gid: u32, args: &[&str]) -> Probe {
        let mut cmd = Command::new(exe);
        cmd.args([
            "--exact",
            "probe",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PROBE_ENV, args.join(" "))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        let mut child = spawn_in_pod(&mut cmd, cgroup, netns, uid, gid);
        let out = BufReader::new(child.stdout.take().unwrap());
        Probe { child, out }
    }

    /// The next result line (lines of libtest are skipped).
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        loop {
            l.clear();
            if self.out.read_line(&mut l).unwrap() == 0 {
                return "EOF".into();
            }
            // libtest may print "test probe ... " before the first line.
            if let Some((_, r)) = l.trim().split_once("PROBE ") {
                return r.to_string();
            }
        }
    }

    /// The result line, then waits for the probe to exit.
    pub fn finish(&mut self) -> String {
        let l = self.line();
        let _ = self.child.wait();
        l
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a BPF hash map named `name` with the given sizes and pins it at `path`, as
/// another layout (or another program) might have left it.
pub fn pin_hash_map(path: &Path, name: &str, key_size: u32, value_size: u32, entries: u32) {
    #[repr(C)]
    #[derive(Default)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
        numa_node: u32,
        map_name: [u8; 16],
        // Explicit, so that it is zero: the kernel refuses non-zero bytes it does not know.
        map_ifindex: u32,
        _rest: [u64; 8],
    }
    #[repr(C)]
    #[derive(Default)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_HASH: u32 = 1;
    let mut attr = MapCreate {
        map_type: BPF_MAP_TYPE_HASH,
        key_size,
        value_size,
        max_entries: entries,
        ..Default::default()
    };
    attr.map_name[..name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
    // SAFETY: a zero-padded bpf_attr for BPF_MAP_CREATE, valid during the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &mut attr as *mut MapCreate,
            std::mem::size_of::<MapCreate>() as libc::c_uint,
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let mut pin = ObjPin {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd as u32,
        ..Default::default()
    };
    // SAFETY: a zero-padded bpf_attr for BPF_OBJ_PIN, valid during the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &mut pin as *mut ObjPin,
            std::mem::size_of::<ObjPin>() as libc::c_uint,
        )
    };
    assert_eq!(
        r,
        0,
        "BPF_OBJ_PIN {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    // SAFETY: the fd returned above, closed once; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}
