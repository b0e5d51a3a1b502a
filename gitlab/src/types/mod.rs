//! GitLab's REST API objects.
//!
//! Every type keeps the fields cloudci reads as typed fields and everything else GitLab sent in
//! `extra`, so nothing is lost and a newer GitLab's additions never break decoding. Serializing a
//! value writes GitLab's shape back: typed fields first (a missing optional one as `null`, as GitLab
//! writes it), then `extra`.

mod branch;
mod hook;
mod job;
mod lint;
mod merge_request;
mod pipeline;
mod project;
mod status;
mod time;
mod user;

pub use branch::{Branch, BranchCommit};
pub use hook::{
    HookDelivery, HookEvent, HookEventFilter, HookEventResend, HookEventStatus, HookEvents, HookParams,
    HookResponseStatus, ProjectHook,
};
pub use job::{ArtifactsFile, Job, JobArtifact, JobCommit, JobPipeline, JobScope};
pub use lint::{CiLint, CiLintResult, LintInclude, LintJob};
pub use merge_request::{CreateMergeRequest, MergeOptions, MergeRequest, MergeRequestPipeline};
pub use pipeline::{CreatePipeline, DetailedStatus, Pipeline, PipelineBasic, PipelineVariable, VariableType};
pub use project::{Project, Version};
pub use status::Status;
pub use time::{Timestamp, TimestampError};
pub use user::{Member, User};

/// Fields GitLab sent that have no typed field here, kept verbatim.
pub type Extra = serde_json::Map<String, serde_json::Value>;

/// Writes a number of seconds as an integer when it is whole (GitLab's pipeline durations are
/// integers), as a float otherwise.
pub(crate) fn whole_seconds<S: serde::Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => s.serialize_some(&(*x as i64)),
        Some(x) => s.serialize_some(x),
        None => s.serialize_none(),
    }
}
