//! `cloudci serve` as a real process against gitlab-sim: hooks registered through the API,
//! deliveries received and verified, faults that do not change what subscribers end with, a
//! crash right after a 2xx, and hook removal on shutdown.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use cloudci_gitlab::types::{CreatePipeline, Status};
use cloudci_gitlab::{Gitlab, ProjectRef};
use common::*;
use futures_util::TryStreamExt;
use gitlab_sim::{Sim, SimConfig};
use serde_json::Value;

const TOKEN: &str = "sim-token-for-serve";
const CI: &str = "stages: [build, test]\nbuild:\n  stage: build\n  script: echo build $BOARD\ntest:\n  stage: test\n  script: echo test\n";

async fn sim(dir: &std::path::Path, faults: &str) -> Sim {
    sim_with(dir, TOKEN, CI, faults, 7).await
}

fn client(url: &str) -> Gitlab {
    client_of(url, TOKEN)
}

const PROJECT: &str = "[projects.firmware]\ngitlab = \"acme/firmware\"\ntargets = [\"host\"]\n";

/// Final status per pipeline and per job, as the event stream told it, once `pipelines`
/// pipelines and `jobs` jobs have all finished.
async fn follow_until(
    events: &mut Events,
    pipelines: usize,
    jobs: usize,
) -> (BTreeMap<u64, String>, BTreeMap<u64, String>) {
    let (mut p, mut j) = (BTreeMap::new(), BTreeMap::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let finished =
            |m: &BTreeMap<u64, String>, n| m.len() == n && m.values().all(|s| Status::parse(s).is_completed());
        let done = finished(&p, pipelines) && finished(&j, jobs);
        if done {
            return (p, j);
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let e = events.next(left).await.unwrap_or_else(|| panic!("the stream went quiet: pipelines {p:?} jobs {j:?}"));
        let status = e["status"].as_str().unwrap_or("").to_owned();
        match e["kind"].as_str() {
            Some("pipeline") => {
                p.insert(e["pipeline_id"].as_u64().unwrap(), status);
            }
            Some("job") => {
                j.insert(e["job_id"].as_u64().unwrap(), status);
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_registers_its_hook_and_streams_what_gitlab_sends() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(dir.path(), "").await;
    let gitlab = client(sim.url());
    let (config, _, api_port) = write_config(dir.path(), PROJECT, 30);
    let daemon = serve(&config, sim.url(), TOKEN, &[]);

    let hooks: Vec<_> = gitlab.hooks(ProjectRef::from("acme/firmware")).try_collect().await.unwrap();
    assert_eq!(hooks.len(), 1);
    let hook = &hooks[0];
    assert!(hook.name.as_deref().unwrap().starts_with("cloudci-"));
    assert!(hook.pipeline_events && hook.job_events && hook.merge_requests_events && hook.push_events);
    assert_eq!(hook.token_present, Some(true));
    assert_eq!(hook.signing_token_present, Some(true));

    let mut events = Events::open(api_port, &token(&config), "?project=acme/firmware").await;
    let p = gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("main").variable("BOARD", "x")).await.unwrap();
    let (pipelines, jobs) = follow_until(&mut events, 1, 2).await;
    assert_eq!(pipelines[&p.id.0], "success");
    assert_eq!(jobs.len(), 2);
    assert!(jobs.values().all(|s| s == "success"), "{jobs:?}");

    // `hooks show` gives the URL and token GitLab uses; a forged delivery without the signature
    // (GitLab 19 signs, so cloudci requires it) is refused.
    let out = cloudci(&config, sim.url(), TOKEN, &["hooks", "show", "--json"]).output().unwrap();
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    let url = shown["url"].as_str().unwrap();
    assert_eq!(url, hook.url);
    let forged = reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/json")
        .header("X-Gitlab-Token", shown["token"].as_str().unwrap())
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);

    // A clean shutdown removes the hook.
    assert!(daemon.terminate().success());
    let hooks: Vec<_> = gitlab.hooks(ProjectRef::from("acme/firmware")).try_collect().await.unwrap();
    assert!(hooks.is_empty(), "{hooks:?}");
}

/// Lost, repeated, late and reordered deliveries: subscribers end with the same final states, the
/// reconciler filling in what GitLab never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_do_not_change_what_subscribers_end_with() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(dir.path(), "drop=0.3,duplicate=0.3,reorder=0.5,delay=0..300").await;
    let gitlab = client(sim.url());
    let (config, _, api_port) = write_config(dir.path(), PROJECT, 2);
    let daemon = serve(&config, sim.url(), TOKEN, &[]);
    let mut events = Events::open(api_port, &token(&config), "").await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("main")).await.unwrap().id.0);
    }
    let (pipelines, jobs) = follow_until(&mut events, 4, 8).await;
    for id in &ids {
        assert_eq!(pipelines[id], "success", "{pipelines:?}");
    }
    assert_eq!(jobs.len(), 8);
    assert!(jobs.values().all(|s| s == "success"), "{jobs:?}");
    drop(daemon);
}

/// `kill -9` right after GitLab got its 2xx: the delivery is stored, and the restarted daemon
/// turns it into an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_acknowledged_before_a_crash_is_delivered_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    // No projects: nothing to register, the receiver alone.
    let (config, hook_port, api_port) = write_config(dir.path(), "", 30);
    let daemon = serve(&config, "http://127.0.0.1:9", TOKEN, &[]);
    let out = cloudci(&config, "http://127.0.0.1:9", TOKEN, &["hooks", "show", "--json"]).output().unwrap();
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(shown["url"].as_str().unwrap().starts_with(&format!("http://127.0.0.1:{hook_port}/hooks/")));
    let samples = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("gitlab/tests/fixtures");
    let body = std::fs::read(samples.join("webhook-pipeline-event.json")).unwrap();
    let resp = reqwest::Client::new()
        .post(shown["url"].as_str().unwrap())
        .header("Content-Type", "application/json")
        .header("X-Gitlab-Event", "Pipeline Hook")
        .header("X-Gitlab-Token", shown["token"].as_str().unwrap())
        .header("Idempotency-Key", "before-the-crash")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    daemon.crash(); // SIGKILL: no shutdown code runs

    let daemon = serve(&config, "http://127.0.0.1:9", TOKEN, &[]);
    let mut events = Events::open(api_port, &token(&config), "?since=0").await;
    let first = events.next(Duration::from_secs(10)).await.expect("the event after restart");
    assert_eq!(first["kind"], "pipeline");
    assert_eq!(first["pipeline_id"], 31);
    assert_eq!(first["status"], "success");
    drop(daemon);
}

/// Flags override the file: the listeners and the public URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _, file_api_port) = write_config(dir.path(), "", 30);
    let (hook, api) = (free_port(), free_port());
    let _daemon = serve(
        &config,
        "http://127.0.0.1:9",
        TOKEN,
        &[
            "--listen",
            &format!("127.0.0.1:{hook}"),
            "--public-url",
            &format!("http://127.0.0.1:{hook}"),
            "--api-listen",
            &format!("127.0.0.1:{api}"),
        ],
    );
    let mut events = Events::open(api, &token(&config), "").await;
    assert!(events.next(Duration::from_millis(100)).await.is_none());
    assert!(
        reqwest::Client::new().get(format!("http://127.0.0.1:{file_api_port}/v1/openapi.json")).send().await.is_err()
    );
    let out = cloudci(&config, "http://127.0.0.1:9", TOKEN, &["hooks", "show", "--json"]).output().unwrap();
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(shown["url"].as_str().unwrap().starts_with(&format!("http://127.0.0.1:{hook}/hooks/")));
}

#[test]
fn bad_configs_name_the_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cloudci.toml");
    std::fs::write(&path, "[projects.fw]\ngitlab = \"a/b\"\ntargets = [\"nrf52\"]\n\n[targets.stm32]\n").unwrap();
    let out = cloudci(&path, "http://127.0.0.1:9", "x", &["serve"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cloudci.toml:3:") && err.contains("projects.fw.targets") && err.contains("known targets: stm32"),
        "{err}"
    );
    let out = cloudci(&dir.path().join("missing.toml"), "http://127.0.0.1:9", "x", &["serve"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

/// `cloudci hooks rotate` while serving: GitLab's hook gets the new URL and token, the daemon
/// accepts them without a restart, and builds keep streaming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_secrets_keeps_events_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(dir.path(), "").await;
    let gitlab = client(sim.url());
    let (config, _, api_port) = write_config(dir.path(), PROJECT, 30);
    let _daemon = serve(&config, sim.url(), TOKEN, &[]);
    let before: Vec<_> = gitlab.hooks(ProjectRef::from("acme/firmware")).try_collect().await.unwrap();
    let out = cloudci(&config, sim.url(), TOKEN, &["hooks", "rotate"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after: Vec<_> = gitlab.hooks(ProjectRef::from("acme/firmware")).try_collect().await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].id, before[0].id, "the same hook, updated");
    assert_ne!(after[0].url, before[0].url, "a new path secret");
    // The daemon notices the rotation within a few seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut events = Events::open(api_port, &token(&config), "").await;
    let p = gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("main")).await.unwrap();
    let (pipelines, _) = follow_until(&mut events, 1, 2).await;
    assert_eq!(pipelines[&p.id.0], "success");
    let listed = cloudci(&config, sim.url(), TOKEN, &["hooks", "list", "--json"]).output().unwrap();
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["hook"]["alert_status"], "executable");
}

/// A project with `rebuild_on_push`: a commit to its ref starts a build of it, and the notify
/// command hears about every finished pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_commits_are_rebuilt_and_final_states_notified() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(dir.path(), "").await;
    let gitlab = client(sim.url());
    let notes = dir.path().join("notes.jsonl");
    let projects = format!(
        "{PROJECT}ref = \"main\"\nrebuild_on_push = true\n\n[notify]\ncommand = \"cat >> {}\"\n",
        notes.display()
    );
    let (config, _, _) = write_config(dir.path(), &projects, 5);
    let _daemon = serve(&config, sim.url(), TOKEN, &[]);
    let repo = dir.path().join("repo");
    std::fs::write(repo.join("change.txt"), "new code").unwrap();
    gitlab_sim::fixtures::git(&repo, &["add", "-A"]);
    gitlab_sim::fixtures::git(&repo, &["commit", "-q", "-m", "New code"]);
    let head = gitlab_sim::fixtures::git(&repo, &["rev-parse", "HEAD"]);
    // The sim announces the push; cloudci waits out the debounce and builds the new head.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let built = loop {
        let filter = cloudci_gitlab::PipelineFilter { sha: Some(head.clone()), ..Default::default() };
        let ps: Vec<_> = gitlab.pipelines(ProjectRef::from("acme/firmware"), &filter).try_collect().await.unwrap();
        if let Some(p) = ps.into_iter().find(|p| p.status == Status::Success) {
            break p;
        }
        assert!(tokio::time::Instant::now() < deadline, "no rebuild of {head}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(built.source.as_deref(), Some("api"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&notes).unwrap_or_default();
        let done = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|e| e["kind"] == "pipeline" && e["pipeline_id"] == built.id.0 && e["status"] == "success");
        if done {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the notify command never heard: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A build started by the CLI is handed to the daemon, whose reconciler reports its final state
/// to every subscriber even when GitLab's deliveries never arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_builds_are_watched_by_the_daemon_too() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(dir.path(), "drop=1").await;
    let (config, _, api_port) = write_config(dir.path(), PROJECT, 1);
    let _daemon = serve(&config, sim.url(), TOKEN, &[]);
    let mut events = Events::open(api_port, &token(&config), "").await;
    let out = cloudci(&config, sim.url(), TOKEN, &["build", "firmware", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = summary["builds"][0]["pipeline_url"].as_str().unwrap().rsplit('/').next().unwrap().parse::<u64>().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let e = events.next(left).await.expect("the daemon never reported the CLI's pipeline");
        if e["kind"] == "pipeline" && e["pipeline_id"] == id && e["status"] == "success" {
            assert_eq!(e["source"], "poll", "no webhook was delivered, so it came from polling");
            break;
        }
    }
}

/// A pipeline that runs into a required manual job stops there, and subscribers are told: its
/// `manual` comes after `running` although it ranks below it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_blocked_on_a_manual_job_is_announced_as_manual() {
    let dir = tempfile::tempdir().unwrap();
    let gated = "stages: [build, flash]\nbuild:\n  stage: build\n  script: sleep 0.3\nflash:\n  stage: flash\n  script: 'true'\n  when: manual\n  allow_failure: false\n";
    let repo = gitlab_sim::fixtures::repo_with(dir.path(), "repo", &[(".gitlab-ci.yml", gated)]);
    let sim = Sim::start(SimConfig {
        token: TOKEN.into(),
        projects: vec![("acme/firmware".into(), repo)],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let gitlab = client(sim.url());
    let (config, _, api_port) = write_config(dir.path(), PROJECT, 30);
    let _daemon = serve(&config, sim.url(), TOKEN, &[]);
    let mut events = Events::open(api_port, &token(&config), "").await;
    let p = gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("main")).await.unwrap();
    let mut statuses = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while statuses.last().map(String::as_str) != Some("manual") {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let e = events.next(left).await.unwrap_or_else(|| panic!("never told it was blocked: {statuses:?}"));
        if e["kind"] == "pipeline" && e["pipeline_id"] == p.id.0 {
            statuses.push(e["status"].as_str().unwrap().to_owned());
        }
    }
    assert!(statuses.contains(&"running".to_owned()), "{statuses:?}");
}
