//! `cloudci serve` recovering from what laptops and GitLab do to it: pipelines that ran and a push
//! made while it was down, a hook GitLab paused meanwhile, a hook creation answered 502 after it happened, and a
//! second daemon on the same state directory.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use cloudci_gitlab::types::{CreatePipeline, Status};
use cloudci_gitlab::{Gitlab, PipelineId, ProjectRef};
use common::*;
use futures_util::TryStreamExt;
use gitlab_sim::Sim;

const TOKEN: &str = "sim-token-for-recovery";
const CI: &str =
    "stages: [build, test]\nbuild:\n  stage: build\n  script: echo build\ntest:\n  stage: test\n  script: echo test\n";
const PROJECT: &str = "[projects.firmware]\ngitlab = \"acme/firmware\"\ntargets = [\"host\"]\n";

async fn sim(dir: &std::path::Path, faults: &str) -> Sim {
    sim_with(dir, TOKEN, CI, faults, 11).await
}

fn client(url: &str) -> Gitlab {
    client_of(url, TOKEN)
}

async fn wait_finished(gitlab: &Gitlab, id: PipelineId) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !gitlab.pipeline("acme/firmware", id).await.unwrap().status.is_completed() {
        assert!(tokio::time::Instant::now() < deadline, "pipeline {id} never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn one_daemon_per_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _, _) = write_config(dir.path(), "", 30);
    let first = serve(&config, "http://127.0.0.1:9", TOKEN, &[]);
    // The second one, on other ports but the same state directory, refuses to start and says why.
    let out = cloudci(
        &config,
        "http://127.0.0.1:9",
        TOKEN,
        &[
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--api-listen",
            &format!("127.0.0.1:{}", free_port()),
        ],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another cloudci serve") && err.contains(&format!("pid {}", first.0.id())), "{err}");
    // A crash leaves no stale lock behind.
    first.crash();
    let again = serve(&config, "http://127.0.0.1:9", TOKEN, &[]);
    drop(again);
}

/// Pipelines that start and finish while `serve` is down (every delivery fails, so GitLab pauses
/// the hook too) reach a subscriber that resumes with `Last-Event-ID` once it is back — without
/// anyone having asked cloudci to watch them — and the paused hook is re-enabled at start. The
/// push made meanwhile comes back through GitLab's delivery log (a resend).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_ran_during_an_outage_reaches_subscribers_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(dir.path(), "").await;
    let gitlab = client(sim.url());
    let (config, _, api_port) = write_config(dir.path(), PROJECT, 30);
    let daemon = serve(&config, sim.url(), TOKEN, &["--keep-hooks"]);
    let token = token(&config);
    // Heard live: one pipeline before the outage.
    let mut events = Events::open(api_port, &token, "?since=0").await;
    let before = gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("main")).await.unwrap();
    let mut last_seq = 0;
    let mut finals: BTreeMap<u64, String> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while finals.get(&before.id.0).map(String::as_str) != Some("success") {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let e = events.next(left).await.expect("the first pipeline's events");
        last_seq = e["seq"].as_u64().unwrap();
        if e["kind"] == "pipeline" {
            finals.insert(e["pipeline_id"].as_u64().unwrap(), e["status"].as_str().unwrap().to_owned());
        }
    }
    drop(events);

    daemon.crash();
    // A push while it is down: GitLab's API cannot tell it again, its delivery log can.
    let repo = dir.path().join("repo");
    std::fs::write(repo.join("change.txt"), "pushed during the outage").unwrap();
    gitlab_sim::fixtures::git(&repo, &["add", "-A"]);
    gitlab_sim::fixtures::git(&repo, &["commit", "-q", "-m", "During the outage"]);
    let pushed = gitlab_sim::fixtures::git(&repo, &["rev-parse", "HEAD"]);
    // GitLab logs the failed push delivery (once the hook is paused it would not even try).
    let hook = gitlab.hooks(ProjectRef::from("acme/firmware")).try_collect::<Vec<_>>().await.unwrap()[0].id;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let log: Vec<_> = gitlab.hook_events("acme/firmware", hook, &Default::default()).try_collect().await.unwrap();
        if log.iter().any(|e| e.trigger == "push_hooks") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "GitLab never tried to deliver the push");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut during = Vec::new();
    for _ in 0..3 {
        during.push(gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("main")).await.unwrap());
    }
    for p in &during {
        wait_finished(&gitlab, p.id).await;
    }
    let hooks: Vec<_> = gitlab.hooks(ProjectRef::from("acme/firmware")).try_collect().await.unwrap();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].alert_status.as_deref(), Some("temporarily_disabled"), "GitLab paused the hook");

    let _daemon = serve(&config, sim.url(), TOKEN, &[]);
    let hooks: Vec<_> = gitlab.hooks(ProjectRef::from("acme/firmware")).try_collect().await.unwrap();
    assert_eq!(hooks.len(), 1, "the same hook, updated in place");
    assert_eq!(hooks[0].alert_status.as_deref(), Some("executable"), "re-enabled at start, not a minute later");

    let mut events = Events::open(api_port, &token, &format!("?since={last_seq}")).await;
    let mut jobs: BTreeMap<u64, String> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut push_seen = false;
    let caught_up =
        |finals: &BTreeMap<u64, String>| during.iter().all(|p| finals.get(&p.id.0).is_some_and(|s| s == "success"));
    while !caught_up(&finals) || !push_seen {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let e = events.next(left).await.unwrap_or_else(|| panic!("never heard of the outage's pipelines: {finals:?}"));
        let status = e["status"].as_str().unwrap_or_default().to_owned();
        match e["kind"].as_str() {
            Some("pipeline") => {
                finals.insert(e["pipeline_id"].as_u64().unwrap(), status);
            }
            Some("job") => {
                jobs.insert(e["job_id"].as_u64().unwrap(), status);
            }
            Some("push") => push_seen |= e["sha"] == pushed.as_str(),
            _ => {}
        }
    }
    for p in &during {
        let truth: Vec<_> =
            gitlab.pipeline_jobs("acme/firmware", p.id, &Default::default()).try_collect().await.unwrap();
        assert_eq!(truth.len(), 2);
        for j in truth {
            assert_eq!(jobs.get(&j.id.0).map(|s| Status::parse(s)), Some(j.status), "job {} of {}", j.id, p.id);
        }
    }
}

/// GitLab creates the hook but the answer is lost (a 502 from its proxy): the daemon finds it
/// instead of creating a second one, and starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_created_behind_a_502_is_found_not_duplicated() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(dir.path(), "api_5xx_after=1").await;
    let gitlab = client(sim.url());
    let (config, _, _) = write_config(dir.path(), PROJECT, 30);
    let daemon = serve(&config, sim.url(), TOKEN, &[]);
    let hooks: Vec<_> = gitlab.hooks(ProjectRef::from("acme/firmware")).try_collect().await.unwrap();
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert!(hooks[0].name.as_deref().unwrap().starts_with("cloudci-"));
    drop(daemon);
}
