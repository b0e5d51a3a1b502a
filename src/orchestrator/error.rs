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
    /// GitLab would not create the pipeline (rules, workflow, YAML errors, a missing include):
    /// its message, where, and what to change.
    #[error("GitLab refused to create a pipeline for {project} at {git_ref}: {message}{}", hint.as_deref().map(|h| format!(". Hint: {h}")).unwrap_or_default())]
    Refused {
        /// GitLab path of the project.
        project: String,
        /// The ref.
        git_ref: String,
        /// GitLab's message (`The resulting pipeline would have been empty. ...`).
        message: String,
        /// What to change, when the message says what went wrong.
        hint: Option<String>,
    },
    /// The build has nothing of the kind asked for (no failed job to retry, no manual job to
    /// start).
    #[error("build {build} has {what}")]
    NothingToDo {
        /// The build.
        build: i64,
        /// What it lacks, e.g. `no manual job to start`.
        what: String,
    },
    /// A blocking store task did not finish (it panicked or the runtime is shutting down).
    #[error("a build store task did not finish")]
    Task(#[from] tokio::task::JoinError),
}

impl OrchestratorError {
    /// A failure to create a pipeline: GitLab's 400 (it will not create it) becomes
    /// [`OrchestratorError::Refused`] with a hint; anything else stays as it is.
    pub fn creating(e: cloudci_gitlab::Error, project: &str, git_ref: &str) -> Self {
        match e {
            cloudci_gitlab::Error::Api { status: 400, message, .. } => {
                // GitLab's validation body is `{"message": {"base": [...]}}`.
                let message = message.strip_prefix("base ").unwrap_or(&message).to_owned();
                Self::Refused {
                    project: project.to_owned(),
                    git_ref: git_ref.to_owned(),
                    hint: refusal_hint(&message),
                    message,
                }
            }
            other => other.into(),
        }
    }

    /// For I/O under `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

/// The hint for GitLab's refusal `message` of a pipeline created through the API.
pub fn refusal_hint(message: &str) -> Option<String> {
    let api_rule = "pipelines created through the API have CI_PIPELINE_SOURCE == \"api\"";
    if message.contains("workflow:rules") {
        Some(format!(
            "{api_rule}, and the project's workflow:rules let none of that source run: add a rule such as \
             `- if: $CI_PIPELINE_SOURCE == \"api\"` to workflow:rules (or start pipelines with a trigger \
             token: their source is \"trigger\")"
        ))
    } else if message.contains("rules configuration")
        || message.contains("would have been empty")
        || message.contains("No stages / jobs")
    {
        Some(format!(
            "{api_rule}, and the rules (or only/except) of every job leave it out: add a rule such as \
             `- if: $CI_PIPELINE_SOURCE == \"api\"` to the jobs that build the targets (or start pipelines with a \
             trigger token: their source is \"trigger\")"
        ))
    } else if message.contains("Reference not found") {
        Some("GitLab has no such branch or tag: push it first, or give another --ref".into())
    } else if message.contains("Missing CI config file") {
        Some("the project has no .gitlab-ci.yml at this ref".into())
    } else if message.contains("include") || message.contains("Local file") || message.contains("does not exist") {
        Some(
            "a file the CI configuration includes could not be read at this ref: check its path, project and ref"
                .into(),
        )
    } else if message.contains("config")
        || message.contains("yaml")
        || message.contains("YAML")
        || message.starts_with("(<unknown>)")
    {
        Some("the .gitlab-ci.yml at this ref is not valid; `cloudci build --dry-run` shows GitLab's lint of it".into())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn refusals_get_a_hint() {
        let h = super::refusal_hint(
            "The resulting pipeline would have been empty. Review the rules configuration for the relevant jobs.",
        )
        .unwrap();
        assert!(h.contains("- if: $CI_PIPELINE_SOURCE == \"api\"") && h.contains("trigger"), "{h}");
        let h =
            super::refusal_hint("The pipeline did not run. Review the workflow:rules configuration for the pipeline.")
                .unwrap();
        assert!(h.contains("workflow:rules"), "{h}");
        assert!(super::refusal_hint("Reference not found").unwrap().contains("push it"));
        assert!(super::refusal_hint("something else").is_none());
    }
}
