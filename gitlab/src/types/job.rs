use serde::{Deserialize, Serialize};

use super::{Extra, Status, Timestamp, User};
use crate::{JobId, PipelineId, ProjectId};

/// A job (`GET /projects/:id/jobs/:job_id`, pipeline job lists, play/retry/cancel responses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Global id.
    pub id: JobId,
    /// Job name from `.gitlab-ci.yml`.
    pub name: String,
    /// Stage name.
    pub stage: String,
    /// Current status.
    pub status: Status,
    /// Branch or tag.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Whether `ref` is a tag.
    #[serde(default)]
    pub tag: bool,
    /// Coverage percentage.
    #[serde(default)]
    pub coverage: Option<f64>,
    /// Whether a failure of this job lets the pipeline pass.
    #[serde(default)]
    pub allow_failure: bool,
    /// Creation time.
    pub created_at: Option<Timestamp>,
    /// Start time.
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    /// Finish time.
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
    /// When its log and artifacts were erased.
    #[serde(default)]
    pub erased_at: Option<Timestamp>,
    /// Run time in seconds.
    #[serde(default)]
    pub duration: Option<f64>,
    /// Time queued in seconds.
    #[serde(default)]
    pub queued_duration: Option<f64>,
    /// Who started it.
    #[serde(default)]
    pub user: Option<User>,
    /// The commit it ran on.
    #[serde(default)]
    pub commit: Option<JobCommit>,
    /// The pipeline it belongs to (absent in the play/retry/cancel responses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<JobPipeline>,
    /// The job's page.
    pub web_url: String,
    /// Stored artifacts (archive, trace, reports).
    #[serde(default)]
    pub artifacts: Vec<JobArtifact>,
    /// The downloadable archive, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts_file: Option<ArtifactsFile>,
    /// When the artifacts expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts_expire_at: Option<Timestamp>,
    /// Runner tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_list: Option<Vec<String>>,
    /// Why it failed, for failed jobs (open-ended: `script_failure`, `runner_system_failure`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// Everything else GitLab sent (`runner`, `runner_manager`, `project`, `archived`, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// The commit a job ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCommit {
    /// Full SHA.
    pub id: String,
    /// Abbreviated SHA.
    #[serde(default)]
    pub short_id: Option<String>,
    /// First line of the message.
    #[serde(default)]
    pub title: Option<String>,
    /// Everything else GitLab sent.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The pipeline a job belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobPipeline {
    /// Pipeline id.
    pub id: PipelineId,
    /// Project id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<ProjectId>,
    /// Branch or tag.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Commit SHA.
    pub sha: String,
    /// The pipeline's status when the job was read.
    pub status: Status,
    /// Everything else GitLab sent.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One stored artifact of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobArtifact {
    /// `archive`, `metadata`, `trace`, `junit`, ...
    pub file_type: String,
    /// Size in bytes.
    pub size: u64,
    /// File name.
    pub filename: String,
    /// `zip`, `gzip`, `raw`, ...
    #[serde(default)]
    pub file_format: Option<String>,
}

/// A job's downloadable archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactsFile {
    /// File name, usually `artifacts.zip`.
    pub filename: Option<String>,
    /// Size in bytes.
    pub size: Option<u64>,
}

/// Which jobs to list (`scope[]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobScope {
    /// `created`
    Created,
    /// `pending`
    Pending,
    /// `running`
    Running,
    /// `failed`
    Failed,
    /// `success`
    Success,
    /// `canceled`
    Canceled,
    /// `skipped`
    Skipped,
    /// `waiting_for_resource`
    WaitingForResource,
    /// `manual`
    Manual,
}

impl JobScope {
    /// GitLab's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Failed => "failed",
            Self::Success => "success",
            Self::Canceled => "canceled",
            Self::Skipped => "skipped",
            Self::WaitingForResource => "waiting_for_resource",
            Self::Manual => "manual",
        }
    }
}
