//! `POST /projects/:id/ci/lint`: the request and GitLab's answer.

use serde::{Deserialize, Serialize};

use super::Extra;

/// The body of `POST /projects/:id/ci/lint` (GitLab's API docs, "Validate sample CI/CD
/// configuration").
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CiLint {
    /// The CI/CD configuration to check.
    pub content: String,
    /// Simulate a pipeline creation for `git_ref` instead of a static check. GitLab simulates a
    /// **push** pipeline: rules on `CI_PIPELINE_SOURCE == "api"` do not match in it.
    #[serde(default)]
    pub dry_run: bool,
    /// List the jobs the check or simulation would create.
    #[serde(default)]
    pub include_jobs: bool,
    /// Branch or tag for `dry_run` (GitLab: the default branch when unset).
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
}

impl CiLint {
    /// A static check of `content`.
    pub fn new(content: impl Into<String>) -> Self {
        Self { content: content.into(), ..Self::default() }
    }

    /// A simulated pipeline for `git_ref`, with its jobs listed.
    pub fn dry_run(content: impl Into<String>, git_ref: impl Into<String>) -> Self {
        Self { content: content.into(), dry_run: true, include_jobs: true, git_ref: Some(git_ref.into()) }
    }
}

/// GitLab's answer: whether the configuration is valid, its errors and warnings, the merged YAML,
/// the included files and (with `include_jobs`) the jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CiLintResult {
    /// No errors.
    pub valid: bool,
    /// GitLab's messages (`jobs:build config contains unknown keys: foo`, `The resulting pipeline
    /// would have been empty. ...`).
    #[serde(default)]
    pub errors: Vec<String>,
    /// Warnings.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The configuration after includes and `extends` (null when invalid).
    #[serde(default)]
    pub merged_yaml: Option<String>,
    /// The included files (null when invalid).
    #[serde(default)]
    pub includes: Option<Vec<LintInclude>>,
    /// The jobs, when `include_jobs` was asked.
    #[serde(default)]
    pub jobs: Option<Vec<LintJob>>,
    /// Everything else GitLab sent.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One included file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LintInclude {
    /// `local`, `file` (a project's), `remote`, `template`, `component`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Path or address.
    pub location: String,
    /// Everything else GitLab sent (`blob`, `raw`, `extra`, `context_project`, `context_sha`).
    #[serde(flatten)]
    pub extra: Extra,
}

/// One job of the checked configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LintJob {
    /// Job name (`build: [stm32f4]` for a matrix job).
    pub name: String,
    /// Stage.
    pub stage: String,
    /// `on_success`, `manual`, `delayed`, ...
    #[serde(default)]
    pub when: Option<String>,
    /// Whether it may fail.
    #[serde(default)]
    pub allow_failure: Option<bool>,
    /// Everything else GitLab sent (scripts, `tag_list`, `environment`, `only`, `except`,
    /// `needs`).
    #[serde(flatten)]
    pub extra: Extra,
}
