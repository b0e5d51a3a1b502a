use serde::{Deserialize, Serialize};

use super::{Extra, Status, Timestamp, User};
use crate::{MergeRequestIid, PipelineId, ProjectId};

/// A merge request (`GET /projects/:id/merge_requests/:iid`, create and merge responses, lists).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeRequest {
    /// Global id.
    pub id: u64,
    /// Per-project number, used in URLs.
    pub iid: MergeRequestIid,
    /// Target project.
    pub project_id: ProjectId,
    /// Title.
    pub title: String,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// `opened`, `closed`, `merged`, `locked`.
    pub state: String,
    /// Source branch.
    pub source_branch: String,
    /// Target branch.
    pub target_branch: String,
    /// Head of the source branch.
    #[serde(default)]
    pub sha: Option<String>,
    /// The merge commit, once merged.
    #[serde(default)]
    pub merge_commit_sha: Option<String>,
    /// Deprecated merge status (`can_be_merged`, `checking`, ...).
    #[serde(default)]
    pub merge_status: Option<String>,
    /// Detailed merge status (`mergeable`, `ci_still_running`, ...).
    #[serde(default)]
    pub detailed_merge_status: Option<String>,
    /// Whether auto-merge is set.
    #[serde(default)]
    pub merge_when_pipeline_succeeds: bool,
    /// Draft?
    #[serde(default)]
    pub draft: bool,
    /// Author.
    #[serde(default)]
    pub author: Option<User>,
    /// The head pipeline, when there is one.
    #[serde(default)]
    pub pipeline: Option<MergeRequestPipeline>,
    /// The merge request's page.
    pub web_url: String,
    /// Creation time.
    #[serde(default)]
    pub created_at: Option<Timestamp>,
    /// Last update.
    #[serde(default)]
    pub updated_at: Option<Timestamp>,
    /// Merge time.
    #[serde(default)]
    pub merged_at: Option<Timestamp>,
    /// Everything else GitLab sent.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A merge request's head pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeRequestPipeline {
    /// Pipeline id.
    pub id: PipelineId,
    /// Commit SHA.
    pub sha: String,
    /// Ref.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Status.
    pub status: Status,
    /// Everything else GitLab sent.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The body of `POST /projects/:id/merge_requests`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CreateMergeRequest {
    /// Source branch (required).
    pub source_branch: String,
    /// Target branch (required).
    pub target_branch: String,
    /// Title (required).
    pub title: String,
    /// Description (up to 1,048,576 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Comma-separated labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    /// Delete the source branch when merged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_source_branch: Option<bool>,
    /// Squash on merge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub squash: Option<bool>,
}

/// The body of `PUT /projects/:id/merge_requests/:iid/merge`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MergeOptions {
    /// Merge when the pipeline succeeds instead of now. Sent as both `auto_merge` (GitLab 17.11+)
    /// and the deprecated `merge_when_pipeline_succeeds`: an older server ignores the parameter it
    /// does not know, and would otherwise merge at once.
    #[serde(skip)]
    pub auto_merge: bool,
    /// Merge only if the source branch head is still this SHA (409 otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha: Option<String>,
    /// Delete the source branch after merging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub should_remove_source_branch: Option<bool>,
    /// Squash the commits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub squash: Option<bool>,
    /// Merge commit message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_commit_message: Option<String>,
}
