//! The daemon owns the builds it starts: they survive `kill -9` of `cloudci serve`, a pipeline
//! created just before a crash is adopted rather than started twice, cancel and retry follow the
//! new attempt, and `cloudci build` with a daemon running is only its client.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use cloudci_gitlab::{Gitlab, MergeRequestFilter, PipelineFilter, ProjectRef, RetryPolicy};
use common::*;
use futures_util::TryStreamExt;
use gitlab_sim::{Sim, SimConfig};
use secrecy::SecretString;
use serde_json::{Value, json};

const TOKEN: &str = "sim-token-for-daemon-builds";
const PROJECTS: &str = "[projects.firmware]\ngitlab = \"acme/firmware\"\ntargets = [\"host\"]\nafter_success = { merge_request = { target_branch = \"main\" } }\n";

fn ci(sleep: u32) -> String {
    format!(
        "build:\n  stage: build\n  script:\n    - mkdir -p out && echo \"firmware $BOARD\" > out/fw.bin\n    - sleep {sleep}\n  artifacts:\n    paths: [out/]\n"
    )
}

async fn sim(dir: &std::path::Path, sleep: u32) -> Sim {
    let repo = gitlab_sim::fixtures::repo_with(dir, "repo", &[(".gitlab-ci.yml", &ci(sleep))]);
    Sim::start(SimConfig {
        token: TOKEN.into(),
        projects: vec![("acme/firmware".into(), repo)],
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

fn client(url: &str) -> Gitlab {
    Gitlab::builder(url).private_token(SecretString::from(TOKEN)).retry(RetryPolicy::never()).build().unwrap()
}

struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    fn new(config: &std::path::Path, port: u16) -> Self {
        Self { base: format!("http://127.0.0.1:{port}"), token: token(config), http: reqwest::Client::new() }
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http.post(format!("{}{path}", self.base)).bearer_auth(&self.token).json(&body).send().await.unwrap()
    }

    async fn build(&self, id: i64) -> Option<Value> {
        let resp = self.http.get(format!("{}/v1/builds/{id}", self.base)).bearer_auth(&self.token).send().await.ok()?;
        resp.json().await.ok()
    }

    /// Polls build `id` until `done` holds (the daemon may be restarting meanwhile).
    async fn wait(&self, id: i64, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut last = Value::Null;
        loop {
            if let Some(b) = self.build(id).await {
                if done(&b) {
                    return b;
                }
                last = b;
            }
            assert!(tokio::time::Instant::now() < deadline, "build {id} never got there: {last}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn start(&self) -> i64 {
        let resp = self.post("/v1/builds", json!({"projects": ["firmware"], "ref": "feature"})).await;
        assert_eq!(resp.status(), 202);
        resp.json::<Value>().await.unwrap()["builds"][0]["id"].as_i64().unwrap()
    }
}

async fn counts(sim: &Sim) -> (usize, usize) {
    let gitlab = client(sim.url());
    let ps: Vec<_> =
        gitlab.pipelines(ProjectRef::from("acme/firmware"), &PipelineFilter::default()).try_collect().await.unwrap();
    let mrs: Vec<_> = gitlab
        .merge_requests(ProjectRef::from("acme/firmware"), &MergeRequestFilter::default())
        .try_collect()
        .await
        .unwrap();
    (ps.len(), mrs.len())
}

fn assert_finished_right(b: &Value) {
    assert_eq!(b["status"], "success", "{b}");
    let artifacts = std::path::PathBuf::from(b["artifacts"].as_str().unwrap());
    assert_eq!(std::fs::read_to_string(artifacts.join("out/fw.bin")).unwrap(), "firmware host\n");
    assert!(b["merge_request"].as_str().unwrap().contains("/merge_requests/"), "{b}");
    assert_eq!(b["jobs"]["build"]["status"], "success", "{b}");
}

/// `kill -9` of the daemon while its build's pipeline runs: after the restart the build is
/// followed to its end — record, artifacts, one merge request, one pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_survives_kill_9_of_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(dir.path(), 3).await;
    let (config, _, api_port) = write_config(dir.path(), PROJECTS, 2);
    let daemon = serve(&config, sim.url(), TOKEN, &[]);
    let api = Api::new(&config, api_port);
    let id = api.start().await;
    api.wait(id, 30, |b| b["jobs"]["build"]["status"] == "running").await;
    daemon.crash();
    let _daemon = serve(&config, sim.url(), TOKEN, &[]);
    let b = api.wait(id, 60, |b| b["status"] != "running" && b["status"] != "queued").await;
    assert_finished_right(&b);
    assert_eq!(counts(&sim).await, (1, 1), "one pipeline, one merge request");
}

/// A GitLab in front of the sim that carries out the pipeline POST and then never answers: the
/// daemon is killed with the pipeline created on GitLab but not in its record.
async fn swallowing_proxy(upstream: String, swallow: Arc<AtomicBool>, swallowed: Arc<AtomicUsize>) -> String {
    let http = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (http, upstream, swallow, swallowed) = (http.clone(), upstream.clone(), swallow.clone(), swallowed.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let path = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
            let mut out = http.request(parts.method.clone(), format!("{upstream}{path}")).body(body);
            for (k, v) in &parts.headers {
                if k != "host" {
                    out = out.header(k, v);
                }
            }
            let resp = out.send().await.unwrap();
            let creates = parts.method == "POST" && parts.uri.path().ends_with("/pipeline");
            if creates && swallow.load(Ordering::SeqCst) {
                swallowed.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
            }
            let mut builder = axum::http::Response::builder().status(resp.status().as_u16());
            for (k, v) in resp.headers() {
                if k != "transfer-encoding" && k != "content-length" {
                    builder = builder.header(k, v);
                }
            }
            builder.body(axum::body::Body::from(resp.bytes().await.unwrap())).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// Killed after GitLab created the pipeline but before the record said so: the restarted
/// daemon finds the pipeline by its request id and adopts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_created_before_a_crash_is_adopted_not_duplicated() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(dir.path(), 1).await;
    let (swallow, swallowed) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicUsize::new(0)));
    let proxy = swallowing_proxy(sim.url().to_owned(), swallow.clone(), swallowed.clone()).await;
    let (config, _, api_port) = write_config(dir.path(), PROJECTS, 2);
    let daemon = serve(&config, &proxy, TOKEN, &[]);
    let api = Api::new(&config, api_port);
    let id = api.start().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while swallowed.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the pipeline was never created");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = api.build(id).await.unwrap();
    assert!(before["pipeline_id"].is_null(), "{before}");
    assert_eq!(counts(&sim).await.0, 1, "GitLab has the pipeline");
    daemon.crash();
    swallow.store(false, Ordering::SeqCst);
    let _daemon = serve(&config, &proxy, TOKEN, &[]);
    let b = api.wait(id, 60, |b| b["status"] != "running" && b["status"] != "queued").await;
    assert_finished_right(&b);
    assert_eq!(counts(&sim).await, (1, 1), "the pipeline was adopted, not started again");
}

/// Cancel, then retry, through the API: the record follows the new attempt — canceled jobs
/// replaced by the new ones, artifacts fetched, the merge request opened once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_then_retry_ends_with_the_new_attempt_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(dir.path(), 4).await;
    let (config, _, api_port) = write_config(dir.path(), PROJECTS, 2);
    let _daemon = serve(&config, sim.url(), TOKEN, &[]);
    let api = Api::new(&config, api_port);
    let id = api.start().await;
    api.wait(id, 30, |b| b["jobs"]["build"]["status"] == "running").await;
    assert_eq!(api.post(&format!("/v1/builds/{id}/cancel"), json!({})).await.status(), 202);
    let canceled = api.wait(id, 30, |b| b["status"] == "canceled").await;
    assert_eq!(canceled["jobs"]["build"]["status"], "canceled", "{canceled}");
    assert!(canceled["artifacts"].is_null() && canceled["merge_request"].is_null(), "{canceled}");
    let old_job = canceled["jobs"]["build"]["id"].as_u64().unwrap();

    let retry = api.post(&format!("/v1/builds/{id}/retry"), json!({})).await;
    assert_eq!(retry.status(), 202);
    assert_eq!(retry.json::<Value>().await.unwrap()["status"], "running");
    let b = api.wait(id, 60, |b| b["status"] == "success").await;
    assert_finished_right(&b);
    let new_job = b["jobs"]["build"]["id"].as_u64().unwrap();
    assert_ne!(new_job, old_job, "the new attempt's job: {b}");
    let log = std::fs::read_to_string(b["jobs"]["build"]["log"].as_str().unwrap()).unwrap();
    assert!(log.contains("Job succeeded"), "the log of the new attempt: {log}");
    assert_eq!(counts(&sim).await, (1, 1));
}

/// With a daemon running, `cloudci build` asks it to build and follows its records: it makes no
/// GitLab call of its own (its GitLab address leads nowhere), each pipeline is created once, and
/// the build is in the daemon's records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudci_build_is_a_client_of_a_running_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(dir.path(), 1).await;
    let (config, _, api_port) = write_config(dir.path(), PROJECTS, 2);
    let _daemon = serve(&config, sim.url(), TOKEN, &[]);
    let cli_token = dir.path().join("state/secrets/cli-token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&cli_token).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // The CLI reaches no GitLab at all: whatever it learns comes from the daemon.
    let out = cloudci(&config, "http://127.0.0.1:9", "unused", &["build", "firmware", "--ref", "feature", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let b = &summary["builds"][0];
    assert_eq!(b["status"], "success", "{summary}");
    assert_eq!(b["jobs"]["build"], "success");
    assert!(b["merge_request"].is_string() && b["artifacts"].is_string(), "{summary}");
    assert!(summary["logs"].is_string());
    assert_eq!(counts(&sim).await, (1, 1));
    let api = Api::new(&config, api_port);
    let list: Value = api
        .http
        .get(format!("{}/v1/builds", api.base))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["pipeline_url"], b["pipeline_url"]);
    // A bad CLOUDCI_TOKEN is refused by the daemon, and the CLI then builds in process (and
    // fails here, its GitLab leading nowhere) rather than minting a token of its own.
    let out = cloudci(&config, "http://127.0.0.1:9", "unused", &["build", "firmware", "--json"])
        .env("CLOUDCI_TOKEN", "not-a-token")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(counts(&sim).await.0, 1);
}
