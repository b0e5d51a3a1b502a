//! Retention of the event store: raw deliveries and logged events are removed once old enough,
//! in small transactions, never what something still needs.
//!
//! # What is removed, what is kept
//! - **Raw deliveries** received more than [`StorePolicy::deliveries`] ago (14 days by default,
//!   longer than GitLab's own 7-day delivery log), once processed. A delivery still pending is
//!   kept: the processor has not turned it into events yet.
//! - **Events** logged more than [`StorePolicy::events`] ago (30 days by default), except the
//!   events of a pipeline that is not finished (the reconciler's notion: unfinished, finished
//!   with a job still shown running, or owed a read after a retry), of a pipeline an unfinished
//!   build follows ([`Keep::pipelines`]), and every event above the position of the oldest
//!   subscriber that is connected ([`Keep::subscribers_at`]): a connected laggard reads all it
//!   has not read yet. A subscriber that disconnected holds nothing; when it resumes from an id
//!   at or below [`Store::removed_through`] it is told so (the hub's `resync`) and given
//!   [`Store::snapshot`].
//! - **Pipeline and job state** of a finished pipeline last heard of before the events' horizon,
//!   once none of its events is left: the state only guards against late deliveries, and
//!   GitLab stops retrying a delivery long before.
//!
//! # Without stalling ingest
//! Each step runs in transactions of at most [`StorePolicy::batch`] rows, and between two the
//! store is left alone for as long as the last one took, so the ingest thread (which shares the
//! connection) waits for one small transaction at most. Cutoffs are found by binary search over
//! the primary keys (rows are logged in time order), never by a scan.
//!
//! A dry run selects exactly what a real run with the same inputs would remove and removes nothing.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::events::{BuildEvent, EventKind};
use crate::store::{EventFilter, FINISHED, Store, StoreError};

/// How long the event store keeps what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorePolicy {
    /// Raw deliveries, by the time they were received.
    pub deliveries: Duration,
    /// Events of finished pipelines (and pipeline-less events: pushes, merge requests), by the
    /// time they were logged.
    pub events: Duration,
    /// Rows per transaction of a pass.
    pub batch: usize,
    /// Whether each group commit also removes about as many expired rows as it adds, once a
    /// pass ran (`retention/sweep.rs`); the pass then finds little left. Off by default: in the
    /// year bench (RELIABILITY.md) it added more to every commit than the pass's own small
    /// transactions cost ingest.
    pub in_commit: bool,
}

impl Default for StorePolicy {
    fn default() -> Self {
        Self {
            deliveries: Duration::from_secs(14 * 86_400),
            events: Duration::from_secs(30 * 86_400),
            batch: 100,
            in_commit: false,
        }
    }
}

/// What must be kept whatever its age.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keep {
    /// Pipelines of unfinished builds: all their events are kept.
    pub pipelines: Vec<u64>,
    /// The position (last seq read) of the oldest connected subscriber: every event above it is
    /// kept. `None`: nobody is connected.
    pub subscribers_at: Option<u64>,
}

/// Rows removed (or that would be) and their size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Removed {
    /// Rows.
    pub count: u64,
    /// Bytes of their content (bodies, headers, event JSON); the database file reuses the space.
    pub bytes: u64,
}

impl Removed {
    fn add(&mut self, count: u64, bytes: u64) {
        self.count += count;
        self.bytes += bytes;
    }
}

/// What a pass over the event store removed, or would remove with `dry_run`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StoreReport {
    /// Raw deliveries.
    pub deliveries: Removed,
    /// Logged events.
    pub events: Removed,
    /// Pipelines whose state was dropped.
    pub pipelines: Removed,
    /// Their jobs' state.
    pub jobs: Removed,
    /// Events at or below this seq may be gone (after the pass); 0 when none ever was.
    pub removed_through: u64,
}

/// Creates the table retention keeps its mark in.
pub(crate) fn init(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS retention (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
}

/// Now, in Unix milliseconds (the clock events are logged with).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Events read at a time when a pass or a snapshot walks the retained log.
const WALK: usize = 5000;

/// The largest key of `table` whose time (`time`, an expression over its row) is before `cutoff`,
/// by binary search over the keys: rows are written in time order, so this costs a few lookups.
fn last_before(conn: &Connection, table: &str, key: &str, time: &str, cutoff: i64) -> Result<Option<i64>, StoreError> {
    // Two subqueries, not `SELECT MIN(k), MAX(k)`: SQLite answers a lone MIN or MAX from the
    // index's end, but both in one SELECT with a scan of the whole table (of the deliveries:
    // every raw body), which held the writer's connection for tens of milliseconds a pass at
    // 100k rows, growing with the log.
    let (lo, hi): (Option<i64>, Option<i64>) = conn.query_row(
        &format!("SELECT (SELECT MIN({key}) FROM {table}), (SELECT MAX({key}) FROM {table})"),
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (Some(mut lo), Some(mut hi)) = (lo, hi) else { return Ok(None) };
    let mut probe =
        conn.prepare(&format!("SELECT {key}, {time} FROM {table} WHERE {key} >= ?1 ORDER BY {key} LIMIT 1"))?;
    let mut best = None;
    while lo <= hi {
        let mid = lo + (hi - lo) / 2;
        match probe.query_row([mid], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?))).optional()? {
            Some((k, Some(t))) if t < cutoff => {
                best = Some(k);
                lo = k + 1;
            }
            _ => hi = mid - 1,
        }
    }
    Ok(best)
}

fn ids_json(ids: impl IntoIterator<Item = i64>) -> String {
    serde_json::to_string(&ids.into_iter().collect::<Vec<_>>()).unwrap_or_else(|_| "[]".into())
}

impl Store {
    /// Events at or below this seq may have been removed by retention (0: none ever was). Every
    /// event above it is in the log.
    pub fn removed_through(&self) -> Result<u64, StoreError> {
        let v: Option<i64> = self
            .conn()
            .query_row("SELECT value FROM retention WHERE key = 'removed_through'", [], |r| r.get(0))
            .optional()?;
        Ok(v.unwrap_or(0) as u64)
    }

    /// One retention pass at `now_ms` (Unix milliseconds): removes what `policy` allows and `keep`
    /// does not hold, or with `dry_run` only counts it. See `retention.rs` for what is never removed.
    pub fn gc(&self, policy: &StorePolicy, keep: &Keep, now_ms: i64, dry_run: bool) -> Result<StoreReport, StoreError> {
        let batch = policy.batch.max(1);
        let mut report = StoreReport::default();
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let pace = |started: Instant| {
            if !dry_run {
                // Leave the store to the ingest thread for as long as this batch held it.
                std::thread::sleep(started.elapsed().max(Duration::from_millis(1)));
            }
        };

        // Raw deliveries, by id up to the last one received before the cutoff.
        let cutoff = now_ms.saturating_sub(ms(policy.deliveries));
        let received = "CAST((julianday(received_at) - 2440587.5) * 86400000.0 AS INTEGER)";
        let last = last_before(&self.conn(), "deliveries", "id", received, cutoff)?;
        if let Some(last) = last {
            let mut after = 0i64;
            loop {
                let started = Instant::now();
                let mut conn = self.conn();
                let tx = conn.transaction()?;
                let rows: Vec<(i64, i64)> = tx
                    .prepare_cached(
                        "SELECT id, length(body) + length(headers) + length(dedup_key) FROM deliveries
                         WHERE id > ?1 AND id <= ?2 AND id NOT IN (SELECT id FROM deliveries WHERE processed = 0)
                         ORDER BY id LIMIT ?3",
                    )?
                    .query_map(params![after, last, batch as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                let Some(&(end, _)) = rows.last() else { break };
                report.deliveries.add(rows.len() as u64, rows.iter().map(|r| r.1 as u64).sum());
                if !dry_run {
                    tx.execute(
                        "DELETE FROM deliveries WHERE id IN (SELECT value FROM json_each(?1))",
                        [ids_json(rows.iter().map(|r| r.0))],
                    )?;
                    tx.commit()?;
                } else {
                    drop(tx);
                }
                drop(conn);
                after = end;
                pace(started);
            }
        }

        // Events up to the horizon, never above the oldest connected subscriber.
        let cutoff = now_ms.saturating_sub(ms(policy.events));
        let horizon = last_before(&self.conn(), "events", "seq", "logged_at", cutoff)?.unwrap_or(0);
        let bound = keep.subscribers_at.map_or(horizon, |s| horizon.min(s as i64));
        let mut held: HashSet<u64> = self.active_pipelines()?.into_iter().map(|p| p.pipeline_id).collect();
        held.extend(keep.pipelines.iter().copied());
        let held_json = ids_json(held.iter().map(|&p| p as i64));
        if !dry_run {
            self.sweep().plan(policy, held.clone());
        }
        let mut removed_through = self.removed_through()? as i64;
        let mut after = 0i64;
        while after < bound {
            let started = Instant::now();
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            let rows: Vec<(i64, i64)> = tx
                .prepare_cached(
                    "SELECT seq, length(data) FROM events WHERE seq > ?1 AND seq <= ?2
                     AND (pipeline_id IS NULL OR pipeline_id NOT IN (SELECT value FROM json_each(?3)))
                     ORDER BY seq LIMIT ?4",
                )?
                .query_map(params![after, bound, held_json, batch as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let Some(&(end, _)) = rows.last() else { break };
            report.events.add(rows.len() as u64, rows.iter().map(|r| r.1 as u64).sum());
            removed_through = removed_through.max(end);
            if !dry_run {
                tx.execute(
                    "DELETE FROM events WHERE seq IN (SELECT value FROM json_each(?1))",
                    [ids_json(rows.iter().map(|r| r.0))],
                )?;
                tx.execute(
                    "INSERT INTO retention (key, value) VALUES ('removed_through', ?1)
                     ON CONFLICT (key) DO UPDATE SET value = MAX(value, ?1)",
                    [end],
                )?;
                tx.commit()?;
            } else {
                drop(tx);
            }
            drop(conn);
            after = end;
            pace(started);
        }
        report.removed_through = removed_through.max(0) as u64;

        // Pipeline state: finished, silent since before the horizon, no event left above the bound.
        // The walk over the events above the bound goes on from where the last pass's ended.
        let mut walked = std::mem::take(&mut self.sweep().walked);
        let mut from = walked.resume(bound);
        loop {
            let conn = self.conn();
            let seqs: Vec<(i64, Option<i64>)> = conn
                .prepare_cached("SELECT seq, pipeline_id FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")?
                .query_map(params![from, WALK as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            drop(conn);
            let Some(&(end, _)) = seqs.last() else { break };
            walked.walk(&seqs);
            from = end;
        }
        let still_logged = walked.above(bound);
        self.sweep().walked = walked;
        let candidates: Vec<i64> = self
            .conn()
            .prepare(&format!(
                "SELECT id FROM pipelines WHERE status IN {FINISHED} AND reread = 0 AND last_heard < ?1 ORDER BY id"
            ))?
            .query_map([cutoff / 1000], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let gone: Vec<i64> =
            candidates.into_iter().filter(|p| !held.contains(&(*p as u64)) && !still_logged.contains(p)).collect();
        for chunk in gone.chunks(batch) {
            let started = Instant::now();
            let ids = ids_json(chunk.iter().copied());
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            let jobs: i64 = tx.query_row(
                "SELECT COUNT(*) FROM jobs WHERE pipeline_id IN (SELECT value FROM json_each(?1))",
                [&ids],
                |r| r.get(0),
            )?;
            // No content worth counting: a small row per pipeline and job.
            report.pipelines.add(chunk.len() as u64, 0);
            report.jobs.add(jobs as u64, 0);
            if !dry_run {
                tx.execute("DELETE FROM jobs WHERE pipeline_id IN (SELECT value FROM json_each(?1))", [&ids])?;
                tx.execute("DELETE FROM pipelines WHERE id IN (SELECT value FROM json_each(?1))", [&ids])?;
                tx.commit()?;
            } else {
                drop(tx);
            }
            drop(conn);
            pace(started);
        }
        Ok(report)
    }

    /// The current state as the log still knows it: the latest event of each pipeline, job and
    /// merge request passing `filter`, with seq at most `upto`, in seq order. What a subscriber
    /// resuming from before [`Store::removed_through`] gets instead of the events it missed.
    pub fn snapshot(&self, filter: &EventFilter, upto: u64) -> Result<Vec<BuildEvent>, StoreError> {
        #[derive(Hash, PartialEq, Eq)]
        enum Key {
            Pipeline(u64),
            Job(u64),
            MergeRequest(u64, u64),
        }
        let mut latest: HashMap<Key, BuildEvent> = HashMap::new();
        let mut after = 0;
        while after < upto {
            let (events, examined) = self.events_after(after, Some(upto), filter, WALK)?;
            for e in events {
                let key = match (e.kind, e.pipeline_id, e.job_id, e.merge_request_iid) {
                    (EventKind::Pipeline, Some(p), _, _) => Key::Pipeline(p),
                    (EventKind::Job, _, Some(j), _) => Key::Job(j),
                    (EventKind::MergeRequest, _, _, Some(iid)) => Key::MergeRequest(e.project_id, iid),
                    _ => continue,
                };
                latest.insert(key, e);
            }
            if examined <= after {
                break;
            }
            after = examined;
        }
        let mut out: Vec<BuildEvent> = latest.into_values().collect();
        out.sort_by_key(|e| e.seq);
        Ok(out)
    }
}

mod sweep;
pub(crate) use sweep::Sweep;

#[cfg(test)]
mod year;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::last_before;

    /// The cutoff search costs a few lookups, not a pass over the table: the retention pass
    /// holds the writer's connection meanwhile. Counted in SQLite's virtual-machine steps, which
    /// do not depend on the machine's speed or load.
    #[test]
    fn the_cutoff_search_does_not_scan_the_table() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, at INTEGER NOT NULL, pad BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
             INSERT INTO t (id, at, pad) SELECT i, i * 10, zeroblob(100) FROM n;",
        )
        .unwrap();
        let steps = Arc::new(AtomicU64::new(0));
        let counter = steps.clone();
        // Called every 100 steps.
        conn.progress_handler(
            100,
            Some(move || {
                counter.fetch_add(100, Ordering::Relaxed);
                false
            }),
        )
        .unwrap();
        assert_eq!(last_before(&conn, "t", "id", "at", 123_456).unwrap(), Some(12_345));
        assert_eq!(last_before(&conn, "t", "id", "at", 5).unwrap(), None);
        assert_eq!(last_before(&conn, "t", "id", "at", i64::MAX).unwrap(), Some(20_000));
        // A scan of 20,000 rows alone takes more than 20,000 steps; three binary searches of
        // ~15 probes each take a few hundred.
        let steps = steps.load(Ordering::Relaxed);
        assert!(steps < 5_000, "{steps} virtual-machine steps for three cutoff searches");
    }
}
