//! What cloudci's recovery relies on, as the sim models it after GitLab: the hook delivery log
//! (status filter, 7-day window, newest first, 20 per page), the `drop` and `lost` faults, resend
//! (same `Idempotency-Key`, rate limit, refusals), hook health (`alert_status`), and pipeline lists
//! ordered by `updated_at` with `updated_at` moving on every change.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use cloudci_gitlab::types::{
    CreatePipeline, HookEvent, HookEventFilter, HookEventStatus, HookEvents, HookParams, HookResponseStatus, Status,
};
use cloudci_gitlab::{Error, Gitlab, HookId, JobFilter, PipelineId, RetryPolicy};
use common::*;
use futures_util::TryStreamExt;
use secrecy::SecretString;
use serde_json::Value;

const PROJECT: &str = "acme/firmware";
const ONE_JOB: &str = "build:\n  script: 'true'\n";
const SIGNING: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

#[derive(Debug, Clone)]
struct Delivery {
    headers: HeaderMap,
    body: Bytes,
}

/// A receiver that records deliveries and answers with whatever `status` holds at the time.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Delivery>>>,
    status: Arc<AtomicU16>,
}

impl Receiver {
    async fn start(status: u16) -> Self {
        let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let status = Arc::new(AtomicU16::new(status));
        let (log, answer) = (got.clone(), status.clone());
        let app = Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let (log, answer) = (log.clone(), answer.clone());
            async move {
                log.lock().unwrap().push(Delivery { headers, body });
                StatusCode::from_u16(answer.load(Ordering::SeqCst)).unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/abc", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, got, status }
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }

    fn keys(&self) -> BTreeSet<String> {
        self.deliveries().iter().map(|d| d.headers["idempotency-key"].to_str().unwrap().to_owned()).collect()
    }
}

fn client(url: &str) -> Gitlab {
    Gitlab::builder(url).private_token(SecretString::from(TOKEN)).retry(RetryPolicy::never()).build().unwrap()
}

async fn run_pipeline(gitlab: &Gitlab, git_ref: &str) -> PipelineId {
    let p = gitlab.create_pipeline(PROJECT, &CreatePipeline::new(git_ref)).await.unwrap();
    eventually(Duration::from_secs(30), || async {
        let s = gitlab.pipeline(PROJECT, p.id).await.unwrap().status;
        (s.is_completed() || s == Status::Manual).then_some(())
    })
    .await;
    p.id
}

async fn events(gitlab: &Gitlab, hook: HookId, status: Option<HookEventStatus>) -> Vec<HookEvent> {
    gitlab.hook_events(PROJECT, hook, &HookEventFilter { status }).try_collect().await.unwrap()
}

async fn raw_get(sim: &gitlab_sim::Sim, path_and_query: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}/api/v4/{path_and_query}", sim.url()))
        .header("PRIVATE-TOKEN", TOKEN)
        .send()
        .await
        .unwrap()
}

fn key_of(e: &HookEvent) -> String {
    e.idempotency_key().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_log_filters_by_status_lists_newest_first_and_only_the_past_seven_days() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_with(dir.path(), &[(".gitlab-ci.yml", ONE_JOB)]);
    // Half the deliveries are lost on the way; hooks stay enabled so every event is attempted.
    let sim = start_sim(&repo, "lost=0.5,no_auto_disable").await;
    let gitlab = client(sim.url());
    let rx = Receiver::start(200).await;
    let hook = gitlab.create_hook(PROJECT, &HookParams::new(&rx.url, HookEvents::ALL)).await.unwrap();
    // 3 pipelines × (4 pipeline + 4 job events): more than one page of 20.
    for _ in 0..3 {
        run_pipeline(&gitlab, "main").await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let all = events(&gitlab, hook.id, None).await;
    assert_eq!(all.len(), 24, "every attempted delivery is logged, across pages");
    let ids: Vec<u64> = all.iter().map(|e| e.id).collect();
    let mut newest_first = ids.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(ids, newest_first, "newest first");

    // `lost`: logged as GitLab logs a timeout, never seen by the receiver.
    let lost: Vec<&HookEvent> = all.iter().filter(|e| e.response_status.is_internal_error()).collect();
    let delivered: Vec<&HookEvent> = all.iter().filter(|e| e.response_status.delivered()).collect();
    assert!(!lost.is_empty() && !delivered.is_empty(), "lost {}, delivered {}", lost.len(), delivered.len());
    assert_eq!(lost.len() + delivered.len(), all.len());
    let received = rx.keys();
    assert!(lost.iter().all(|e| !received.contains(&key_of(e))), "a lost delivery reached the receiver");
    assert_eq!(delivered.iter().map(|e| key_of(e)).collect::<BTreeSet<_>>(), received);
    assert!(lost.iter().all(|e| e.response_body.as_deref() == Some("")));
    // GitLab's string column: "200", not 200.
    assert_eq!(delivered[0].response_status, HookResponseStatus::Text("200".into()));

    // The status filter, as WebHookLogsFinder maps it: server_failure includes `internal error`.
    let ids_of = |v: &[HookEvent]| v.iter().map(|e| e.id).collect::<Vec<_>>();
    let server = events(&gitlab, hook.id, Some(HookEventStatus::ServerFailure)).await;
    assert_eq!(ids_of(&server), lost.iter().map(|e| e.id).collect::<Vec<_>>());
    let ok = events(&gitlab, hook.id, Some(HookEventStatus::Successful)).await;
    assert_eq!(ids_of(&ok), delivered.iter().map(|e| e.id).collect::<Vec<_>>());
    assert_eq!(ids_of(&events(&gitlab, hook.id, Some(HookEventStatus::Code(200))).await), ids_of(&ok));
    assert!(events(&gitlab, hook.id, Some(HookEventStatus::ClientFailure)).await.is_empty());
    assert!(events(&gitlab, hook.id, Some(HookEventStatus::Code(500))).await.is_empty());
    // Several values at once (GitLab's `Array[String]`, comma-separated), and invalid ones.
    let both: Vec<Value> =
        raw_get(&sim, &format!("projects/1/hooks/{}/events?status=successful,server_failure", hook.id.0))
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(both.len(), 20, "a full first page");
    for bad in ["status=failed", "status=internal%20error", "status=999", "per_page=21", "per_page=0"] {
        let resp = raw_get(&sim, &format!("projects/1/hooks/{}/events?{bad}", hook.id.0)).await;
        assert_eq!(resp.status(), 400, "{bad}");
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().ends_with("does not have a valid value"), "{bad}: {body}");
    }
    let page: Vec<Value> = raw_get(&sim, &format!("projects/1/hooks/{}/events", hook.id.0)).await.json().await.unwrap();
    assert_eq!(page.len(), 20, "GitLab's default and largest page is 20");
    let keys: BTreeSet<&str> = page[0].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "id",
            "url",
            "trigger",
            "request_headers",
            "request_data",
            "response_headers",
            "response_body",
            "execution_duration",
            "response_status"
        ]),
        "the sample's keys"
    );

    // Past 7 days from the start of the day: 6 days old is listed, 8 days old is not.
    sim.age_hook_deliveries(hook.id.0, Duration::from_secs(6 * 86_400));
    assert_eq!(events(&gitlab, hook.id, None).await.len(), 24);
    sim.age_hook_deliveries(hook.id.0, Duration::from_secs(2 * 86_400));
    assert!(events(&gitlab, hook.id, None).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_deliveries_leave_no_trace_and_lost_ones_disable_the_hook() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_with(dir.path(), &[(".gitlab-ci.yml", ONE_JOB)]);

    // `drop`: GitLab's rate limiter refused to enqueue: not sent, not logged, no failure counted.
    let sim = start_sim(&repo, "drop=1").await;
    let gitlab = client(sim.url());
    let rx = Receiver::start(200).await;
    let hook = gitlab.create_hook(PROJECT, &HookParams::new(&rx.url, HookEvents::ALL)).await.unwrap();
    run_pipeline(&gitlab, "main").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.deliveries().is_empty());
    assert!(events(&gitlab, hook.id, None).await.is_empty());
    assert_eq!(gitlab.hook(PROJECT, hook.id).await.unwrap().alert_status.as_deref(), Some("executable"));

    // `lost`: sent, never arrived: failures that disable the hook after 4.
    let sim = start_sim(&repo, "lost=1").await;
    let gitlab = client(sim.url());
    let hook = gitlab.create_hook(PROJECT, &HookParams::new(&rx.url, HookEvents::ALL)).await.unwrap();
    run_pipeline(&gitlab, "main").await;
    let h = eventually(Duration::from_secs(10), || async {
        let h = gitlab.hook(PROJECT, hook.id).await.unwrap();
        h.is_disabled().then_some(h)
    })
    .await;
    assert_eq!(h.alert_status.as_deref(), Some("temporarily_disabled"));
    assert!(h.disabled_until.is_some());
    assert!(rx.deliveries().is_empty());
    let log = events(&gitlab, hook.id, None).await;
    assert!(log.len() >= 4, "{}", log.len());
    assert!(log.iter().all(|e| e.response_status.is_internal_error()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_repeats_the_delivery_with_its_idempotency_key_within_gitlabs_limits() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_with(dir.path(), &[(".gitlab-ci.yml", ONE_JOB)]);
    let sim = start_sim(&repo, "disable_backoff_ms=60000").await;
    let gitlab = client(sim.url());
    let rx = Receiver::start(200).await;
    let mut params = HookParams::new(&rx.url, HookEvents::ALL);
    params.token = Some(SecretString::from("tok-1"));
    params.signing_token = Some(SecretString::from(SIGNING));
    let hook = gitlab.create_hook(PROJECT, &params).await.unwrap();
    run_pipeline(&gitlab, "main").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = events(&gitlab, hook.id, None).await;
    let original = before.last().unwrap().clone();
    let first_copy = rx
        .deliveries()
        .into_iter()
        .find(|d| d.headers["idempotency-key"].to_str().unwrap() == key_of(&original))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await; // a later webhook-timestamp

    // 1: resent as GitLab does.
    let n = rx.deliveries().len();
    let answer = gitlab.resend_hook_event(PROJECT, hook.id, original.id).await.unwrap();
    assert_eq!(answer.response_status, HookResponseStatus::Number(200));
    let got = rx.deliveries();
    assert_eq!(got.len(), n + 1, "sent synchronously, once");
    let again = got.last().unwrap();
    let h = &again.headers;
    assert_eq!(h["idempotency-key"].to_str().unwrap(), key_of(&original));
    assert_eq!(h["webhook-id"], h["idempotency-key"]);
    assert_eq!(again.body, first_copy.body, "the same bytes");
    assert_eq!(h["x-gitlab-event"], first_copy.headers["x-gitlab-event"]);
    assert_ne!(h["x-gitlab-webhook-uuid"], first_copy.headers["x-gitlab-webhook-uuid"]);
    assert_ne!(h["webhook-timestamp"], first_copy.headers["webhook-timestamp"]);
    assert_eq!(h["x-gitlab-token"], "tok-1");
    let expected = gitlab_sim::sign(
        SIGNING,
        h["webhook-id"].to_str().unwrap(),
        h["webhook-timestamp"].to_str().unwrap(),
        &again.body,
    )
    .unwrap();
    assert_eq!(h["webhook-signature"].to_str().unwrap(), expected);
    // Logged as a new entry, newest first, with the original's key.
    let after = events(&gitlab, hook.id, None).await;
    assert_eq!(after.len(), before.len() + 1);
    assert!(after[0].id > before[0].id);
    assert_eq!(key_of(&after[0]), key_of(&original));
    assert_eq!(after[0].request_data, original.request_data);

    // An entry of no hook: 404 (and it still counts toward the limit, which GitLab checks first).
    let e = gitlab.resend_hook_event(PROJECT, hook.id, 999_999).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");

    // 3: a disabled hook is not sent to: 422 "Hook disabled", nothing logged.
    rx.status.store(500, Ordering::SeqCst);
    for _ in 0..4 {
        gitlab.test_hook(PROJECT, hook.id, "pipeline_events").await.unwrap();
    }
    assert_eq!(gitlab.hook(PROJECT, hook.id).await.unwrap().alert_status.as_deref(), Some("temporarily_disabled"));
    let (n, logged) = (rx.deliveries().len(), events(&gitlab, hook.id, None).await.len());
    let e = gitlab.resend_hook_event(PROJECT, hook.id, original.id).await.unwrap_err();
    assert!(matches!(&e, Error::Api { status: 422, message, .. } if message.contains("Hook disabled")), "{e}");
    assert_eq!(rx.deliveries().len(), n);
    assert_eq!(events(&gitlab, hook.id, None).await.len(), logged);

    // 4: re-enabled by a 2xx test; a resend the receiver fails is answered 201 with its status and
    // counts as a failure.
    rx.status.store(200, Ordering::SeqCst);
    gitlab.test_hook(PROJECT, hook.id, "pipeline_events").await.unwrap();
    rx.status.store(503, Ordering::SeqCst);
    let answer = gitlab.resend_hook_event(PROJECT, hook.id, original.id).await.unwrap();
    assert_eq!(answer.response_status.code(), Some(503));
    assert_eq!(events(&gitlab, hook.id, Some(HookEventStatus::Code(503))).await.len(), 1);
    rx.status.store(200, Ordering::SeqCst);

    // 5: the URL changed since the delivery: 422, not sent.
    let other = Receiver::start(200).await;
    let mut moved = params.clone();
    moved.url = other.url.clone();
    gitlab.edit_hook(PROJECT, hook.id, &moved).await.unwrap();
    let e = gitlab.resend_hook_event(PROJECT, hook.id, original.id).await.unwrap_err();
    assert!(
        matches!(&e, Error::Api { status: 422, message, .. } if message.contains("The hook URL has changed")),
        "{e}"
    );
    assert!(other.deliveries().is_empty());

    // 6: the sixth request in a minute is throttled like GitLab's application rate limits: JSON,
    // `Retry-After: 60`.
    let e = gitlab.resend_hook_event(PROJECT, hook.id, original.id).await.unwrap_err();
    assert!(matches!(e, Error::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(60)), "{e}");
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v4/projects/1/hooks/{}/events/{}/resend", sim.url(), hook.id.0, original.id))
        .header("PRIVATE-TOKEN", TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "60");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["message"]["error"], "This endpoint has been requested too many times. Try again later.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_health_temporarily_disabled_after_4_failures_disabled_after_40_re_enabled_by_a_test() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_with(dir.path(), &[(".gitlab-ci.yml", ONE_JOB)]);
    let sim = start_sim(&repo, "disable_backoff_ms=60000").await;
    let gitlab = client(sim.url());
    run_pipeline(&gitlab, "main").await; // test deliveries need a pipeline to describe
    let rx = Receiver::start(500).await;
    let hook = gitlab.create_hook(PROJECT, &HookParams::new(&rx.url, HookEvents::ALL)).await.unwrap();
    assert_eq!(hook.alert_status.as_deref(), Some("executable"));
    assert!(hook.disabled_until.is_none());
    let fail = |n: usize| {
        let gitlab = gitlab.clone();
        async move {
            for _ in 0..n {
                gitlab.test_hook(PROJECT, hook.id, "pipeline_events").await.unwrap();
            }
        }
    };
    fail(3).await;
    assert_eq!(gitlab.hook(PROJECT, hook.id).await.unwrap().alert_status.as_deref(), Some("executable"));
    fail(1).await;
    let h = gitlab.hook(PROJECT, hook.id).await.unwrap();
    assert_eq!(h.alert_status.as_deref(), Some("temporarily_disabled"));
    let until = h.disabled_until.unwrap().at();
    let wait = until - chrono::Utc::now();
    assert!(wait > chrono::Duration::seconds(100) && wait <= chrono::Duration::seconds(120), "1 min × 2^(4−3): {wait}");
    // While disabled, real deliveries are not sent.
    let n = rx.deliveries().len();
    run_pipeline(&gitlab, "main").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.deliveries().len(), n);

    // A 2xx test delivery re-enables it.
    rx.status.store(204, Ordering::SeqCst);
    gitlab.test_hook(PROJECT, hook.id, "pipeline_events").await.unwrap();
    let h = gitlab.hook(PROJECT, hook.id).await.unwrap();
    assert_eq!(h.alert_status.as_deref(), Some("executable"));
    assert!(h.disabled_until.is_none());

    // 40 consecutive failures disable it for good.
    rx.status.store(500, Ordering::SeqCst);
    fail(39).await;
    assert_eq!(gitlab.hook(PROJECT, hook.id).await.unwrap().alert_status.as_deref(), Some("temporarily_disabled"));
    fail(1).await;
    let h = gitlab.hook(PROJECT, hook.id).await.unwrap();
    assert_eq!(h.alert_status.as_deref(), Some("disabled"));
    assert!(h.is_disabled());
    // Only a successful test brings it back.
    rx.status.store(200, Ordering::SeqCst);
    gitlab.test_hook(PROJECT, hook.id, "pipeline_events").await.unwrap();
    assert_eq!(gitlab.hook(PROJECT, hook.id).await.unwrap().alert_status.as_deref(), Some("executable"));
}

fn ids(list: &[Value]) -> Vec<u64> {
    list.iter().map(|p| p["id"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_order_by_and_updated_at_follow_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let yml = "stages: [build, deploy]\nquick:\n  stage: build\n  script: 'true'\nslow:\n  stage: build\n  script: sleep 2\ndeploy:\n  stage: deploy\n  when: manual\n  allow_failure: false\n  script: 'true'\n";
    let repo = repo_with(dir.path(), &[(".gitlab-ci.yml", yml)]);
    let sim = start_sim(&repo, "").await;
    let gitlab = client(sim.url());

    // A job finishing while the pipeline stays `running` moves the pipeline's updated_at.
    let p1 = gitlab.create_pipeline(PROJECT, &CreatePipeline::new("main")).await.unwrap();
    let (pipeline, quick_done) = eventually(Duration::from_secs(20), || async {
        // The jobs first: a pipeline read after them cannot predate the finish it is compared with
        // (read the other way round, `quick` could finish between the two reads).
        let jobs: Vec<_> = gitlab.pipeline_jobs(PROJECT, p1.id, &JobFilter::default()).try_collect().await.unwrap();
        let p = gitlab.pipeline(PROJECT, p1.id).await.unwrap();
        let quick = jobs.iter().find(|j| j.name == "quick").unwrap();
        let slow = jobs.iter().find(|j| j.name == "slow").unwrap();
        (p.status == Status::Running && quick.status == Status::Success && slow.status == Status::Running)
            .then(|| (p, quick.finished_at.clone().unwrap().at()))
    })
    .await;
    assert!(pipeline.updated_at.as_ref().unwrap().at() >= quick_done, "updated_at did not move with the job");
    eventually(Duration::from_secs(20), || async {
        (gitlab.pipeline(PROJECT, p1.id).await.unwrap().status == Status::Manual).then_some(())
    })
    .await;
    let p2 = run_pipeline(&gitlab, "feature").await; // ends `manual`, after p1
    let p1_before = gitlab.pipeline(PROJECT, p1.id).await.unwrap().updated_at.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mark = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;

    // Playing p1's manual job makes it the most recently updated.
    let jobs: Vec<_> = gitlab.pipeline_jobs(PROJECT, p1.id, &JobFilter::default()).try_collect().await.unwrap();
    let deploy = jobs.iter().find(|j| j.name == "deploy").unwrap();
    gitlab.play_job(PROJECT, deploy.id, &[]).await.unwrap();
    eventually(Duration::from_secs(20), || async {
        (gitlab.pipeline(PROJECT, p1.id).await.unwrap().status == Status::Success).then_some(())
    })
    .await;
    let p1_after = gitlab.pipeline(PROJECT, p1.id).await.unwrap().updated_at.unwrap();
    assert!(p1_after.at() > p1_before.at());

    let list = |q: &'static str| {
        let sim = &sim;
        async move {
            let resp = raw_get(sim, &format!("projects/1/pipelines?{q}")).await;
            assert_eq!(resp.status(), 200, "{q}");
            resp.json::<Vec<Value>>().await.unwrap()
        }
    };
    let (a, b) = (p1.id.0, p2.0);
    assert_eq!(ids(&list("").await), [b, a], "default: id desc");
    assert_eq!(ids(&list("sort=asc").await), [a, b]);
    assert_eq!(ids(&list("order_by=updated_at").await), [a, b]);
    assert_eq!(ids(&list("order_by=updated_at&sort=asc").await), [b, a]);
    assert_eq!(ids(&list("order_by=ref&sort=asc").await), [b, a], "feature < main");
    assert_eq!(ids(&list("order_by=status&sort=asc").await), [b, a], "manual < success");
    assert_eq!(ids(&list("order_by=user_id").await), [b, a], "one user: by id");
    // Only p1 changed after the mark.
    let since = mark.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let changed = raw_get(&sim, &format!("projects/1/pipelines?updated_after={since}")).await;
    assert_eq!(ids(&changed.json::<Vec<Value>>().await.unwrap()), [a]);
    let unchanged = raw_get(&sim, &format!("projects/1/pipelines?updated_before={since}")).await;
    assert_eq!(ids(&unchanged.json::<Vec<Value>>().await.unwrap()), [b]);
    for bad in ["order_by=name", "sort=up"] {
        let resp = raw_get(&sim, &format!("projects/1/pipelines?{bad}")).await;
        assert_eq!(resp.status(), 400, "{bad}");
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().ends_with("does not have a valid value"), "{bad}: {body}");
    }
}
