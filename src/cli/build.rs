//! `cloudci build`

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use cloudci_gitlab::encode_segment;
use cloudci_gitlab::types::Status;
use futures_util::StreamExt;

use super::Failure;
use crate::builds::BuildStatus;
use crate::config::Config;
use crate::daemon::gitlab_client;
use crate::orchestrator::{
    self, BuildOutcome, EventFeed, Orchestrator, Plan, Quiet, Reporter, Request, StderrReporter,
};
use crate::output::{Table, print_json, stderr_is_terminal};
use crate::sse_client::{DaemonClient, DaemonClientError};
use crate::state::StateDir;

/// Build projects (or groups) for their targets: one pipeline per project × target, in
/// dependency order. Exit 0 when every build succeeded; 3 when GitLab refused the token, 4 when it
/// did not find a project, 1 otherwise.
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
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = super::vars::parse_var)]
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

impl From<orchestrator::OrchestratorError> for Failure {
    fn from(e: orchestrator::OrchestratorError) -> Self {
        match e {
            orchestrator::OrchestratorError::Gitlab(g) => g.into(),
            orchestrator::OrchestratorError::Plan(p) => Self::usage(p.to_string()),
            other => Self::general(other.to_string()),
        }
    }
}

impl BuildArgs {
    /// Runs it: through the daemon when one answers (it owns the builds), else in this process.
    pub async fn run(self, config: &Config) -> Result<(), Failure> {
        let request = Request {
            names: self.names.clone(),
            git_ref: self.git_ref.clone(),
            targets: self.targets.clone(),
            variables: self.vars.iter().cloned().collect(),
        };
        let plan = orchestrator::plan(config, &request).map_err(|e| Failure::usage(e.to_string()))?;
        if self.dry_run {
            for line in dry_run(config, &plan, !self.no_actions) {
                crate::say!("{line}");
            }
            for line in lint_jobs(config, &plan).await {
                crate::say!("{line}");
            }
            return Ok(());
        }
        let state = StateDir::new(config.state_dir());
        state.ensure_usable()?;
        let progress = self.watch || (stderr_is_terminal() && !self.json);
        // Live lines and bars on a terminal (not with --json); plain lines when piped and asked
        // for (--watch); else nothing.
        let reporter: Arc<dyn Reporter> = if stderr_is_terminal() && !self.json {
            Arc::new(crate::output::TerminalProgress::default())
        } else if progress {
            Arc::new(StderrReporter)
        } else {
            Arc::new(Quiet)
        };
        let (log_dir, outcomes) = match DaemonClient::find(&state).await {
            Some(daemon) => {
                through_daemon(&daemon, &state, &request, !self.no_actions, reporter, progress, self.watch).await?
            }
            None => {
                let store = crate::builds::SqliteBuilds::open(&state.root().join("builds.db"))
                    .map_err(|e| Failure::general(e.to_string()))?;
                let config = Arc::new(config.clone());
                let gitlab = gitlab_client(&config)?;
                let orchestrator = Orchestrator::new(config, gitlab, Arc::new(store), EventFeed::None, state.root())
                    .with_reporter(reporter, self.watch);
                let finished = orchestrator.run(&plan, !self.no_actions).await?;
                (finished.log_dir, finished.outcomes)
            }
        };
        print_outcomes(&outcomes, self.json, Some(&log_dir))?;
        outcome_failure(&outcomes).map_or(Ok(()), Err)
    }
}

/// The exit for a finished run: 0 when every build succeeded; else 3 when GitLab refused one
/// for authentication or permission, 4 when it did not find something, 1 otherwise.
pub(super) fn outcome_failure(outcomes: &[BuildOutcome]) -> Option<Failure> {
    if outcomes.iter().all(BuildOutcome::succeeded) {
        return None;
    }
    let refused = |codes: &[u16]| outcomes.iter().any(|o| o.gitlab_status.is_some_and(|s| codes.contains(&s)));
    let mut failure = Failure::general("some builds did not succeed");
    if refused(&[401, 403]) {
        failure.code = 3;
        failure.message = "GitLab refused the token for some builds (see above)".into();
    } else if refused(&[404]) {
        failure.code = 4;
        failure.message = "GitLab did not find what some builds need (see above)".into();
    }
    Some(failure)
}

pub(super) fn daemon_failure(e: DaemonClientError) -> Failure {
    let code = match &e {
        DaemonClientError::Refused { status: 401 | 403, .. } => 3,
        DaemonClientError::Refused { status: 404, .. } => 4,
        DaemonClientError::Refused { status: 400 | 422, .. } => 2,
        _ => 1,
    };
    Failure { message: e.to_string(), code }
}

/// How long the daemon may stay unreachable (a restart) before the CLI gives up on it.
const DAEMON_PATIENCE: Duration = Duration::from_secs(120);

/// The builds started by the daemon and followed through its API: its records say where each
/// stands, its event stream gives the progress lines. This process polls nothing on GitLab.
async fn through_daemon(
    daemon: &DaemonClient,
    state: &StateDir,
    request: &Request,
    actions: bool,
    reporter: Arc<dyn Reporter>,
    progress: bool,
    watch_logs: bool,
) -> Result<(std::path::PathBuf, Vec<BuildOutcome>), Failure> {
    let body = serde_json::json!({
        "projects": request.names,
        "ref": request.git_ref,
        "targets": request.targets,
        "variables": request.variables,
        "actions": actions,
    });
    let started = daemon.start(&body).await.map_err(daemon_failure)?;
    let mut daemon = daemon.clone();
    let labels: BTreeMap<i64, String> =
        started.builds.iter().map(|b| (b.id, format!("{}/{}", b.project, b.target))).collect();
    // Per pipeline, the builds it carries: their labels and job names (several targets can
    // share one pipeline, each with its own jobs).
    let (pipelines_tx, pipelines_rx) = tokio::sync::watch::channel(Pipelines::new());
    let lines = progress.then(|| tokio::spawn(progress_lines(daemon.clone(), pipelines_rx, reporter.clone())));
    let mut logs = tokio::task::JoinSet::new();
    if watch_logs {
        for (&id, label) in &labels {
            logs.spawn(log_lines(daemon.clone(), id, label.clone(), reporter.clone()));
        }
    }
    let mut records: BTreeMap<i64, crate::builds::BuildRecord> = BTreeMap::new();
    let mut unreachable_since: Option<tokio::time::Instant> = None;
    loop {
        let mut pending = false;
        for (&id, label) in &labels {
            if records.get(&id).is_some_and(|r| r.status.is_final()) {
                continue;
            }
            match daemon.build(id).await {
                Ok(r) => {
                    unreachable_since = None;
                    if let Some(p) = r.pipeline_id
                        && records.get(&id).is_none_or(|b| b.pipeline_id.is_none())
                    {
                        let url = r.pipeline_url.clone().unwrap_or_default();
                        reporter.line(label, &format!("pipeline {p} started: {url}"));
                    }
                    if let Some(p) = r.pipeline_id {
                        let names: BTreeSet<String> = r.jobs.keys().cloned().collect();
                        let shared = r.selector.is_some();
                        pipelines_tx.send_if_modified(|m| {
                            let builds = m.entry(p).or_default();
                            let entry = (label.clone(), shared, names.clone());
                            match builds.iter_mut().find(|(l, _, _)| l == label) {
                                Some(old) if *old == entry => false,
                                Some(old) => {
                                    *old = entry;
                                    true
                                }
                                None => {
                                    builds.push(entry);
                                    true
                                }
                            }
                        });
                    }
                    let job = r.pick_job(None).ok().filter(|(_, j)| j.status == Status::Running).map(|(n, _)| n);
                    reporter.state(label, r.status, job);
                    if r.status == BuildStatus::Queued
                        && let Some(why) = &r.reason
                        && records.get(&id).is_none_or(|b| b.reason.as_ref() != Some(why))
                    {
                        reporter.line(label, why);
                    }
                    if r.status.is_final() {
                        let p = r.pipeline_id.map(|p| format!("pipeline {p}")).unwrap_or_else(|| "build".into());
                        reporter.line(label, &format!("{p}: {}", r.status));
                    }
                    pending |= !r.status.is_final();
                    records.insert(id, r);
                }
                Err(DaemonClientError::Unreachable { .. }) => {
                    pending = true;
                    let since = *unreachable_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() > DAEMON_PATIENCE {
                        return Err(Failure::general(format!(
                            "the daemon went away for over {} s; the builds go on there (see `cloudci status`)",
                            DAEMON_PATIENCE.as_secs()
                        )));
                    }
                    // A restarted daemon resumes the builds itself; it may listen elsewhere.
                    if let Some(again) = DaemonClient::find(state).await {
                        daemon = again;
                    }
                    break;
                }
                Err(e) => return Err(daemon_failure(e)),
            }
        }
        if !pending {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if let Some(lines) = lines {
        lines.abort();
    }
    // Each log is read to its end (they are complete once their builds are final).
    let _ = tokio::time::timeout(Duration::from_secs(30), async { while logs.join_next().await.is_some() {} }).await;
    logs.abort_all();
    let outcomes: Vec<BuildOutcome> = records.values().map(Into::into).collect();
    let log_dir = records.values().find_map(|r| r.log_dir.clone()).map(Into::into).unwrap_or_default();
    Ok((log_dir, outcomes))
}

/// Reports job changes of the pipelines in `pipelines` as the daemon's stream tells them,
/// reconnecting (after the last event seen) when the daemon restarts.
/// Per pipeline: each build it carries (label, whether it shares the pipeline, its job names).
type Pipelines = BTreeMap<u64, Vec<(String, bool, BTreeSet<String>)>>;

/// The build a job event of `pipeline` is about: the one whose jobs include `job` in a shared
/// pipeline, else the pipeline's own build.
fn label_for(pipelines: &Pipelines, pipeline: u64, job: &str) -> Option<String> {
    let builds = pipelines.get(&pipeline)?;
    builds
        .iter()
        .find(|(_, shared, names)| *shared && names.contains(job))
        .or_else(|| builds.iter().find(|(_, shared, _)| !*shared))
        .map(|(l, _, _)| l.clone())
}

async fn progress_lines(
    daemon: DaemonClient,
    pipelines: tokio::sync::watch::Receiver<Pipelines>,
    reporter: Arc<dyn Reporter>,
) {
    let mut last_seq = None;
    let mut seen: BTreeSet<(u64, String)> = BTreeSet::new();
    loop {
        let query = last_seq.map(|s: u64| format!("since={s}")).unwrap_or_default();
        if let Ok(stream) = crate::sse_client::subscribe(&daemon.api_url, daemon.token(), &query).await {
            let mut stream = std::pin::pin!(stream);
            while let Some(e) = stream.next().await {
                last_seq = Some(e.seq);
                let job = e.job_name.clone().unwrap_or_default();
                let label = e.pipeline_id.and_then(|p| label_for(&pipelines.borrow(), p, &job));
                if let (Some(label), cloudci_webhook::EventKind::Job, Some(status)) = (label, e.kind, e.status())
                    && seen.insert((e.job_id.unwrap_or(0), status.to_string()))
                {
                    reporter.line(&label, &format!("{}: {status}", e.job_name.clone().unwrap_or_default()));
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Reports build `id`'s job logs line by line as the daemon's `/v1/builds/{id}/log` gives them
/// (polled with offsets), each job once to its end, until the build is final.
async fn log_lines(daemon: DaemonClient, id: i64, label: String, reporter: Arc<dyn Reporter>) {
    // Per job id (a retried job is a new id, its log read from the start): offset, complete.
    let mut read: BTreeMap<u64, (u64, bool, String)> = BTreeMap::new();
    loop {
        let Ok(b) = daemon.build(id).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let mut started: Vec<(&String, &crate::builds::JobRecord)> =
            b.jobs.iter().filter(|(_, j)| j.status == Status::Running || j.status.is_completed()).collect();
        started.sort_by_key(|(_, j)| j.id);
        for (name, job) in started {
            let entry = read.entry(job.id).or_insert((0, false, String::new()));
            // Skipped jobs never ran: nothing to read.
            if entry.1 || job.status == Status::Skipped {
                continue;
            }
            let Ok(chunk) = daemon.log(id, Some(name), entry.0).await else { continue };
            entry.0 = chunk.next_offset;
            entry.2.push_str(&String::from_utf8_lossy(&chunk.data));
            while let Some(end) = entry.2.find('\n') {
                let line: String = entry.2.drain(..=end).collect();
                reporter.line(&format!("{label} {name}"), line.trim_end());
            }
            if chunk.complete {
                if !entry.2.trim().is_empty() {
                    reporter.line(&format!("{label} {name}"), entry.2.trim_end());
                }
                entry.1 = true;
            }
        }
        let all_read = b.jobs.values().all(|j| {
            read.get(&j.id).is_some_and(|r| r.1)
                || !(j.status == Status::Running || j.status.is_completed())
                || j.status == Status::Skipped
        });
        if b.status.is_final() && all_read {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
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
            let shared: Vec<&orchestrator::PlannedBuild> =
                plan.builds[project].iter().filter(|b| b.shares_pipeline()).collect();
            for b in &plan.builds[project] {
                // The targets built by jobs share one pipeline: it is created once, by the first.
                let first_shared = shared.first().is_some_and(|f| std::ptr::eq(*f, b));
                if b.shares_pipeline() && !first_shared {
                    continue;
                }
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
                variables.push(serde_json::json!({"key": orchestrator::REQUEST_VARIABLE, "value": "<random id>", "variable_type": "env_var"}));
                let body = serde_json::json!({"ref": git_ref, "variables": variables});
                if first_shared {
                    let each: Vec<String> = shared
                        .iter()
                        .map(|s| {
                            let jobs = s.selector.as_ref().map(|x| x.describe()).unwrap_or_default();
                            format!("{} ({jobs})", s.target)
                        })
                        .collect();
                    lines.push(format!(
                        "POST {path}/pipeline  {body}  # {}: one pipeline for {}",
                        b.project,
                        each.join(", ")
                    ));
                } else {
                    lines.push(format!("POST {path}/pipeline  {body}  # {}/{}", b.project, b.target));
                }
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

/// How long a dry run waits for GitLab's lint before it says it could not ask.
const LINT_PATIENCE: Duration = Duration::from_secs(20);

/// For each project with targets built by jobs: the jobs each such target would run, from
/// GitLab's lint of the project's CI configuration at the ref (`POST /projects/:id/ci/lint`,
/// `dry_run`, `include_jobs`), which writes nothing. Without a token or GitLab, a note instead.
async fn lint_jobs(config: &Config, plan: &Plan) -> Vec<String> {
    let projects: Vec<&String> =
        plan.builds.iter().filter(|(_, b)| b.iter().any(|b| b.shares_pipeline())).map(|(p, _)| p).collect();
    if projects.is_empty() {
        return Vec::new();
    }
    let mut lines =
        vec![String::new(), "# the jobs each target would run (GitLab's CI lint, which writes nothing):".to_owned()];
    // One attempt more at most: a dry run does not wait long for a GitLab it cannot reach.
    let client = config.gitlab_token().map_err(|e| e.to_string()).and_then(|token| {
        cloudci_gitlab::Gitlab::builder(config.gitlab_url())
            .private_token(token)
            .retry(cloudci_gitlab::RetryPolicy { max_retries: 1, ..cloudci_gitlab::RetryPolicy::default() })
            .build()
            .map_err(|e| e.to_string())
    });
    let gitlab = match client {
        Ok(g) => g,
        Err(e) => {
            lines.push(format!("#   could not ask GitLab: {e}"));
            return lines;
        }
    };
    for project in projects {
        let asked = tokio::time::timeout(LINT_PATIENCE, lint_project(&gitlab, config, project, &plan.builds[project]));
        match asked.await {
            Ok(Ok(more)) => lines.extend(more),
            Ok(Err(e)) => lines.push(format!("#   {project}: could not ask GitLab: {e}")),
            Err(_) => lines
                .push(format!("#   {project}: could not ask GitLab: no answer within {} s", LINT_PATIENCE.as_secs())),
        }
    }
    lines
}

async fn lint_project(
    gitlab: &cloudci_gitlab::Gitlab,
    config: &Config,
    project: &str,
    builds: &[orchestrator::PlannedBuild],
) -> Result<Vec<String>, cloudci_gitlab::Error> {
    use cloudci_gitlab::ProjectRef;
    use cloudci_gitlab::types::CiLint;
    let path = ProjectRef::parse(&config.projects[project].gitlab);
    let git_ref = match builds.iter().find_map(|b| b.git_ref.clone()) {
        Some(r) => r,
        None => gitlab.project(path.clone()).await?.default_branch.unwrap_or_else(|| "main".into()),
    };
    // The project's own file, as GitLab resolves it at the ref (includes and all).
    let content = "include:\n  - local: .gitlab-ci.yml\n";
    let result = gitlab.ci_lint(path, &CiLint::dry_run(content, git_ref.clone())).await?;
    let gitlab_path = &config.projects[project].gitlab;
    let mut lines = vec![format!(
        "#   {gitlab_path} at {git_ref} (GitLab's lint simulates a push pipeline: an API pipeline, \
         CI_PIPELINE_SOURCE=api, may not get every job listed, or may be refused)"
    )];
    if !result.valid {
        for e in &result.errors {
            let hint = orchestrator::error::refusal_hint(e).map(|h| format!(" (hint: {h})")).unwrap_or_default();
            lines.push(format!("#   {project}: GitLab would refuse it: {e}{hint}"));
        }
        return Ok(lines);
    }
    let jobs = result.jobs.unwrap_or_default();
    for b in builds {
        let Some(selector) = &b.selector else {
            lines.push(format!(
                "#   {project}/{}: a pipeline of its own, its jobs chosen by its variables (the lint cannot set them)",
                b.target
            ));
            continue;
        };
        let mine: Vec<String> =
            jobs.iter().filter(|j| selector.matches(&j.name)).map(|j| format!("{} ({})", j.name, j.stage)).collect();
        if mine.is_empty() {
            lines.push(format!(
                "#   {project}/{}: no job ({}); the pipeline's jobs: {}",
                b.target,
                selector.describe(),
                jobs.iter().map(|j| j.name.as_str()).collect::<Vec<_>>().join(", ")
            ));
        } else {
            lines.push(format!("#   {project}/{}: {}", b.target, mine.join(", ")));
        }
    }
    Ok(lines)
}
