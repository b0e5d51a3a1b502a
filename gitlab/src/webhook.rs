//! GitLab webhook payloads, parsed from the `X-Gitlab-Event` header and the raw body into
//! [`WebhookEvent`].
//!
//! The body's `object_kind` is the primary type key (FACTS §1.3); the header is the fallback and a
//! cross-check. Events cloudci does not model are kept whole as [`WebhookEvent::Other`], never
//! rejected.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::types::{Extra, PipelineVariable, Status, Timestamp};
use crate::{JobId, MergeRequestIid, PipelineId, ProjectId, UserId};

/// A parsed webhook delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookEvent {
    /// `Pipeline Hook`: a pipeline's status changed.
    Pipeline(Box<PipelineEvent>),
    /// `Job Hook` (`object_kind: "build"`): a job's status changed.
    Job(Box<JobEvent>),
    /// `Merge Request Hook`.
    MergeRequest(Box<MergeRequestEvent>),
    /// `Push Hook`.
    Push(Box<PushEvent>),
    /// `Tag Push Hook` (same shape as a push).
    TagPush(Box<PushEvent>),
    /// `Deployment Hook`.
    Deployment(Box<DeploymentEvent>),
    /// Any other event, kept whole.
    Other {
        /// The `X-Gitlab-Event` header, if any.
        event: Option<String>,
        /// The body's `object_kind`, if any.
        object_kind: Option<String>,
        /// The body.
        body: Value,
    },
}

/// Why a delivery could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookParseError {
    /// The body is not JSON.
    #[error("body is not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The body is JSON but not an object.
    #[error("body is not a JSON object")]
    NotObject,
    /// The header and the body disagree about the event.
    #[error("X-Gitlab-Event {header:?} does not match object_kind {object_kind:?}")]
    KindMismatch {
        /// The header.
        header: String,
        /// The body's `object_kind`.
        object_kind: String,
    },
    /// A known event is missing a field or has one of the wrong type.
    #[error("{event} payload: field `{path}`: {message}")]
    Field {
        /// The event name.
        event: &'static str,
        /// Path of the offending field, e.g. `object_attributes.status`.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// The kinds cloudci models, with their header names and `object_kind` values.
const KINDS: [(&str, &str); 6] = [
    ("Pipeline Hook", "pipeline"),
    ("Job Hook", "build"),
    ("Merge Request Hook", "merge_request"),
    ("Push Hook", "push"),
    ("Tag Push Hook", "tag_push"),
    ("Deployment Hook", "deployment"),
];

impl WebhookEvent {
    /// Parses a delivery from its `X-Gitlab-Event` header (if sent) and raw body.
    pub fn parse(event_header: Option<&str>, body: &[u8]) -> Result<Self, WebhookParseError> {
        if let Some(event) = Self::parse_direct(event_header, body) {
            return Ok(event);
        }
        let value: Value = serde_json::from_slice(body).map_err(WebhookParseError::NotJson)?;
        Self::from_value(event_header, value)
    }

    /// The happy path of [`WebhookEvent::parse`]: the typed event straight from the bytes, with
    /// no `Value` tree in between and no field-path tracking (together most of a delivery's
    /// parse time). `None` for anything unusual — a kind cloudci does not model, a header that
    /// disagrees, a field that does not decode, a repeated key — which then takes the slow path,
    /// for the same result or its precise error.
    fn parse_direct(event_header: Option<&str>, body: &[u8]) -> Option<Self> {
        let header = event_header.map(str::trim).filter(|h| !h.is_empty());
        let expected = match header {
            Some(h) => KINDS.iter().find(|(name, _)| name.eq_ignore_ascii_case(h))?.1,
            // No header: a first, cheap scan for `object_kind` (everything else is skipped).
            None => {
                #[derive(Deserialize)]
                struct Kind {
                    object_kind: String,
                }
                let kind: Kind = serde_json::from_slice(body).ok()?;
                KINDS.iter().find(|(_, k)| *k == kind.object_kind)?.1
            }
        };
        fn typed<T: DeserializeOwned>(body: &[u8], kind: &str, object_kind: impl Fn(&T) -> &str) -> Option<Box<T>> {
            let event: T = serde_json::from_slice(body).ok()?;
            (object_kind(&event) == kind).then(|| Box::new(event))
        }
        Some(match expected {
            "pipeline" => Self::Pipeline(typed(body, expected, |e: &PipelineEvent| &e.object_kind)?),
            "build" => Self::Job(typed(body, expected, |e: &JobEvent| &e.object_kind)?),
            "merge_request" => Self::MergeRequest(typed(body, expected, |e: &MergeRequestEvent| &e.object_kind)?),
            "push" => Self::Push(typed(body, expected, |e: &PushEvent| &e.object_kind)?),
            "tag_push" => Self::TagPush(typed(body, expected, |e: &PushEvent| &e.object_kind)?),
            "deployment" => Self::Deployment(typed(body, expected, |e: &DeploymentEvent| &e.object_kind)?),
            _ => return None,
        })
    }

    /// Like [`WebhookEvent::parse`], from an already decoded body.
    pub fn from_value(event_header: Option<&str>, value: Value) -> Result<Self, WebhookParseError> {
        let object_kind = value
            .as_object()
            .ok_or(WebhookParseError::NotObject)?
            .get("object_kind")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let header = event_header.map(str::trim).filter(|h| !h.is_empty());
        let from_header = header.and_then(|h| KINDS.iter().find(|(name, _)| name.eq_ignore_ascii_case(h)));
        let kind = match (&object_kind, from_header) {
            (Some(kind), Some((_, expected))) if kind != expected => {
                return Err(WebhookParseError::KindMismatch {
                    header: header.unwrap_or_default().to_owned(),
                    object_kind: kind.clone(),
                });
            }
            (Some(kind), _) => kind.as_str(),
            (None, Some((_, kind))) => kind,
            (None, None) => "",
        };
        Ok(match kind {
            "pipeline" => Self::Pipeline(decode("Pipeline Hook", value)?),
            "build" => Self::Job(decode("Job Hook", value)?),
            "merge_request" => Self::MergeRequest(decode("Merge Request Hook", value)?),
            "push" => Self::Push(decode("Push Hook", value)?),
            "tag_push" => Self::TagPush(decode("Tag Push Hook", value)?),
            "deployment" => Self::Deployment(decode("Deployment Hook", value)?),
            _ => Self::Other { event: header.map(str::to_owned), object_kind, body: value },
        })
    }

    /// The `X-Gitlab-Event` name for this event.
    pub fn event_name(&self) -> &str {
        match self {
            Self::Pipeline(_) => "Pipeline Hook",
            Self::Job(_) => "Job Hook",
            Self::MergeRequest(_) => "Merge Request Hook",
            Self::Push(_) => "Push Hook",
            Self::TagPush(_) => "Tag Push Hook",
            Self::Deployment(_) => "Deployment Hook",
            Self::Other { event, .. } => event.as_deref().unwrap_or("unknown"),
        }
    }

    /// The body as JSON, as GitLab would send it.
    pub fn to_value(&self) -> Value {
        let result = match self {
            Self::Pipeline(e) => serde_json::to_value(e),
            Self::Job(e) => serde_json::to_value(e),
            Self::MergeRequest(e) => serde_json::to_value(e),
            Self::Push(e) | Self::TagPush(e) => serde_json::to_value(e),
            Self::Deployment(e) => serde_json::to_value(e),
            Self::Other { body, .. } => Ok(body.clone()),
        };
        // Serializing these types only fails on non-string map keys, which they do not have.
        result.unwrap_or(Value::Null)
    }

    /// The project the event is about.
    pub fn project_id(&self) -> Option<ProjectId> {
        match self {
            Self::Pipeline(e) => Some(e.project.id),
            Self::Job(e) => Some(e.project_id),
            Self::MergeRequest(e) => Some(e.project.id),
            Self::Push(e) | Self::TagPush(e) => Some(e.project_id),
            Self::Deployment(e) => Some(e.project.id),
            Self::Other { body, .. } => body.pointer("/project/id").and_then(Value::as_u64).map(ProjectId),
        }
    }
}

fn decode<T: DeserializeOwned>(event: &'static str, value: Value) -> Result<Box<T>, WebhookParseError> {
    serde_path_to_error::deserialize(value).map(Box::new).map_err(|e| WebhookParseError::Field {
        event,
        path: e.path().to_string(),
        message: e.into_inner().to_string(),
    })
}

/// The project as webhooks describe it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookProject {
    /// Id.
    pub id: ProjectId,
    /// Display name.
    pub name: String,
    /// Page.
    pub web_url: String,
    /// Full path, e.g. `acme/firmware`.
    pub path_with_namespace: String,
    /// Default branch.
    #[serde(default)]
    pub default_branch: Option<String>,
    /// Everything else GitLab sent.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The user as webhooks describe them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookUser {
    /// Id.
    pub id: UserId,
    /// Display name.
    pub name: String,
    /// Login name.
    pub username: String,
    /// Everything else GitLab sent (`avatar_url`, `email`).
    #[serde(flatten)]
    pub extra: Extra,
}

/// A commit as pipeline and push webhooks describe it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookCommit {
    /// Full SHA.
    pub id: String,
    /// Message.
    pub message: String,
    /// First line.
    #[serde(default)]
    pub title: Option<String>,
    /// Commit time.
    #[serde(default)]
    pub timestamp: Option<Timestamp>,
    /// Page.
    pub url: String,
    /// Everything else GitLab sent (`author`, `added`, `modified`, `removed`).
    #[serde(flatten)]
    pub extra: Extra,
}

/// `Pipeline Hook`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineEvent {
    /// `pipeline`.
    pub object_kind: String,
    /// The pipeline.
    pub object_attributes: PipelineAttributes,
    /// The merge request, for merge request pipelines; `null` otherwise.
    #[serde(default)]
    pub merge_request: Option<Value>,
    /// Who triggered it.
    #[serde(default)]
    pub user: Option<HookUser>,
    /// The project.
    pub project: HookProject,
    /// The commit.
    #[serde(default)]
    pub commit: Option<HookCommit>,
    /// The latest jobs.
    #[serde(default)]
    pub builds: Vec<PipelineEventBuild>,
    /// Sent only for downstream pipelines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_pipeline: Option<Value>,
    /// Everything else GitLab sent.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `object_attributes` of a pipeline event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineAttributes {
    /// Pipeline id.
    pub id: PipelineId,
    /// Per-project number.
    #[serde(default)]
    pub iid: Option<u64>,
    /// Name, `null` when unnamed.
    #[serde(default)]
    pub name: Option<String>,
    /// Branch or tag.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Whether `ref` is a tag.
    #[serde(default)]
    pub tag: bool,
    /// Commit SHA.
    pub sha: String,
    /// Previous head; all zeros for a new ref.
    #[serde(default)]
    pub before_sha: Option<String>,
    /// What started it (open-ended).
    #[serde(default)]
    pub source: Option<String>,
    /// Status.
    pub status: Status,
    /// Display text such as `passed`; not the same as `status`.
    #[serde(default)]
    pub detailed_status: Option<String>,
    /// Stage names.
    #[serde(default)]
    pub stages: Vec<String>,
    /// Creation time.
    #[serde(default)]
    pub created_at: Option<Timestamp>,
    /// Finish time.
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
    /// Run time in seconds.
    #[serde(default, serialize_with = "crate::types::whole_seconds")]
    pub duration: Option<f64>,
    /// Queue time in seconds.
    #[serde(default, serialize_with = "crate::types::whole_seconds")]
    pub queued_duration: Option<f64>,
    /// Pipeline variables.
    #[serde(default)]
    pub variables: Vec<PipelineVariable>,
    /// Page.
    #[serde(default)]
    pub url: Option<String>,
    /// Everything else GitLab sent (`protected_ref`, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// One job in a pipeline event's `builds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineEventBuild {
    /// Job id.
    pub id: JobId,
    /// Stage.
    pub stage: String,
    /// Name.
    pub name: String,
    /// Status.
    pub status: Status,
    /// Creation time.
    #[serde(default)]
    pub created_at: Option<Timestamp>,
    /// Start time.
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    /// Finish time.
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
    /// Run time in seconds.
    #[serde(default)]
    pub duration: Option<f64>,
    /// Queue time in seconds.
    #[serde(default)]
    pub queued_duration: Option<f64>,
    /// Set only for failed jobs.
    #[serde(default)]
    pub failure_reason: Option<String>,
    /// `on_success`, `manual`, ...
    #[serde(default)]
    pub when: Option<String>,
    /// Manual job?
    #[serde(default)]
    pub manual: bool,
    /// Failure allowed?
    #[serde(default)]
    pub allow_failure: bool,
    /// Everything else GitLab sent (`user`, `runner`, `artifacts_file`, `environment`).
    #[serde(flatten)]
    pub extra: Extra,
}

/// `Job Hook` (`object_kind: "build"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// `build`.
    pub object_kind: String,
    /// Branch or tag.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Whether `ref` is a tag.
    #[serde(default)]
    pub tag: bool,
    /// Previous head.
    #[serde(default)]
    pub before_sha: Option<String>,
    /// Commit SHA.
    pub sha: String,
    /// 0 for a first run; sent only while GitLab's `job_webhook_retries_count` flag is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries_count: Option<u64>,
    /// Job id.
    pub build_id: JobId,
    /// Job name.
    pub build_name: String,
    /// Stage.
    pub build_stage: String,
    /// Status.
    pub build_status: Status,
    /// Creation time.
    #[serde(default)]
    pub build_created_at: Option<Timestamp>,
    /// Start time.
    #[serde(default)]
    pub build_started_at: Option<Timestamp>,
    /// Finish time.
    #[serde(default)]
    pub build_finished_at: Option<Timestamp>,
    /// Run time in seconds.
    #[serde(default)]
    pub build_duration: Option<f64>,
    /// Queue time in seconds.
    #[serde(default)]
    pub build_queued_duration: Option<f64>,
    /// Failure allowed?
    #[serde(default)]
    pub build_allow_failure: bool,
    /// Failure reason (GitLab sends `unknown_failure` even for jobs that have not failed).
    #[serde(default)]
    pub build_failure_reason: Option<String>,
    /// Pipeline id.
    pub pipeline_id: PipelineId,
    /// Project id.
    pub project_id: ProjectId,
    /// `group/project`.
    pub project_name: String,
    /// Who triggered it.
    #[serde(default)]
    pub user: Option<HookUser>,
    /// Careful: `commit.id` is the pipeline id, not a SHA.
    #[serde(default)]
    pub commit: Option<JobEventCommit>,
    /// The project.
    pub project: HookProject,
    /// Sent only for downstream pipelines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_pipeline: Option<Value>,
    /// Everything else GitLab sent (`runner`, `repository`, `environment`, `*_iso` times, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// A job event's `commit`, which describes the pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEventCommit {
    /// The **pipeline** id (GitLab's naming trap).
    pub id: PipelineId,
    /// Commit SHA.
    pub sha: String,
    /// The pipeline's status.
    pub status: Status,
    /// Everything else GitLab sent.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `Merge Request Hook`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeRequestEvent {
    /// `merge_request`.
    pub object_kind: String,
    /// Who acted.
    #[serde(default)]
    pub user: Option<HookUser>,
    /// The project.
    pub project: HookProject,
    /// The merge request.
    pub object_attributes: MergeRequestAttributes,
    /// What changed: `{field: {previous, current}}`; may be empty.
    #[serde(default)]
    pub changes: Value,
    /// Everything else GitLab sent (`event_type`, `labels`, `assignees`, `reviewers`, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// `object_attributes` of a merge request event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeRequestAttributes {
    /// Global id.
    pub id: u64,
    /// Per-project number.
    pub iid: MergeRequestIid,
    /// Title.
    pub title: String,
    /// Source branch.
    pub source_branch: String,
    /// Target branch.
    pub target_branch: String,
    /// `opened`, `closed`, `merged`, `locked`.
    pub state: String,
    /// `open`, `close`, `reopen`, `update`, `merge`, ... (absent on some system events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The head pipeline.
    #[serde(default)]
    pub head_pipeline_id: Option<PipelineId>,
    /// The merge commit, once merged.
    #[serde(default)]
    pub merge_commit_sha: Option<String>,
    /// Auto-merge set?
    #[serde(default)]
    pub merge_when_pipeline_succeeds: bool,
    /// Page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Everything else GitLab sent.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `Push Hook` and `Tag Push Hook`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushEvent {
    /// `push` or `tag_push`.
    pub object_kind: String,
    /// Old head; all zeros for a new ref.
    pub before: String,
    /// New head; all zeros when the ref was deleted.
    pub after: String,
    /// `refs/heads/<branch>` or `refs/tags/<tag>`.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The commit checked out.
    #[serde(default)]
    pub checkout_sha: Option<String>,
    /// Pusher's id.
    #[serde(default)]
    pub user_id: Option<UserId>,
    /// Pusher's login.
    #[serde(default)]
    pub user_username: Option<String>,
    /// Project id.
    pub project_id: ProjectId,
    /// The project.
    pub project: HookProject,
    /// The newest commits (at most 20).
    #[serde(default)]
    pub commits: Vec<HookCommit>,
    /// The real number of commits.
    #[serde(default)]
    pub total_commits_count: u64,
    /// Everything else GitLab sent.
    #[serde(flatten)]
    pub extra: Extra,
}

impl PushEvent {
    /// The branch name, for a branch push.
    pub fn branch(&self) -> Option<&str> {
        self.git_ref.strip_prefix("refs/heads/")
    }

    /// True when the push deleted the ref.
    pub fn is_deletion(&self) -> bool {
        !self.after.is_empty() && self.after.bytes().all(|b| b == b'0')
    }
}

/// `Deployment Hook`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentEvent {
    /// `deployment`.
    pub object_kind: String,
    /// `running`, `success`, `failed`, `canceled`.
    pub status: String,
    /// When the status changed.
    #[serde(default)]
    pub status_changed_at: Option<Timestamp>,
    /// Deployment id.
    pub deployment_id: u64,
    /// The job that deployed.
    #[serde(default)]
    pub deployable_id: Option<JobId>,
    /// Environment name.
    pub environment: String,
    /// The project.
    pub project: HookProject,
    /// Everything else GitLab sent.
    #[serde(flatten)]
    pub extra: Extra,
}
