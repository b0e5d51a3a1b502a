//! Running out of something is a state the daemon reports and leaves by itself (issue 16):
//! - **file descriptors**: [`Guarded`] is the listener both servers accept on. An accept that
//!   fails with `EMFILE`/`ENFILE` neither spins nor ends the server: the daemon's health says so,
//!   a descriptor kept in reserve is given up to take the waiting connection and answer it 503
//!   with `Retry-After` (so it is answered rather than left hanging), and accepting resumes
//!   after a short pause; the first accept that works again clears the state;
//! - **a full disk, a busy database**: the group commit sets them when a commit fails;
//!   [`watch_store`] tries a small write every second meanwhile and clears them when it goes
//!   through, so the daemon says "recovered" without waiting for the next delivery.

use std::net::SocketAddr;
use std::time::Duration;

use cloudci_webhook::{Health, Hub, Problem};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The pause after an accept failed for lack of descriptors: no spinning, and a connection
/// waiting in the backlog is taken soon after one frees.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);
/// How long the answer to a connection taken with the reserve descriptor may take.
const RESERVE_ANSWER: Duration = Duration::from_secs(1);

/// A listener that survives running out of file descriptors (see the module docs).
#[derive(Debug)]
pub struct Guarded {
    inner: TcpListener,
    health: Health,
    /// A descriptor held back (`/dev/null`) to accept one connection when none are left.
    reserve: Option<std::fs::File>,
    /// Which listener, for the log.
    what: &'static str,
}

impl Guarded {
    /// Accepts on `inner`, reporting into `health`.
    pub fn new(inner: TcpListener, health: Health, what: &'static str) -> Self {
        Self { inner, health, reserve: open_reserve(), what }
    }
}

fn open_reserve() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// Errors of one connection, not of the listener: try the next one at once.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

impl axum::serve::Listener for Guarded {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok(conn) => {
                    if self.health.clear(Problem::OutOfFiles) {
                        tracing::info!(listener = self.what, "file descriptors are available again");
                    }
                    if self.reserve.is_none() {
                        self.reserve = open_reserve();
                    }
                    return conn;
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) if Problem::of_io(&e) == Some(Problem::OutOfFiles) => {
                    if self.health.set(Problem::OutOfFiles, &e) {
                        tracing::error!(
                            listener = self.what,
                            "cannot accept a connection: {e}; answering 503 while it lasts"
                        );
                    }
                    if let Some(reserve) = self.reserve.take() {
                        drop(reserve);
                        // The connection that could not be accepted is still waiting: take it
                        // with the descriptor just freed, if it is there now.
                        let taken = tokio::time::timeout(Duration::from_millis(10), self.inner.accept()).await;
                        if let Ok(Ok((stream, _))) = taken {
                            tokio::spawn(answer_unavailable(stream));
                        }
                    } else {
                        self.reserve = open_reserve();
                    }
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
                Err(e) => {
                    tracing::warn!(listener = self.what, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// 503 with `Retry-After` and the JSON error body, written by hand: the request is read first
/// (as much as comes within a moment), so that closing does not reset the connection under
/// the answer.
async fn answer_unavailable(mut stream: TcpStream) {
    let body = serde_json::json!({ "error": Problem::OutOfFiles.explain() }).to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        cloudci_webhook::RETRY_AFTER_SECS,
        body.len()
    );
    let _ = tokio::time::timeout(RESERVE_ANSWER, async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut seen = Vec::new();
        // Up to the end of the head, then whatever of the body arrives at once.
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") && seen.len() < 64 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf)).await;
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(body.as_bytes()).await;
        let _ = stream.shutdown().await;
        // Until the client closes: its unread bytes would turn our close into a reset.
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// How much a probe writes: about a large delivery, so that "recovered" means one fits.
const PROBE_BYTES: usize = 64 * 1024;
/// How often the store is tried while it refuses writes.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// While the event store refuses writes (a full disk, a lock), tries a small write every
/// [`PROBE_EVERY`] and clears the state once one goes through.
pub async fn watch_store(hub: Hub) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let health = hub.health();
        let stuck: Vec<Problem> =
            [Problem::DiskFull, Problem::DatabaseBusy].into_iter().filter(|p| health.has(*p)).collect();
        if stuck.is_empty() {
            continue;
        }
        // Still refused: the group commit said so once already.
        if hub.probe_write(PROBE_BYTES).await.is_ok() {
            for p in stuck {
                if health.clear(p) {
                    tracing::info!(problem = p.as_str(), "the event store takes writes again");
                }
            }
        }
    }
}
