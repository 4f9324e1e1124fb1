//! Doing socket work from another network namespace.
//!
//! In the two-cluster demo both apps have the same address in different network namespaces,
//! and the Pod Identity agents must listen inside the cluster namespaces, while the emulator
//! runs in one place. A socket stays in the namespace it was created in, so the socket is
//! created by a short-lived thread that first joins the namespace with `setns(2)`; the
//! socket is then used from the async runtime as usual, and the thread ends without ever
//! changing the namespace of the runtime's own threads. Joining a namespace needs
//! `CAP_SYS_ADMIN`.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
};

/// Runs `work` on a new thread that has joined the network namespace `netns` (a file such as
/// `/run/netns/cluster1` or `/proc/<pid>/ns/net`).
pub async fn run_in<T, F>(netns: &Path, work: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let netns: PathBuf = netns.to_owned();
    std::thread::Builder::new()
        .name("lattice-netns".to_owned())
        .spawn(move || {
            let _ = tx.send(enter(&netns).and_then(|()| work()));
        })?;
    rx.await
        .map_err(|_| io::Error::other("the network namespace thread ended without an answer"))?
}

fn enter(netns: &Path) -> io::Result<()> {
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
    })
}

/// Binds a TCP listener on `address`, in `netns` when given, else in the caller's namespace.
pub async fn bind(
    address: SocketAddr,
    netns: Option<&Path>,
) -> io::Result<tokio::net::TcpListener> {
    let Some(netns) = netns else {
        return tokio::net::TcpListener::bind(address).await;
    };
    let listener = run_in(netns, move || {
        let listener = std::net::TcpListener::bind(address)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })
    .await?;
    tokio::net::TcpListener::from_std(listener)
}
