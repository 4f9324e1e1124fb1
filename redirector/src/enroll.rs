//! Enrollment: which cgroups are redirected. A cgroup is named by its path under the cgroup2
//! mount and recorded by id in the cgroup map, together with who enrolled it, so that a
//! configuration reload, a command run by hand and (later) the Kubernetes pod watcher never
//! undo each other's entries. The programs check the caller's cgroup and its ancestors, so
//! enrolling a pod's cgroup covers all of its containers.

use crate::config::cgroup_path;
use crate::error::Result;
use crate::host;
use crate::maps::{Maps, Source};
use std::path::{Path, PathBuf};

/// Enrolls and un-enrolls cgroups on behalf of one [`Source`].
pub struct Enrollment<'a> {
    maps: &'a mut Maps,
    cgroup_root: &'a Path,
    source: Source,
}

impl<'a> Enrollment<'a> {
    /// Enrollment into `maps` for `source`; paths are resolved inside `cgroup_root`.
    pub fn new(maps: &'a mut Maps, cgroup_root: &'a Path, source: Source) -> Self {
        Enrollment {
            maps,
            cgroup_root,
            source,
        }
    }

    /// Enrolls the cgroup at `path` (must exist); returns its resolved path and id.
    pub fn enroll(&mut self, path: &Path) -> Result<(PathBuf, u64)> {
        let real = cgroup_path(self.cgroup_root, path)?;
        let id = host::cgroup_id(&real)?;
        self.maps.enroll(id, self.source)?;
        Ok((real, id))
    }

    /// Un-enrolls the cgroup at `path`; false when it was not enrolled.
    pub fn unenroll(&mut self, path: &Path) -> Result<bool> {
        let real = cgroup_path(self.cgroup_root, path)?;
        let id = host::cgroup_id(&real)?;
        self.maps.unenroll(id)
    }

    /// Makes this source's enrollments exactly `paths` (already resolved).
    pub fn sync(&mut self, paths: &[PathBuf]) -> Result<()> {
        let ids = paths
            .iter()
            .map(|p| host::cgroup_id(p))
            .collect::<Result<Vec<u64>>>()?;
        self.maps.sync_enrolled(&ids, self.source)
    }
}
