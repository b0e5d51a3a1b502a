//! Fan-out: every accepted event reaches every subscriber, in log order, exactly once.
//!
//! Live events travel over a bounded broadcast channel; the log in the store is the truth. A
//! subscriber that falls behind (the channel overflowed) or sees a gap reads the missing events
//! from the log, so a slow or stuck subscriber never blocks the receiver or anyone else, and
//! never loses anything.
//!
//! # Encode once, write once
//! The events one transaction logged are announced as one [`Batch`]: each event is serialized
//! and framed for SSE once ([`Encoded`]), and the frames are also concatenated once, so an
//! unfiltered SSE subscriber writes the very same bytes as every other one, without a copy.
//! [`Hub::subscribe_frames`] hands out everything a subscriber has pending as one buffer (one
//! write); [`Hub::subscribe`] hands in-process subscribers the events themselves.
//!
//! # Retention and resync
//! The hub knows where each connected subscriber stands ([`Hub::oldest_subscriber`]): retention
//! keeps every event above the oldest position. A subscriber of [`Hub::subscribe_frames`] that
//! resumes from an id at or below [`Store::removed_through`] may have missed removed events: it
//! first gets a `resync` frame (`id:` the log's last seq, `data:` why, see [`Resync`]), then the
//! latest event of each pipeline, job and merge request still known ([`Store::snapshot`], frames
//! without `id:` so a client's last id stays the resync's), then live events after that seq.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::events::BuildEvent;
use crate::log::EventLog;
use crate::store::{EventFilter, Store, StoreError};

/// Batches buffered per subscriber before it must catch up from the log.
const LIVE_BUFFER: usize = 1024;
/// Events read from the log at a time while catching up.
const CATCH_UP_BATCH: usize = 500;
/// Subscribers' reads of the log at once, each on a blocking thread. The rest wait as tasks:
/// more at once would only wait for the log's few connections, each on an OS thread of its own
/// with its allocator's caches (a relay that 67 resuming subscribers moved to grew ~100 such
/// threads and from 70 MB to 0.8-1.8 GB).
const READS_AT_ONCE: usize = 8;

/// A heartbeat: an SSE comment, which keeps proxies from closing an idle stream.
const BEAT: Bytes = Bytes::from_static(b":\n\n");

/// What the live channel carries.
#[derive(Debug, Clone)]
enum Live {
    /// Events a transaction logged.
    Batch(Arc<Batch>),
    /// The shared heartbeat ([`Hub::heartbeat`]): one timer for every subscriber, where a timer
    /// per stream was polled on every wake of every subscriber.
    Beat,
    /// [`Hub::end_streams`]: SSE streams end.
    End,
}

/// An event serialized and framed once, shared by every subscriber.
#[derive(Debug)]
pub struct Encoded {
    /// The event.
    pub event: BuildEvent,
    /// Its SSE frame: `id: <seq>\nevent: <kind>\ndata: <JSON>\n\n`.
    pub frame: Bytes,
}

/// Events logged together (consecutive seqs), announced as one message.
#[derive(Debug)]
pub struct Batch {
    events: Vec<Encoded>,
    /// Every frame, concatenated: what an unfiltered subscriber writes, as is.
    all: Bytes,
}

impl Batch {
    fn new(events: Vec<BuildEvent>) -> Self {
        let events: Vec<Encoded> = events.into_iter().map(|event| Encoded { frame: frame(&event), event }).collect();
        let all = match events.as_slice() {
            [one] => one.frame.clone(),
            many => {
                let mut all = BytesMut::with_capacity(many.iter().map(|e| e.frame.len()).sum());
                for e in many {
                    all.extend_from_slice(&e.frame);
                }
                all.freeze()
            }
        };
        Self { events, all }
    }

    /// The events, in seq order.
    pub fn events(&self) -> &[Encoded] {
        &self.events
    }

    fn first_seq(&self) -> u64 {
        self.events.first().map_or(0, |e| e.event.seq)
    }

    fn last_seq(&self) -> u64 {
        self.events.last().map_or(0, |e| e.event.seq)
    }
}

/// An event's SSE frame.
pub fn frame(e: &BuildEvent) -> Bytes {
    let data = serde_json::to_vec(e).unwrap_or_else(|_| b"{}".to_vec());
    let mut f = BytesMut::with_capacity(data.len() + 48);
    f.extend_from_slice(b"id: ");
    f.extend_from_slice(e.seq.to_string().as_bytes());
    f.extend_from_slice(b"\nevent: ");
    f.extend_from_slice(e.kind.as_str().as_bytes());
    // Compact JSON has no newline, so it is one `data:` line.
    f.extend_from_slice(b"\ndata: ");
    f.extend_from_slice(&data);
    f.extend_from_slice(b"\n\n");
    f.freeze()
}

/// What a `resync` frame says: the subscriber asked for events some of which retention removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resync {
    /// Why, in words.
    pub reason: String,
    /// The id the subscriber resumed from.
    pub requested: u64,
    /// Events at or below this id may have been removed; all above it are kept.
    pub removed_through: u64,
    /// The log's last id when the snapshot was taken: live events follow from after it.
    pub last_seq: u64,
    /// How many snapshot events follow this frame.
    pub snapshot: usize,
}

/// The `resync` frame, then the snapshot's events without `id:` lines.
fn resync_frames(resync: &Resync, snapshot: &[BuildEvent]) -> Bytes {
    let mut f = BytesMut::new();
    f.extend_from_slice(format!("id: {}\nevent: resync\ndata: ", resync.last_seq).as_bytes());
    f.extend_from_slice(&serde_json::to_vec(resync).unwrap_or_else(|_| b"{}".to_vec()));
    f.extend_from_slice(b"\n\n");
    for e in snapshot {
        f.extend_from_slice(b"event: ");
        f.extend_from_slice(e.kind.as_str().as_bytes());
        f.extend_from_slice(b"\ndata: ");
        f.extend_from_slice(&serde_json::to_vec(e).unwrap_or_else(|_| b"{}".to_vec()));
        f.extend_from_slice(b"\n\n");
    }
    f.freeze()
}

/// Where each connected subscriber stands (the last seq it was handed), for retention.
#[derive(Debug, Default)]
struct Positions {
    next: u64,
    at: HashMap<u64, Arc<AtomicU64>>,
}

/// A subscriber's entry in [`Positions`], removed when the subscriber is dropped.
struct Registration {
    id: u64,
    at: Arc<AtomicU64>,
    positions: Arc<Mutex<Positions>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.positions.lock().unwrap_or_else(|e| e.into_inner()).at.remove(&self.id);
    }
}

/// The fan-out hub, over an event log: the daemon's SQLite [`Store`] unless said otherwise
/// (the relay's is PostgreSQL).
#[derive(Debug)]
pub struct Hub<L: EventLog = Store> {
    store: Arc<L>,
    live: broadcast::Sender<Live>,
    positions: Arc<Mutex<Positions>>,
    health: crate::health::Health,
    /// Set once the heartbeat task runs.
    beating: Arc<OnceLock<()>>,
    /// Set by [`Hub::end_streams`].
    ended: Arc<AtomicBool>,
    /// Permits for subscribers' log reads ([`READS_AT_ONCE`]).
    reads: Arc<tokio::sync::Semaphore>,
}

// By hand: a derive would ask `L: Clone`, and the log is shared, not cloned.
impl<L: EventLog> Clone for Hub<L> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            live: self.live.clone(),
            positions: self.positions.clone(),
            health: self.health.clone(),
            beating: self.beating.clone(),
            ended: self.ended.clone(),
            reads: self.reads.clone(),
        }
    }
}

impl<L: EventLog> Hub<L> {
    /// A hub over `store`'s event log.
    pub fn new(store: Arc<L>) -> Self {
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        Self {
            store,
            live,
            positions: Arc::default(),
            health: crate::health::Health::new(),
            beating: Arc::default(),
            ended: Arc::default(),
            reads: Arc::new(tokio::sync::Semaphore::new(READS_AT_ONCE)),
        }
    }

    /// Ends every [`Hub::subscribe_frames`] stream, between two of its items, and those opened
    /// later at once: the daemon is stopping (their clients resume from the next one by id).
    /// Through the live channel, so that a stream pays nothing for it until then.
    pub fn end_streams(&self) {
        self.ended.store(true, Ordering::SeqCst);
        let _ = self.live.send(Live::End);
    }

    /// Starts (once; later calls change nothing) the heartbeat of [`Hub::subscribe_frames`]
    /// streams: an SSE comment every `every`, from one task for all of them. The task ends with
    /// the hub and its last stream. Outside a Tokio runtime it does nothing.
    pub fn heartbeat(&self, every: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        self.beating.get_or_init(|| {
            // A strong sender: streams still open when the last hub handle is dropped keep their
            // heartbeat; the task ends once both are gone.
            let live = self.live.clone();
            let hub = Arc::downgrade(&self.beating);
            runtime.spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if hub.strong_count() == 0 && live.receiver_count() == 0 {
                        return;
                    }
                    let _ = live.send(Live::Beat);
                }
            });
        });
    }

    /// The daemon's resource problems (a full disk, no file descriptors, a busy database), which
    /// the receiver records and the local API reports.
    pub fn health(&self) -> &crate::health::Health {
        &self.health
    }

    /// The position (last seq handed out) of the connected subscriber furthest behind; `None`
    /// when none is connected. Retention keeps every event above it.
    pub fn oldest_subscriber(&self) -> Option<u64> {
        let positions = self.positions.lock().unwrap_or_else(|e| e.into_inner());
        positions.at.values().map(|a| a.load(Ordering::Acquire)).min()
    }

    fn register(&self, at: u64) -> Registration {
        let at = Arc::new(AtomicU64::new(at));
        let mut positions = self.positions.lock().unwrap_or_else(|e| e.into_inner());
        positions.next += 1;
        let id = positions.next;
        positions.at.insert(id, at.clone());
        Registration { id, at, positions: self.positions.clone() }
    }

    /// The store behind it, for this crate; callers use the async front (`front.rs`).
    pub(crate) fn store(&self) -> &Arc<L> {
        &self.store
    }

    /// `f` over the log on a blocking thread, once one of the hub's 8 permits (`READS_AT_ONCE`) is
    /// free: for a read that a subscriber's stream waits on outside the hub (the relay's resync
    /// of a session), so that it counts against the same bound as the hub's own reads.
    pub async fn read_log<T: Send + 'static>(
        &self,
        f: impl FnOnce(&L) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let log = self.store.clone();
        read_with_permit(&self.reads, move || f(&log)).await
    }

    /// Announces events already committed to the log (in seq order, as one transaction logged
    /// them).
    pub fn publish(&self, events: Vec<BuildEvent>) {
        // No receivers is fine: the log keeps everything, and nobody pays for encoding.
        if events.is_empty() || self.live.receiver_count() == 0 {
            return;
        }
        // A batch holds consecutive seqs, which is what subscribers check for gaps.
        let mut run = Vec::with_capacity(events.len());
        for e in events {
            if run.last().is_some_and(|p: &BuildEvent| p.seq + 1 != e.seq) {
                let _ = self.live.send(Live::Batch(Arc::new(Batch::new(std::mem::take(&mut run)))));
            }
            run.push(e);
        }
        let _ = self.live.send(Live::Batch(Arc::new(Batch::new(run))));
    }

    fn sub(&self, filter: EventFilter, after: Option<u64>, sse: bool) -> Sub<L> {
        // Subscribe before reading the log position, so nothing falls between the two; "from
        // now" means from this call, not from the first poll of the stream.
        let rx = self.live.subscribe();
        let store = self.store.clone();
        let last = after.or_else(|| store.last_seq_local());
        let everything = filter == EventFilter::default();
        // Unknown start: hold everything until it is known.
        let reg = self.register(last.unwrap_or(0));
        let stop = self.ended.clone();
        let reads = self.reads.clone();
        Sub { store, rx, filter, everything, last, catch_up: true, sse, ended: false, stop, reg, reads }
    }

    /// Events passing `filter`, starting after `after` (a `Last-Event-ID`), or with what happens
    /// from now on when `after` is `None`. Never ends on its own.
    pub fn subscribe(
        &self,
        filter: EventFilter,
        after: Option<u64>,
    ) -> impl Stream<Item = Result<BuildEvent, StoreError>> + Send + 'static + use<L> {
        let state = (self.sub(filter, after, false), VecDeque::new());
        futures_util::stream::unfold(state, |(mut sub, mut queue)| async move {
            loop {
                if let Some(e) = queue.pop_front() {
                    return Some((Ok(e), (sub, queue)));
                }
                match sub.next_chunk().await {
                    Ok(Chunk::Live(batch, from)) => queue.extend(
                        batch.events[from..].iter().filter(|e| sub.filter.matches(&e.event)).map(|e| e.event.clone()),
                    ),
                    Ok(Chunk::Logged(events)) => queue.extend(events),
                    Ok(Chunk::Beat | Chunk::End) => {}
                    Err(err) => return Some((Err(err), (sub, queue))),
                }
            }
        })
    }

    /// Like [`Hub::subscribe`], as SSE frames: each item is everything the subscriber had
    /// pending when it was polled, concatenated (one write), and for an unfiltered subscriber
    /// usually the very buffer every other subscriber writes. Once [`Hub::heartbeat`] runs, an
    /// SSE comment (`:`) comes with each beat. Ends after [`Hub::end_streams`].
    pub fn subscribe_frames(
        &self,
        filter: EventFilter,
        after: Option<u64>,
    ) -> impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static + use<L> {
        futures_util::stream::unfold((self.sub(filter, after, true), after), |(mut sub, resume)| async move {
            // The flag covers an end announced before this stream subscribed, or lost in a lag.
            if sub.ended || sub.stop.load(Ordering::SeqCst) {
                return None;
            }
            if let Some(requested) = resume {
                match sub.resync(requested).await {
                    Ok(Some(bytes)) => return Some((Ok(bytes), (sub, None))),
                    Ok(None) => {}
                    Err(err) => return Some((Err(err), (sub, None))),
                }
            }
            let mut sub = sub;
            loop {
                let chunk = match sub.next_chunk().await {
                    Ok(Chunk::End) => return None,
                    Ok(c) => c,
                    Err(err) => return Some((Err(err), (sub, None))),
                };
                let mut out = Frames::Empty;
                sub.append(&mut out, chunk);
                // Whatever else is already there goes into the same write.
                while let Some(more) = sub.try_next_live() {
                    sub.append(&mut out, more);
                }
                if let Some(bytes) = out.finish() {
                    return Some((Ok(bytes), (sub, None)));
                }
                if sub.ended {
                    return None;
                }
            }
        })
    }
}

/// What a subscriber has to hand out next.
enum Chunk {
    /// A live batch, from this index on (what came before was handed out already).
    Live(Arc<Batch>, usize),
    /// Events read from the log, already filtered.
    Logged(Vec<BuildEvent>),
    /// A heartbeat is due (SSE subscribers only).
    Beat,
    /// The stream ends (SSE subscribers only).
    End,
}

/// Frames gathered for one write: a single shared buffer is passed on as is.
enum Frames {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Frames {
    fn push(&mut self, b: &Bytes) {
        *self = match std::mem::replace(self, Self::Empty) {
            Self::Empty => Self::One(b.clone()),
            Self::One(first) => {
                let mut m = BytesMut::with_capacity(first.len() + b.len());
                m.extend_from_slice(&first);
                m.extend_from_slice(b);
                Self::Many(m)
            }
            Self::Many(mut m) => {
                m.extend_from_slice(b);
                Self::Many(m)
            }
        };
    }

    fn finish(self) -> Option<Bytes> {
        match self {
            Self::Empty => None,
            Self::One(b) => Some(b),
            Self::Many(m) => Some(m.freeze()),
        }
    }
}

struct Sub<L: EventLog> {
    store: Arc<L>,
    rx: broadcast::Receiver<Live>,
    filter: EventFilter,
    /// The filter passes everything.
    everything: bool,
    /// Highest seq examined; `None` until the starting point is known.
    last: Option<u64>,
    /// Read the log before waiting for live events (at the start, after a gap or an overflow).
    catch_up: bool,
    /// An SSE subscriber: hands out heartbeats and ends ([`Chunk::Beat`], [`Chunk::End`]).
    sse: bool,
    /// [`Live::End`] was seen while gathering a write.
    ended: bool,
    /// The hub's [`Hub::end_streams`] flag.
    stop: Arc<AtomicBool>,
    /// Its position, for retention.
    reg: Registration,
    /// The hub's permits for log reads.
    reads: Arc<tokio::sync::Semaphore>,
}

impl<L: EventLog> Sub<L> {
    /// `f` on a blocking thread, once one of the hub's read permits is free.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        read_with_permit(&self.reads, f).await
    }

    fn set_last(&mut self, last: u64) {
        self.last = Some(last);
        self.reg.at.store(last, Ordering::Release);
    }

    /// When retention may have removed events after `requested`: the `resync` frame and the
    /// snapshot, and the subscriber moved to the log's last seq.
    async fn resync(&mut self, requested: u64) -> Result<Option<Bytes>, StoreError> {
        let store = self.store.clone();
        let filter = self.filter.clone();
        let found = self
            .read(move || {
                let removed_through = store.removed_through()?;
                if requested >= removed_through {
                    return Ok(None);
                }
                let last_seq = store.last_seq()?;
                let snapshot = store.snapshot(&filter, last_seq)?;
                Ok(Some((removed_through, last_seq, snapshot)))
            })
            .await?;
        let Some((removed_through, last_seq, snapshot)) = found else { return Ok(None) };
        let resync = Resync {
            reason: format!(
                "events after {requested} up to {removed_through} may have been removed by retention; \
                 the latest known event of each pipeline, job and merge request follows, then live events after {last_seq}"
            ),
            requested,
            removed_through,
            last_seq,
            snapshot: snapshot.len(),
        };
        self.set_last(last_seq);
        Ok(Some(resync_frames(&resync, &snapshot)))
    }

    /// The next events to hand out, waiting for them.
    async fn next_chunk(&mut self) -> Result<Chunk, StoreError> {
        let mut last = match self.last {
            Some(last) => last,
            None => {
                let store = self.store.clone();
                let now = self.read(move || store.last_seq()).await?;
                self.set_last(now);
                now
            }
        };
        loop {
            if self.catch_up {
                let store = self.store.clone();
                let filter = self.filter.clone();
                let (batch, examined) =
                    self.read(move || store.events_after(last, None, &filter, CATCH_UP_BATCH)).await?;
                if examined > last {
                    last = examined;
                    self.set_last(last);
                    if !batch.is_empty() {
                        return Ok(Chunk::Logged(batch));
                    }
                    continue;
                }
                self.catch_up = false;
            }
            match self.rx.recv().await {
                Ok(Live::Batch(batch)) => {
                    if let Some(chunk) = self.take(batch) {
                        return Ok(chunk);
                    }
                }
                Ok(Live::Beat) if self.sse => return Ok(Chunk::Beat),
                Ok(Live::End) if self.sse => return Ok(Chunk::End),
                Ok(Live::Beat | Live::End) => {}
                // An end announced meanwhile may be among what was missed.
                Err(broadcast::error::RecvError::Lagged(_)) if self.sse && self.stop.load(Ordering::SeqCst) => {
                    return Ok(Chunk::End);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up = true,
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
            last = self.last.unwrap_or(last);
        }
    }

    /// A live batch already there, if any and if it follows on (otherwise the next
    /// [`Sub::next_chunk`] reads the log).
    fn try_next_live(&mut self) -> Option<Chunk> {
        while !self.catch_up {
            match self.rx.try_recv() {
                Ok(Live::Batch(batch)) => {
                    if let Some(chunk) = self.take(batch) {
                        return Some(chunk);
                    }
                }
                // Whatever is written with it keeps the stream alive just as well.
                Ok(Live::Beat) => {}
                // What was gathered goes out first; the stream ends after it.
                Ok(Live::End) => {
                    self.ended = self.sse;
                    if self.ended {
                        return None;
                    }
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => self.catch_up = true,
                Err(_) => return None,
            }
        }
        None
    }

    /// What of `batch` is news: `None` when all of it was handed out already, or when it does not
    /// follow on from the last seq (a gap: another writer's events not announced yet, or an
    /// overflow), in which case the log is read next.
    fn take(&mut self, batch: Arc<Batch>) -> Option<Chunk> {
        let last = self.last.unwrap_or(0);
        if batch.last_seq() <= last {
            return None;
        }
        if batch.first_seq() > last + 1 {
            self.catch_up = true;
            return None;
        }
        self.set_last(batch.last_seq());
        let from = (last + 1 - batch.first_seq()) as usize;
        Some(Chunk::Live(batch, from))
    }

    fn append(&self, out: &mut Frames, chunk: Chunk) {
        match chunk {
            Chunk::Live(batch, 0) if self.everything => out.push(&batch.all),
            Chunk::Live(batch, from) => {
                for e in batch.events[from..].iter().filter(|e| self.filter.matches(&e.event)) {
                    out.push(&e.frame);
                }
            }
            Chunk::Logged(events) => {
                for e in &events {
                    out.push(&frame(e));
                }
            }
            Chunk::Beat => out.push(&BEAT),
            Chunk::End => {}
        }
    }
}

/// `f` on the blocking pool once one of `reads` is free. Each waiting read is a task, not a
/// blocking thread: in relay chaos, unbounded reads grew an instance to 160 threads and ~1.8 GB.
async fn read_with_permit<T: Send + 'static>(
    reads: &tokio::sync::Semaphore,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    // Never closed, so a permit always comes.
    let _permit = reads.acquire().await;
    blocking(f).await
}

/// Runs a store call on the blocking pool. A panic inside it is carried on to the caller; a call
/// cancelled because the runtime is shutting down never returns (its caller is being dropped
/// too), where unwrapping the `JoinError` used to panic at exit.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::{Hub, READS_AT_ONCE};
    use crate::{Durability, Store};

    /// A read from outside the hub (the relay's session resync) waits for a permit like the
    /// hub's own: with every permit held, it has not started 200 ms later, and starts once one
    /// is given back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_log_waits_for_one_of_the_hubs_permits() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::new(Arc::new(Store::open(&dir.path().join("e.db"), Durability::Normal).unwrap()));
        let started = Arc::new(AtomicUsize::new(0));
        let mut release = Vec::new();
        let mut holders = Vec::new();
        for _ in 0..READS_AT_ONCE {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            release.push(tx);
            let (hub, started) = (hub.clone(), started.clone());
            holders.push(tokio::spawn(async move {
                hub.read_log(move |_| {
                    started.fetch_add(1, Ordering::SeqCst);
                    let _ = rx.recv();
                    Ok(())
                })
                .await
            }));
        }
        while started.load(Ordering::SeqCst) < READS_AT_ONCE {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let one_more = {
            let (hub, started) = (hub.clone(), started.clone());
            tokio::spawn(async move {
                hub.read_log(move |log| {
                    started.fetch_add(1, Ordering::SeqCst);
                    log.last_seq()
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(started.load(Ordering::SeqCst), READS_AT_ONCE, "a read ran beyond the hub's bound");
        drop(release.remove(0));
        assert_eq!(one_more.await.unwrap().unwrap(), 0, "the waiting read ran once a permit was free");
        drop(release);
        for h in holders {
            h.await.unwrap().unwrap();
        }
    }
}
