//! Life cycle of the programs on a node: load, attach, pin, adopt, upgrade, uninstall.
//!
//! Pin layout (one directory owned by the agent; the layout version is in its name so a new
//! map layout never reuses old maps):
//! ```text
//! <bpffs>/lattice-egress/v<LAYOUT_VERSION>/
//!   maps/<MAP NAME>                     shared by every generation
//!   links/<object digest>-cg<cgroup id>/<program name>
//! ```
//! A link generation is tied to one object and one attach cgroup. A starting agent adopts
//! its generation when it is complete; otherwise it attaches a new one and only then removes
//! older ones (make-before-break), so redirection never stops across restarts or upgrades.
//! Pins outlive the agent: SIGTERM, a crash or kill -9 leave redirection in place; only
//! [`uninstall`] detaches.

use crate::error::{Error, Result};
use crate::maps::Maps;
use crate::sys;
use aya::programs::{
    links::{FdLink, PinnedLink},
    CgroupAttachMode, CgroupSockAddr, CgroupSockopt, SockOps,
};
use aya::{Ebpf, EbpfLoader};
use redirector_common::{maps as map_names, programs, LAYOUT_VERSION};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// The eBPF object built by `cargo xtask build-ebpf` (checked fresh by build.rs).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LATTICE_EBPF_OBJECT"));

/// All map names of the object.
pub const MAP_NAMES: [&str; 10] = map_names::ALL;

/// FNV-1a of the object: names a link generation.
pub fn digest(object: &[u8]) -> u64 {
    object.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Where one installation's pins live.
#[derive(Clone, Debug)]
pub struct Layout {
    /// `<bpffs>/lattice-egress/v<N>` (or the directory given with --pin-dir).
    pub root: PathBuf,
}

impl Layout {
    /// The default layout under a bpffs mount.
    pub fn under_bpffs(bpffs: &Path) -> Layout {
        Layout {
            root: bpffs
                .join("lattice-egress")
                .join(format!("v{LAYOUT_VERSION}")),
        }
    }

    /// Installations of older layouts under a bpffs mount (an agent of an earlier version
    /// left them): removed once the current layout is attached, so that the upgrade is
    /// make-before-break across layouts too.
    pub fn older_under_bpffs(bpffs: &Path) -> Vec<Layout> {
        (1..LAYOUT_VERSION)
            .map(|v| Layout {
                root: bpffs.join("lattice-egress").join(format!("v{v}")),
            })
            .filter(|l| l.root.exists())
            .collect()
    }

    /// Directory of the pinned maps.
    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    /// Directory of the link generations.
    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Link generations present, by directory name.
    pub fn generations(&self) -> Vec<PathBuf> {
        let mut gens: Vec<PathBuf> = std::fs::read_dir(self.links())
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        gens.sort();
        gens
    }

    /// True when something is installed here.
    pub fn exists(&self) -> bool {
        self.maps().join(map_names::CONFIG).exists()
    }
}

/// One pinned link, for `status`.
#[derive(Debug)]
pub struct LinkState {
    pub program: String,
    pub link_id: u32,
    pub program_id: u32,
}

/// Opens every link of a generation; `None` when one is missing or unreadable.
pub fn generation_links(dir: &Path) -> Option<Vec<LinkState>> {
    programs::ALL
        .iter()
        .map(|name| {
            let link = PinnedLink::from_pin(dir.join(name)).ok()?;
            let info = FdLink::from(link).info().ok()?;
            Some(LinkState {
                program: (*name).to_string(),
                link_id: info.id(),
                program_id: info.program_id(),
            })
        })
        .collect()
}

/// The result of [`install`].
pub struct Installation {
    /// The live maps.
    pub maps: Maps,
    /// The generation directory in use.
    pub generation: PathBuf,
    /// True when an existing generation was adopted rather than attached.
    pub adopted: bool,
    /// Programs of the generation in use.
    pub links: Vec<LinkState>,
}

/// Checks every map already pinned under `layout` against the object's definition of the
/// map of that name (type, key and value size, entries): loading would reuse a pinned map
/// as it is, and a map of another layout would fail in the verifier with a dump no one can
/// act on, or worse, be misread. The error names the pin and both definitions.
pub fn check_pinned_maps(layout: &Layout, object: &[u8]) -> Result<()> {
    let parsed = aya_obj::Object::parse(object).map_err(|e| Error::Load {
        what: "the eBPF object's map definitions".into(),
        source: Box::new(e),
    })?;
    for name in MAP_NAMES {
        let path = layout.maps().join(name);
        if path.symlink_metadata().is_err() {
            continue;
        }
        let Some(want) = parsed.maps.get(name) else {
            continue;
        };
        let info = aya::maps::MapInfo::from_pin(&path).map_err(|e| Error::Pin {
            path: path.clone(),
            what: format!("cannot read the pinned map: {e}"),
        })?;
        let have_type = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
        let have = (
            have_type,
            info.key_size(),
            info.value_size(),
            info.max_entries(),
        );
        let need = (
            want.map_type(),
            want.key_size(),
            want.value_size(),
            want.max_entries(),
        );
        if have != need {
            return Err(Error::Pin {
                path,
                what: format!(
                    "a pinned map of another layout: type {}, key size {}, value size {}, {} \
                     entries, where this agent (layout v{LAYOUT_VERSION}) needs type {}, key \
                     size {}, value size {}, {} entries. Nothing was attached. If it is \
                     lattice-egress's own, stop every agent using this directory and run \
                     `lattice-redirector --pin-dir {} uninstall`; otherwise give this agent \
                     another --pin-dir",
                    have.0,
                    have.1,
                    have.2,
                    have.3,
                    need.0,
                    need.1,
                    need.2,
                    need.3,
                    layout.root.display()
                ),
            });
        }
    }
    Ok(())
}

/// Attaches (or adopts) the programs on `cgroup` with pins under `layout`.
pub fn install(cgroup: &Path, layout: &Layout, object: &[u8]) -> Result<Installation> {
    check_pinned_maps(layout, object)?;
    let cgroup_id = crate::host::cgroup_id(cgroup)?;
    let name = format!("{:016x}-cg{cgroup_id}", digest(object));
    let generation = layout.links().join(&name);
    let older: Vec<PathBuf> = layout
        .generations()
        .into_iter()
        .filter(|g| *g != generation)
        .collect();

    if let Some(links) = generation_links(&generation) {
        let maps = Maps::open(&layout.maps())?;
        // A complete generation of ours: leftovers of an interrupted upgrade can go.
        for old in &older {
            remove_generation(old)?;
        }
        return Ok(Installation {
            maps,
            generation,
            adopted: true,
            links,
        });
    }

    // Partial leftovers of our own generation are removed before attaching afresh.
    if generation.exists() {
        remove_generation(&generation)?;
    }
    for dir in [layout.maps(), generation.clone()] {
        std::fs::create_dir_all(&dir).map_err(|e| Error::Pin {
            path: dir.clone(),
            what: format!("cannot create directory: {e} (is it on a bpffs mount?)"),
        })?;
    }
    match attach_generation(cgroup, layout, &generation, object) {
        Ok(links) => {
            for old in &older {
                remove_generation(old)?;
            }
            Ok(Installation {
                maps: Maps::open(&layout.maps())?,
                generation,
                adopted: false,
                links,
            })
        }
        Err(e) => {
            // Nothing half-attached: drop this generation's pins; older ones keep working.
            let _ = remove_generation(&generation);
            if older.is_empty() {
                let _ = remove_layout_dirs(layout);
            }
            Err(e)
        }
    }
}

/// Loads the object with its maps pinned (reused when present) for the given layout.
pub fn load(layout: Option<&Layout>, object: &[u8]) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    let paths: Vec<(&str, PathBuf)> = match layout {
        Some(l) => MAP_NAMES.iter().map(|n| (*n, l.maps().join(n))).collect(),
        None => Vec::new(),
    };
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    loader.load(object).map_err(|e| Error::Load {
        what: "the eBPF object".into(),
        source: Box::new(e),
    })
}

fn load_err(program: &str) -> impl FnOnce(aya::programs::ProgramError) -> Error + '_ {
    move |e| Error::Load {
        what: format!("program {program}"),
        source: Box::new(e),
    }
}

fn attach_err<'a, E: std::error::Error + Send + Sync + 'static>(
    program: &'a str,
    cgroup: &'a Path,
) -> impl FnOnce(E) -> Error + 'a {
    move |e| Error::Attach {
        program: program.to_string(),
        cgroup: cgroup.to_path_buf(),
        source: Box::new(e),
    }
}

fn pin_err(path: &Path) -> impl FnOnce(String) -> Error + '_ {
    move |what| Error::Pin {
        path: path.to_path_buf(),
        what,
    }
}

/// Loads every program and verifies it, without attaching (used by `doctor`).
pub fn test_load(object: &[u8]) -> Vec<(&'static str, Result<()>)> {
    let mut ebpf = match load(None, object) {
        Ok(e) => e,
        Err(e) => return vec![("object", Err(e))],
    };
    programs::ALL
        .iter()
        .map(|name| (*name, load_program(&mut ebpf, name)))
        .collect()
}

fn load_program(ebpf: &mut Ebpf, name: &'static str) -> Result<()> {
    let prog = ebpf.program_mut(name).ok_or_else(|| Error::Load {
        what: format!("program {name}"),
        source: "not found in the embedded object".into(),
    })?;
    match name {
        programs::SOCK_OPS => {
            let p: &mut SockOps = prog.try_into().map_err(load_err(name))?;
            p.load().map_err(load_err(name))
        }
        programs::GETSOCKOPT => {
            let p: &mut CgroupSockopt = prog.try_into().map_err(load_err(name))?;
            p.load().map_err(load_err(name))
        }
        _ => {
            let p: &mut CgroupSockAddr = prog.try_into().map_err(load_err(name))?;
            p.load().map_err(load_err(name))
        }
    }
}

/// Attaches a cgroup program through a bpf link (aya 0.14 accepts only `Single` with
/// links; links of other programs on the cgroup coexist anyway), turns the link into an
/// `FdLink` and pins it. A macro because aya's link wrappers share no trait for this.
macro_rules! attach_and_pin {
    ($prog:expr, $name:expr, $cg:expr, $cgroup:expr, $path:expr) => {{
        let id = $prog
            .attach($cg, CgroupAttachMode::Single)
            .map_err(attach_err($name, $cgroup))?;
        let link: FdLink = $prog
            .take_link(id)
            .map_err(attach_err($name, $cgroup))?
            .try_into()
            .map_err(attach_err($name, $cgroup))?;
        link.pin($path).map_err(|e| pin_err($path)(e.to_string()))?;
    }};
}

fn attach_generation(
    cgroup: &Path,
    layout: &Layout,
    generation: &Path,
    object: &[u8],
) -> Result<Vec<LinkState>> {
    let mut ebpf = load(Some(layout), object)?;
    let cg = std::fs::File::open(cgroup).map_err(Error::io(cgroup))?;
    for name in programs::ALL {
        load_program(&mut ebpf, name)?;
        let path = generation.join(name);
        let prog = ebpf.program_mut(name).expect("loaded above");
        match name {
            programs::SOCK_OPS => {
                let p: &mut SockOps = prog.try_into().map_err(load_err(name))?;
                attach_and_pin!(p, name, &cg, cgroup, &path);
            }
            programs::GETSOCKOPT => {
                // aya 0.14 cannot turn a getsockopt link into an FdLink: create it ourselves.
                let p: &mut CgroupSockopt = prog.try_into().map_err(load_err(name))?;
                let fd = p.fd().map_err(load_err(name))?;
                let link = sys::link_create(fd.as_fd(), cg.as_fd(), sys::BPF_CGROUP_GETSOCKOPT)
                    .map_err(attach_err(name, cgroup))?;
                sys::pin(link.as_fd(), &path).map_err(|e| pin_err(&path)(e.to_string()))?;
            }
            _ => {
                let p: &mut CgroupSockAddr = prog.try_into().map_err(load_err(name))?;
                attach_and_pin!(p, name, &cg, cgroup, &path);
            }
        }
    }
    generation_links(generation).ok_or_else(|| Error::Pin {
        path: generation.to_path_buf(),
        what: "links were pinned but cannot be reopened".into(),
    })
}

/// Detaches one generation: removing a link's last pin and closing it detaches it.
fn remove_generation(dir: &Path) -> Result<()> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            match PinnedLink::from_pin(&path) {
                Ok(link) => {
                    link.unpin().map_err(|e| Error::Pin {
                        path: path.clone(),
                        what: format!("cannot remove pin: {e}"),
                    })?;
                }
                Err(_) => std::fs::remove_file(&path).map_err(Error::io(&path))?,
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(dir)(e)),
    }
}

fn remove_layout_dirs(layout: &Layout) -> Result<()> {
    if let Ok(entries) = std::fs::read_dir(layout.maps()) {
        for entry in entries.flatten() {
            std::fs::remove_file(entry.path()).map_err(Error::io(entry.path()))?;
        }
    }
    for dir in [layout.maps(), layout.links(), layout.root.clone()] {
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&dir)(e)),
        }
    }
    // The parent `lattice-egress/` goes too when no other layout version is left.
    if let Some(parent) = layout.root.parent() {
        if parent.file_name().is_some_and(|n| n == "lattice-egress") {
            let _ = std::fs::remove_dir(parent);
        }
    }
    Ok(())
}

/// What [`uninstall`] removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub generations: usize,
}

/// Detaches every program and removes every pin of `layout`.
pub fn uninstall(layout: &Layout) -> Result<Removed> {
    if !layout.root.exists() {
        return Err(Error::NotInstalled(layout.root.clone()));
    }
    let gens = layout.generations();
    for g in &gens {
        remove_generation(g)?;
    }
    remove_layout_dirs(layout)?;
    Ok(Removed {
        generations: gens.len(),
    })
}
