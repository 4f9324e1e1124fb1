//! Connecting to targets, optionally from another network namespace (see [`crate::netns`]):
//! in the two-cluster demo both apps have the same address in different namespaces, so an
//! address alone cannot name a target.

use std::{io, net::SocketAddr, path::PathBuf, time::Duration};

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
        let stream = tokio::time::timeout(timeout, TcpStream::connect(target.address))
            .await
            .map_err(|_| timed_out(target.address, timeout))??;
        stream.set_nodelay(true)?;
        return Ok(stream);
    };
    let address = target.address;
    let stream = crate::netns::run_in(netns, move || {
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
    })
    .await?;
    TcpStream::from_std(stream)
}

fn timed_out(address: SocketAddr, timeout: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("connecting to {address} took more than {timeout:?}"),
    )
}
