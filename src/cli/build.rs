//! `cloudci build`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use cloudci_gitlab::encode_segment;

use super::Failure;
use crate::config::Config;
use crate::daemon::gitlab_client;
use crate::orchestrator::{self, BuildOutcome, EventFeed, Plan, Quiet, Reporter, Request, Runner, StderrReporter};
use crate::output::{Table, print_json, stderr_is_terminal};
use crate::state::StateDir;

/// Build projects (or groups) for their targets: one pipeline per project × target, in
/// dependency order. Exit 0 when every build succeeded, 1 otherwise.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Projects or groups from the configuration.
    #[arg(required = true, value_name = "PROJECT_OR_GROUP")]
    names: Vec<String>,
    /// Ref to build (default: each project's `ref`, else its default branch).
    #[arg(long = "ref", value_name = "REF")]
    git_ref: Option<String>,
    /// Only these targets; repeatable.
    #[arg(long = "target", value_name = "TARGET")]
    targets: Vec<String>,
    /// An extra CI variable, KEY=VALUE; repeatable.
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_var)]
    vars: Vec<(String, String)>,
    /// Show every status change as it happens (on stderr).
    #[arg(long)]
    watch: bool,
    /// Print the GitLab calls it would make, in order, and make none.
    #[arg(long)]
    dry_run: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
    /// Skip what happens after success (artifacts, merge request, promotion).
    #[arg(long)]
    no_actions: bool,
}

fn parse_var(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{raw:?} is not KEY=VALUE"))
}

impl BuildArgs {
    /// Runs it.
    pub async fn run(self, config: &Config) -> Result<(), Failure> {
        let request = Request {
            names: self.names.clone(),
            git_ref: self.git_ref.clone(),
            targets: self.targets.clone(),
            variables: self.vars.iter().cloned().collect(),
        };
        let plan = orchestrator::plan(config, &request).map_err(|e| Failure::usage(e.0))?;
        if self.dry_run {
            for line in dry_run(config, &plan, !self.no_actions) {
                crate::say!("{line}");
            }
            return Ok(());
        }
        let gitlab = gitlab_client(config)?;
        let state = StateDir::new(config.state_dir());
        state.create()?;
        let feed = daemon_feed(&state).await;
        let records = open_records(&state, &plan)?;
        let reporter: Arc<dyn Reporter> =
            if self.watch || (stderr_is_terminal() && !self.json) { Arc::new(StderrReporter) } else { Arc::new(Quiet) };
        let runner = Runner {
            gitlab,
            config: Arc::new(config.clone()),
            state_dir: state.root().to_owned(),
            feed,
            actions: !self.no_actions,
            reporter,
            silence: Duration::from_secs(config.webhook.reconcile_after.clamp(1, 30)),
            records: Some(records),
            follow_logs: self.watch,
        };
        let (run_dir, outcomes) = runner.run(&plan).await?;
        print_outcomes(&outcomes, self.json, Some(&run_dir))?;
        if outcomes.iter().all(BuildOutcome::succeeded) {
            Ok(())
        } else {
            Err(Failure::general("some builds did not succeed"))
        }
    }
}

/// The build store, with a new run holding one queued build per project × target.
pub(crate) fn open_records(state: &StateDir, plan: &Plan) -> Result<orchestrator::Records, Failure> {
    let store = crate::builds::SqliteBuilds::open(&state.root().join("builds.db"))
        .map_err(|e| Failure::general(e.to_string()))?;
    orchestrator::start_run(Arc::new(store), plan)
        .map(|(_, records)| records)
        .map_err(|e| Failure::general(e.to_string()))
}

/// The running daemon's event stream, if one answers; else polling.
async fn daemon_feed(state: &StateDir) -> EventFeed {
    let Some(info) = state.hook_info() else { return EventFeed::None };
    let Ok(key) = state.jwt_key() else { return EventFeed::None };
    let token =
        cloudci_webhook::auth::TokenKeys::new(&key).issue("cloudci build", vec![], Duration::from_secs(24 * 3600));
    cloudci_gitlab::install_tls_provider();
    let alive = reqwest::Client::new()
        .get(format!("{}/v1/events?since=999999999999", info.api_url))
        .bearer_auth(&token)
        .timeout(Duration::from_millis(500))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    if alive { EventFeed::Remote { api_url: info.api_url, token } } else { EventFeed::None }
}

/// The calls a run would make, in order.
pub(super) fn dry_run(config: &Config, plan: &Plan, actions: bool) -> Vec<String> {
    let mut lines = Vec::new();
    for (i, wave) in plan.waves.iter().enumerate() {
        let after: Vec<&String> = wave.iter().flat_map(|p| plan.needs[p].iter()).collect();
        lines.push(if i == 0 {
            "# first, at once:".to_owned()
        } else {
            format!("# then, once {} succeeded:", after.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))
        });
        for project in wave {
            let p = &config.projects[project];
            let path = format!("/projects/{}", encode_segment(&p.gitlab));
            for b in &plan.builds[project] {
                let git_ref = match &b.git_ref {
                    Some(r) => r.clone(),
                    None => {
                        lines.push(format!("GET  {path}  (its default branch)"));
                        "<default branch>".into()
                    }
                };
                let mut variables: Vec<serde_json::Value> = b
                    .variables
                    .iter()
                    .map(|(k, v)| serde_json::json!({"key": k, "value": v, "variable_type": "env_var"}))
                    .collect();
                variables.push(serde_json::json!({"key": orchestrator::run::REQUEST_VARIABLE, "value": "<random id>", "variable_type": "env_var"}));
                let body = serde_json::json!({"ref": git_ref, "variables": variables});
                lines.push(format!("POST {path}/pipeline  {body}  # {}/{}", b.project, b.target));
                lines.push(format!(
                    "GET  {path}/pipelines/<id>  (when webhooks are silent) and /pipelines/<id>/jobs, /jobs/<id>/trace"
                ));
                if actions && p.after_success.download_artifacts {
                    lines.push(format!("GET  {path}/jobs/<id>/artifacts  (each job with artifacts, on success)"));
                }
            }
            if actions {
                if let Some(mr) = &p.after_success.merge_request {
                    lines.push(format!(
                        "GET  {path}/merge_requests?source_branch=<ref>&target_branch={}&state=opened  (on success)",
                        mr.target_branch
                    ));
                    lines.push(format!("POST {path}/merge_requests  (only if none is open)"));
                    if p.after_success.auto_merge {
                        lines.push(format!("PUT  {path}/merge_requests/<iid>/merge  {{\"auto_merge\":true}}"));
                    }
                }
                if let Some(promote) = &p.after_success.promote {
                    let target = promote.project.as_deref().unwrap_or(&p.gitlab);
                    lines.push(format!(
                        "POST /projects/{}/pipeline  {{\"ref\":\"{}\", CLOUDCI_SHA, CLOUDCI_ARTIFACT_JOB}}  (promotion)",
                        encode_segment(target),
                        promote.git_ref
                    ));
                }
            }
        }
    }
    lines
}

/// The summary: a table, or `{"builds": [...]}`.
pub(super) fn print_outcomes(
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
                    ("reason", serde_json::json!(o.reason)),
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
            o.status.clone(),
            o.pipeline_url.clone().unwrap_or_else(|| o.reason.clone().unwrap_or_default()),
            o.artifacts.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            o.merge_request.clone().unwrap_or_default(),
        ]);
    }
    t.print()?;
    if let Some(dir) = run_dir {
        crate::say!("logs: {}", dir.display());
    }
    Ok(())
}
