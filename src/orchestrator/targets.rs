//! Targets built by jobs of one shared pipeline: which jobs are a target's ([`JobSelector`]),
//! and the target's status as the composite of its jobs ([`composite`]), by GitLab's rules:
//! active beats blocked beats the worst outcome; a failure that is allowed is a warning.

use std::collections::{BTreeMap, BTreeSet};

use cloudci_gitlab::types::Status;
use serde::{Deserialize, Serialize};

use super::BuildStatus;

/// The jobs of a shared pipeline that build one target: named ones, and the `parallel: matrix`
/// instances whose matrix values include every value of `matrix`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSelector {
    /// Job names exactly as GitLab gives them (`build: [stm32f4]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<String>,
    /// Matrix variables and values (`BOARD = "stm32f4"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub matrix: BTreeMap<String, String>,
}

impl JobSelector {
    /// A selector, or `None` when it selects nothing (the target has a pipeline of its own).
    pub fn new(jobs: Vec<String>, matrix: BTreeMap<String, String>) -> Option<Self> {
        (!jobs.is_empty() || !matrix.is_empty()).then_some(Self { jobs, matrix })
    }

    /// Whether the job named `name` is one of the target's.
    ///
    /// GitLab names a matrix instance `name: [v1, v2]`, its values in the order of the matrix
    /// keys, and the API does not list a job's variables; so a matrix selector matches the jobs
    /// whose bracketed values include each of its values.
    pub fn matches(&self, name: &str) -> bool {
        if self.jobs.iter().any(|j| j == name) {
            return true;
        }
        if self.matrix.is_empty() {
            return false;
        }
        let Some(values) = matrix_values(name) else { return false };
        self.matrix.values().all(|v| values.contains(&v.as_str()))
    }

    /// How the selector reads in a message: `jobs "a", "b"` or `matrix BOARD=x`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.jobs.is_empty() {
            parts.push(format!("jobs {}", self.jobs.iter().map(|j| format!("{j:?}")).collect::<Vec<_>>().join(", ")));
        }
        if !self.matrix.is_empty() {
            let m: Vec<String> = self.matrix.iter().map(|(k, v)| format!("{k}={v}")).collect();
            parts.push(format!("matrix {}", m.join(", ")));
        }
        parts.join(" and ")
    }
}

/// The values of a matrix job's name (`build: [a, b]` → `["a", "b"]`).
fn matrix_values(name: &str) -> Option<Vec<&str>> {
    let inner = name.strip_suffix(']')?;
    let start = inner.rfind(": [")?;
    Some(inner[start + 3..].split(", ").map(str::trim).collect())
}

/// A target's jobs summed up: its status, and the allowed failures to show as warnings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composite {
    /// The target's status.
    pub status: BuildStatus,
    /// `job: failed (allowed to fail)` for each allowed failure.
    pub warnings: Vec<String>,
}

/// The composite of `jobs` (name, status, allowed to fail), by GitLab's rules for a pipeline:
/// any job active → running; else a required manual or scheduled job → manual / scheduled; else
/// the worst outcome (failed, canceled), skipped jobs not counting unless all were skipped. A
/// job still `created` (waiting for one before it) counts as active. `None` for no jobs.
pub fn composite<'a>(jobs: impl IntoIterator<Item = (&'a str, &'a Status, bool)>) -> Option<Composite> {
    let jobs: Vec<(&str, &Status, bool)> = jobs.into_iter().collect();
    if jobs.is_empty() {
        return None;
    }
    let warnings: Vec<String> = jobs
        .iter()
        .filter(|(_, s, allowed)| *allowed && **s == Status::Failed)
        .map(|(n, _, _)| format!("{n}: failed (allowed to fail)"))
        .collect();
    let any = |f: &dyn Fn(&Status, bool) -> bool| jobs.iter().any(|(_, s, a)| f(s, *a));
    let status = if any(&|s, _| s.is_active() || matches!(s, Status::Unknown(_))) {
        BuildStatus::Running
    } else if any(&|s, a| *s == Status::Manual && !a) {
        BuildStatus::Manual
    } else if any(&|s, _| *s == Status::Scheduled) {
        BuildStatus::Scheduled
    } else if any(&|s, _| *s == Status::Created) {
        BuildStatus::Running
    } else if any(&|s, a| *s == Status::Failed && !a) {
        BuildStatus::Failed
    } else if any(&|s, _| *s == Status::Canceled) {
        BuildStatus::Canceled
    } else if jobs.iter().all(|(_, s, _)| **s == Status::Skipped) {
        BuildStatus::Skipped
    } else if jobs.iter().all(|(_, s, _)| *s == &Status::Manual) {
        // Only optional manual jobs: nothing ran, someone may start them.
        BuildStatus::Manual
    } else {
        BuildStatus::Success
    };
    Some(Composite { status, warnings })
}

/// The names of `all` a selector picks, and the names it left (for a message when it picks none).
pub fn pick<'a>(selector: &JobSelector, all: impl IntoIterator<Item = &'a str>) -> (BTreeSet<String>, Vec<String>) {
    let mut mine = BTreeSet::new();
    let mut others = Vec::new();
    for name in all {
        if selector.matches(name) {
            mine.insert(name.to_owned());
        } else {
            others.push(name.to_owned());
        }
    }
    (mine, others)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_matrix_values_select_jobs() {
        let m = JobSelector::new(vec![], BTreeMap::from([("BOARD".into(), "stm32f4".into())])).unwrap();
        assert!(m.matches("build: [stm32f4]"));
        assert!(m.matches("test: [stm32f4, debug]"));
        assert!(!m.matches("build: [stm32f4-disco]"));
        assert!(!m.matches("build: [nrf52840]"));
        assert!(!m.matches("lint"));
        let j = JobSelector::new(vec!["flash stm32f4".into()], BTreeMap::new()).unwrap();
        assert!(j.matches("flash stm32f4") && !j.matches("build: [stm32f4]"));
        assert!(JobSelector::new(vec![], BTreeMap::new()).is_none());
        let two =
            JobSelector::new(vec![], BTreeMap::from([("BOARD".into(), "a".into()), ("MODE".into(), "debug".into())]))
                .unwrap();
        assert!(two.matches("build: [a, debug]") && !two.matches("build: [a, release]"));
        assert_eq!(two.describe(), "matrix BOARD=a, MODE=debug");
    }

    #[test]
    fn composite_follows_gitlabs_rules() {
        let c = |jobs: &[(&str, Status, bool)]| composite(jobs.iter().map(|(n, s, a)| (*n, s, *a))).unwrap();
        assert_eq!(c(&[("b", Status::Success, false), ("t", Status::Running, false)]).status, BuildStatus::Running);
        assert_eq!(c(&[("b", Status::Failed, false), ("t", Status::Manual, false)]).status, BuildStatus::Manual);
        assert_eq!(c(&[("b", Status::Failed, false), ("t", Status::Skipped, false)]).status, BuildStatus::Failed);
        assert_eq!(c(&[("b", Status::Success, false), ("t", Status::Canceled, false)]).status, BuildStatus::Canceled);
        assert_eq!(c(&[("b", Status::Success, false), ("t", Status::Created, false)]).status, BuildStatus::Running);
        assert_eq!(c(&[("b", Status::Skipped, false)]).status, BuildStatus::Skipped);
        let warned = c(&[("b", Status::Success, false), ("lint", Status::Failed, true)]);
        assert_eq!(warned.status, BuildStatus::Success);
        assert_eq!(warned.warnings, ["lint: failed (allowed to fail)"]);
        // An optional manual job does not hold the target.
        assert_eq!(c(&[("b", Status::Success, false), ("deploy", Status::Manual, true)]).status, BuildStatus::Success);
        assert!(composite(std::iter::empty()).is_none());
    }
}
