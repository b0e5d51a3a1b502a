//! The state machine's tables for one sequencing transaction, in memory: the rows a batch of
//! deliveries can touch are read with two statements, the state machine runs over them here,
//! and what changed is written back with four. `tables.rs` runs the same statements one round
//! trip each (a dozen per delivery): on a loaded machine each round trip waits for two context
//! switches, and the sequencer, one transaction at a time for every instance, fell to ~50
//! deliveries/s that way. This file answers each [`LogTables`] call exactly as `tables.rs`'s SQL
//! does (the same `COALESCE`s, `GREATEST`s and conditions, in Rust); `relay/tests/sequencer.rs`
//! compares the two on the same deliveries.
//!
//! Only a transaction holding the log's head writes `pipelines` and `jobs` (the sequencer, the
//! processor, `ingest`, the catch-up's observations), so rows read after taking it stay current
//! until the commit — except `reread`, which the catch-up clears without the head
//! (`catchup.rs`, `mark_reread`): so only a `reread` set by this batch is written back, OR-ed
//! into the row as it is then, never the value read.
//!
//! Over 400 lines: one [`LogTables`] implementation, read against `tables.rs` call by call, and
//! its four bulk statements; split, neither half would make sense alone.

use std::collections::{HashMap, HashSet};

use cloudci_gitlab::types::Status;
use cloudci_webhook::{BuildEvent, JobFacts, JobRow, LogTables, Parsed, PipelineRow, now_ms};
use postgres::types::ToSql;
use postgres::{Row, Statement, Transaction};

use crate::pg::prepared;

type Stmts = HashMap<&'static str, Statement>;

struct Pipe {
    project_id: i64,
    project: Option<String>,
    status: String,
    max_job_id: i64,
    basis: String,
    /// Set by this batch (see the module's documentation: the value read is not kept).
    reread: bool,
    last_heard: i64,
}

struct Job {
    pipeline_id: Option<i64>,
    status: String,
    name: Option<String>,
    stage: Option<String>,
    allow_failure: Option<bool>,
    started: Option<bool>,
    artifacts: Option<bool>,
}

struct Logged {
    seq: i64,
    delivery: Option<i64>,
    kind: &'static str,
    project_id: i64,
    project: Option<String>,
    git_ref: Option<String>,
    pipeline_id: Option<i64>,
    data: String,
    logged_at: i64,
}

/// A batch's rows, what the state machine changed in them, and the seq it hands out next.
pub(crate) struct BatchTables {
    pipelines: HashMap<u64, Pipe>,
    jobs: HashMap<u64, Job>,
    dirty_pipelines: HashSet<u64>,
    dirty_jobs: HashSet<u64>,
    logged: Vec<Logged>,
    processed: Vec<(i64, Option<String>)>,
    pub(crate) next_seq: u64,
    now: i64,
}

fn id(v: u64) -> i64 {
    v as i64
}

/// A statement prepared once per session (see `pg::prepared`): one round trip, not two.
fn run(
    tx: &mut Transaction<'_>,
    stmts: &mut Stmts,
    sql: &'static str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, postgres::Error> {
    let s = prepared(stmts, tx, sql)?;
    tx.execute(&s, params)
}

fn rows(
    tx: &mut Transaction<'_>,
    stmts: &mut Stmts,
    sql: &'static str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, postgres::Error> {
    let s = prepared(stmts, tx, sql)?;
    tx.query(&s, params)
}

impl BatchTables {
    /// Reads every row `batch` can touch: the pipelines and jobs its observations name, and
    /// every job of those pipelines (a retry is found among its pipeline's jobs by name).
    pub(crate) fn load(
        tx: &mut Transaction<'_>,
        stmts: &mut Stmts,
        batch: &[(i64, Parsed)],
        next_seq: u64,
    ) -> Result<Self, postgres::Error> {
        let (mut pipeline_ids, mut job_ids) = (HashSet::new(), HashSet::new());
        for (_, parsed) in batch {
            for o in parsed.iter().flatten() {
                pipeline_ids.extend(o.event.pipeline_id.map(id));
                job_ids.extend(o.event.job_id.map(id));
            }
        }
        let (pipeline_ids, job_ids): (Vec<i64>, Vec<i64>) =
            (pipeline_ids.into_iter().collect(), job_ids.into_iter().collect());
        let mut t = Self {
            pipelines: HashMap::new(),
            jobs: HashMap::new(),
            dirty_pipelines: HashSet::new(),
            dirty_jobs: HashSet::new(),
            logged: Vec::new(),
            processed: Vec::new(),
            next_seq,
            now: now_ms() / 1000,
        };
        for r in rows(
            tx,
            stmts,
            "SELECT id, project_id, project, status, max_job_id, basis, last_heard FROM pipelines WHERE id = ANY($1)",
            &[&pipeline_ids],
        )? {
            let p = Pipe {
                project_id: r.get(1),
                project: r.get(2),
                status: r.get(3),
                max_job_id: r.get(4),
                basis: r.get(5),
                reread: false,
                last_heard: r.get(6),
            };
            t.pipelines.insert(r.get::<_, i64>(0) as u64, p);
        }
        for r in rows(
            tx,
            stmts,
            "SELECT id, pipeline_id, status, name, stage, allow_failure, started, artifacts FROM jobs
             WHERE id = ANY($1) OR pipeline_id = ANY($2)",
            &[&job_ids, &pipeline_ids],
        )? {
            let j = Job {
                pipeline_id: r.get(1),
                status: r.get(2),
                name: r.get(3),
                stage: r.get(4),
                allow_failure: r.get(5),
                started: r.get(6),
                artifacts: r.get(7),
            };
            t.jobs.insert(r.get::<_, i64>(0) as u64, j);
        }
        Ok(t)
    }

    /// Writes back what changed, the events and the deliveries' marks; returns the last seq
    /// logged, if any.
    pub(crate) fn store(self, tx: &mut Transaction<'_>, stmts: &mut Stmts) -> Result<Option<i64>, postgres::Error> {
        let ps: Vec<(i64, &Pipe)> = self.dirty_pipelines.iter().map(|k| (id(*k), &self.pipelines[k])).collect();
        if !ps.is_empty() {
            run(
                tx,
                stmts,
                "INSERT INTO pipelines (id, project_id, project, status, max_job_id, basis, reread, last_heard)
                 SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[], $6::TEXT[],
                     $7::BOOLEAN[], $8::BIGINT[])
                 ON CONFLICT (id) DO UPDATE SET project_id = EXCLUDED.project_id, project = EXCLUDED.project,
                     status = EXCLUDED.status, max_job_id = EXCLUDED.max_job_id, basis = EXCLUDED.basis,
                     reread = pipelines.reread OR EXCLUDED.reread, last_heard = EXCLUDED.last_heard",
                &[
                    &ps.iter().map(|p| p.0).collect::<Vec<_>>(),
                    &ps.iter().map(|p| p.1.project_id).collect::<Vec<_>>(),
                    &ps.iter().map(|p| p.1.project.as_deref()).collect::<Vec<_>>(),
                    &ps.iter().map(|p| p.1.status.as_str()).collect::<Vec<_>>(),
                    &ps.iter().map(|p| p.1.max_job_id).collect::<Vec<_>>(),
                    &ps.iter().map(|p| p.1.basis.as_str()).collect::<Vec<_>>(),
                    &ps.iter().map(|p| p.1.reread).collect::<Vec<_>>(),
                    &ps.iter().map(|p| p.1.last_heard).collect::<Vec<_>>(),
                ],
            )?;
        }
        let js: Vec<(i64, &Job)> = self.dirty_jobs.iter().map(|k| (id(*k), &self.jobs[k])).collect();
        if !js.is_empty() {
            run(
                tx,
                stmts,
                "INSERT INTO jobs (id, pipeline_id, status, name, stage, allow_failure, started, artifacts)
                 SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::BOOLEAN[],
                     $7::BOOLEAN[], $8::BOOLEAN[])
                 ON CONFLICT (id) DO UPDATE SET pipeline_id = EXCLUDED.pipeline_id, status = EXCLUDED.status,
                     name = EXCLUDED.name, stage = EXCLUDED.stage, allow_failure = EXCLUDED.allow_failure,
                     started = EXCLUDED.started, artifacts = EXCLUDED.artifacts",
                &[
                    &js.iter().map(|j| j.0).collect::<Vec<_>>(),
                    &js.iter().map(|j| j.1.pipeline_id).collect::<Vec<_>>(),
                    &js.iter().map(|j| j.1.status.as_str()).collect::<Vec<_>>(),
                    &js.iter().map(|j| j.1.name.as_deref()).collect::<Vec<_>>(),
                    &js.iter().map(|j| j.1.stage.as_deref()).collect::<Vec<_>>(),
                    &js.iter().map(|j| j.1.allow_failure).collect::<Vec<_>>(),
                    &js.iter().map(|j| j.1.started).collect::<Vec<_>>(),
                    &js.iter().map(|j| j.1.artifacts).collect::<Vec<_>>(),
                ],
            )?;
        }
        let e = &self.logged;
        if !e.is_empty() {
            run(
                tx,
                stmts,
                "INSERT INTO events (seq, delivery_id, kind, project_id, project, git_ref, pipeline_id, data, logged_at)
                 SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[], $6::TEXT[],
                     $7::BIGINT[], $8::TEXT[], $9::BIGINT[])",
                &[
                    &e.iter().map(|e| e.seq).collect::<Vec<_>>(),
                    &e.iter().map(|e| e.delivery).collect::<Vec<_>>(),
                    &e.iter().map(|e| e.kind).collect::<Vec<_>>(),
                    &e.iter().map(|e| e.project_id).collect::<Vec<_>>(),
                    &e.iter().map(|e| e.project.as_deref()).collect::<Vec<_>>(),
                    &e.iter().map(|e| e.git_ref.as_deref()).collect::<Vec<_>>(),
                    &e.iter().map(|e| e.pipeline_id).collect::<Vec<_>>(),
                    &e.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
                    &e.iter().map(|e| e.logged_at).collect::<Vec<_>>(),
                ],
            )?;
        }
        if !self.processed.is_empty() {
            run(
                tx,
                stmts,
                "UPDATE deliveries d SET processed = true, error = u.error
                 FROM unnest($1::BIGINT[], $2::TEXT[]) AS u(id, error) WHERE d.id = u.id",
                &[
                    &self.processed.iter().map(|p| p.0).collect::<Vec<_>>(),
                    &self.processed.iter().map(|p| p.1.as_deref()).collect::<Vec<_>>(),
                ],
            )?;
        }
        Ok(e.last().map(|e| e.seq))
    }

    fn pipeline_mut(&mut self, pipeline: u64) -> Option<&mut Pipe> {
        let p = self.pipelines.get_mut(&pipeline)?;
        self.dirty_pipelines.insert(pipeline);
        Some(p)
    }

    /// Jobs of `pipeline` named `name`.
    fn named<'a>(&'a self, pipeline: u64, name: &'a str) -> impl Iterator<Item = u64> + 'a {
        self.jobs
            .iter()
            .filter(move |(_, j)| j.pipeline_id == Some(id(pipeline)) && j.name.as_deref() == Some(name))
            .map(|(k, _)| *k)
    }
}

// Each method: the statement of `tables.rs` it stands for, in words.
impl LogTables for BatchTables {
    type Error = postgres::Error;

    fn job_status(&mut self, job: u64) -> Result<Option<Status>, Self::Error> {
        Ok(self.jobs.get(&job).map(|j| Status::parse(&j.status)))
    }

    // MIN(id), MAX(id) of the pipeline's jobs of that name, other than `job`.
    fn other_attempts(&mut self, pipeline: u64, name: &str, job: u64) -> Result<Option<(u64, u64)>, Self::Error> {
        let ids: Vec<u64> = self.named(pipeline, name).filter(|k| *k != job).collect();
        Ok(ids.iter().min().copied().zip(ids.iter().max().copied()))
    }

    fn pipeline(&mut self, pipeline: u64) -> Result<Option<(Status, String)>, Self::Error> {
        Ok(self.pipelines.get(&pipeline).map(|p| (Status::parse(&p.status), p.basis.clone())))
    }

    // MAX(id) of the pipeline's named jobs that have an older job of the same name.
    fn newest_stored_retry(&mut self, pipeline: u64) -> Result<u64, Self::Error> {
        let mut lowest: HashMap<&str, u64> = HashMap::new();
        for (k, j) in &self.jobs {
            if let (Some(name), true) = (j.name.as_deref(), j.pipeline_id == Some(id(pipeline))) {
                let e = lowest.entry(name).or_insert(*k);
                *e = (*e).min(*k);
            }
        }
        Ok(self
            .jobs
            .iter()
            .filter(|(k, j)| j.pipeline_id == Some(id(pipeline)) && j.name.as_deref().is_some_and(|n| lowest[n] < **k))
            .map(|(k, _)| *k)
            .max()
            .unwrap_or(0))
    }

    fn heard_of(&mut self, pipeline: u64) -> Result<(), Self::Error> {
        let now = self.now;
        if let Some(p) = self.pipeline_mut(pipeline) {
            p.last_heard = now;
        }
        Ok(())
    }

    fn set_basis(&mut self, pipeline: u64, basis: &str) -> Result<(), Self::Error> {
        if let Some(p) = self.pipeline_mut(pipeline) {
            basis.clone_into(&mut p.basis);
        }
        Ok(())
    }

    // INSERT ... ON CONFLICT: status, GREATEST(max_job_id), the basis unless kept, last_heard,
    // COALESCE(new project, old).
    fn put_pipeline(&mut self, r: &PipelineRow<'_>) -> Result<(), Self::Error> {
        let now = self.now;
        self.dirty_pipelines.insert(r.id);
        match self.pipelines.get_mut(&r.id) {
            Some(p) => {
                r.status.clone_into(&mut p.status);
                p.max_job_id = p.max_job_id.max(id(r.max_job_id));
                if !r.keep_basis {
                    r.basis.clone_into(&mut p.basis);
                }
                p.last_heard = now;
                if let Some(project) = r.project {
                    p.project = Some(project.to_owned());
                }
            }
            None => {
                let p = Pipe {
                    project_id: id(r.project_id),
                    project: r.project.map(str::to_owned),
                    status: r.status.to_owned(),
                    max_job_id: id(r.max_job_id),
                    basis: r.basis.to_owned(),
                    reread: false,
                    last_heard: now,
                };
                self.pipelines.insert(r.id, p);
            }
        }
        Ok(())
    }

    fn mark_reread(&mut self, pipeline: u64) -> Result<(), Self::Error> {
        if let Some(p) = self.pipeline_mut(pipeline) {
            p.reread = true;
        }
        Ok(())
    }

    // A known job's name and stage when it had none; allow_failure when said; started and
    // artifacts only ever become true.
    fn note_job(&mut self, job: u64, name: Option<&str>, stage: Option<&str>, f: JobFacts) -> Result<(), Self::Error> {
        let Some(j) = self.jobs.get_mut(&job) else { return Ok(()) };
        self.dirty_jobs.insert(job);
        if j.name.is_none() {
            j.name = name.map(str::to_owned);
        }
        if j.stage.is_none() {
            j.stage = stage.map(str::to_owned);
        }
        j.allow_failure = f.allow_failure.or(j.allow_failure);
        if let Some(s) = f.started {
            j.started = Some(j.started.unwrap_or(false) || s);
        }
        if let Some(a) = f.artifacts {
            j.artifacts = Some(j.artifacts.unwrap_or(false) || a);
        }
        Ok(())
    }

    // INSERT ... ON CONFLICT: the status; COALESCE(new, old) for pipeline, name and stage; the
    // facts only for a new job.
    fn put_job(&mut self, r: &JobRow<'_>) -> Result<(), Self::Error> {
        self.dirty_jobs.insert(r.id);
        match self.jobs.get_mut(&r.id) {
            Some(j) => {
                r.status.clone_into(&mut j.status);
                j.pipeline_id = r.pipeline_id.map(id).or(j.pipeline_id);
                if let Some(name) = r.name {
                    j.name = Some(name.to_owned());
                }
                if let Some(stage) = r.stage {
                    j.stage = Some(stage.to_owned());
                }
            }
            None => {
                let j = Job {
                    pipeline_id: r.pipeline_id.map(id),
                    status: r.status.to_owned(),
                    name: r.name.map(str::to_owned),
                    stage: r.stage.map(str::to_owned),
                    allow_failure: r.facts.allow_failure,
                    started: r.facts.started,
                    artifacts: r.facts.artifacts,
                };
                self.jobs.insert(r.id, j);
            }
        }
        Ok(())
    }

    fn reread_if_retried(&mut self, pipeline: u64, name: &str, job: u64) -> Result<(), Self::Error> {
        if self.named(pipeline, name).any(|k| k < job) {
            self.mark_reread(pipeline)?;
        }
        Ok(())
    }

    fn log_event(&mut self, delivery: Option<i64>, event: &BuildEvent, data: &str) -> Result<u64, Self::Error> {
        let seq = self.next_seq;
        self.logged.push(Logged {
            seq: id(seq),
            delivery,
            kind: event.kind.as_str(),
            project_id: id(event.project_id),
            project: event.project.clone(),
            git_ref: event.git_ref.clone(),
            pipeline_id: event.pipeline_id.map(id),
            data: data.to_owned(),
            logged_at: now_ms(),
        });
        self.next_seq += 1;
        Ok(seq)
    }

    fn mark_processed(&mut self, delivery: i64, error: Option<&str>) -> Result<(), Self::Error> {
        self.processed.push((delivery, error.map(str::to_owned)));
        Ok(())
    }
}
