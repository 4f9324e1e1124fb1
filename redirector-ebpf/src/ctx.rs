//! Reads and writes of the raw program contexts, in one place. Addresses stay in network
//! order as byte arrays; ports are converted to host order here and nowhere else.

use aya_ebpf::programs::{SockAddrContext, SockoptContext};
use redirector_common::{OrigDst, PeerKey};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;

#[inline(always)]
pub fn is_tcp(ctx: &SockAddrContext) -> bool {
    // SAFETY: the kernel hands a valid bpf_sock_addr.
    let sa = unsafe { &*ctx.sock_addr };
    sa.type_ == SOCK_STREAM && sa.protocol == IPPROTO_TCP
}

#[inline(always)]
pub fn user_ip4(ctx: &SockAddrContext) -> [u8; 4] {
    // SAFETY: as above; user_ip4 holds the address in network order.
    unsafe { (*ctx.sock_addr).user_ip4 }.to_ne_bytes()
}

#[inline(always)]
pub fn set_user_ip4(ctx: &SockAddrContext, addr: [u8; 4]) {
    // SAFETY: user_ip4 is writable in connect4/getpeername4 programs.
    unsafe { (*ctx.sock_addr).user_ip4 = u32::from_ne_bytes(addr) };
}

#[inline(always)]
pub fn user_ip6(ctx: &SockAddrContext) -> [u8; 16] {
    // SAFETY: the verifier allows 4-byte reads of user_ip6.
    let w = unsafe { read_words(core::ptr::addr_of!((*ctx.sock_addr).user_ip6)) };
    words_to_bytes(w)
}

/// Reads a 4-word address field one word at a time, straight from the context: the
/// verifier refuses a derived pointer into ctx or a socket (`r1 += 28; *(r1 + 0)`), which a
/// plain array copy compiles to.
///
/// # Safety
/// `p` must point at a readable context or socket field of four u32.
#[inline(always)]
pub unsafe fn read_words(p: *const [u32; 4]) -> [u32; 4] {
    let p = p as *const u32;
    [
        core::ptr::read_volatile(p),
        core::ptr::read_volatile(p.add(1)),
        core::ptr::read_volatile(p.add(2)),
        core::ptr::read_volatile(p.add(3)),
    ]
}

#[inline(always)]
pub fn set_user_ip6(ctx: &SockAddrContext, addr: [u8; 16]) {
    // SAFETY: the verifier allows 4-byte writes of user_ip6 in connect6/getpeername6.
    unsafe {
        let sa = &mut *ctx.sock_addr;
        sa.user_ip6[0] = u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]);
        sa.user_ip6[1] = u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]);
        sa.user_ip6[2] = u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]);
        sa.user_ip6[3] = u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]);
    }
}

/// Destination port, host order (user_port holds a big-endian u16 in its low bytes).
#[inline(always)]
pub fn user_port(ctx: &SockAddrContext) -> u32 {
    // SAFETY: the kernel hands a valid bpf_sock_addr.
    let raw = unsafe { (*ctx.sock_addr).user_port };
    u16::from_be(raw as u16) as u32
}

#[inline(always)]
pub fn set_user_port(ctx: &SockAddrContext, port: u32) {
    // SAFETY: user_port is writable in connect/getpeername programs.
    unsafe { (*ctx.sock_addr).user_port = (port as u16).to_be() as u32 };
}

/// Network-order words (as the kernel stores IPv6 addresses) to bytes.
#[inline(always)]
pub fn words_to_bytes(w: [u32; 4]) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&w[0].to_ne_bytes());
    b[4..8].copy_from_slice(&w[1].to_ne_bytes());
    b[8..12].copy_from_slice(&w[2].to_ne_bytes());
    b[12..16].copy_from_slice(&w[3].to_ne_bytes());
    b
}

/// `::ffff:a.b.c.d` → `a.b.c.d`.
#[inline(always)]
pub fn v4_mapped(addr: &[u8; 16]) -> Option<[u8; 4]> {
    let prefix_ok = addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff;
    if prefix_ok {
        Some([addr[12], addr[13], addr[14], addr[15]])
    } else {
        None
    }
}

/// `a.b.c.d` → `::ffff:a.b.c.d`.
#[inline(always)]
pub fn map_v4(v4: [u8; 4]) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[10] = 0xff;
    b[11] = 0xff;
    b[12..16].copy_from_slice(&v4);
    b
}

#[inline(always)]
pub fn sockopt_level(ctx: &SockoptContext) -> i32 {
    // SAFETY: the kernel hands a valid bpf_sockopt.
    unsafe { (*ctx.sockopt).level }
}

#[inline(always)]
pub fn sockopt_name(ctx: &SockoptContext) -> i32 {
    // SAFETY: the kernel hands a valid bpf_sockopt.
    unsafe { (*ctx.sockopt).optname }
}

/// The peer of the socket getsockopt is called on (for the proxy: the app's end).
#[inline(always)]
pub fn sockopt_peer(ctx: &SockoptContext) -> Option<PeerKey> {
    // SAFETY: the kernel hands a valid bpf_sockopt whose sk is a full socket.
    let sk = unsafe { (*ctx.sockopt).__bindgen_anon_1.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: checked non-null; fields are readable in cgroup/getsockopt.
    let (family, port) = unsafe { ((*sk).family, (*sk).dst_port) };
    let addr = match family {
        // SAFETY: as above.
        AF_INET => map_v4(unsafe { (*sk).dst_ip4 }.to_ne_bytes()),
        // SAFETY: as above.
        AF_INET6 => words_to_bytes(unsafe { read_words(core::ptr::addr_of!((*sk).dst_ip6)) }),
        _ => return None,
    };
    Some(PeerKey {
        // SAFETY: bpf_get_netns_cookie accepts the sockopt context (5.15+).
        netns: unsafe { aya_ebpf::helpers::bpf_get_netns_cookie(ctx.sockopt.cast()) },
        addr,
        port: u16::from_be(port) as u32,
        _pad: 0,
    })
}

/// Writes `struct sockaddr_in` for `orig` into the getsockopt buffer.
#[inline(always)]
pub fn answer_sockaddr_in(ctx: &SockoptContext, orig: &OrigDst) -> bool {
    let v4 = if orig.family == 4 {
        [orig.addr[0], orig.addr[1], orig.addr[2], orig.addr[3]]
    } else if let Some(v4) = v4_mapped(&orig.addr) {
        v4
    } else {
        return false;
    };
    let mut buf = [0u8; 16];
    buf[0..2].copy_from_slice(&(AF_INET as u16).to_ne_bytes());
    buf[2..4].copy_from_slice(&(orig.port as u16).to_be_bytes());
    buf[4..8].copy_from_slice(&v4);
    write_optval(ctx, &buf)
}

/// Writes `struct sockaddr_in6` for `orig` (IPv4 as v4-mapped) into the getsockopt buffer.
#[inline(always)]
pub fn answer_sockaddr_in6(ctx: &SockoptContext, orig: &OrigDst) -> bool {
    let addr = if orig.family == 4 {
        map_v4([orig.addr[0], orig.addr[1], orig.addr[2], orig.addr[3]])
    } else {
        orig.addr
    };
    let mut buf = [0u8; 28];
    buf[0..2].copy_from_slice(&(AF_INET6 as u16).to_ne_bytes());
    buf[2..4].copy_from_slice(&(orig.port as u16).to_be_bytes());
    buf[8..24].copy_from_slice(&addr);
    write_optval(ctx, &buf)
}

/// Copies `data` into optval when the caller's buffer is large enough, and reports success.
#[inline(always)]
fn write_optval<const N: usize>(ctx: &SockoptContext, data: &[u8; N]) -> bool {
    // SAFETY: optval..optval_end is the kernel's copy of the caller's buffer; the bound is
    // checked before writing, as the verifier requires.
    unsafe {
        let opt = &mut *ctx.sockopt;
        let start = opt.__bindgen_anon_2.optval as *mut u8;
        let end = opt.__bindgen_anon_3.optval_end as *mut u8;
        if start.is_null() || start.add(N) > end {
            return false;
        }
        core::ptr::copy_nonoverlapping(data.as_ptr(), start, N);
        opt.optlen = N as i32;
        opt.retval = 0;
    }
    true
}
