use serde::{Deserialize, Serialize};

use super::{Extra, Status, Timestamp, User, whole_seconds};
use crate::{PipelineId, ProjectId};

/// A pipeline as listed (`GET /projects/:id/pipelines`): the short form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineBasic {
    /// Global id.
    pub id: PipelineId,
    /// Per-project number.
    #[serde(default)]
    pub iid: Option<u64>,
    /// The owning project.
    #[serde(default)]
    pub project_id: Option<ProjectId>,
    /// Current status.
    pub status: Status,
    /// What started it: `push`, `web`, `api`, `merge_request_event`, ... (open-ended).
    #[serde(default)]
    pub source: Option<String>,
    /// Branch or tag.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Commit SHA.
    pub sha: String,
    /// Pipeline name, if it has one.
    #[serde(default)]
    pub name: Option<String>,
    /// The pipeline's page.
    pub web_url: String,
    /// Creation time.
    #[serde(default)]
    pub created_at: Option<Timestamp>,
    /// Last update.
    #[serde(default)]
    pub updated_at: Option<Timestamp>,
    /// Everything else GitLab sent.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A pipeline in full (`GET /projects/:id/pipelines/:pipeline_id`, and the create response).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    /// Global id.
    pub id: PipelineId,
    /// Per-project number (absent in merge request pipeline responses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iid: Option<u64>,
    /// The owning project (absent in merge request pipeline responses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<ProjectId>,
    /// Pipeline name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Commit SHA.
    pub sha: String,
    /// Branch or tag.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Current status.
    pub status: Status,
    /// What started it (open-ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Creation time.
    pub created_at: Option<Timestamp>,
    /// Last update.
    pub updated_at: Option<Timestamp>,
    /// The pipeline's page.
    pub web_url: String,
    /// The previous head of the ref.
    #[serde(default)]
    pub before_sha: Option<String>,
    /// Whether `ref` is a tag.
    #[serde(default)]
    pub tag: bool,
    /// Configuration errors, when the pipeline could not be created properly.
    #[serde(default)]
    pub yaml_errors: Option<String>,
    /// Who started it.
    #[serde(default)]
    pub user: Option<User>,
    /// When the first job started.
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    /// When it finished.
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
    /// Commit time.
    #[serde(default)]
    pub committed_at: Option<Timestamp>,
    /// Run time in seconds.
    #[serde(default, serialize_with = "whole_seconds")]
    pub duration: Option<f64>,
    /// Time queued in seconds.
    #[serde(default, serialize_with = "whole_seconds")]
    pub queued_duration: Option<f64>,
    /// Coverage as GitLab renders it (a string such as `"30.0"`).
    #[serde(default)]
    pub coverage: Option<String>,
    /// Presentation of the status.
    #[serde(default)]
    pub detailed_status: Option<DetailedStatus>,
    /// Everything else GitLab sent.
    #[serde(flatten)]
    pub extra: Extra,
}

/// How GitLab presents a status (`detailed_status` in API pipelines).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetailedStatus {
    /// Display text, e.g. `passed`.
    pub text: String,
    /// Status group, e.g. `success`.
    pub group: String,
    /// Icon name, e.g. `status_success`.
    #[serde(default)]
    pub icon: Option<String>,
    /// Everything else GitLab sent.
    #[serde(flatten)]
    pub extra: Extra,
}

/// How a CI variable reaches the job: as an environment variable or as a file whose path is in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VariableType {
    /// `env_var`: the value is the variable (GitLab's default).
    #[default]
    EnvVar,
    /// `file`: the value is written to a file and the variable holds its path.
    File,
}

/// A pipeline variable (`{key, value, variable_type?}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PipelineVariable {
    /// Name.
    pub key: String,
    /// Value.
    pub value: String,
    /// Absent in some GitLab responses; `env_var` then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variable_type: Option<VariableType>,
}

impl PipelineVariable {
    /// An `env_var` variable.
    pub fn env(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self { key: key.into(), value: value.into(), variable_type: Some(VariableType::EnvVar) }
    }

    /// A `file` variable.
    pub fn file(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self { key: key.into(), value: value.into(), variable_type: Some(VariableType::File) }
    }
}

/// The body of `POST /projects/:id/pipeline`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CreatePipeline {
    /// Branch, tag or commit to run.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Variables for every job.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variables: Vec<PipelineVariable>,
    /// Pipeline inputs (GitLab 17.10+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<serde_json::Map<String, serde_json::Value>>,
}

impl CreatePipeline {
    /// A pipeline for `git_ref` with no variables.
    pub fn new(git_ref: impl Into<String>) -> Self {
        Self { git_ref: git_ref.into(), ..Self::default() }
    }

    /// Adds an `env_var` variable.
    pub fn variable(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.variables.push(PipelineVariable::env(key, value));
        self
    }
}
