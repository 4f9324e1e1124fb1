//! Types shared by the eBPF programs (redirector-ebpf) and the node agent (lattice-redirector):
//! every map's name, key and value, defined once. Everything is `#[repr(C)]`, free of padding
//! (checked at compile time) and of `bool`/`Option`, so both sides read the same bytes.
//! Addresses are kept as network-order byte arrays: no endianness guesswork.
#![no_std]

/// Version of the pinned layout. The agent pins under `<bpffs>/lattice-egress/v<N>/`, so a
/// new layout never reuses maps of an old one (aya does not check key/value sizes of a
/// pinned map it reuses).
pub const LAYOUT_VERSION: u32 = 2;

/// Map names (≤ 15 bytes: the kernel truncates longer names).
pub mod maps {
    /// `Array<RedirectConfig>`, one slot: where to redirect and the GID policy.
    pub const CONFIG: &str = "LE_CONFIG";
    /// `LpmTrie<[u8; 4], u32>`: IPv4 destination prefixes to redirect.
    pub const PREFIXES_V4: &str = "LE_PREFIX4";
    /// `LpmTrie<[u8; 16], u32>`: IPv6 destination prefixes to redirect.
    pub const PREFIXES_V6: &str = "LE_PREFIX6";
    /// `HashMap<PolicyKey, u32>`: destination ports (host order) to redirect, per policy
    /// (policy 0: the node-wide configuration).
    pub const PORTS: &str = "LE_PORTS";
    /// `HashMap<PolicyKey, u32>`: GIDs each policy lists (see [`super::GidMode`]).
    pub const GIDS: &str = "LE_GIDS";
    /// `HashMap<u64, Enrollment>`: enrolled cgroup ids (cgroup v2 inode numbers); a connect
    /// is redirected when the caller's cgroup or one of its ancestors is enrolled, under the
    /// policy of the nearest enrolled one.
    pub const CGROUPS: &str = "LE_CGROUPS";
    /// `Array<Policy>`: per-pod policies, by id (slot 0 unused: policy 0 is the node-wide
    /// configuration in [`CONFIG`]).
    pub const POLICIES: &str = "LE_POLICIES";
    /// `LruHashMap<u64, OrigDst>`: socket cookie of a redirected app socket → its original
    /// destination (answers the app's getpeername).
    pub const SOCKETS: &str = "LE_SOCKETS";
    /// `LruHashMap<PeerKey, OrigDst>`: the app side of a redirected connection, as the
    /// proxy's accepted socket sees its peer → original destination (answers the proxy's
    /// getsockopt SO_ORIGINAL_DST).
    pub const PEERS: &str = "LE_PEERS";
    /// `PerCpuArray<u64>`, indexed by [`super::Counter`].
    pub const COUNTERS: &str = "LE_COUNTERS";
    /// Every map, for pinning.
    pub const ALL: [&str; 10] = [
        CONFIG,
        PREFIXES_V4,
        PREFIXES_V6,
        PORTS,
        GIDS,
        CGROUPS,
        POLICIES,
        SOCKETS,
        PEERS,
        COUNTERS,
    ];
}

/// Program names (≤ 15 bytes; `doctor` and `status` match on them).
pub mod programs {
    pub const CONNECT4: &str = "le_connect4";
    pub const CONNECT6: &str = "le_connect6";
    pub const GETPEERNAME4: &str = "le_getpeername4";
    pub const GETPEERNAME6: &str = "le_getpeername6";
    pub const SOCK_OPS: &str = "le_sockops";
    pub const GETSOCKOPT: &str = "le_getsockopt";
    /// All programs, in attach order.
    pub const ALL: [&str; 6] = [
        SOCK_OPS,
        GETSOCKOPT,
        GETPEERNAME4,
        GETPEERNAME6,
        CONNECT4,
        CONNECT6,
    ];
}

/// Capacities of the maps.
pub mod capacity {
    pub const PREFIXES: u32 = 256;
    /// Ports over all policies.
    pub const PORTS: u32 = 8_192;
    /// GIDs over all policies.
    pub const GIDS: u32 = 8_192;
    pub const CGROUPS: u32 = 16_384;
    /// Per-pod policies (a pod with GID or port annotations has one); slot 0 is unused.
    pub const POLICIES: u32 = 4_096;
    /// Live redirected connections tracked per node; LRU evicts the oldest beyond that, and
    /// sock_ops deletes entries when a socket closes.
    pub const CONNECTIONS: u32 = 65_536;
}

/// How many cgroup ancestors the programs inspect for enrollment (pod cgroups sit a few
/// levels below the root: kubepods.slice/kubepods-burstable.slice/…-pod<uid>.slice/cri-…).
pub const MAX_CGROUP_DEPTH: i32 = 16;

/// `RedirectConfig::flags`: the agent has written a configuration; nothing is redirected
/// before that.
pub const FLAG_ENABLED: u32 = 1;
/// `RedirectConfig::flags`: emit an aya-log record for every redirected connect.
pub const FLAG_LOG_REDIRECTS: u32 = 1 << 1;
/// `RedirectConfig::flags`: `proxy_gid` is set (a connect from it is never rewritten).
pub const FLAG_PROXY_GID: u32 = 1 << 2;

/// How the GID set is read.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GidMode {
    /// Redirect only callers whose GID is listed (default: 1000, the seed's `runAsGroup`).
    Only = 0,
    /// Redirect every caller except the listed GIDs (the seed's rule: all but gid 0).
    AllExcept = 1,
}

/// The single slot of [`maps::CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedirectConfig {
    /// IPv4 proxy address, network order.
    pub proxy_v4: [u8; 4],
    /// IPv6 proxy address, network order.
    pub proxy_v6: [u8; 16],
    /// Proxy port, host order.
    pub proxy_port: u32,
    /// A [`GidMode`] as u32.
    pub gid_mode: u32,
    /// GID the proxy runs as (valid when [`FLAG_PROXY_GID`] is set).
    pub proxy_gid: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// The redirect check's port, host order (0: off). A TCP connect to loopback
    /// (127.0.0.1, ::1, ::ffff:127.0.0.1) on this port from an enrolled cgroup goes to the
    /// proxy whatever the caller's GID, the proxy's own included: the proxy's readiness
    /// connects there to learn that its pod's connects are really redirected. Nothing
    /// listens on it, so from a cgroup that is not enrolled the connect is refused.
    pub canary_port: u32,
}
const _: () = assert!(core::mem::size_of::<RedirectConfig>() == 40);

/// Value of [`maps::CGROUPS`]: who enrolled the cgroup, and under which policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enrollment {
    /// Who enrolled it (the agent's own numbering: configuration, command, Kubernetes).
    pub source: u32,
    /// 0: the node-wide ports and GIDs; otherwise an index of [`maps::POLICIES`].
    pub policy: u32,
}
const _: () = assert!(core::mem::size_of::<Enrollment>() == 8);

/// Key of [`maps::PORTS`] and [`maps::GIDS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyKey {
    /// 0 for the node-wide sets, or the policy the entry belongs to.
    pub policy: u32,
    /// A port (host order) or a GID.
    pub value: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 8);

/// `Policy::flags`: the policy lists its own ports (under its id in [`maps::PORTS`]);
/// otherwise the node-wide ports apply.
pub const POLICY_OWN_PORTS: u32 = 1;
/// `Policy::flags`: the policy lists its own GIDs (under its id in [`maps::GIDS`], read
/// with `Policy::gid_mode`); otherwise the node-wide GIDs and mode apply.
pub const POLICY_OWN_GIDS: u32 = 1 << 1;

/// A slot of [`maps::POLICIES`]: one pod's own ports and GIDs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `POLICY_*` bits; 0 in an unused slot.
    pub flags: u32,
    /// A [`GidMode`] as u32, for its own GIDs.
    pub gid_mode: u32,
}
const _: () = assert!(core::mem::size_of::<Policy>() == 8);

/// A destination as the app asked for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrigDst {
    /// Address, network order; IPv4 in the first 4 bytes when `family == 4`.
    pub addr: [u8; 16],
    /// Port, host order.
    pub port: u32,
    /// 4 or 6: the family of the app's connect (a v4-mapped IPv6 connect counts as 6 with
    /// the mapped address).
    pub family: u32,
}
const _: () = assert!(core::mem::size_of::<OrigDst>() == 24);

/// Key of [`maps::PEERS`]: the app's end of a redirected connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerKey {
    /// Network-namespace cookie: pods reuse the same loopback addresses and ports.
    pub netns: u64,
    /// App address, network order, IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// App port, host order.
    pub port: u32,
    /// Always 0 (explicit, so the key has no padding).
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<PeerKey>() == 32);

/// Indexes of [`maps::COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A connect rewritten to the proxy.
    Redirected = 0,
    /// Skipped: not TCP.
    SkipNotTcp = 1,
    /// Skipped: destination outside the prefixes.
    SkipPrefix = 2,
    /// Skipped: destination port not in the set.
    SkipPort = 3,
    /// Skipped: the caller's GID is the proxy's.
    SkipProxyGid = 4,
    /// Skipped: the GID policy excludes the caller.
    SkipGid = 5,
    /// Skipped: the caller's cgroup is not enrolled.
    SkipNotEnrolled = 6,
    /// Skipped: already aimed at the proxy.
    SkipLoop = 7,
    /// Skipped: no configuration written yet.
    SkipUnconfigured = 8,
    /// The original destination could not be recorded (map full or error).
    RecordFailed = 9,
    /// A getsockopt(SO_ORIGINAL_DST) answered from the map.
    OrigDstAnswered = 10,
    /// A getpeername rewritten to the original destination.
    PeerRestored = 11,
    /// A redirect-check connect (loopback, [`RedirectConfig::canary_port`]) sent to the proxy.
    Canary = 12,
}

impl Counter {
    /// Number of counters (the map's size).
    pub const COUNT: u32 = 13;
    /// All counters, by index.
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::Redirected,
        Counter::SkipNotTcp,
        Counter::SkipPrefix,
        Counter::SkipPort,
        Counter::SkipProxyGid,
        Counter::SkipGid,
        Counter::SkipNotEnrolled,
        Counter::SkipLoop,
        Counter::SkipUnconfigured,
        Counter::RecordFailed,
        Counter::OrigDstAnswered,
        Counter::PeerRestored,
        Counter::Canary,
    ];

    /// Stable name for metrics and `status`.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Redirected => "redirected",
            Counter::SkipNotTcp => "skip_not_tcp",
            Counter::SkipPrefix => "skip_prefix",
            Counter::SkipPort => "skip_port",
            Counter::SkipProxyGid => "skip_proxy_gid",
            Counter::SkipGid => "skip_gid",
            Counter::SkipNotEnrolled => "skip_not_enrolled",
            Counter::SkipLoop => "skip_loop",
            Counter::SkipUnconfigured => "skip_unconfigured",
            Counter::RecordFailed => "record_failed",
            Counter::OrigDstAnswered => "orig_dst_answered",
            Counter::PeerRestored => "peer_restored",
            Counter::Canary => "canary_redirected",
        }
    }
}

/// `SO_ORIGINAL_DST` (linux/netfilter_ipv4.h) at level `SOL_IP`, and `IP6T_SO_ORIGINAL_DST`
/// at `SOL_IPV6`: the proxy asks exactly what it would ask of conntrack.
pub const SO_ORIGINAL_DST: i32 = 80;
/// `SOL_IP`.
pub const SOL_IP: i32 = 0;
/// `SOL_IPV6`.
pub const SOL_IPV6: i32 = 41;

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are repr(C), padding-free (sizes asserted above) and valid for
    // any bit pattern.
    unsafe impl aya::Pod for super::RedirectConfig {}
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::PeerKey {}
    unsafe impl aya::Pod for super::Enrollment {}
    unsafe impl aya::Pod for super::PolicyKey {}
    unsafe impl aya::Pod for super::Policy {}
}
