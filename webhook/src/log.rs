//! The event log's interface: what the receiver's group commit, the [`crate::Processor`] and the
//! [`crate::Hub`]'s fan-out need of a log, whatever holds it. [`crate::Store`] (SQLite, the
//! daemon's) implements it; `cloudci-relay`'s `PgLog` (PostgreSQL, the team relay's) is the
//! second implementation, and `relay/tests/conformance.rs` runs the same cases against both.
//!
//! # Blocking, on purpose
//! The calls are synchronous. SQLite is; the group commit is a writer thread that holds one
//! transaction per batch; and the state machine ([`crate::machine`]) runs a dozen small
//! statements per delivery inside that transaction, written once for every backend — which only
//! works if every backend's transaction is driven the same way. PostgreSQL's blocking client
//! (`postgres`, the thin blocking face of `tokio-postgres`) fits that; async callers go through
//! the hub, which runs each call on tokio's blocking pool.
//!
//! # The contract (what the conformance tests check)
//! - [`EventLog::ingest`] stores a batch in one transaction and answers only once it is
//!   committed (durably, for the backend's durable setting); a `dedup_key` seen before (also
//!   earlier in the same batch) is [`Stored::Duplicate`] and adds no row and no event.
//! - Events get sequence numbers that are consecutive and **readable in commit order** by every
//!   reader: once a reader sees seq `n`, it sees every seq below `n` too. `events_after(s)`
//!   never skips a seq that commits later.
//! - A batch that cannot be processed at once (an older delivery is still pending, or
//!   processing failed) is still stored: `deferred`, and [`EventLog::pending_deliveries`] /
//!   [`EventLog::process_deliveries`] finish it, in arrival order, exactly once.
//! - A crash before the commit leaves nothing; after it, everything (and unprocessed deliveries
//!   stay pending until processed).

use crate::events::BuildEvent;
use crate::store::{EventFilter, Incoming, Parsed, StoreError, Stored};

/// What [`EventLog::ingest`] did.
#[derive(Debug)]
pub struct Ingested {
    /// One per delivery given, in the same order.
    pub stored: Vec<Stored>,
    /// The events logged, in seq order.
    pub events: Vec<BuildEvent>,
    /// New deliveries were stored but left for the processor.
    pub deferred: bool,
}

/// A stored delivery waiting to be turned into events ([`StoredDelivery::parse`] reads it).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDelivery {
    /// Row id.
    pub id: i64,
    /// `X-Gitlab-Event`.
    pub event: String,
    /// The raw body.
    pub body: Vec<u8>,
    /// Why the stored body could not be read back (then `body` is empty): a damaged or unknown
    /// encoding. [`StoredDelivery::parse`] gives it as the reason.
    pub unreadable: Option<String>,
}

/// An event log backend. See the module's documentation for the contract.
pub trait EventLog: Send + Sync + std::fmt::Debug + 'static {
    /// Stores deliveries that arrived together, and turns them into events when nothing older is
    /// pending, in one transaction; every delivery is committed when this returns.
    fn ingest(&self, batch: Vec<Incoming>) -> Result<Ingested, StoreError>;

    /// What the receiver's group commit calls: stores a batch durably (answered from what this
    /// returns). By default [`EventLog::ingest`]. A backend whose processing is serialized across
    /// writers (PostgreSQL's, shared by several relay instances) may only store the batch and
    /// leave the processing to a sequencer of its own, so that no writer waits for another's
    /// processing: then `events` is empty, and `deferred` is set only when nothing of its own
    /// will process them (the processor must).
    fn receive(&self, batch: Vec<Incoming>) -> Result<Ingested, StoreError> {
        self.ingest(batch)
    }

    /// [`EventLog::receive`] with retention riding along: the same transaction may also remove
    /// expired rows, never an event above `subscribers_at` (the oldest connected subscriber's
    /// position). SQLite does once retention is on ([`crate::Store::ingest_retaining`]); by
    /// default it is [`EventLog::receive`].
    fn receive_retaining(&self, batch: Vec<Incoming>, subscribers_at: Option<u64>) -> Result<Ingested, StoreError> {
        let _ = subscribers_at;
        self.receive(batch)
    }

    /// The id of the delivery stored under `dedup_key`, and whether it has been processed.
    fn delivery(&self, dedup_key: &str) -> Result<Option<(i64, bool)>, StoreError>;

    /// Deliveries not yet turned into events, oldest first.
    fn pending_deliveries(&self, limit: usize) -> Result<Vec<StoredDelivery>, StoreError>;

    /// Processes stored deliveries in the order given, in one transaction; those processed
    /// meanwhile (by another caller) are skipped. Returns the events logged.
    fn process_deliveries(&self, batch: Vec<(i64, Parsed)>) -> Result<Vec<BuildEvent>, StoreError>;

    /// Logged events after `seq` (exclusive) up to `until` (inclusive), passing `filter`, at most
    /// `limit`; and the highest seq examined, so a caller skips what did not pass.
    fn events_after(
        &self,
        seq: u64,
        until: Option<u64>,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<(Vec<BuildEvent>, u64), StoreError>;

    /// The newest seq ever logged (0 when none was), also when retention removed it.
    fn last_seq(&self) -> Result<u64, StoreError>;

    /// [`EventLog::last_seq`] when it is a local read cheap enough for an async thread (SQLite:
    /// microseconds), so a subscriber "from now" starts exactly where it subscribed; `None` for a
    /// log across the network, whose position the hub then reads on the blocking pool at the
    /// subscription's first poll.
    fn last_seq_local(&self) -> Option<u64> {
        None
    }

    /// The group commit's word that the database is known to be locked by another program
    /// ([`crate::Problem::DatabaseBusy`]) or no longer: SQLite then waits 100 ms for its lock
    /// instead of its busy timeout. Nothing for a backend without such a lock.
    fn set_locked(&self, locked: bool) -> Result<(), StoreError> {
        let _ = locked;
        Ok(())
    }

    /// The highest seq retention removed (0: none); a resume from below it gets a resync.
    fn removed_through(&self) -> Result<u64, StoreError>;

    /// The latest event of each pipeline, job and merge request passing `filter`, up to seq
    /// `upto`: what a subscriber resuming from before [`EventLog::removed_through`] gets.
    fn snapshot(&self, filter: &EventFilter, upto: u64) -> Result<Vec<BuildEvent>, StoreError>;
}

impl EventLog for crate::Store {
    fn ingest(&self, batch: Vec<Incoming>) -> Result<Ingested, StoreError> {
        crate::Store::ingest(self, batch)
    }

    fn receive_retaining(&self, batch: Vec<Incoming>, subscribers_at: Option<u64>) -> Result<Ingested, StoreError> {
        crate::Store::ingest_retaining(self, batch, subscribers_at)
    }

    fn delivery(&self, dedup_key: &str) -> Result<Option<(i64, bool)>, StoreError> {
        crate::Store::delivery(self, dedup_key)
    }

    fn pending_deliveries(&self, limit: usize) -> Result<Vec<StoredDelivery>, StoreError> {
        crate::Store::pending_deliveries(self, limit)
    }

    fn process_deliveries(&self, batch: Vec<(i64, Parsed)>) -> Result<Vec<BuildEvent>, StoreError> {
        crate::Store::process_deliveries(self, batch)
    }

    fn events_after(
        &self,
        seq: u64,
        until: Option<u64>,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<(Vec<BuildEvent>, u64), StoreError> {
        crate::Store::events_after(self, seq, until, filter, limit)
    }

    fn last_seq(&self) -> Result<u64, StoreError> {
        crate::Store::last_seq(self)
    }

    fn last_seq_local(&self) -> Option<u64> {
        crate::Store::last_seq(self).ok()
    }

    fn set_locked(&self, locked: bool) -> Result<(), StoreError> {
        crate::Store::set_locked(self, locked)
    }

    fn removed_through(&self) -> Result<u64, StoreError> {
        crate::Store::removed_through(self)
    }

    fn snapshot(&self, filter: &EventFilter, upto: u64) -> Result<Vec<BuildEvent>, StoreError> {
        crate::Store::snapshot(self, filter, upto)
    }
}
