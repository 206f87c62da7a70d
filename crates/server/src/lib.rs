//! hifi's HTTP serving: the ingest API of each HTTP source, the admin API (metrics, lag,
//! loss, traces, the dashboard), and the test receiver. Handlers turn every failure into
//! a status code and a JSON body; none drops a connection without an answer.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod dashboard;
pub mod ingest;
pub mod metrics;
pub mod receiver;

/// Serves `app` on `listener` until `shutdown`; in-flight requests finish first.
///
/// Every connection gets `TCP_NODELAY` (axum's plain `serve` leaves Nagle's algorithm
/// on): a response written in more than one segment must not wait for the client's
/// delayed acknowledgement (up to 40 ms on Linux).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%e, "cannot set TCP_NODELAY on a connection; serving it anyway");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
