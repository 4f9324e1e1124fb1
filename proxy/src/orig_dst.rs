//! Original-destination lookup on an accepted socket.
//!
//! When the redirector (or an iptables `REDIRECT` rule) delivered a connection to the proxy,
//! `getsockopt(SO_ORIGINAL_DST)` on the accepted socket answers the address the application
//! originally connected to. Without a redirector the kernel answers `ENOENT`/`ENOPROTOOPT`,
//! which callers treat as "not redirected".

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsFd;

use nix::sys::socket::{getsockopt, sockopt};

/// `SO_ORIGINAL_DST` from `<linux/netfilter_ipv4.h>`; the IPv6 twin `IP6T_SO_ORIGINAL_DST`
/// (`<linux/netfilter_ipv6/ip6_tables.h>`) has the same value.
pub const SO_ORIGINAL_DST: libc::c_int = 80;

/// Returns the original destination of an accepted TCP socket.
///
/// `local` is the socket's local address and selects the family to ask (`SOL_IP` for IPv4,
/// `SOL_IPV6` for IPv6). Errors are the kernel's: `ENOENT` or `ENOPROTOOPT` mean the
/// connection was not redirected (or no program answers the option on this kernel).
pub fn original_destination(socket: &impl AsFd, local: SocketAddr) -> io::Result<SocketAddr> {
    match local {
        SocketAddr::V4(_) => {
            let addr = getsockopt(socket, sockopt::OriginalDst)?;
            let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
            Ok(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(addr.sin_port),
            )))
        }
        SocketAddr::V6(_) => {
            let addr = getsockopt(socket, sockopt::Ip6tOriginalDst)?;
            let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
            Ok(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(addr.sin6_port),
                addr.sin6_flowinfo,
                addr.sin6_scope_id,
            )))
        }
    }
}

/// Whether `addr` lies in the ranges VPC Lattice services resolve to (`169.254.171.0/24`,
/// `fd00:ec2:80::/64`). A redirected connection to anything else is worth a warning: the
/// redirector was configured for more than Lattice.
pub fn is_lattice_address(addr: &SocketAddr) -> bool {
    match addr {
        SocketAddr::V4(a) => {
            let o = a.ip().octets();
            o[0] == 169 && o[1] == 254 && o[2] == 171
        }
        SocketAddr::V6(a) => {
            let s = a.ip().segments();
            s[0] == 0xfd00 && s[1] == 0x0ec2 && s[2] == 0x0080 && s[3] == 0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_redirected_socket_answers_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        let err = original_destination(&server, server.local_addr().unwrap()).unwrap_err();
        assert!(
            matches!(
                err.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ENOPROTOOPT)
            ),
            "unexpected error {err}"
        );
    }

    #[test]
    fn lattice_ranges() {
        assert!(is_lattice_address(&"169.254.171.7:80".parse().unwrap()));
        assert!(!is_lattice_address(&"169.254.169.254:80".parse().unwrap()));
        assert!(is_lattice_address(&"[fd00:ec2:80::1]:80".parse().unwrap()));
        assert!(!is_lattice_address(&"[fd00:ec2:81::1]:80".parse().unwrap()));
    }
}
