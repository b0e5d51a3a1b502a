//! How a run's builds ended: a table for people, JSON for programs.

use std::collections::BTreeMap;

use crate::orchestrator::BuildOutcome;
use crate::output::{Table, print_json};

/// The summary: a table, or `{"builds": [...]}`.
pub(in crate::cli) fn print_outcomes(
    outcomes: &[BuildOutcome],
    json: bool,
    run_dir: Option<&std::path::Path>,
) -> std::io::Result<()> {
    if json {
        let builds: Vec<BTreeMap<&str, serde_json::Value>> = outcomes
            .iter()
            .map(|o| {
                BTreeMap::from([
                    ("project", serde_json::json!(o.project)),
                    ("target", serde_json::json!(o.target)),
                    ("status", serde_json::json!(o.status)),
                    ("pipeline_url", serde_json::json!(o.pipeline_url)),
                    ("artifacts", serde_json::json!(o.artifacts)),
                    ("merge_request", serde_json::json!(o.merge_request)),
                    ("ref", serde_json::json!(o.git_ref)),
                    ("sha", serde_json::json!(o.sha)),
                    ("jobs", serde_json::json!(o.jobs)),
                    ("warnings", serde_json::json!(o.warnings)),
                    ("reason", serde_json::json!(o.reason)),
                    ("failed_job", serde_json::json!(o.failed_job.as_ref().map(|(n, _)| n))),
                    ("failed_log", serde_json::json!(o.failed_job.as_ref().and_then(|(_, l)| l.as_ref()))),
                ])
            })
            .collect();
        return print_json(&serde_json::json!({"builds": builds, "logs": run_dir}));
    }
    let mut t = Table::new(&["PROJECT", "TARGET", "STATUS", "PIPELINE", "ARTIFACTS", "MERGE REQUEST"]);
    for o in outcomes {
        t.row(vec![
            o.project.clone(),
            o.target.clone(),
            o.status.to_string(),
            o.pipeline_url.clone().unwrap_or_else(|| o.reason.clone().unwrap_or_default()),
            o.artifacts.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            o.merge_request.clone().unwrap_or_default(),
        ]);
    }
    t.print()?;
    for o in outcomes {
        for w in &o.warnings {
            crate::say!("warning: {}/{}: {w}", o.project, o.target);
        }
    }
    for o in outcomes.iter().filter(|o| !o.succeeded()) {
        if let Some((job, log)) = &o.failed_job {
            let log = log.as_ref().map(|l| format!(": {}", l.display())).unwrap_or_default();
            crate::say!("failed: {}/{}, job {job}{log}", o.project, o.target);
        }
    }
    if let Some(dir) = run_dir {
        crate::say!("logs: {}", dir.display());
        // The first failed job's log (see `orchestrator::logs`).
        let error = dir.join("error.log");
        if error.exists() {
            crate::say!("first failure: {}", error.display());
        }
    }
    Ok(())
}
