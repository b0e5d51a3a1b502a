//! Retention of the relay's log: the daemon's policy ([`StorePolicy`]: raw deliveries 14 days,
//! events 30 days by default, rows per transaction) over PostgreSQL, run by the leader.
//!
//! # What is removed, what is kept
//! - **Raw deliveries** received more than `deliveries` ago, once processed. Never younger than
//!   [`MIN_AGE`] (GitLab's 7-day delivery log): the leader resends failures from that log, and a
//!   resend is de-duplicated by its stored `Idempotency-Key`, which must still be there.
//! - **Events** logged more than `events` ago (never younger than [`MIN_AGE`]), except those of a
//!   pipeline the catch-up still follows (unfinished, a job shown running, or owed a read: the
//!   reconciler's `active_pipelines`) and every event above the position of the oldest
//!   subscriber connected to any instance. Each instance publishes its hub's oldest position
//!   ([`PgLog::hold`]) every few seconds; a hold not refreshed for [`HOLD_FRESH`] (its
//!   instance died, and its subscribers reconnected elsewhere, where they hold again) is ignored.
//!   A subscriber that resumes from at or below `removed_through` gets a resync and the snapshot, as from
//!   the daemon.
//! - **Pipeline and job state** of a finished pipeline last heard of before the events' horizon,
//!   once none of its events is left.
//!
//! # Without stalling ingest
//! Every step deletes at most `batch` rows per statement or transaction, on the writer's
//! connection taken per batch, so a group commit waits for one small transaction at most; the
//! cutoffs are found by binary search over the primary keys (rows are written in time order),
//! never by a scan. Removal moves `removed_through` in the same transaction as the events go.
//!
//! The race this leaves: a subscriber that connects, resuming from an id older than the events'
//! horizon, in the seconds between its instance's hold refreshes while a pass runs, may miss
//! what that pass removes without a resync. Only a resume from more than `events` ago can.

use std::time::Duration;

use cloudci_webhook::{BuildEvent, EventFilter, ReconcileLog, StoreError, StorePolicy, StoreReport};
use postgres::types::ToSql;

use crate::pg::{Conn, PgLog};

/// The shortest age anything is removed at: GitLab's delivery log shows the past 7 days.
pub const MIN_AGE: Duration = Duration::from_secs(7 * 86_400);

/// A subscriber hold older than this is its dead instance's, and ignored.
pub const HOLD_FRESH: Duration = Duration::from_secs(60);

const FINISHED: &str = "('success','failed','canceled','skipped')";

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The largest key of `table` whose time (`time`, Unix ms, an expression over its row) is before
/// `cutoff`, by binary search over the keys (rows are written in time order).
fn last_before(c: &mut Conn, table: &str, key: &str, time: &str, cutoff: i64) -> Result<Option<i64>, postgres::Error> {
    let bounds = c.client.query_one(&format!("SELECT MIN({key})::BIGINT, MAX({key})::BIGINT FROM {table}"), &[])?;
    let (Some(mut lo), Some(mut hi)) = (bounds.get::<_, Option<i64>>(0), bounds.get::<_, Option<i64>>(1)) else {
        return Ok(None);
    };
    let probe = c.client.prepare(&format!(
        "SELECT {key}::BIGINT, ({time})::BIGINT FROM {table} WHERE {key} >= $1 ORDER BY {key} LIMIT 1"
    ))?;
    let mut best = None;
    while lo <= hi {
        let mid = lo + (hi - lo) / 2;
        match c.client.query_opt(&probe, &[&mid])? {
            Some(r) if r.get::<_, i64>(1) < cutoff => {
                let k: i64 = r.get(0);
                best = Some(k);
                lo = k + 1;
            }
            _ => hi = mid - 1,
        }
    }
    Ok(best)
}

impl PgLog {
    /// Records where this instance's oldest connected subscriber stands (`None`: nobody is
    /// connected here), under `instance` (any name unique to the process).
    pub fn hold(&self, instance: &str, oldest_subscriber: Option<u64>) -> Result<(), StoreError> {
        let at = oldest_subscriber.map(|s| s as i64);
        self.write(|c| {
            c.client.execute(
                "INSERT INTO subscriber_holds (instance, at_seq, updated_at) VALUES ($1, $2, now())
                 ON CONFLICT (instance) DO UPDATE SET at_seq = $2, updated_at = now()",
                &[&instance, &at],
            )?;
            // Holds of instances long gone, whatever their names.
            c.client.execute("DELETE FROM subscriber_holds WHERE updated_at < now() - interval '1 day'", &[])?;
            Ok(())
        })
    }

    /// The position of the oldest subscriber connected to any live instance (`None`: nobody).
    pub fn oldest_held(&self) -> Result<Option<u64>, StoreError> {
        let fresh = HOLD_FRESH.as_secs_f64();
        self.read(|c| {
            let r = c.client.query_one(
                "SELECT MIN(at_seq) FROM subscriber_holds WHERE updated_at > now() - make_interval(secs => $1)",
                &[&fresh],
            )?;
            Ok(r.get::<_, Option<i64>>(0).map(|s| s as u64))
        })
    }

    /// One retention pass at `now_ms` (Unix ms): removes what `policy` allows (its ages raised to
    /// [`MIN_AGE`]; `in_commit` does not apply here) and nothing still needed (see `retention.rs`),
    /// or with `dry_run` only counts it (deliveries and events exactly; pipeline state only of
    /// pipelines whose events are already gone).
    pub fn gc(&self, policy: &StorePolicy, now_ms: i64, dry_run: bool) -> Result<StoreReport, StoreError> {
        let batch = policy.batch.max(1) as i64;
        let mut report = StoreReport::default();

        // Raw deliveries, processed, received before the cutoff.
        let cutoff = now_ms.saturating_sub(ms(policy.deliveries.max(MIN_AGE)));
        let received = "EXTRACT(EPOCH FROM received_at) * 1000";
        let last = self.write(|c| last_before(c, "deliveries", "id", received, cutoff))?;
        let mut after = 0i64;
        while let Some(last) = last {
            let sql = if dry_run {
                "SELECT MAX(id), COUNT(*), COALESCE(SUM(n), 0)::BIGINT FROM (
                     SELECT id, length(body) + length(headers) + length(dedup_key) AS n FROM deliveries
                     WHERE id > $1 AND id <= $2 AND processed AND received_at < to_timestamp($4::FLOAT8 / 1000)
                     ORDER BY id LIMIT $3) d"
            } else {
                "WITH gone AS (DELETE FROM deliveries WHERE id IN (
                     SELECT id FROM deliveries
                     WHERE id > $1 AND id <= $2 AND processed AND received_at < to_timestamp($4::FLOAT8 / 1000)
                     ORDER BY id LIMIT $3)
                 RETURNING id, length(body) + length(headers) + length(dedup_key) AS n)
                 SELECT MAX(id), COUNT(*), COALESCE(SUM(n), 0)::BIGINT FROM gone"
            };
            let params: [&(dyn ToSql + Sync); 4] = [&after, &last, &batch, &(cutoff as f64)];
            let r = self.write(|c| c.client.query_one(sql, &params))?;
            let Some(end) = r.get::<_, Option<i64>>(0) else { break };
            report.deliveries.count += r.get::<_, i64>(1) as u64;
            report.deliveries.bytes += r.get::<_, i64>(2) as u64;
            after = end;
        }

        // Events up to the horizon, never above the oldest connected subscriber, never of a
        // pipeline the catch-up follows.
        let cutoff = now_ms.saturating_sub(ms(policy.events.max(MIN_AGE)));
        let horizon = self.write(|c| last_before(c, "events", "seq", "logged_at", cutoff))?.unwrap_or(0);
        let bound = match self.oldest_held()? {
            Some(s) => horizon.min(s as i64),
            None => horizon,
        };
        let held: Vec<i64> = self.active_pipelines()?.iter().map(|p| p.pipeline_id as i64).collect();
        let mut removed_through = self.removed_mark()? as i64;
        let mut after = 0i64;
        while after < bound {
            let select = "SELECT seq, length(data) AS n FROM events WHERE seq > $1 AND seq <= $2
                          AND (pipeline_id IS NULL OR pipeline_id <> ALL($3)) ORDER BY seq LIMIT $4";
            let params: [&(dyn ToSql + Sync); 4] = [&after, &bound, &held, &batch];
            let r = self.write(|c| {
                let mut tx = c.client.transaction()?;
                let r = if dry_run {
                    tx.query_one(
                        &format!("SELECT MAX(seq), COUNT(*), COALESCE(SUM(n), 0)::BIGINT FROM ({select}) e"),
                        &params,
                    )?
                } else {
                    let r = tx.query_one(
                        &format!(
                            "WITH doomed AS ({select}), gone AS (DELETE FROM events WHERE seq IN (SELECT seq FROM doomed) RETURNING seq)
                             SELECT (SELECT MAX(seq) FROM gone), (SELECT COUNT(*) FROM gone), COALESCE((SELECT SUM(n) FROM doomed), 0)::BIGINT"
                        ),
                        &params,
                    )?;
                    if let Some(end) = r.get::<_, Option<i64>>(0) {
                        tx.execute(
                            "INSERT INTO retention (key, value) VALUES ('removed_through', $1)
                             ON CONFLICT (key) DO UPDATE SET value = GREATEST(retention.value, $1)",
                            &[&end],
                        )?;
                    }
                    r
                };
                tx.commit()?;
                Ok(r)
            })?;
            let Some(end) = r.get::<_, Option<i64>>(0) else { break };
            report.events.count += r.get::<_, i64>(1) as u64;
            report.events.bytes += r.get::<_, i64>(2) as u64;
            removed_through = removed_through.max(end);
            after = end;
        }
        report.removed_through = removed_through.max(0) as u64;

        // Pipeline state: finished, silent since before the horizon, no event of it left.
        let gone: Vec<i64> = self.read(|c| {
            let rows = c.client.query(
                &format!(
                    "SELECT id FROM pipelines p WHERE status IN {FINISHED} AND NOT reread AND last_heard < $1
                     AND id <> ALL($2) AND NOT EXISTS (SELECT 1 FROM events e WHERE e.pipeline_id = p.id) ORDER BY id"
                ),
                &[&(cutoff / 1000), &held],
            )?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })?;
        for chunk in gone.chunks(batch as usize) {
            let ids = chunk.to_vec();
            let jobs = self.write(|c| {
                let mut tx = c.client.transaction()?;
                let jobs: i64 = tx.query_one("SELECT COUNT(*) FROM jobs WHERE pipeline_id = ANY($1)", &[&ids])?.get(0);
                if !dry_run {
                    tx.execute("DELETE FROM jobs WHERE pipeline_id = ANY($1)", &[&ids])?;
                    tx.execute("DELETE FROM pipelines WHERE id = ANY($1)", &[&ids])?;
                }
                tx.commit()?;
                Ok(jobs)
            })?;
            report.pipelines.count += chunk.len() as u64;
            report.jobs.count += jobs as u64;
        }
        Ok(report)
    }

    /// The latest event of each pipeline, job and merge request passing `filter`, up to `upto`,
    /// in seq order (one query: PostgreSQL's `DISTINCT ON`).
    pub(crate) fn snapshot_of(&self, filter: &EventFilter, upto: u64) -> Result<Vec<BuildEvent>, StoreError> {
        let rows = self.read(|c| {
            c.client.query(
                "SELECT seq, data FROM (
                     SELECT DISTINCT ON (kind, object) seq, data FROM (
                         SELECT seq, data, kind, CASE kind
                             WHEN 'pipeline' THEN pipeline_id::TEXT
                             WHEN 'job' THEN data::JSONB ->> 'job_id'
                             ELSE project_id::TEXT || '!' || (data::JSONB ->> 'merge_request_iid') END AS object
                         FROM events WHERE seq <= $1 AND kind IN ('pipeline', 'job', 'merge_request')) k
                     WHERE object IS NOT NULL ORDER BY kind, object, seq DESC) latest
                 ORDER BY seq",
                &[&(upto as i64)],
            )
        })?;
        Ok(rows.iter().filter_map(|r| crate::pg::row_event(r.get(0), r.get(1))).filter(|e| filter.matches(e)).collect())
    }

    /// The highest seq retention removed (0: none).
    pub(crate) fn removed_mark(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            let r = c.client.query_opt("SELECT value FROM retention WHERE key = 'removed_through'", &[])?;
            Ok(r.map_or(0, |r| r.get::<_, i64>(0) as u64))
        })
    }
}
