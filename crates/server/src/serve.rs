//! Serving a router on a listener, with the bounds that keep slow or hostile clients from
//! holding the server: a cap on open connections and a time limit on request headers
//! (which also closes idle keep-alive connections).
//!
//! - **Connections**: at most `max_connections` open at once per listener. At the cap
//!   the listener stops accepting; new clients wait in the kernel's accept queue (and
//!   time out there on their side) instead of taking file descriptors the engine needs
//!   for its segments.
//! - **Headers**: a request's headers must arrive within `header_read_timeout` of the
//!   server starting to wait for them — for a keep-alive connection that is from the end
//!   of the previous response, so the same limit closes idle connections. hyper closes
//!   the connection when it passes (the client never sent a full request, so there is
//!   nothing to answer).
//! - **Bodies** are bounded in time by the handlers (`ingest.rs`: 408 after
//!   `body_read_timeout`), because only they know when a body is needed.
//!
//! Every connection gets `TCP_NODELAY` (a response written in more than one segment
//! must not wait for the client's delayed acknowledgement, up to 40 ms on Linux). On
//! shutdown the listener closes and in-flight requests finish (graceful), for at most
//! [`SHUTDOWN_GRACE`].

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Longest wait for in-flight requests at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest time for a request's headers to arrive (also the keep-alive idle limit).
    pub header_read_timeout: Duration,
}

impl Default for ServeLimits {
    /// The admin API's and the receiver's: 1 024 connections, 10 s for headers.
    fn default() -> Self {
        ServeLimits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` until `shutdown`, within `limits`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: CancellationToken,
    limits: ServeLimits,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut warned_full = false;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if !warned_full {
                    warn!(max = limits.max_connections, addr = ?listener.local_addr().ok(),
                        "connection limit reached; new connections wait until one closes");
                    warned_full = true;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break, // never closed
                    },
                }
            }
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: wait a moment instead of spinning.
                    warn!(%e, "cannot accept a connection; retrying in 50 ms");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if permits.available_permits() > 0 {
            warned_full = false;
        }
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(%e, "cannot set TCP_NODELAY on a connection; serving it anyway");
        }
        let service = TowerToHyperService::new(app.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(tcp), service);
        let conn = graceful.watch(conn);
        tokio::spawn(hifi_pipeline::health::serving(async move {
            if let Err(e) = conn.await {
                debug!(%peer, %e, "connection ended with an error");
            }
            drop(permit);
        }));
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
            warn!("requests still in flight after the shutdown grace period; closing");
        }
    }
    Ok(())
}
