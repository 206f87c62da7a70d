//! `hifi receiver`: a recording destination for tests and demos.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use hifi_server::receiver::{bind, Receiver};
use tokio_util::sync::CancellationToken;

/// Serves until SIGINT/SIGTERM, then prints the summary.
pub async fn run(listen: SocketAddr, record: PathBuf) -> Result<ExitCode> {
    let receiver = Receiver::open(&record)
        .with_context(|| format!("opening the record file {}", record.display()))?;
    let listener = bind(listen, "the receiver").await?;
    println!(
        "receiver: POST http://{}/ (any path); recording to {}",
        listener.local_addr()?,
        record.display()
    );
    let stop = CancellationToken::new();
    let server = {
        let (r, stop) = (receiver.clone(), stop.clone());
        tokio::spawn(async move { r.serve(listener, stop).await })
    };
    crate::run::signal().await;
    stop.cancel();
    server.await??;
    let s = receiver.summary();
    println!(
        "received {} events ({} distinct, {} duplicates) in {} requests",
        s.received, s.distinct, s.duplicates, s.requests
    );
    Ok(ExitCode::SUCCESS)
}
