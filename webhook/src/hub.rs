//! Fan-out: every accepted event reaches every subscriber, in log order, exactly once.
//!
//! Live events travel over a bounded broadcast channel; the log in the store is the truth. A
//! subscriber that falls behind (the channel overflowed) or sees a gap reads the missing events
//! from the log, so a slow or stuck subscriber never blocks the receiver or anyone else, and
//! never loses anything.

use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::broadcast;

use crate::events::BuildEvent;
use crate::store::{EventFilter, Store};

/// Events buffered per subscriber before it must catch up from the log.
const LIVE_BUFFER: usize = 1024;
/// Events read from the log at a time while catching up.
const CATCH_UP_BATCH: usize = 500;

/// The fan-out hub.
#[derive(Debug, Clone)]
pub struct Hub {
    store: Arc<Store>,
    live: broadcast::Sender<Arc<BuildEvent>>,
}

impl Hub {
    /// A hub over `store`'s event log.
    pub fn new(store: Arc<Store>) -> Self {
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        Self { store, live }
    }

    /// The store behind it.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Announces events already committed to the log.
    pub fn publish(&self, events: Vec<BuildEvent>) {
        for e in events {
            // No receivers is fine: the log keeps everything.
            let _ = self.live.send(Arc::new(e));
        }
    }

    /// Events passing `filter`, starting after `after` (a `Last-Event-ID`), or with what happens
    /// from now on when `after` is `None`. Never ends on its own.
    pub fn subscribe(
        &self,
        filter: EventFilter,
        after: Option<u64>,
    ) -> impl Stream<Item = Result<BuildEvent, crate::store::StoreError>> + Send + 'static + use<> {
        // Subscribe before reading the log position, so nothing falls between the two; "from
        // now" means from this call, not from the first poll of the stream.
        let rx = self.live.subscribe();
        let store = self.store.clone();
        let last = after.or_else(|| store.last_seq().ok());
        let state = Sub { store, rx, filter, last, catch_up: true, queue: Vec::new() };
        futures_util::stream::unfold(state, |mut sub| async move {
            match sub.next().await {
                Ok(e) => Some((Ok(e), sub)),
                Err(err) => Some((Err(err), sub)),
            }
        })
    }
}

struct Sub {
    store: Arc<Store>,
    rx: broadcast::Receiver<Arc<BuildEvent>>,
    filter: EventFilter,
    /// Highest seq examined; `None` until the starting point is known.
    last: Option<u64>,
    /// Read the log before waiting for live events (at the start, after a gap or an overflow).
    catch_up: bool,
    /// Caught-up events not yet handed out, in reverse order.
    queue: Vec<BuildEvent>,
}

impl Sub {
    async fn next(&mut self) -> Result<BuildEvent, crate::store::StoreError> {
        let last = match self.last {
            Some(last) => last,
            None => {
                let store = self.store.clone();
                let now = blocking(move || store.last_seq()).await?;
                self.last = Some(now);
                now
            }
        };
        let mut last = last;
        loop {
            if let Some(e) = self.queue.pop() {
                return Ok(e);
            }
            if self.catch_up {
                let store = self.store.clone();
                let filter = self.filter.clone();
                let (mut batch, examined) =
                    blocking(move || store.events_after(last, None, &filter, CATCH_UP_BATCH)).await?;
                if examined > last {
                    last = examined;
                    self.last = Some(last);
                    batch.reverse();
                    self.queue = batch;
                    continue;
                }
                self.catch_up = false;
            }
            match self.rx.recv().await {
                // Already handed out through the log.
                Ok(e) if e.seq <= last => {}
                Ok(e) if e.seq == last + 1 => {
                    last = e.seq;
                    self.last = Some(last);
                    if self.filter.matches(&e) {
                        return Ok((*e).clone());
                    }
                }
                // A gap (another writer's event not announced yet) or an overflow: read the log.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up = true,
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }
}

/// Runs a store call on the blocking pool. A panic inside it is carried on to the caller; a call
/// cancelled because the runtime is shutting down never returns (its caller is being dropped
/// too), where unwrapping the `JoinError` used to panic at exit.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, crate::store::StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => std::future::pending().await,
    }
}
