//! Endpoint methods on [`crate::Gitlab`], one file per API area; see `README.md` beside this file
//! for the map from `METHOD /path` to method.

mod hooks;
mod jobs;
mod lint;
mod merge_requests;
mod pipelines;
mod projects;
mod repository;

pub use jobs::{JobFilter, TraceChunk};
pub use merge_requests::MergeRequestFilter;
pub use pipelines::PipelineFilter;
pub use repository::ArchiveFormat;

use crate::{ProjectRef, ids::encode_segment};

/// `projects/<id or encoded path>`
pub(crate) fn project_path(project: &ProjectRef) -> String {
    format!("projects/{project}")
}

/// A ref or file name as one encoded path segment.
pub(crate) fn segment(raw: &str) -> String {
    encode_segment(raw)
}
