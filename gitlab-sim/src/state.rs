//! What the sim remembers: projects, pipelines, jobs, merge requests and hooks, and the rules
//! that move pipelines and jobs through GitLab's statuses.
//!
//! Every change happens under one lock and returns [`Effects`]: the jobs to start and the webhook
//! payloads rendered at that moment (so a late delivery still describes the state it was sent for).
//! The caller applies them after releasing the lock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use cloudci_gitlab::types::{PipelineVariable, Status};
use serde_json::Value;

use crate::access::{Directory, ProjectFacts, Source, Visibility};
use crate::ci::{CiConfig, JobSpec, When};
use crate::git::{CommitInfo, Repo};

/// A project served by the sim.
#[derive(Debug)]
pub struct Project {
    /// Id (1, 2, ... in the order given).
    pub id: u64,
    /// `group/name`.
    pub path: String,
    /// The repository.
    pub repo: Repo,
    /// Default branch.
    pub default_branch: String,
    /// Next pipeline `iid`.
    pub next_pipeline_iid: u64,
    /// Next merge request `iid`.
    pub next_mr_iid: u64,
    /// When it was created (sim start).
    pub created_at: DateTime<Utc>,
    /// The group it belongs to (the innermost of its namespace).
    pub group_id: u64,
    /// Visibility.
    pub visibility: Visibility,
    /// "Public pipelines" (`public_jobs`): Guests, and everyone on a public project, may see
    /// pipelines and jobs. On by default, as in GitLab.
    pub public_jobs: bool,
}

impl Project {
    /// Whether `git_ref` is a protected branch. GitLab protects the default branch of a new
    /// project ("fully protected" by default: Maintainers push and merge); no other branch or tag
    /// is protected here.
    pub fn is_protected(&self, git_ref: &str, tag: bool) -> bool {
        !tag && git_ref == self.default_branch
    }

    /// Facts the permission rules need.
    pub fn facts(&self) -> ProjectFacts {
        ProjectFacts { visibility: self.visibility, public_jobs: self.public_jobs }
    }

    /// Last path component.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    /// Everything before the last component.
    pub fn namespace(&self) -> &str {
        self.path.rsplit_once('/').map(|(ns, _)| ns).unwrap_or("")
    }
}

/// A pipeline.
#[derive(Debug)]
pub struct Pipeline {
    /// Global id.
    pub id: u64,
    /// Per-project number.
    pub iid: u64,
    /// Project id.
    pub project_id: u64,
    /// Branch or tag.
    pub git_ref: String,
    /// Whether `git_ref` is a tag.
    pub tag: bool,
    /// Commit.
    pub sha: String,
    /// The commit's details.
    pub commit: CommitInfo,
    /// `api`, `push`, `web`, ...
    pub source: String,
    /// Status, derived from the jobs.
    pub status: Status,
    /// Variables given at creation.
    pub variables: Vec<PipelineVariable>,
    /// The configuration it runs.
    pub config: Arc<CiConfig>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// First job start.
    pub started_at: Option<DateTime<Utc>>,
    /// Completion.
    pub finished_at: Option<DateTime<Utc>>,
    /// Every job id, retried ones included, in creation order.
    pub jobs: Vec<u64>,
    /// For a child pipeline: the parent pipeline and the bridge job that triggered it.
    pub parent: Option<(u64, u64)>,
    /// `workflow:name` (`CI_PIPELINE_NAME`), the API's `name`.
    pub name: Option<String>,
    /// Who created it (a child pipeline: its parent's creator). Its jobs show the same user.
    pub user_id: u64,
}

/// A job.
#[derive(Debug)]
pub struct Job {
    /// Global id.
    pub id: u64,
    /// Pipeline id.
    pub pipeline_id: u64,
    /// Project id.
    pub project_id: u64,
    /// Its definition.
    pub spec: Arc<JobSpec>,
    /// Status.
    pub status: Status,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// When it became pending.
    pub queued_at: Option<DateTime<Utc>>,
    /// Start.
    pub started_at: Option<DateTime<Utc>>,
    /// End.
    pub finished_at: Option<DateTime<Utc>>,
    /// The log so far.
    pub trace: Vec<u8>,
    /// The artifact archive and its size.
    pub artifact: Option<(PathBuf, u64)>,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// Replaced by a retry.
    pub retried: bool,
    /// Earlier attempts of this job in the pipeline.
    pub retries_count: u64,
    /// Variables given when played.
    pub play_variables: Vec<PipelineVariable>,
    /// The running script's process group.
    pub pgid: Option<u32>,
    /// Cancel asked while running.
    pub cancel_requested: bool,
    /// The script's exit code, when it ran and failed.
    pub exit_code: Option<i32>,
    /// `coverage` found in the log.
    pub coverage: Option<f64>,
    /// Variables from its `artifacts:reports:dotenv`.
    pub dotenv: Vec<(String, String)>,
    /// Other reports kept: type, file, size.
    pub reports: Vec<(String, PathBuf, u64)>,
    /// For a bridge: the downstream pipeline it created.
    pub downstream: Option<u64>,
}

/// A merge request.
#[derive(Debug)]
pub struct MergeRequest {
    /// Global id.
    pub id: u64,
    /// Per-project number.
    pub iid: u64,
    /// Project id.
    pub project_id: u64,
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// Source branch.
    pub source_branch: String,
    /// Target branch.
    pub target_branch: String,
    /// `opened`, `merged`, `closed`.
    pub state: String,
    /// Auto-merge set.
    pub auto_merge: bool,
    /// Delete the source branch on merge (recorded, not acted on).
    pub remove_source_branch: bool,
    /// Source head when last looked at.
    pub sha: String,
    /// Merge commit.
    pub merge_commit_sha: Option<String>,
    /// Creation.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Merge time.
    pub merged_at: Option<DateTime<Utc>>,
    /// The source head's commit, for the hook's `last_commit` (when it could be read).
    pub last_commit: Option<CommitInfo>,
    /// Who opened it.
    pub author_id: u64,
    /// Who merged it or set it to merge.
    pub merge_user_id: Option<u64>,
}

/// One logged delivery (what `GET /hooks/:id/events` lists, and what a resend repeats).
#[derive(Debug, Clone)]
pub struct DeliveryLog {
    /// Log id.
    pub id: u64,
    /// When it was logged (after the answer). GitLab lists the past 7 days
    /// (`WebHookLog::MAX_RECENT_DAYS`).
    pub created_at: DateTime<Utc>,
    /// URL.
    pub url: String,
    /// `pipeline_hooks`, `job_hooks`, ...
    pub trigger: String,
    /// The event kind (`X-Gitlab-Event` of a resend).
    pub kind: EventKind,
    /// Headers sent, token redacted.
    pub request_headers: BTreeMap<String, String>,
    /// The `Idempotency-Key` (= `webhook-id`) it was sent with; a resend reuses it.
    pub idempotency_key: String,
    /// Body sent, as bytes (a resend sends exactly these).
    pub body: Arc<Vec<u8>>,
    /// Body sent, as JSON (`request_data`).
    pub request_data: Value,
    /// The HTTP status as text (`"200"`, as GitLab's string column holds it), or `internal error`
    /// when no answer came (connection failure, timeout).
    pub response_status: String,
    /// Response body (first 8 KB); empty for an internal error, as GitLab's `InternalErrorResponse`.
    pub response_body: String,
    /// Seconds.
    pub execution_duration: f64,
}

impl DeliveryLog {
    /// The status as a number, when an HTTP answer came.
    pub fn status_code(&self) -> Option<u16> {
        self.response_status.parse().ok()
    }
}

/// A project hook or a group hook.
#[derive(Debug)]
pub struct Hook {
    /// Id (project and group hooks share one sequence, as in GitLab's `web_hooks` table).
    pub id: u64,
    /// The project or group it belongs to. A group hook receives the events of every project of
    /// the group and its subgroups.
    pub owner: Source,
    /// Target.
    pub url: String,
    /// Name.
    pub name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// `X-Gitlab-Token` value.
    pub token: Option<String>,
    /// `whsec_...` signing token.
    pub signing_token: Option<String>,
    /// Push events.
    pub push_events: bool,
    /// Tag push events.
    pub tag_push_events: bool,
    /// Pipeline events.
    pub pipeline_events: bool,
    /// Job events.
    pub job_events: bool,
    /// Merge request events.
    pub merge_requests_events: bool,
    /// TLS verification (recorded; loopback targets are plain HTTP).
    pub enable_ssl_verification: bool,
    /// Creation.
    pub created_at: DateTime<Utc>,
    /// Consecutive failed deliveries.
    pub recent_failures: u32,
    /// Temporarily disabled until then.
    pub disabled_until: Option<DateTime<Utc>>,
    /// Delivery log, newest last.
    pub deliveries: VecDeque<DeliveryLog>,
}

/// GitLab's application rate limiter for one key and scope: a count that starts with the first
/// request and expires one interval later (`Gitlab::ApplicationRateLimiter`, Redis `INCR` +
/// `EXPIRE`). Refused requests count too.
#[derive(Debug, Default, Clone)]
pub struct RateWindow {
    /// Start of the current window.
    pub started: Option<Instant>,
    /// Requests in it.
    pub count: u32,
}

impl RateWindow {
    /// Counts a request; false when it is over `limit` in the window of `interval`.
    pub fn allow(&mut self, now: Instant, limit: u32, interval: std::time::Duration) -> bool {
        if self.started.is_none_or(|t| now.duration_since(t) >= interval) {
            self.started = Some(now);
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.count <= limit
    }
}

impl Hook {
    /// GitLab's `alert_status`.
    pub fn alert_status(&self, now: DateTime<Utc>) -> &'static str {
        if self.recent_failures > 39 {
            "disabled"
        } else if self.disabled_until.is_some_and(|t| t > now) {
            "temporarily_disabled"
        } else {
            "executable"
        }
    }
}

/// Which hook flag an event needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Pipeline Hook.
    Pipeline,
    /// Job Hook.
    Job,
    /// Merge Request Hook.
    MergeRequest,
    /// Push Hook.
    Push,
}

impl EventKind {
    /// `X-Gitlab-Event`.
    pub fn header(self) -> &'static str {
        match self {
            Self::Pipeline => "Pipeline Hook",
            Self::Job => "Job Hook",
            Self::MergeRequest => "Merge Request Hook",
            Self::Push => "Push Hook",
        }
    }

    /// The delivery log's `trigger`.
    pub fn trigger(self) -> &'static str {
        match self {
            Self::Pipeline => "pipeline_hooks",
            Self::Job => "job_hooks",
            Self::MergeRequest => "merge_request_hooks",
            Self::Push => "push_hooks",
        }
    }

    /// Whether `hook` subscribes to this kind.
    pub fn wanted_by(self, hook: &Hook) -> bool {
        match self {
            Self::Pipeline => hook.pipeline_events,
            Self::Job => hook.job_events,
            Self::MergeRequest => hook.merge_requests_events,
            Self::Push => hook.push_events,
        }
    }
}

/// A webhook payload to deliver.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The project whose hooks receive it.
    pub project_id: u64,
    /// The kind.
    pub kind: EventKind,
    /// The body.
    pub body: Value,
}

/// What a change asks the caller to do once the lock is released.
#[derive(Debug, Default)]
#[must_use]
pub struct Effects {
    /// Jobs that became pending: start their runners.
    pub start: Vec<u64>,
    /// Webhooks to send.
    pub events: Vec<Outgoing>,
    /// Pipelines that just succeeded: check auto-merges.
    pub succeeded: Vec<u64>,
    /// Delayed jobs now `scheduled`: make them pending after this long.
    pub delayed: Vec<(u64, std::time::Duration)>,
    /// Bridge jobs that became pending: create their downstream pipelines.
    pub bridges: Vec<u64>,
}

impl Effects {
    /// Adds another change's effects.
    pub fn merge(&mut self, other: Effects) {
        self.start.extend(other.start);
        self.events.extend(other.events);
        self.succeeded.extend(other.succeeded);
        self.delayed.extend(other.delayed);
        self.bridges.extend(other.bridges);
    }
}

/// Everything the sim knows.
#[derive(Debug, Default)]
pub struct State {
    /// Projects by id - 1.
    pub projects: Vec<Project>,
    /// Pipelines by id.
    pub pipelines: BTreeMap<u64, Pipeline>,
    /// Jobs by id.
    pub jobs: BTreeMap<u64, Job>,
    /// Merge requests by id.
    pub merge_requests: BTreeMap<u64, MergeRequest>,
    /// Hooks by id.
    pub hooks: BTreeMap<u64, Hook>,
    /// Last id handed out, per kind.
    pub last_id: LastIds,
    /// Pipeline creations in the last minute, per project.
    pub recent_creations: HashMap<u64, VecDeque<Instant>>,
    /// Resend requests (`web_hook_event_resend`: 5 per minute), per project or group and user.
    pub resend_limits: HashMap<(Source, u64), RateWindow>,
    /// Users, groups and memberships.
    pub access: Directory,
    /// Webhook calls in the current minute, per top-level group (`web_hook_calls`).
    pub hook_calls: HashMap<u64, RateWindow>,
    /// Deliveries dropped by the per-namespace rate limit, per top-level group path.
    pub hook_rate_limited: BTreeMap<String, u64>,
}

/// Id counters.
#[derive(Debug, Default)]
pub struct LastIds {
    /// Pipelines.
    pub pipeline: u64,
    /// Jobs.
    pub job: u64,
    /// Merge requests.
    pub merge_request: u64,
    /// Hooks.
    pub hook: u64,
    /// Delivery log entries.
    pub delivery: u64,
}

/// Who creates a pipeline, and for a child pipeline where it comes from.
#[derive(Debug, Clone, Copy)]
pub struct PipelineOrigin {
    /// The parent pipeline and the bridge job that triggered it.
    pub parent: Option<(u64, u64)>,
    /// The creating user.
    pub user_id: u64,
}

/// Renders webhook bodies; implemented in `render.rs`, passed in so state rules stay free of
/// presentation.
pub trait Payloads {
    /// A Pipeline Hook body for the pipeline as it is now.
    fn pipeline_hook(&self, state: &State, pipeline: &Pipeline) -> Value;
    /// A Job Hook body for the job as it is now.
    fn job_hook(&self, state: &State, job: &Job) -> Value;
}

impl State {
    /// The project with this id or `group/name` path.
    pub fn project(&self, key: &str) -> Option<&Project> {
        match key.parse::<u64>() {
            Ok(id) => self.projects.iter().find(|p| p.id == id),
            Err(_) => self.projects.iter().find(|p| p.path == key.trim_matches('/')),
        }
    }

    /// The jobs of a pipeline that count: the latest attempt of each name.
    pub fn latest_jobs(&self, pipeline_id: u64) -> Vec<&Job> {
        let Some(p) = self.pipelines.get(&pipeline_id) else { return Vec::new() };
        p.jobs.iter().filter_map(|id| self.jobs.get(id)).filter(|j| !j.retried).collect()
    }

    /// Creates a pipeline with one `created` job per configured job, then starts what can start.
    #[allow(clippy::too_many_arguments)]
    pub fn create_pipeline(
        &mut self,
        render: &dyn Payloads,
        project_id: u64,
        git_ref: &str,
        resolved_tag: bool,
        commit: CommitInfo,
        source: &str,
        variables: Vec<PipelineVariable>,
        config: Arc<CiConfig>,
        user_id: u64,
    ) -> (u64, Effects) {
        self.create_pipeline_with(
            render,
            project_id,
            git_ref,
            resolved_tag,
            commit,
            source,
            variables,
            config,
            PipelineOrigin { parent: None, user_id },
        )
    }

    /// [`State::create_pipeline`] for a child pipeline too: `origin` says who creates it and, for
    /// a child, the parent pipeline and the bridge job that triggered it.
    #[allow(clippy::too_many_arguments)]
    pub fn create_pipeline_with(
        &mut self,
        render: &dyn Payloads,
        project_id: u64,
        git_ref: &str,
        resolved_tag: bool,
        commit: CommitInfo,
        source: &str,
        variables: Vec<PipelineVariable>,
        config: Arc<CiConfig>,
        origin: PipelineOrigin,
    ) -> (u64, Effects) {
        let PipelineOrigin { parent, user_id } = origin;
        let now = Utc::now();
        self.last_id.pipeline += 1;
        let id = self.last_id.pipeline;
        let project = &mut self.projects[usize::try_from(project_id - 1).unwrap_or(0)];
        let iid = project.next_pipeline_iid;
        project.next_pipeline_iid += 1;
        let mut job_ids = Vec::new();
        for spec in &config.jobs {
            self.last_id.job += 1;
            let job_id = self.last_id.job;
            job_ids.push(job_id);
            self.jobs.insert(job_id, Job::new(job_id, id, project_id, Arc::new(spec.clone()), now, 0));
        }
        self.pipelines.insert(
            id,
            Pipeline {
                id,
                iid,
                project_id,
                git_ref: git_ref.to_owned(),
                tag: resolved_tag,
                sha: commit.sha.clone(),
                commit,
                source: source.to_owned(),
                status: Status::Created,
                variables,
                created_at: now,
                updated_at: now,
                started_at: None,
                finished_at: None,
                jobs: job_ids.clone(),
                parent,
                name: config.name.clone(),
                config,
                user_id,
            },
        );
        let mut fx = Effects::default();
        // GitLab announces the new pipeline and each job as `created`.
        fx.events.push(self.pipeline_event(render, id));
        for job_id in job_ids {
            if !self.jobs[&job_id].spec.is_bridge() {
                fx.events.push(self.job_event(render, job_id));
            }
        }
        fx.merge(self.advance(render, id));
        (id, fx)
    }

    fn pipeline_event(&self, render: &dyn Payloads, id: u64) -> Outgoing {
        let p = &self.pipelines[&id];
        Outgoing { project_id: p.project_id, kind: EventKind::Pipeline, body: render.pipeline_hook(self, p) }
    }

    fn job_event(&self, render: &dyn Payloads, id: u64) -> Outgoing {
        let j = &self.jobs[&id];
        Outgoing { project_id: j.project_id, kind: EventKind::Job, body: render.job_hook(self, j) }
    }

    /// Sets a job's status (with its timestamps) and announces it. No-op if unchanged.
    pub fn set_job_status(&mut self, render: &dyn Payloads, job_id: u64, status: Status) -> Effects {
        let mut fx = Effects::default();
        let Some(job) = self.jobs.get_mut(&job_id) else { return fx };
        if job.status == status {
            return fx;
        }
        let now = Utc::now();
        match status {
            Status::Pending => job.queued_at = Some(now),
            Status::Running => job.started_at = Some(now),
            ref s if s.is_completed() => job.finished_at = Some(now),
            _ => {}
        }
        job.status = status;
        let pipeline_id = job.pipeline_id;
        // Every job transition touches the pipeline's `updated_at`, even when the pipeline's own
        // status stays the same. Whether GitLab writes the pipeline row then is not established
        // (its status update is a no-op for an unchanged status): this is the conservative choice,
        // so `updated_after` never misses a pipeline whose jobs moved. Code that must also work on
        // GitLab should not rely on it for job-only changes.
        if let Some(p) = self.pipelines.get_mut(&pipeline_id) {
            p.updated_at = now;
        }
        // GitLab sends Job Hooks for builds only, not for bridges.
        if !self.jobs[&job_id].spec.is_bridge() {
            fx.events.push(self.job_event(render, job_id));
        }
        fx
    }

    /// Moves a pipeline forward after any change: decides which `created` jobs can run, are
    /// skipped, or wait for a person; queues the ones that run; recomputes the pipeline's status.
    pub fn advance(&mut self, render: &dyn Payloads, pipeline_id: u64) -> Effects {
        let mut fx = Effects::default();
        let Some(pipeline) = self.pipelines.get(&pipeline_id) else { return fx };
        let stages = pipeline.config.stages.clone();
        loop {
            let latest = self.latest_jobs(pipeline_id);
            let mut decisions = Vec::new();
            for job in latest.iter().filter(|j| j.status == Status::Created) {
                let my_stage = stages.iter().position(|s| *s == job.spec.stage);
                let deps: Vec<&&Job> = match &job.spec.needs {
                    Some(needs) => latest.iter().filter(|d| needs.contains(&d.spec.name)).collect(),
                    None => {
                        latest.iter().filter(|d| stages.iter().position(|s| *s == d.spec.stage) < my_stage).collect()
                    }
                };
                // A manual job that may fail does not hold anything up; one that may not, does.
                let waiting = deps
                    .iter()
                    .any(|d| !(d.status.is_completed() || (d.status == Status::Manual && d.failure_allowed())));
                if waiting {
                    continue;
                }
                let failed = deps.iter().any(|d| {
                    (d.status == Status::Failed && !d.failure_allowed())
                        || d.status == Status::Canceled
                        || (job.spec.needs.is_some() && d.status == Status::Skipped)
                });
                let next = match (job.spec.when, failed) {
                    (When::OnSuccess, false) | (When::OnFailure, true) | (When::Always, _) => Status::Pending,
                    (When::Manual, false) => Status::Manual,
                    (When::Delayed, false) => Status::Scheduled,
                    _ => Status::Skipped,
                };
                // One job at a time per resource group, across the project's pipelines.
                let next = match (&next, &job.spec.resource_group) {
                    (Status::Pending, Some(group)) if self.resource_busy(job.project_id, group, job.id) => {
                        Status::WaitingForResource
                    }
                    _ => next,
                };
                decisions.push((job.id, next));
            }
            if decisions.is_empty() {
                break;
            }
            for (job_id, status) in decisions {
                let spec = self.jobs[&job_id].spec.clone();
                if status == Status::Pending {
                    if spec.is_bridge() {
                        fx.bridges.push(job_id);
                    } else {
                        fx.start.push(job_id);
                    }
                }
                if status == Status::Scheduled {
                    fx.delayed.push((job_id, spec.start_in.unwrap_or_default()));
                }
                fx.merge(self.set_job_status(render, job_id, status));
            }
        }
        fx.merge(self.refresh_pipeline_status(render, pipeline_id));
        fx
    }

    /// Whether another job of the project holds `group`.
    fn resource_busy(&self, project_id: u64, group: &str, except: u64) -> bool {
        self.jobs.values().any(|j| {
            j.id != except
                && j.project_id == project_id
                && j.spec.resource_group.as_deref() == Some(group)
                && matches!(j.status, Status::Pending | Status::Running | Status::Canceling)
        })
    }

    /// Starts the oldest job waiting for each resource group of the project that is free now.
    pub fn wake_waiting(&mut self, render: &dyn Payloads, project_id: u64) -> Effects {
        let mut fx = Effects::default();
        let waiting: Vec<(u64, String)> = self
            .jobs
            .values()
            .filter(|j| j.project_id == project_id && j.status == Status::WaitingForResource)
            .filter_map(|j| j.spec.resource_group.clone().map(|g| (j.id, g)))
            .collect();
        for (job_id, group) in waiting {
            if self.resource_busy(project_id, &group, job_id) {
                continue;
            }
            let pipeline_id = self.jobs[&job_id].pipeline_id;
            if self.jobs[&job_id].spec.is_bridge() {
                fx.bridges.push(job_id);
            } else {
                fx.start.push(job_id);
            }
            fx.merge(self.set_job_status(render, job_id, Status::Pending));
            fx.merge(self.refresh_pipeline_status(render, pipeline_id));
        }
        fx
    }

    /// Replaces job `old` by a new `created` attempt (a retry: GitLab gives it a new id) and
    /// announces it; returns the new id.
    pub fn clone_job(&mut self, render: &dyn Payloads, old: u64, fx: &mut Effects) -> u64 {
        self.last_id.job += 1;
        let new_id = self.last_id.job;
        let prev = self.jobs.get_mut(&old).expect("the job exists");
        prev.retried = true;
        let job =
            Job::new(new_id, prev.pipeline_id, prev.project_id, prev.spec.clone(), Utc::now(), prev.retries_count + 1);
        let pipeline_id = job.pipeline_id;
        self.jobs.insert(new_id, job);
        if let Some(p) = self.pipelines.get_mut(&pipeline_id) {
            p.jobs.push(new_id);
            p.updated_at = Utc::now();
        }
        if !self.jobs[&new_id].spec.is_bridge() {
            fx.events.push(self.job_event(render, new_id));
        }
        new_id
    }

    /// Recomputes a pipeline's status from its latest jobs, and announces a change.
    pub fn refresh_pipeline_status(&mut self, render: &dyn Payloads, pipeline_id: u64) -> Effects {
        let mut fx = Effects::default();
        let latest = self.latest_jobs(pipeline_id);
        let status = composite_status(&latest);
        let any_started = latest.iter().any(|j| j.started_at.is_some());
        let Some(p) = self.pipelines.get_mut(&pipeline_id) else { return fx };
        if p.status == status {
            return fx;
        }
        let now = Utc::now();
        p.status = status.clone();
        p.updated_at = now;
        if any_started && p.started_at.is_none() {
            p.started_at = Some(now);
        }
        if status.is_completed() {
            p.finished_at = Some(now);
            if status == Status::Success {
                fx.succeeded.push(pipeline_id);
            }
        } else {
            p.finished_at = None;
        }
        fx.events.push(self.pipeline_event(render, pipeline_id));
        // A bridge with `strategy: depend` follows its child pipeline.
        let parent = self.pipelines.get(&pipeline_id).and_then(|p| p.parent);
        if let Some((parent_id, bridge_id)) = parent
            && self.jobs.get(&bridge_id).is_some_and(|b| b.spec.trigger.as_ref().is_some_and(|t| t.depend))
        {
            let bridge_status = match &status {
                Status::Success => Some(Status::Success),
                Status::Failed => Some(Status::Failed),
                Status::Canceled => Some(Status::Canceled),
                Status::Skipped => Some(Status::Skipped),
                Status::Running | Status::Pending => Some(Status::Running),
                Status::Manual => Some(Status::Manual),
                _ => None,
            };
            if let Some(bs) = bridge_status {
                if bs == Status::Failed
                    && let Some(b) = self.jobs.get_mut(&bridge_id)
                {
                    b.failure_reason = Some("downstream_pipeline_failed".into());
                }
                fx.merge(self.set_job_status(render, bridge_id, bs));
                fx.merge(self.advance(render, parent_id));
            }
        }
        fx
    }
}

impl Job {
    /// Whether this job's failure is allowed: `allow_failure: true`, or an exit code listed in
    /// `allow_failure:exit_codes`.
    pub fn failure_allowed(&self) -> bool {
        self.spec.allow_failure
            || (self.status == Status::Failed
                && self.exit_code.is_some_and(|c| self.spec.allow_failure_exit_codes.contains(&c)))
    }

    /// A new `created` job.
    pub fn new(
        id: u64,
        pipeline_id: u64,
        project_id: u64,
        spec: Arc<JobSpec>,
        now: DateTime<Utc>,
        retries: u64,
    ) -> Self {
        Self {
            id,
            pipeline_id,
            project_id,
            spec,
            status: Status::Created,
            created_at: now,
            queued_at: None,
            started_at: None,
            finished_at: None,
            trace: Vec::new(),
            artifact: None,
            failure_reason: None,
            retried: false,
            retries_count: retries,
            play_variables: Vec::new(),
            pgid: None,
            cancel_requested: false,
            exit_code: None,
            coverage: None,
            dotenv: Vec::new(),
            reports: Vec::new(),
            downstream: None,
        }
    }

    /// Seconds it ran.
    pub fn duration(&self) -> Option<f64> {
        let start = self.started_at?;
        let end = self.finished_at.unwrap_or_else(Utc::now);
        Some((end - start).num_milliseconds() as f64 / 1000.0)
    }

    /// Seconds it waited for a runner.
    pub fn queued_duration(&self) -> Option<f64> {
        let queued = self.queued_at?;
        let end = self.started_at.unwrap_or_else(Utc::now);
        Some((end - queued).num_milliseconds() as f64 / 1000.0)
    }
}

/// A pipeline's status from its jobs', after GitLab's composite status: active beats everything,
/// then a job waiting for a person, then the worst completed outcome. Allowed failures count as
/// success ("passed with warnings").
pub fn composite_status(jobs: &[&Job]) -> Status {
    if jobs.is_empty() {
        return Status::Skipped;
    }
    let any = |f: &dyn Fn(&Job) -> bool| jobs.iter().any(|j| f(j));
    if any(&|j| j.status == Status::Running || j.status == Status::Canceling) {
        return Status::Running;
    }
    if any(&|j| j.status == Status::WaitingForResource) && !any(&|j| j.status == Status::Pending) {
        let progressed = any(&|j| j.status.is_completed() && j.status != Status::Skipped);
        return if progressed { Status::Running } else { Status::WaitingForResource };
    }
    if any(&|j| j.status == Status::Pending) {
        let progressed = any(&|j| j.status.is_completed() && j.status != Status::Skipped);
        return if progressed { Status::Running } else { Status::Pending };
    }
    if any(&|j| j.status == Status::Manual && !j.failure_allowed()) {
        return Status::Manual;
    }
    if any(&|j| j.status == Status::Scheduled) {
        return Status::Scheduled;
    }
    if any(&|j| j.status == Status::Created) {
        return if any(&|j| j.status.is_completed()) { Status::Running } else { Status::Created };
    }
    if any(&|j| j.status == Status::Failed && !j.failure_allowed()) {
        return Status::Failed;
    }
    if any(&|j| j.status == Status::Canceled) {
        return Status::Canceled;
    }
    if jobs.iter().all(|j| j.status == Status::Skipped || j.status == Status::Manual) {
        return Status::Skipped;
    }
    Status::Success
}
