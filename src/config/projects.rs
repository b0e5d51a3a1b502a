//! `[projects.<name>]` and `[groups]`: what to build for which targets, in which order, and what
//! follows a success.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use toml::Spanned;

use super::Config;
use super::error::{ConfigError, Source, list};

/// `[projects.<name>]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// GitLab path (`group/name`) or numeric id.
    pub gitlab: String,
    /// Targets to build.
    #[serde(default)]
    pub targets: Vec<Spanned<String>>,
    /// Projects that must succeed first.
    #[serde(default)]
    pub depends_on: Vec<Spanned<String>>,
    /// Ref to build when none is given (default: the project's default branch).
    #[serde(rename = "ref")]
    pub default_ref: Option<String>,
    /// Extra CI variables for every build of the project.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// What happens when a build succeeds.
    #[serde(default)]
    pub after_success: AfterSuccess,
    /// Build again when the ref gets new commits.
    #[serde(default)]
    pub rebuild_on_push: bool,
}

/// `after_success = { ... }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AfterSuccess {
    /// Download the artifacts (default true).
    #[serde(default = "super::yes")]
    pub download_artifacts: bool,
    /// Open a merge request.
    pub merge_request: Option<MergeRequestConfig>,
    /// Set it to merge when its pipeline succeeds.
    #[serde(default)]
    pub auto_merge: bool,
    /// Start another pipeline (e.g. release testing) with the build's sha and artifact job.
    pub promote: Option<PromoteConfig>,
}

impl Default for AfterSuccess {
    fn default() -> Self {
        Self { download_artifacts: true, merge_request: None, auto_merge: false, promote: None }
    }
}

/// `merge_request = { target_branch = "main" }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeRequestConfig {
    /// Branch to merge into.
    pub target_branch: String,
    /// Title (default: the ref's last commit title).
    pub title: Option<String>,
}

/// `promote = { ref = "release-testing", variables = {...} }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteConfig {
    /// The project to start it in (default: the same).
    pub project: Option<String>,
    /// The ref to run.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Extra variables (besides `CLOUDCI_SHA` and `CLOUDCI_ARTIFACT_JOB`).
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
}

/// `[projects.*]`'s rules: a GitLab project each, known targets, known dependencies.
pub(super) fn check(config: &Config, src: &Source<'_>) -> Result<(), ConfigError> {
    let known_targets: Vec<&String> = config.targets.keys().collect();
    let known_projects: Vec<&String> = config.projects.keys().collect();
    for (name, project) in &config.projects {
        if project.gitlab.trim().is_empty() {
            return Err(src.at(src.table("projects", name), format!("projects.{name}.gitlab is empty")));
        }
        for t in &project.targets {
            if !config.targets.contains_key(t.get_ref()) {
                return Err(src.at(
                    t.span().start,
                    format!(
                        "projects.{name}.targets: unknown target {:?}; known targets: {}",
                        t.get_ref(),
                        list(&known_targets)
                    ),
                ));
            }
        }
        for d in &project.depends_on {
            if !config.projects.contains_key(d.get_ref()) {
                return Err(src.at(
                    d.span().start,
                    format!(
                        "projects.{name}.depends_on: unknown project {:?}; known projects: {}",
                        d.get_ref(),
                        list(&known_projects)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// `[groups]`' rules: names of their own, known members.
pub(super) fn check_groups(config: &Config, src: &Source<'_>) -> Result<(), ConfigError> {
    let known_projects: Vec<&String> = config.projects.keys().collect();
    for (group, members) in &config.groups {
        if config.projects.contains_key(group) {
            return Err(src.at(src.table("groups", group), format!("groups.{group}: a project has the same name")));
        }
        for m in members {
            if !config.projects.contains_key(m.get_ref()) {
                return Err(src.at(
                    m.span().start,
                    format!(
                        "groups.{group}: unknown project {:?}; known projects: {}",
                        m.get_ref(),
                        list(&known_projects)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// No project depends, through others, on itself.
pub(super) fn check_cycles(config: &Config, src: &Source<'_>) -> Result<(), ConfigError> {
    if let Some(cycle) = find_cycle(config) {
        let first = &cycle[0];
        let offset = config.projects[first]
            .depends_on
            .iter()
            .find(|d| d.get_ref() == &cycle[1])
            .map(|d| d.span().start)
            .unwrap_or(0);
        return Err(src.at(offset, format!("projects.{first}.depends_on: dependency cycle {}", cycle.join(" → "))));
    }
    Ok(())
}

/// A dependency cycle as `[a, b, ..., a]`, if there is one.
fn find_cycle(config: &Config) -> Option<Vec<String>> {
    fn visit(config: &Config, name: &str, stack: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|s| s == name) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(name.to_owned());
            return Some(cycle);
        }
        if done.contains(name) {
            return None;
        }
        stack.push(name.to_owned());
        for d in config.projects.get(name).map(|p| p.depends_on.as_slice()).unwrap_or(&[]) {
            if let Some(c) = visit(config, d.get_ref(), stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(name.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    config.projects.keys().find_map(|name| visit(config, name, &mut Vec::new(), &mut done))
}
