//! What can go wrong in the orchestrator, by kind, so that callers (the API's HTTP status, the
//! CLI's exit code) decide by variant rather than by message text.

use std::path::PathBuf;

use super::plan::PlanError;
use crate::builds::BuildStoreError;

/// An orchestrator failure.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// The request does not fit the configuration.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// GitLab refused or could not be reached.
    #[error(transparent)]
    Gitlab(#[from] cloudci_gitlab::Error),
    /// The build store failed.
    #[error(transparent)]
    Store(#[from] BuildStoreError),
    /// A file or folder under the state directory.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No such build.
    #[error("no build {0}")]
    NoBuild(i64),
    /// The build has no pipeline to act on yet.
    #[error("build {0} has no pipeline yet")]
    NoPipeline(i64),
    /// The project has no default branch and no ref was given.
    #[error("{0} has no default branch; give a ref")]
    NoDefaultBranch(String),
    /// A blocking store task did not finish (it panicked or the runtime is shutting down).
    #[error("a build store task did not finish")]
    Task(#[from] tokio::task::JoinError),
}

impl OrchestratorError {
    /// For I/O under `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
