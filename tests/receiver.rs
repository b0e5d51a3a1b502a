//! The receiver over real HTTP on loopback: every shared sample in and out of `/v1/events`, each
//! refusal, de-duplication, resuming, scoping, slow subscribers, and restart after a crash.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudci::api::auth::TokenKeys;
use cloudci::api::sse::{self, EventsState};
use cloudci_webhook::{BuildEvent, Durability, HookSecrets, Hub, Receiver, Store, sign};
use futures_util::StreamExt;
use secrecy::SecretString;
use serde_json::Value;

const PATH: &str = "Zm9vYmFyYmF6cXV4MTIzNDU2";
const TOKEN: &str = "hook-token-1";
const SIGNING: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

struct Stack {
    public: String,
    local: String,
    keys: TokenKeys,
    http: reqwest::Client,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn serve(router: axum::Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (url, tokio::spawn(async move { axum::serve(listener, router).await.unwrap() }))
}

async fn stack(db: &std::path::Path, signing: bool) -> Stack {
    cloudci_gitlab::install_tls_provider();
    let store = Arc::new(Store::open(db, Durability::Full).unwrap());
    let hub = Hub::new(store);
    let mut secrets = HookSecrets::new(SecretString::from(PATH), vec![SecretString::from(TOKEN)]);
    if signing {
        secrets = secrets.with_signing_token(&SecretString::from(SIGNING)).unwrap();
    }
    let receiver = Receiver::new(secrets, hub.clone(), "probe-nonce".into());
    let keys = TokenKeys::new(&SecretString::from("jwt-key-for-tests-0123456789abcdef"));
    let (public, t1) = serve(receiver.router()).await;
    let (local, t2) = serve(sse::router(EventsState { hub: hub.clone(), keys: keys.clone() })).await;
    let t3 = tokio::spawn(receiver.processor().run());
    Stack { public, local, keys, http: reqwest::Client::new(), _tasks: vec![t1, t2, t3] }
}

fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("gitlab/tests/fixtures")
}

struct Post<'a> {
    event: &'a str,
    body: Vec<u8>,
    key: String,
}

impl Stack {
    async fn post(&self, p: &Post<'_>) -> reqwest::Response {
        self.http
            .post(format!("{}/hooks/{PATH}", self.public))
            .header("Content-Type", "application/json")
            .header("X-Gitlab-Event", p.event)
            .header("X-Gitlab-Token", TOKEN)
            .header("Idempotency-Key", &p.key)
            .header("webhook-id", &p.key)
            .body(p.body.clone())
            .send()
            .await
            .unwrap()
    }

    fn token(&self, projects: &[&str]) -> String {
        let projects = projects.iter().map(|p| (*p).to_owned()).collect();
        self.keys.issue("test", projects, Duration::from_secs(600)).expose().to_owned()
    }

    async fn events(&self, token: &str, query: &str, last_event_id: Option<u64>) -> Sse {
        let mut req = self.http.get(format!("{}/v1/events{query}", self.local)).bearer_auth(token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap_or_default());
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Sse { stream: Box::pin(resp.bytes_stream()), buf: String::new() }
    }
}

/// A minimal SSE reader.
struct Sse {
    stream: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl Sse {
    /// The next event, or `None` if none comes within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<(u64, String, BuildEvent)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut kind, mut data) = (None, String::new(), String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        kind = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if let Some(id) = id {
                    return Some((id, kind, serde_json::from_str(&data).unwrap()));
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.stream.next()).await.ok()??.ok()?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    async fn collect(&mut self, n: usize) -> Vec<BuildEvent> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.next(Duration::from_secs(10)).await {
                Some((id, _, e)) => {
                    assert_eq!(id, e.seq);
                    out.push(e);
                }
                None => panic!("only {} of {n} events arrived: {out:#?}", out.len()),
            }
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shared_sample_goes_in_and_comes_out_of_the_event_stream() {
    let dir = tempfile::tempdir().unwrap();
    let s = stack(&dir.path().join("events.db"), false).await;
    let mut stream = s.events(&s.token(&[]), "?since=0", None).await;
    let files = [
        ("webhook-pipeline-event.json", "Pipeline Hook"),
        ("webhook-job-event.json", "Job Hook"),
        ("webhook-merge-request-event.json", "Merge Request Hook"),
        ("webhook-push-event.json", "Push Hook"),
        ("webhook-tag-push-event.json", "Tag Push Hook"),
        ("webhook-deployment-event.json", "Deployment Hook"),
    ];
    for (i, (file, event)) in files.iter().enumerate() {
        let body = std::fs::read(samples().join(file)).unwrap();
        let resp = s.post(&Post { event, body, key: format!("key-{i}") }).await;
        assert_eq!(resp.status(), 200, "{file}");
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(answer["status"], "accepted");
    }
    // The pipeline sample yields the pipeline and its 5 jobs; the job sample its job and its
    // pipeline; the others one event each.
    let events = s.collect_all(&mut stream, 6 + 2 + 4).await;
    let kinds: Vec<(&str, Option<u64>, Option<u64>)> =
        events.iter().map(|e| (e.kind.as_str(), e.pipeline_id, e.job_id)).collect();
    assert_eq!(kinds[0], ("pipeline", Some(31), None));
    assert_eq!(kinds[1..6].iter().map(|k| k.2.unwrap()).collect::<Vec<_>>(), [376, 377, 378, 379, 380]);
    assert_eq!(kinds[6], ("job", Some(2366), Some(1977)));
    assert_eq!(kinds[7], ("pipeline", Some(2366), None));
    assert_eq!(events[8].kind.as_str(), "merge_request");
    assert_eq!(events[8].merge_request_iid, Some(16));
    assert_eq!(events[9].kind.as_str(), "push");
    assert_eq!(events[9].git_ref.as_deref(), Some("master"));
    assert_eq!(events[10].kind.as_str(), "push");
    assert_eq!(events[11].gitlab_event, "Deployment Hook");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert_eq!(events[0].status.as_deref(), Some("success"));
    assert_eq!(events[0].project.as_deref(), Some("gitlab-org/gitlab-test"));
}

impl Stack {
    async fn collect_all(&self, stream: &mut Sse, n: usize) -> Vec<BuildEvent> {
        let events = stream.collect(n).await;
        assert!(stream.next(Duration::from_millis(300)).await.is_none(), "more events than expected");
        events
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deliveries_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let s = stack(&dir.path().join("events.db"), true).await;
    let body = std::fs::read(samples().join("webhook-push-event.json")).unwrap();
    let url = format!("{}/hooks/{PATH}", s.public);
    let now = chrono::Utc::now().timestamp().to_string();
    let good_sig = sign(SIGNING, "id-1", &now, &body).unwrap();
    let send = |builder: reqwest::RequestBuilder| async move { builder.send().await.unwrap() };
    let base = |url: &str| {
        s.http
            .post(url)
            .header("Content-Type", "application/json")
            .header("X-Gitlab-Event", "Push Hook")
            .header("webhook-id", "id-1")
            .header("webhook-timestamp", now.as_str())
    };

    // The right everything: accepted.
    let ok = send(base(&url).header("X-Gitlab-Token", TOKEN).header("webhook-signature", &good_sig).body(body.clone()))
        .await;
    assert_eq!(ok.status(), 200);

    // Wrong path, wrong method, other paths: 404 with nothing that says why.
    for resp in [
        send(base(&format!("{}/hooks/nope", s.public)).header("X-Gitlab-Token", TOKEN).body(body.clone())).await,
        s.http.get(&url).send().await.unwrap(),
        s.http.get(format!("{}/v1/events", s.public)).send().await.unwrap(),
        s.http.post(format!("{}/", s.public)).send().await.unwrap(),
    ] {
        assert_eq!(resp.status(), 404);
        assert!(resp.bytes().await.unwrap().is_empty());
    }

    let cases: Vec<(reqwest::Response, u16, &str)> = vec![
        (
            send(base(&url).header("webhook-signature", &good_sig).body(body.clone())).await,
            401,
            "missing X-Gitlab-Token",
        ),
        (
            send(
                base(&url).header("X-Gitlab-Token", "wrong").header("webhook-signature", &good_sig).body(body.clone()),
            )
            .await,
            401,
            "does not match",
        ),
        (send(base(&url).header("X-Gitlab-Token", TOKEN).body(body.clone())).await, 401, "missing webhook-signature"),
        (
            send(base(&url).header("X-Gitlab-Token", TOKEN).header("webhook-signature", "v1,AAAA").body(body.clone()))
                .await,
            401,
            "webhook-signature does not match",
        ),
        (
            send(
                s.http
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .header("X-Gitlab-Token", TOKEN)
                    .header("webhook-id", "id-1")
                    .header("webhook-timestamp", "1000")
                    .header("webhook-signature", sign(SIGNING, "id-1", "1000", &body).unwrap())
                    .body(body.clone()),
            )
            .await,
            401,
            "webhook-timestamp",
        ),
        (
            send(
                s.http
                    .post(&url)
                    .header("Content-Type", "text/plain")
                    .header("X-Gitlab-Token", TOKEN)
                    .body(body.clone()),
            )
            .await,
            415,
            "application/json",
        ),
    ];
    for (resp, status, reason) in cases {
        assert_eq!(resp.status().as_u16(), status, "{reason}");
        let text = resp.text().await.unwrap();
        assert!(text.contains(reason), "{status}: {text}");
        assert!(!text.contains(TOKEN) && !text.contains("AAECAw"), "a secret in an error: {text}");
    }

    // Malformed JSON: 400 with the parse error (signed correctly, so it gets that far).
    let bad = b"{\"object_kind\": ".to_vec();
    let sig = sign(SIGNING, "id-2", &now, &bad).unwrap();
    let resp = send(
        s.http
            .post(&url)
            .header("Content-Type", "application/json")
            .header("X-Gitlab-Token", TOKEN)
            .header("webhook-id", "id-2")
            .header("webhook-timestamp", now.as_str())
            .header("webhook-signature", sig)
            .body(bad),
    )
    .await;
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("malformed JSON"));

    // Over GitLab's 25 MB cap: 413.
    let huge = vec![b' '; 25 * 1024 * 1024 + 1];
    let resp = send(base(&url).header("X-Gitlab-Token", TOKEN).body(huge)).await;
    assert_eq!(resp.status(), 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resends_are_acknowledged_once_and_unknown_events_kept() {
    let dir = tempfile::tempdir().unwrap();
    let s = stack(&dir.path().join("events.db"), false).await;
    let mut stream = s.events(&s.token(&[]), "", None).await;
    let body = std::fs::read(samples().join("webhook-merge-request-event.json")).unwrap();
    let first = s.post(&Post { event: "Merge Request Hook", body: body.clone(), key: "same-key".into() }).await;
    assert_eq!(first.json::<Value>().await.unwrap()["status"], "accepted");
    let again = s.post(&Post { event: "Merge Request Hook", body, key: "same-key".into() }).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["status"], "duplicate");
    // An event kind cloudci does not model is stored and acknowledged.
    let emoji = br#"{"object_kind":"emoji","project":{"id":7,"path_with_namespace":"a/b"}}"#.to_vec();
    let resp = s.post(&Post { event: "Emoji Hook", body: emoji, key: "emoji-1".into() }).await;
    assert_eq!(resp.status(), 200);
    let events = s.collect_all(&mut stream, 2).await;
    assert_eq!(events[0].kind.as_str(), "merge_request");
    assert_eq!(events[1].kind.as_str(), "other");
    assert_eq!(events[1].project_id, 7);
}

/// Delivers job and pipeline events for pipeline 100 with job 1001 in a given order.
fn job_body(job: u64, status: &str, pipeline_status: &str) -> Vec<u8> {
    let mut v: Value =
        serde_json::from_slice(&std::fs::read(samples().join("webhook-job-event.json")).unwrap()).unwrap();
    v["build_id"] = job.into();
    v["build_status"] = status.into();
    v["pipeline_id"] = 100.into();
    v["commit"]["id"] = 100.into();
    v["commit"]["status"] = pipeline_status.into();
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_and_repeated_deliveries_never_move_a_status_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = stack(&dir.path().join("events.db"), false).await;
    let mut stream = s.events(&s.token(&[]), "?pipeline=100", None).await;
    // Arrival order scrambled by GitLab's workers: success overtakes running and pending.
    for (i, (job, st, pst)) in [
        (1001, "pending", "pending"),
        (1001, "success", "success"),
        (1001, "running", "running"),
        (1001, "pending", "pending"),
        (1001, "success", "success"),
    ]
    .iter()
    .enumerate()
    {
        let resp = s.post(&Post { event: "Job Hook", body: job_body(*job, st, pst), key: format!("k{i}") }).await;
        assert_eq!(resp.status(), 200);
    }
    let events = s.collect_all(&mut stream, 4).await;
    let seen: Vec<String> =
        events.iter().map(|e| format!("{}:{}", e.kind.as_str(), e.status.as_deref().unwrap_or(""))).collect();
    assert_eq!(seen, ["job:pending", "pipeline:pending", "job:success", "pipeline:success"]);
    assert_eq!(events[2].previous_status.as_deref(), Some("pending"));

    // A retried job (a new, higher id) reopens the pipeline; a late delivery from before the
    // retry does not close it again.
    s.post(&Post { event: "Job Hook", body: job_body(1002, "running", "running"), key: "r1".into() }).await;
    s.post(&Post { event: "Job Hook", body: job_body(1001, "success", "success"), key: "r2".into() }).await;
    s.post(&Post { event: "Job Hook", body: job_body(1002, "failed", "failed"), key: "r3".into() }).await;
    let events = s.collect_all(&mut stream, 4).await;
    let seen: Vec<String> = events
        .iter()
        .map(|e| {
            format!("{}:{}{}", e.kind.as_str(), e.status.as_deref().unwrap_or(""), if e.retry { "(retry)" } else { "" })
        })
        .collect();
    assert_eq!(seen, ["job:running", "pipeline:running(retry)", "job:failed", "pipeline:failed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_resumes_without_gap_or_duplicate_and_tokens_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let s = stack(&dir.path().join("events.db"), false).await;
    for i in 0..10u64 {
        let mut v: Value =
            serde_json::from_slice(&std::fs::read(samples().join("webhook-push-event.json")).unwrap()).unwrap();
        v["after"] = format!("{i:040}").into();
        s.post(&Post { event: "Push Hook", body: serde_json::to_vec(&v).unwrap(), key: format!("p{i}") }).await;
    }
    let token = s.token(&[]);
    let mut all = s.events(&token, "?since=0", None).await;
    let first = all.collect(10).await;
    let mut resumed = s.events(&token, "", Some(first[3].seq)).await;
    let rest = resumed.collect(6).await;
    assert_eq!(rest.iter().map(|e| e.seq).collect::<Vec<_>>(), first[4..].iter().map(|e| e.seq).collect::<Vec<_>>());
    assert!(resumed.next(Duration::from_millis(300)).await.is_none());

    // No token, a bad one, an expired one: 401. A token scoped to another project: 403 for a
    // project it may not see, and nothing of the others in its own stream.
    for auth in [None, Some("nope".to_owned()), Some(format!("{token}x"))] {
        let mut req = s.http.get(format!("{}/v1/events", s.local));
        if let Some(a) = auth {
            req = req.bearer_auth(a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    }
    let scoped = s.token(&["other/project"]);
    let resp =
        s.http.get(format!("{}/v1/events?project=mike/diaspora", s.local)).bearer_auth(&scoped).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.json::<Value>().await.unwrap()["field"], "project");
    let mut theirs = s.events(&scoped, "?since=0", None).await;
    assert!(theirs.next(Duration::from_millis(300)).await.is_none());
    let mut mine = s.events(&s.token(&["mike/diaspora"]), "?since=0", None).await;
    assert_eq!(mine.collect(10).await.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_subscriber_delays_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = stack(&dir.path().join("events.db"), false).await;
    let token = s.token(&[]);
    // A subscriber that connects and never reads.
    let stuck = s.http.get(format!("{}/v1/events", s.local)).bearer_auth(&token).send().await.unwrap();
    let mut healthy = s.events(&token, "", None).await;
    let body = std::fs::read(samples().join("webhook-push-event.json")).unwrap();
    let n = 2000;
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        let t = Instant::now();
        let resp = s.post(&Post { event: "Push Hook", body: body.clone(), key: format!("s{i}") }).await;
        assert_eq!(resp.status(), 200);
        slowest = slowest.max(t.elapsed());
    }
    let took = started.elapsed();
    let got = healthy.collect(n).await;
    assert_eq!(got.len(), n);
    assert!(got.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    eprintln!("{n} deliveries in {took:?} ({:.0}/s), slowest answer {slowest:?}", n as f64 / took.as_secs_f64());
    assert!(slowest < Duration::from_secs(5), "a delivery waited {slowest:?}");
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_delivery_survives_a_crash_before_processing() {
    cloudci_gitlab::install_tls_provider();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    // Receiver up, processor down: the 2xx comes from the store alone.
    {
        let store = Arc::new(Store::open(&db, Durability::Full).unwrap());
        let hub = Hub::new(store);
        let receiver =
            Receiver::new(HookSecrets::new(SecretString::from(PATH), vec![SecretString::from(TOKEN)]), hub, "n".into());
        let (public, task) = serve(receiver.router()).await;
        let body = std::fs::read(samples().join("webhook-pipeline-event.json")).unwrap();
        let resp = reqwest::Client::new()
            .post(format!("{public}/hooks/{PATH}"))
            .header("Content-Type", "application/json")
            .header("X-Gitlab-Event", "Pipeline Hook")
            .header("X-Gitlab-Token", TOKEN)
            .header("Idempotency-Key", "crash-1")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        task.abort();
    }
    // "Restart": a new stack on the same database processes what was left.
    let s = stack(&db, false).await;
    let mut stream = s.events(&s.token(&[]), "?since=0", None).await;
    let events = s.collect_all(&mut stream, 6).await;
    assert_eq!(events[0].pipeline_id, Some(31));
    assert_eq!(events[0].status.as_deref(), Some("success"));
}
