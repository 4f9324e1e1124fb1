//! `lattice-redirector run`: install or adopt the programs, write the configuration into the
//! maps, serve the admin endpoint, forward eBPF logs, reload on SIGHUP or when the file
//! changes, and exit on SIGTERM without detaching anything.

use crate::admin::{self, Shared};
use crate::config::{self, File, Overrides, Redirect};
use crate::enroll::Enrollment;
use crate::error::{Error, Result};
use crate::host;
use crate::install::{self, Layout};
use crate::kubelet;
use crate::maps::{Maps, Source};
use crate::pins;
use crate::reload::{self, Watch};
use crate::watch;
use redirector_common::programs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// Options of the agent.
#[derive(Clone, Debug)]
pub struct Options {
    /// Optional TOML configuration file, reloaded on SIGHUP and when it changes.
    pub config_file: Option<PathBuf>,
    /// Flag and environment values (they win over the file).
    pub overrides: Overrides,
    /// Cgroup the programs attach to (default: the root of the cgroup2 mount).
    pub attach_cgroup: Option<PathBuf>,
    /// The bpffs mount (mounted when missing).
    pub bpffs: PathBuf,
    /// Pin directory (default `<bpffs>/lattice-egress/v<N>`).
    pub pin_dir: Option<PathBuf>,
    /// Admin address for /healthz and /metrics.
    pub admin_addr: String,
    /// How often the configuration file is checked for changes.
    pub reload_interval: Duration,
    /// The node's cgroup2 root (default: the cgroup2 mount in /proc/self/mounts). In a
    /// container, a hostPath of the node's root: the container's own /sys/fs/cgroup is its
    /// cgroup namespace, not the node's.
    pub cgroup_root: Option<PathBuf>,
    /// Kubernetes mode: enroll the selected pods of this node.
    pub kubernetes: Option<Kubernetes>,
}

/// Options of the Kubernetes mode.
#[derive(Clone, Debug)]
pub struct Kubernetes {
    /// This node's name (from the downward API: never the hostname).
    pub node_name: String,
    /// kubelet's cgroupRoot, under the node's cgroup2 root (`/` by default, as on EKS).
    pub kubelet_root: PathBuf,
    /// The agent's own pod (POD_UID from the downward API): its cgroup, found where the
    /// layout says, confirms the layout.
    pub pod_uid: Option<String>,
}

impl Options {
    /// The pin layout these options select.
    pub fn layout(&self) -> Layout {
        match &self.pin_dir {
            Some(dir) => Layout { root: dir.clone() },
            None => Layout::under_bpffs(&self.bpffs),
        }
    }
}

/// Resolves the configuration from what one read of the file found (`None`: no file).
fn load_config(
    opts: &Options,
    read: Option<&reload::Snapshot>,
    cgroup_root: &Path,
) -> Result<Redirect> {
    let file = match (&opts.config_file, read) {
        (Some(path), Some(read)) => File::parse(path, read)?,
        _ => File::default(),
    };
    config::resolve(&file, &opts.overrides, cgroup_root)
}

fn apply(maps: &mut Maps, cfg: &Redirect, cgroup_root: &Path) -> Result<()> {
    maps.apply(cfg)?;
    Enrollment::new(maps, cgroup_root, Source::Config).sync(&cfg.cgroups)
}

/// Checks the Kubernetes options and builds the API client (in-cluster, or KUBECONFIG)
/// before anything is attached. The client does not connect here: an API server that is
/// unreachable now is retried by the watch.
async fn kubernetes_client(k: &Kubernetes, cgroup_root: &Path) -> Result<kube::Client> {
    if k.node_name.trim().is_empty() {
        return Err(Error::Config {
            what: "--kubernetes needs this node's name: set NODE_NAME from the downward API \
                   (env: valueFrom: fieldRef: fieldPath: spec.nodeName) or pass --node-name; \
                   the hostname is not used, since nodes may be named otherwise"
                .into(),
        });
    }
    kubelet::check_root(cgroup_root).map_err(|e| Error::Config {
        what: format!("--cgroup-root: {e}"),
    })?;
    // The API server speaks TLS in a cluster: one crypto provider, ring, as everywhere here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    kube::Client::try_default()
        .await
        .map_err(|e| Error::Config {
            what: format!(
                "--kubernetes: no Kubernetes client configuration ({e}); in a pod, the \
                 service account is used; elsewhere set KUBECONFIG"
            ),
        })
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(opts: Options) -> Result<()> {
    // Everything that can be checked is checked before the kernel is touched.
    if let Some(v) = host::kernel_version() {
        if v < host::MIN_KERNEL {
            return Err(Error::Host {
                what: format!(
                    "kernel {}.{} is too old: the programs need {}.{} or newer (cgroup bpf \
                     links, getpeername hooks, netns cookies in sock_ops/sockopt); run \
                     `lattice-redirector doctor` for the details",
                    v.0,
                    v.1,
                    host::MIN_KERNEL.0,
                    host::MIN_KERNEL.1
                ),
            });
        }
    }
    // Handlers first: a SIGHUP that arrives once the admin endpoint answers must reload,
    // not kill the agent with the default action.
    let mut hup = signal(SignalKind::hangup()).map_err(Error::io("SIGHUP handler"))?;
    let mut term = signal(SignalKind::terminate()).map_err(Error::io("SIGTERM handler"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::io("SIGINT handler"))?;
    let cgroup_root = match &opts.cgroup_root {
        Some(root) => root.clone(),
        None => host::cgroup2_mount()?,
    };
    let kube = match &opts.kubernetes {
        Some(k) => Some(kubernetes_client(k, &cgroup_root).await?),
        None => None,
    };
    let first = opts.config_file.as_deref().map(reload::read);
    let mut cfg = load_config(&opts, first.as_ref(), &cgroup_root)?;
    let mut watch = first.map(Watch::new);
    for warning in cfg.warnings() {
        tracing::warn!("{warning}");
    }
    let attach = match &opts.attach_cgroup {
        Some(p) => config::cgroup_path(&cgroup_root, p)?,
        None => cgroup_root.clone(),
    };
    let admin_addr: SocketAddr = opts.admin_addr.parse().map_err(|_| Error::Config {
        what: format!(
            "--admin-addr: '{}' is not ADDRESS:PORT (e.g. 0.0.0.0:15090)",
            opts.admin_addr
        ),
    })?;
    let listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .map_err(|e| Error::Config {
            what: format!("--admin-addr {admin_addr}: cannot listen: {e}"),
        })?;
    let layout = opts.layout();
    if opts.pin_dir.is_none() {
        host::ensure_bpffs(&opts.bpffs)?;
    } else if host::bpffs_holding(&layout.root).is_none() {
        return Err(Error::Host {
            what: format!(
                "--pin-dir {} is not on a bpffs mount; mount one with `mount -t bpf bpf <dir>`",
                layout.root.display()
            ),
        });
    }

    let inst = install::install(&attach, &layout, install::OBJECT)?;
    // Held for as long as the agent runs: the programs stay attached even if their pins go.
    let mut held = match pins::Held::take(&layout, &inst.generation) {
        Ok(held) => held,
        Err(e) => {
            if !inst.adopted {
                let _ = install::uninstall(&layout);
            }
            return Err(e);
        }
    };
    let mut replaced_logged = false;
    let mut maps = inst.maps;
    if let Err(e) = apply(&mut maps, &cfg, &cgroup_root) {
        if !inst.adopted {
            let _ = install::uninstall(&layout);
        }
        return Err(e);
    }
    if opts.pin_dir.is_none() {
        // Both layouts redirect meanwhile: a connect already aimed at the proxy is left alone.
        for old in Layout::older_under_bpffs(&opts.bpffs) {
            match install::uninstall(&old) {
                Ok(_) => {
                    tracing::info!(pins = %old.root.display(), "removed an older agent's programs and pins (the new ones were attached first)")
                }
                Err(e) => {
                    tracing::warn!(pins = %old.root.display(), "removing an older agent's pins failed: {e}")
                }
            }
        }
    }
    tracing::info!(
        cgroup = %attach.display(),
        pins = %layout.root.display(),
        generation = %inst.generation.display(),
        adopted = inst.adopted,
        config = %cfg,
        proxy_port = cfg.proxy_port,
        enrolled = cfg.cgroups.len(),
        "{} programs; redirecting",
        if inst.adopted { "adopted pinned" } else { "attached and pinned" }
    );

    let connect4 = inst.links.iter().find(|l| l.program == programs::CONNECT4);
    if let Some(link) = connect4 {
        let id = link.program_id;
        tokio::spawn(async move {
            if let Err(e) = crate::logs::forward(id).await {
                tracing::warn!("eBPF logs are not forwarded: {e}");
            }
        });
    }

    let shared = Arc::new(Shared {
        maps: std::sync::Mutex::new(maps),
        generation: inst.generation.clone(),
        reloads_ok: Default::default(),
        reloads_failed: Default::default(),
        pods: kube.as_ref().map(|_| Arc::new(watch::Status::default())),
    });
    if let (Some(client), Some(k), Some(status)) = (kube, &opts.kubernetes, &shared.pods) {
        let mut pods = watch::Pods::new(
            shared.clone(),
            status.clone(),
            cgroup_root.clone(),
            k.kubelet_root.clone(),
        );
        pods.own_pod(k.pod_uid.clone());
        tokio::spawn(watch::run(client, k.node_name.clone(), pods));
    }
    tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "admin endpoint (/healthz, /metrics) listening");
    tokio::spawn(admin::serve(listener, shared.clone()));

    let mut tick = tokio::time::interval(opts.reload_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        // Each path reads the file and asks the watch whether this content is new; the
        // same content is never loaded twice, whichever path saw it first.
        let (why, read) = tokio::select! {
            _ = hup.recv() => {
                let (Some(path), Some(watch)) = (&opts.config_file, watch.as_mut()) else {
                    tracing::info!("SIGHUP: no configuration file (--config) to reload");
                    continue;
                };
                match watch.hangup(reload::read(path)) {
                    Some(read) => ("SIGHUP", read),
                    None => {
                        tracing::info!(
                            file = %path.display(),
                            "SIGHUP: configuration file unchanged since it was last loaded; nothing to do"
                        );
                        continue;
                    }
                }
            }
            _ = tick.tick() => {
                match held.restore() {
                    Ok(pins::Restored::Intact) => {}
                    Ok(pins::Restored::Pinned(paths)) => tracing::warn!(
                        pins = %paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
                        "pins were removed under the running agent; restored from its own \
                         references (the programs stayed attached meanwhile). To remove \
                         lattice-egress, stop the agent first, then run `lattice-redirector \
                         uninstall`"
                    ),
                    Ok(pins::Restored::Replaced { by }) => {
                        if !replaced_logged {
                            replaced_logged = true;
                            tracing::info!(
                                newer = %by.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
                                "another generation of the programs is pinned beside ours (a newer \
                                 agent): ours is not restored"
                            );
                        }
                    }
                    Err(e) => tracing::error!("restoring the pins failed: {e}"),
                }
                let (Some(path), Some(watch)) = (&opts.config_file, watch.as_mut()) else {
                    continue;
                };
                match watch.poll(reload::read(path)) {
                    Some(read) => ("configuration file changed", read),
                    None => continue,
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        match load_config(&opts, Some(&read), &cgroup_root) {
            Ok(new) => {
                let mut maps = shared.maps.lock().unwrap_or_else(|p| p.into_inner());
                match apply(&mut maps, &new, &cgroup_root) {
                    Ok(()) => {
                        shared.reloads_ok.fetch_add(1, Ordering::Relaxed);
                        if new != cfg {
                            tracing::info!(reason = why, config = %new, "configuration applied to the live maps");
                        } else {
                            tracing::info!(
                                reason = why,
                                "configuration reloaded; the live maps already held it"
                            );
                        }
                        for warning in new.warnings() {
                            tracing::warn!("{warning}");
                        }
                        cfg = new;
                    }
                    Err(e) => {
                        shared.reloads_failed.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(reason = why, "applying the configuration failed: {e}");
                    }
                }
            }
            Err(e) => {
                shared.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    reason = why,
                    "configuration refused, the previous one stays: {e}"
                );
            }
        }
    }
    tracing::info!(
        "exiting; the programs stay attached and pinned under {} (a new agent adopts them; \
         `lattice-redirector uninstall` removes them)",
        layout.root.display()
    );
    Ok(())
}
