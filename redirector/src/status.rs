//! `lattice-redirector status`: what is attached, what is enrolled, the counters.

use crate::error::{Error, Result};
use crate::install::{generation_links, Layout};
use crate::maps::{Maps, Source};
use redirector_common::{GidMode, FLAG_ENABLED, FLAG_LOG_REDIRECTS, FLAG_PROXY_GID};
use std::collections::HashMap;
use std::fmt::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Cgroup id → path, for the cgroups under `root` (bounded depth: pods sit ≤ 6 levels down).
fn cgroup_paths(root: &Path) -> HashMap<u64, PathBuf> {
    let mut out = HashMap::new();
    let mut stack = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        if let Ok(m) = std::fs::metadata(&dir) {
            out.insert(m.ino(), dir.clone());
        }
        if depth >= 8 {
            continue;
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push((e.path(), depth + 1));
                }
            }
        }
    }
    out
}

/// Renders the status report.
pub fn report(layout: &Layout, cgroup_root: &Path) -> Result<String> {
    if !layout.exists() {
        return Err(Error::NotInstalled(layout.root.clone()));
    }
    let maps = Maps::open(&layout.maps())?;
    let mut out = String::new();
    let _ = writeln!(out, "pins: {}", layout.root.display());
    let gens = layout.generations();
    if gens.is_empty() {
        let _ = writeln!(
            out,
            "attached: NOTHING (maps are pinned but no links: run the agent)"
        );
    }
    for g in &gens {
        match generation_links(g) {
            Some(links) => {
                let _ = writeln!(
                    out,
                    "attached: generation {}",
                    g.file_name().unwrap_or_default().to_string_lossy()
                );
                for l in links {
                    let _ = writeln!(
                        out,
                        "  {:<16} link {:>6}  program {:>6}",
                        l.program, l.link_id, l.program_id
                    );
                }
            }
            None => {
                let _ = writeln!(
                    out,
                    "attached: generation {} is INCOMPLETE (restart the agent)",
                    g.display()
                );
            }
        }
    }
    let c = maps.config()?;
    if c.flags & FLAG_ENABLED == 0 {
        let _ = writeln!(out, "config: not written yet (nothing is redirected)");
    } else {
        let mode = if c.gid_mode == GidMode::AllExcept as u32 {
            "all GIDs except"
        } else {
            "only GIDs"
        };
        let _ = writeln!(
            out,
            "config: proxy {}:{} / [{}]:{}, {mode} listed, proxy gid {}, redirect check port {}, log redirects {}",
            Ipv4Addr::from(c.proxy_v4),
            c.proxy_port,
            Ipv6Addr::from(c.proxy_v6),
            c.proxy_port,
            if c.flags & FLAG_PROXY_GID != 0 {
                c.proxy_gid.to_string()
            } else {
                "none".into()
            },
            if c.canary_port != 0 {
                c.canary_port.to_string()
            } else {
                "off".into()
            },
            c.flags & FLAG_LOG_REDIRECTS != 0
        );
    }
    let enrolled = maps.enrollments();
    let paths = cgroup_paths(cgroup_root);
    let _ = writeln!(out, "enrolled cgroups: {}", enrolled.len());
    for (id, e) in &enrolled {
        let path = paths
            .get(id)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(gone)".into());
        let policy = match e.policy {
            0 => String::new(),
            p => format!("  (own ports/GIDs: policy {p})"),
        };
        let _ = writeln!(
            out,
            "  {id:>10}  {:<10} {path}{policy}",
            Source::name(e.source)
        );
    }
    let _ = writeln!(
        out,
        "per-pod policies in use: {}",
        maps.policies_in_use().len()
    );
    let (sockets, peers) = maps.tracked();
    let _ = writeln!(out, "tracked connections: {sockets} sockets, {peers} peers");
    let _ = writeln!(out, "counters:");
    for (name, v) in maps.counters() {
        let _ = writeln!(out, "  {name:<20} {v}");
    }
    Ok(out)
}
