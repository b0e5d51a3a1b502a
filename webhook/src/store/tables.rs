//! The state machine's statements in SQLite ([`LogTables`] over a connection in a transaction).

use cloudci_gitlab::types::Status;
use rusqlite::{Connection, OptionalExtension, params};

use super::{exec, query_row};
use crate::events::BuildEvent;
use crate::machine::{JobFacts, JobRow, LogTables, PipelineRow};

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
        let stored: Option<i64> = query_row(
            self.0,
            "SELECT MAX(j.id) FROM jobs j WHERE j.pipeline_id = ?1 AND j.name IS NOT NULL
             AND EXISTS (SELECT 1 FROM jobs o WHERE o.pipeline_id = ?1 AND o.name = j.name AND o.id < j.id)",
            [pipeline as i64],
            |r| r.get(0),
        )?;
        Ok(stored.unwrap_or(0) as u64)
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
