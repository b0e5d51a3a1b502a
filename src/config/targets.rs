//! `[targets.<name>]`: what selects an embedded target's build (variables, jobs, a matrix).

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::error::{ConfigError, Source};

/// `[targets.<name>]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// CI variables that select the target (`TARGET`, `BOARD`, ...). For a target built by jobs
    /// ([`TargetConfig::jobs`], [`TargetConfig::matrix`]) they are added to the shared pipeline.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// The jobs that build the target, by GitLab's names (`"build: [stm32f4]"`). A build of
    /// several targets with jobs (or a matrix) of one project is one pipeline.
    #[serde(default)]
    pub jobs: Vec<Spanned<String>>,
    /// The `parallel: matrix` values of the target's jobs (`{ BOARD = "stm32f4" }`): the jobs
    /// whose matrix variables include these.
    #[serde(default)]
    pub matrix: BTreeMap<String, Spanned<String>>,
    /// Free text.
    pub description: Option<String>,
}

impl TargetConfig {
    /// Which jobs of a shared pipeline are the target's; `None`: the target has a pipeline of
    /// its own (told apart by variables).
    pub fn selector(&self) -> Option<crate::orchestrator::JobSelector> {
        crate::orchestrator::JobSelector::new(
            self.jobs.iter().map(|j| j.get_ref().clone()).collect(),
            self.matrix.iter().map(|(k, v)| (k.clone(), v.get_ref().clone())).collect(),
        )
    }
}

/// `[targets.*]`'s rules beyond their types.
pub(super) fn check(targets: &BTreeMap<String, TargetConfig>, src: &Source<'_>) -> Result<(), ConfigError> {
    for (name, target) in targets {
        for j in &target.jobs {
            if j.get_ref().trim().is_empty() {
                return Err(src.at(j.span().start, format!("targets.{name}.jobs: a job name is empty")));
            }
        }
        for (key, value) in &target.matrix {
            if key.trim().is_empty() || value.get_ref().trim().is_empty() {
                return Err(src.at(
                    value.span().start,
                    format!("targets.{name}.matrix: {key:?} needs a variable name and a value"),
                ));
            }
        }
    }
    Ok(())
}
