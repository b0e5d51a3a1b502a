//! The state machine over an event log's tables, written once for every backend.
//!
//! [`crate::tracker`] judges one observation against what is known; this module reads what is
//! known and records what was accepted, through [`LogTables`]: the dozen statements a backend
//! runs inside the transaction that processes a batch of deliveries. SQLite implements it in
//! `store.rs`, PostgreSQL in the `cloudci-relay` crate; both therefore judge every delivery the
//! same way, and the conformance tests (`relay/tests/conformance.rs`) hold them to it.
//!
//! Every call happens inside the caller's transaction: the caller commits or rolls back.

use std::collections::HashMap;

use cloudci_gitlab::types::Status;

use crate::events::{BuildEvent, EventKind, Observation};
use crate::store::Parsed;
use crate::tracker::{JobMention, PipelineEvidence, PipelineKnown, Verdict, basis_of, judge_job, judge_pipeline};

/// What deliveries say of a job besides its status: `None` where a delivery did not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobFacts {
    /// May fail without failing the pipeline.
    pub allow_failure: Option<bool>,
    /// Started (has a log).
    pub started: Option<bool>,
    /// Has an artifact archive.
    pub artifacts: Option<bool>,
}

/// A pipeline status to record ([`LogTables::put_pipeline`]).
#[derive(Debug, Clone, Copy)]
pub struct PipelineRow<'a> {
    /// Pipeline id.
    pub id: u64,
    /// Project id.
    pub project_id: u64,
    /// Project path, when the delivery gave it (kept otherwise).
    pub project: Option<&'a str>,
    /// The accepted status.
    pub status: &'a str,
    /// The highest job id the evidence mentioned (kept as the maximum).
    pub max_job_id: u64,
    /// The basis (JSON object, job name → id) of the evidence.
    pub basis: &'a str,
    /// Keep the stored basis (the evidence mentioned no job).
    pub keep_basis: bool,
}

/// A job status to record ([`LogTables::put_job`]).
#[derive(Debug, Clone, Copy)]
pub struct JobRow<'a> {
    /// Job id (this attempt).
    pub id: u64,
    /// Its pipeline, when the delivery gave it (kept otherwise).
    pub pipeline_id: Option<u64>,
    /// The accepted status.
    pub status: &'a str,
    /// Name, when given (kept otherwise).
    pub name: Option<&'a str>,
    /// Stage, when given (kept otherwise).
    pub stage: Option<&'a str>,
    /// The other facts, for a job seen the first time.
    pub facts: JobFacts,
}

/// The statements the state machine runs in a backend's transaction. Each backend writes them in
/// its own SQL; [`apply`] and [`process_all`] decide what to run.
pub trait LogTables {
    /// The backend's error.
    type Error;
    /// The last accepted status of job `id`.
    fn job_status(&mut self, id: u64) -> Result<Option<Status>, Self::Error>;
    /// The lowest and highest id of *other* jobs named `name` in `pipeline`.
    fn other_attempts(&mut self, pipeline: u64, name: &str, id: u64) -> Result<Option<(u64, u64)>, Self::Error>;
    /// Pipeline `id`'s last accepted status and basis (the JSON object as stored).
    fn pipeline(&mut self, id: u64) -> Result<Option<(Status, String)>, Self::Error>;
    /// The highest stored job id in `pipeline` that has an earlier attempt of its name (0: none).
    fn newest_stored_retry(&mut self, pipeline: u64) -> Result<u64, Self::Error>;
    /// Something was heard of `pipeline` now (its `last_heard`), when it is known.
    fn heard_of(&mut self, pipeline: u64) -> Result<(), Self::Error>;
    /// Replaces `pipeline`'s basis.
    fn set_basis(&mut self, pipeline: u64, basis: &str) -> Result<(), Self::Error>;
    /// Inserts or updates a pipeline's accepted status (and `last_heard`).
    fn put_pipeline(&mut self, row: &PipelineRow<'_>) -> Result<(), Self::Error>;
    /// `pipeline` owes a second read (it was retried).
    fn mark_reread(&mut self, pipeline: u64) -> Result<(), Self::Error>;
    /// Keeps a known job's name and stage when it had none, and its facts (`started` and
    /// `artifacts` only ever become true); nothing when the job is unknown.
    fn note_job(
        &mut self,
        id: u64,
        name: Option<&str>,
        stage: Option<&str>,
        facts: JobFacts,
    ) -> Result<(), Self::Error>;
    /// Inserts or updates a job's accepted status.
    fn put_job(&mut self, row: &JobRow<'_>) -> Result<(), Self::Error>;
    /// [`LogTables::mark_reread`] when `pipeline` has an older job named `name` than `id`.
    fn reread_if_retried(&mut self, pipeline: u64, name: &str, id: u64) -> Result<(), Self::Error>;
    /// Appends `event` (serialized as `data`) to the log; returns its seq.
    fn log_event(&mut self, delivery: Option<i64>, event: &BuildEvent, data: &str) -> Result<u64, Self::Error>;
    /// Marks stored delivery `id` processed, with why it could not be read if so.
    fn mark_processed(&mut self, id: i64, error: Option<&str>) -> Result<(), Self::Error>;
}

fn known_pipeline<T: LogTables>(t: &mut T, id: u64) -> Result<Option<PipelineKnown>, T::Error> {
    Ok(t.pipeline(id)?.map(|(status, basis)| PipelineKnown {
        status,
        // An unreadable basis only costs the ability to recognise a retry by name.
        basis: serde_json::from_str(&basis).unwrap_or_default(),
    }))
}

/// What the log knows of a job a delivery mentions: its job-level verdict and its name's other
/// attempts in the pipeline.
fn mention<T: LogTables>(
    t: &mut T,
    pipeline: u64,
    id: u64,
    name: Option<&str>,
    status: &Status,
) -> Result<JobMention, T::Error> {
    let other_attempts = match name {
        Some(name) => t.other_attempts(pipeline, name, id)?,
        None => None,
    };
    let verdict = judge_job(t.job_status(id)?.as_ref(), status);
    Ok(JobMention { id, name: name.map(str::to_owned), status: status.clone(), other_attempts, verdict })
}

/// The highest job id known to be a retry attempt in the pipeline (0: never retried), counting
/// the delivery's own mentions.
fn newest_retry_attempt<T: LogTables>(t: &mut T, pipeline: u64, mentions: &[JobMention]) -> Result<u64, T::Error> {
    let stored = t.newest_stored_retry(pipeline)?;
    let mentioned = mentions.iter().filter(|m| m.is_retry_attempt()).map(|m| m.id).max().unwrap_or(0);
    Ok(stored.max(mentioned))
}

/// Applies each delivery's observations and marks it processed, in order.
pub fn process_all<T: LogTables>(t: &mut T, batch: Vec<(i64, Parsed)>) -> Result<Vec<BuildEvent>, T::Error> {
    let mut logged = Vec::new();
    for (id, parsed) in batch {
        let (observations, error) = match parsed {
            Ok(o) => (o, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        logged.extend(apply(t, Some(id), observations)?);
        t.mark_processed(id, error.as_deref())?;
    }
    Ok(logged)
}

/// The state machine over the tables: judge each observation, record what is accepted, log it.
pub fn apply<T: LogTables>(
    t: &mut T,
    delivery_id: Option<i64>,
    observations: Vec<Observation>,
) -> Result<Vec<BuildEvent>, T::Error> {
    // The jobs a delivery mentions are its pipeline observation's evidence, judged against the
    // log as it was before the delivery (its own job observations are applied in the same loop).
    let mut mentions: HashMap<u64, Vec<JobMention>> = HashMap::new();
    for obs in &observations {
        let e = &obs.event;
        if let (EventKind::Job, Some(p), Some(id), Some(status)) = (e.kind, e.pipeline_id, e.job_id, e.status()) {
            let m = mention(t, p, id, e.job_name.as_deref(), &status)?;
            mentions.entry(p).or_default().push(m);
        }
    }
    let mut logged = Vec::new();
    for obs in observations {
        let weak = obs.is_weak();
        let mut event = obs.event;
        let status = event.status();
        match (event.kind, event.pipeline_id, event.job_id, &status) {
            (EventKind::Pipeline, Some(id), _, Some(status)) => {
                let known = known_pipeline(t, id)?;
                let mentions = mentions.get(&id).map(Vec::as_slice).unwrap_or_default();
                let evidence =
                    PipelineEvidence { mentions, weak, newest_retry_attempt: newest_retry_attempt(t, id, mentions)? };
                let verdict = judge_pipeline(known.as_ref(), status, &evidence);
                // Anything heard of a pipeline proves GitLab is talking, even a duplicate.
                t.heard_of(id)?;
                // The basis follows the newest evidence for the status, also when it repeats it.
                let basis = serde_json::to_string(&basis_of(mentions)).unwrap_or_else(|_| "{}".into());
                if verdict == Verdict::Duplicate && !mentions.is_empty() {
                    t.set_basis(id, &basis)?;
                }
                if !verdict.accepted() {
                    continue;
                }
                let max_job_id = mentions.iter().map(|m| m.id).max().unwrap_or(0);
                t.put_pipeline(&PipelineRow {
                    id,
                    project_id: event.project_id,
                    project: event.project.as_deref(),
                    status: status.as_str(),
                    max_job_id,
                    basis: &basis,
                    keep_basis: mentions.is_empty(),
                })?;
                if verdict == Verdict::Retry || mentions.iter().any(JobMention::is_retry_attempt) {
                    t.mark_reread(id)?;
                }
                event.previous_status = known.map(|k| k.status.to_string());
                event.retry = verdict == Verdict::Retry;
            }
            (EventKind::Job, pipeline, Some(id), Some(status)) => {
                let known = t.job_status(id)?;
                let verdict = judge_job(known.as_ref(), status);
                if let Some(p) = pipeline {
                    t.heard_of(p)?;
                }
                // Names are what tell a retry from a sibling: keep them even from a late delivery
                // (rows stored before names were kept have none). Started and artifacts only ever
                // become true for one attempt: a late delivery cannot take them back.
                let facts =
                    JobFacts { allow_failure: event.allow_failure, started: event.started, artifacts: event.artifacts };
                t.note_job(id, event.job_name.as_deref(), event.stage.as_deref(), facts)?;
                if !verdict.accepted() {
                    continue;
                }
                t.put_job(&JobRow {
                    id,
                    pipeline_id: pipeline,
                    status: status.as_str(),
                    name: event.job_name.as_deref(),
                    stage: event.stage.as_deref(),
                    facts,
                })?;
                if let (Some(p), Some(name)) = (pipeline, &event.job_name) {
                    t.reread_if_retried(p, name, id)?;
                }
                event.previous_status = known.map(|k| k.to_string());
                event.retry = verdict == Verdict::Retry;
            }
            // Merge requests, pushes and the rest have no state to protect: each delivery (already
            // de-duplicated by key) is one event.
            _ => {}
        }
        let data = serde_json::to_string(&event).unwrap_or_default();
        event.seq = t.log_event(delivery_id, &event, &data)?;
        logged.push(event);
    }
    Ok(logged)
}
