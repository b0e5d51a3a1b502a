//! The load balancer in front of the relay instances: a TCP proxy on loopback, round robin over
//! the backends, the next one tried when a connection cannot be opened (nginx's
//! `proxy_next_upstream error`). A connection is carried to one backend for its life: an SSE
//! stream stays on its instance until that instance dies, and a killed instance's connections
//! close, as behind a real balancer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running proxy; it stops when dropped.
#[derive(Debug)]
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Listens on a free loopback port and spreads connections over `backends`.
    pub(crate) async fn start(backends: Vec<SocketAddr>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let backends = Arc::new(backends);
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (backends, next) = (backends.clone(), next.clone());
                tokio::spawn(async move {
                    let first = next.fetch_add(1, Ordering::Relaxed);
                    for i in 0..backends.len() {
                        let backend = backends[(first + i) % backends.len()];
                        let Ok(Ok(upstream)) =
                            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(backend)).await
                        else {
                            continue;
                        };
                        carry(client, upstream).await;
                        return;
                    }
                    // No backend: the client's connection closes unanswered.
                });
            }
        });
        Ok(Self { addr, task })
    }
}

async fn carry(mut client: TcpStream, mut upstream: TcpStream) {
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}
