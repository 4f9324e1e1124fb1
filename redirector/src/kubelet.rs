//! Where kubelet puts a pod's cgroup on a cgroup v2 node.
//!
//! kubelet names pod cgroups after the pod's QoS class and UID, spelled per cgroup driver
//! (kubernetes `pkg/kubelet/cm`: `cgroup_manager_linux.go` `ToSystemd`/`ToCgroupfs`,
//! `qos_container_manager_linux.go`, `pod_container_manager_linux.go`). With cgroupRoot `/`
//! (EKS AL2023 and Bottlerocket, and kubeadm's default) that gives:
//!
//! | QoS        | systemd driver                                                           | cgroupfs driver             |
//! |------------|--------------------------------------------------------------------------|-----------------------------|
//! | Guaranteed | `kubepods.slice/kubepods-pod<uid_>.slice`                                | `kubepods/pod<uid>`         |
//! | Burstable  | `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice`   | `kubepods/burstable/pod<uid>`  |
//! | BestEffort | `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice` | `kubepods/besteffort/pod<uid>` |
//!
//! where `<uid_>` is the UID with every `-` replaced by `_` (systemd reserves `-` in slice
//! names for nesting). [`Layout::detect`] finds which driver a node uses from what exists
//! under its cgroup2 root, rather than assuming one (a peer's bug: hard-coded kubepods paths
//! that only worked with one driver).

use k8s_openapi::api::core::v1::Pod;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The cgroup driver kubelet runs with (`cgroupDriver` in its configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Driver {
    /// systemd slices: `kubepods.slice/…`. EKS AL2023, Bottlerocket, kubeadm's default.
    Systemd,
    /// Plain directories: `kubepods/…`.
    Cgroupfs,
}

impl Driver {
    /// `systemd` or `cgroupfs`, as kubelet's `cgroupDriver` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Systemd => "systemd",
            Driver::Cgroupfs => "cgroupfs",
        }
    }

    /// The top-level kubepods cgroup this driver creates under cgroupRoot `/`.
    fn kubepods(self) -> &'static str {
        match self {
            Driver::Systemd => "kubepods.slice",
            Driver::Cgroupfs => "kubepods",
        }
    }

    /// The parent cgroup of pods of class `qos`, relative to the cgroup2 root.
    fn qos_parent(self, qos: Qos) -> &'static str {
        match (self, qos) {
            (Driver::Systemd, Qos::Guaranteed) => "kubepods.slice",
            (Driver::Systemd, Qos::Burstable) => "kubepods.slice/kubepods-burstable.slice",
            (Driver::Systemd, Qos::BestEffort) => "kubepods.slice/kubepods-besteffort.slice",
            (Driver::Cgroupfs, Qos::Guaranteed) => "kubepods",
            (Driver::Cgroupfs, Qos::Burstable) => "kubepods/burstable",
            (Driver::Cgroupfs, Qos::BestEffort) => "kubepods/besteffort",
        }
    }

    /// What comes before and after the (escaped) UID in a pod cgroup's own name.
    fn pod_affixes(self, qos: Qos) -> (&'static str, &'static str) {
        match (self, qos) {
            (Driver::Systemd, Qos::Guaranteed) => ("kubepods-pod", ".slice"),
            (Driver::Systemd, Qos::Burstable) => ("kubepods-burstable-pod", ".slice"),
            (Driver::Systemd, Qos::BestEffort) => ("kubepods-besteffort-pod", ".slice"),
            (Driver::Cgroupfs, _) => ("pod", ""),
        }
    }

    /// The UID as this driver spells it in a cgroup name.
    fn escape(self, uid: &str) -> String {
        match self {
            // kubelet's escapeSystemdCgroupName: `-` separates nesting levels in a slice
            // name, so the UID's dashes become underscores.
            Driver::Systemd => uid.replace('-', "_"),
            Driver::Cgroupfs => uid.to_owned(),
        }
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::Systemd => "systemd",
            Driver::Cgroupfs => "cgroupfs",
        })
    }
}

/// A pod's QoS class (`status.qosClass`), which decides its parent cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Qos {
    /// Every container has equal CPU and memory requests and limits.
    Guaranteed,
    /// Some requests or limits, not Guaranteed.
    Burstable,
    /// No requests or limits at all.
    BestEffort,
}

impl Qos {
    /// Parses `status.qosClass` as the API spells it; `None` for anything else.
    pub fn from_status(class: &str) -> Option<Qos> {
        match class {
            "Guaranteed" => Some(Qos::Guaranteed),
            "Burstable" => Some(Qos::Burstable),
            "BestEffort" => Some(Qos::BestEffort),
            _ => None,
        }
    }

    /// The pod's QoS class from its status. The API server sets it at creation and never
    /// changes it (in-place resize keeps the class), so a pod without it has not been
    /// admitted yet or is malformed.
    pub fn of_pod(pod: &Pod) -> Option<Qos> {
        Qos::from_status(pod.status.as_ref()?.qos_class.as_deref()?)
    }
}

impl fmt::Display for Qos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Qos::Guaranteed => "Guaranteed",
            Qos::Burstable => "Burstable",
            Qos::BestEffort => "BestEffort",
        })
    }
}

/// The annotation kubelet puts on a static pod's mirror: the static pod's own UID.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The UID kubelet names the pod's cgroup after.
///
/// That is `metadata.uid`, except for a static pod: the API server only holds its mirror,
/// whose `metadata.uid` the API server chose, while kubelet names the cgroup after the static
/// pod's own UID (a hash of its manifest), which it copies into the mirror's
/// `kubernetes.io/config.mirror` annotation (kubelet `pkg/kubelet/pod/mirror_client.go`).
/// Using `metadata.uid` there would look for a cgroup that never exists.
pub fn cgroup_uid(pod: &Pod) -> Option<&str> {
    let meta = &pod.metadata;
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(MIRROR_ANNOTATION))
        .map(String::as_str)
        .or(meta.uid.as_deref())
}

/// Longest UID accepted: a UUID has 36 characters, a static pod's hash 32; the margin is for
/// formats we have not seen, not for paths.
const MAX_UID_LEN: usize = 64;

/// A pod UID that cannot be part of a cgroup path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "pod UID {uid:?} is not a Kubernetes UID (1 to {MAX_UID_LEN} characters of 0-9, a-f and \
     '-'): refusing to build a cgroup path from it; check what set metadata.uid (or the \
     kubernetes.io/config.mirror annotation) on this pod"
)]
pub struct BadUid {
    /// The refused UID, as received.
    pub uid: String,
}

/// Checks that `uid` is hexadecimal digits and dashes of sane length. The UID comes from the
/// API server and becomes part of a path we attach programs to: anything else (`/`, `..`, an
/// empty string that would name the QoS parent itself) is refused rather than escaped.
fn check_uid(uid: &str) -> Result<(), BadUid> {
    let sane = (1..=MAX_UID_LEN).contains(&uid.len())
        && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        && uid.bytes().any(|b| b.is_ascii_hexdigit());
    if sane {
        Ok(())
    } else {
        Err(BadUid {
            uid: uid.to_owned(),
        })
    }
}

/// The cgroup kubelet creates for the pod `uid` of class `qos` under `driver`, relative to
/// the cgroup2 root, for cgroupRoot `/` (see the module's table).
pub fn pod_cgroup(driver: Driver, qos: Qos, uid: &str) -> Result<PathBuf, BadUid> {
    check_uid(uid)?;
    let (prefix, suffix) = driver.pod_affixes(qos);
    let name = format!("{prefix}{}{suffix}", driver.escape(uid));
    Ok(Path::new(driver.qos_parent(qos)).join(name))
}

/// Why a path was not accepted as the node's cgroup2 root, or no driver was recognised.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// statfs(2) on the root failed (missing path, no permission).
    #[error(
        "cannot inspect the cgroup root {}: {source}; mount the node's cgroup2 root into the \
         agent's container (hostPath of the node's cgroup2 mount, e.g. /sys/fs/cgroup) and \
         give that path",
        root.display()
    )]
    Statfs {
        root: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
    /// The root is on another filesystem (cgroup v1, tmpfs, the container's own /sys…).
    #[error(
        "{} is not a cgroup2 filesystem (statfs f_type {fs_type:#x}, cgroup2 is 0x63677270): \
         give the node's cgroup2 mount (on the node, `grep cgroup2 /proc/mounts` shows it; \
         hybrid hosts mount it at /sys/fs/cgroup/unified; cgroup v1-only nodes such as AL2 \
         are not supported)",
        root.display()
    )]
    NotCgroup2 { root: PathBuf, fs_type: i64 },
    /// The root is a cgroup2 directory but not the hierarchy's root.
    #[error(
        "{} is a cgroup2 directory but not the root of the hierarchy (it has a cgroup.type \
         file): it is a child cgroup, or a container's own cgroup-namespace view of \
         /sys/fs/cgroup; mount the node's cgroup2 root by hostPath instead",
        root.display()
    )]
    NotRoot { root: PathBuf },
    /// Neither driver's kubepods cgroup exists under the root.
    #[error(
        "no kubepods.slice (systemd driver) or kubepods (cgroupfs driver) under {}: is it \
         the node's cgroup2 root, and is kubelet running with cgroupRoot / and \
         cgroupsPerQOS enabled?",
        root.display()
    )]
    Unrecognised { root: PathBuf },
    /// Both drivers' kubepods cgroups exist, and pod cgroups could not tell which is live.
    #[error(
        "both kubepods.slice (systemd driver) and kubepods (cgroupfs driver) exist under {} \
         and {}: cannot tell which one kubelet uses; remove the stale one (left by a driver \
         change) or restart the agent once kubelet has started a pod",
        root.display(),
        if *both_hold_pods { "both hold pod cgroups" } else { "neither holds a pod cgroup" }
    )]
    Ambiguous { root: PathBuf, both_hold_pods: bool },
    /// Reading a directory under the root failed.
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The node's cgroup2 root as the agent sees it, and kubelet's driver there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
    driver: Driver,
}

impl Layout {
    /// Checks that `root` (the node's cgroup2 root as mounted in the agent's container, e.g.
    /// `/host/cgroup`) is a cgroup2 hierarchy root, and finds kubelet's driver from what
    /// exists under it.
    ///
    /// When both `kubepods.slice` and `kubepods` exist (a node whose driver was changed), the
    /// one holding pod cgroups wins; if both or neither hold any, this refuses rather than
    /// guesses. The agent's own pod always has a cgroup under the live one, so "neither"
    /// only happens outside a pod.
    pub fn detect(root: &Path) -> Result<Layout, LayoutError> {
        Layout::detect_in(root, Path::new("/"))
    }

    /// [`Layout::detect`] for a kubelet whose `cgroupRoot` is not `/`: `kubelet_root` is the
    /// directory under `root` that holds `kubepods.slice` or `kubepods`.
    pub fn detect_in(root: &Path, kubelet_root: &Path) -> Result<Layout, LayoutError> {
        check_root(root)?;
        let under = root.join(kubelet_root.strip_prefix("/").unwrap_or(kubelet_root));
        let driver = driver_under(&under)?;
        Ok(Layout {
            root: under,
            driver,
        })
    }

    /// The absolute path (under the root) of the cgroup of pod `uid` of class `qos`. It is
    /// not checked to exist: kubelet creates it before the sandbox starts, but a Pod event
    /// can arrive earlier, so the caller retries.
    pub fn pod_path(&self, qos: Qos, uid: &str) -> Result<PathBuf, BadUid> {
        Ok(self.root.join(pod_cgroup(self.driver, qos, uid)?))
    }

    /// kubelet's cgroup driver on this node.
    pub fn driver(&self) -> Driver {
        self.driver
    }

    /// The cgroup2 root this layout was detected under.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Checks that `root` is a cgroup2 hierarchy's real root (see [`Layout::detect`]).
pub fn check_root(root: &Path) -> Result<(), LayoutError> {
    let fs = nix::sys::statfs::statfs(root).map_err(|source| LayoutError::Statfs {
        root: root.to_owned(),
        source,
    })?;
    if fs.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        // f_type's C type differs between libcs (i64 on glibc x86_64, c_ulong on musl).
        #[allow(clippy::unnecessary_cast)]
        let fs_type = fs.filesystem_type().0 as i64;
        return Err(LayoutError::NotCgroup2 {
            root: root.to_owned(),
            fs_type,
        });
    }
    // The kernel gives every cgroup2 directory a cgroup.type file except the hierarchy's
    // real root (CFTYPE_NOT_ON_ROOT). That also refuses a container's /sys/fs/cgroup
    // under a private cgroup namespace: it looks like "/" from inside (/proc/self/cgroup
    // says `0::/`, so comparing with that would not help), but it is a child cgroup of
    // the node's hierarchy and has the file.
    if exists(&root.join("cgroup.type"))? {
        return Err(LayoutError::NotRoot {
            root: root.to_owned(),
        });
    }
    Ok(())
}

/// kubelet's driver, from which kubepods cgroup exists under `root` (see [`Layout::detect`]).
fn driver_under(root: &Path) -> Result<Driver, LayoutError> {
    let systemd = exists(&root.join(Driver::Systemd.kubepods()))?;
    let cgroupfs = exists(&root.join(Driver::Cgroupfs.kubepods()))?;
    match (systemd, cgroupfs) {
        (true, false) => Ok(Driver::Systemd),
        (false, true) => Ok(Driver::Cgroupfs),
        (false, false) => Err(LayoutError::Unrecognised {
            root: root.to_owned(),
        }),
        // A driver change leaves the old tree behind until reboot: the live one is the one
        // with pods in it.
        (true, true) => match (
            holds_pods(root, Driver::Systemd)?,
            holds_pods(root, Driver::Cgroupfs)?,
        ) {
            (true, false) => Ok(Driver::Systemd),
            (false, true) => Ok(Driver::Cgroupfs),
            (both, _) => Err(LayoutError::Ambiguous {
                root: root.to_owned(),
                both_hold_pods: both,
            }),
        },
    }
}

/// Whether `path` exists; errors other than "not found" (EACCES…) are reported, not taken
/// for absence.
fn exists(path: &Path) -> Result<bool, LayoutError> {
    path.try_exists().map_err(|source| LayoutError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Whether any pod cgroup of `driver`'s naming exists under `root`.
fn holds_pods(root: &Path, driver: Driver) -> Result<bool, LayoutError> {
    for qos in [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort] {
        let parent = root.join(driver.qos_parent(qos));
        let entries = match std::fs::read_dir(&parent) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(LayoutError::Io {
                    path: parent,
                    source,
                })
            }
        };
        let (prefix, suffix) = driver.pod_affixes(qos);
        for entry in entries {
            let entry = entry.map_err(|source| LayoutError::Io {
                path: parent.clone(),
                source,
            })?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let is_pod = name
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(suffix))
                .is_some_and(|uid| !uid.is_empty());
            if is_pod && entry.path().is_dir() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";

    #[test]
    fn pod_cgroups_are_named_as_kubelet_names_them() {
        let table = [
            (
                Driver::Systemd,
                Qos::Guaranteed,
                "kubepods.slice/kubepods-pod1b4e28ba_2fa1_11d2_883f_0016d3cca427.slice",
            ),
            (
                Driver::Systemd,
                Qos::Burstable,
                "kubepods.slice/kubepods-burstable.slice/\
                 kubepods-burstable-pod1b4e28ba_2fa1_11d2_883f_0016d3cca427.slice",
            ),
            (
                Driver::Systemd,
                Qos::BestEffort,
                "kubepods.slice/kubepods-besteffort.slice/\
                 kubepods-besteffort-pod1b4e28ba_2fa1_11d2_883f_0016d3cca427.slice",
            ),
            (
                Driver::Cgroupfs,
                Qos::Guaranteed,
                "kubepods/pod1b4e28ba-2fa1-11d2-883f-0016d3cca427",
            ),
            (
                Driver::Cgroupfs,
                Qos::Burstable,
                "kubepods/burstable/pod1b4e28ba-2fa1-11d2-883f-0016d3cca427",
            ),
            (
                Driver::Cgroupfs,
                Qos::BestEffort,
                "kubepods/besteffort/pod1b4e28ba-2fa1-11d2-883f-0016d3cca427",
            ),
        ];
        for (driver, qos, want) in table {
            assert_eq!(
                pod_cgroup(driver, qos, UID).unwrap(),
                PathBuf::from(want),
                "{driver} {qos}"
            );
        }
    }

    #[test]
    fn a_static_pods_hash_uid_is_accepted() {
        let p = pod_cgroup(
            Driver::Systemd,
            Qos::Burstable,
            "6d7a9e0c2f3b4a5d8e1f0a2b3c4d5e6f",
        )
        .unwrap();
        assert_eq!(
            p,
            PathBuf::from(
                "kubepods.slice/kubepods-burstable.slice/\
                 kubepods-burstable-pod6d7a9e0c2f3b4a5d8e1f0a2b3c4d5e6f.slice"
            )
        );
    }

    #[test]
    fn uids_that_are_not_hex_and_dashes_are_refused() {
        let long = "a".repeat(MAX_UID_LEN + 1);
        for bad in [
            "",
            "../../etc",
            "..",
            "1b4e28ba/2fa1",
            "/1b4e28ba",
            "1b4e28ba-2fa1-11d2-883f-0016d3cca42g",
            "1b4e28ba 2fa1",
            "---",
            long.as_str(),
        ] {
            for driver in [Driver::Systemd, Driver::Cgroupfs] {
                let e = pod_cgroup(driver, Qos::Burstable, bad).unwrap_err();
                assert_eq!(e.uid, bad);
                assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
            }
        }
        assert!(pod_cgroup(Driver::Cgroupfs, Qos::Guaranteed, &"a".repeat(MAX_UID_LEN)).is_ok());
    }

    #[test]
    fn qos_classes_parse_as_the_api_spells_them() {
        assert_eq!(Qos::from_status("Guaranteed"), Some(Qos::Guaranteed));
        assert_eq!(Qos::from_status("Burstable"), Some(Qos::Burstable));
        assert_eq!(Qos::from_status("BestEffort"), Some(Qos::BestEffort));
        for bad in ["", "burstable", "Besteffort", "Guaranteed ", "Unknown"] {
            assert_eq!(Qos::from_status(bad), None, "{bad:?}");
        }
        for qos in [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort] {
            assert_eq!(Qos::from_status(&qos.to_string()), Some(qos));
        }
    }

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn qos_and_cgroup_uid_come_from_the_pod() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": UID},
            "status": {"phase": "Running", "qosClass": "BestEffort"}
        }));
        assert_eq!(Qos::of_pod(&p), Some(Qos::BestEffort));
        assert_eq!(cgroup_uid(&p), Some(UID));
        let pending = pod(serde_json::json!({"metadata": {"name": "web", "uid": UID}}));
        assert_eq!(Qos::of_pod(&pending), None);
    }

    #[test]
    fn a_mirror_pods_cgroup_is_named_after_the_static_pod() {
        let mirror = pod(serde_json::json!({
            "metadata": {
                "name": "kube-proxy-node1",
                "namespace": "kube-system",
                "uid": UID,
                "annotations": {
                    "kubernetes.io/config.hash": "6d7a9e0c2f3b4a5d8e1f0a2b3c4d5e6f",
                    "kubernetes.io/config.mirror": "6d7a9e0c2f3b4a5d8e1f0a2b3c4d5e6f",
                    "kubernetes.io/config.source": "file"
                }
            }
        }));
        assert_eq!(
            cgroup_uid(&mirror),
            Some("6d7a9e0c2f3b4a5d8e1f0a2b3c4d5e6f")
        );
    }

    #[test]
    fn a_directory_that_is_not_cgroup2_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("kubepods.slice")).unwrap();
        let e = Layout::detect(dir.path()).unwrap_err();
        assert!(matches!(e, LayoutError::NotCgroup2 { .. }), "{e:?}");
        assert!(
            e.to_string().contains(&dir.path().display().to_string()),
            "{e}"
        );

        let e = Layout::detect(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(e, LayoutError::Statfs { .. }), "{e:?}");
    }

    /// Removes a test cgroup when dropped, so a failed assertion still cleans up.
    struct CgroupGuard(PathBuf);

    impl Drop for CgroupGuard {
        fn drop(&mut self) {
            if let Err(e) = std::fs::remove_dir(&self.0) {
                eprintln!("could not remove test cgroup {}: {e}", self.0.display());
            }
        }
    }

    #[test]
    fn the_real_cgroup2_root_is_a_root_and_its_children_are_not() {
        let Ok(root) = crate::host::cgroup2_mount() else {
            eprintln!("note: no cgroup2 mount on this host; skipping");
            return;
        };
        match Layout::detect(&root) {
            Ok(layout) => {
                assert_eq!(layout.root(), root);
                let p = layout.pod_path(Qos::Burstable, UID).unwrap();
                assert!(p.starts_with(&root));
            }
            Err(LayoutError::Unrecognised { root: r }) => assert_eq!(r, root),
            Err(LayoutError::Ambiguous { root: r, .. }) => assert_eq!(r, root),
            Err(e) => panic!("the cgroup2 root {} was refused: {e}", root.display()),
        }

        if !nix::unistd::geteuid().is_root() {
            eprintln!("note: not root; skipping the child-cgroup part");
            return;
        }
        let child = root.join(format!("le-kubelet-test-{}", std::process::id()));
        std::fs::create_dir(&child).unwrap();
        let _guard = CgroupGuard(child.clone());
        let e = Layout::detect(&child).unwrap_err();
        assert!(matches!(e, LayoutError::NotRoot { .. }), "{e:?}");
        assert!(e.to_string().contains("cgroup.type"), "{e}");
    }

    #[test]
    fn pod_cgroups_are_recognised_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("kubepods.slice/kubepods-burstable.slice")).unwrap();
        std::fs::create_dir_all(root.join("kubepods/burstable")).unwrap();
        // QoS parents are not pods.
        assert!(!holds_pods(root, Driver::Systemd).unwrap());
        assert!(!holds_pods(root, Driver::Cgroupfs).unwrap());
        let pod = root.join(pod_cgroup(Driver::Systemd, Qos::Burstable, UID).unwrap());
        std::fs::create_dir(&pod).unwrap();
        assert!(holds_pods(root, Driver::Systemd).unwrap());
        assert!(!holds_pods(root, Driver::Cgroupfs).unwrap());
        let pod = root.join(pod_cgroup(Driver::Cgroupfs, Qos::Guaranteed, UID).unwrap());
        std::fs::create_dir(&pod).unwrap();
        assert!(holds_pods(root, Driver::Cgroupfs).unwrap());
    }

    #[test]
    fn the_driver_is_told_by_which_kubepods_exists() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let e = driver_under(root).unwrap_err();
        assert!(matches!(e, LayoutError::Unrecognised { .. }), "{e:?}");
        std::fs::create_dir(root.join("kubepods.slice")).unwrap();
        assert_eq!(driver_under(root).unwrap(), Driver::Systemd);

        // Both trees and no pods: refuse rather than guess.
        std::fs::create_dir_all(root.join("kubepods/besteffort")).unwrap();
        let e = driver_under(root).unwrap_err();
        assert!(
            matches!(
                e,
                LayoutError::Ambiguous {
                    both_hold_pods: false,
                    ..
                }
            ),
            "{e:?}"
        );
        // The tree holding pods wins.
        let pod = pod_cgroup(Driver::Cgroupfs, Qos::BestEffort, UID).unwrap();
        std::fs::create_dir(root.join(&pod)).unwrap();
        assert_eq!(driver_under(root).unwrap(), Driver::Cgroupfs);
        // Pods in both: refuse.
        let pod = pod_cgroup(Driver::Systemd, Qos::Guaranteed, UID).unwrap();
        std::fs::create_dir(root.join(&pod)).unwrap();
        let e = driver_under(root).unwrap_err();
        assert!(
            matches!(
                e,
                LayoutError::Ambiguous {
                    both_hold_pods: true,
                    ..
                }
            ),
            "{e:?}"
        );

        let only_cgroupfs = tempfile::tempdir().unwrap();
        std::fs::create_dir(only_cgroupfs.path().join("kubepods")).unwrap();
        assert_eq!(
            driver_under(only_cgroupfs.path()).unwrap(),
            Driver::Cgroupfs
        );
    }

    #[test]
    fn layout_errors_say_what_to_do() {
        let root = PathBuf::from("/host/cgroup");
        let e = LayoutError::Unrecognised { root: root.clone() }.to_string();
        assert!(e.contains("kubepods.slice (systemd driver)"), "{e}");
        assert!(
            e.contains("kubepods (cgroupfs driver) under /host/cgroup"),
            "{e}"
        );
        assert!(e.contains("cgroupRoot /"), "{e}");
        let e = LayoutError::Ambiguous {
            root,
            both_hold_pods: false,
        }
        .to_string();
        assert!(e.contains("neither holds a pod cgroup"), "{e}");
    }
}
