//! The durable store: raw deliveries, the event log, and the last known state of every pipeline
//! and job, in one SQLite database (WAL mode).
//!
//! # What "durable" means
//! A delivery is answered 2xx only after its row is committed.
//! - [`Durability::Full`] (the default): `synchronous=FULL`; every commit is fsync'ed. A committed
//!   delivery survives a crash of cloudci *and* of the machine (power loss).
//! - [`Durability::Normal`]: `synchronous=NORMAL`; commits survive a crash of cloudci, but the
//!   last ones may be lost if the machine itself goes down before the WAL is checkpointed. About
//!   an order of magnitude more commits per second on slow disks.
//!
//! The calls are synchronous (SQLite is); async callers run them with `spawn_blocking`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cloudci_gitlab::types::Status;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::events::{BuildEvent, Observation};

pub(crate) use crate::log::{Ingested, StoredDelivery};

mod body;
#[cfg(test)]
pub(crate) use body::noise;
mod mirror;
mod tables;

/// How hard commits are pushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync on every commit: survives power loss.
    #[default]
    Full,
    /// WAL without fsync per commit: survives process crashes.
    Normal,
}

/// An event log failure, of either backend ([`crate::EventLog`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite (the daemon's log).
    #[error("event store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Another backend (PostgreSQL, in `cloudci-relay`): its error, already without secrets
    /// (a connection string's password never reaches it).
    #[error("event log: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// The resource this failure ran out of, if that is what it is: a full disk (`SQLITE_FULL`:
    /// SQLite turns a write's `ENOSPC` into it), the database locked past the busy timeout
    /// (`SQLITE_BUSY`/`SQLITE_LOCKED`). Another backend's failures are not sorted so: each is
    /// a 503 all the same.
    pub fn problem(&self) -> Option<crate::health::Problem> {
        match self {
            Self::Sqlite(e) => crate::health::Problem::of_sqlite(e),
            Self::Backend(_) => None,
        }
    }
}

/// A delivery as received.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    /// `Idempotency-Key` / `webhook-id`, or a hash of the body when GitLab sent neither.
    pub dedup_key: String,
    /// `X-Gitlab-Event`.
    pub event: String,
    /// Non-secret headers as JSON (no token, no signature).
    pub headers: String,
    /// The raw body.
    pub body: Vec<u8>,
}

/// What a delivery's body says: its observations, or why it could not be read (kept with the
/// delivery, never dropped silently).
pub type Parsed = Result<Vec<Observation>, Unreadable>;

/// Why cloudci could not read a delivery's body (GitLab's parse error, in words); stored with the
/// delivery so a GitLab change cloudci cannot read yet is seen, not lost.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(String);

impl From<String> for Unreadable {
    fn from(reason: String) -> Self {
        Self(reason)
    }
}

impl From<&str> for Unreadable {
    fn from(reason: &str) -> Self {
        Self(reason.to_owned())
    }
}

/// A delivery and what its body says, read before it is stored so that storing and processing
/// share one transaction.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The delivery.
    pub delivery: NewDelivery,
    /// Its observations.
    pub observations: Parsed,
}

/// The outcome of storing a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// First time seen.
    New(i64),
    /// A resend of a delivery already stored (same idempotency key).
    Duplicate(i64),
}

/// Which events a subscriber wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only these project paths or ids (as text); all when empty.
    pub projects: Vec<String>,
    /// Only this ref.
    pub git_ref: Option<String>,
    /// Only this pipeline.
    pub pipeline_id: Option<u64>,
}

impl EventFilter {
    /// Whether `e` passes.
    pub fn matches(&self, e: &BuildEvent) -> bool {
        (self.projects.is_empty()
            || self
                .projects
                .iter()
                .any(|p| e.project.as_deref() == Some(p.as_str()) || p.parse::<u64>().ok() == Some(e.project_id)))
            && self.git_ref.as_ref().is_none_or(|r| e.git_ref.as_ref() == Some(r))
            && self.pipeline_id.is_none_or(|p| e.pipeline_id == Some(p))
    }
}

/// A pipeline not yet finished, for the reconciler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivePipeline {
    /// Project id.
    pub project_id: u64,
    /// Project path, when known.
    pub project: Option<String>,
    /// Pipeline id.
    pub pipeline_id: u64,
    /// Last status.
    pub status: Status,
    /// When anything was last heard of it (Unix seconds).
    pub last_heard: i64,
}

/// A job as the deliveries told it ([`Store::pipeline_jobs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownJob {
    /// Job id (this attempt).
    pub id: u64,
    /// Name, when a delivery gave it.
    pub name: Option<String>,
    /// Stage, when a delivery gave it.
    pub stage: Option<String>,
    /// Last accepted status.
    pub status: Status,
    /// Whether it may fail without failing the pipeline; `None` until a delivery said.
    pub allow_failure: Option<bool>,
    /// Whether it started (has a log); `None` until a delivery said.
    pub started: Option<bool>,
    /// Whether it has an artifact archive; `None` until a Pipeline Hook or a poll said.
    pub artifacts: Option<bool>,
}

/// The SQLite store.
#[derive(Debug)]
pub struct Store {
    /// Shared with the checkpoint thread, which grows the WAL while holding it (no commit then).
    conn: Arc<Mutex<Connection>>,
    /// The database is known to be locked by another program ([`Store::set_locked`]): a write
    /// waits `LOCKED_WAIT` for it instead of `BUSY_TIMEOUT`.
    locked: AtomicBool,
    /// Declared after `conn`; its thread drops its share of the writer before its own connection,
    /// so the checkpointer's connection, the last one, folds the WAL into the database.
    checkpointer: Option<crate::checkpoint::Checkpointer>,
    /// Retention inside the group commit (`retention/sweep.rs`); off until a pass turns it on.
    sweep: Mutex<crate::retention::Sweep>,
}

/// A pipeline's final statuses, as an SQL list (a macro, so that [`UNFINISHED`] is built from it
/// at compile time).
macro_rules! finished {
    () => {
        "('success','failed','canceled','skipped')"
    };
}

/// A pipeline's final statuses, as an SQL list.
pub(crate) const FINISHED: &str = finished!();

/// A pipeline not finished, or finished but owed a read of its retried attempts (as SQL over
/// `pipelines`; the partial index `pipelines_unfinished` is on exactly this).
const UNFINISHED: &str = concat!("status NOT IN ", finished!(), " OR reread = 1");

/// Job statuses a finished pipeline cannot have (its last delivery was lost), as an SQL list.
pub(crate) const UNSETTLED: &str =
    "'created','waiting_for_resource','preparing','waiting_for_callback','pending','running','canceling'";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    dedup_key TEXT NOT NULL UNIQUE,
    event TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    received_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    processed INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (processed) WHERE processed = 0;
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id INTEGER,
    kind TEXT NOT NULL,
    project_id INTEGER NOT NULL,
    project TEXT,
    git_ref TEXT,
    pipeline_id INTEGER,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pipelines (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL,
    project TEXT,
    status TEXT NOT NULL,
    max_job_id INTEGER NOT NULL DEFAULT 0,
    retry_floor INTEGER NOT NULL DEFAULT 0,
    last_heard INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    pipeline_id INTEGER,
    status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS probe (
    id INTEGER PRIMARY KEY,
    pad BLOB
);
CREATE TABLE IF NOT EXISTS cursors (
    project_id INTEGER PRIMARY KEY,
    unix_secs INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS relay_cursors (
    relay TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
";

/// Columns added after the first release, for databases created before them. `pipelines.basis`
/// is the JSON object (job name → id) of the jobs the evidence for the status mentioned
/// ([`crate::tracker::PipelineKnown::basis`]); `max_job_id` and `retry_floor` are no longer read.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("pipelines", "basis", "TEXT NOT NULL DEFAULT '{}'"),
    ("jobs", "name", "TEXT"),
    ("jobs", "stage", "TEXT"),
    // 1 after a retry, until the reconciler read the finished pipeline with its retried
    // attempts: an attempt nobody heard of (GitLab lists only the newest in hooks) is found so.
    ("pipelines", "reread", "INTEGER NOT NULL DEFAULT 0"),
    // When the event was logged (Unix milliseconds), for retention; rows logged before it was
    // kept are given the time of the migration (their age is unknown; they are kept longest).
    ("events", "logged_at", "INTEGER"),
    // What deliveries say of a job besides its status (NULL until one said): kept from every
    // delivery, also a duplicate, so a Pipeline Hook repeating a known status still tells
    // whether the job has artifacts. 0/1.
    ("jobs", "allow_failure", "INTEGER"),
    ("jobs", "started", "INTEGER"),
    ("jobs", "artifacts", "INTEGER"),
    // How `body` is kept (`store/body.rs`): NULL as received, 'deflate' a zlib stream.
    ("deliveries", "encoding", "TEXT"),
];

fn migrate(conn: &Connection) -> Result<(), rusqlite::Error> {
    for (table, column, decl) in ADDED_COLUMNS {
        let present: bool = conn.query_row(
            &format!("SELECT COUNT(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
            [column],
            |r| r.get(0),
        )?;
        if !present {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
            if (*table, *column) == ("events", "logged_at") {
                conn.execute("UPDATE events SET logged_at = ?1 WHERE logged_at IS NULL", [crate::retention::now_ms()])?;
            }
        }
    }
    conn.execute_batch("CREATE INDEX IF NOT EXISTS jobs_by_name ON jobs (pipeline_id, name)")?;
    // What `Store::active_pipelines` looks for, so that it reads the unfinished pipelines and
    // unsettled jobs, not every pipeline with its jobs (the reconciler's rounds and each
    // retention pass hold the writer's connection meanwhile). Their WHERE clauses are the
    // query's own, word for word: SQLite uses a partial index only for a query that implies it.
    conn.execute_batch(&format!(
        "CREATE INDEX IF NOT EXISTS pipelines_unfinished ON pipelines (id) WHERE {UNFINISHED};
         CREATE INDEX IF NOT EXISTS jobs_unsettled ON jobs (pipeline_id) WHERE status IN ({UNSETTLED});"
    ))?;
    crate::retention::init(conn)
}

/// How long a write waits for another program's lock on the database (a `sqlite3` shell, a
/// backup) before it fails with `SQLITE_BUSY`: well within GitLab's 10 s delivery timeout.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a write waits while the database is known to be locked: deliveries are answered 503
/// at once instead of each waiting out the busy timeout, and the store's one connection (which
/// the local API reads through too) is not held for seconds at a time.
pub(crate) const LOCKED_WAIT: Duration = Duration::from_millis(100);

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        let mut store = Self::init(conn, durability)?;
        store.checkpointer = crate::checkpoint::Checkpointer::start(path, &store.conn, durability == Durability::Full)?;
        Ok(store)
    }

    /// A throwaway in-memory store (tests).
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?, Durability::Normal)
    }

    fn init(conn: Connection, durability: Durability) -> Result<Self, StoreError> {
        crate::sqlite::use_wal(&conn, BUSY_TIMEOUT)?;
        conn.pragma_update(None, "synchronous", if durability == Durability::Full { "FULL" } else { "NORMAL" })?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        // Room for every statement the ingest path and the state machine run (16 by default).
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            locked: AtomicBool::new(false),
            checkpointer: None,
            sweep: Mutex::default(),
        })
    }

    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The in-commit sweep's state. Taken after the connection when both are, never before.
    pub(crate) fn sweep(&self) -> MutexGuard<'_, crate::retention::Sweep> {
        self.sweep.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores a delivery unless one with the same key is there; committed when this returns.
    pub fn insert_delivery(&self, d: &NewDelivery) -> Result<Stored, StoreError> {
        let conn = self.conn();
        let (body, encoding) = body::encode(&d.body);
        let inserted = conn.execute(
            "INSERT INTO deliveries (dedup_key, event, headers, body, encoding) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (dedup_key) DO NOTHING",
            params![d.dedup_key, d.event, d.headers, body, encoding],
        )?;
        let id: i64 = conn.query_row("SELECT id FROM deliveries WHERE dedup_key = ?1", [&d.dedup_key], |r| r.get(0))?;
        Ok(if inserted == 1 { Stored::New(id) } else { Stored::Duplicate(id) })
    }

    /// Stores a batch of deliveries that arrived together and turns them into events, in one
    /// transaction (one fsync with [`Durability::Full`]): group commit. Every delivery is committed
    /// when this returns; the caller answers them only then.
    ///
    /// Deliveries are taken in order, so a key repeated within the batch is a duplicate of its
    /// first copy, exactly as across batches. Processing happens in the same transaction unless
    /// an older delivery is still pending (it must be processed first, by the [`crate::Processor`])
    /// or processing fails (it is rolled back to a savepoint, the deliveries stay stored and
    /// pending): then `Ingested::deferred` is set and the processor has work.
    pub fn ingest(&self, batch: Vec<Incoming>) -> Result<Ingested, StoreError> {
        self.ingest_with(batch, None)
    }

    /// [`Store::ingest`], and once a retention pass turned it on, the same transaction also
    /// removes about as many expired deliveries and events as it adds (`retention/sweep.rs`),
    /// never one above `subscribers_at` (the oldest connected subscriber). A failure of that part
    /// is rolled back alone and logged: retention never costs a delivery.
    pub fn ingest_retaining(&self, batch: Vec<Incoming>, subscribers_at: Option<u64>) -> Result<Ingested, StoreError> {
        self.ingest_with(batch, Some(subscribers_at))
    }

    fn ingest_with(&self, batch: Vec<Incoming>, sweep: Option<Option<u64>>) -> Result<Ingested, StoreError> {
        let mut conn = self.conn();
        // Immediate: the write lock is taken (or waited for) at the start. A deferred transaction
        // reads first, and SQLite does not wait for a lock a reader wants to upgrade: another
        // program's brief write would fail the batch at once.
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let older_pending: bool =
            query_row(&tx, "SELECT EXISTS (SELECT 1 FROM deliveries WHERE processed = 0)", [], |r| r.get(0))?;
        let mut stored = Vec::with_capacity(batch.len());
        let mut fresh = Vec::with_capacity(batch.len());
        for Incoming { delivery: d, observations } in batch {
            let (body, encoding) = body::encode(&d.body);
            let id: Option<i64> = query_row(
                &tx,
                "INSERT INTO deliveries (dedup_key, event, headers, body, encoding) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (dedup_key) DO NOTHING RETURNING id",
                params![d.dedup_key, d.event, d.headers, body, encoding],
                |r| r.get(0),
            )
            .optional()?;
            match id {
                Some(id) => {
                    stored.push(Stored::New(id));
                    fresh.push((id, observations));
                }
                None => stored.push(Stored::Duplicate(query_row(
                    &tx,
                    "SELECT id FROM deliveries WHERE dedup_key = ?1",
                    [&d.dedup_key],
                    |r| r.get(0),
                )?)),
            }
        }
        let mut events = Vec::new();
        let mut deferred = false;
        if !fresh.is_empty() {
            if older_pending {
                deferred = true;
            } else {
                let sp = tx.savepoint()?;
                match crate::machine::process_all(&mut tables::Sql(&sp), fresh) {
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
        let mut swept = None;
        if let Some(subscribers_at) = sweep {
            let plan = self.sweep();
            if plan.is_on() {
                let added = stored.iter().filter(|s| matches!(s, Stored::New(_))).count();
                let sp = tx.savepoint()?;
                match plan.run(&sp, added, events.len(), subscribers_at, crate::retention::now_ms()) {
                    Ok(s) => {
                        sp.commit()?;
                        swept = Some(s);
                    }
                    Err(e) => tracing::warn!("retention in the group commit: {e}; left for the next pass"),
                }
            }
        }
        tx.commit()?;
        if let Some(s) = swept {
            self.sweep().advance(s);
        }
        Ok(Ingested { stored, events, deferred })
    }

    /// The row id of the delivery stored under `dedup_key`, and whether it has been processed.
    pub fn delivery(&self, dedup_key: &str) -> Result<Option<(i64, bool)>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT id, processed <> 0 FROM deliveries WHERE dedup_key = ?1", [dedup_key], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?)
    }

    /// Deliveries not yet turned into events, oldest first.
    pub fn pending_deliveries(&self, limit: usize) -> Result<Vec<StoredDelivery>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT id, event, body, encoding FROM deliveries WHERE processed = 0 ORDER BY id LIMIT ?1")?;
        let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            let id = r.get(0)?;
            // A body that cannot be read back is processed all the same (so it cannot hold up
            // the deliveries after it), with the reason kept in `deliveries.error`.
            let (body, unreadable) = match body::decode(r.get(2)?, r.get::<_, Option<String>>(3)?.as_deref()) {
                Ok(body) => (body, None),
                Err(e) => (Vec::new(), Some(format!("the stored body cannot be read back: {e}"))),
            };
            Ok(StoredDelivery { id, event: r.get(1)?, body, unreadable })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Applies a delivery's observations and marks it processed, in one transaction. Returns the
    /// events logged (with their `seq`).
    pub fn process_delivery(
        &self,
        delivery_id: i64,
        observations: Vec<Observation>,
        error: Option<&str>,
    ) -> Result<Vec<BuildEvent>, StoreError> {
        self.process_deliveries(vec![(delivery_id, error.map(Unreadable::from).map_or(Ok(observations), Err))])
    }

    /// Processes stored deliveries in the order given (oldest first), in one transaction: each
    /// delivery's observations (or why it could not be read) are applied and it is marked
    /// processed. Deliveries already processed (by another caller meanwhile) are skipped.
    pub fn process_deliveries(&self, batch: Vec<(i64, Parsed)>) -> Result<Vec<BuildEvent>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut pending = Vec::with_capacity(batch.len());
        for (id, parsed) in batch {
            let unprocessed = query_row(&tx, "SELECT processed = 0 FROM deliveries WHERE id = ?1", [id], |r| r.get(0))
                .optional()?
                .unwrap_or(false);
            if unprocessed {
                pending.push((id, parsed));
            }
        }
        let events = crate::machine::process_all(&mut tables::Sql(&tx), pending)?;
        tx.commit()?;
        Ok(events)
    }

    /// Applies observations that came from polling GitLab.
    pub fn apply_observations(&self, observations: Vec<Observation>) -> Result<Vec<BuildEvent>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let events = crate::machine::apply(&mut tables::Sql(&tx), None, observations)?;
        tx.commit()?;
        Ok(events)
    }

    /// Starts following a pipeline created by cloudci before any event about it arrived, so that
    /// the reconciler polls it if GitLab stays silent.
    pub fn track_pipeline(&self, project_id: u64, project: &str, pipeline_id: u64) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO pipelines (id, project_id, project, status, max_job_id, retry_floor, last_heard) VALUES (?1, ?2, ?3, 'created', 0, 0, strftime('%s','now')) ON CONFLICT (id) DO NOTHING",
            params![pipeline_id as i64, project_id as i64, project],
        )?;
        Ok(())
    }

    /// Logged events after `seq` (exclusive) up to `until` (inclusive), passing `filter`, at most
    /// `limit`. Returns them and the highest seq examined, so a caller skips what did not pass.
    pub fn events_after(
        &self,
        seq: u64,
        until: Option<u64>,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<(Vec<BuildEvent>, u64), StoreError> {
        let conn = self.conn();
        let until = until.map(|u| u as i64).unwrap_or(i64::MAX);
        let mut stmt =
            conn.prepare("SELECT seq, data FROM events WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3")?;
        let rows = stmt.query_map(params![seq as i64, until, i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut last = seq;
        let mut out = Vec::new();
        for row in rows {
            let (s, data) = row?;
            last = s as u64;
            if let Ok(mut e) = serde_json::from_str::<BuildEvent>(&data) {
                e.seq = s as u64;
                if filter.matches(&e) {
                    out.push(e);
                }
            }
        }
        Ok((out, last))
    }

    /// The newest seq ever logged (0 when none was), also when retention removed it: seqs come
    /// from `AUTOINCREMENT`, whose counter SQLite keeps in `sqlite_sequence`.
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        let seq: Option<i64> = self.conn().query_row(
            "SELECT MAX(m) FROM (SELECT MAX(seq) AS m FROM events UNION ALL SELECT seq FROM sqlite_sequence WHERE name = 'events')",
            [],
            |r| r.get(0),
        )?;
        Ok(seq.unwrap_or(0) as u64)
    }

    /// What the deliveries told of pipeline `pipeline`'s jobs: the newest attempt of each name,
    /// with what is known besides its status. The caller decides whether that is enough (a
    /// job's artifacts are known only once a Pipeline Hook or a poll mentioned it).
    pub fn pipeline_jobs(&self, pipeline: u64) -> Result<Vec<KnownJob>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, name, stage, status, allow_failure, started, artifacts FROM jobs j
             WHERE pipeline_id = ?1 AND NOT EXISTS
                 (SELECT 1 FROM jobs n WHERE n.pipeline_id = j.pipeline_id AND n.name = j.name AND n.id > j.id)
             ORDER BY id",
        )?;
        let rows = stmt.query_map([pipeline as i64], |r| {
            Ok(KnownJob {
                id: r.get::<_, i64>(0)? as u64,
                name: r.get(1)?,
                stage: r.get(2)?,
                status: Status::parse(&r.get::<_, String>(3)?),
                allow_failure: r.get(4)?,
                started: r.get(5)?,
                artifacts: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Pipelines not finished yet, and finished ones with a job still shown as queued or running
    /// (its last delivery was lost: the pipeline cannot have finished before it).
    pub fn active_pipelines(&self) -> Result<Vec<ActivePipeline>, StoreError> {
        let conn = self.conn();
        // A finished pipeline cannot have a job still created, queued or running (GitLab skips or
        // cancels what did not run), retried attempts included: such a job's last delivery was
        // lost. The reconciler reads retried attempts too (`include_retried`).
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT project_id, project, id, status, last_heard FROM pipelines WHERE {UNFINISHED}
             UNION
             SELECT project_id, project, id, status, last_heard FROM pipelines
             WHERE id IN (SELECT pipeline_id FROM jobs WHERE status IN ({UNSETTLED}))
             ORDER BY 3"
        ))?;
        let rows = stmt.query_map([], |r| {
            Ok(ActivePipeline {
                project_id: r.get::<_, i64>(0)? as u64,
                project: r.get(1)?,
                pipeline_id: r.get::<_, i64>(2)? as u64,
                status: Status::parse(&r.get::<_, String>(3)?),
                last_heard: r.get(4)?,
            })
        })?;
        Ok(rows.filter_map(Result::ok).collect())
    }

    /// The reconciler read `pipeline_id` finished, retried attempts included: no second read is
    /// owed for its retries (until the next one).
    pub fn mark_reread(&self, pipeline_id: u64) -> Result<(), StoreError> {
        self.conn().execute(
            &format!("UPDATE pipelines SET reread = 0 WHERE id = ?1 AND status IN {FINISHED}"),
            [pipeline_id as i64],
        )?;
        Ok(())
    }

    /// The last accepted status of each of `ids` that the log knows, for the catch-up to skip
    /// what it already has.
    pub fn pipeline_statuses(&self, ids: &[u64]) -> Result<HashMap<u64, Status>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT status FROM pipelines WHERE id = ?1")?;
        let mut out = HashMap::new();
        for id in ids {
            if let Some(status) = stmt.query_row([*id as i64], |r| r.get::<_, String>(0)).optional()? {
                out.insert(*id, Status::parse(&status));
            }
        }
        Ok(out)
    }

    /// The time (Unix seconds) up to which cloudci knows it heard everything of `project_id`,
    /// for catching up after an outage; `None` before the first catch-up.
    pub fn catch_up_cursor(&self, project_id: u64) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT unix_secs FROM cursors WHERE project_id = ?1", [project_id as i64], |r| r.get(0))
            .optional()?)
    }

    /// Records that everything of `project_id` up to `unix_secs` has been heard.
    pub fn set_catch_up_cursor(&self, project_id: u64, unix_secs: i64) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO cursors (project_id, unix_secs) VALUES (?1, ?2) ON CONFLICT (project_id) DO UPDATE SET unix_secs = ?2",
            params![project_id as i64, unix_secs],
        )?;
        Ok(())
    }

    /// Writes and commits `bytes` of padding, then removes them again: whether the store can take
    /// a delivery of about that size now (after a full disk, before saying it is over).
    ///
    /// It waits 100 ms at most for a lock: it is tried again a second later anyway, and
    /// meanwhile everyone else waits for the connection it holds.
    pub fn probe_write(&self, bytes: usize) -> Result<(), StoreError> {
        let mut conn = self.conn();
        conn.busy_timeout(LOCKED_WAIT)?;
        let result = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            exec(&tx, "INSERT OR REPLACE INTO probe (id, pad) VALUES (1, zeroblob(?1))", [bytes as i64])?;
            exec(&tx, "DELETE FROM probe", [])?;
            tx.commit()
        })();
        conn.busy_timeout(self.busy_wait())?;
        Ok(result?)
    }

    /// Says whether the database is known to be locked by another program (the group commit
    /// sets it when a batch failed with `SQLITE_BUSY`, and clears it when one went through):
    /// while it is, writes wait 100 ms for the lock instead of the busy timeout (5 s).
    pub fn set_locked(&self, locked: bool) -> Result<(), StoreError> {
        if self.locked.swap(locked, Ordering::Relaxed) != locked {
            self.conn().busy_timeout(self.busy_wait())?;
        }
        Ok(())
    }

    fn busy_wait(&self) -> Duration {
        if self.locked.load(Ordering::Relaxed) { LOCKED_WAIT } else { BUSY_TIMEOUT }
    }

    /// When the newest stored delivery was received (Unix seconds); `None` when there is none.
    pub fn last_delivery_at(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.conn().query_row(
            "SELECT CAST(strftime('%s', MAX(received_at)) AS INTEGER) FROM deliveries",
            [],
            |r| r.get(0),
        )?)
    }
}

/// Runs a statement through the connection's statement cache: the state machine runs the same
/// dozen statements for every delivery, and preparing them is a good part of its cost.
pub(crate) fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<usize, rusqlite::Error> {
    conn.prepare_cached(sql)?.execute(params)
}

/// [`exec`] for a statement that reads one row.
pub(crate) fn query_row<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> Result<T, rusqlite::Error>,
) -> Result<T, rusqlite::Error> {
    conn.prepare_cached(sql)?.query_row(params, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(key: &str) -> NewDelivery {
        NewDelivery { dedup_key: key.into(), event: "Job Hook".into(), headers: "{}".into(), body: b"{}".to_vec() }
    }

    #[test]
    fn catch_up_cursors_are_kept_per_project_and_move_both_ways() {
        let store = Store::in_memory().unwrap();
        assert_eq!(store.catch_up_cursor(7).unwrap(), None);
        store.set_catch_up_cursor(7, 1_700_000_000).unwrap();
        store.set_catch_up_cursor(8, 5).unwrap();
        assert_eq!(store.catch_up_cursor(7).unwrap(), Some(1_700_000_000));
        // The caller decides; a cursor set back (a clock fix) is stored as given.
        store.set_catch_up_cursor(7, 1_600_000_000).unwrap();
        assert_eq!(store.catch_up_cursor(7).unwrap(), Some(1_600_000_000));
        assert_eq!(store.catch_up_cursor(8).unwrap(), Some(5));
    }

    #[test]
    fn last_delivery_at_is_the_newest_received_at() {
        let store = Store::in_memory().unwrap();
        assert_eq!(store.last_delivery_at().unwrap(), None);
        store.insert_delivery(&delivery("a")).unwrap();
        store.insert_delivery(&delivery("b")).unwrap();
        store
            .conn()
            .execute("UPDATE deliveries SET received_at = '2023-11-14T22:13:20.500Z' WHERE dedup_key = 'a'", [])
            .unwrap();
        store
            .conn()
            .execute("UPDATE deliveries SET received_at = '2001-09-09T01:46:40.000Z' WHERE dedup_key = 'b'", [])
            .unwrap();
        assert_eq!(store.last_delivery_at().unwrap(), Some(1_700_000_000));
    }

    const SAMPLE: &[u8] = include_bytes!("../../gitlab/tests/fixtures/webhook-pipeline-event.json");

    #[test]
    fn bodies_are_kept_compressed_and_read_back_as_received() {
        let store = Store::in_memory().unwrap();
        let Stored::New(big) = store
            .insert_delivery(&NewDelivery { event: "Pipeline Hook".into(), body: SAMPLE.to_vec(), ..delivery("big") })
            .unwrap()
        else {
            panic!("not new")
        };
        let Stored::New(small) = store.insert_delivery(&delivery("small")).unwrap() else { panic!("not new") };
        let kept: Vec<(i64, i64, Option<String>)> = store
            .conn()
            .prepare("SELECT id, length(body), encoding FROM deliveries ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(kept[0].0, big);
        assert!(kept[0].1 < SAMPLE.len() as i64 / 3, "{} bytes kept", kept[0].1);
        assert_eq!(kept[0].2.as_deref(), Some(body::LZ4));
        assert_eq!(kept[1], (small, 2, None));
        let pending = store.pending_deliveries(10).unwrap();
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0].body, SAMPLE);
        assert_eq!(pending[1].body, b"{}");
        assert!(pending.iter().all(|d| d.unreadable.is_none()));
        // Read back, the body says what it said as received.
        assert!(pending[0].parse().is_ok_and(|o| !o.is_empty()));
    }

    #[test]
    fn a_body_that_cannot_be_read_back_is_processed_with_the_reason() {
        let store = Store::in_memory().unwrap();
        store
            .insert_delivery(&NewDelivery {
                event: "Pipeline Hook".into(),
                body: SAMPLE.to_vec(),
                ..delivery("damaged")
            })
            .unwrap();
        store
            .insert_delivery(&NewDelivery { event: "Pipeline Hook".into(), body: SAMPLE.to_vec(), ..delivery("fine") })
            .unwrap();
        store
            .conn()
            .execute("UPDATE deliveries SET body = substr(body, 1, 100) WHERE dedup_key = 'damaged'", [])
            .unwrap();
        let pending = store.pending_deliveries(10).unwrap();
        assert!(pending[0].body.is_empty());
        let reason = pending[0].parse().unwrap_err().to_string();
        assert!(reason.contains("cannot be read back"), "{reason}");
        assert!(pending[1].parse().is_ok());
        store.process_deliveries(pending.iter().map(|d| (d.id, d.parse())).collect()).unwrap();
        let error: Option<String> = store
            .conn()
            .query_row("SELECT error FROM deliveries WHERE dedup_key = 'damaged'", [], |r| r.get(0))
            .unwrap();
        assert!(error.is_some_and(|e| e.contains("cannot be read back")));
        assert!(store.pending_deliveries(10).unwrap().is_empty());
    }

    #[test]
    fn a_database_from_before_job_names_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE pipelines (id INTEGER PRIMARY KEY, project_id INTEGER NOT NULL, project TEXT, status TEXT NOT NULL, max_job_id INTEGER NOT NULL, retry_floor INTEGER NOT NULL, last_heard INTEGER NOT NULL);
                 CREATE TABLE jobs (id INTEGER PRIMARY KEY, pipeline_id INTEGER, status TEXT NOT NULL);
                 INSERT INTO pipelines VALUES (5, 1, 'a/b', 'running', 9, 0, 0);
                 INSERT INTO jobs VALUES (9, 5, 'running');
                 CREATE TABLE deliveries (id INTEGER PRIMARY KEY, dedup_key TEXT NOT NULL UNIQUE, event TEXT NOT NULL, headers TEXT NOT NULL, body BLOB NOT NULL, received_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), processed INTEGER NOT NULL DEFAULT 0, error TEXT);",
            )
            .unwrap();
            conn.execute(
                "INSERT INTO deliveries (dedup_key, event, headers, body) VALUES ('key:old', 'Pipeline Hook', '{}', ?1)",
                [SAMPLE],
            )
            .unwrap();
        }
        let store = Store::open(&path, Durability::Normal).unwrap();
        // A body stored before bodies were compressed reads back as it was.
        let pending = store.pending_deliveries(10).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].body, SAMPLE);
        let active = store.active_pipelines().unwrap();
        assert_eq!(active.len(), 1);
        store.track_pipeline(1, "a/b", 6).unwrap();
        store.set_catch_up_cursor(1, 3).unwrap();
        assert_eq!(store.active_pipelines().unwrap().len(), 2);
    }

    /// The reconciler's rounds and each retention pass list the unfinished pipelines while they
    /// hold the writer's connection: that costs what is unfinished, not every pipeline and job
    /// the store keeps. Counted in SQLite's virtual-machine steps, which the machine's load does
    /// not move.
    #[test]
    fn listing_the_unfinished_pipelines_does_not_read_the_finished_ones() {
        let store = Store::in_memory().unwrap();
        store
            .conn()
            .execute_batch(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
                 INSERT INTO pipelines (id, project_id, project, status, last_heard) SELECT i, 1, 'a/b', 'success', 0 FROM n;
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50000)
                 INSERT INTO jobs (id, pipeline_id, status) SELECT i, 1 + (i - 1) / 10, 'success' FROM n;
                 INSERT INTO pipelines (id, project_id, project, status, last_heard) VALUES (6001, 1, 'a/b', 'running', 0);
                 UPDATE pipelines SET reread = 1 WHERE id = 17;
                 UPDATE jobs SET status = 'running' WHERE id = 42;",
            )
            .unwrap();
        let steps = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = steps.clone();
        store
            .conn()
            .progress_handler(
                100,
                Some(move || {
                    counter.fetch_add(100, Ordering::Relaxed);
                    false
                }),
            )
            .unwrap();
        let ids: Vec<u64> = store.active_pipelines().unwrap().iter().map(|p| p.pipeline_id).collect();
        // Running; finished but owed a read; finished with a job still shown running (job 42 is
        // pipeline 5's).
        assert_eq!(ids, [5, 17, 6001]);
        // Reading 5,000 pipelines and their 50,000 jobs takes well over 50,000 steps.
        let steps = steps.load(Ordering::Relaxed);
        assert!(steps < 2_000, "{steps} virtual-machine steps to list 3 unfinished pipelines");
    }
}
