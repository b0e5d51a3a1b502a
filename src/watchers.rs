//! Daemon tasks that react to the event stream: rebuilding on new commits (after Build-Server's
//! rebuilder) and notifications on final states.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cloudci_gitlab::{Gitlab, ProjectRef};
use cloudci_webhook::{BuildEvent, EventFilter, EventKind, Hub, Problem};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::config::Config;
use crate::orchestrator::{Orchestrator, Request};

/// How long a burst of pushes is gathered before one rebuild starts.
pub const DEBOUNCE: Duration = Duration::from_secs(3);
/// How often branch heads are checked when no push arrives.
pub const HEAD_POLL: Duration = Duration::from_secs(60);

/// Starts builds for `rebuild_on_push` projects when their ref gets new commits: on a Push Hook,
/// or, when webhooks are silent, when polling shows the branch head moved. Pushes within
/// [`DEBOUNCE`] of each other make one rebuild.
pub async fn rebuild_on_push(config: Arc<Config>, gitlab: Gitlab, hub: Hub, orchestrator: Orchestrator) {
    let watched: Vec<(String, String, Option<String>)> = config
        .projects
        .iter()
        .filter(|(_, p)| p.rebuild_on_push)
        .map(|(n, p)| (n.clone(), p.gitlab.clone(), p.default_ref.clone()))
        .collect();
    if watched.is_empty() {
        return;
    }
    // The ref each project follows, and the head last built.
    let mut refs: BTreeMap<String, String> = BTreeMap::new();
    let mut heads: BTreeMap<String, String> = BTreeMap::new();
    for (name, gitlab_path, r) in &watched {
        let git_ref = match r {
            Some(r) => r.clone(),
            None => match gitlab.project(ProjectRef::parse(gitlab_path)).await {
                Ok(p) => p.default_branch.unwrap_or_else(|| "main".into()),
                Err(e) => {
                    tracing::warn!(project = %name, "rebuild on push: {e}");
                    continue;
                }
            },
        };
        if let Ok(b) = gitlab.branch(ProjectRef::parse(gitlab_path), &git_ref).await {
            heads.insert(name.clone(), b.commit.id);
        }
        refs.insert(name.clone(), git_ref);
    }
    let filter =
        EventFilter { projects: watched.iter().map(|(_, g, _)| g.clone()).collect(), ..EventFilter::default() };
    let mut events = Box::pin(hub.subscribe(filter, None));
    let mut due: BTreeMap<String, (tokio::time::Instant, String)> = BTreeMap::new();
    let mut poll = tokio::time::interval(HEAD_POLL);
    poll.tick().await;
    loop {
        let next_due = due.values().map(|(t, _)| *t).min();
        tokio::select! {
            Some(Ok(e)) = events.next() => {
                if e.kind != EventKind::Push || e.status.as_deref() == Some("deleted") {
                    continue;
                }
                if let Some((name, _, _)) = watched.iter().find(|(_, g, _)| e.project.as_deref() == Some(g.as_str()))
                    && refs.get(name) == e.git_ref.as_ref()
                    && let Some(sha) = e.sha.clone()
                {
                    due.insert(name.clone(), (tokio::time::Instant::now() + DEBOUNCE, sha));
                }
            }
            _ = poll.tick() => {
                for (name, gitlab_path, _) in &watched {
                    let Some(r) = refs.get(name) else { continue };
                    if let Ok(b) = gitlab.branch(ProjectRef::parse(gitlab_path), r).await
                        && heads.get(name) != Some(&b.commit.id)
                        && !due.contains_key(name)
                    {
                        tracing::info!(project = %name, "branch head moved without a push event");
                        due.insert(name.clone(), (tokio::time::Instant::now(), b.commit.id));
                    }
                }
            }
            _ = sleep_until(next_due) => {
                let now = tokio::time::Instant::now();
                let ready: Vec<String> = due.iter().filter(|(_, (t, _))| *t <= now).map(|(n, _)| n.clone()).collect();
                for name in ready {
                    let (_, sha) = due.remove(&name).expect("listed");
                    if heads.get(&name) == Some(&sha) {
                        continue;
                    }
                    heads.insert(name.clone(), sha.clone());
                    let git_ref = refs[&name].clone();
                    tracing::info!(project = %name, %sha, "new commits: rebuilding");
                    start(&orchestrator, &name, &git_ref).await;
                }
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A daemon build of `project` at `git_ref`, carried on in the background.
async fn start(orchestrator: &Orchestrator, project: &str, git_ref: &str) {
    let request = Request { names: vec![project.to_owned()], git_ref: Some(git_ref.to_owned()), ..Request::default() };
    let started = match orchestrator.plan(&request) {
        Ok(plan) => orchestrator.start(&plan, true).await,
        Err(e) => Err(e.into()),
    };
    if let Err(e) = started {
        tracing::warn!(project, "rebuild failed: {e}");
    }
}

/// On every pipeline that reaches a final state: runs `[notify] command` with the event as JSON on
/// its standard input, and shows a desktop notification when `[notify] desktop` is on (builds with
/// the `desktop` feature, through the freedesktop `notify-send` tool).
///
/// Also once when the daemon runs out of something (a full disk, file descriptors, a busy
/// database): the command gets `{"kind": "health", "problem": "disk_full", "message": ...,
/// "since": ..., "detail": ...}`. Once per episode, and not again for the same problem within
/// [`HEALTH_QUIET`] (a disk on the edge comes and goes).
pub async fn notify(config: Arc<Config>, hub: Hub) {
    if config.notify.command.is_none() && !config.notify.desktop {
        return;
    }
    let mut events = Box::pin(hub.subscribe(EventFilter::default(), None));
    let mut health = hub.health().changes();
    let mut told: BTreeMap<Problem, tokio::time::Instant> = BTreeMap::new();
    loop {
        tokio::select! {
            item = events.next() => {
                let Some(item) = item else { return };
                let Ok(e) = item else { continue };
                if e.kind != EventKind::Pipeline || !e.status().is_some_and(|s| s.is_completed()) {
                    continue;
                }
                let line = serde_json::to_vec(&e).unwrap_or_default();
                if let Some(command) = &config.notify.command {
                    run_command(command, &line).await;
                }
                if config.notify.desktop {
                    desktop(&e).await;
                }
            }
            Ok(()) = health.changed() => {
                let now = tokio::time::Instant::now();
                for r in hub.health().reports() {
                    // The log comes and goes with each line; `/v1/health` reports it.
                    if r.kind == Problem::LogUnwritable || told.get(&r.kind).is_some_and(|t| now - *t < HEALTH_QUIET) {
                        continue;
                    }
                    told.insert(r.kind, now);
                    tracing::info!(problem = r.kind.as_str(), "notifying: {}", r.message);
                    let line = serde_json::to_vec(&serde_json::json!({
                        "kind": "health",
                        "problem": r.kind,
                        "message": r.message,
                        "since": r.since,
                        "detail": r.detail,
                    }))
                    .unwrap_or_default();
                    if let Some(command) = &config.notify.command {
                        run_command(command, &line).await;
                    }
                    if config.notify.desktop {
                        desktop_problem(&r).await;
                    }
                }
            }
        }
    }
}

/// How long a problem already notified is not notified again.
pub const HEALTH_QUIET: Duration = Duration::from_secs(600);

async fn run_command(command: &str, json: &[u8]) {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn();
    match child {
        Ok(mut child) => {
            if let Some(mut stdin) = child.stdin.take() {
                let mut line = json.to_vec();
                line.push(b'\n');
                let _ = stdin.write_all(&line).await;
            }
            match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
                Ok(Ok(s)) if !s.success() => tracing::warn!("notify command exited with {s}"),
                Ok(Err(e)) => tracing::warn!("notify command: {e}"),
                Err(_) => tracing::warn!("notify command still running after 30 s; left alone"),
                _ => {}
            }
        }
        Err(err) => tracing::warn!("cannot run the notify command: {err}"),
    }
}

#[cfg(feature = "desktop")]
async fn desktop(e: &BuildEvent) {
    use cloudci_gitlab::types::Status;
    let status = e.status().unwrap_or(Status::Created);
    let title = format!("{} {}", e.project.as_deref().unwrap_or("cloudci"), e.git_ref.as_deref().unwrap_or(""));
    let body = format!("pipeline {}: {status}", e.pipeline_id.unwrap_or(0));
    let urgency = if status == Status::Success { "normal" } else { "critical" };
    let result = tokio::process::Command::new("notify-send")
        .args(["--app-name=cloudci", &format!("--urgency={urgency}"), &title, &body])
        .status()
        .await;
    if let Err(err) = result {
        tracing::warn!("desktop notification: notify-send: {err}");
    }
}

#[cfg(feature = "desktop")]
async fn desktop_problem(r: &cloudci_webhook::Report) {
    let title = format!("cloudci: {}", r.kind.as_str().replace('_', " "));
    let result = tokio::process::Command::new("notify-send")
        .args(["--app-name=cloudci", "--urgency=critical", &title, r.message])
        .status()
        .await;
    if let Err(err) = result {
        tracing::warn!("desktop notification: notify-send: {err}");
    }
}

#[cfg(not(feature = "desktop"))]
async fn desktop_problem(_: &cloudci_webhook::Report) {
    desktop_missing();
}

#[cfg(not(feature = "desktop"))]
async fn desktop(_: &BuildEvent) {
    desktop_missing();
}

#[cfg(not(feature = "desktop"))]
fn desktop_missing() {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!("[notify] desktop = true, but this cloudci was built without the `desktop` feature");
    });
}
