//! The state machine's statements in SQLite ([`LogTables`] over a connection in a transaction).

use std::collections::HashMap;

use cloudci_gitlab::types::Status;
use rusqlite::{Connection, OptionalExtension, params};

use super::{exec, query_row};
use crate::events::BuildEvent;
use crate::machine::{JobFacts, JobRow, LogTables, PipelineRow};

/// A pipeline's named jobs, for [`LogTables::newest_stored_retry`].
const PIPELINE_JOB_NAMES: &str = "SELECT name, id FROM jobs WHERE pipeline_id = ?1 AND name IS NOT NULL";

/// A connection inside the transaction that processes a batch.
pub(super) struct Sql<'a>(pub(super) &'a Connection);

impl LogTables for Sql<'_> {
    type Error = rusqlite::Error;

    fn job_status(&mut self, id: u64) -> Result<Option<Status>, Self::Error> {
        query_row(self.0, "SELECT status FROM jobs WHERE id = ?1", [id as i64], |r| {
            Ok(Status::parse(&r.get::<_, String>(0)?))
        })
        .optional()
    }

    fn other_attempts(&mut self, pipeline: u64, name: &str, id: u64) -> Result<Option<(u64, u64)>, Self::Error> {
        Ok(query_row(
            self.0,
            "SELECT MIN(id), MAX(id) FROM jobs WHERE pipeline_id = ?1 AND name = ?2 AND id <> ?3",
            params![pipeline as i64, name, id as i64],
            |r| Ok(r.get::<_, Option<i64>>(0)?.zip(r.get::<_, Option<i64>>(1)?)),
        )?
        .map(|(min, max)| (min as u64, max as u64)))
    }

    fn pipeline(&mut self, id: u64) -> Result<Option<(Status, String)>, Self::Error> {
        query_row(self.0, "SELECT status, basis FROM pipelines WHERE id = ?1", [id as i64], |r| {
            Ok((Status::parse(&r.get::<_, String>(0)?), r.get::<_, String>(1)?))
        })
        .optional()
    }

    fn newest_stored_retry(&mut self, pipeline: u64) -> Result<u64, Self::Error> {
        // The answer is computed here, not by `MAX` in SQL: SQLite expires a statement whose
        // `MAX`, `GROUP BY` or `ORDER BY` it plans over `jobs_by_name` after an equality on a
        // bound parameter each time that binding changes, so it was compiled again on every
        // delivery (17.6% of the writer's time; BENCHMARKS.md, issue 10's fifth round). A plain
        // scan of the pipeline's jobs keeps its plan.
        let mut stmt = self.0.prepare_cached(PIPELINE_JOB_NAMES)?;
        let mut rows = stmt.query([pipeline as i64])?;
        // Per name: its lowest and highest id. A name with two ids has a retry attempt, and its
        // highest id is the newest one.
        let mut names: HashMap<String, (i64, i64)> = HashMap::new();
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(1)?;
            let range = names.entry(row.get(0)?).or_insert((id, id));
            *range = (range.0.min(id), range.1.max(id));
        }
        Ok(names.values().filter(|(low, high)| low < high).map(|&(_, high)| high as u64).max().unwrap_or(0))
    }

    fn heard_of(&mut self, pipeline: u64) -> Result<(), Self::Error> {
        exec(self.0, "UPDATE pipelines SET last_heard = strftime('%s','now') WHERE id = ?1", [pipeline as i64])?;
        Ok(())
    }

    fn set_basis(&mut self, pipeline: u64, basis: &str) -> Result<(), Self::Error> {
        exec(self.0, "UPDATE pipelines SET basis = ?2 WHERE id = ?1", params![pipeline as i64, basis])?;
        Ok(())
    }

    fn put_pipeline(&mut self, p: &PipelineRow<'_>) -> Result<(), Self::Error> {
        exec(
            self.0,
            "INSERT INTO pipelines (id, project_id, project, status, max_job_id, retry_floor, basis, last_heard) VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, strftime('%s','now'))
             ON CONFLICT (id) DO UPDATE SET status = ?4, max_job_id = MAX(max_job_id, ?5),
                 basis = CASE WHEN ?7 THEN basis ELSE ?6 END, last_heard = strftime('%s','now'), project = COALESCE(?3, project)",
            params![p.id as i64, p.project_id as i64, p.project, p.status, p.max_job_id as i64, p.basis, p.keep_basis],
        )?;
        Ok(())
    }

    fn mark_reread(&mut self, pipeline: u64) -> Result<(), Self::Error> {
        exec(self.0, "UPDATE pipelines SET reread = 1 WHERE id = ?1", [pipeline as i64])?;
        Ok(())
    }

    fn note_job(
        &mut self,
        id: u64,
        name: Option<&str>,
        stage: Option<&str>,
        facts: JobFacts,
    ) -> Result<(), Self::Error> {
        exec(
            self.0,
            "UPDATE jobs SET name = COALESCE(name, ?2), stage = COALESCE(stage, ?3) WHERE id = ?1",
            params![id as i64, name, stage],
        )?;
        exec(
            self.0,
            "UPDATE jobs SET allow_failure = COALESCE(?2, allow_failure),
                 started = CASE WHEN ?3 IS NULL THEN started ELSE MAX(COALESCE(started, 0), ?3) END,
                 artifacts = CASE WHEN ?4 IS NULL THEN artifacts ELSE MAX(COALESCE(artifacts, 0), ?4) END
             WHERE id = ?1",
            params![id as i64, facts.allow_failure, facts.started, facts.artifacts],
        )?;
        Ok(())
    }

    fn put_job(&mut self, j: &JobRow<'_>) -> Result<(), Self::Error> {
        let f = j.facts;
        exec(
            self.0,
            "INSERT INTO jobs (id, pipeline_id, status, name, stage, allow_failure, started, artifacts) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (id) DO UPDATE SET status = ?3, pipeline_id = COALESCE(?2, pipeline_id), name = COALESCE(?4, name), stage = COALESCE(?5, stage)",
            params![
                j.id as i64,
                j.pipeline_id.map(|p| p as i64),
                j.status,
                j.name,
                j.stage,
                f.allow_failure,
                f.started,
                f.artifacts
            ],
        )?;
        Ok(())
    }

    fn reread_if_retried(&mut self, pipeline: u64, name: &str, id: u64) -> Result<(), Self::Error> {
        exec(
            self.0,
            "UPDATE pipelines SET reread = 1 WHERE id = ?1
             AND EXISTS (SELECT 1 FROM jobs WHERE pipeline_id = ?1 AND name = ?2 AND id < ?3)",
            params![pipeline as i64, name, id as i64],
        )?;
        Ok(())
    }

    fn log_event(&mut self, delivery: Option<i64>, event: &BuildEvent, data: &str) -> Result<u64, Self::Error> {
        exec(
            self.0,
            "INSERT INTO events (delivery_id, kind, project_id, project, git_ref, pipeline_id, data, logged_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                delivery,
                event.kind.as_str(),
                event.project_id as i64,
                event.project,
                event.git_ref,
                event.pipeline_id.map(|p| p as i64),
                data,
                crate::retention::now_ms()
            ],
        )?;
        Ok(self.0.last_insert_rowid() as u64)
    }

    fn mark_processed(&mut self, id: i64, error: Option<&str>) -> Result<(), Self::Error> {
        exec(self.0, "UPDATE deliveries SET processed = 1, error = ?2 WHERE id = ?1", params![id, error])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;

    use super::*;
    use crate::store::Store;

    #[test]
    fn the_newest_stored_retry_is_found_without_compiling_its_statement_again() {
        let store = Store::in_memory().unwrap();
        let conn = store.conn();
        // An even pipeline has build (2 attempts), test (1) and lint (3 attempts, the newest).
        for p in 1..=20i64 {
            let jobs: [(i64, &str); 6] =
                [(1, "build"), (2, "test"), (3, "lint"), (4, "build"), (5, "lint"), (6, "lint")];
            for (j, name) in jobs {
                // Odd pipelines give every job a name of its own: no retries.
                let name = if p % 2 == 0 { name.to_owned() } else { format!("{name}{j}") };
                conn.execute(
                    "INSERT INTO jobs (id, pipeline_id, status, name) VALUES (?1, ?2, 'success', ?3)",
                    params![p * 100 + j, p, name],
                )
                .unwrap();
            }
        }
        let mut sql = Sql(&conn);
        for round in 0..5 {
            for p in 1..=20u64 {
                let expected = if p % 2 == 0 { p * 100 + 6 } else { 0 };
                assert_eq!(sql.newest_stored_retry(p).unwrap(), expected, "pipeline {p}, round {round}");
            }
        }
        assert_eq!(sql.newest_stored_retry(999).unwrap(), 0, "an unknown pipeline");
        // Its plan does not depend on the pipeline bound: SQLite kept the compiled statement.
        let stmt = conn.prepare_cached(PIPELINE_JOB_NAMES).unwrap();
        assert_eq!(stmt.get_status(StatementStatus::RePrepare), 0);
    }
}
