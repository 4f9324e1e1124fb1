//! The two-cluster VPC Lattice scenario of `cargo xtask demo` and of the end-to-end test,
//! on one Linux machine with the real lattice-redirector and lattice-proxy.
//!
//! ```text
//!  netns <p>-cluster1 (cluster2 alike: 100.64.2.0/30)     netns <p>-lattice
//!  ┌──────────────────────────────────────────────┐      ┌──────────────────────────────┐
//!  │ eth0 10.0.0.10/16 + 100.64.1.2/30 ───── veth ───────► cluster1 100.64.1.1/30        │
//!  │ route 169.254.171.0/24 via 100.64.1.1        │      │ lo 169.254.171.10 (cluster1) │
//!  │ lo 169.254.170.23:80  Pod Identity agent     │      │    169.254.171.20 (cluster2) │
//!  │ /etc/netns/<ns>/hosts: demo-clusterN.example │      │ emulator :443 (TLS) and :80  │
//!  │                                              │      └──────────────────────────────┘
//!  │ app demo-cluster1-v1 (uid/gid 1000) :8090  ◄──── emulator's target, via this netns
//!  │ curl (gid 1000, cgroup <p>/cluster1/app)     │
//!  │   connect(169.254.171.20:80) ─ connect4 ─►   │
//!  │ lattice-proxy (gid 1337) 127.0.0.1:15001 ──── SigV4 + TLS ──► 169.254.171.20:443
//!  └──────────────────────────────────────────────┘
//! ```
//!
//! Both clusters use the same pod address (overlapping CIDRs); the emulator reaches each
//! cluster's app from that cluster's namespace. Each cluster has an EKS Pod Identity agent on
//! 169.254.170.23:80 (the real agent's address) served by the emulator process inside the
//! cluster namespace. Processes sit in a cgroup subtree `<cgroup2>/<p>/...`: the redirector
//! attaches there and enrolls `<p>/clusterN/app`; every process of the scenario is in the
//! subtree, so teardown finds them all there (and only them).
//!
//! Names derive from a prefix (`le-demo` for the demo, unique per test run for the test), so
//! that [`teardown`] can remove the leftovers of a crashed run. Nothing is added to the root
//! network namespace: no address, route, interface or sysctl.
//!
//! # The Kubernetes variant ([`Mode::Kubernetes`])
//! The same two clusters, but every pod comes from a Kubernetes API and the agent runs in its
//! Kubernetes mode, one per cluster, as deploy/base/daemonset.yaml starts it:
//!
//! ```text
//!  <cgroup2>/<p>/node        emulator, demo-kube-api ×2, lattice-injector ×2 (127.0.0.1),
//!                            lattice-redirector ×2
//!  <cgroup2>/<p>/cluster1    kubelet cgroupRoot, systemd driver; agent 1 attaches here
//!    kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/
//!      cri-containerd-<id>.scope     lattice-proxy (native sidecar)
//!      cri-containerd-<id>.scope     the app
//!  <cgroup2>/<p>/cluster2    kubelet cgroupRoot, cgroupfs driver; agent 2 attaches here
//!    kubepods/burstable/pod<uid>/<id>   lattice-proxy, the app
//! ```
//!
//! The pods are built from the rendered deploy/examples/seed Deployments ([`kube`]), which
//! have no sidecar; each cluster's objects are served by a `demo-kube-api` process (a
//! [`crate::kube_api`] fake API server with mutating admission), to which the demo applies
//! the rendered Namespaces and MutatingWebhookConfiguration, and where lattice-injector,
//! started as its Deployment says, publishes its CA; the ReplicaSet controller's pod is
//! created through the webhook, which adds lattice-proxy. Each pod is then started in a
//! kubelet's order: the Pod is in the API first, then its cgroups appear, then (once the
//! agent has enrolled it) the proxy starts, then the app.

use std::{
    ffi::CString,
    fmt::Write as _,
    net::SocketAddr,
    os::unix::{ffi::OsStrExt, fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

pub mod kube;

/// GID (and UID) the applications run as: the group lattice-redirector redirects by default.
pub const APP_GID: u32 = 1000;
/// GID (and UID) of lattice-proxy: the redirector's default exempt proxy group.
pub const PROXY_GID: u32 = 1337;
/// Address of the EKS Pod Identity agent on every EKS node (and in each cluster namespace).
pub const POD_IDENTITY_ADDR: &str = "169.254.170.23";
/// The pod address, the same in both clusters.
pub const POD_IP: &str = "10.0.0.10";
/// The app's port.
pub const APP_PORT: u16 = 8090;
/// Where lattice-proxy listens inside each cluster namespace (the redirector's default).
pub const PROXY_LISTEN: &str = "127.0.0.1:15001";
/// lattice-proxy's admin address inside each cluster namespace.
pub const PROXY_ADMIN: &str = "127.0.0.1:15000";
/// Region the proxies sign for and the emulator expects.
pub const REGION: &str = "us-west-2";
/// Owner account of the Lattice services and of the roles.
pub const ACCOUNT_ID: &str = "111122223333";
/// How long each component may take to become ready (generous: the machine may be busy).
const READY_TIMEOUT: Duration = Duration::from_secs(90);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM interrupt the scenario's waits (which then fail, so that the
/// caller's [`Scenario`] guard tears everything down) instead of killing the process.
pub fn install_signal_handlers() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }
            .with_context(|| format!("cannot install the {signal} handler"))?;
    }
    Ok(())
}

/// True once SIGINT or SIGTERM arrived (after [`install_signal_handlers`]).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted by a signal");
    }
    Ok(())
}

/// Prints a progress line, as xtask does.
fn step(what: &str) {
    eprintln!("==> {what}");
}

/// The programs the scenario runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `lattice-redirector`.
    pub redirector: PathBuf,
    /// `lattice-proxy`.
    pub proxy: PathBuf,
    /// `lattice-emulator`.
    pub emulator: PathBuf,
    /// `demo-app`.
    pub app: PathBuf,
    /// `demo-kube-api` (the Kubernetes variant's API servers).
    pub kube_api: PathBuf,
    /// `lattice-injector` (the Kubernetes variant's admission webhook).
    pub injector: PathBuf,
}

impl Binaries {
    /// The binaries in one cargo output directory (e.g. `target/debug`); fails naming the
    /// missing ones and the command that builds them.
    pub fn in_dir(dir: &Path) -> Result<Self> {
        let bins = Binaries {
            redirector: dir.join("lattice-redirector"),
            proxy: dir.join("lattice-proxy"),
            emulator: dir.join("lattice-emulator"),
            app: dir.join("demo-app"),
            kube_api: dir.join("demo-kube-api"),
            injector: dir.join("lattice-injector"),
        };
        let missing: Vec<String> = [
            &bins.redirector,
            &bins.proxy,
            &bins.emulator,
            &bins.app,
            &bins.kube_api,
            &bins.injector,
        ]
        .iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
        if !missing.is_empty() {
            bail!(
                "missing {}: build them with `cargo build -p lattice-redirector -p lattice-proxy \
                 -p lattice-injector -p lattice-tests --bins` (the redirector needs `cargo xtask build-ebpf` first), \
                 or run `cargo xtask demo`, which does all of it",
                missing.join(", ")
            );
        }
        Ok(bins)
    }
}

/// What to set up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Prefix of every name (namespaces, cgroups, pin directory), e.g. `le-demo`.
    pub prefix: String,
    /// Directory for the generated configuration, the CA, tokens and logs; emptied first.
    /// Must be readable by uid 1000 and 1337 (the proxy reads the CA and its token there).
    pub state_dir: PathBuf,
    /// The programs.
    pub bins: Binaries,
    /// Where the pods and the agent's enrollments come from.
    pub mode: Mode,
}

/// Where the pods and the agent's enrollments come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// One agent enrolls both apps' cgroups by configuration (`--cgroup`).
    Config,
    /// Pods from a Kubernetes API per cluster, one agent per cluster in Kubernetes mode (see
    /// the [module](self) documentation).
    Kubernetes {
        /// The checkout's `deploy/` (rendered with `kubectl kustomize`).
        deploy_dir: PathBuf,
    },
}

impl Mode {
    /// [`Mode::Kubernetes`] with this checkout's `deploy/`.
    pub fn kubernetes() -> Mode {
        Mode::Kubernetes {
            deploy_dir: default_deploy_dir(),
        }
    }
}

/// The `deploy/` directory of the checkout this crate was built from.
pub fn default_deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|root| root.join("deploy"))
        .unwrap_or_else(|| PathBuf::from("deploy"))
}

/// One of the two clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cluster {
    /// 1 or 2.
    pub n: u8,
}

/// The two clusters.
pub const CLUSTERS: [Cluster; 2] = [Cluster { n: 1 }, Cluster { n: 2 }];

impl Cluster {
    /// `cluster1`, `cluster2`.
    pub fn name(self) -> String {
        format!("cluster{}", self.n)
    }
    /// The Lattice service (and app version prefix) of this cluster: `demo-clusterN`.
    pub fn service(self) -> String {
        format!("demo-cluster{}", self.n)
    }
    /// The service's custom domain name.
    pub fn host(self) -> String {
        format!("demo-cluster{}.example.com", self.n)
    }
    /// The service's address in 169.254.171.0/24.
    pub fn service_ip(self) -> String {
        format!("169.254.171.{}", self.n * 10)
    }
    /// The app's version string.
    pub fn version(self) -> String {
        format!("demo-cluster{}-v1", self.n)
    }
    /// The app's pod name (as a Deployment would name it).
    pub fn pod_name(self) -> String {
        match self.n {
            1 => "demo-cluster1-v1-7d9c6b5f4-x2k8p".into(),
            _ => "demo-cluster2-v1-5b8f7c9d6-q4m7n".into(),
        }
    }
    /// The EKS cluster name carried by the Pod Identity session tags.
    pub fn eks_cluster(self) -> String {
        format!("eks-cluster{}", self.n)
    }
    /// The cluster's VPC id.
    pub fn vpc_id(self) -> String {
        format!("vpc-0c1a55e{0}c1a55e{0}c{0}", self.n)
    }
    /// The cluster's end of its link to Lattice (`100.64.N.2`, in `100.64.N.0/30`).
    pub fn link_ip(self) -> String {
        format!("100.64.{}.2", self.n)
    }
    /// Lattice's end of the link.
    pub fn lattice_link_ip(self) -> String {
        format!("100.64.{}.1", self.n)
    }
    /// The IAM role of the cluster's pods (Pod Identity association).
    pub fn role_name(self) -> String {
        format!("eks-{}-pod-identity-role", self.name())
    }
    /// The access key the cluster's Pod Identity agent hands out.
    pub fn access_key_id(self) -> String {
        format!("ASIAEMULATORCLUSTER{}", self.n)
    }
    /// The other cluster.
    pub fn other(self) -> Cluster {
        Cluster { n: 3 - self.n }
    }
    /// The name of the cluster's node (Kubernetes variant).
    pub fn node_name(self) -> String {
        format!("ip-10-{}-0-10.us-west-2.compute.internal", self.n)
    }
    /// kubelet's cgroup driver on the cluster's node (Kubernetes variant): systemd on
    /// cluster1 (as EKS AL2023 and Bottlerocket), cgroupfs on cluster2, so both of the agent's
    /// layouts run.
    pub fn kubelet_driver(self) -> kube::Driver {
        match self.n {
            1 => kube::Driver::Systemd,
            _ => kube::Driver::Cgroupfs,
        }
    }
}

/// Names and paths derived from a prefix.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
    cgroup2: PathBuf,
}

impl Names {
    /// Names for `prefix`, with the cgroup2 mount found in `/proc/self/mounts`.
    pub fn new(prefix: &str) -> Result<Self> {
        if prefix.is_empty()
            || prefix.len() > 24
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            bail!("prefix '{prefix}' must be 1 to 24 letters, digits or '-' (e.g. le-demo)");
        }
        Ok(Names {
            prefix: prefix.to_owned(),
            cgroup2: cgroup2_mount()?,
        })
    }
    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// A cluster's network namespace name.
    pub fn netns(&self, c: Cluster) -> String {
        format!("{}-{}", self.prefix, c.name())
    }
    /// The Lattice network namespace name.
    pub fn lattice_netns(&self) -> String {
        format!("{}-lattice", self.prefix)
    }
    /// All namespace names.
    pub fn all_netns(&self) -> Vec<String> {
        let mut all: Vec<String> = CLUSTERS.iter().map(|c| self.netns(*c)).collect();
        all.push(self.lattice_netns());
        all
    }
    /// The cgroup2 mount.
    pub fn cgroup2(&self) -> &Path {
        &self.cgroup2
    }
    /// The scenario's cgroup subtree, where the redirector attaches.
    pub fn cgroup_root(&self) -> PathBuf {
        self.cgroup2.join(&self.prefix)
    }
    /// A cluster's cgroup for `role` (`app` or `proxy`).
    pub fn cgroup(&self, c: Cluster, role: &str) -> PathBuf {
        self.cgroup_root().join(c.name()).join(role)
    }
    /// The cgroup of the node-level processes (redirector, emulator).
    pub fn node_cgroup(&self) -> PathBuf {
        self.cgroup_root().join("node")
    }
    /// The redirector's pin directory.
    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from("/sys/fs/bpf").join(&self.prefix)
    }
    /// A cluster's kubelet cgroupRoot (Kubernetes variant), where its agent attaches.
    pub fn kubelet_root(&self, c: Cluster) -> PathBuf {
        self.cgroup_root().join(c.name())
    }
    /// The pin directory of a cluster's agent (Kubernetes variant): each agent has its own
    /// programs, maps and links, as each node has.
    pub fn cluster_pin_dir(&self, c: Cluster) -> PathBuf {
        PathBuf::from("/sys/fs/bpf").join(format!("{}-{}", self.prefix, c.name()))
    }
    /// Every pin directory of either variant.
    pub fn all_pin_dirs(&self) -> Vec<PathBuf> {
        let mut all = vec![self.pin_dir()];
        all.extend(CLUSTERS.iter().map(|c| self.cluster_pin_dir(*c)));
        all
    }

    /// Whether anything of a scenario with this prefix exists (namespace, hosts file,
    /// cgroup, pins).
    pub fn leftovers_exist(&self) -> bool {
        self.cgroup_root().exists()
            || self.all_pin_dirs().iter().any(|p| p.exists())
            || self.all_netns().iter().any(|ns| {
                Path::new("/run/netns").join(ns).exists()
                    || Path::new("/etc/netns").join(ns).exists()
            })
    }

    /// Takes the prefix's lock (`/run/lock/<prefix>.lock`, or the temporary directory), so
    /// that two runs with one prefix never set up and tear down each other's scenario. The
    /// lock lasts as long as the returned file (at the returned path) is open.
    pub fn lock(&self) -> Result<(std::fs::File, PathBuf)> {
        use std::os::fd::AsRawFd;
        let dir = Path::new("/run/lock");
        let dir = if dir.is_dir() {
            dir.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let path = dir.join(format!("{}.lock", self.prefix));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening the lock {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!(
                "another run with prefix '{}' is in progress (it holds {}); wait for it or \
                 stop it with Ctrl-C",
                self.prefix,
                path.display()
            );
        }
        Ok((file, path))
    }
}

/// Finds the cgroup2 mount in `/proc/self/mounts`.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, point, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(point.replace("\\040", " ")))
        })
        .next()
        .context(
            "no cgroup2 filesystem is mounted (see /proc/self/mounts); mount one with \
             `mount -t cgroup2 none /sys/fs/cgroup/unified`",
        )
}

fn is_bpffs(dir: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && f[1] == dir && f[2] == "bpf"
        })
}

/// The outcome expected from one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The target app answers.
    Allowed,
    /// Lattice refuses with `AccessDeniedException`.
    Denied,
    /// The connect is not redirected (the app's pod is gone from the API server): the
    /// request reaches Lattice unsigned, which refuses `User: anonymous`.
    NotRedirected,
}

/// One of the calls and its result.
#[derive(Debug, Clone)]
pub struct Check {
    /// The calling cluster.
    pub from: Cluster,
    /// The service called.
    pub to: Cluster,
    /// What the seed's policies should produce.
    pub expect: Expect,
    /// The command as it was run (a shell line that works by hand too).
    pub command: String,
    /// The response body (curl's stdout), or curl's error.
    pub output: String,
    /// Whether `output` matches `expect`.
    pub ok: bool,
    /// What else was checked, in words (the agent's counters for [`Expect::NotRedirected`]).
    pub detail: String,
}

impl Check {
    /// What was expected, in words.
    pub fn expected_text(&self) -> String {
        match self.expect {
            Expect::Allowed => format!("Hello from {}", self.to.version()),
            Expect::Denied => format!(
                "AccessDeniedException: User: …assumed-role/{}/… is not authorized …",
                self.from.role_name()
            ),
            Expect::NotRedirected => "not redirected: the request reaches Lattice unsigned \
                                      (AccessDeniedException: User: anonymous is not \
                                      authorized …), and the agent counts the connect as \
                                      skip_not_enrolled"
                .into(),
        }
    }
}

/// A running scenario. Dropping it tears everything down unless [`Scenario::keep`] was called.
#[derive(Debug)]
pub struct Scenario {
    names: Names,
    settings: Settings,
    children: Vec<(String, Child, PathBuf)>,
    keep: bool,
    /// Held while this process drives the scenario (see [`Names::lock`]).
    lock: Option<(std::fs::File, PathBuf)>,
    /// The Kubernetes variant's clusters, in [`CLUSTERS`] order (empty in [`Mode::Config`]).
    kube: Vec<KubeCluster>,
}

/// One cluster of the Kubernetes variant: its node's kubelet, its pod, its API server and
/// its agent.
#[derive(Debug)]
struct KubeCluster {
    kubelet: kube::Kubelet,
    /// The pod the ReplicaSet controller creates.
    request: kube::PodRequest,
    /// The seed's Namespace of that pod (its labels opt it in to the injector).
    namespace: serde_json::Value,
    /// The pod as admitted and run, once created.
    pod: Option<kube::PodPlan>,
    /// The injector's /metrics, once started.
    injector_admin: Option<SocketAddr>,
    /// The control port of its `demo-kube-api`, once started.
    api: Option<kube::ApiControl>,
    /// The API server's URL (what the agent's kubeconfig names).
    api_url: String,
    /// The agent's log, once started.
    agent_log: PathBuf,
    /// The agent's /healthz and /metrics, once started.
    agent_admin: Option<SocketAddr>,
}

/// The name and uid of each cluster's pod, for the emulator's Pod Identity session tags.
#[derive(Debug, Clone)]
pub struct PodRef {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
}

impl Scenario {
    /// Removes leftovers of an earlier run with the same prefix, then sets everything up and
    /// waits until every component is ready. On error, what was set up is removed again.
    pub fn up(settings: Settings) -> Result<Scenario> {
        preflight(&settings)?;
        let names = Names::new(&settings.prefix)?;
        let lock = names.lock()?;
        if names.leftovers_exist() {
            step(&format!(
                "removing what an earlier run with prefix '{}' left (a --keep run or a crash)",
                names.prefix
            ));
            teardown(&names, Some(&settings.bins.redirector))
                .context("removing the leftovers of an earlier run")?;
        }
        let mut scenario = Scenario {
            names,
            settings,
            children: Vec::new(),
            keep: false,
            lock: Some(lock),
            kube: Vec::new(),
        };
        scenario.build()?;
        Ok(scenario)
    }

    /// The names in use.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The directory with the generated configuration and the logs.
    pub fn state_dir(&self) -> &Path {
        &self.settings.state_dir
    }

    /// The variant running.
    pub fn mode(&self) -> &Mode {
        &self.settings.mode
    }

    /// Leaves everything running when the scenario is dropped (`--keep`).
    pub fn keep(mut self) {
        self.keep = true;
    }

    /// The name of a cluster's app pod (what the app answers with).
    pub fn pod_name(&self, c: Cluster) -> String {
        match self.kube_cluster(c) {
            Some(k) => k.request.name.clone(),
            None => c.pod_name(),
        }
    }

    /// A cluster's pod as admitted and run (Kubernetes variant).
    pub fn pod(&self, c: Cluster) -> Option<&kube::PodPlan> {
        self.kube_cluster(c).and_then(|k| k.pod.as_ref())
    }

    /// The /metrics address of a cluster's lattice-injector (Kubernetes variant).
    pub fn injector_admin(&self, c: Cluster) -> Option<SocketAddr> {
        self.kube_cluster(c).and_then(|k| k.injector_admin)
    }

    /// The cgroup the app of cluster `c` runs in: its own (`<p>/clusterN/app`), or its
    /// container's under the pod cgroup in the Kubernetes variant.
    pub fn app_cgroup(&self, c: Cluster) -> PathBuf {
        match self.pod(c) {
            Some(pod) => pod.app.cgroup.clone(),
            None => self.names.cgroup(c, "app"),
        }
    }

    fn proxy_cgroup(&self, c: Cluster) -> PathBuf {
        match self.pod(c) {
            Some(pod) => pod.proxy.cgroup.clone(),
            None => self.names.cgroup(c, "proxy"),
        }
    }

    fn kube_cluster(&self, c: Cluster) -> Option<&KubeCluster> {
        self.kube.get(usize::from(c.n) - 1)
    }

    fn kube_cluster_mut(&mut self, c: Cluster) -> Result<&mut KubeCluster> {
        self.kube
            .get_mut(usize::from(c.n) - 1)
            .context("this scenario does not run the Kubernetes variant")
    }

    /// The apps, proxies and injectors run as uid 1000, 1337 and 65532, which may not enter the build's
    /// directory (a checkout under /root): they run copies in the state directory.
    fn stage_binaries(&mut self) -> Result<()> {
        let dir = self.settings.state_dir.join("bin");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        set_mode(&dir, 0o755)?;
        for bin in [
            &mut self.settings.bins.proxy,
            &mut self.settings.bins.app,
            &mut self.settings.bins.injector,
        ] {
            let name = bin.file_name().context("a binary path has a file name")?;
            let copy = dir.join(name);
            std::fs::copy(&*bin, &copy)
                .with_context(|| format!("copying {} to {}", bin.display(), copy.display()))?;
            set_mode(&copy, 0o755)?;
            *bin = copy;
        }
        Ok(())
    }

    fn build(&mut self) -> Result<()> {
        let state = self.settings.state_dir.clone();
        step(&format!("preparing {}", state.display()));
        prepare_state_dir(&state)?;
        self.stage_binaries()?;
        self.network()?;
        self.cgroups()?;
        for c in CLUSTERS {
            let dir = state.join(c.name());
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            set_mode(&dir, 0o755)?;
            write_file(&dir.join("eks-pod-identity-token"), &agent_token(c), 0o644)?;
        }
        // The Kubernetes variant's pods are planned first: the emulator's Pod Identity
        // session tags name them.
        let base = match self.settings.mode.clone() {
            Mode::Config => None,
            Mode::Kubernetes { deploy_dir } => Some(self.plan_pods(&deploy_dir)?),
        };
        let pods = CLUSTERS.map(|c| PodRef {
            name: self.pod_name(c),
            uid: match self.kube_cluster(c) {
                Some(k) => k.request.uid.clone(),
                None => config_pod_uid(c).to_owned(),
            },
        });

        let ca = state.join("lattice-ca.pem");
        let config = state.join("lattice-emulator.json");
        write_file(
            &config,
            &serde_json::to_string_pretty(&emulator_config(&self.names, &ca, &pods))?,
            0o644,
        )?;
        step("starting the Lattice emulator (services, SigV4, IAM auth policies, Pod Identity agents)");
        let mut cmd = Command::new(&self.settings.bins.emulator);
        cmd.arg("--config").arg(&config).env("RUST_LOG", "info");
        let out = self.spawn("lattice-emulator", cmd, &self.names.node_cgroup(), true)?;
        self.wait_for("lattice-emulator", &out, "ready")?;
        wait_file(&ca)?;

        if !is_bpffs("/sys/fs/bpf") {
            step("mounting bpffs at /sys/fs/bpf");
            run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
        }
        match base {
            None => self.start_config_variant(&ca),
            Some(base) => self.start_kubernetes_variant(&base, &ca),
        }
    }

    /// One agent enrolling both apps' cgroups by configuration, then the apps and proxies.
    fn start_config_variant(&mut self, ca: &Path) -> Result<()> {
        step("starting lattice-redirector (eBPF connect4/getpeername4 on the demo's cgroups)");
        let mut cmd = Command::new(&self.settings.bins.redirector);
        cmd.arg("--pin-dir")
            .arg(self.names.pin_dir())
            .arg("run")
            .arg("--attach-cgroup")
            .arg(self.names.cgroup_root());
        for c in CLUSTERS {
            cmd.arg("--cgroup").arg(self.names.cgroup(c, "app"));
        }
        cmd.args(["--admin-addr", "127.0.0.1:0"])
            .env("RUST_LOG", "info");
        let log = self.spawn("lattice-redirector", cmd, &self.names.node_cgroup(), false)?;
        self.wait_for("lattice-redirector", &log, "redirecting")?;

        for c in CLUSTERS {
            self.start_app(c)?;
        }
        for c in CLUSTERS {
            step(&format!(
                "starting lattice-proxy in {} on {PROXY_LISTEN} (uid/gid {PROXY_GID}, EKS Pod \
                 Identity credentials)",
                self.names.netns(c)
            ));
            self.spawn_proxy(c, ca)?;
        }
        for c in CLUSTERS {
            self.wait_ready(c)?;
        }
        Ok(())
    }

    /// Starts the app of cluster `c` in its cgroup and waits until it listens.
    fn start_app(&mut self, c: Cluster) -> Result<()> {
        let cg = self.app_cgroup(c);
        step(&format!(
            "starting {} in {} on {POD_IP}:{APP_PORT} (uid/gid {APP_GID}, cgroup {})",
            c.version(),
            self.names.netns(c),
            cg.display()
        ));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.names.netns(c)]);
        as_user(&mut cmd, APP_GID);
        cmd.arg(&self.settings.bins.app)
            .args(["--listen", &format!("{POD_IP}:{APP_PORT}")])
            .args(["--version", &c.version(), "--pod-name", &self.pod_name(c)]);
        let out = self.spawn(&format!("{}-app", c.name()), cmd, &cg, true)?;
        self.wait_for(&format!("{} app", c.name()), &out, "listening")
    }

    /// Starts the proxy of cluster `c` in its cgroup (readiness: [`Self::wait_ready`]).
    fn spawn_proxy(&mut self, c: Cluster, ca: &Path) -> Result<()> {
        let dir = self.settings.state_dir.join(c.name());
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.names.netns(c)]);
        as_user(&mut cmd, PROXY_GID);
        cmd.arg(&self.settings.bins.proxy)
            .args(["--listen", PROXY_LISTEN, "--admin", PROXY_ADMIN])
            .args(["--region", REGION, "--allowed-domain", "example.com"])
            .arg("--ca-file")
            .arg(ca)
            .args(["--workers", "1", "--drain-timeout", "2s"]);
        if matches!(self.settings.mode, Mode::Kubernetes { .. }) {
            // As deploy/components/sidecar runs it: ready only once the agent has enrolled
            // the pod (its connect to the check port comes back to this proxy).
            cmd.args(["--redirect-check", "127.0.0.1:15009"]);
        }
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", &dir)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env(
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                format!("http://{POD_IDENTITY_ADDR}/v1/credentials"),
            )
            .env(
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                dir.join("eks-pod-identity-token"),
            );
        let cg = self.proxy_cgroup(c);
        self.spawn(&format!("{}-proxy", c.name()), cmd, &cg, false)?;
        Ok(())
    }

    /// Renders the seed's Deployments and the install (deploy/: the agent and the injector),
    /// and makes each cluster's pod request (name and uid, before admission); returns the
    /// install's objects.
    fn plan_pods(&mut self, deploy_dir: &Path) -> Result<Vec<serde_json::Value>> {
        let seed = deploy_dir.join("examples/seed");
        step(&format!(
            "rendering {0}/cluster1, {0}/cluster2 and {1} with `kubectl kustomize`",
            seed.display(),
            deploy_dir.display()
        ));
        for c in CLUSTERS {
            let objects = kube::kustomize(&seed.join(c.name()))?;
            let deployment = kube::find(&objects, "Deployment", &c.version())?;
            let request = kube::PodRequest::from_deployment(deployment, &c.node_name())?;
            let namespace = kube::find(&objects, "Namespace", &request.namespace)?.clone();
            let file = self.settings.state_dir.join(c.name()).join("pod.json");
            write_file(
                &file,
                &serde_json::to_string_pretty(&request.object)?,
                0o644,
            )?;
            self.kube.push(KubeCluster {
                kubelet: kube::Kubelet {
                    driver: c.kubelet_driver(),
                    root: self.names.kubelet_root(c),
                },
                request,
                namespace,
                pod: None,
                injector_admin: None,
                api: None,
                api_url: String::new(),
                agent_log: PathBuf::new(),
                agent_admin: None,
            });
        }
        kube::kustomize(deploy_dir)
    }

    /// Per cluster: kubelet's cgroups, the API server, the agent as the DaemonSet starts it;
    /// then per cluster the pod, in a kubelet's order.
    fn start_kubernetes_variant(&mut self, base: &[serde_json::Value], ca: &Path) -> Result<()> {
        let daemonset = kube::find(base, "DaemonSet", "lattice-redirector")?;
        for c in CLUSTERS {
            self.start_node(c, daemonset, base)?;
        }
        for c in CLUSTERS {
            self.start_pod(c, ca)?;
        }
        Ok(())
    }

    /// kubelet's QoS cgroups, the cluster's API server and its agent.
    fn start_node(
        &mut self,
        c: Cluster,
        daemonset: &serde_json::Value,
        base: &[serde_json::Value],
    ) -> Result<()> {
        let state = self.settings.state_dir.join(c.name());
        let kubelet = self.kube_cluster_mut(c)?.kubelet.clone();
        let relative_root = Path::new("/").join(
            kubelet
                .root
                .strip_prefix(self.names.cgroup2())
                .context("the kubelet root is under the cgroup2 mount")?,
        );
        step(&format!(
            "{}: kubelet ({} cgroup driver, cgroupRoot {}) creates its QoS cgroups {}",
            c.name(),
            kubelet.driver.as_str(),
            relative_root.display(),
            kubelet
                .start_dirs()
                .iter()
                .filter_map(|d| d.strip_prefix(&kubelet.root).ok())
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for d in kubelet.start_dirs() {
            std::fs::create_dir_all(&d)
                .with_context(|| format!("creating cgroup {}", d.display()))?;
        }

        step(&format!(
            "{}: its Kubernetes API server (demo-kube-api: a fake API server on 127.0.0.1 \
             serving the cluster's Pods)",
            c.name()
        ));
        let api_dir = state.join("api");
        std::fs::create_dir_all(&api_dir)
            .with_context(|| format!("creating {}", api_dir.display()))?;
        let mut cmd = Command::new(&self.settings.bins.kube_api);
        cmd.arg("--dir").arg(&api_dir).env("RUST_LOG", "info");
        let name = format!("{}-kube-api", c.name());
        let out = self.spawn(&name, cmd, &self.names.node_cgroup(), true)?;
        self.wait_for(&name, &out, "ready")?;
        let control: SocketAddr = std::fs::read_to_string(api_dir.join("control"))
            .context("reading the API server's control address")?
            .trim()
            .parse()
            .context("the API server's control address")?;
        let api_url = std::fs::read_to_string(&out)
            .unwrap_or_default()
            .split_whitespace()
            .find_map(|w| w.strip_prefix("api=").map(str::to_owned))
            .unwrap_or_default();
        let kubeconfig = api_dir.join("kubeconfig");
        let api = kube::ApiControl { addr: control };
        let app_namespace = self.kube_cluster_mut(c)?.namespace.clone();
        let install_namespace = kube::find(base, "Namespace", "lattice-egress")?;
        let webhooks = kube::find(base, "MutatingWebhookConfiguration", "lattice-injector")?;
        step(&format!(
            "{}: `kubectl apply` of Namespaces lattice-egress and {} (labels {}) and of \
             MutatingWebhookConfiguration lattice-injector (no caBundle yet)",
            c.name(),
            app_namespace["metadata"]["name"]
                .as_str()
                .unwrap_or_default(),
            app_namespace["metadata"]["labels"]
        ));
        for object in [install_namespace, &app_namespace, webhooks] {
            api.put(object)?;
        }
        self.start_injector(c, base, &api, &kubeconfig)?;

        let invocation = kube::Invocation::from_workload(
            daemonset,
            "lattice-redirector",
            base,
            &kube::PodHost {
                volumes_dir: &state.join("agent-volumes"),
                cgroup2: self.names.cgroup2(),
                node_name: &c.node_name(),
                pod_uid: &kube::random_uid(),
                addresses: &[("--admin-addr", "127.0.0.1:0")],
            },
        )?;
        let attach = self.names.kubelet_root(c);
        let pins = self.names.cluster_pin_dir(c);
        step(&format!(
            "{}: lattice-redirector {} (as deploy/base/daemonset.yaml starts it), with:",
            c.name(),
            invocation.original_args.join(" ")
        ));
        for note in &invocation.notes {
            eprintln!("      {note}");
        }
        eprintln!(
            "      + --kubelet-cgroup-root {} (this node's kubelet cgroupRoot)",
            relative_root.display()
        );
        eprintln!(
            "      + --attach-cgroup {}: the real DaemonSet attaches at the node's cgroup root; \
             here each agent attaches at its cluster's subtree, so that two agents (two \
             nodes) share one machine",
            attach.display()
        );
        eprintln!(
            "      + --pin-dir {} (each node has its own bpffs)",
            pins.display()
        );
        eprintln!(
            "      + KUBECONFIG={} (in place of the pod's service account)",
            kubeconfig.display()
        );
        let mut cmd = Command::new(&self.settings.bins.redirector);
        cmd.args(&invocation.args)
            .arg("--kubelet-cgroup-root")
            .arg(&relative_root)
            .arg("--attach-cgroup")
            .arg(&attach)
            .arg("--pin-dir")
            .arg(&pins)
            // A container's environment is its spec's, not the demo's.
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(invocation.env.iter().map(|(k, v)| (k, v)))
            .env("KUBECONFIG", &kubeconfig);
        let name = format!("{}-redirector", c.name());
        let log = self.spawn(&name, cmd, &self.names.node_cgroup(), false)?;
        self.wait_for(&name, &log, "pod watch synced")?;
        let admin = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("admin endpoint"))
            .find_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .and_then(|a| a.parse::<SocketAddr>().ok())
            });
        let k = self.kube_cluster_mut(c)?;
        k.api = Some(api);
        k.api_url = api_url;
        k.agent_log = log;
        k.agent_admin = admin;
        Ok(())
    }

    /// lattice-injector as its Deployment runs it (one replica per cluster), its caBundle
    /// published through the API server, then its Service and Endpoints (what the endpoints
    /// controller writes once the pod is ready), so that the API server can call it.
    fn start_injector(
        &mut self,
        c: Cluster,
        base: &[serde_json::Value],
        api: &kube::ApiControl,
        kubeconfig: &Path,
    ) -> Result<()> {
        let deployment = kube::find(base, "Deployment", "lattice-injector")?;
        let state = self.settings.state_dir.join(c.name());
        let invocation = kube::Invocation::from_workload(
            deployment,
            "lattice-injector",
            base,
            &kube::PodHost {
                volumes_dir: &state.join("injector-volumes"),
                cgroup2: self.names.cgroup2(),
                node_name: &c.node_name(),
                pod_uid: &kube::random_uid(),
                addresses: &[("--listen", "127.0.0.1:0"), ("--admin", "127.0.0.1:0")],
            },
        )?;
        let pod_spec = &deployment["spec"]["template"]["spec"];
        let user = pod_spec["securityContext"]["runAsUser"]
            .as_u64()
            .and_then(|u| u32::try_from(u).ok())
            .context("the injector's Deployment names no runAsUser")?;
        set_mode(&state.join("injector-volumes"), 0o755)?;
        step(&format!(
            "{}: lattice-injector {} (as deploy/components/injector/deployment.yaml starts it, \
             uid/gid {user}), with:",
            c.name(),
            invocation.original_args.join(" ")
        ));
        for note in &invocation.notes {
            eprintln!("      {note}");
        }
        eprintln!(
            "      + KUBECONFIG={} (in place of the pod's service account)",
            kubeconfig.display()
        );
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid",
            &user.to_string(),
            "--regid",
            &user.to_string(),
            "--clear-groups",
        ])
        .arg(&self.settings.bins.injector)
        .args(&invocation.args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("RUST_LOG", "info")
        .envs(invocation.env.iter().map(|(k, v)| (k, v)))
        .env("KUBECONFIG", kubeconfig);
        let name = format!("{}-injector", c.name());
        let log = self.spawn(&name, cmd, &self.names.node_cgroup(), false)?;
        let line = self.wait_for_line(&name, &log, &["lattice-injector serving"])?;
        let field = |key: &str| -> Result<SocketAddr> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|a| a.parse().ok())
                .with_context(|| format!("no {key}ADDR in the injector's line: {line}"))
        };
        let (webhook, admin) = (field("listen=")?, field("admin=")?);
        let line = self.wait_for_line(&name, &log, &["published this replica's CA"])?;
        eprintln!("      {}", log_message(&line));

        let service = kube::find(base, "Service", "lattice-injector")?;
        let port_name = service["spec"]["ports"][0]["name"]
            .as_str()
            .context("the injector's Service port has no name")?;
        let endpoints = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": "lattice-injector", "namespace": "lattice-egress"},
            "subsets": [{
                "addresses": [{"ip": webhook.ip().to_string()}],
                "ports": [{"name": port_name, "port": webhook.port(), "protocol": "TCP"}],
            }],
        });
        step(&format!(
            "{}: the injector is ready: Service lattice-egress/lattice-injector and its \
             Endpoints {webhook} (where the API server calls the webhook)",
            c.name()
        ));
        api.put(service)?;
        api.put(&endpoints)?;
        self.kube_cluster_mut(c)?.injector_admin = Some(admin);
        Ok(())
    }

    /// Starts the pod of cluster `c` as a kubelet does: the ReplicaSet controller creates the
    /// Pod, lattice-injector adds the sidecar during admission; the Pod exists in the API
    /// before its cgroups; the agent enrolls the pod cgroup; the native sidecar starts and its
    /// readiness (the startupProbe) gates the app.
    fn start_pod(&mut self, c: Cluster, ca: &Path) -> Result<()> {
        let k = self.kube_cluster_mut(c)?;
        let (request, api, log, kubelet) = (
            k.request.clone(),
            k.api.clone().context("the API server is not started")?,
            k.agent_log.clone(),
            k.kubelet.clone(),
        );
        let agent = format!("{}'s lattice-redirector", c.name());
        let key = format!("pod={}/{}", request.namespace, request.name);
        step(&format!(
            "{}: the ReplicaSet controller creates pod {}/{} (spec.nodeName {}; containers: {}; \
             no sidecar in the template); the API server sends it to the admission webhooks",
            c.name(),
            request.namespace,
            request.name,
            c.node_name(),
            container_names(&request.object)
        ));
        let created = api.create(&request.object)?;
        for call in &created.calls {
            eprintln!("      webhook {call}");
        }
        for warning in &created.warnings {
            eprintln!("      warning: {warning}");
        }
        let pod = kube::PodPlan::from_admitted(&created.object, POD_IP, &kubelet)?;
        for (container, want) in [(&pod.app, APP_GID), (&pod.proxy, PROXY_GID)] {
            if (container.uid, container.gid) != (want, want) {
                bail!(
                    "container {} of {} runs as uid {} gid {}, the demo expects {want}: \
                     the agent's redirect-gids/proxy-gid (deploy/base/redirector.toml) and \
                     the demo's checks are written for the seed's values",
                    container.name,
                    c.version(),
                    container.uid,
                    container.gid
                );
            }
        }
        eprintln!(
            "      stored with containers: {}; QoS class {} ({}); kubelet has not made its \
             cgroup yet",
            container_names(&created.object),
            pod.qos.as_str(),
            pod.qos_reason
        );
        self.kube_cluster_mut(c)?.pod = Some(pod.clone());
        let line = self.wait_for_line(&agent, &log, &["pod waits for its cgroup", &key])?;
        eprintln!("      the agent saw the pod first: {}", log_message(&line));

        step(&format!(
            "{}: kubelet creates the pod cgroup {} and its containers' cgroups (lattice-proxy {}, \
             {} {})",
            c.name(),
            pod.cgroup.display(),
            file_name(&pod.proxy.cgroup),
            pod.app.name,
            file_name(&pod.app.cgroup)
        ));
        for d in pod.cgroups() {
            std::fs::create_dir_all(&d)
                .with_context(|| format!("creating cgroup {}", d.display()))?;
        }
        let line = self.wait_for_line(&agent, &log, &["pod enrolled", &key])?;
        eprintln!("      {}", log_message(&line));

        step(&format!(
            "{}: kubelet starts lattice-proxy, the native sidecar, in {} on {PROXY_LISTEN} (uid/gid \
             {PROXY_GID}); the app waits for its startupProbe (/readyz)",
            c.name(),
            self.names.netns(c)
        ));
        self.spawn_proxy(c, ca)?;
        self.wait_ready(c)?;
        self.start_app(c)?;
        api.update(&pod.running_object())
            .context("kubelet's status update of the pod")?;
        Ok(())
    }

    fn network(&self) -> Result<()> {
        step(&format!(
            "creating network namespaces {} (pods 10.0.0.10/16 in both clusters)",
            self.names.all_netns().join(", ")
        ));
        let lattice = self.names.lattice_netns();
        for ns in self.names.all_netns() {
            ip(&format!("netns add {ns}"))?;
            ip(&format!("-n {ns} link set lo up"))?;
        }
        for c in CLUSTERS {
            ip(&format!(
                "-n {lattice} addr add {}/32 dev lo",
                c.service_ip()
            ))?;
        }
        for c in CLUSTERS {
            let ns = self.names.netns(c);
            let peer = c.name();
            ip(&format!("-n {ns} addr add {POD_IDENTITY_ADDR}/32 dev lo"))?;
            // Both ends are created inside the namespaces: nothing appears in the root one.
            // The pod's eth0 holds the pod address (as in a pod) and the link to Lattice, the
            // address Lattice sees as the client (and maps to the cluster's VPC).
            ip(&format!(
                "-n {ns} link add eth0 type veth peer name {peer} netns {lattice}"
            ))?;
            ip(&format!("-n {ns} addr add {POD_IP}/16 dev eth0"))?;
            ip(&format!("-n {ns} addr add {}/30 dev eth0", c.link_ip()))?;
            ip(&format!("-n {ns} link set eth0 up"))?;
            ip(&format!(
                "-n {lattice} addr add {}/30 dev {peer}",
                c.lattice_link_ip()
            ))?;
            ip(&format!("-n {lattice} link set {peer} up"))?;
            ip(&format!(
                "-n {ns} route add 169.254.171.0/24 via {} src {}",
                c.lattice_link_ip(),
                c.link_ip()
            ))?;

            let dir = PathBuf::from("/etc/netns").join(&ns);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let mut hosts =
                String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
            for s in CLUSTERS {
                let _ = writeln!(hosts, "{}\t{}", s.service_ip(), s.host());
            }
            write_file(&dir.join("hosts"), &hosts, 0o644)?;
        }
        Ok(())
    }

    fn cgroups(&self) -> Result<()> {
        let mut dirs = vec![self.names.node_cgroup()];
        if self.settings.mode == Mode::Config {
            step(&format!(
                "creating cgroups under {} (clusterN/app is enrolled in the redirector)",
                self.names.cgroup_root().display()
            ));
            for c in CLUSTERS {
                dirs.push(self.names.cgroup(c, "app"));
                dirs.push(self.names.cgroup(c, "proxy"));
            }
        } else {
            step(&format!(
                "creating the demo's cgroup subtree {} (node/ for the node's processes; each \
                 cluster's kubelet makes its own tree under clusterN/)",
                self.names.cgroup_root().display()
            ));
        }
        for d in dirs {
            std::fs::create_dir_all(&d)
                .with_context(|| format!("creating cgroup {}", d.display()))?;
        }
        Ok(())
    }

    /// Starts `cmd` in its own process group inside `cgroup`, stdout to `<name>.out` (when
    /// `stdout_file`) and stderr to `<name>.log`; returns the file to watch for readiness.
    fn spawn(
        &mut self,
        name: &str,
        mut cmd: Command,
        cgroup: &Path,
        stdout_file: bool,
    ) -> Result<PathBuf> {
        let logs = self.settings.state_dir.join("logs");
        let log = logs.join(format!("{name}.log"));
        let err =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let watched = if stdout_file {
            let out_path = logs.join(format!("{name}.out"));
            let out = std::fs::File::create(&out_path)
                .with_context(|| format!("creating {}", out_path.display()))?;
            cmd.stdout(out);
            out_path
        } else {
            cmd.stdout(err.try_clone()?);
            log.clone()
        };
        cmd.stderr(err).stdin(Stdio::null());
        enter_cgroup_on_exec(&mut cmd, cgroup)?;
        // Its own process group: a Ctrl-C in the terminal reaches only the demo, which then
        // stops everything in order (and with --keep, the processes outlive the demo).
        cmd.process_group(0);
        let shown = format!("{cmd:?}");
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}: {shown}"))?;
        self.children.push((name.to_owned(), child, log.clone()));
        Ok(watched)
    }

    /// Waits until `file` contains `needle`, failing early when the process named `name` exits.
    fn wait_for(&mut self, name: &str, file: &Path, needle: &str) -> Result<()> {
        self.wait_for_line(name, file, &[needle]).map(|_| ())
    }

    /// Waits until a line of `file` contains every one of `needles` and returns that line,
    /// failing early when a process of the scenario exits.
    fn wait_for_line(&mut self, name: &str, file: &Path, needles: &[&str]) -> Result<String> {
        let start = Instant::now();
        loop {
            check_interrupted()?;
            let text = std::fs::read_to_string(file).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return Ok(line.to_owned());
            }
            self.check_children()?;
            if start.elapsed() > READY_TIMEOUT {
                bail!(
                    "{name} did not get there within {}s (waited for a line with '{}' in {}):\n{}",
                    READY_TIMEOUT.as_secs(),
                    needles.join("' and '"),
                    file.display(),
                    tail(file)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn check_children(&mut self) -> Result<()> {
        for (name, child, log) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{name} exited with {status}; its log {}:\n{}",
                    log.display(),
                    tail(log)
                );
            }
        }
        Ok(())
    }

    /// Waits for the proxy's /readyz (credentials fetched from the Pod Identity agent).
    fn wait_ready(&mut self, c: Cluster) -> Result<()> {
        step(&format!(
            "waiting for lattice-proxy in {} to be ready (http://{PROXY_ADMIN}/readyz)",
            self.names.netns(c)
        ));
        let start = Instant::now();
        loop {
            check_interrupted()?;
            let ok = Command::new("ip")
                .args(["netns", "exec", &self.names.netns(c)])
                .args(["curl", "-sf", "-o", "/dev/null", "--max-time", "2"])
                .arg(format!("http://{PROXY_ADMIN}/readyz"))
                .stdin(Stdio::null())
                .status()
                .context("cannot run `ip netns exec ... curl`")?
                .success();
            if ok {
                return Ok(());
            }
            self.check_children()?;
            if start.elapsed() > READY_TIMEOUT {
                let log = self
                    .settings
                    .state_dir
                    .join(format!("logs/{}-proxy.log", c.name()));
                bail!(
                    "lattice-proxy in {} was not ready within {}s; its log {}:\n{}",
                    self.names.netns(c),
                    READY_TIMEOUT.as_secs(),
                    log.display(),
                    tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The shell line that runs `curl` as the app of cluster `from` would: in its cgroup
    /// (before entering the namespace, since `ip netns exec` remounts /sys), in its network
    /// namespace with its hosts file, as uid/gid 1000.
    pub fn curl_command(&self, from: Cluster, url: &str) -> String {
        format!(
            "sh -c 'echo $$ > {}/cgroup.procs; exec ip netns exec {} setpriv --reuid {APP_GID} \
             --regid {APP_GID} --clear-groups curl -sS {url}'",
            self.app_cgroup(from).display(),
            self.names.netns(from)
        )
    }

    /// Runs `curl` as the app of `from` (its cgroup, netns, uid/gid), printing the command
    /// and the answer; returns whether curl succeeded and its output (or error).
    fn curl_as_app(&self, from: Cluster, url: &str) -> Result<(bool, String)> {
        let curl = ["curl", "-sS", "--max-time", "30", url];
        println!("$ {}", curl.join(" "));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.names.netns(from)]);
        as_user(&mut cmd, APP_GID);
        cmd.args(curl).stdin(Stdio::null());
        enter_cgroup_on_exec(&mut cmd, &self.app_cgroup(from))?;
        let out = cmd.output().context("cannot run curl")?;
        let mut output = String::from_utf8_lossy(&out.stdout).trim_end().to_owned();
        if !out.status.success() {
            let _ = write!(
                output,
                "{}curl failed ({}): {}",
                if output.is_empty() { "" } else { "\n" },
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        println!("{output}");
        Ok((out.status.success(), output))
    }

    /// Runs the seed's four calls from the app side and returns their results, printing each
    /// command and response as it goes.
    pub fn run_checks(&mut self) -> Result<Vec<Check>> {
        let mut checks = Vec::new();
        for from in CLUSTERS {
            for to in [from.other(), from] {
                check_interrupted()?;
                let url = format!("http://{}/", to.host());
                let expect = if to == from {
                    Expect::Denied
                } else {
                    Expect::Allowed
                };
                println!();
                println!(
                    "# {} app (gid {APP_GID}, netns {}) -> {}",
                    from.name(),
                    self.names.netns(from),
                    to.host()
                );
                let (success, output) = self.curl_as_app(from, &url)?;
                let ok = success
                    && match expect {
                        Expect::Allowed => {
                            output.ends_with(&format!("): Hello from {}", to.version()))
                        }
                        // Denied by the policy, not for lack of a signature: Lattice names
                        // the caller's role, which only a signed request carries.
                        Expect::Denied => {
                            output.starts_with("AccessDeniedException")
                                && output.contains(&format!("assumed-role/{}/", from.role_name()))
                        }
                        Expect::NotRedirected => false,
                    };
                let check = Check {
                    from,
                    to,
                    expect,
                    command: self.curl_command(from, &url),
                    output,
                    ok,
                    detail: String::new(),
                };
                println!(
                    "{} expected: {}",
                    if ok { "[ok]" } else { "[MISMATCH]" },
                    check.expected_text()
                );
                checks.push(check);
            }
        }
        Ok(checks)
    }

    /// The Kubernetes variant's fifth check: deletes cluster1's pod from its API server,
    /// waits for its agent's "pod unenrolled", then calls demo-cluster2 (allowed a moment
    /// ago) from that app's cgroup, which is left in place: the connect is not redirected,
    /// the request reaches Lattice unsigned, and Lattice refuses `User: anonymous`; the
    /// agent's counters show the connect was seen and skipped as not enrolled.
    pub fn run_unenroll_check(&mut self) -> Result<Check> {
        let (from, to) = (CLUSTERS[0], CLUSTERS[1]);
        let k = self.kube_cluster_mut(from)?;
        let (pod, api, log, admin) = (
            k.pod.clone().context("the pod is not started")?,
            k.api.clone().context("the API server is not started")?,
            k.agent_log.clone(),
            k.agent_admin
                .context("the agent's admin address is not in its log")?,
        );
        let before = agent_counters(admin)?;
        step(&format!(
            "deleting pod {}/{} from {}'s API server (as `kubectl delete pod` ends)",
            pod.namespace,
            pod.name,
            from.name()
        ));
        if !api.delete(&pod.namespace, &pod.name)? {
            bail!(
                "pod {}/{} was not in the API server",
                pod.namespace,
                pod.name
            );
        }
        let key = format!("pod={}/{}", pod.namespace, pod.name);
        let agent = format!("{}'s lattice-redirector", from.name());
        let line = self.wait_for_line(&agent, &log, &["pod unenrolled: deleted", &key])?;
        eprintln!("      {}", log_message(&line));

        let url = format!("http://{}/", to.host());
        println!();
        println!(
            "# {} app (gid {APP_GID}, netns {}), its pod deleted from the API server and \
             unenrolled (its processes and cgroup left in place to show it) -> {}",
            from.name(),
            self.names.netns(from),
            to.host()
        );
        let (success, output) = self.curl_as_app(from, &url)?;
        let after = agent_counters(admin)?;
        let detail = format!(
            "{}'s agent: redirected {} -> {}, skip_not_enrolled {} -> {}",
            from.name(),
            before.0,
            after.0,
            before.1,
            after.1
        );
        let ok = success
            && output.starts_with("AccessDeniedException: User: anonymous is not authorized")
            && after.0 == before.0
            && after.1 > before.1;
        let check = Check {
            from,
            to,
            expect: Expect::NotRedirected,
            command: self.curl_command(from, &url),
            output,
            ok,
            detail,
        };
        println!(
            "{} expected: {} ({})",
            if ok { "[ok]" } else { "[MISMATCH]" },
            check.expected_text(),
            check.detail
        );
        Ok(check)
    }

    /// How to try more by hand and how to tear down (printed by `--keep`).
    pub fn manual(&self, down_command: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "Everything is still running. Try more by hand, e.g.:");
        for from in CLUSTERS {
            for to in CLUSTERS {
                let _ = writeln!(
                    s,
                    "  {}",
                    self.curl_command(from, &format!("http://{}/", to.host()))
                );
            }
        }
        let _ = writeln!(
            s,
            "  ip netns exec {} curl -sS http://{}/   # not enrolled (root, not in the app \
             cgroup): unsigned, Lattice answers `User: anonymous`",
            self.names.netns(CLUSTERS[0]),
            CLUSTERS[1].host()
        );
        let _ = writeln!(
            s,
            "  ip netns exec {} curl -s http://{PROXY_ADMIN}/metrics   # the proxy's metrics",
            self.names.netns(CLUSTERS[0])
        );
        if self.kube.is_empty() {
            let _ = writeln!(
                s,
                "  {} --pin-dir {} status   # what the redirector attached",
                self.settings.bins.redirector.display(),
                self.names.pin_dir().display()
            );
        }
        for (c, k) in CLUSTERS.iter().zip(&self.kube) {
            let api = k.api.as_ref().map(|a| a.url()).unwrap_or_default();
            let _ = writeln!(s, "  # {} (node {}):", c.name(), c.node_name());
            let _ = writeln!(
                s,
                "  curl -sS -H 'Authorization: Bearer {}' '{}/api/v1/pods?fieldSelector=spec.\
                 nodeName={}'   # the pods its agent watches (kubeconfig: {})",
                crate::kube_api::TOKEN,
                k.api_url,
                c.node_name(),
                self.settings
                    .state_dir
                    .join(c.name())
                    .join("api/kubeconfig")
                    .display()
            );
            let _ = writeln!(
                s,
                "  curl -sS -X DELETE {api}/api/v1/namespaces/{}/pods/{}   # delete the pod",
                k.request.namespace, k.request.name
            );
            let _ = writeln!(
                s,
                "  curl -sS -X POST --data-binary @{} {api}/api/v1/namespaces/{}/pods   # \
                 (re)create it",
                self.settings
                    .state_dir
                    .join(c.name())
                    .join("pod.json")
                    .display(),
                k.request.namespace
            );
            if let Some(admin) = k.agent_admin {
                let _ = writeln!(
                    s,
                    "  curl -s http://{admin}/metrics | grep -e pods -e connects   # its agent"
                );
            }
            let _ = writeln!(
                s,
                "  {} --pin-dir {} status   # what its agent attached and enrolled",
                self.settings.bins.redirector.display(),
                self.names.cluster_pin_dir(*c).display()
            );
        }
        if !self.kube.is_empty() {
            let _ = writeln!(
                s,
                "(cluster1's pod was deleted by the fifth check: its app is not redirected \
                 until the pod is created again; the agents' logs are logs/clusterN-redirector.log)"
            );
        }
        let _ = writeln!(
            s,
            "Configuration and logs: {} (lattice-emulator.json, logs/)",
            self.settings.state_dir.display()
        );
        let _ = writeln!(s, "Tear everything down with: {down_command}");
        s
    }
}

/// The agent's `redirected` and `skip_not_enrolled` connect counters, from its /metrics.
fn agent_counters(admin: SocketAddr) -> Result<(u64, u64)> {
    let (status, text) = kube::http_request(admin, "GET", "/metrics", "")?;
    if status != 200 {
        bail!("the agent's /metrics answered {status}");
    }
    let get = |result: &str| {
        kube::metric(
            &text,
            &format!("lattice_redirector_connects_total{{result=\"{result}\"}}"),
        )
        .unwrap_or(0)
    };
    Ok((get("redirected"), get("skip_not_enrolled")))
}

/// A tracing log line without its timestamp and level (for quoting the agent).
/// The pod's init containers (native sidecars marked) and containers, for the steps.
fn container_names(pod: &serde_json::Value) -> String {
    let names = |list: &str, sidecar: bool| -> Vec<String> {
        pod["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let name = c["name"].as_str()?;
                Some(if sidecar && c["restartPolicy"] == "Always" {
                    format!("{name} (native sidecar)")
                } else {
                    name.to_owned()
                })
            })
            .collect()
    };
    let mut all = names("initContainers", true);
    all.extend(names("containers", false));
    all.join(", ")
}

fn log_message(line: &str) -> &str {
    line.find(": ")
        .map(|i| &line[i + 2..])
        .unwrap_or(line)
        .trim()
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Drop for Scenario {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        step(&format!(
            "tearing down {} (processes, redirector pins, cgroups, namespaces)",
            self.names.prefix
        ));
        match teardown(&self.names, Some(&self.settings.bins.redirector)) {
            Ok(()) => step(&format!(
                "torn down: no process, namespace, cgroup or pin of '{}' is left (logs stay \
                 in {})",
                self.names.prefix,
                self.settings.state_dir.join("logs").display()
            )),
            Err(e) => eprintln!("warning: teardown incomplete: {e:#}"),
        }
        for (_, child, _) in &mut self.children {
            let _ = child.try_wait();
        }
        if let Some((_file, path)) = self.lock.take() {
            // Nothing of ours is left: a run starting now may create and lock a new file.
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Removes everything a scenario with these names may have left: stops its processes (all of
/// them live in its cgroup subtree), uninstalls the redirector's pins, removes the cgroups,
/// the network namespaces and their `/etc/netns` files. Missing pieces are skipped, so it is
/// safe to run at any time. `redirector` runs `uninstall` when given and present.
pub fn teardown(names: &Names, redirector: Option<&Path>) -> Result<()> {
    let mut errors: Vec<String> = Vec::new();
    let root = names.cgroup_root();

    // 1. Processes: SIGTERM, then SIGKILL what is left after a grace period.
    if root.is_dir() {
        let pids = cgroup_pids(&root);
        if !pids.is_empty() {
            step(&format!(
                "stopping {} process(es) in {}",
                pids.len(),
                root.display()
            ));
            signal_all(&pids, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !cgroup_pids(&root).is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let left = cgroup_pids(&root);
            if !left.is_empty() {
                signal_all(&left, nix::sys::signal::Signal::SIGKILL);
                let deadline = Instant::now() + Duration::from_secs(5);
                while !cgroup_pids(&root).is_empty() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    // 2. The redirectors' programs and pins: `uninstall` is the only way to detach.
    for pins in names.all_pin_dirs() {
        if !pins.exists() {
            continue;
        }
        if let Some(bin) = redirector.filter(|b| b.is_file()) {
            let out = Command::new(bin)
                .arg("--pin-dir")
                .arg(&pins)
                .arg("uninstall")
                .output();
            // A run killed while the agent was installing leaves a partial layout that
            // `uninstall` may refuse; removing the pins below still detaches everything.
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "warning: {} --pin-dir {} uninstall failed ({}); removing the pins directly",
                    bin.display(),
                    pins.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => eprintln!(
                    "warning: cannot run {} ({e}); removing the pins directly",
                    bin.display()
                ),
            }
        }
        // Unpinning the links detaches them once no process holds them (all are stopped).
        if pins.exists() {
            if let Err(e) = std::fs::remove_dir_all(&pins) {
                errors.push(format!("removing {}: {e}", pins.display()));
            }
        }
    }

    // 3. Cgroups, leaves first.
    if root.is_dir() {
        let mut dirs = Vec::new();
        collect_dirs(&root, &mut dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            // A process that was just killed may still be leaving the cgroup (EBUSY).
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match std::fs::remove_dir(&d) {
                    Ok(()) => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(e) => {
                        errors.push(format!("removing cgroup {}: {e}", d.display()));
                        break;
                    }
                }
            }
        }
    }

    // 4. Network namespaces and their files.
    for ns in names.all_netns() {
        if Path::new("/run/netns").join(&ns).exists() {
            if let Err(e) = ip(&format!("netns delete {ns}")) {
                errors.push(format!("{e:#}"));
            }
        }
        let etc = PathBuf::from("/etc/netns").join(&ns);
        if etc.exists() {
            if let Err(e) = std::fs::remove_dir_all(&etc) {
                errors.push(format!("removing {}: {e}", etc.display()));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{}", errors.join("; "))
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_owned());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

fn cgroup_pids(root: &Path) -> Vec<i32> {
    let mut dirs = Vec::new();
    collect_dirs(root, &mut dirs);
    dirs.iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

fn signal_all(pids: &[i32], signal: nix::sys::signal::Signal) {
    for pid in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), signal);
    }
}

/// Checks what the scenario needs before touching anything.
fn preflight(settings: &Settings) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the demo scenario needs root (network namespaces, cgroups, bpffs, eBPF); \
             run it with sudo"
        );
    }
    for tool in ["ip", "setpriv", "curl", "mount"] {
        if !on_path(tool) {
            bail!(
                "`{tool}` is not on PATH; install it (Debian: apt-get install iproute2 \
                 util-linux curl mount)"
            );
        }
    }
    if let Mode::Kubernetes { deploy_dir } = &settings.mode {
        if !on_path("kubectl") {
            bail!(
                "`kubectl` is not on PATH: the Kubernetes demo renders deploy/ with `kubectl \
                 kustomize` (kubectl 1.27 or newer)"
            );
        }
        if !deploy_dir.join("kustomization.yaml").is_file() {
            bail!(
                "{} is not the project's deploy/ directory (no kustomization.yaml)",
                deploy_dir.display()
            );
        }
    }
    if let Some(parent) = settings.state_dir.parent() {
        reachable_by_others(parent, 0o001).with_context(|| {
            format!(
                "uid {PROXY_GID} cannot reach the state directory {}; choose one under a \
                 world-searchable directory",
                settings.state_dir.display()
            )
        })?;
    }
    Ok(())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Fails unless `path` has the `mode` bits for others and every ancestor is searchable.
pub fn reachable_by_others(path: &Path, mode: u32) -> Result<()> {
    let path = std::fs::canonicalize(path).with_context(|| format!("{}", path.display()))?;
    let m = std::fs::metadata(&path)?.permissions().mode();
    if m & mode != mode {
        bail!("{} has mode {:o}", path.display(), m & 0o777);
    }
    for dir in path.ancestors().skip(1) {
        let m = std::fs::metadata(dir)?.permissions().mode();
        if m & 0o001 == 0 {
            bail!(
                "{} has mode {:o} (others cannot enter it)",
                dir.display(),
                m & 0o777
            );
        }
    }
    Ok(())
}

fn prepare_state_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("creating {}", dir.display()))?;
    set_mode(dir, 0o755)?;
    set_mode(&dir.join("logs"), 0o755)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    set_mode(path, mode)
}

fn wait_file(path: &Path) -> Result<()> {
    let start = Instant::now();
    while !path.is_file() {
        check_interrupted()?;
        if start.elapsed() > READY_TIMEOUT {
            bail!("{} was not written", path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The last lines of a log, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(20);
    lines[from..].join("\n")
}

/// Runs `ip` with the arguments of `line` (split on whitespace; names never contain any).
fn ip(line: &str) -> Result<()> {
    run(Command::new("ip").args(line.split_whitespace()))
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Appends `setpriv` switching to uid and gid `id` with no supplementary groups.
fn as_user(cmd: &mut Command, id: u32) {
    cmd.args([
        "setpriv",
        "--reuid",
        &id.to_string(),
        "--regid",
        &id.to_string(),
        "--clear-groups",
    ]);
}

/// Moves the child into `cgroup` between fork and exec, before `ip netns exec` remounts
/// /sys: a process's cgroup is inherited, so everything it starts stays there.
fn enter_cgroup_on_exec(cmd: &mut Command, cgroup: &Path) -> Result<()> {
    let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes())
        .context("cgroup path with a NUL byte")?;
    // SAFETY: only async-signal-safe calls (open, write, close) on memory prepared before fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0" moves the writing process itself.
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if n != 1 {
                return Err(err);
            }
            Ok(())
        });
    }
    Ok(())
}

/// The token each cluster's Pod Identity agent expects (the content of the projected token).
fn agent_token(c: Cluster) -> String {
    format!("{}-eks-pod-identity-token", c.name())
}

/// The uid of each cluster's pod in [`Mode::Config`] (a fresh one per run in the Kubernetes
/// variant).
fn config_pod_uid(c: Cluster) -> &'static str {
    match c.n {
        1 => "6f1c7d0e-1111-4a2b-8c3d-0a1b2c3d4e5f",
        _ => "9a8b7c6d-2222-4e5f-9a0b-4e5f6a7b8c9d",
    }
}

/// The emulator's configuration: two services with the seed's IAM auth policies, targets in
/// the cluster namespaces, listeners and Pod Identity agents inside the namespaces; the
/// session tags of each cluster's credentials name its pod (`pods`, in [`CLUSTERS`] order).
pub fn emulator_config(names: &Names, ca_out: &Path, pods: &[PodRef; 2]) -> serde_json::Value {
    use serde_json::json;
    let netns = |ns: String| format!("/run/netns/{ns}");
    let lattice = netns(names.lattice_netns());
    let policy = |allowed: Cluster| {
        json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": "*",
                "Action": "vpc-lattice-svcs:Invoke",
                "Resource": "*",
                "Condition": {"StringEquals": {
                    "aws:PrincipalTag/eks-cluster-name": allowed.eks_cluster(),
                    "aws:PrincipalTag/kubernetes-namespace": "apps"
                }}
            }]
        })
    };
    let pod = |c: Cluster| &pods[usize::from(c.n) - 1];
    json!({
        "listeners": [
            {"address": "0.0.0.0:443", "protocol": "https", "netns": lattice},
            {"address": "0.0.0.0:80", "protocol": "http", "netns": lattice}
        ],
        "ca_cert_out": ca_out,
        "pod_identity_agents": CLUSTERS.iter().map(|c| json!({
            "address": format!("{POD_IDENTITY_ADDR}:80"),
            "token": agent_token(*c),
            "access_key_id": c.access_key_id(),
            "netns": netns(names.netns(*c)),
        })).collect::<Vec<_>>(),
        "emulator": {
            "region": REGION,
            "account_id": ACCOUNT_ID,
            "service_network": {"id": "sn-0e1a7c0de0e1a7c0d", "name": "app-services-network"},
            "tls_names": ["*.example.com"],
            "source_vpcs": CLUSTERS.iter().map(|c| json!({
                "id": c.vpc_id(),
                "cidrs": [format!("100.64.{}.0/30", c.n)],
            })).collect::<Vec<_>>(),
            "credentials": CLUSTERS.iter().map(|c| json!({
                "access_key_id": c.access_key_id(),
                "secret_access_key": format!("{}-secret-access-key", c.name()),
                "session_token": format!("{}-session-token", c.name()),
                "role_name": c.role_name(),
                "session_name": format!("eks-{}-{}", c.eks_cluster(), pod(*c).name),
                "tags": {
                    "eks-cluster-name": c.eks_cluster(),
                    "kubernetes-namespace": "apps",
                    "kubernetes-service-account": "default",
                    "kubernetes-pod-name": pod(*c).name,
                    "kubernetes-pod-uid": pod(*c).uid,
                },
                "expires_in_secs": 21600,
            })).collect::<Vec<_>>(),
            "services": CLUSTERS.iter().map(|c| json!({
                "name": c.service(),
                "id": format!("svc-0d3e0c1a55e10000{}", c.n),
                "hosts": [c.host()],
                "auth_type": "AWS_IAM",
                "auth_policy": policy(c.other()),
                "routes": [{"path_prefix": "/", "target_group": c.version()}],
            })).collect::<Vec<_>>(),
            "target_groups": CLUSTERS.iter().map(|c| json!({
                "name": c.version(),
                "targets": [{
                    "address": format!("{POD_IP}:{APP_PORT}"),
                    "netns": netns(names.netns(*c)),
                }],
            })).collect::<Vec<_>>(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileConfig;

    fn names() -> Names {
        Names {
            prefix: "le-unit".into(),
            cgroup2: PathBuf::from("/sys/fs/cgroup/unified"),
        }
    }

    #[test]
    fn the_generated_emulator_configuration_is_valid_and_says_what_the_demo_needs() {
        let pods = CLUSTERS.map(|c| PodRef {
            name: c.pod_name(),
            uid: config_pod_uid(c).to_owned(),
        });
        let mut value = emulator_config(&names(), Path::new("/tmp/ca.pem"), &pods);
        // The targets' namespaces exist only while the scenario runs; the loader checks them.
        for (c, tg) in CLUSTERS.iter().zip(
            value["emulator"]["target_groups"]
                .as_array_mut()
                .unwrap()
                .iter_mut(),
        ) {
            let target = &mut tg["targets"][0];
            assert_eq!(target["address"], "10.0.0.10:8090");
            let netns = target.as_object_mut().unwrap().remove("netns").unwrap();
            assert_eq!(netns, format!("/run/netns/le-unit-{}", c.name()));
        }
        let file: FileConfig = serde_json::from_value(value).expect("the emulator's file format");
        let model = file
            .emulator
            .compile(None, std::time::SystemTime::now())
            .unwrap_or_else(|e| panic!("{e}"));
        for c in CLUSTERS {
            let service = model
                .service_for_host(&c.host())
                .expect("a service per cluster");
            assert_eq!(service.name, c.service());
            assert!(
                service.policy.is_some(),
                "{} has the seed's policy",
                c.service()
            );
            let vpc = model
                .source_vpc(c.link_ip().parse().unwrap())
                .expect("the cluster's link is in its VPC");
            assert_eq!(vpc.id, c.vpc_id());
            let key = model.registry.get(&c.access_key_id()).expect("agent's key");
            assert_eq!(key.access_key_id, c.access_key_id());
        }
        let agents: Vec<_> = file
            .pod_identity_agents
            .iter()
            .map(|a| a.netns.clone().unwrap())
            .collect();
        assert_eq!(
            agents,
            [
                PathBuf::from("/run/netns/le-unit-cluster1"),
                PathBuf::from("/run/netns/le-unit-cluster2")
            ]
        );
    }

    #[test]
    fn names_derive_from_the_prefix() {
        let n = names();
        assert_eq!(
            n.all_netns(),
            ["le-unit-cluster1", "le-unit-cluster2", "le-unit-lattice"]
        );
        assert_eq!(
            n.cgroup(CLUSTERS[1], "app"),
            PathBuf::from("/sys/fs/cgroup/unified/le-unit/cluster2/app")
        );
        assert_eq!(n.pin_dir(), PathBuf::from("/sys/fs/bpf/le-unit"));
        assert_eq!(
            n.all_pin_dirs(),
            [
                PathBuf::from("/sys/fs/bpf/le-unit"),
                PathBuf::from("/sys/fs/bpf/le-unit-cluster1"),
                PathBuf::from("/sys/fs/bpf/le-unit-cluster2"),
            ]
        );
        assert_eq!(
            n.kubelet_root(CLUSTERS[0]),
            PathBuf::from("/sys/fs/cgroup/unified/le-unit/cluster1")
        );
        for bad in ["", "a/b", "../x", "has space", "x".repeat(25).as_str()] {
            let e = Names::new(bad).unwrap_err().to_string();
            assert!(e.contains("prefix"), "{bad:?}: {e}");
        }
    }
}
