//! Build events: what subscribers receive, and how a webhook delivery becomes them.

use cloudci_gitlab::types::Status;
use cloudci_gitlab::webhook::WebhookEvent;
use serde::{Deserialize, Serialize};

use crate::hook_facts::{JOB_HOOK, JobHook, PipelineHook};

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A pipeline's status changed.
    Pipeline,
    /// A job's status changed.
    Job,
    /// A merge request was opened, updated, merged, ...
    MergeRequest,
    /// A branch or tag moved.
    Push,
    /// Anything else GitLab sent.
    Other,
}

impl EventKind {
    /// The SSE `event:` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pipeline => "pipeline",
            Self::Job => "job",
            Self::MergeRequest => "merge_request",
            Self::Push => "push",
            Self::Other => "other",
        }
    }
}

/// Where an observation came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventSource {
    /// A webhook delivery.
    Webhook,
    /// Polling GitLab's API (the reconciler).
    Poll,
}

/// One accepted change, as the event log stores it and subscribers receive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildEvent {
    /// Position in the log: strictly increasing, never reused (0 before it is logged).
    pub seq: u64,
    /// What it is about.
    pub kind: EventKind,
    /// GitLab project id.
    pub project_id: u64,
    /// Project path, e.g. `acme/firmware`.
    pub project: Option<String>,
    /// Branch or tag (for pushes, without `refs/heads/`).
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// Commit.
    pub sha: Option<String>,
    /// Pipeline id.
    pub pipeline_id: Option<u64>,
    /// Job id.
    pub job_id: Option<u64>,
    /// Job name.
    pub job_name: Option<String>,
    /// Job stage.
    pub stage: Option<String>,
    /// New status (pipelines, jobs), or the merge request's state.
    pub status: Option<String>,
    /// The status before this change, when one was known.
    pub previous_status: Option<String>,
    /// Why a job failed.
    pub failure_reason: Option<String>,
    /// Merge request iid.
    pub merge_request_iid: Option<u64>,
    /// Merge request action (`open`, `merge`, ...).
    pub action: Option<String>,
    /// The object's page.
    pub url: Option<String>,
    /// True when this reopens a finished pipeline because jobs were retried.
    pub retry: bool,
    /// The GitLab event name (`Pipeline Hook`, ...).
    pub gitlab_event: String,
    /// Webhook or poll.
    pub source: EventSource,
    /// When cloudci accepted it (RFC 3339).
    pub received_at: String,
    /// Jobs: whether it may fail without failing its pipeline, when the delivery said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_failure: Option<bool>,
    /// Jobs: whether it started (so it has a log), when the delivery said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<bool>,
    /// Jobs: whether it has an artifact archive. Pipeline Hooks (`builds[].artifacts_file`)
    /// and API reads say; Job Hooks do not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<bool>,
}

/// Now as `received_at` shows it (RFC 3339, milliseconds, UTC). The text is kept per thread for
/// the millisecond it names: a delivery's events (a pipeline and each of its jobs) share one, and
/// chrono's formatter was a visible share of an ingest profile.
fn now_text() -> String {
    thread_local! {
        static LAST: std::cell::RefCell<(i64, String)> = const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    let now = chrono::Utc::now();
    let ms = now.timestamp_millis();
    LAST.with_borrow_mut(|(at, text)| {
        if *at != ms {
            *at = ms;
            *text = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        }
        text.clone()
    })
}

impl BuildEvent {
    /// An event with only its kind, project and origin set (`seq` 0 until it is logged).
    pub fn new(kind: EventKind, project_id: u64, gitlab_event: &str, source: EventSource) -> Self {
        Self {
            seq: 0,
            kind,
            project_id,
            project: None,
            git_ref: None,
            sha: None,
            pipeline_id: None,
            job_id: None,
            job_name: None,
            stage: None,
            status: None,
            previous_status: None,
            failure_reason: None,
            merge_request_iid: None,
            action: None,
            url: None,
            retry: false,
            gitlab_event: gitlab_event.to_owned(),
            source,
            received_at: now_text(),
            allow_failure: None,
            started: None,
            artifacts: None,
        }
    }

    /// The status as GitLab's type.
    pub fn status(&self) -> Option<Status> {
        self.status.as_deref().map(Status::parse)
    }
}

/// A candidate change, before the state machine judges it: the event it would become, plus the
/// evidence the state machine needs.
///
/// A delivery's observations are judged together: its job observations (id, name, status) are
/// the evidence for its pipeline observation, which is how the state machine tells a retry (a
/// new id for a known job name) from a late or reordered delivery (the `tracker` module).
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The event, `seq` 0.
    pub event: BuildEvent,
    /// The highest job id the observation mentions (a job's own id). Informational: the state
    /// machine reads the jobs from the delivery's job observations instead, since ids alone cannot
    /// tell a retried job from a sibling.
    pub max_job_id: u64,
}

impl Observation {
    /// Whether this is a pipeline status read from a Job Hook's `commit.status`: rendered when
    /// that job changed, so weaker evidence than a Pipeline Hook or a poll (see
    /// the `tracker` module).
    pub fn is_weak(&self) -> bool {
        self.event.kind == EventKind::Pipeline && self.event.gitlab_event == JOB_HOOK
    }
}

/// Turns a parsed delivery into observations: a pipeline event yields the pipeline and each of
/// its jobs (so a lost job delivery is made up for); a job event yields the job and its pipeline
/// (`commit.status` is the pipeline's status).
pub fn observe(event: &WebhookEvent, source: EventSource) -> Vec<Observation> {
    let name = event.event_name().to_owned();
    let mut out = Vec::new();
    match event {
        // Through the facts the receiver reads from a delivery's bytes (`hook_facts.rs`).
        WebhookEvent::Pipeline(p) => {
            return crate::hook_facts::pipeline_observations(&PipelineHook::from(&**p), source);
        }
        WebhookEvent::Job(j) => return crate::hook_facts::job_observations(&JobHook::from(&**j), source),
        WebhookEvent::MergeRequest(m) => {
            let a = &m.object_attributes;
            let mut e = BuildEvent::new(EventKind::MergeRequest, m.project.id.0, &name, source);
            e.project = Some(m.project.path_with_namespace.clone());
            e.git_ref = Some(a.source_branch.clone());
            e.merge_request_iid = Some(a.iid.0);
            e.status = Some(a.state.clone());
            e.action = a.action.clone();
            e.pipeline_id = a.head_pipeline_id.map(|p| p.0);
            e.url = a.url.clone();
            out.push(Observation { event: e, max_job_id: 0 });
        }
        WebhookEvent::Push(p) | WebhookEvent::TagPush(p) => {
            let mut e = BuildEvent::new(EventKind::Push, p.project_id.0, &name, source);
            e.project = Some(p.project.path_with_namespace.clone());
            e.git_ref = Some(
                p.git_ref
                    .strip_prefix("refs/heads/")
                    .or_else(|| p.git_ref.strip_prefix("refs/tags/"))
                    .unwrap_or(&p.git_ref)
                    .to_owned(),
            );
            e.sha = Some(p.after.clone());
            e.status = Some(if p.is_deletion() { "deleted".into() } else { "pushed".into() });
            out.push(Observation { event: e, max_job_id: 0 });
        }
        WebhookEvent::Deployment(d) => {
            let mut e = BuildEvent::new(EventKind::Other, d.project.id.0, &name, source);
            e.project = Some(d.project.path_with_namespace.clone());
            e.status = Some(d.status.clone());
            out.push(Observation { event: e, max_job_id: 0 });
        }
        WebhookEvent::Other { body, .. } => {
            let project_id = event.project_id().map(|p| p.0).unwrap_or(0);
            let mut e = BuildEvent::new(EventKind::Other, project_id, &name, source);
            e.project = body.pointer("/project/path_with_namespace").and_then(|v| v.as_str()).map(str::to_owned);
            out.push(Observation { event: e, max_job_id: 0 });
        }
    }
    out
}
