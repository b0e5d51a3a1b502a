//! The sim's webhook deliveries, received by a real HTTP listener: GitLab's headers, payload keys
//! as in the GitLab samples (gitlab/tests/fixtures), signatures, a slow receiver, auto-disabling, and seeded faults.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use cloudci_gitlab::types::{CreateMergeRequest, CreatePipeline, HookEvents, HookParams, Status};
use cloudci_gitlab::webhook::WebhookEvent;
use cloudci_gitlab::{Gitlab, RetryPolicy};
use common::*;
use secrecy::SecretString;
use serde_json::Value;

#[derive(Debug, Clone)]
struct Delivery {
    headers: HeaderMap,
    body: Bytes,
}

/// A receiver that records deliveries and answers with `status` after `delay`.
async fn receiver(status: StatusCode, delay: Duration) -> (String, Arc<Mutex<Vec<Delivery>>>) {
    let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let log = got.clone();
    let app = Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push(Delivery { headers, body });
            tokio::time::sleep(delay).await;
            status
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/abc", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

fn client(url: &str) -> Gitlab {
    Gitlab::builder(url).private_token(SecretString::from(TOKEN)).retry(RetryPolicy::never()).build().unwrap()
}

fn sample_keys(name: &str) -> BTreeSet<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../gitlab/tests/fixtures");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap();
    v.as_object().unwrap().keys().cloned().collect()
}

fn sample(name: &str) -> Value {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../gitlab/tests/fixtures");
    serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
}

/// The title of the `feature` branch's head commit.
fn mr_sample_title(repo: &std::path::Path) -> String {
    let out =
        std::process::Command::new("git").args(["log", "-1", "--format=%s", "feature"]).current_dir(repo).output();
    String::from_utf8(out.unwrap().stdout).unwrap().trim().to_owned()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

/// A GitLab signing token: `whsec_` and a base64 32-byte key (bytes 0..32).
const SIGNING: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_carry_gitlabs_headers_and_the_samples_keys() {
    let dir = tempfile::tempdir().unwrap();
    let repo = firmware_repo(dir.path());
    let sim = start_sim(&repo, "").await;
    let gitlab = client(sim.url());
    let (url, got) = receiver(StatusCode::OK, Duration::ZERO).await;
    let mut hook = HookParams::new(url, HookEvents::ALL);
    hook.token = Some(SecretString::from("tok-123"));
    hook.signing_token = Some(SecretString::from(SIGNING));
    gitlab.create_hook("acme/firmware", &hook).await.unwrap();

    let p = gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("main").variable("BOARD", "b")).await.unwrap();
    let mr = gitlab
        .create_merge_request(
            "acme/firmware",
            &CreateMergeRequest {
                source_branch: "feature".into(),
                target_branch: "main".into(),
                title: "Add feature".into(),
                remove_source_branch: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // A push made outside the sim (a developer's commit) is noticed and announced.
    std::fs::write(repo.join("more.txt"), "x").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "More"]);
    eventually(Duration::from_secs(60), || async {
        let d = got.lock().unwrap().clone();
        let pipeline_done = d.iter().any(|d| {
            d.headers["x-gitlab-event"] == "Pipeline Hook"
                && serde_json::from_slice::<Value>(&d.body).unwrap()["object_attributes"]["status"] == "success"
        });
        let pushed = d.iter().any(|d| d.headers["x-gitlab-event"] == "Push Hook");
        let opened = d.iter().any(|d| d.headers["x-gitlab-event"] == "Merge Request Hook");
        (pipeline_done && pushed && opened).then_some(())
    })
    .await;

    let deliveries = got.lock().unwrap().clone();
    let mut seen_kinds = BTreeSet::new();
    let mut keys_seen = BTreeSet::new();
    for d in &deliveries {
        let h = &d.headers;
        let event = h["x-gitlab-event"].to_str().unwrap().to_owned();
        assert_eq!(h["content-type"], "application/json");
        assert!(h["user-agent"].to_str().unwrap().starts_with("GitLab/"));
        assert_eq!(h["x-gitlab-token"], "tok-123");
        assert_eq!(h["x-gitlab-instance"].to_str().unwrap(), sim.url());
        for name in ["x-gitlab-webhook-uuid", "x-gitlab-event-uuid", "idempotency-key"] {
            assert_eq!(h[name].to_str().unwrap().len(), 36, "{name}");
        }
        assert_eq!(h["webhook-id"], h["idempotency-key"]);
        let ts: i64 = h["webhook-timestamp"].to_str().unwrap().parse().unwrap();
        assert!((chrono::Utc::now().timestamp() - ts).abs() < 120);
        // The signature verifies over the raw body, as a receiver would check it.
        let expected = gitlab_sim::sign(
            SIGNING,
            h["webhook-id"].to_str().unwrap(),
            h["webhook-timestamp"].to_str().unwrap(),
            &d.body,
        )
        .unwrap();
        assert_eq!(h["webhook-signature"].to_str().unwrap(), expected);
        let key = base64::engine::general_purpose::STANDARD.decode(&SIGNING[6..]).unwrap();
        assert_eq!(key.len(), 32);

        // Every payload parses with cloudci's types and carries the sample's keys.
        let parsed = WebhookEvent::parse(Some(&event), &d.body).unwrap_or_else(|e| panic!("{event}: {e}"));
        assert!(!matches!(parsed, WebhookEvent::Other { .. }));
        let body: Value = serde_json::from_slice(&d.body).unwrap();
        let sample = match event.as_str() {
            "Pipeline Hook" => "webhook-pipeline-event.json",
            "Job Hook" => "webhook-job-event.json",
            "Push Hook" => "webhook-push-event.json",
            "Merge Request Hook" => "webhook-merge-request-event.json",
            other => panic!("unexpected {other}"),
        };
        if keys_seen.insert(sample) {
            let mut want = sample_keys(sample);
            // Sent only for downstream (child) pipelines, which the sim does not have.
            want.remove("source_pipeline");
            let have = keys(&body);
            let missing: Vec<_> = want.difference(&have).collect();
            assert!(missing.is_empty(), "{event} lacks {missing:?}");
        }
        seen_kinds.insert(event);
    }
    assert_eq!(
        seen_kinds,
        BTreeSet::from(["Job Hook".into(), "Merge Request Hook".into(), "Pipeline Hook".into(), "Push Hook".into()])
    );

    // The Merge Request Hook carries every key of GitLab's sample, nested ones too.
    let mr_body: Value = deliveries
        .iter()
        .find(|d| d.headers["x-gitlab-event"] == "Merge Request Hook")
        .map(|d| serde_json::from_slice(&d.body).unwrap())
        .unwrap();
    let mr_sample = sample("webhook-merge-request-event.json");
    for part in ["object_attributes", "project", "user"] {
        let missing: Vec<_> = keys(&mr_sample[part]).difference(&keys(&mr_body[part])).cloned().collect();
        assert!(missing.is_empty(), "merge request {part} lacks {missing:?}");
    }
    for part in ["last_commit", "source", "target"] {
        let missing: Vec<_> = keys(&mr_sample["object_attributes"][part])
            .difference(&keys(&mr_body["object_attributes"][part]))
            .cloned()
            .collect();
        assert!(missing.is_empty(), "merge request object_attributes.{part} lacks {missing:?}");
    }
    let attrs = &mr_body["object_attributes"];
    assert_eq!(attrs["iid"], mr.iid.0);
    assert_eq!(attrs["action"], "open");
    assert_eq!(attrs["merge_params"]["force_remove_source_branch"], "1");
    assert_eq!(attrs["last_commit"]["id"].as_str().unwrap().len(), 40);
    assert_eq!(attrs["last_commit"]["title"], mr_sample_title(&repo));
    assert!(attrs["milestone_id"].is_null() && attrs["human_time_estimate"].is_null());
    assert_eq!(attrs["time_estimate"], 0);
    assert_eq!(attrs["blocking_discussions_resolved"], true);

    // Nested keys too: the pipeline's object_attributes and builds, the job's commit.
    let pipeline_body: Value = deliveries
        .iter()
        .find(|d| d.headers["x-gitlab-event"] == "Pipeline Hook")
        .map(|d| serde_json::from_slice(&d.body).unwrap())
        .unwrap();
    let sample: Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../gitlab/tests/fixtures/webhook-pipeline-event.json"),
        )
        .unwrap(),
    )
    .unwrap();
    for part in ["object_attributes", "project", "commit", "user"] {
        let missing: Vec<_> = keys(&sample[part]).difference(&keys(&pipeline_body[part])).cloned().collect();
        assert!(missing.is_empty(), "pipeline {part} lacks {missing:?}");
    }
    assert_eq!(pipeline_body["object_attributes"]["id"], p.id.0);
    assert_eq!(pipeline_body["object_attributes"]["variables"][0]["key"], "BOARD");

    // Job events walk created → pending → running → success, and commit.id is the pipeline id.
    let build_statuses: Vec<String> = deliveries
        .iter()
        .filter(|d| d.headers["x-gitlab-event"] == "Job Hook")
        .map(|d| serde_json::from_slice::<Value>(&d.body).unwrap())
        .filter(|b| b["build_name"] == "build")
        .map(|b| {
            assert_eq!(b["commit"]["id"], p.id.0);
            b["build_status"].as_str().unwrap().to_owned()
        })
        .collect();
    let mut sorted = build_statuses.clone();
    sorted.sort_by_key(|s| Status::parse(s).rank());
    assert_eq!(sorted, ["created", "pending", "running", "success"], "as delivered: {build_statuses:?}");

    // The delivery log redacts the token.
    let http = reqwest::Client::new();
    let log: Vec<Value> = http
        .get(format!("{}/api/v4/projects/1/hooks/1/events", sim.url()))
        .header("PRIVATE-TOKEN", TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!log.is_empty());
    assert_eq!(log[0]["request_headers"]["X-Gitlab-Token"], "[REDACTED]");
    // A string, as GitLab's `response_status` column holds it (samples/api-hook-events-list.json).
    assert_eq!(log[0]["response_status"], "200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_never_holds_up_the_sim() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_with(dir.path(), &[(".gitlab-ci.yml", "build:\n  script: 'true'\n")]);
    let sim = start_sim(&repo, "").await;
    let gitlab = client(sim.url());
    // Answers after 12 s: past GitLab's 10 s timeout.
    let (url, got) = receiver(StatusCode::OK, Duration::from_secs(12)).await;
    gitlab.create_hook("acme/firmware", &HookParams::new(url, HookEvents::ALL)).await.unwrap();
    let started = Instant::now();
    let p = gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("main")).await.unwrap();
    eventually(Duration::from_secs(8), || async {
        (gitlab.pipeline("acme/firmware", p.id).await.unwrap().status == Status::Success).then_some(())
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(!got.lock().unwrap().is_empty(), "deliveries were attempted");
    // The API stays quick while deliveries hang.
    let t = Instant::now();
    gitlab.version().await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_failures_disable_a_hook_and_a_test_delivery_re_enables_it() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_with(dir.path(), &[(".gitlab-ci.yml", "build:\n  script: 'true'\n")]);
    let sim = start_sim(&repo, "disable_backoff_ms=60000").await;
    let gitlab = client(sim.url());
    let (bad_url, bad) = receiver(StatusCode::INTERNAL_SERVER_ERROR, Duration::ZERO).await;
    let hook = gitlab.create_hook("acme/firmware", &HookParams::new(bad_url, HookEvents::ALL)).await.unwrap();
    gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("main")).await.unwrap();
    let disabled = eventually(Duration::from_secs(20), || async {
        let h = gitlab.hook("acme/firmware", hook.id).await.unwrap();
        h.is_disabled().then_some(h)
    })
    .await;
    assert_eq!(disabled.alert_status.as_deref(), Some("temporarily_disabled"));
    assert!(disabled.disabled_until.is_some());
    // Everything after the 4th failure is not even sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let attempts = bad.lock().unwrap().len();
    gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("main")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(bad.lock().unwrap().len(), attempts, "a disabled hook received deliveries");
    // Deliveries already under way when the 4th failure was recorded still went out, as with
    // GitLab's concurrent Sidekiq workers.
    assert!(attempts >= 4, "{attempts}");

    // Point it at a healthy receiver and send a test: a 2xx re-enables it.
    let (good_url, good) = receiver(StatusCode::OK, Duration::ZERO).await;
    gitlab.edit_hook("acme/firmware", hook.id, &HookParams::new(good_url, HookEvents::ALL)).await.unwrap();
    gitlab.test_hook("acme/firmware", hook.id, "pipeline_events").await.unwrap();
    assert_eq!(good.lock().unwrap().len(), 1);
    assert!(!gitlab.hook("acme/firmware", hook.id).await.unwrap().is_disabled());
}

/// With the same seed and the same events, faults make the same choices: duplicates share an
/// `Idempotency-Key`, drops lose deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_faults_duplicate_and_drop() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_with(dir.path(), &[(".gitlab-ci.yml", "build:\n  script: 'true'\n")]);
    let sim = start_sim(&repo, "duplicate=0.5,drop=0.2,no_auto_disable").await;
    let gitlab = client(sim.url());
    let (url, got) = receiver(StatusCode::OK, Duration::ZERO).await;
    gitlab.create_hook("acme/firmware", &HookParams::new(url, HookEvents::ALL)).await.unwrap();
    for _ in 0..4 {
        let p = gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("main")).await.unwrap();
        eventually(Duration::from_secs(20), || async {
            gitlab.pipeline("acme/firmware", p.id).await.unwrap().status.is_completed().then_some(())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deliveries = got.lock().unwrap().clone();
    let keys: Vec<String> =
        deliveries.iter().map(|d| d.headers["idempotency-key"].to_str().unwrap().to_owned()).collect();
    let unique: BTreeSet<&String> = keys.iter().collect();
    assert!(unique.len() < keys.len(), "no duplicates among {} deliveries", keys.len());
    // Each pipeline makes 1 pipeline event per status (created, pending, running, success) and 4
    // job events: 32 events, some dropped.
    assert!(unique.len() < 32, "nothing was dropped: {}", unique.len());
    for d in &deliveries {
        let twins: Vec<_> =
            deliveries.iter().filter(|o| o.headers["idempotency-key"] == d.headers["idempotency-key"]).collect();
        if twins.len() == 2 {
            assert_eq!(twins[0].body, twins[1].body);
            assert_ne!(twins[0].headers["x-gitlab-webhook-uuid"], twins[1].headers["x-gitlab-webhook-uuid"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_faults_and_the_pipeline_limit() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_with(dir.path(), &[(".gitlab-ci.yml", "build:\n  script: 'true'\n")]);
    let sim = start_sim(&repo, "pipeline_limit=3").await;
    let gitlab = client(sim.url());
    for _ in 0..3 {
        gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("main")).await.unwrap();
    }
    let e = gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("main")).await.unwrap_err();
    assert_eq!(e.status(), Some(429), "{e}");

    let sim = start_sim(&repo, "api_429=1").await;
    let http = reqwest::Client::new();
    let resp = http.get(format!("{}/api/v4/version", sim.url())).header("PRIVATE-TOKEN", TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(resp.text().await.unwrap(), "Retry later\n");
}
