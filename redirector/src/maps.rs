//! Typed access to the pinned maps: writing the configuration into them, enrollment entries
//! and reading the counters. Opening by pin path works from any process (the daemon, or a
//! `status`/`enroll` command run beside it).

use crate::config::Redirect;
use crate::error::{Error, Result};
use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, PerCpuArray};
use redirector_common::{
    capacity, maps as names, Counter, Enrollment, GidMode, OrigDst, PeerKey, Policy, PolicyKey,
    RedirectConfig, FLAG_ENABLED, FLAG_LOG_REDIRECTS, FLAG_PROXY_GID, POLICY_OWN_GIDS,
    POLICY_OWN_PORTS,
};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

/// Who enrolled a cgroup (the value of its entry in the cgroup map).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The agent's configuration (file or flags); reconciled on every reload.
    Config = 1,
    /// `lattice-redirector enroll`; left alone by reloads.
    Command = 2,
    /// The Kubernetes pod watcher.
    Kubernetes = 3,
}

impl Source {
    /// Name for `status`.
    pub fn name(v: u32) -> &'static str {
        match v {
            1 => "config",
            2 => "command",
            3 => "kubernetes",
            _ => "unknown",
        }
    }
}

/// All maps of one installation.
pub struct Maps {
    config: Array<MapData, RedirectConfig>,
    v4: LpmTrie<MapData, [u8; 4], u32>,
    v6: LpmTrie<MapData, [u8; 16], u32>,
    ports: HashMap<MapData, PolicyKey, u32>,
    gids: HashMap<MapData, PolicyKey, u32>,
    cgroups: HashMap<MapData, u64, Enrollment>,
    policies: Array<MapData, Policy>,
    sockets: HashMap<MapData, u64, OrigDst>,
    peers: HashMap<MapData, PeerKey, OrigDst>,
    counters: PerCpuArray<MapData, u64>,
}

fn open(dir: &Path, name: &'static str) -> Result<MapData> {
    let path = dir.join(name);
    MapData::from_pin(&path).map_err(|e| Error::Pin {
        path,
        what: format!("cannot open pinned map: {e}"),
    })
}

impl Maps {
    /// Opens the maps pinned in `dir`.
    pub fn open(dir: &Path) -> Result<Maps> {
        Ok(Maps {
            config: Array::try_from(Map::Array(open(dir, names::CONFIG)?))
                .map_err(Error::map(names::CONFIG))?,
            v4: LpmTrie::try_from(Map::LpmTrie(open(dir, names::PREFIXES_V4)?))
                .map_err(Error::map(names::PREFIXES_V4))?,
            v6: LpmTrie::try_from(Map::LpmTrie(open(dir, names::PREFIXES_V6)?))
                .map_err(Error::map(names::PREFIXES_V6))?,
            ports: HashMap::try_from(Map::HashMap(open(dir, names::PORTS)?))
                .map_err(Error::map(names::PORTS))?,
            gids: HashMap::try_from(Map::HashMap(open(dir, names::GIDS)?))
                .map_err(Error::map(names::GIDS))?,
            cgroups: HashMap::try_from(Map::HashMap(open(dir, names::CGROUPS)?))
                .map_err(Error::map(names::CGROUPS))?,
            policies: Array::try_from(Map::Array(open(dir, names::POLICIES)?))
                .map_err(Error::map(names::POLICIES))?,
            sockets: HashMap::try_from(Map::LruHashMap(open(dir, names::SOCKETS)?))
                .map_err(Error::map(names::SOCKETS))?,
            peers: HashMap::try_from(Map::LruHashMap(open(dir, names::PEERS)?))
                .map_err(Error::map(names::PEERS))?,
            counters: PerCpuArray::try_from(Map::PerCpuArray(open(dir, names::COUNTERS)?))
                .map_err(Error::map(names::COUNTERS))?,
        })
    }

    /// Writes `cfg` into the live maps: new entries are added before stale ones are removed
    /// and the configuration slot is written last, so running connects never see a gap.
    pub fn apply(&mut self, cfg: &Redirect) -> Result<()> {
        let (want4, want6) = prefix_keys(cfg);
        for (len, data) in &want4 {
            self.v4
                .insert(&Key::new(*len, *data), 1, 0)
                .map_err(Error::map(names::PREFIXES_V4))?;
        }
        for (len, data) in &want6 {
            self.v6
                .insert(&Key::new(*len, *data), 1, 0)
                .map_err(Error::map(names::PREFIXES_V6))?;
        }
        let stale4: Vec<Key<[u8; 4]>> = self
            .v4
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !want4.contains(&(k.prefix_len(), k.data())))
            .collect();
        for k in stale4 {
            self.v4.remove(&k).map_err(Error::map(names::PREFIXES_V4))?;
        }
        let stale6: Vec<Key<[u8; 16]>> = self
            .v6
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !want6.contains(&(k.prefix_len(), k.data())))
            .collect();
        for k in stale6 {
            self.v6.remove(&k).map_err(Error::map(names::PREFIXES_V6))?;
        }

        // Policy 0: the node-wide sets; per-pod policies are left alone.
        let ports: Vec<u32> = cfg.ports.iter().map(|p| u32::from(*p)).collect();
        sync_set(&mut self.ports, 0, &ports, names::PORTS)?;
        sync_set(&mut self.gids, 0, &cfg.gids.gids, names::GIDS)?;

        let slot = config_slot(cfg);
        self.config
            .set(0, slot, 0)
            .map_err(Error::map(names::CONFIG))?;
        Ok(())
    }

    /// The configuration slot as the programs see it.
    pub fn config(&self) -> Result<RedirectConfig> {
        self.config.get(&0, 0).map_err(Error::map(names::CONFIG))
    }

    /// Enrolls cgroup `id`, recording who did.
    pub fn enroll(&mut self, id: u64, source: Source) -> Result<()> {
        self.enroll_under(id, source, 0)
    }

    /// Enrolls cgroup `id` under `policy` (0: the node-wide ports and GIDs).
    pub fn enroll_under(&mut self, id: u64, source: Source, policy: u32) -> Result<()> {
        let entry = Enrollment {
            source: source as u32,
            policy,
        };
        self.cgroups
            .insert(id, entry, 0)
            .map_err(Error::map(names::CGROUPS))
    }

    /// Writes per-pod policy `id` (≥ 1): its own ports and its own GIDs (redirected when
    /// listed), each `None` for the node-wide ones. Entries are added before stale ones go.
    pub fn set_policy(
        &mut self,
        id: u32,
        ports: Option<&[u16]>,
        gids: Option<&[u32]>,
    ) -> Result<()> {
        if id == 0 || id >= capacity::POLICIES {
            return Err(Error::Map {
                map: names::POLICIES,
                what: format!("policy {id} is outside 1..{}", capacity::POLICIES),
            });
        }
        let ports: Vec<u32> = ports
            .unwrap_or_default()
            .iter()
            .map(|p| u32::from(*p))
            .collect();
        sync_set(&mut self.ports, id, &ports, names::PORTS)?;
        sync_set(&mut self.gids, id, gids.unwrap_or_default(), names::GIDS)?;
        let mut flags = 0;
        if !ports.is_empty() {
            flags |= POLICY_OWN_PORTS;
        }
        if gids.is_some_and(|g| !g.is_empty()) {
            flags |= POLICY_OWN_GIDS;
        }
        let slot = Policy {
            flags,
            gid_mode: GidMode::Only as u32,
        };
        self.policies
            .set(id, slot, 0)
            .map_err(Error::map(names::POLICIES))
    }

    /// Clears per-pod policy `id` (nothing may be enrolled under it any more).
    pub fn clear_policy(&mut self, id: u32) -> Result<()> {
        if id == 0 {
            return Ok(());
        }
        self.policies
            .set(
                id,
                Policy {
                    flags: 0,
                    gid_mode: 0,
                },
                0,
            )
            .map_err(Error::map(names::POLICIES))?;
        sync_set(&mut self.ports, id, &[], names::PORTS)?;
        sync_set(&mut self.gids, id, &[], names::GIDS)
    }

    /// Ids of the per-pod policies in use (a non-zero slot).
    pub fn policies_in_use(&self) -> Vec<u32> {
        (1..capacity::POLICIES)
            .filter(|i| self.policies.get(i, 0).is_ok_and(|p| p.flags != 0))
            .collect()
    }

    /// Removes the enrollment of cgroup `id`; true when it was enrolled.
    pub fn unenroll(&mut self, id: u64) -> Result<bool> {
        match self.cgroups.remove(&id) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(Error::map(names::CGROUPS)(e)),
        }
    }

    /// Enrolled cgroup ids with their source.
    pub fn enrolled(&self) -> BTreeMap<u64, u32> {
        self.enrollments()
            .into_iter()
            .map(|(id, e)| (id, e.source))
            .collect()
    }

    /// Enrolled cgroup ids with their source and policy.
    pub fn enrollments(&self) -> BTreeMap<u64, Enrollment> {
        self.cgroups.iter().filter_map(|r| r.ok()).collect()
    }

    /// Makes the cgroups enrolled by `source` exactly `ids`; other sources are untouched.
    pub fn sync_enrolled(&mut self, ids: &[u64], source: Source) -> Result<()> {
        for id in ids {
            self.enroll(*id, source)?;
        }
        let stale: Vec<u64> = self
            .enrolled()
            .into_iter()
            .filter(|(id, s)| *s == source as u32 && !ids.contains(id))
            .map(|(id, _)| id)
            .collect();
        for id in stale {
            self.unenroll(id)?;
        }
        Ok(())
    }

    /// Counter totals over all CPUs.
    pub fn counters(&self) -> BTreeMap<&'static str, u64> {
        Counter::ALL
            .iter()
            .map(|c| {
                let total = self
                    .counters
                    .get(&(*c as u32), 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .unwrap_or(0);
                (c.name(), total)
            })
            .collect()
    }

    /// Entries of the connection-tracking maps (sockets, peers).
    pub fn tracked(&self) -> (usize, usize) {
        (self.sockets.keys().count(), self.peers.keys().count())
    }
}

/// An LPM trie key as (prefix length, network-order address bytes).
pub type TrieKey<const N: usize> = (u32, [u8; N]);

/// The LPM trie keys of the configured prefixes, per family.
pub fn prefix_keys(cfg: &Redirect) -> (Vec<TrieKey<4>>, Vec<TrieKey<16>>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for p in &cfg.prefixes {
        match p.addr {
            IpAddr::V4(a) => v4.push((u32::from(p.len), a.octets())),
            IpAddr::V6(a) => v6.push((u32::from(p.len), a.octets())),
        }
    }
    (v4, v6)
}

/// The configuration slot the programs read, encoded from `cfg`.
pub fn config_slot(cfg: &Redirect) -> RedirectConfig {
    let mut flags = FLAG_ENABLED;
    if cfg.log_redirects {
        flags |= FLAG_LOG_REDIRECTS;
    }
    if cfg.proxy_gid.is_some() {
        flags |= FLAG_PROXY_GID;
    }
    RedirectConfig {
        proxy_v4: cfg.proxy_v4.octets(),
        proxy_v6: cfg.proxy_v6.octets(),
        proxy_port: u32::from(cfg.proxy_port),
        gid_mode: cfg.gids.mode as u32,
        proxy_gid: cfg.proxy_gid.unwrap_or(0),
        flags,
        canary_port: cfg.canary_port.map_or(0, u32::from),
    }
}

/// Makes the entries of `policy` in a per-policy set exactly `want`; other policies'
/// entries are untouched.
fn sync_set(
    map: &mut HashMap<MapData, PolicyKey, u32>,
    policy: u32,
    want: &[u32],
    name: &'static str,
) -> Result<()> {
    for value in want {
        map.insert(
            PolicyKey {
                policy,
                value: *value,
            },
            1,
            0,
        )
        .map_err(Error::map(name))?;
    }
    let stale: Vec<PolicyKey> = map
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| k.policy == policy && !want.contains(&k.value))
        .collect();
    for k in stale {
        map.remove(&k).map_err(Error::map(name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{resolve, File, Overrides};
    use redirector_common::GidMode;

    fn cfg(over: Overrides) -> Redirect {
        resolve(&File::default(), &over, &std::env::temp_dir()).unwrap()
    }

    #[test]
    fn prefixes_become_network_order_trie_keys() {
        let (v4, v6) = prefix_keys(&cfg(Overrides::default()));
        assert_eq!(v4, vec![(24, [169, 254, 171, 0])]);
        let mut want6 = [0u8; 16];
        want6[..6].copy_from_slice(&[0xfd, 0x00, 0x0e, 0xc2, 0x00, 0x80]);
        assert_eq!(v6, vec![(64, want6)]);
    }

    #[test]
    fn config_slot_encodes_addresses_port_mode_and_flags() {
        let slot = config_slot(&cfg(Overrides {
            exempt_gids: Some(vec!["0".into()]),
            proxy_gid: Some("none".into()),
            proxy_port: Some("15006".into()),
            log_redirects: Some(true),
            ..Default::default()
        }));
        assert_eq!(slot.proxy_v4, [127, 0, 0, 1]);
        assert_eq!(slot.proxy_v6[15], 1);
        assert_eq!(slot.proxy_port, 15006);
        assert_eq!(slot.gid_mode, GidMode::AllExcept as u32);
        assert_eq!(slot.flags, FLAG_ENABLED | FLAG_LOG_REDIRECTS);

        let slot = config_slot(&cfg(Overrides::default()));
        assert_eq!(slot.gid_mode, GidMode::Only as u32);
        assert_eq!(slot.flags, FLAG_ENABLED | FLAG_PROXY_GID);
        assert_eq!(slot.proxy_gid, 1337);
    }
}
