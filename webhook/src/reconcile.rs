//! The reconciler: what the webhooks did not say, GitLab's API does. Two duties, both fed through
//! the same state machine as deliveries, so subscribers never miss a final state:
//! - **silent pipelines**: a known pipeline that is not finished (or finished with a job still
//!   shown running) and that nothing was heard of for `silence` is read again (a dropped delivery);
//! - **catch-up**: pipelines nobody heard of at all (every delivery fell into an outage: the daemon
//!   was down or stopped, the laptop slept, GitLab had paused the hook). For each project it lists
//!   `GET /projects/:id/pipelines?updated_after=` from the last catch-up (less a margin for clock
//!   skew) and reads each one. It runs at start, when asked (a hook was re-enabled, the tunnel came
//!   back), and while webhooks are silent — backing off, so an idle project costs one request now
//!   and then, and a healthy webhook flow costs none.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudci_gitlab::{Gitlab, JobFilter, PipelineFilter, PipelineId, ProjectId, ProjectRef};
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::Notify;

use std::collections::HashMap;

use cloudci_gitlab::types::Status;

use crate::events::{BuildEvent, EventKind, EventSource, Observation};
use crate::hub::{Hub, blocking};
use crate::log::EventLog;
use crate::store::{ActivePipeline, Store, StoreError};

/// What the reconciler needs of an event log besides [`EventLog`]: the known pipelines'
/// state, the catch-up cursors, and a way to log what GitLab's API said. SQLite's [`Store`]
/// implements it for the daemon, `cloudci-relay`'s `PgLog` for the team relay, so both run this
/// one reconciler.
pub trait ReconcileLog: EventLog {
    /// Applies observations that came from polling GitLab (one transaction); the events logged.
    fn apply_observations(&self, observations: Vec<Observation>) -> Result<Vec<BuildEvent>, StoreError>;
    /// Pipelines not finished yet, finished ones with a job still shown running, and those owed
    /// a second read.
    fn active_pipelines(&self) -> Result<Vec<ActivePipeline>, StoreError>;
    /// The pipeline was read finished, retried attempts included.
    fn mark_reread(&self, pipeline_id: u64) -> Result<(), StoreError>;
    /// The last accepted status of each of `ids` the log knows.
    fn pipeline_statuses(&self, ids: &[u64]) -> Result<HashMap<u64, Status>, StoreError>;
    /// Up to when (Unix seconds) everything of `project_id` is known to have been heard.
    fn catch_up_cursor(&self, project_id: u64) -> Result<Option<i64>, StoreError>;
    /// Moves [`ReconcileLog::catch_up_cursor`].
    fn set_catch_up_cursor(&self, project_id: u64, unix_secs: i64) -> Result<(), StoreError>;
    /// When the newest stored delivery was received (Unix seconds).
    fn last_delivery_at(&self) -> Result<Option<i64>, StoreError>;
}

impl ReconcileLog for Store {
    fn apply_observations(&self, observations: Vec<Observation>) -> Result<Vec<BuildEvent>, StoreError> {
        Store::apply_observations(self, observations)
    }
    fn active_pipelines(&self) -> Result<Vec<ActivePipeline>, StoreError> {
        Store::active_pipelines(self)
    }
    fn mark_reread(&self, pipeline_id: u64) -> Result<(), StoreError> {
        Store::mark_reread(self, pipeline_id)
    }
    fn pipeline_statuses(&self, ids: &[u64]) -> Result<HashMap<u64, Status>, StoreError> {
        Store::pipeline_statuses(self, ids)
    }
    fn catch_up_cursor(&self, project_id: u64) -> Result<Option<i64>, StoreError> {
        Store::catch_up_cursor(self, project_id)
    }
    fn set_catch_up_cursor(&self, project_id: u64, unix_secs: i64) -> Result<(), StoreError> {
        Store::set_catch_up_cursor(self, project_id, unix_secs)
    }
    fn last_delivery_at(&self) -> Result<Option<i64>, StoreError> {
        Store::last_delivery_at(self)
    }
}

/// Why a reconciler round failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// GitLab's API failed.
    #[error(transparent)]
    Gitlab(#[from] cloudci_gitlab::Error),
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How far back a catch-up looks before the last one, for clock skew between this machine and
/// GitLab and for pipelines updated while the last listing ran.
pub(crate) const CATCH_UP_MARGIN: Duration = Duration::from_secs(120);
/// Webhooks silent this long (and never less than the reconciler's `silence`) start catch-ups.
pub(crate) const QUIET: Duration = Duration::from_secs(30);
/// The longest wait between two catch-ups while webhooks stay silent.
pub(crate) const MAX_CATCH_UP_INTERVAL: Duration = Duration::from_secs(600);

/// Pipelines read from GitLab at once while catching up.
const READS_AT_ONCE: usize = 4;
/// A wait this much longer than asked for means the process was suspended.
const SUSPEND_HINT: Duration = Duration::from_secs(5);

/// Polls silent pipelines and catches up after outages, over any [`ReconcileLog`] (the
/// daemon's SQLite store by default).
#[derive(Debug)]
pub struct Reconciler<L: ReconcileLog = Store> {
    gitlab: Gitlab,
    hub: Hub<L>,
    silence: Duration,
    /// Catch up at least this often, whatever the webhooks do (the relay's; `None`: only when
    /// asked or while they are silent).
    catch_up_every: Option<Duration>,
    projects: Vec<ProjectRef>,
    /// Project path or id (as given) → numeric id, learned on first use.
    ids: Arc<Mutex<BTreeMap<String, u64>>>,
    wake: Arc<Notify>,
}

impl<L: ReconcileLog> Clone for Reconciler<L> {
    fn clone(&self) -> Self {
        Self {
            gitlab: self.gitlab.clone(),
            hub: self.hub.clone(),
            silence: self.silence,
            catch_up_every: self.catch_up_every,
            projects: self.projects.clone(),
            ids: self.ids.clone(),
            wake: self.wake.clone(),
        }
    }
}

impl<L: ReconcileLog> Reconciler<L> {
    /// A reconciler that polls pipelines nobody heard of for `silence`.
    pub fn new(gitlab: Gitlab, hub: Hub<L>, silence: Duration) -> Self {
        Self {
            gitlab,
            hub,
            silence,
            catch_up_every: None,
            projects: Vec::new(),
            ids: Arc::default(),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Also catches up every `every` while deliveries flow. The team relay does: a delivery GitLab
    /// gave up on (an instance killed mid-answer, a hook paused and resumed by its backoff)
    /// leaves no silence to notice when the rest of the team's deliveries keep coming, and one
    /// listing per project and interval is cheap for one relay (not for fifty daemons).
    pub fn with_catch_up_every(mut self, every: Duration) -> Self {
        self.catch_up_every = Some(every);
        self
    }

    /// Also catches up on these projects: pipelines of theirs that no delivery announced.
    pub fn with_projects(mut self, projects: Vec<ProjectRef>) -> Self {
        self.projects = projects;
        self
    }

    /// Asks the running loop for a catch-up now (a hook was re-enabled, the tunnel came back).
    pub fn request_catch_up(&self) {
        self.wake.notify_one();
    }

    /// One round over known pipelines. With `everything`, polls every unfinished pipeline, silent
    /// or not (after a restart or a tunnel reconnect). Returns how many events it logged.
    pub async fn round(&self, everything: bool) -> Result<usize, ReconcileError> {
        let store = self.hub.store().clone();
        let active = blocking(move || store.active_pipelines()).await?;
        let now = chrono::Utc::now().timestamp();
        let mut logged = 0;
        for p in active {
            if !everything && now - p.last_heard < self.silence.as_secs() as i64 {
                continue;
            }
            tracing::info!(pipeline.id = p.pipeline_id, "no word from GitLab; asking its API");
            logged += self.read(p.project_id, p.project.clone(), p.pipeline_id).await?;
        }
        Ok(logged)
    }

    /// Catches up on every project: reads each pipeline updated since the last catch-up (less
    /// `CATCH_UP_MARGIN`). The first catch-up of a new state directory only starts the clock.
    /// Returns how many events it logged.
    pub async fn catch_up(&self) -> Result<usize, ReconcileError> {
        let mut logged = 0;
        let mut first_error = None;
        for project in &self.projects {
            match self.catch_up_project(project).await {
                Ok(n) => logged += n,
                Err(e) => {
                    tracing::warn!(project = %project, "catching up: {e}");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(logged),
        }
    }

    async fn project_id(&self, project: &ProjectRef) -> Result<u64, ReconcileError> {
        if let ProjectRef::Id(id) = project {
            return Ok(id.0);
        }
        let key = project.to_string();
        if let Some(id) = self.ids.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(*id);
        }
        let id = self.gitlab.project(project.clone()).await?.id.0;
        self.ids.lock().unwrap_or_else(|e| e.into_inner()).insert(key, id);
        Ok(id)
    }

    async fn catch_up_project(&self, project: &ProjectRef) -> Result<usize, ReconcileError> {
        let id = self.project_id(project).await?;
        let started = chrono::Utc::now();
        let store = self.hub.store().clone();
        let cursor = blocking(move || store.catch_up_cursor(id)).await?;
        let mut logged = 0;
        if let Some(cursor) = cursor {
            let since = chrono::DateTime::from_timestamp(cursor, 0).unwrap_or(started)
                - chrono::Duration::from_std(CATCH_UP_MARGIN).unwrap_or_default();
            let filter = PipelineFilter { updated_after: Some(since), per_page: Some(100), ..Default::default() };
            let changed: Vec<_> = self.gitlab.pipelines(ProjectId(id), &filter).try_collect().await?;
            let path = match project {
                ProjectRef::Path(p) => Some(p.clone()),
                ProjectRef::Id(_) => None,
            };
            // What the log already has as GitLab lists it (finished, no job left unsettled) needs
            // no second look: after a long healthy stretch most of the list is that.
            let ids: Vec<u64> = changed.iter().map(|p| p.id.0).collect();
            let store = self.hub.store().clone();
            let (known, active) =
                blocking(move || Ok((store.pipeline_statuses(&ids)?, store.active_pipelines()?))).await?;
            let active: std::collections::HashSet<u64> = active.iter().map(|a| a.pipeline_id).collect();
            let unheard: Vec<u64> = changed
                .iter()
                .rev()
                .filter(|p| {
                    !(p.status.is_completed() && known.get(&p.id.0) == Some(&p.status) && !active.contains(&p.id.0))
                })
                .map(|p| p.id.0)
                .collect();
            if !unheard.is_empty() {
                tracing::info!(project = %project, pipelines = unheard.len(), "catching up on what GitLab did meanwhile");
            }
            // Oldest first, a few at a time: the order subscribers hear them in, without waiting
            // on GitLab for each in turn.
            let reads =
                futures_util::stream::iter(unheard).map(|pid| self.read(id, path.clone(), pid)).buffered(READS_AT_ONCE);
            let results: Vec<_> = reads.collect().await;
            for r in results {
                logged += r?;
            }
        }
        let store = self.hub.store().clone();
        blocking(move || store.set_catch_up_cursor(id, started.timestamp())).await?;
        Ok(logged)
    }

    async fn apply(&self, observations: Vec<Observation>) -> Result<usize, ReconcileError> {
        let store = self.hub.store().clone();
        let events = blocking(move || store.apply_observations(observations)).await?;
        let n = events.len();
        self.hub.publish(events);
        Ok(n)
    }

    /// Reads one pipeline and all its jobs, retried attempts included, and applies what is news.
    /// Superseded attempts go in a batch of their own first, so the pipeline's evidence is its
    /// current jobs only (the state machine judges an observation naming an old attempt late).
    async fn read(&self, project_id: u64, path: Option<String>, id: u64) -> Result<usize, ReconcileError> {
        let pipeline = self.gitlab.pipeline(ProjectId(project_id), PipelineId(id)).await?;
        let all = JobFilter { include_retried: true, ..JobFilter::default() };
        let mut jobs: Vec<_> =
            self.gitlab.pipeline_jobs(ProjectId(project_id), PipelineId(id), &all).try_collect().await?;
        jobs.sort_by_key(|j| j.id);
        let mut newest: BTreeMap<&str, u64> = BTreeMap::new();
        for j in &jobs {
            newest.insert(j.name.as_str(), j.id.0);
        }
        let blank = |kind| {
            let mut e = BuildEvent::new(kind, project_id, "poll", EventSource::Poll);
            e.project.clone_from(&path);
            e.git_ref = Some(pipeline.git_ref.clone());
            e.sha = Some(pipeline.sha.clone());
            e.pipeline_id = Some(id);
            e
        };
        let (mut retried, mut current) = (Vec::new(), Vec::new());
        for j in &jobs {
            let mut e = blank(EventKind::Job);
            e.job_id = Some(j.id.0);
            e.job_name = Some(j.name.clone());
            e.stage = Some(j.stage.clone());
            e.status = Some(j.status.to_string());
            e.failure_reason = j.failure_reason.clone();
            e.url = Some(j.web_url.clone());
            e.allow_failure = Some(j.allow_failure);
            e.started = Some(j.started_at.is_some());
            e.artifacts = Some(j.artifacts_file.is_some());
            let superseded = newest.get(j.name.as_str()).is_some_and(|n| *n > j.id.0);
            let batch = if superseded { &mut retried } else { &mut current };
            batch.push(Observation { event: e, max_job_id: j.id.0 });
        }
        // The pipeline last, after its jobs, as webhooks would have told it.
        let max_job_id = current.iter().map(|o| o.max_job_id).max().unwrap_or(0);
        let mut e = blank(EventKind::Pipeline);
        e.status = Some(pipeline.status.to_string());
        e.url = Some(pipeline.web_url.clone());
        current.push(Observation { event: e, max_job_id });
        let mut logged = 0;
        if !retried.is_empty() {
            logged += self.apply(retried).await?;
        }
        logged += self.apply(current).await?;
        if pipeline.status.is_completed() {
            let store = self.hub.store().clone();
            blocking(move || store.mark_reread(id)).await?;
        }
        Ok(logged)
    }

    /// Runs until dropped, a round every `every`: the first polls everything unfinished and
    /// catches up; later ones poll what went silent, and catch up when asked or while the
    /// webhooks are quiet (after `QUIET`, then less and less often, up to
    /// `MAX_CATCH_UP_INTERVAL`).
    pub async fn run(self, every: Duration) {
        // Its own task, so that a round waiting on GitLab when the process is frozen does not hide
        // the jump.
        let _watch = AbortOnDrop(tokio::spawn(watch_suspension(self.wake.clone())));
        let quiet = QUIET.max(self.silence);
        let mut everything = true;
        let mut catch_up_due = true;
        let mut interval = quiet;
        let mut last_catch_up = tokio::time::Instant::now();
        loop {
            if catch_up_due && !self.projects.is_empty() {
                match self.catch_up().await {
                    Ok(n) if n > 0 => tracing::info!(events = n, "caught up from GitLab's API"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("catching up: {e}"),
                }
                last_catch_up = tokio::time::Instant::now();
            }
            match self.round(everything).await {
                Ok(n) if n > 0 => tracing::info!(events = n, "reconciled from GitLab's API"),
                Ok(_) => {}
                Err(e) => tracing::warn!("reconciling: {e}"),
            }
            let asked = tokio::time::timeout(every, self.wake.notified()).await.is_ok();
            let store = self.hub.store().clone();
            let last_delivery = blocking(move || store.last_delivery_at()).await.ok().flatten();
            let silent_for = last_delivery
                .map(|t| Duration::from_secs((chrono::Utc::now().timestamp() - t).max(0) as u64))
                .unwrap_or(Duration::MAX);
            if silent_for < quiet {
                interval = quiet;
            }
            let periodic = self.catch_up_every.is_some_and(|e| last_catch_up.elapsed() >= e);
            catch_up_due = asked || periodic || (silent_for >= quiet && last_catch_up.elapsed() >= interval);
            if catch_up_due && !asked && !periodic {
                interval = (interval * 2).min(MAX_CATCH_UP_INTERVAL);
            }
            // A catch-up after an outage also rereads every unfinished pipeline.
            everything = asked;
        }
    }
}

/// Aborts a task when dropped (the reconciler's helpers end with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Asks for a catch-up whenever the wall clock jumps past a short sleep: this process was
/// suspended (a laptop asleep, a SIGSTOP). GitLab's deliveries meanwhile timed out, and it may
/// have paused the hook.
async fn watch_suspension(wake: Arc<Notify>) {
    const TICK: Duration = Duration::from_secs(1);
    loop {
        let before = chrono::Utc::now();
        tokio::time::sleep(TICK).await;
        let slept = (chrono::Utc::now() - before).to_std().unwrap_or_default();
        if slept > TICK + SUSPEND_HINT {
            tracing::info!(seconds = slept.as_secs(), "woke up after a suspension; catching up");
            wake.notify_one();
        }
    }
}
