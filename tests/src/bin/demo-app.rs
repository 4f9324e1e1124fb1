//! `demo-app`: the application of the two-cluster demo, as the seed pattern deploys it
//! (`demo-clusterN-v1`): an HTTP server that answers every request with
//! `Requsting to Pod(<pod name>): Hello from <version>` (the seed's spelling is kept, so its
//! outputs can be compared as they are).
//!
//! It prints `listening <address>` on stdout once the socket is bound, then serves HTTP/1.1
//! and h2c until SIGINT or SIGTERM.

use std::{convert::Infallible, net::SocketAddr, process::ExitCode, sync::Arc};

use bytes::Bytes;
use clap::Parser;
use http::{header, HeaderValue, Response};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Debug, Parser)]
#[command(
    about = "The demo's application: answers `Requsting to Pod(<pod>): Hello from <version>`"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8090")]
    listen: SocketAddr,
    /// The version named in the answer, e.g. `demo-cluster1-v1`.
    #[arg(long, env = "DEMO_APP_VERSION")]
    version: String,
    /// The pod name in the answer (Kubernetes sets HOSTNAME to it).
    #[arg(long, env = "POD_NAME")]
    pod_name: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo-app: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo-app: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let body = Arc::new(Bytes::from(format!(
        "Requsting to Pod({}): Hello from {}\n",
        args.pod_name, args.version
    )));
    println!("listening {}", listener.local_addr()?);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    eprintln!("demo-app: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
        };
        let body = body.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<_>| {
                let body = body.clone();
                eprintln!(
                    "demo-app: {peer} {} {} host={:?}",
                    req.method(),
                    req.uri(),
                    req.headers().get(header::HOST)
                );
                async move {
                    let mut response = Response::new(Full::new((*body).clone()));
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; charset=utf-8"),
                    );
                    Ok::<_, Infallible>(response)
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("demo-app: connection from {peer} failed: {e}");
            }
        });
    }
}
