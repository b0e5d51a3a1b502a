//! How the sim reads a `.gitlab-ci.yml`, following GitLab's CI/CD YAML reference: what decides
//! which jobs exist, in what order and with what result.
//!
//! Three steps, as in GitLab (`Gitlab::Ci::Config#build_config`, then `YamlProcessor`, then
//! pipeline population):
//! 1. [`compose`] (`load.rs`): YAML documents (a `spec:inputs` header and `$[[ inputs.x ]]`),
//!    merge keys, `include` (local, project, and GitLab's errors for what cannot be fetched here),
//!    `extends`, `!reference`, `default` and the legacy top-level defaults.
//! 2. static checks and job definitions (`jobs.rs`): GitLab's validation messages, `parallel`
//!    (N and matrix) expanded into jobs with GitLab's names, `needs` resolved to those names.
//! 3. [`populate`] (`populate.rs`): `workflow:rules`, job `rules` or `only/except` for one pipeline
//!    (its source, ref, variables, changed and existing files), and GitLab's refusals.
//!
//! Keys that only matter with containers (`image`, `services`, `cache`, `tags`) are kept so the
//! runner can say in the job log that the shell executor did not use them.

pub mod expr;
pub mod jobs;
mod load;
mod populate;

use std::collections::BTreeMap;
use std::time::Duration;

pub use load::{Files, IncludedFile, NoFiles, compose};
pub use populate::{Context, EMPTY_PIPELINE, WORKFLOW_REFUSED, populate, ref_slug};

/// When a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// After everything before it succeeded (default).
    OnSuccess,
    /// Only when something before it failed.
    OnFailure,
    /// Whatever happened before.
    Always,
    /// When someone plays it.
    Manual,
    /// Like `on_success`, after `start_in`.
    Delayed,
    /// Not added to the pipeline (only ever seen in rules).
    Never,
}

impl When {
    /// GitLab's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnSuccess => "on_success",
            Self::OnFailure => "on_failure",
            Self::Always => "always",
            Self::Manual => "manual",
            Self::Delayed => "delayed",
            Self::Never => "never",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "on_success" => Self::OnSuccess,
            "on_failure" => Self::OnFailure,
            "always" => Self::Always,
            "manual" => Self::Manual,
            "delayed" => Self::Delayed,
            "never" => Self::Never,
            _ => return None,
        })
    }
}

/// One `needs` entry, resolved to a job name of the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// The job's full name (`build: [stm32f4]`).
    pub job: String,
    /// `artifacts` (default true): download its artifacts and dotenv variables.
    pub artifacts: bool,
    /// `optional`: a need on a job the pipeline does not have is dropped, not an error.
    pub optional: bool,
}

/// Which top-level variables a job inherits (`inherit:variables`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Inherit {
    /// All of them (default).
    #[default]
    All,
    /// None.
    None,
    /// These.
    Only(Vec<String>),
}

impl Inherit {
    /// Whether a top-level variable `name` reaches the job.
    pub fn allows(&self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::None => false,
            Self::Only(list) => list.iter().any(|n| n == name),
        }
    }
}

/// `artifacts:` beyond `paths`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ArtifactsSpec {
    /// `exclude` globs.
    pub exclude: Vec<String>,
    /// `name` (expanded at upload; recorded only: the API always serves `artifacts.zip`).
    pub name: Option<String>,
    /// `when`: `on_success` (default), `on_failure`, `always`.
    pub when: String,
    /// `expire_in`, as written.
    pub expire_in: Option<String>,
    /// `untracked`: add files git does not track.
    pub untracked: bool,
    /// `reports`: type to paths (`dotenv` among them).
    pub reports: BTreeMap<String, Vec<String>>,
}

impl ArtifactsSpec {
    /// Whether anything is uploaded at all.
    pub fn any(&self, paths: &[String]) -> bool {
        !paths.is_empty() || self.untracked || !self.reports.is_empty()
    }
}

/// `retry:`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RetrySpec {
    /// `max` (0-2).
    pub max: u32,
    /// `when` (failure reasons; empty or `always`: any).
    pub when: Vec<String>,
    /// `exit_codes`.
    pub exit_codes: Vec<i32>,
}

impl RetrySpec {
    /// Whether a failure with `reason` and `exit_code` is retried (GitLab: both lists must allow
    /// it when both are given).
    pub fn applies(&self, reason: &str, exit_code: Option<i32>) -> bool {
        let by_reason = self.when.is_empty() || self.when.iter().any(|w| w == "always" || w == reason);
        let by_code = self.exit_codes.is_empty() || exit_code.is_some_and(|c| self.exit_codes.contains(&c));
        by_reason && by_code
    }
}

/// `trigger:` of a bridge job.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerSpec {
    /// `include` entries of a child pipeline (as written, YAML).
    pub include: Vec<serde_yaml_ng::Value>,
    /// `project` of a multi-project pipeline.
    pub project: Option<String>,
    /// `branch` of a multi-project pipeline.
    pub branch: Option<String>,
    /// `strategy: depend`: the bridge's status follows the downstream pipeline.
    pub depend: bool,
    /// `forward:yaml_variables` (default true).
    pub forward_yaml_variables: bool,
    /// `forward:pipeline_variables` (default false).
    pub forward_pipeline_variables: bool,
}

/// One job's definition, as the pipeline runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// Job name (for a parallel job, GitLab's instance name: `build 1/2`, `build: [a, b]`).
    pub name: String,
    /// Stage name.
    pub stage: String,
    /// `before_script` lines (the job's, else `default:`'s or the top-level one).
    pub before_script: Vec<String>,
    /// `script` lines.
    pub script: Vec<String>,
    /// Job variables (over the top-level ones), including matrix values and `rules:variables`.
    pub variables: BTreeMap<String, String>,
    /// `artifacts:paths`.
    pub artifact_paths: Vec<String>,
    /// `when`.
    pub when: When,
    /// `allow_failure` as a boolean (defaults to true for manual jobs, as in GitLab; false when
    /// given as `exit_codes`).
    pub allow_failure: bool,
    /// `needs`: run as soon as these succeed instead of waiting for the previous stages.
    pub needs: Option<Vec<String>>,
    /// `after_script` lines: run in their own shell whatever the script's result.
    pub after_script: Vec<String>,
    /// `allow_failure:exit_codes`: failures with these exit codes are allowed.
    pub allow_failure_exit_codes: Vec<i32>,
    /// `start_in` of a delayed job.
    pub start_in: Option<Duration>,
    /// `needs` with their options.
    pub need_details: Vec<Need>,
    /// `dependencies`: whose artifacts to download (none given: every earlier job's, or the needs').
    pub dependencies: Option<Vec<String>>,
    /// `artifacts:` beyond `paths`.
    pub artifacts: ArtifactsSpec,
    /// `retry:`.
    pub retry: RetrySpec,
    /// `timeout`.
    pub timeout: Option<Duration>,
    /// `interruptible`.
    pub interruptible: bool,
    /// `resource_group`: one job at a time per group in the project.
    pub resource_group: Option<String>,
    /// `environment:name`.
    pub environment: Option<String>,
    /// `coverage` regex (`/.../`).
    pub coverage: Option<String>,
    /// `trigger:` (a bridge job, which starts a downstream pipeline instead of a script).
    pub trigger: Option<TriggerSpec>,
    /// `tags`.
    pub tags: Vec<String>,
    /// What the shell executor does not do for this job (image, services, cache), for the log.
    pub notes: Vec<String>,
    /// The name before `parallel` expansion.
    pub base_name: String,
    /// `CI_NODE_INDEX` and `CI_NODE_TOTAL` of a parallel job.
    pub node: Option<(u32, u32)>,
    /// `inherit:variables`.
    pub inherit_variables: Inherit,
}

impl JobSpec {
    /// A job with only a name, stage and script, everything else GitLab's default.
    pub fn new(name: &str, stage: &str, script: Vec<String>) -> Self {
        Self {
            name: name.to_owned(),
            stage: stage.to_owned(),
            before_script: Vec::new(),
            script,
            variables: BTreeMap::new(),
            artifact_paths: Vec::new(),
            when: When::OnSuccess,
            allow_failure: false,
            needs: None,
            after_script: Vec::new(),
            allow_failure_exit_codes: Vec::new(),
            start_in: None,
            need_details: Vec::new(),
            dependencies: None,
            artifacts: ArtifactsSpec { when: "on_success".into(), ..ArtifactsSpec::default() },
            retry: RetrySpec::default(),
            timeout: None,
            interruptible: false,
            resource_group: None,
            environment: None,
            coverage: None,
            trigger: None,
            tags: Vec::new(),
            notes: Vec::new(),
            base_name: name.to_owned(),
            node: None,
            inherit_variables: Inherit::All,
        }
    }

    /// Whether this is a bridge (trigger) job.
    pub fn is_bridge(&self) -> bool {
        self.trigger.is_some()
    }
}

/// A parsed configuration, populated for one pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct CiConfig {
    /// Stage names in order (only those with jobs).
    pub stages: Vec<String>,
    /// Top-level variables (with `workflow:rules:variables` applied).
    pub variables: BTreeMap<String, String>,
    /// Jobs in stage order, then file order.
    pub jobs: Vec<JobSpec>,
    /// `workflow:name`, expanded (`CI_PIPELINE_NAME`).
    pub name: Option<String>,
    /// Warnings GitLab would give.
    pub warnings: Vec<String>,
    /// The configuration after includes, `extends` and references.
    pub merged_yaml: String,
    /// Files included.
    pub includes: Vec<IncludedFile>,
}

/// A composed configuration: what lint checks statically, before any pipeline's rules.
#[derive(Debug, Clone)]
pub struct Composed {
    /// Every stage declared, `.pre` and `.post` included.
    pub stages: Vec<String>,
    /// Top-level variables, raw.
    pub variables: BTreeMap<String, String>,
    /// Variables that must not be expanded (`expand: false`).
    pub raw_variables: Vec<String>,
    /// Job definitions after `parallel` expansion, in file order.
    pub jobs: Vec<jobs::JobDef>,
    /// `workflow:`.
    pub workflow: Option<jobs::Workflow>,
    /// Warnings.
    pub warnings: Vec<String>,
    /// The merged configuration as YAML.
    pub merged_yaml: String,
    /// Included files.
    pub includes: Vec<IncludedFile>,
}

impl Composed {
    /// The static job list (lint without `dry_run`): every defined job with its job-level `when`.
    pub fn static_jobs(&self) -> Vec<&JobSpec> {
        self.jobs.iter().map(|j| &j.spec).collect()
    }
}

/// Parses and checks a configuration without includes from files, then populates it for an API
/// pipeline on `main`. The error reads like GitLab's (`jobs:build config contains unknown keys:
/// foo`).
pub fn parse(text: &str) -> Result<CiConfig, String> {
    let ctx = Context::new("api", "main", false);
    let composed = compose(text, &NoFiles, &ctx).map_err(|e| e.join(", "))?;
    populate(&composed, &ctx, &NoFiles).map_err(|e| e.join(", "))
}

/// Parses a GitLab duration (`1 hour`, `30m`, `1h 30m`, `90`, `2 days`, `1 week`) as
/// `ChronicDuration` does for the common forms. A bare number is seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim().to_lowercase();
    if let Ok(n) = t.parse::<u64>() {
        return Some(Duration::from_secs(n));
    }
    let mut total = 0f64;
    let mut num = String::new();
    let mut unit = String::new();
    let mut any = false;
    let flush = |num: &mut String, unit: &mut String, total: &mut f64, any: &mut bool| -> Option<()> {
        if num.is_empty() {
            return if unit.is_empty() || unit == "and" { Some(()) } else { None };
        }
        let n: f64 = num.parse().ok()?;
        let secs = match unit.trim_end_matches('s') {
            "" | "sec" | "second" => 1.0,
            "m" | "min" | "minute" | "mn" => 60.0,
            "h" | "hr" | "hour" => 3600.0,
            "d" | "day" => 86400.0,
            "w" | "wk" | "week" => 604_800.0,
            "mo" | "month" => 2_592_000.0,
            "y" | "yr" | "year" => 31_557_600.0,
            _ => return None,
        };
        *total += n * secs;
        *any = true;
        num.clear();
        unit.clear();
        Some(())
    };
    for c in t.chars() {
        if c.is_ascii_digit() || c == '.' {
            if !unit.is_empty() {
                flush(&mut num, &mut unit, &mut total, &mut any)?;
            }
            num.push(c);
        } else if c.is_alphabetic() {
            unit.push(c);
        } else if c == ' ' || c == ',' {
            if !unit.is_empty() {
                flush(&mut num, &mut unit, &mut total, &mut any)?;
            }
        } else {
            return None;
        }
    }
    flush(&mut num, &mut unit, &mut total, &mut any)?;
    // `try_`: a duration past `Duration::MAX` (`999999999999 years`) is not one, not a panic.
    any.then(|| Duration::try_from_secs_f64(total).ok()).flatten()
}

#[cfg(test)]
mod tests;
