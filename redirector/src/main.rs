//! lattice-redirector: command line of the node agent.

use clap::{Args, Parser, Subcommand, ValueEnum};
use lattice_redirector::{
    agent, config, doctor, enroll::Enrollment, host, install, maps::Maps, maps::Source, status,
    Error,
};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "lattice-redirector",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("LATTICE_EGRESS_REVISION"), ")"),
    about = "Redirects connects toward VPC Lattice from enrolled cgroups to the local lattice-proxy with eBPF",
    after_help = "Exit status: 0 done (for `run`: stopped by SIGTERM or SIGINT, programs left \
                  attached); 1 a failure the error line names (the host, the kernel, a pin); \
                  2 a malformed command line; 64 an invalid configuration (a flag, variable, \
                  file key or cgroup path): restarting will not help."
)]
struct Cli {
    /// Where bpffs is (or gets) mounted.
    #[arg(
        long,
        global = true,
        env = "LATTICE_REDIRECTOR_BPFFS",
        default_value = "/sys/fs/bpf"
    )]
    bpffs: PathBuf,
    /// Pin directory (default: <bpffs>/lattice-egress/v<layout version>); must be on bpffs.
    #[arg(long, global = true, env = "LATTICE_REDIRECTOR_PIN_DIR")]
    pin_dir: Option<PathBuf>,
    /// The node's cgroup2 root [default: the cgroup2 mount in /proc/self/mounts]. In a
    /// container, mount the node's root by hostPath and name it here: the container's own
    /// /sys/fs/cgroup is its cgroup namespace, not the node's.
    #[arg(long, global = true, env = "LATTICE_REDIRECTOR_CGROUP_ROOT")]
    cgroup_root: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, env = "LATTICE_REDIRECTOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Attach (or adopt) the programs and keep the maps in line with the configuration.
    Run(Box<RunArgs>),
    /// Show what is attached, what is enrolled and the counters.
    Status,
    /// Check the kernel and the host, one line per check.
    Doctor,
    /// Enroll a cgroup (path under the cgroup2 mount) into the running installation.
    Enroll { cgroup: PathBuf },
    /// Remove a cgroup's enrollment.
    Unenroll { cgroup: PathBuf },
    /// Detach every program and remove every pin (the only command that stops redirection).
    Uninstall,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// TOML configuration file; reloaded on SIGHUP and when it changes.
    #[arg(long, env = "LATTICE_REDIRECTOR_CONFIG")]
    config: Option<PathBuf>,
    /// Destination prefixes to redirect [default: 169.254.171.0/24,fd00:ec2:80::/64].
    #[arg(
        long = "prefix",
        env = "LATTICE_REDIRECTOR_PREFIXES",
        value_delimiter = ','
    )]
    prefixes: Option<Vec<String>>,
    /// Destination ports to redirect [default: 80].
    #[arg(long = "port", env = "LATTICE_REDIRECTOR_PORTS", value_delimiter = ',')]
    ports: Option<Vec<String>>,
    /// Redirect only these GIDs [default: 1000].
    #[arg(
        long = "redirect-gid",
        env = "LATTICE_REDIRECTOR_REDIRECT_GIDS",
        value_delimiter = ','
    )]
    redirect_gids: Option<Vec<String>>,
    /// Redirect all GIDs except these (instead of --redirect-gid).
    #[arg(
        long = "exempt-gid",
        env = "LATTICE_REDIRECTOR_EXEMPT_GIDS",
        value_delimiter = ','
    )]
    exempt_gids: Option<Vec<String>>,
    /// IPv4 address of the proxy [default: 127.0.0.1].
    #[arg(long, env = "LATTICE_REDIRECTOR_PROXY_V4")]
    proxy_v4: Option<String>,
    /// IPv6 address of the proxy [default: ::1].
    #[arg(long, env = "LATTICE_REDIRECTOR_PROXY_V6")]
    proxy_v6: Option<String>,
    /// Port of the proxy [default: 15001].
    #[arg(long, env = "LATTICE_REDIRECTOR_PROXY_PORT")]
    proxy_port: Option<String>,
    /// GID of the proxy, never redirected, or `none` [default: 1337].
    #[arg(long, env = "LATTICE_REDIRECTOR_PROXY_GID")]
    proxy_gid: Option<String>,
    /// Port of the redirect check, or `off` [default: 15009]: a connect to loopback on it
    /// from an enrolled cgroup reaches the proxy whatever the GID (the proxy's readiness
    /// uses it to learn that its pod is redirected).
    #[arg(long, env = "LATTICE_REDIRECTOR_CANARY_PORT")]
    canary_port: Option<String>,
    /// Log every redirected connect.
    #[arg(long, env = "LATTICE_REDIRECTOR_LOG_REDIRECTS")]
    log_redirects: bool,
    /// Cgroups to enroll (paths under the cgroup2 mount, or absolute).
    #[arg(
        long = "cgroup",
        env = "LATTICE_REDIRECTOR_CGROUPS",
        value_delimiter = ','
    )]
    cgroups: Option<Vec<PathBuf>>,
    /// Cgroup to attach the programs to [default: the cgroup2 root].
    #[arg(long, env = "LATTICE_REDIRECTOR_ATTACH_CGROUP")]
    attach_cgroup: Option<PathBuf>,
    /// Address of /healthz and /metrics.
    #[arg(long, env = "LATTICE_REDIRECTOR_ADMIN_ADDR", default_value = config::defaults::METRICS_ADDR)]
    admin_addr: String,
    /// Kubernetes mode: watch the pods of this node (--node-name) and enroll the selected
    /// ones (in-cluster service account, or KUBECONFIG).
    #[arg(long, env = "LATTICE_REDIRECTOR_KUBERNETES")]
    kubernetes: bool,
    /// This node's name, for --kubernetes (set NODE_NAME from the downward API's
    /// spec.nodeName; never the hostname).
    #[arg(long, env = "NODE_NAME", default_value = "")]
    node_name: String,
    /// kubelet's cgroupRoot, for --kubernetes: the directory under --cgroup-root that holds
    /// kubepods.slice (systemd driver) or kubepods (cgroupfs driver).
    #[arg(
        long,
        env = "LATTICE_REDIRECTOR_KUBELET_CGROUP_ROOT",
        default_value = "/"
    )]
    kubelet_cgroup_root: PathBuf,
    /// Seconds between checks of the configuration file for changes, and of the pins (a
    /// pin removed under the running agent is put back).
    #[arg(long, env = "LATTICE_REDIRECTOR_RELOAD_INTERVAL", default_value_t = 5)]
    reload_interval: u64,
}

fn cgroup_root(cli: &Cli) -> lattice_redirector::Result<PathBuf> {
    match &cli.cgroup_root {
        Some(root) => Ok(root.clone()),
        None => host::cgroup2_mount(),
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        // Fields at the top level, as lattice-proxy writes them.
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn layout(cli: &Cli) -> install::Layout {
    match &cli.pin_dir {
        Some(dir) => install::Layout { root: dir.clone() },
        None => install::Layout::under_bpffs(&cli.bpffs),
    }
}

fn exit_code(e: &Error) -> ExitCode {
    match e {
        // EX_USAGE, as for other configuration mistakes.
        Error::Config { .. } => ExitCode::from(64),
        _ => ExitCode::FAILURE,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = cli.log_format;
    init_tracing(log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line, each cause once; in JSON mode a log line like every other.
            let line = lattice_redirector::error::chain(&e);
            match log_format {
                LogFormat::Json => tracing::error!("{line}"),
                LogFormat::Text => eprintln!("lattice-redirector: error: {line}"),
            }
            exit_code(&e)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Error> {
    let layout = layout(&cli);
    match &cli.command {
        Command::Run(args) => {
            let opts = agent::Options {
                config_file: args.config.clone(),
                overrides: config::Overrides {
                    prefixes: args.prefixes.clone(),
                    ports: args.ports.clone(),
                    redirect_gids: args.redirect_gids.clone(),
                    exempt_gids: args.exempt_gids.clone(),
                    proxy_v4: args.proxy_v4.clone(),
                    proxy_v6: args.proxy_v6.clone(),
                    proxy_port: args.proxy_port.clone(),
                    proxy_gid: args.proxy_gid.clone(),
                    canary_port: args.canary_port.clone(),
                    log_redirects: args.log_redirects.then_some(true),
                    cgroups: args.cgroups.clone(),
                },
                attach_cgroup: args.attach_cgroup.clone(),
                bpffs: cli.bpffs.clone(),
                pin_dir: cli.pin_dir.clone(),
                admin_addr: args.admin_addr.clone(),
                reload_interval: Duration::from_secs(args.reload_interval.max(1)),
                cgroup_root: cli.cgroup_root.clone(),
                kubernetes: args.kubernetes.then(|| agent::Kubernetes {
                    node_name: args.node_name.clone(),
                    kubelet_root: args.kubelet_cgroup_root.clone(),
                    pod_uid: std::env::var("POD_UID").ok().filter(|u| !u.is_empty()),
                }),
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(Error::io("tokio runtime"))?;
            rt.block_on(agent::run(opts))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status => {
            print!("{}", status::report(&layout, &cgroup_root(&cli)?)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor => {
            let mut failed = 0;
            for check in doctor::run(&cli.bpffs) {
                match check.result {
                    Ok(detail) => println!("ok    {:<16} {detail}", check.name),
                    Err(why) => {
                        failed += 1;
                        println!("FAIL  {:<16} {why}", check.name);
                    }
                }
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Enroll { cgroup } | Command::Unenroll { cgroup } => {
            if !layout.exists() {
                return Err(Error::NotInstalled(layout.root.clone()));
            }
            let root = cgroup_root(&cli)?;
            let mut maps = Maps::open(&layout.maps())?;
            let mut enrollment = Enrollment::new(&mut maps, &root, Source::Command);
            if matches!(cli.command, Command::Enroll { .. }) {
                let (path, id) = enrollment.enroll(cgroup)?;
                println!("enrolled {} (cgroup id {id})", path.display());
            } else if enrollment.unenroll(cgroup)? {
                println!("unenrolled {}", cgroup.display());
            } else {
                println!("{} was not enrolled", cgroup.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Uninstall => {
            let removed = install::uninstall(&layout)?;
            println!(
                "detached {} link generation(s) and removed {}",
                removed.generations,
                layout.root.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
