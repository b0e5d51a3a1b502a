//! The state machine's statements in PostgreSQL ([`LogTables`] inside a [`PgLog`](crate::PgLog)
//! transaction): the same statements as SQLite's (`webhook/src/store/tables.rs`), in
//! PostgreSQL's dialect.

use std::collections::HashMap;

use cloudci_gitlab::types::Status;
use cloudci_webhook::{BuildEvent, JobFacts, JobRow, LogTables, PipelineRow, now_ms};
use postgres::types::ToSql;
use postgres::{Row, Statement, Transaction};

use crate::pg::prepared;

/// A transaction that holds the log's head, and the seq it hands out next.
pub(crate) struct Tables<'a, 'b> {
    pub(crate) tx: &'a mut Transaction<'b>,
    pub(crate) stmts: &'a mut HashMap<&'static str, Statement>,
    pub(crate) next_seq: u64,
}

impl<'a, 'b> Tables<'a, 'b> {
    pub(crate) fn new(
        tx: &'a mut Transaction<'b>,
        stmts: &'a mut HashMap<&'static str, Statement>,
        next_seq: u64,
    ) -> Self {
        Self { tx, stmts, next_seq }
    }

    fn exec(&mut self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<(), postgres::Error> {
        let s = prepared(self.stmts, self.tx, sql)?;
        self.tx.execute(&s, params)?;
        Ok(())
    }

    fn row(&mut self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, postgres::Error> {
        let s = prepared(self.stmts, self.tx, sql)?;
        self.tx.query_opt(&s, params)
    }
}

fn id(v: u64) -> i64 {
    v as i64
}

impl LogTables for Tables<'_, '_> {
    type Error = postgres::Error;

    fn job_status(&mut self, job: u64) -> Result<Option<Status>, Self::Error> {
        Ok(self.row("SELECT status FROM jobs WHERE id = $1", &[&id(job)])?.map(|r| Status::parse(r.get(0))))
    }

    fn other_attempts(&mut self, pipeline: u64, name: &str, job: u64) -> Result<Option<(u64, u64)>, Self::Error> {
        let r = self.row(
            "SELECT MIN(id), MAX(id) FROM jobs WHERE pipeline_id = $1 AND name = $2 AND id <> $3",
            &[&id(pipeline), &name, &id(job)],
        )?;
        Ok(r.and_then(|r| r.get::<_, Option<i64>>(0).zip(r.get::<_, Option<i64>>(1)))
            .map(|(min, max)| (min as u64, max as u64)))
    }

    fn pipeline(&mut self, pipeline: u64) -> Result<Option<(Status, String)>, Self::Error> {
        Ok(self
            .row("SELECT status, basis FROM pipelines WHERE id = $1", &[&id(pipeline)])?
            .map(|r| (Status::parse(r.get(0)), r.get(1))))
    }

    fn newest_stored_retry(&mut self, pipeline: u64) -> Result<u64, Self::Error> {
        let r = self.row(
            "SELECT MAX(j.id) FROM jobs j WHERE j.pipeline_id = $1 AND j.name IS NOT NULL
             AND EXISTS (SELECT 1 FROM jobs o WHERE o.pipeline_id = $1 AND o.name = j.name AND o.id < j.id)",
            &[&id(pipeline)],
        )?;
        Ok(r.and_then(|r| r.get::<_, Option<i64>>(0)).unwrap_or(0) as u64)
    }

    fn heard_of(&mut self, pipeline: u64) -> Result<(), Self::Error> {
        self.exec("UPDATE pipelines SET last_heard = EXTRACT(EPOCH FROM now())::BIGINT WHERE id = $1", &[&id(pipeline)])
    }

    fn set_basis(&mut self, pipeline: u64, basis: &str) -> Result<(), Self::Error> {
        self.exec("UPDATE pipelines SET basis = $2 WHERE id = $1", &[&id(pipeline), &basis])
    }

    fn put_pipeline(&mut self, p: &PipelineRow<'_>) -> Result<(), Self::Error> {
        self.exec(
            "INSERT INTO pipelines (id, project_id, project, status, max_job_id, basis, last_heard)
             VALUES ($1, $2, $3, $4, $5, $6, EXTRACT(EPOCH FROM now())::BIGINT)
             ON CONFLICT (id) DO UPDATE SET status = $4, max_job_id = GREATEST(pipelines.max_job_id, $5),
                 basis = CASE WHEN $7::BOOLEAN THEN pipelines.basis ELSE $6 END,
                 last_heard = EXTRACT(EPOCH FROM now())::BIGINT, project = COALESCE($3, pipelines.project)",
            &[&id(p.id), &id(p.project_id), &p.project, &p.status, &id(p.max_job_id), &p.basis, &p.keep_basis],
        )
    }

    fn mark_reread(&mut self, pipeline: u64) -> Result<(), Self::Error> {
        self.exec("UPDATE pipelines SET reread = true WHERE id = $1", &[&id(pipeline)])
    }

    fn note_job(
        &mut self,
        job: u64,
        name: Option<&str>,
        stage: Option<&str>,
        facts: JobFacts,
    ) -> Result<(), Self::Error> {
        self.exec(
            "UPDATE jobs SET name = COALESCE(name, $2), stage = COALESCE(stage, $3),
                 allow_failure = COALESCE($4::BOOLEAN, allow_failure),
                 started = CASE WHEN $5::BOOLEAN IS NULL THEN started ELSE COALESCE(started, false) OR $5::BOOLEAN END,
                 artifacts = CASE WHEN $6::BOOLEAN IS NULL THEN artifacts ELSE COALESCE(artifacts, false) OR $6::BOOLEAN END
             WHERE id = $1",
            &[&id(job), &name, &stage, &facts.allow_failure, &facts.started, &facts.artifacts],
        )
    }

    fn put_job(&mut self, j: &JobRow<'_>) -> Result<(), Self::Error> {
        let f = j.facts;
        self.exec(
            "INSERT INTO jobs (id, pipeline_id, status, name, stage, allow_failure, started, artifacts)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (id) DO UPDATE SET status = $3, pipeline_id = COALESCE($2, jobs.pipeline_id),
                 name = COALESCE($4, jobs.name), stage = COALESCE($5, jobs.stage)",
            &[
                &id(j.id),
                &j.pipeline_id.map(id),
                &j.status,
                &j.name,
                &j.stage,
                &f.allow_failure,
                &f.started,
                &f.artifacts,
            ],
        )
    }

    fn reread_if_retried(&mut self, pipeline: u64, name: &str, job: u64) -> Result<(), Self::Error> {
        self.exec(
            "UPDATE pipelines SET reread = true WHERE id = $1
             AND EXISTS (SELECT 1 FROM jobs WHERE pipeline_id = $1 AND name = $2 AND id < $3)",
            &[&id(pipeline), &name, &id(job)],
        )
    }

    fn log_event(&mut self, delivery: Option<i64>, event: &BuildEvent, data: &str) -> Result<u64, Self::Error> {
        let seq = self.next_seq;
        self.exec(
            "INSERT INTO events (seq, delivery_id, kind, project_id, project, git_ref, pipeline_id, data, logged_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &id(seq),
                &delivery,
                &event.kind.as_str(),
                &id(event.project_id),
                &event.project,
                &event.git_ref,
                &event.pipeline_id.map(id),
                &data,
                &now_ms(),
            ],
        )?;
        self.next_seq += 1;
        Ok(seq)
    }

    fn mark_processed(&mut self, delivery: i64, error: Option<&str>) -> Result<(), Self::Error> {
        self.exec("UPDATE deliveries SET processed = true, error = $2 WHERE id = $1", &[&delivery, &error])
    }
}
