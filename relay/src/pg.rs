//! [`PgLog`]: the event log in PostgreSQL, cloudci-webhook's [`EventLog`] for the team relay.
//!
//! # Sequence numbers readable in commit order
//! A `bigserial` is not enough: two transactions take 7 and 8, 8 commits first, and a reader
//! that saw 8 moves past 7 for good. Here every transaction that logs events (the
//! [`Sequencer`](crate::Sequencer)'s, the processor's [`EventLog::process_deliveries`], and
//! [`EventLog::ingest`]) starts by locking the one row of `log_head` (`SELECT seq ... FOR
//! UPDATE`), hands out `seq + 1, seq + 2, ...` in memory, writes the new head and commits. So:
//! - transactions that log events run one at a time, across all instances;
//! - PostgreSQL releases a transaction's row locks only after its commit is visible to every
//!   new snapshot, so the next writer's seqs become visible strictly after these: a reader that
//!   sees seq `n` sees everything below it, and `events_after` never skips a seq;
//! - a transaction that rolls back (a crash, `pg_ctl stop -m immediate`) also rolls back the
//!   head: seqs stay consecutive, with no holes.
//!
//! The group commit does not take that lock: the receiver calls [`EventLog::receive`], which
//! stores raw deliveries in a transaction of their own and leaves them to the sequencer
//! (`sequencer.rs`), so instances store deliveries in parallel and only the sequencing is one
//! at a time. [`EventLog::ingest`] (store and process in one transaction, under the lock taken
//! before the inserts) is kept for the interface's other callers and the conformance tests.
//!
//! `synchronous_commit` is set on in every session: a delivery is acknowledged only after its
//! commit is on disk (a server configured otherwise does not weaken that). A session's statements
//! time out after 8 s, so a stuck database answers 503 before GitLab's 10 s timeout does.
//!
//! Connections: one writer (the group commit's), one sequencer (the sequencer and the processor
//! take turns), a few readers (subscribers catching up, the tail), each reconnected on the next
//! call after it broke.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cloudci_webhook::{
    BuildEvent, EventFilter, EventLog, Incoming, Ingested, Parsed, StoreError, Stored, StoredDelivery, process_all,
};
use postgres::{Client, Config, NoTls, Statement, Transaction};

use crate::tables::Tables;

/// The channel a commit that logged events notifies (payload: the new last seq).
pub const CHANNEL: &str = "cloudci_log";

/// Reader connections (subscribers catching up, the tail).
const READERS: usize = 4;

/// How long a statement may run before it is cancelled: under GitLab's 10 s delivery timeout.
const STATEMENT_TIMEOUT: &str = "8s";

/// Why the relay's log could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The connection string could not be read (its text is not repeated: it may hold a
    /// password).
    #[error("the PostgreSQL connection string is not valid: {0}")]
    BadUrl(String),
    /// PostgreSQL refused or failed (with the server's own message: the client's Display is
    /// only "db error").
    #[error("PostgreSQL: {}", server_says(.0))]
    Db(#[from] postgres::Error),
    /// A delivery's row, found under its key while the batch was stored, was gone by the time
    /// it was read (nothing removes deliveries that young: a bug, or someone else's hand).
    #[error("a stored delivery's row vanished while its copy was being stored")]
    Vanished,
}

/// The server's SQLSTATE and message (never its detail, which may quote a row's values).
fn server_says(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> Self {
        StoreError::Backend(Box::new(e))
    }
}

/// One session and the statements prepared on it.
pub(crate) struct Conn {
    pub(crate) client: Client,
    pub(crate) stmts: HashMap<&'static str, Statement>,
}

impl Conn {
    fn open(config: &Config) -> Result<Self, postgres::Error> {
        let mut client = config.connect(NoTls)?;
        client.batch_execute(&format!("SET synchronous_commit = on; SET statement_timeout = '{STATEMENT_TIMEOUT}'"))?;
        Ok(Self { client, stmts: HashMap::new() })
    }
}

/// Prepares `sql` once per session: the state machine runs the same dozen statements for every
/// delivery, and an unprepared statement costs a second round trip each time.
pub(crate) fn prepared(
    stmts: &mut HashMap<&'static str, Statement>,
    tx: &mut Transaction<'_>,
    sql: &'static str,
) -> Result<Statement, postgres::Error> {
    if let Some(s) = stmts.get(sql) {
        return Ok(s.clone());
    }
    let s = tx.prepare(sql)?;
    stmts.insert(sql, s.clone());
    Ok(s)
}

/// A connection slot: opened on first use, dropped when it broke, opened again on the next call.
pub(crate) struct Slot(Mutex<Option<Conn>>);

impl Slot {
    fn new() -> Self {
        Self(Mutex::new(None))
    }

    pub(crate) fn with<T>(
        &self,
        config: &Config,
        f: impl FnOnce(&mut Conn) -> Result<T, postgres::Error>,
    ) -> Result<T, PgError> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_none_or(|c| c.client.is_closed()) {
            *slot = None;
            *slot = Some(Conn::open(config)?);
        }
        let conn = slot.as_mut().expect("just opened");
        let result = f(conn);
        if result.is_err() && conn.client.is_closed() {
            *slot = None;
        }
        Ok(result?)
    }

    /// [`Slot::with`] for an `f` that may run twice (idempotent: the raw deliveries' insert, by
    /// their keys): when the session turns out to be broken, `f` runs again once on a new one.
    /// A blocking client learns that its server went away (a restart, an outage) only at the
    /// next call, so a slot idle across a restart failed its first call, and GitLab got a 503
    /// after PostgreSQL was back (`relay/tests/reconnect.rs`).
    pub(crate) fn with_reconnect<T>(
        &self,
        config: &Config,
        f: impl Fn(&mut Conn) -> Result<T, postgres::Error>,
    ) -> Result<T, PgError> {
        match self.with(config, &f) {
            Err(PgError::Db(e)) if e.is_closed() || self.0.lock().unwrap_or_else(|e| e.into_inner()).is_none() => {
                tracing::debug!("relay log: the session broke ({e}); once more on a new one");
                self.with(config, f)
            }
            other => other,
        }
    }
}

/// The event log in PostgreSQL.
pub struct PgLog {
    config: Config,
    /// The group commit's: raw deliveries ([`EventLog::receive`]), and [`EventLog::ingest`].
    writer: Slot,
    /// The sequencer's and the processor's (they turn deliveries into events), so that the
    /// group commit never waits behind them.
    pub(crate) sequencer: Slot,
    /// Wakes this instance's [`Sequencer`](crate::Sequencer) when raw deliveries were stored.
    pub(crate) wake: crate::sequencer::Wake,
    readers: Vec<Slot>,
    next_reader: AtomicUsize,
}

// By hand: the configuration holds the password.
impl std::fmt::Debug for PgLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLog").field("hosts", &self.config.get_hosts()).finish_non_exhaustive()
    }
}

impl PgLog {
    /// Connects to `url` (`postgres://user@host:port/db` or `host=... user=...`), runs the
    /// migrations, and returns the log. Fails when PostgreSQL cannot be reached now.
    pub fn open(url: &str) -> Result<Self, PgError> {
        let mut config = Config::from_str(url).map_err(|e| PgError::BadUrl(e.to_string()))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("cloudci relay");
        }
        let log = Self {
            config,
            writer: Slot::new(),
            sequencer: Slot::new(),
            wake: crate::sequencer::Wake::default(),
            readers: (0..READERS).map(|_| Slot::new()).collect(),
            next_reader: AtomicUsize::new(0),
        };
        let applied = log.writer.with(&log.config, |c| crate::schema::migrate(&mut c.client))?;
        if applied > 0 {
            tracing::info!(applied, "relay log: schema migrated");
        }
        Ok(log)
    }

    /// The connection settings, for a session of the caller's own (the tail's `LISTEN`).
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn read<T>(&self, f: impl FnOnce(&mut Conn) -> Result<T, postgres::Error>) -> Result<T, StoreError> {
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        Ok(self.readers[i].with(&self.config, f)?)
    }

    pub(crate) fn write<T>(&self, f: impl FnOnce(&mut Conn) -> Result<T, postgres::Error>) -> Result<T, StoreError> {
        Ok(self.writer.with(&self.config, f)?)
    }

    /// [`PgLog::write`] of an idempotent `f`, run again on a new session when the first broke.
    pub(crate) fn write_idempotent<T>(
        &self,
        f: impl Fn(&mut Conn) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        Ok(self.writer.with_reconnect(&self.config, f)?)
    }
}

/// Locks the log's head for this transaction: the next seq to hand out.
pub(crate) fn lock_head(
    stmts: &mut HashMap<&'static str, Statement>,
    tx: &mut Transaction<'_>,
) -> Result<u64, postgres::Error> {
    let s = prepared(stmts, tx, "SELECT seq FROM log_head FOR UPDATE")?;
    Ok(tx.query_one(&s, &[])?.get::<_, i64>(0) as u64 + 1)
}

/// Moves the head past the seqs `t` handed out and wakes every instance's tail at commit.
pub(crate) fn finish(t: &mut Tables<'_, '_>, first: u64) -> Result<(), postgres::Error> {
    let (next, stmts, tx) = (t.next_seq, &mut *t.stmts, &mut *t.tx);
    if next == first {
        return Ok(());
    }
    let last = (next - 1) as i64;
    let s = prepared(stmts, tx, "UPDATE log_head SET seq = $1")?;
    tx.execute(&s, &[&last])?;
    let s = prepared(stmts, tx, "SELECT pg_notify('cloudci_log', $1)")?;
    tx.execute(&s, &[&last.to_string()])?;
    Ok(())
}

pub(crate) fn row_event(seq: i64, data: &str) -> Option<BuildEvent> {
    let mut e: BuildEvent = serde_json::from_str(data).ok()?;
    e.seq = seq as u64;
    Some(e)
}

impl EventLog for PgLog {
    fn ingest(&self, batch: Vec<Incoming>) -> Result<Ingested, StoreError> {
        self.write(|Conn { client, stmts }| {
            let mut tx = client.transaction()?;
            let first = lock_head(stmts, &mut tx)?;
            let s = prepared(stmts, &mut tx, "SELECT EXISTS (SELECT 1 FROM deliveries WHERE NOT processed)")?;
            let older_pending: bool = tx.query_one(&s, &[])?.get(0);
            let insert = prepared(
                stmts,
                &mut tx,
                "INSERT INTO deliveries (dedup_key, event, headers, body) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (dedup_key) DO NOTHING RETURNING id",
            )?;
            let existing = prepared(stmts, &mut tx, "SELECT id FROM deliveries WHERE dedup_key = $1")?;
            let mut stored = Vec::with_capacity(batch.len());
            let mut fresh = Vec::with_capacity(batch.len());
            for Incoming { delivery: d, observations } in batch {
                match tx.query_opt(&insert, &[&d.dedup_key, &d.event, &d.headers, &d.body])? {
                    Some(row) => {
                        let id: i64 = row.get(0);
                        stored.push(Stored::New(id));
                        fresh.push((id, observations));
                    }
                    None => stored.push(Stored::Duplicate(tx.query_one(&existing, &[&d.dedup_key])?.get(0))),
                }
            }
            let mut events = Vec::new();
            let mut deferred = false;
            if !fresh.is_empty() {
                if older_pending {
                    deferred = true;
                } else {
                    let mut sp = tx.savepoint("process")?;
                    let mut t = Tables::new(&mut sp, stmts, first);
                    match process_all(&mut t, fresh).and_then(|logged| finish(&mut t, first).map(|()| logged)) {
                        Ok(logged) => {
                            sp.commit()?;
                            events = logged;
                        }
                        // The deliveries are stored all the same; the processor retries them.
                        Err(e) => {
                            tracing::warn!("processing deliveries as they were stored: {e}; left for the processor");
                            drop(sp);
                            deferred = true;
                        }
                    }
                }
            }
            tx.commit()?;
            Ok(Ingested { stored, events, deferred })
        })
    }

    /// Stores the batch without the head's lock and leaves its processing to the
    /// [`Sequencer`](crate::Sequencer) (`sequencer.rs` says why that keeps seqs in commit
    /// order).
    fn receive(&self, batch: Vec<Incoming>) -> Result<Ingested, StoreError> {
        let stored = self.store_raw(batch)?;
        let deferred = !self.wake.poke();
        Ok(Ingested { stored, events: Vec::new(), deferred })
    }

    fn delivery(&self, dedup_key: &str) -> Result<Option<(i64, bool)>, StoreError> {
        self.read(|c| {
            let row = c.client.query_opt("SELECT id, processed FROM deliveries WHERE dedup_key = $1", &[&dedup_key])?;
            Ok(row.map(|r| (r.get(0), r.get(1))))
        })
    }

    fn pending_deliveries(&self, limit: usize) -> Result<Vec<StoredDelivery>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            let rows = c
                .client
                .query("SELECT id, event, body FROM deliveries WHERE NOT processed ORDER BY id LIMIT $1", &[&limit])?;
            Ok(rows
                .iter()
                .map(|r| StoredDelivery { id: r.get(0), event: r.get(1), body: r.get(2), unreadable: None })
                .collect())
        })
    }

    fn process_deliveries(&self, batch: Vec<(i64, Parsed)>) -> Result<Vec<BuildEvent>, StoreError> {
        Ok(self.sequencer.with(&self.config, |Conn { client, stmts }| {
            let mut tx = client.transaction()?;
            let first = lock_head(stmts, &mut tx)?;
            let s = prepared(stmts, &mut tx, "SELECT NOT processed FROM deliveries WHERE id = $1")?;
            let mut pending = Vec::with_capacity(batch.len());
            for (id, parsed) in batch {
                if tx.query_opt(&s, &[&id])?.is_some_and(|r| r.get::<_, bool>(0)) {
                    pending.push((id, parsed));
                }
            }
            let mut t = Tables::new(&mut tx, stmts, first);
            let events = process_all(&mut t, pending)?;
            finish(&mut t, first)?;
            tx.commit()?;
            Ok(events)
        })?)
    }

    fn events_after(
        &self,
        seq: u64,
        until: Option<u64>,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<(Vec<BuildEvent>, u64), StoreError> {
        let (from, until) = (seq as i64, until.map_or(i64::MAX, |u| u as i64));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.read(|c| {
            c.client.query(
                "SELECT seq, data FROM events WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3",
                &[&from, &until, &limit],
            )
        })?;
        let mut last = seq;
        let mut out = Vec::new();
        for r in &rows {
            let s: i64 = r.get(0);
            last = s as u64;
            if let Some(e) = row_event(s, r.get(1)).filter(|e| filter.matches(e)) {
                out.push(e);
            }
        }
        Ok((out, last))
    }

    fn last_seq(&self) -> Result<u64, StoreError> {
        self.read(|c| Ok(c.client.query_one("SELECT seq FROM log_head", &[])?.get::<_, i64>(0) as u64))
    }

    /// What retention removed (`retention.rs`).
    fn removed_through(&self) -> Result<u64, StoreError> {
        self.removed_mark()
    }

    fn snapshot(&self, filter: &EventFilter, upto: u64) -> Result<Vec<BuildEvent>, StoreError> {
        self.snapshot_of(filter, upto)
    }
}
