//! Ingest that scales with instances: each instance's group commit stores raw deliveries without
//! the log's head lock ([`EventLog::receive`](cloudci_webhook::EventLog::receive)), and a
//! [`Sequencer`] turns stored deliveries into events, one sequencing transaction at a time
//! across all instances.
//!
//! # Why this keeps seqs readable in commit order, and processing exactly-once and in order
//! - A raw delivery's transaction inserts into `deliveries` only: no seq, no event, no lock
//!   shared with other instances (rows of the same batch are inserted in `dedup_key` order, so
//!   two instances storing the same keys, GitLab's retry reaching another instance, wait for
//!   each other instead of deadlocking). It commits (`synchronous_commit = on`) before its
//!   deliveries are answered 2xx, so instances' commits overlap and PostgreSQL flushes them
//!   together.
//! - Seqs are handed out only by a transaction that holds the head row's lock
//!   (`SELECT seq FROM log_head FOR UPDATE`, `pg.rs`): [`PgLog::sequence`] here, and the
//!   processor's and conformance path's (`process_deliveries`, `ingest`). PostgreSQL releases a
//!   row lock only after the commit is visible to every new snapshot, so the next holder's seqs
//!   become visible strictly after these: a reader that sees seq `n` sees all below it. A
//!   sequencer killed mid-transaction rolls back its seqs and its `processed` marks together.
//! - After taking the lock, the sequencer reads the pending deliveries (a snapshot taken after
//!   the previous holder's commit), applies them oldest id first and marks them processed in
//!   the same transaction: each delivery is processed once, by whichever sequencer saw it
//!   first. Ids come from a `bigserial`, so a delivery answered before another arrived has the
//!   lower id and is visible whenever the later one is: processed first. Deliveries that were
//!   in flight together have no order of their own (GitLab sends them concurrently too); the
//!   state machine judges each against the log as the previous ones left it.
//!
//! Who sequences: every instance runs a sequencer, woken by its own group commit after each
//! commit, and every [`BACKSTOP`] whatever happened. Holding the lock is being the sequencer for
//! one transaction; nothing is elected, so nothing has to fail over: a `kill -9` aborts the
//! holder's transaction, its lock is released at once, and what it left pending is taken by the
//! next instance's sequencer (its own wake or the backstop) — within a second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use cloudci_webhook::{BuildEvent, Hub, Incoming, StoreError, Stored, StoredDelivery, process_all};

use crate::batch::BatchTables;
use crate::pg::{Conn, PgError, PgLog, lock_head, prepared};

/// How often a sequencer looks for pending deliveries without being woken (another instance's,
/// left by its crash).
pub const BACKSTOP: Duration = Duration::from_secs(1);
/// Deliveries one sequencing transaction takes at most: bounds the time it holds the head.
const BATCH: i64 = 512;

/// Raw deliveries, in `dedup_key` order (see the module's documentation: no deadlock between
/// instances storing the same keys); a key already stored, or twice in the batch, adds no row.
const INSERT_RAW: &str = "INSERT INTO deliveries (dedup_key, event, headers, body)
     SELECT k, e, h, b FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BYTEA[]) AS d(k, e, h, b) ORDER BY k
     ON CONFLICT (dedup_key) DO NOTHING RETURNING dedup_key, id";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The group commit's word to this instance's sequencers that raw deliveries were stored.
#[derive(Debug, Default)]
pub(crate) struct Wake {
    state: Mutex<WakeState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct WakeState {
    poked: bool,
    sequencers: usize,
}

impl Wake {
    /// Wakes the sequencers; false when none runs over this log (then the processor must
    /// process what was stored).
    pub(crate) fn poke(&self) -> bool {
        let mut s = lock(&self.state);
        s.poked = true;
        self.cv.notify_all();
        s.sequencers > 0
    }

    /// Waits for a poke (one that came while the sequencer worked counts) or `timeout`.
    fn wait(&self, timeout: Duration) {
        let mut s = lock(&self.state);
        if !s.poked {
            s = self.cv.wait_timeout(s, timeout).unwrap_or_else(|e| e.into_inner()).0;
        }
        s.poked = false;
    }

    fn register(&self, delta: isize) {
        let mut s = lock(&self.state);
        s.sequencers = s.sequencers.saturating_add_signed(delta);
    }
}

impl PgLog {
    /// Stores `batch` in one transaction of its own, without the head's lock, and returns once
    /// it is committed.
    pub(crate) fn store_raw(&self, batch: Vec<Incoming>) -> Result<Vec<Stored>, StoreError> {
        let d: Vec<_> = batch.iter().map(|i| &i.delivery).collect();
        let keys: Vec<&str> = d.iter().map(|d| d.dedup_key.as_str()).collect();
        let events: Vec<&str> = d.iter().map(|d| d.event.as_str()).collect();
        let headers: Vec<&str> = d.iter().map(|d| d.headers.as_str()).collect();
        let bodies: Vec<&[u8]> = d.iter().map(|d| d.body.as_slice()).collect();
        // Idempotent by the keys: a retry after a commit whose answer was lost finds its rows.
        let (mut new, mut old) = self.write_idempotent(|Conn { client, stmts }| {
            let mut tx = client.transaction()?;
            let insert = prepared(stmts, &mut tx, INSERT_RAW)?;
            let new: HashMap<String, i64> =
                tx.query(&insert, &[&keys, &events, &headers, &bodies])?.iter().map(|r| (r.get(0), r.get(1))).collect();
            let mut old = HashMap::new();
            let seen: Vec<&str> = keys.iter().copied().filter(|k| !new.contains_key(*k)).collect();
            if !seen.is_empty() {
                let s = prepared(stmts, &mut tx, "SELECT dedup_key, id FROM deliveries WHERE dedup_key = ANY($1)")?;
                old.extend(tx.query(&s, &[&seen])?.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1))));
            }
            tx.commit()?;
            Ok((new, old))
        })?;
        // In the batch's order: a key's first occurrence made the row, the others are copies.
        keys.iter()
            .map(|k| match new.remove(*k) {
                Some(id) => {
                    old.insert((*k).to_owned(), id);
                    Ok(Stored::New(id))
                }
                None => old.get(*k).map(|id| Stored::Duplicate(*id)).ok_or_else(|| PgError::Vanished.into()),
            })
            .collect()
    }

    /// One sequencing transaction: takes the head's lock (waiting for another instance's
    /// sequencer), turns up to 512 pending deliveries into events, oldest first, with the state
    /// machine over the batch's rows in memory (`batch.rs`: a dozen statements per batch, not
    /// per delivery), marks them processed, and commits. Returns how many deliveries it processed (0: none was pending)
    /// and the events logged, in seq order. Without pending deliveries it takes no lock.
    pub fn sequence(&self) -> Result<(usize, Vec<BuildEvent>), StoreError> {
        Ok(self.sequencer.with(self.config(), |Conn { client, stmts }| {
            let mut tx = client.transaction()?;
            let s = prepared(stmts, &mut tx, "SELECT EXISTS (SELECT 1 FROM deliveries WHERE NOT processed)")?;
            if !tx.query_one(&s, &[])?.get::<_, bool>(0) {
                tx.commit()?;
                return Ok((0, Vec::new()));
            }
            let first = lock_head(stmts, &mut tx)?;
            // Read after the lock: whatever the previous holder processed is marked by now.
            let s = prepared(
                stmts,
                &mut tx,
                "SELECT id, event, body FROM deliveries WHERE NOT processed ORDER BY id LIMIT $1",
            )?;
            let batch: Vec<_> = tx
                .query(&s, &[&BATCH])?
                .iter()
                .map(|r| StoredDelivery { id: r.get(0), event: r.get(1), body: r.get(2), unreadable: None })
                .map(|d| (d.id, d.parse()))
                .collect();
            let n = batch.len();
            let mut t = BatchTables::load(&mut tx, stmts, &batch, first)?;
            let events = process_all(&mut t, batch)?;
            if let Some(last) = t.store(&mut tx, stmts)? {
                // The new head, and every instance's tail woken at the commit.
                let s = prepared(stmts, &mut tx, "UPDATE log_head SET seq = $1")?;
                tx.execute(&s, &[&last])?;
                let s = prepared(stmts, &mut tx, "SELECT pg_notify('cloudci_log', $1)")?;
                tx.execute(&s, &[&last.to_string()])?;
            }
            tx.commit()?;
            Ok((n, events))
        })?)
    }
}

/// An instance's sequencer: a thread that runs [`PgLog::sequence`] whenever its group commit
/// stored deliveries and every [`BACKSTOP`], and publishes what it logged into the instance's
/// hub. It stops when this is dropped.
#[derive(Debug)]
pub struct Sequencer {
    stop: Arc<AtomicBool>,
    log: Arc<PgLog>,
}

impl Drop for Sequencer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.log.wake.poke();
    }
}

impl Sequencer {
    /// Starts sequencing `log` (the one `hub` is over), publishing into `hub`. From now on the
    /// log's [`EventLog::receive`](cloudci_webhook::EventLog::receive) leaves processing to it
    /// (it no longer asks for the processor).
    pub fn start(hub: Hub<PgLog>, log: Arc<PgLog>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        log.wake.register(1);
        let (s, l) = (stop.clone(), log.clone());
        std::thread::Builder::new()
            .name("cloudci-relay-sequencer".into())
            .spawn(move || run(hub, l, s))
            .expect("cannot start the relay's sequencer thread");
        Self { stop, log }
    }
}

fn run(hub: Hub<PgLog>, log: Arc<PgLog>, stop: Arc<AtomicBool>) {
    let mut failing = false;
    while !stop.load(Ordering::Acquire) {
        log.wake.wait(BACKSTOP);
        while !stop.load(Ordering::Acquire) {
            match log.sequence() {
                Ok((n, events)) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!("relay sequencer: processing deliveries again");
                    }
                    hub.publish(events);
                    if n == 0 {
                        break;
                    }
                }
                // Stored deliveries wait (they are acknowledged already); the next wake or the
                // backstop tries again.
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!("relay sequencer: cannot process stored deliveries: {e}");
                    } else {
                        tracing::debug!("relay sequencer: still failing: {e}");
                    }
                    std::thread::sleep(BACKSTOP / 4);
                    break;
                }
            }
        }
    }
    log.wake.register(-1);
}
