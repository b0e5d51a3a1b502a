//! Running out of something is a state the daemon reports and leaves by itself (issue 16):
//! - **file descriptors**: [`Guarded`] is the listener both servers accept on. An accept that
//!   fails with `EMFILE`/`ENFILE` neither spins nor ends the server: the daemon's health says so,
//!   a descriptor kept in reserve is given up to take the waiting connection and answer it 503
//!   with `Retry-After` (so it is answered rather than left hanging), and the reserve is taken
//!   back as soon as that connection is closed, ready for the next one. Without a reserve the
//!   listener pauses briefly before it tries again; the first accept that works clears the state;
//! - **a full disk, a busy database**: the group commit sets them when a commit fails;
//!   [`watch_store`] tries a small write every second meanwhile and clears them when it goes
//!   through, so the daemon says "recovered" without waiting for the next delivery.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudci_webhook::{Health, Hub, Problem};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The pause after an accept failed for lack of descriptors with no reserve to answer with:
/// no spinning (axum's own listener sleeps a whole second here), and a connection waiting in
/// the backlog is taken soon after one frees.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);
/// How long the answer to a connection taken with the reserve descriptor may take.
const RESERVE_ANSWER: Duration = Duration::from_secs(1);

/// Which listener: what a connection taken with the reserve is told, and whether it counts as a
/// refused delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The public listener (GitLab's deliveries; reachable through the tunnel): the reason only.
    Public,
    /// The local API (loopback): the reason and the daemon's problems, the body of
    /// `GET /v1/health`, so that `cloudci status --daemon` can say what is wrong even then.
    Local,
}

impl Side {
    /// Its name in the log.
    pub fn name(self) -> &'static str {
        match self {
            Side::Public => "public listener",
            Side::Local => "local API",
        }
    }
}

/// A descriptor held back (`/dev/null`) to accept one connection when none are left; shared
/// with the task answering that connection, which puts it back once the connection is closed.
type Reserve = Arc<Mutex<Option<std::fs::File>>>;

/// A listener that survives running out of file descriptors (see the module docs).
#[derive(Debug)]
pub struct Guarded {
    inner: TcpListener,
    health: Health,
    reserve: Reserve,
    side: Side,
}

impl Guarded {
    /// Accepts on `inner`, reporting into `health`.
    pub fn new(inner: TcpListener, health: Health, side: Side) -> Self {
        Self { inner, health, reserve: Arc::new(Mutex::new(open_reserve())), side }
    }

    fn take_reserve(&self) -> Option<std::fs::File> {
        self.reserve.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

fn open_reserve() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// Puts a reserve back unless one is there; whether one is there now.
fn refill(reserve: &Reserve) -> bool {
    let mut slot = reserve.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_none() {
        *slot = open_reserve();
    }
    slot.is_some()
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
                    // Over only when the reserve can be held again too: a connection accepted
                    // with the one descriptor that just freed is no sign of room.
                    if refill(&self.reserve) && self.health.clear(Problem::OutOfFiles) {
                        tracing::info!(listener = self.side.name(), "file descriptors are available again");
                    }
                    return conn;
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) if Problem::of_io(&e) == Some(Problem::OutOfFiles) => {
                    // Set once per episode (and logged then); every connection answered 503
                    // afterwards counts as one refused.
                    let first = !self.health.has(Problem::OutOfFiles) && self.health.set(Problem::OutOfFiles, &e);
                    if first {
                        tracing::error!(
                            listener = self.side.name(),
                            "cannot accept a connection: {e}; answering 503 while it lasts"
                        );
                    }
                    if let Some(reserve) = self.take_reserve() {
                        drop(reserve);
                        // The connection that could not be accepted is still waiting: take it
                        // with the descriptor just freed.
                        let taken = tokio::time::timeout(Duration::from_millis(10), self.inner.accept()).await;
                        if let Ok(Ok((stream, _))) = taken {
                            let refusal = Refusal {
                                health: self.health.clone(),
                                side: self.side,
                                counted: first,
                                detail: e.to_string(),
                                reserve: self.reserve.clone(),
                            };
                            tokio::spawn(refusal.answer(stream));
                            // The next one may be waiting too; the reserve is back once this
                            // one is answered and closed.
                            continue;
                        }
                        refill(&self.reserve);
                    }
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
                Err(e) => {
                    tracing::warn!(listener = self.side.name(), "accept failed: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection taken with the reserve descriptor, to be answered 503.
struct Refusal {
    health: Health,
    side: Side,
    /// Whether the health's count already has this one (the first of an episode).
    counted: bool,
    /// The accept's error, as the system said it.
    detail: String,
    reserve: Reserve,
}

impl Refusal {
    /// The JSON error body; on the local API with the daemon's problems, as `GET /v1/health`
    /// has them.
    fn body(&self) -> String {
        let error = Problem::OutOfFiles.explain();
        match self.side {
            Side::Public => serde_json::json!({ "error": error }),
            Side::Local => serde_json::json!({ "error": error, "ok": false, "problems": self.health.reports() }),
        }
        .to_string()
    }

    /// 503 with `Retry-After` and the JSON body, written by hand: the request's head is read
    /// first (a client that sends none asked nothing and gets nothing), the answer written, and
    /// the connection drained until the client closes it, so that closing never resets it under
    /// the answer. Then the reserve is put back.
    async fn answer(self, mut stream: TcpStream) {
        let _ = tokio::time::timeout(RESERVE_ANSWER, async {
            let mut buf = vec![0u8; 16 * 1024];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") && seen.len() < 64 * 1024 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            if !self.counted {
                self.health.set(Problem::OutOfFiles, &self.detail);
            }
            if self.side == Side::Public {
                self.health.refused_delivery();
            }
            let body = self.body();
            let head = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                cloudci_webhook::RETRY_AFTER_SECS,
                body.len()
            );
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
        drop(stream);
        refill(&self.reserve);
    }
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
