//! `lattice-demo`: runs the two-cluster VPC Lattice scenario ([`lattice_tests::demo`]) with
//! the binaries next to it (`cargo xtask demo` builds them and runs this), prints the four
//! calls and their answers, and tears everything down (also on Ctrl-C or failure) unless
//! `--keep`. `--down` removes what a `--keep` run (or a crashed one) left, of either variant.
//! `--kubernetes` runs the variant whose pods come from a Kubernetes API per cluster, with
//! the agent in its Kubernetes mode, and adds a fifth check: a deleted pod is no longer
//! redirected.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::Parser;
use lattice_tests::demo::{self, Binaries, Mode, Names, Scenario, Settings, CLUSTERS};

#[derive(Debug, Parser)]
#[command(
    about = "The two-cluster VPC Lattice demo: real lattice-redirector and lattice-proxy, \
                   emulated Lattice, network namespaces and cgroups"
)]
struct Args {
    /// Leave everything running and print how to try more by hand.
    #[arg(long, conflicts_with = "down")]
    keep: bool,
    /// Only tear down what an earlier run left (after --keep or a crash), of either variant.
    #[arg(long)]
    down: bool,
    /// Pods from a (fake) Kubernetes API server per cluster, built from the rendered
    /// deploy/examples/seed Deployments and given their sidecar by lattice-injector (the
    /// admission webhook, one per cluster), kubelet-like cgroup trees (systemd driver on
    /// cluster1, cgroupfs on cluster2), one lattice-redirector per cluster started as
    /// deploy/base/daemonset.yaml starts it; adds the check that a deleted pod is no longer
    /// redirected.
    #[arg(long)]
    kubernetes: bool,
    /// The project's deploy/ directory, for --kubernetes [default: the checkout this program
    /// was built from].
    #[arg(long, requires = "kubernetes")]
    deploy_dir: Option<PathBuf>,
    /// Prefix of the namespaces, cgroups and bpffs pins.
    #[arg(long, default_value = "le-demo")]
    prefix: String,
    /// Directory holding lattice-redirector, lattice-proxy, lattice-emulator and demo-app
    /// [default: this program's directory].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Directory for the generated configuration, CA, tokens and logs (emptied first)
    /// [default: BIN_DIR/../PREFIX, e.g. target/le-demo, or $TMPDIR/PREFIX when others
    /// cannot enter BIN_DIR/..].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Shown in the --keep instructions as the way to tear down [default: this program
    /// with --down].
    #[arg(long, hide = true)]
    down_command: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("lattice-demo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Ok(true) when all the checks matched.
fn run(args: &Args) -> anyhow::Result<bool> {
    demo::install_signal_handlers()?;
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .context("cannot find this program's path")?
            .parent()
            .context("this program has no directory")?
            .to_path_buf(),
    };
    if args.down {
        let names = Names::new(&args.prefix)?;
        let (_lock, lock_path) = names.lock()?;
        eprintln!("==> tearing down '{}'", args.prefix);
        demo::teardown(&names, Some(&bin_dir.join("lattice-redirector")))?;
        let _ = std::fs::remove_file(lock_path);
        eprintln!(
            "==> done: no namespace, cgroup or pin of '{}' is left",
            args.prefix
        );
        return Ok(true);
    }
    let state_dir = match &args.state_dir {
        Some(d) => d.clone(),
        None => {
            let target = bin_dir
                .parent()
                .context("the binary directory has no parent")?;
            // The proxies (uid 1337) read their tokens there: when the build directory is
            // closed to other users (a checkout under /root), use the temporary directory.
            if lattice_tests::demo::reachable_by_others(target, 0o001).is_ok() {
                target.join(&args.prefix)
            } else {
                std::env::temp_dir().join(&args.prefix)
            }
        }
    };
    let mode = if args.kubernetes {
        Mode::Kubernetes {
            deploy_dir: args
                .deploy_dir
                .clone()
                .unwrap_or_else(demo::default_deploy_dir),
        }
    } else {
        Mode::Config
    };
    let settings = Settings {
        prefix: args.prefix.clone(),
        state_dir,
        bins: Binaries::in_dir(&bin_dir)?,
        mode,
    };
    let mut scenario = Scenario::up(settings)?;
    eprintln!("==> everything is up; the four calls of the seed, from the app side:");
    println!(
        "Each curl runs as the app would (gid {}, its {}cgroup, its network namespace): it \
         connects to the service's Lattice address 169.254.171.x:80, lattice-redirector's \
         connect4 program sends the connection to lattice-proxy on {}, which signs the \
         request with the cluster's EKS Pod Identity credentials and calls the service over \
         TLS on :443; Lattice (the emulator) checks the signature and the IAM auth policy.",
        demo::APP_GID,
        if args.kubernetes { "container's " } else { "" },
        demo::PROXY_LISTEN
    );
    if args.kubernetes {
        for c in CLUSTERS {
            if let Some(pod) = scenario.pod(c) {
                println!(
                    "{}: pod {}/{} ({}), app in {}",
                    c.name(),
                    pod.namespace,
                    pod.name,
                    pod.qos.as_str(),
                    pod.app.cgroup.display()
                );
            }
        }
    }
    let mut checks = scenario.run_checks()?;
    if args.kubernetes {
        println!();
        println!(
            "Fifth check: the pod of cluster1 is deleted from its API server; its agent \
             unenrolls the pod cgroup, so the same call as the first one is no longer \
             redirected."
        );
        checks.push(scenario.run_unenroll_check()?);
    }
    let ok = checks.iter().all(|c| c.ok);
    println!();
    if ok && args.kubernetes {
        println!("All five checks passed: the four calls gave what the IAM auth policies say (demo-cluster1 admits only eks-cluster2/apps, demo-cluster2 only eks-cluster1/apps), with every pod enrolled from the Kubernetes API, and the deleted pod's call went out unredirected and unsigned.");
    } else if ok {
        println!("All four calls gave what the IAM auth policies say: demo-cluster1 admits only eks-cluster2/apps, demo-cluster2 only eks-cluster1/apps.");
    } else {
        let bad: Vec<String> = checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{} -> {}", c.from.name(), c.to.host()))
            .collect();
        println!(
            "MISMATCH in {}; the logs are in {}",
            bad.join(", "),
            scenario.state_dir().join("logs").display()
        );
    }
    if args.keep {
        println!();
        let down = match &args.down_command {
            Some(command) => command.clone(),
            None => {
                let exe = std::env::current_exe().context("cannot find this program's path")?;
                let prefix = if args.prefix == "le-demo" {
                    String::new()
                } else {
                    format!(" --prefix {}", args.prefix)
                };
                format!("{} --down{prefix}", exe.display())
            }
        };
        print!("{}", scenario.manual(&down));
        scenario.keep();
    }
    Ok(ok)
}
