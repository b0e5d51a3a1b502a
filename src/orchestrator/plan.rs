//! From "build these projects or groups for these targets" to an ordered plan: one pipeline per
//! project × target, projects grouped in waves so that each comes after what it depends on.

use std::collections::{BTreeMap, BTreeSet};

use super::JobSelector;
use crate::config::Config;

/// One pipeline to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedBuild {
    /// Project name in the configuration.
    pub project: String,
    /// GitLab path or id.
    pub gitlab: String,
    /// Target name.
    pub target: String,
    /// Ref to build; `None`: the project's default branch.
    pub git_ref: Option<String>,
    /// CI variables: target's, then project's, then the command line's. For targets built by
    /// jobs, the pipeline's: every such target's of the project, then project's, then the
    /// command line's.
    pub variables: BTreeMap<String, String>,
    /// Which jobs of the project's shared pipeline are the target's; `None`: a pipeline of
    /// its own.
    pub selector: Option<JobSelector>,
}

impl PlannedBuild {
    /// Built by jobs of a pipeline shared with the project's other such targets.
    pub fn shares_pipeline(&self) -> bool {
        self.selector.is_some()
    }
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Builds by project, in configuration order within each project.
    pub builds: BTreeMap<String, Vec<PlannedBuild>>,
    /// Projects in dependency order: everything in a wave depends only on earlier waves.
    pub waves: Vec<Vec<String>>,
    /// For each project, the projects of this plan it waits for.
    pub needs: BTreeMap<String, Vec<String>>,
}

/// What was asked.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Project or group names.
    pub names: Vec<String>,
    /// Ref for every project (else each project's `ref`, else its default branch).
    pub git_ref: Option<String>,
    /// Only these targets (each must belong to at least one selected project).
    pub targets: Vec<String>,
    /// Extra variables.
    pub variables: BTreeMap<String, String>,
}

/// A request that does not fit the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// No project or group named.
    #[error("name at least one project or group")]
    NothingNamed,
    /// A name that is neither a project nor a group.
    #[error("unknown project or group {name:?}; known: {known}")]
    UnknownName {
        /// The name.
        name: String,
        /// The known names, comma-separated (or "(none configured)").
        known: String,
    },
    /// A target no selected project builds.
    #[error("target {target:?} is not built by {projects}; their targets: {available}")]
    UnknownTarget {
        /// The target.
        target: String,
        /// The selected projects, comma-separated.
        projects: String,
        /// Their targets, comma-separated.
        available: String,
    },
}

/// Builds the plan for `req`.
pub fn plan(config: &Config, req: &Request) -> Result<Plan, PlanError> {
    if req.names.is_empty() {
        return Err(PlanError::NothingNamed);
    }
    let mut selected: BTreeSet<String> = BTreeSet::new();
    for name in &req.names {
        if config.projects.contains_key(name) {
            selected.insert(name.clone());
        } else if let Some(group) = config.groups.get(name) {
            selected.extend(group.iter().map(|m| m.get_ref().clone()));
        } else {
            let known: Vec<&str> =
                config.projects.keys().map(String::as_str).chain(config.groups.keys().map(String::as_str)).collect();
            return Err(PlanError::UnknownName {
                name: name.clone(),
                known: if known.is_empty() { "(none configured)".into() } else { known.join(", ") },
            });
        }
    }
    for t in &req.targets {
        let used = selected.iter().any(|p| config.projects[p].targets.iter().any(|x| x.get_ref() == t));
        if !used {
            let available: BTreeSet<&str> =
                selected.iter().flat_map(|p| config.projects[p].targets.iter().map(|x| x.get_ref().as_str())).collect();
            return Err(PlanError::UnknownTarget {
                target: t.clone(),
                projects: selected.iter().cloned().collect::<Vec<_>>().join(", "),
                available: available.into_iter().collect::<Vec<_>>().join(", "),
            });
        }
    }
    let mut builds = BTreeMap::new();
    for name in &selected {
        let p = &config.projects[name];
        let mut list = Vec::new();
        let chosen: Vec<&String> = p
            .targets
            .iter()
            .map(|t| t.get_ref())
            .filter(|t| req.targets.is_empty() || req.targets.contains(t))
            .collect();
        // One pipeline for every target of the project built by jobs: its variables are all of
        // theirs.
        let mut shared: BTreeMap<String, String> = BTreeMap::new();
        for t in chosen.iter().filter(|t| config.targets[**t].selector().is_some()) {
            shared.extend(config.targets[*t].variables.clone());
        }
        for t in chosen {
            let selector = config.targets[t].selector();
            let mut variables = if selector.is_some() { shared.clone() } else { config.targets[t].variables.clone() };
            variables.extend(p.variables.clone());
            variables.extend(req.variables.clone());
            list.push(PlannedBuild {
                project: name.clone(),
                gitlab: p.gitlab.clone(),
                target: t.clone(),
                git_ref: req.git_ref.clone().or_else(|| p.default_ref.clone()),
                variables,
                selector,
            });
        }
        builds.insert(name.clone(), list);
    }
    // Dependencies outside the selection are assumed built already; inside it they order waves.
    let needs: BTreeMap<String, Vec<String>> = selected
        .iter()
        .map(|n| {
            let deps = config.projects[n]
                .depends_on
                .iter()
                .map(|d| d.get_ref().clone())
                .filter(|d| selected.contains(d))
                .collect();
            (n.clone(), deps)
        })
        .collect();
    let mut waves: Vec<Vec<String>> = Vec::new();
    let mut placed: BTreeSet<String> = BTreeSet::new();
    while placed.len() < selected.len() {
        let wave: Vec<String> = selected
            .iter()
            .filter(|n| !placed.contains(*n) && needs[*n].iter().all(|d| placed.contains(d)))
            .cloned()
            .collect();
        // The configuration was checked for cycles when it was loaded.
        assert!(!wave.is_empty(), "dependency cycle survived config validation");
        placed.extend(wave.iter().cloned());
        waves.push(wave);
    }
    Ok(Plan { builds, waves, needs })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
        crate::config::parse(
            r#"
[targets.a]
variables = { TARGET = "a", BOARD = "x" }
[targets.b]
variables = { TARGET = "b" }
[projects.hal]
gitlab = "acme/hal"
targets = ["a"]
[projects.fw]
gitlab = "acme/fw"
targets = ["a", "b"]
depends_on = ["hal"]
ref = "develop"
variables = { BOARD = "y" }
[projects.tools]
gitlab = "acme/tools"
targets = ["b"]
[groups]
all = ["fw", "hal", "tools"]
"#,
            Path::new("t.toml"),
        )
        .unwrap()
    }

    #[test]
    fn waves_follow_dependencies() {
        let p = plan(&config(), &Request { names: vec!["all".into()], ..Default::default() }).unwrap();
        assert_eq!(p.waves, vec![vec!["hal".to_owned(), "tools".into()], vec!["fw".into()]]);
        assert_eq!(p.builds["fw"].len(), 2);
        assert_eq!(p.builds["fw"][0].variables["BOARD"], "y", "project variables over target's");
        assert_eq!(p.builds["fw"][0].git_ref.as_deref(), Some("develop"));
        assert_eq!(p.builds["hal"][0].git_ref, None);
        assert_eq!(p.needs["fw"], ["hal"]);
        // A dependency not selected is not waited for.
        let p = plan(&config(), &Request { names: vec!["fw".into()], ..Default::default() }).unwrap();
        assert_eq!(p.waves, vec![vec!["fw".to_owned()]]);
    }

    #[test]
    fn targets_refs_and_variables_from_the_command_line() {
        let req = Request {
            names: vec!["fw".into()],
            git_ref: Some("feature".into()),
            targets: vec!["b".into()],
            variables: BTreeMap::from([("BOARD".into(), "z".into())]),
        };
        let p = plan(&config(), &req).unwrap();
        assert_eq!(p.builds["fw"].len(), 1);
        assert_eq!(p.builds["fw"][0].target, "b");
        assert_eq!(p.builds["fw"][0].variables["BOARD"], "z");
        assert_eq!(p.builds["fw"][0].git_ref.as_deref(), Some("feature"));
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let e = plan(&config(), &Request { names: vec!["bootloader".into()], ..Default::default() }).unwrap_err();
        assert_eq!(e.to_string(), "unknown project or group \"bootloader\"; known: fw, hal, tools, all");
        let e =
            plan(&config(), &Request { names: vec!["hal".into()], targets: vec!["b".into()], ..Default::default() })
                .unwrap_err();
        let e = e.to_string();
        assert!(e.contains("target \"b\" is not built by hal; their targets: a"), "{e}");
    }
}
