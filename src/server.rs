//! The daemon's HTTP server loop, for both listeners: what `axum::serve` does, plus a timer.
//!
//! `axum::serve` gives hyper no timer, so hyper's header-read timeout is off and a client that
//! connects and sends nothing (or stops between two requests on a kept-alive connection) holds a
//! file descriptor for as long as it likes. Here each connection is served by hyper's HTTP/1
//! with a timer and [`IDLE`] as its header-read timeout. hyper arms that timeout whenever the
//! connection waits for a request's head, so it bounds both: the head of a first request (a
//! slow or silent client) and the idle time between two requests (keep-alive). A request being
//! answered, an event stream included, is not waiting for a head: the request timeouts
//! (`layers`) bound those.
//!
//! Accepting goes through [`crate::resources::Guarded`] as before (out of descriptors is
//! answered 503). At shutdown the loop stops accepting, every connection is asked to finish
//! gracefully (the request in flight is answered, then the connection closes; event streams are
//! ended by the layers), and the loop returns once every connection has closed.

use std::time::Duration;

use axum::Router;
use axum::serve::Listener;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;

/// How long a connection may wait for its next request's head (all of it) before it is closed:
/// the first request's as well as the next one's on a kept-alive connection.
pub const IDLE: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown` is cancelled and every connection closed.
pub async fn serve<L>(mut listener: L, router: Router, shutdown: CancellationToken, idle: Duration)
where
    L: Listener,
{
    // Each connection's task holds a receiver; the loop waits for the last one to go.
    let (open_tx, open_rx) = tokio::sync::watch::channel(());
    loop {
        let (io, _addr) = tokio::select! {
            conn = listener.accept() => conn,
            () = shutdown.cancelled() => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let (shutdown, open) = (shutdown.clone(), open_rx.clone());
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(idle);
            let conn = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                // A header-read timeout, a reset, a client that left: nothing to report.
                _ = conn.as_mut() => {}
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.as_mut().await;
                }
            }
            drop(open);
        });
    }
    drop(open_rx);
    open_tx.closed().await;
}
