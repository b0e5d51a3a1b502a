//! Group hooks (Premium) and GitLab.com's per-namespace webhook rate limit, against a real HTTP
//! receiver: a group hook gets the events of every project of its group and subgroups, with the
//! headers and signatures of project hooks, its own delivery log and the same auto-disabling;
//! deliveries over the limit are dropped unsent and unlogged.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use common::team::*;
use common::*;
use reqwest::Method;
use serde_json::{Value, json};

/// A GitLab signing token: `whsec_` and a base64 32-byte key (bytes 0..32).
const SIGNING: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

type Got = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// A receiver answering `status`; what it got.
async fn receiver(status: StatusCode) -> (String, Got) {
    let got: Got = Arc::default();
    let log = got.clone();
    let app = Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push((headers, body));
            status
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

/// `(project path, pipeline status)` of every Pipeline Hook received.
fn pipelines_seen(got: &Got) -> Vec<(String, String)> {
    let mut seen: Vec<(String, String)> = got
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body)| {
            let v: Value = serde_json::from_slice(body).unwrap();
            let path = v["project"]["path_with_namespace"].as_str().unwrap().to_owned();
            (path, v["object_attributes"]["status"].as_str().unwrap().to_owned())
        })
        .collect();
    seen.sort();
    seen
}

async fn create_pipeline(sim: &gitlab_sim::Sim, project: &str) {
    let path = format!("/projects/{}/pipeline", project.replace('/', "%2F"));
    let (status, body) = call(sim, "root", Method::POST, &path, Some(json!({"ref": "main"}))).await;
    assert_eq!(status, 201, "{body}");
}

async fn hook(sim: &gitlab_sim::Sim, user: &str, path: &str, url: &str) -> (u16, Value) {
    let body =
        json!({"url": url, "pipeline_events": true, "push_events": false, "token": "s3cret", "signing_token": SIGNING});
    call(sim, user, Method::POST, path, Some(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_hook_gets_every_project_of_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let sim = team_sim(dir.path(), MANUAL_CI, |c| c.premium = true).await;
    let (url, got) = receiver(StatusCode::OK).await;
    let (project_url, project_got) = receiver(StatusCode::OK).await;

    // Only the group's Owner (or an administrator) manages its hooks.
    for user in ["alice", "erin"] {
        let (status, body) = hook(&sim, user, "/groups/acme/hooks", &url).await;
        assert_eq!((status, body["message"].as_str()), (403, Some("403 Forbidden")), "{user}");
    }
    assert_eq!(hook(&sim, "dave", "/groups/acme/hooks", &url).await.0, 404, "a private group is hidden");
    let (status, created) = hook(&sim, "frank", "/groups/acme/hooks", &url).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_u64().unwrap();
    assert_eq!(created["group_id"], 1);
    assert!(created.get("project_id").is_none() && created.get("token").is_none());
    let (_, shown) = get_as(&sim, "frank", &format!("/groups/1/hooks/{id}")).await;
    let mut gaps = missing_keys(&sample("api-group-hook.json"), &shown);
    gaps.retain(|k| k != "custom_headers");
    assert!(gaps.is_empty(), "a group hook lacks {gaps:?}");
    assert_eq!(get_as(&sim, "frank", "/groups/acme/hooks").await.1.as_array().unwrap().len(), 1);
    // A project hook on one of the projects fires as well: both are called.
    assert_eq!(hook(&sim, "erin", "/projects/1/hooks", &project_url).await.0, 201);

    for project in ["acme/firmware", "acme/tools/cli", "beta/other"] {
        create_pipeline(&sim, project).await;
    }
    let want: Vec<(String, String)> = ["acme/firmware", "acme/tools/cli"]
        .iter()
        .flat_map(|p| [(p.to_string(), "created".to_owned()), (p.to_string(), "manual".to_owned())])
        .collect();
    eventually(Duration::from_secs(20), || async { (pipelines_seen(&got) == want).then_some(()) }).await;
    eventually(Duration::from_secs(20), || async { (pipelines_seen(&project_got).len() == 2).then_some(()) }).await;

    // The same headers and signature as a project hook's.
    for (headers, body) in got.lock().unwrap().iter() {
        assert_eq!(headers["x-gitlab-event"], "Pipeline Hook");
        assert_eq!(headers["x-gitlab-token"], "s3cret");
        let id = headers["webhook-id"].to_str().unwrap();
        assert_eq!(headers["idempotency-key"].to_str().unwrap(), id);
        let ts = headers["webhook-timestamp"].to_str().unwrap();
        let sig = gitlab_sim::sign(SIGNING, id, ts, body).unwrap();
        assert_eq!(headers["webhook-signature"].to_str().unwrap(), sig);
    }

    // The group hook's own delivery log, with GitLab's filters.
    let (status, log) = get_as(&sim, "frank", &format!("/groups/acme/hooks/{id}/events?status=successful")).await;
    assert_eq!(status, 200);
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 4);
    assert!(log.iter().all(|e| e["trigger"] == "pipeline_hooks" && e["response_status"] == "200"));
    assert_eq!(log[0]["request_headers"]["X-Gitlab-Token"], "[REDACTED]");
    let resend = format!("/groups/acme/hooks/{id}/events/{}/resend", log[0]["id"]);
    let (status, body) = call(&sim, "frank", Method::POST, &resend, None).await;
    assert_eq!((status, body), (201, json!({"response_status": 200})));
    let test = format!("/groups/acme/hooks/{id}/test/pipeline_events");
    assert_eq!(call(&sim, "frank", Method::POST, &test, None).await.0, 201);
    assert_eq!(got.lock().unwrap().len(), 6, "4 events, a resend and a test");

    assert_eq!(call(&sim, "frank", Method::DELETE, &format!("/groups/acme/hooks/{id}"), None).await.0, 204);
    assert_eq!(get_as(&sim, "frank", &format!("/groups/acme/hooks/{id}")).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_hooks_are_premium_and_auto_disable_like_project_hooks() {
    let dir = tempfile::tempdir().unwrap();
    let free = team_sim(dir.path(), MANUAL_CI, |_| {}).await;
    let (status, body) = get_as(&free, "root", "/groups/acme/hooks").await;
    assert_eq!((status, body), (404, json!({"error": "404 Not Found"})), "GitLab Free has no group hooks");
    drop(free);

    let dir = tempfile::tempdir().unwrap();
    let sim = team_sim(dir.path(), MANUAL_CI, |c| c.premium = true).await;
    let (url, got) = receiver(StatusCode::INTERNAL_SERVER_ERROR).await;
    let (_, created) = hook(&sim, "root", "/groups/acme/hooks", &url).await;
    let path = format!("/groups/acme/hooks/{}", created["id"]);
    // Two pipelines: four failing deliveries, after which GitLab pauses the hook.
    create_pipeline(&sim, "acme/firmware").await;
    create_pipeline(&sim, "acme/tools/cli").await;
    let shown = eventually(Duration::from_secs(20), || async {
        let (_, h) = get_as(&sim, "root", &path).await;
        (h["alert_status"] == "temporarily_disabled").then_some(h)
    })
    .await;
    assert!(shown["disabled_until"].is_string());
    let (_, log) = get_as(&sim, "root", &format!("{path}/events?status=server_failure")).await;
    assert_eq!(log.as_array().unwrap().len(), 4);
    create_pipeline(&sim, "acme/firmware").await;
    // A paused hook is not called; a test delivery still is (and counts as one more attempt).
    assert_eq!(call(&sim, "root", Method::POST, &format!("{path}/test/pipeline_events"), None).await.0, 201);
    assert_eq!(got.lock().unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_over_the_namespace_limit_are_dropped_unlogged() {
    let dir = tempfile::tempdir().unwrap();
    let sim = team_sim(dir.path(), MANUAL_CI, |c| c.hook_rate_limit = Some(3)).await;
    let mut receivers = Vec::new();
    for project in 1..=3 {
        let (url, got) = receiver(StatusCode::OK).await;
        let (status, _) = hook(&sim, "root", &format!("/projects/{project}/hooks"), &url).await;
        assert_eq!(status, 201);
        receivers.push(got);
    }
    // acme's two projects share acme's 3 calls a minute; beta has its own.
    create_pipeline(&sim, "acme/firmware").await;
    create_pipeline(&sim, "acme/tools/cli").await;
    create_pipeline(&sim, "beta/other").await;
    let counts = || receivers.iter().map(|g| g.lock().unwrap().len()).collect::<Vec<_>>();
    eventually(Duration::from_secs(20), || async { (counts() == vec![2, 1, 2]).then_some(()) }).await;
    assert_eq!(sim.hook_rate_limited(), BTreeMap::from([("acme".to_owned(), 1)]));
    // Not in any delivery log, not a failure: the hooks stay executable.
    let mut logged = 0;
    for project in 1..=3 {
        let (_, hooks) = get_as(&sim, "root", &format!("/projects/{project}/hooks")).await;
        let hook = &hooks[0];
        assert_eq!(hook["alert_status"], "executable");
        let (_, log) = get_as(&sim, "root", &format!("/projects/{project}/hooks/{}/events", hook["id"])).await;
        assert!(log.as_array().unwrap().iter().all(|e| e["response_status"] == "200"));
        logged += log.as_array().unwrap().len();
    }
    assert_eq!(logged, 5);
    // Test deliveries are sent at once, outside the limit.
    let (_, hooks) = get_as(&sim, "root", "/projects/1/hooks").await;
    let test = format!("/projects/1/hooks/{}/test/pipeline_events", hooks[0]["id"]);
    assert_eq!(call(&sim, "root", Method::POST, &test, None).await.0, 201);
    assert_eq!(receivers[0].lock().unwrap().len(), 3);
    assert_eq!(sim.hook_rate_limited()["acme"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_starts_again_with_the_next_window() {
    let dir = tempfile::tempdir().unwrap();
    let sim = team_sim(dir.path(), MANUAL_CI, |c| {
        c.hook_rate_limit = Some(1);
        c.hook_rate_window = Duration::from_secs(2);
    })
    .await;
    let (url, got) = receiver(StatusCode::OK).await;
    assert_eq!(hook(&sim, "root", "/projects/1/hooks", &url).await.0, 201);
    // One pipeline sends its two Pipeline Hooks at the same instant: the second is over the limit.
    create_pipeline(&sim, "acme/firmware").await;
    eventually(Duration::from_secs(20), || async { (got.lock().unwrap().len() == 1).then_some(()) }).await;
    assert_eq!(sim.hook_rate_limited()["acme"], 1);
    // The window is what is tested here: once it has passed, the next pipeline has a fresh count.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    create_pipeline(&sim, "acme/firmware").await;
    eventually(Duration::from_secs(20), || async { (got.lock().unwrap().len() == 2).then_some(()) }).await;
    assert_eq!(sim.hook_rate_limited()["acme"], 2);
    assert_eq!(pipelines_seen(&got), vec![("acme/firmware".into(), "created".into()); 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_stop_at_gitlabs_limits() {
    let dir = tempfile::tempdir().unwrap();
    let sim = team_sim(dir.path(), MANUAL_CI, |c| c.premium = true).await;
    for (path, limit, what) in [("/groups/acme/hooks", 50, "group"), ("/projects/1/hooks", 100, "project")] {
        for _ in 0..limit {
            assert_eq!(hook(&sim, "root", path, "http://127.0.0.1:9/x").await.0, 201);
        }
        let (status, body) = hook(&sim, "root", path, "http://127.0.0.1:9/x").await;
        assert_eq!(status, 422);
        assert_eq!(body["message"]["base"][0], format!("Maximum number of {what} hooks ({limit}) exceeded"));
    }
    // The limit is per project: another project still takes hooks.
    assert_eq!(hook(&sim, "root", "/projects/2/hooks", "http://127.0.0.1:9/x").await.0, 201);
}
