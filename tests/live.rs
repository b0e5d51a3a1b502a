//! The everyday loop (issue 11) as a new user lives it, against gitlab-sim: `cloudci serve`, a
//! build through the API, `cloudci logs ID --follow` printing the running job's log live and
//! ending with it, `cloudci cancel` and `cloudci retry`, `cloudci source`, five targets under a
//! limit of three pipelines (two wait as `queued`), and `--watch` keeping each log's last lines.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use cloudci_gitlab::{Gitlab, PipelineFilter, ProjectRef, RetryPolicy};
use common::*;
use futures_util::TryStreamExt;
use gitlab_sim::{Sim, SimConfig};
use serde_json::{Value, json};

const TOKEN: &str = "sim-token-for-live";

/// One job printing a numbered line a second (`$TICKS` of them; 3 unless set), failing when
/// `$FAIL` is set.
const CI: &str = "build:\n  stage: build\n  script:\n    - for i in $(seq 1 ${TICKS:-3}); do echo \"tick $i\"; sleep 1; done\n    - test -z \"$FAIL\"\n";

async fn sim(dir: &std::path::Path) -> Sim {
    let repo = gitlab_sim::fixtures::repo_with(dir, "repo", &[(".gitlab-ci.yml", CI)]);
    Sim::start(SimConfig {
        token: TOKEN.into(),
        projects: vec![("acme/firmware".into(), repo)],
        runners: 8,
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

const PROJECTS: &str = "[projects.firmware]\ngitlab = \"acme/firmware\"\ntargets = [\"host\"]\n";

struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    fn new(config: &std::path::Path, port: u16) -> Self {
        Self { base: format!("http://127.0.0.1:{port}"), token: token(config), http: reqwest::Client::new() }
    }

    async fn start(&self, body: Value) -> Vec<i64> {
        let resp = self
            .http
            .post(format!("{}/v1/builds", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let v: Value = resp.json().await.unwrap();
        v["builds"].as_array().unwrap().iter().map(|b| b["id"].as_i64().unwrap()).collect()
    }

    async fn get(&self, path: &str) -> Value {
        let resp = self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await.unwrap();
        resp.json().await.unwrap()
    }

    async fn wait(&self, id: i64, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let b = self.get(&format!("/v1/builds/{id}")).await;
            if done(&b) {
                return b;
            }
            assert!(tokio::time::Instant::now() < deadline, "build {id} never got there: {b}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `cloudci logs ID --follow` on a build that was just started: it waits for the job, prints
/// its lines while it runs (the first well before the job ends), and exits 0 at its success.
/// A failing job's log ends with GitLab's failure line and exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_prints_the_running_job_live_and_ends_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(dir.path()).await;
    let (config, _, api_port) = write_config(dir.path(), PROJECTS, 2);
    let _daemon = serve(&config, sim.url(), TOKEN, &[]);
    let api = Api::new(&config, api_port);
    let id = api.start(json!({"projects": ["firmware"], "ref": "feature", "variables": {"TICKS": "4"}})).await[0];
    // Right away: the build may not even have its pipeline yet.
    let mut follow = cloudci(&config, sim.url(), TOKEN, &["logs", &id.to_string(), "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send((started.elapsed(), line));
        }
    });
    let mut lines = Vec::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(60)) {
        lines.push(l);
    }
    let status = follow.wait().unwrap();
    let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(status.code(), Some(0), "{text:?}");
    let tick = |n: &str| lines.iter().find(|(_, l)| l.trim() == n).map(|(t, _)| *t);
    let (first, last) = (tick("tick 1").expect("tick 1"), tick("tick 4").expect("tick 4"));
    assert!(last >= first + Duration::from_secs(2), "printed as it came, not at the end: {lines:?}");
    assert!(text.last().unwrap().contains("Job succeeded"), "{text:?}");
    let b = api.wait(id, 30, |b| b["status"] == "success").await;
    assert_eq!(b["jobs"]["build"]["stage"], "build", "{b}");

    // A failing job: its log to the end, and exit 1.
    let id = api
        .start(json!({"projects": ["firmware"], "ref": "feature", "variables": {"TICKS": "1", "FAIL": "1"}}))
        .await[0];
    let out = cloudci(&config, sim.url(), TOKEN, &["logs", &id.to_string(), "--follow"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("tick 1") && text.trim_end().ends_with("ERROR: Job failed: exit code 1"), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("job build of build"), "{out:?}");

    // The API's log of a running job says where it stands and whether it is complete.
    let id = api.start(json!({"projects": ["firmware"], "ref": "feature", "variables": {"TICKS": "3"}})).await[0];
    api.wait(id, 30, |b| b["jobs"]["build"]["status"] == "running").await;
    let resp = api.http.get(format!("{}/v1/builds/{id}/log", api.base)).bearer_auth(&api.token).send().await.unwrap();
    assert_eq!(resp.headers()["x-job"], "build");
    assert_eq!(resp.headers()["x-job-status"], "running");
    assert_eq!(resp.headers()["x-log-complete"], "false");
    // A build with no such job, and a queued one with none yet, say so plainly.
    let out =
        cloudci(&config, sim.url(), TOKEN, &["logs", &id.to_string(), "--job", "nope", "--follow"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no job \"nope\"; its jobs: build"), "{out:?}");
}

/// `cloudci cancel ID` and `cloudci retry ID` with a daemon, and `cloudci source ID -o FILE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_retry_and_source_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(dir.path()).await;
    let (config, _, api_port) = write_config(dir.path(), PROJECTS, 2);
    let _daemon = serve(&config, sim.url(), TOKEN, &[]);
    let api = Api::new(&config, api_port);
    let id = api.start(json!({"projects": ["firmware"], "ref": "feature", "variables": {"TICKS": "30"}})).await[0];
    api.wait(id, 30, |b| b["jobs"]["build"]["status"] == "running").await;
    let out = cloudci(&config, sim.url(), TOKEN, &["cancel", &id.to_string()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("build {id}: canceled")), "{out:?}");
    let b = api.wait(id, 30, |b| b["status"] == "canceled").await;
    assert_eq!(b["jobs"]["build"]["status"], "canceled", "{b}");

    // The retried job runs the whole 30 ticks: a shorter pipeline is retried instead.
    let short = api
        .start(json!({"projects": ["firmware"], "ref": "feature", "variables": {"TICKS": "1", "FAIL": "1"}}))
        .await[0];
    api.wait(short, 30, |b| b["status"] == "failed").await;
    let out = cloudci(&config, sim.url(), TOKEN, &["retry", &short.to_string(), "--json"]).output().unwrap();
    // Retried with the same variables it fails again: exit 1, and the new attempt recorded.
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["builds"][0]["status"], "failed", "{summary}");
    assert_eq!(summary["builds"][0]["failed_job"], "build", "{summary}");

    let out = cloudci(&config, sim.url(), TOKEN, &["cancel", "999"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");

    let file = dir.path().join("src.tar.gz");
    let out = cloudci(&config, sim.url(), TOKEN, &["source", &short.to_string(), "-o", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(&bytes[..2], [0x1f, 0x8b], "a gzip file");
}

/// Five targets with `max_concurrent_pipelines = 3`: never more than three pipelines at once,
/// two builds wait as `queued` (visible in the API, with why), and all five succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_targets_under_a_limit_of_three_all_succeed_two_after_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(dir.path()).await;
    let mut projects = String::from("[gitlab]\nmax_concurrent_pipelines = 3\n");
    for t in 2..=5 {
        projects.push_str(&format!("[targets.t{t}]\nvariables = {{ BOARD = \"t{t}\" }}\n"));
    }
    projects.push_str(
        "[projects.firmware]\ngitlab = \"acme/firmware\"\ntargets = [\"host\", \"t2\", \"t3\", \"t4\", \"t5\"]\n",
    );
    let (config, _, api_port) = write_config(dir.path(), &projects, 2);
    let _daemon = serve(&config, sim.url(), TOKEN, &[]);
    let api = Api::new(&config, api_port);
    let ids = api.start(json!({"projects": ["firmware"], "ref": "feature", "variables": {"TICKS": "2"}})).await;
    assert_eq!(ids.len(), 5);
    let gitlab = Gitlab::builder(sim.url())
        .private_token(secrecy::SecretString::from(TOKEN))
        .retry(RetryPolicy::never())
        .build()
        .unwrap();
    let mut waited = std::collections::BTreeSet::new();
    let mut most_running = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let list = api.get("/v1/builds").await;
        let builds = list.as_array().unwrap();
        // What runs on GitLab (a build's record says running until its siblings settled too).
        let pipelines: Vec<_> = gitlab
            .pipelines(ProjectRef::from("acme/firmware"), &PipelineFilter::default())
            .try_collect()
            .await
            .unwrap();
        let running = pipelines.iter().filter(|p| !p.status.is_completed()).count();
        most_running = most_running.max(running);
        for b in builds.iter().filter(|b| b["status"] == "queued" && b["pipeline_id"].is_null()) {
            if b["reason"].as_str().is_some_and(|r| r.contains("max_concurrent_pipelines")) {
                waited.insert(b["id"].as_i64().unwrap());
            }
        }
        if builds.iter().all(|b| b["status"] == "success") {
            break;
        }
        assert!(!builds.iter().any(|b| b["status"] == "failed" || b["status"] == "error"), "{list}");
        assert!(tokio::time::Instant::now() < deadline, "not done: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(most_running <= 3, "{most_running} pipelines at once");
    assert_eq!(waited.len(), 2, "two builds waited as queued: {waited:?}");
    let out = cloudci(&config, sim.url(), TOKEN, &["status", "--json"]).output().unwrap();
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(list.as_array().unwrap().iter().all(|b| b["status"] == "success" && b["reason"].is_null()), "{list}");
}

/// `cloudci build --watch` keeps the tail of each job's log (GitLab's failure line) and its
/// summary names the failed job and `error.log`; with a daemon, `--watch` shows the jobs' log
/// lines too (read from the daemon's API).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_keeps_the_failure_lines_and_the_summary_points_at_error_log() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(dir.path()).await;
    let (config, _, _) = write_config(dir.path(), PROJECTS, 2);
    let args = ["build", "firmware", "--ref", "feature", "--var", "TICKS=1", "--var", "FAIL=1", "--watch"];
    let out = cloudci(&config, sim.url(), TOKEN, &args).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("[firmware/host build] ERROR: Job failed"), "{stderr}");
    assert!(stdout.contains("failed: firmware/host, job build") && stdout.contains("error.log"), "{stdout}");

    let _daemon = serve(&config, sim.url(), TOKEN, &[]);
    let out = cloudci(&config, sim.url(), TOKEN, &args).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("[firmware/host build] tick 1"), "{stderr}");
    assert!(stderr.contains("[firmware/host build] ERROR: Job failed"), "{stderr}");
    assert!(stdout.contains("failed: firmware/host, job build") && stdout.contains("error.log"), "{stdout}");
}
