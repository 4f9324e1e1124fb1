//! The running agent's own references to its links and maps, and putting back pins that
//! someone removed under it.
//!
//! A bpf link lives as long as something refers to it: its pin, or an open fd. If the agent
//! only pinned its links, deleting the pin directory (`rm -rf /sys/fs/bpf/lattice-egress`,
//! a bpffs remounted by a careless script) would detach every program at once, silently:
//! the apps' calls would go out unsigned until someone noticed. So the agent holds an fd of
//! each link and map of its generation ([`Held::take`]) — the programs stay attached while
//! it runs, whatever happens to the pins — and on every periodic check
//! ([`Held::restore`]) pins again what is missing, so that `status`, `enroll` and the next
//! agent (which adopts by pin) find everything where it belongs.
//!
//! It never restores over a newer agent: when another generation is pinned beside ours (a
//! rolling upgrade attached it and removed ours), ours is let go (its fds closed, so its
//! links detach once unpinned).

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::install::{Layout, MAP_NAMES};
use crate::sys;
use redirector_common::programs;

/// The fds of one generation's links and of the maps, with their pin paths.
#[derive(Debug)]
pub struct Held {
    layout: Layout,
    generation: PathBuf,
    objects: Vec<(PathBuf, OwnedFd)>,
}

/// What a [`Held::restore`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Restored {
    /// Every pin was in place.
    Intact,
    /// These pins were missing and are pinned again.
    Pinned(Vec<PathBuf>),
    /// Another generation is pinned beside ours (a newer agent): nothing was restored.
    Replaced { by: Vec<PathBuf> },
}

impl Held {
    /// Opens every link pin of `generation` and every map pin of `layout`.
    pub fn take(layout: &Layout, generation: &Path) -> Result<Held> {
        let paths = programs::ALL
            .iter()
            .map(|name| generation.join(name))
            .chain(MAP_NAMES.iter().map(|name| layout.maps().join(name)));
        let objects = paths
            .map(|path| {
                let fd = sys::obj_get(&path).map_err(|e| Error::Pin {
                    path: path.clone(),
                    what: format!("cannot open the pinned object: {e}"),
                })?;
                Ok((path, fd))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Held {
            layout: layout.clone(),
            generation: generation.to_path_buf(),
            objects,
        })
    }

    /// Pins again each object whose pin is gone, unless a newer generation replaced ours:
    /// then the references are let go, so that our links detach as the newer agent meant.
    pub fn restore(&mut self) -> Result<Restored> {
        let others: Vec<PathBuf> = self
            .layout
            .generations()
            .into_iter()
            .filter(|g| *g != self.generation)
            .collect();
        if !others.is_empty() {
            self.objects.clear();
            return Ok(Restored::Replaced { by: others });
        }
        let mut pinned = Vec::new();
        for (path, fd) in &self.objects {
            // symlink_metadata: a pin is a file on bpffs; anything at the path counts as
            // present (it is not ours to replace).
            if path.symlink_metadata().is_ok() {
                continue;
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| Error::Pin {
                    path: dir.to_path_buf(),
                    what: format!("cannot recreate the pin directory: {e}"),
                })?;
            }
            sys::pin(fd.as_fd(), path).map_err(|e| Error::Pin {
                path: path.clone(),
                what: format!("cannot pin the agent's object again: {e}"),
            })?;
            pinned.push(path.clone());
        }
        Ok(if pinned.is_empty() {
            Restored::Intact
        } else {
            Restored::Pinned(pinned)
        })
    }
}
