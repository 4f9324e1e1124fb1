//! Connecting to targets, optionally from another network namespace.
//!
//! In the two-cluster demo both apps have the same address in different network namespaces,
//! so an address alone cannot name a target. A target may therefore carry a network
//! namespace file (`/run/netns/cluster1`): the socket is created by a short-lived thread
//! that first joins that namespace with `setns(2)`. A socket stays in the namespace it was
//! created in, so the connected stream is then used from the async runtime as usual, and
//! the thread ends without ever touching the runtime's own threads. Joining a namespace
//! needs `CAP_SYS_ADMIN`.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

/// A target: an address, reached from the emulator's network namespace or from `netns`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Address and port of the target.
    pub address: SocketAddr,
    /// Network namespace file to connect from (e.g. `/run/netns/cluster1`); the emulator's
    /// own namespace when absent.
    #[serde(default)]
    pub netns: Option<PathBuf>,
}

/// Opens a TCP connection to a target within `timeout`.
pub async fn connect(target: &Target, timeout: Duration) -> io::Result<TcpStream> {
    let Some(netns) = &target.netns else {
        return tokio::time::timeout(timeout, TcpStream::connect(target.address))
            .await
            .map_err(|_| timed_out(target.address, timeout))?;
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (address, netns) = (target.address, netns.clone());
    std::thread::Builder::new()
        .name("lattice-netns-connect".to_owned())
        .spawn(move || {
            let _ = tx.send(connect_in_netns(&netns, address, timeout));
        })?;
    let stream = rx
        .await
        .map_err(|_| io::Error::other("the namespace connect thread ended without an answer"))??;
    TcpStream::from_std(stream)
}

fn timed_out(address: SocketAddr, timeout: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("connecting to {address} took more than {timeout:?}"),
    )
}

/// Runs on a dedicated thread: joins `netns`, then connects (blocking).
fn connect_in_netns(
    netns: &Path,
    address: SocketAddr,
    timeout: Duration,
) -> io::Result<std::net::TcpStream> {
    let file = std::fs::File::open(netns).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot open network namespace '{}': {e}", netns.display()),
        )
    })?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        io::Error::other(format!(
            "cannot join network namespace '{}' (needs CAP_SYS_ADMIN): {e}",
            netns.display()
        ))
    })?;
    let stream = std::net::TcpStream::connect_timeout(&address, timeout).map_err(|e| {
        if e.kind() == io::ErrorKind::TimedOut {
            timed_out(address, timeout)
        } else {
            e
        }
    })?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}
