//! cgroup programs that send TCP connects toward VPC Lattice to the pod's local proxy.
//!
//! - `cgroup/connect4`, `cgroup/connect6`: rewrite the destination of a matching connect to
//!   the proxy and remember the original destination under the socket cookie;
//! - `sockops`: when such a socket starts its handshake, index the original destination by
//!   the app's address and port as the proxy's accepted socket will see them, and forget
//!   both entries when the socket closes;
//! - `cgroup/getsockopt`: answer the proxy's `getsockopt(SOL_IP[V6], SO_ORIGINAL_DST)`
//!   (unprivileged: the proxy cannot open pinned maps);
//! - `cgroup/getpeername4/6`: show the app its original peer.
//!
//! Every program fails open: on an internal error the connect goes where the app asked.
#![no_std]
#![no_main]

mod ctx;

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_TCP_CLOSE,
    },
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_uid_gid, bpf_get_netns_cookie,
        bpf_get_socket_cookie,
    },
    macros::{cgroup_sock_addr, cgroup_sockopt, map, sock_ops},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    programs::{SockAddrContext, SockOpsContext, SockoptContext},
    EbpfContext,
};
use redirector_common::{
    capacity, Counter, Enrollment, GidMode, OrigDst, PeerKey, Policy, PolicyKey, RedirectConfig,
    FLAG_ENABLED, FLAG_LOG_REDIRECTS, FLAG_PROXY_GID, MAX_CGROUP_DEPTH, POLICY_OWN_GIDS,
    POLICY_OWN_PORTS, SOL_IP, SOL_IPV6, SO_ORIGINAL_DST,
};

/// Verdict that lets the syscall proceed (rewritten or not).
const ALLOW: i32 = 1;
/// Where the redirect check connects: loopback, on which no real destination is redirected.
const LOOPBACK_V4: [u8; 4] = [127, 0, 0, 1];
const LOOPBACK_V6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const AF_INET: u32 = 2;

#[map(name = "LE_CONFIG")]
static CONFIG: Array<RedirectConfig> = Array::with_max_entries(1, 0);
#[map(name = "LE_PREFIX4")]
static PREFIXES_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(capacity::PREFIXES, 0);
#[map(name = "LE_PREFIX6")]
static PREFIXES_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(capacity::PREFIXES, 0);
#[map(name = "LE_PORTS")]
static PORTS: HashMap<PolicyKey, u32> = HashMap::with_max_entries(capacity::PORTS, 0);
#[map(name = "LE_GIDS")]
static GIDS: HashMap<PolicyKey, u32> = HashMap::with_max_entries(capacity::GIDS, 0);
#[map(name = "LE_CGROUPS")]
static CGROUPS: HashMap<u64, Enrollment> = HashMap::with_max_entries(capacity::CGROUPS, 0);
#[map(name = "LE_POLICIES")]
static POLICIES: Array<Policy> = Array::with_max_entries(capacity::POLICIES, 0);
#[map(name = "LE_SOCKETS")]
static SOCKETS: LruHashMap<u64, OrigDst> = LruHashMap::with_max_entries(capacity::CONNECTIONS, 0);
#[map(name = "LE_PEERS")]
static PEERS: LruHashMap<PeerKey, OrigDst> = LruHashMap::with_max_entries(capacity::CONNECTIONS, 0);
#[map(name = "LE_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot is only touched by this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Why a connect is left alone.
type Skip = Counter;

#[cgroup_sock_addr(connect4)]
pub fn le_connect4(ctx: SockAddrContext) -> i32 {
    if let Err(reason) = try_connect4(&ctx) {
        count(reason);
    }
    ALLOW
}

fn try_connect4(ctx: &SockAddrContext) -> Result<(), Skip> {
    let cfg = config()?;
    if !ctx::is_tcp(ctx) {
        return Err(Counter::SkipNotTcp);
    }
    let dst = ctx::user_ip4(ctx);
    let port = ctx::user_port(ctx);
    if dst == cfg.proxy_v4 && port == cfg.proxy_port {
        return Err(Counter::SkipLoop);
    }
    if port == cfg.canary_port && dst == LOOPBACK_V4 {
        return canary(ctx, cfg, cfg.proxy_v4, None);
    }
    if PREFIXES_V4.get(Key::new(32, dst)).is_none() {
        return Err(Counter::SkipPrefix);
    }
    check_port_gid_cgroup(cfg, port)?;

    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&dst);
    record(
        ctx,
        OrigDst {
            addr,
            port,
            family: 4,
        },
    );
    ctx::set_user_ip4(ctx, cfg.proxy_v4);
    ctx::set_user_port(ctx, cfg.proxy_port);
    count(Counter::Redirected);
    if cfg.flags & FLAG_LOG_REDIRECTS != 0 {
        aya_log_ebpf::info!(
            ctx,
            "redirect {:i}:{} -> proxy port {}",
            dst,
            port,
            cfg.proxy_port
        );
    }
    Ok(())
}

#[cgroup_sock_addr(connect6)]
pub fn le_connect6(ctx: SockAddrContext) -> i32 {
    if let Err(reason) = try_connect6(&ctx) {
        count(reason);
    }
    ALLOW
}

fn try_connect6(ctx: &SockAddrContext) -> Result<(), Skip> {
    let cfg = config()?;
    if !ctx::is_tcp(ctx) {
        return Err(Counter::SkipNotTcp);
    }
    let dst = ctx::user_ip6(ctx);
    let port = ctx::user_port(ctx);
    // A dual-stack socket connecting to ::ffff:a.b.c.d speaks IPv4: match it against the
    // IPv4 prefixes and send it to the IPv4 proxy address, mapped.
    let mapped = ctx::v4_mapped(&dst);
    let proxy = match mapped {
        Some(_) => ctx::map_v4(cfg.proxy_v4),
        None => cfg.proxy_v6,
    };
    if dst == proxy && port == cfg.proxy_port {
        return Err(Counter::SkipLoop);
    }
    if port == cfg.canary_port && (dst == LOOPBACK_V6 || dst == ctx::map_v4(LOOPBACK_V4)) {
        return canary(ctx, cfg, [0; 4], Some(proxy));
    }
    let in_prefixes = match mapped {
        Some(v4) => PREFIXES_V4.get(Key::new(32, v4)).is_some(),
        None => PREFIXES_V6.get(Key::new(128, dst)).is_some(),
    };
    if !in_prefixes {
        return Err(Counter::SkipPrefix);
    }
    check_port_gid_cgroup(cfg, port)?;

    record(
        ctx,
        OrigDst {
            addr: dst,
            port,
            family: 6,
        },
    );
    ctx::set_user_ip6(ctx, proxy);
    ctx::set_user_port(ctx, cfg.proxy_port);
    count(Counter::Redirected);
    if cfg.flags & FLAG_LOG_REDIRECTS != 0 {
        aya_log_ebpf::info!(
            ctx,
            "redirect [{:i}]:{} -> proxy port {}",
            dst,
            port,
            cfg.proxy_port
        );
    }
    Ok(())
}

/// A redirect check (see [`RedirectConfig::canary_port`]): sent to the proxy when the
/// caller's cgroup is enrolled, whatever its GID; nothing is recorded.
#[inline(always)]
fn canary(
    ctx: &SockAddrContext,
    cfg: &RedirectConfig,
    proxy_v4: [u8; 4],
    proxy_v6: Option<[u8; 16]>,
) -> Result<(), Skip> {
    if cfg.canary_port == 0 {
        return Err(Counter::SkipPrefix);
    }
    if enrolled().is_none() {
        return Err(Counter::SkipNotEnrolled);
    }
    match proxy_v6 {
        Some(v6) => ctx::set_user_ip6(ctx, v6),
        None => ctx::set_user_ip4(ctx, proxy_v4),
    }
    ctx::set_user_port(ctx, cfg.proxy_port);
    count(Counter::Canary);
    Ok(())
}

#[inline(always)]
fn config() -> Result<&'static RedirectConfig, Skip> {
    match CONFIG.get(0) {
        Some(cfg) if cfg.flags & FLAG_ENABLED != 0 => Ok(cfg),
        _ => Err(Counter::SkipUnconfigured),
    }
}

/// The checks shared by both families: the proxy's GID (cheap), then the enrollment of
/// the caller's cgroup, whose policy says which ports and GIDs count.
#[inline(always)]
fn check_port_gid_cgroup(cfg: &RedirectConfig, port: u32) -> Result<(), Skip> {
    // The real GID of the calling task (iptables' owner match uses the socket file's fsgid;
    // the two differ only for set-gid programs).
    let gid = (bpf_get_current_uid_gid() >> 32) as u32;
    if cfg.flags & FLAG_PROXY_GID != 0 && gid == cfg.proxy_gid {
        return Err(Counter::SkipProxyGid);
    }
    let policy = enrolled().ok_or(Counter::SkipNotEnrolled)?;
    // Policy 0, the node-wide sets, is the common case: no policy lookup for it.
    let (own, gid_mode) = match policy {
        0 => (0, cfg.gid_mode),
        id => match POLICIES.get(id) {
            Some(p) => (p.flags, p.gid_mode),
            None => (0, cfg.gid_mode),
        },
    };
    let port_policy = if own & POLICY_OWN_PORTS != 0 { policy } else { 0 };
    if PORTS
        .get_ptr(&PolicyKey {
            policy: port_policy,
            value: port,
        })
        .is_none()
    {
        return Err(Counter::SkipPort);
    }
    let gid_policy = if own & POLICY_OWN_GIDS != 0 { policy } else { 0 };
    let listed = GIDS
        .get_ptr(&PolicyKey {
            policy: gid_policy,
            value: gid,
        })
        .is_some();
    let redirect = if gid_mode == GidMode::AllExcept as u32 {
        !listed
    } else {
        listed
    };
    if !redirect {
        return Err(Counter::SkipGid);
    }
    Ok(())
}

/// The policy of the deepest enrolled cgroup among the caller's and its ancestors' (a
/// pod's own enrollment wins over one of a cgroup above it), if any is enrolled.
#[inline(always)]
fn enrolled() -> Option<u32> {
    let mut found = None;
    // Level 0 is the root; the walk ends below the caller's own cgroup.
    let mut level = 0;
    while level < MAX_CGROUP_DEPTH {
        // SAFETY: helper without preconditions; 0 means "deeper than the task's cgroup".
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            break;
        }
        // SAFETY: the value is copied out at once.
        if let Some(e) = unsafe { CGROUPS.get(&id) } {
            found = Some(e.policy);
        }
        level += 1;
    }
    found
}

/// Remembers the original destination of the connecting socket.
#[inline(always)]
fn record(ctx: &SockAddrContext, orig: OrigDst) {
    // SAFETY: the context is a valid bpf_sock_addr with a socket.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if SOCKETS.insert(&cookie, &orig, 0).is_err() {
        count(Counter::RecordFailed);
    }
}

#[sock_ops]
pub fn le_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => on_close(&ctx),
        _ => {}
    }
    1
}

/// The app's end of the connection, as the proxy's accepted socket sees its peer.
#[inline(always)]
fn peer_key(ctx: &SockOpsContext) -> PeerKey {
    let addr = if ctx.family() == AF_INET {
        ctx::map_v4(ctx.local_ip4().to_ne_bytes())
    } else {
        // SAFETY: local_ip6 is readable in sock_ops programs.
        ctx::words_to_bytes(unsafe { ctx::read_words(core::ptr::addr_of!((*ctx.ops).local_ip6)) })
    };
    PeerKey {
        // SAFETY: the context is a valid bpf_sock_ops.
        netns: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        addr,
        port: ctx.local_port(),
        _pad: 0,
    }
}

fn on_connect(ctx: &SockOpsContext) {
    // SAFETY: the context is a valid bpf_sock_ops.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once.
    let Some(orig) = (unsafe { SOCKETS.get(&cookie) }).copied() else {
        return;
    };
    if PEERS.insert(&peer_key(ctx), &orig, 0).is_err() {
        count(Counter::RecordFailed);
    }
    // Ask for state callbacks so both entries go when the socket closes.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

fn on_close(ctx: &SockOpsContext) {
    // SAFETY: the context is a valid bpf_sock_ops.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if SOCKETS.remove(&cookie).is_ok() {
        let _ = PEERS.remove(&peer_key(ctx));
    }
}

#[cgroup_sockopt(getsockopt)]
pub fn le_getsockopt(ctx: SockoptContext) -> i32 {
    let level = ctx::sockopt_level(&ctx);
    if ctx::sockopt_name(&ctx) != SO_ORIGINAL_DST || (level != SOL_IP && level != SOL_IPV6) {
        return ALLOW;
    }
    let Some(key) = ctx::sockopt_peer(&ctx) else {
        return ALLOW;
    };
    // SAFETY: the value is copied out at once.
    let Some(orig) = (unsafe { PEERS.get(&key) }).copied() else {
        return ALLOW;
    };
    let answered = if level == SOL_IP {
        ctx::answer_sockaddr_in(&ctx, &orig)
    } else {
        ctx::answer_sockaddr_in6(&ctx, &orig)
    };
    if answered {
        count(Counter::OrigDstAnswered);
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn le_getpeername4(ctx: SockAddrContext) -> i32 {
    // accept() runs this hook too, for every socket of the cgroup: only a socket whose peer
    // is the proxy can be a redirected one, so the others skip the cookie lookup.
    let Ok(cfg) = config() else {
        return ALLOW;
    };
    if ctx::user_ip4(&ctx) != cfg.proxy_v4 || ctx::user_port(&ctx) != cfg.proxy_port {
        return ALLOW;
    }
    // SAFETY: the context is a valid bpf_sock_addr with a socket.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once.
    if let Some(orig) = (unsafe { SOCKETS.get(&cookie) }).copied() {
        if orig.family == 4 {
            let mut v4 = [0u8; 4];
            v4.copy_from_slice(&orig.addr[..4]);
            ctx::set_user_ip4(&ctx, v4);
            ctx::set_user_port(&ctx, orig.port);
            count(Counter::PeerRestored);
        }
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn le_getpeername6(ctx: SockAddrContext) -> i32 {
    // As for IPv4: only a peer that is the proxy (IPv6, or v4-mapped) can be redirected.
    let Ok(cfg) = config() else {
        return ALLOW;
    };
    let peer = ctx::user_ip6(&ctx);
    if ctx::user_port(&ctx) != cfg.proxy_port
        || (peer != cfg.proxy_v6 && peer != ctx::map_v4(cfg.proxy_v4))
    {
        return ALLOW;
    }
    // SAFETY: the context is a valid bpf_sock_addr with a socket.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once.
    if let Some(orig) = (unsafe { SOCKETS.get(&cookie) }).copied() {
        if orig.family == 6 {
            ctx::set_user_ip6(&ctx, orig.addr);
            ctx::set_user_port(&ctx, orig.port);
            count(Counter::PeerRestored);
        }
    }
    ALLOW
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
