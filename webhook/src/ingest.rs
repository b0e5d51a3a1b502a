//! Group commit: one writer thread stores (and processes) deliveries that arrive together in one
//! transaction, with one fsync, and answers each only after that commit.
//!
//! Handlers queue a delivery and wait on a oneshot. The writer blocks until something is queued,
//! takes everything queued by then (up to [`MAX_BATCH`]), commits it, publishes the events, then
//! answers. There is no linger: a lone delivery on an idle daemon is committed at once, and under
//! load the batch grows by itself with what queued up during the previous commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot};

use crate::events::BuildEvent;
use crate::health::Problem;
use crate::hub::Hub;
use crate::log::EventLog;
use crate::store::{Incoming, StoreError, Stored};

/// Deliveries in one transaction at most: bounds the time a commit holds the store.
pub(crate) const MAX_BATCH: usize = 512;
/// Deliveries waiting for the writer before handlers wait to queue (back-pressure).
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<Stored, IngestError>>;

/// Why a delivery was not stored (it is then not acknowledged).
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum IngestError {
    /// The store refused the batch it was in (the writer logged the cause once).
    #[error("cannot store the delivery: {message}")]
    Store {
        /// The store's error.
        message: String,
        /// The resource it ran out of, when that is why ([`StoreError::problem`]).
        problem: Option<Problem>,
    },
    /// The writer thread is gone (the daemon is stopping).
    #[error("the ingest thread stopped")]
    Stopped,
}

/// Counters of the group commit, for benchmarks and logs.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Transactions committed.
    pub batches: AtomicU64,
    /// Deliveries in them.
    pub deliveries: AtomicU64,
    /// The largest batch.
    pub max_batch: AtomicU64,
    /// Time spent in the store (inserting, processing, committing), in microseconds.
    pub store_micros: AtomicU64,
    /// The longest time one batch spent in the store, in microseconds.
    pub max_store_micros: AtomicU64,
    /// Batches by their time in the store: under 1, 5, 20, 50 and 200 ms, and longer. A tail
    /// of ingest latency that these do not hold was spent waiting, not in the store.
    pub store_histogram: [AtomicU64; STORE_HISTOGRAM_BOUNDS_US.len() + 1],
}

/// The upper bounds, in microseconds, of [`IngestStats::store_histogram`]'s buckets.
pub const STORE_HISTOGRAM_BOUNDS_US: [u64; 5] = [1_000, 5_000, 20_000, 50_000, 200_000];

impl IngestStats {
    /// Mean deliveries per commit.
    pub fn mean_batch(&self) -> f64 {
        let b = self.batches.load(Ordering::Relaxed);
        if b == 0 { 0.0 } else { self.deliveries.load(Ordering::Relaxed) as f64 / b as f64 }
    }
}

/// The handle handlers queue deliveries through. The writer thread stops when the last handle is
/// dropped, after answering what was queued.
#[derive(Debug, Clone)]
pub(crate) struct Ingest {
    queue: mpsc::Sender<(Incoming, Reply)>,
    stats: Arc<IngestStats>,
}

impl Ingest {
    /// Starts the writer thread over `hub`'s store; `wake` is notified when deliveries were
    /// stored but left for the processor.
    pub(crate) fn start<L: EventLog>(hub: Hub<L>, wake: Arc<Notify>) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(IngestStats::default());
        let s = stats.clone();
        let announce = Announce::start(&hub);
        std::thread::Builder::new()
            .name("cloudci-ingest".into())
            .spawn(move || writer(rx, hub, wake, s, announce))
            .expect("cannot start the ingest thread");
        Self { queue, stats }
    }

    /// Stores `incoming`; resolves once it is committed (durably, with `durability = "full"`).
    pub(crate) async fn store(&self, incoming: Incoming) -> Result<Stored, IngestError> {
        let (tx, rx) = oneshot::channel();
        self.queue.send((incoming, tx)).await.map_err(|_| IngestError::Stopped)?;
        rx.await.map_err(|_| IngestError::Stopped)?
    }

    /// The counters so far.
    pub(crate) fn stats(&self) -> &IngestStats {
        &self.stats
    }
}

/// How the writer announces what a commit logged. Waking every subscriber from the writer's own
/// thread goes through the runtime's shared queue once per subscriber (a lock, and a futex when a
/// worker sleeps); from a task on the runtime the wakes go to that worker's own queue. One task,
/// fed in commit order, keeps the announcements in order.
enum Announce<L: EventLog> {
    /// Through a task on the runtime that started the writer.
    Task(mpsc::UnboundedSender<Vec<BuildEvent>>),
    /// From the writer's thread (no runtime: tests that drive the store directly).
    Direct(Hub<L>),
}

impl<L: EventLog> Announce<L> {
    fn start(hub: &Hub<L>) -> Self {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let (tx, mut rx) = mpsc::unbounded_channel::<Vec<BuildEvent>>();
                let hub = hub.clone();
                runtime.spawn(async move {
                    while let Some(events) = rx.recv().await {
                        hub.publish(events);
                    }
                });
                Self::Task(tx)
            }
            Err(_) => Self::Direct(hub.clone()),
        }
    }

    fn publish(&self, events: Vec<BuildEvent>) {
        if events.is_empty() {
            return;
        }
        match self {
            // The task is gone only when the runtime stops; the log keeps the events anyway.
            Self::Task(tx) => {
                let _ = tx.send(events);
            }
            Self::Direct(hub) => hub.publish(events),
        }
    }
}

/// Records why a batch of `n` was refused: a resource problem once when it starts (its log
/// line may not be written either: a full disk), anything else every time.
fn refused<L: EventLog>(hub: &Hub<L>, e: &StoreError, n: usize) -> IngestError {
    let problem = e.problem();
    match problem {
        Some(p) => {
            if hub.health().set(p, e) {
                tracing::error!(
                    problem = p.as_str(),
                    "cannot store webhook deliveries: {e}; answering 503 until it is over"
                );
            }
        }
        None => tracing::error!("cannot store {n} webhook deliveries: {e}"),
    }
    IngestError::Store { message: e.to_string(), problem }
}

fn writer<L: EventLog>(
    mut rx: mpsc::Receiver<(Incoming, Reply)>,
    hub: Hub<L>,
    wake: Arc<Notify>,
    stats: Arc<IngestStats>,
    announce: Announce<L>,
) {
    let mut logged = Instant::now();
    let (mut window_batches, mut window_deliveries) = (0u64, 0u64);
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let n = batch.len();
        let (incoming, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        // While another program holds the database, a batch does not wait out the busy timeout
        // again: its deliveries are answered 503 at once (the probe says when it is over).
        if let Err(e) = hub.store().set_locked(hub.health().has(Problem::DatabaseBusy)) {
            tracing::warn!("cannot change the event store's busy timeout: {e}");
        }
        let started = Instant::now();
        // Retention rides along (`retention/sweep.rs`): never above where a subscriber is.
        let result = hub.store().receive_retaining(incoming, hub.oldest_subscriber());
        let took = started.elapsed();
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.deliveries.fetch_add(n as u64, Ordering::Relaxed);
        stats.max_batch.fetch_max(n as u64, Ordering::Relaxed);
        let micros = took.as_micros() as u64;
        stats.store_micros.fetch_add(micros, Ordering::Relaxed);
        stats.max_store_micros.fetch_max(micros, Ordering::Relaxed);
        let bucket =
            STORE_HISTOGRAM_BOUNDS_US.iter().position(|&b| micros < b).unwrap_or(STORE_HISTOGRAM_BOUNDS_US.len());
        stats.store_histogram[bucket].fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(done) => {
                // A commit went through: whatever stopped the last ones is over.
                for p in [Problem::DiskFull, Problem::DatabaseBusy] {
                    if hub.health().clear(p) {
                        tracing::info!(problem = p.as_str(), "the event store takes deliveries again");
                    }
                }
                // Answer first, then announce: the answer is what GitLab waits for.
                for (reply, stored) in replies.into_iter().zip(done.stored) {
                    let _ = reply.send(Ok(stored));
                }
                announce.publish(done.events);
                if done.deferred {
                    wake.notify_one();
                }
            }
            Err(e) => {
                let error = refused(&hub, &e, n);
                // One batch's error for each of its deliveries: the store error is not `Clone`.
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
        window_batches += 1;
        window_deliveries += n as u64;
        if logged.elapsed() >= Duration::from_secs(10) {
            tracing::debug!(
                batches = window_batches,
                deliveries = window_deliveries,
                mean_batch = window_deliveries as f64 / window_batches as f64,
                max_batch = stats.max_batch.load(Ordering::Relaxed),
                "group commit"
            );
            (window_batches, window_deliveries) = (0, 0);
            logged = Instant::now();
        }
    }
    tracing::debug!(
        batches = stats.batches.load(Ordering::Relaxed),
        deliveries = stats.deliveries.load(Ordering::Relaxed),
        mean_batch = stats.mean_batch(),
        max_batch = stats.max_batch.load(Ordering::Relaxed),
        store_ms = stats.store_micros.load(Ordering::Relaxed) / 1000,
        "group commit: writer stopped"
    );
}
