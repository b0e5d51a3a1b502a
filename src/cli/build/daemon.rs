//! Builds started by the daemon and followed through its API and event stream.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use cloudci_gitlab::types::Status;
use futures_util::StreamExt;

use super::daemon_failure;
use crate::builds::BuildStatus;
use crate::cli::Failure;
use crate::orchestrator::{BuildOutcome, Reporter, Request};
use crate::sse_client::{DaemonClient, DaemonClientError};
use crate::state::StateDir;

/// How long the daemon may stay unreachable (a restart) before the CLI gives up on it.
const DAEMON_PATIENCE: Duration = Duration::from_secs(120);

/// The builds started by the daemon and followed through its API: its records say where each
/// stands, its event stream gives the progress lines. This process polls nothing on GitLab.
pub(super) async fn through_daemon(
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
    mut pipelines: tokio::sync::watch::Receiver<Pipelines>,
    reporter: Arc<dyn Reporter>,
) {
    let mut last_seq = None;
    let mut seen: BTreeSet<(u64, String)> = BTreeSet::new();
    // Job events of pipelines no record names yet: the stream can be ahead of the records (a
    // short job is running before the record says which pipeline is its build's), so they are
    // told once one does.
    let mut early: std::collections::VecDeque<cloudci_webhook::BuildEvent> = std::collections::VecDeque::new();
    loop {
        let query = last_seq.map(|s: u64| format!("since={s}")).unwrap_or_default();
        if let Ok(stream) = crate::sse_client::subscribe(&daemon.api_url, daemon.token(), &query).await {
            let mut stream = std::pin::pin!(stream);
            loop {
                tokio::select! {
                    e = stream.next() => {
                        let Some(e) = e else { break };
                        last_seq = Some(e.seq);
                        let told = tell(&e, &pipelines.borrow(), &mut seen, &*reporter);
                        if !told && e.kind == cloudci_webhook::EventKind::Job {
                            if early.len() == EARLY_EVENTS {
                                early.pop_front();
                            }
                            early.push_back(e);
                        }
                    }
                    Ok(()) = pipelines.changed() => {
                        let known = pipelines.borrow_and_update().clone();
                        early.retain(|e| !tell(e, &known, &mut seen, &*reporter));
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// How many job events of pipelines not named yet are kept (other builds' events are among
/// them; the oldest go first).
const EARLY_EVENTS: usize = 1024;

/// Reports a job event of a build being followed (once per job and status); whether it is one.
fn tell(
    e: &cloudci_webhook::BuildEvent,
    pipelines: &Pipelines,
    seen: &mut BTreeSet<(u64, String)>,
    reporter: &dyn Reporter,
) -> bool {
    let job = e.job_name.clone().unwrap_or_default();
    let Some(label) = e.pipeline_id.and_then(|p| label_for(pipelines, p, &job)) else { return false };
    if let (cloudci_webhook::EventKind::Job, Some(status)) = (e.kind, e.status())
        && seen.insert((e.job_id.unwrap_or(0), status.to_string()))
    {
        reporter.line(&label, &format!("{job}: {status}"));
    }
    true
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
