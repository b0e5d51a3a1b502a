//! Group commit and encode-once fan-out: many deliveries at once (duplicates among them, also
//! within one batch) are all answered, stored once and logged once, in order; nothing is answered
//! before its commit; a delivery left pending is processed before newer ones.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cloudci::api::auth::TokenKeys;
use cloudci::api::sse::{self, EventsState};
use cloudci_webhook::{
    BuildEvent, Durability, EventFilter, EventSource, HookSecrets, Hub, Incoming, NewDelivery, Receiver, Store, Stored,
    observe,
};
use futures_util::StreamExt;
use secrecy::SecretString;
use serde_json::Value;

const PATH: &str = "Zm9vYmFyYmF6cXV4MTIzNDU2";
const TOKEN: &str = "hook-token-1";

fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("gitlab/tests/fixtures")
}

/// The push sample, made distinct by `i` (one event each).
fn push(i: usize) -> Vec<u8> {
    let mut v: Value =
        serde_json::from_slice(&std::fs::read(samples().join("webhook-push-event.json")).unwrap()).unwrap();
    v["after"] = format!("{i:040}").into();
    serde_json::to_vec(&v).unwrap()
}

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

struct Stack {
    public: String,
    local: String,
    token: String,
    hub: Hub,
    /// The store behind `hub`, for what only a test does (a delivery left unprocessed).
    store: Arc<Store>,
    receiver: Receiver,
}

async fn stack(db: &std::path::Path, processor: bool) -> Stack {
    cloudci_gitlab::install_tls_provider();
    let store = Arc::new(Store::open(db, Durability::Full).unwrap());
    let hub = Hub::new(store.clone());
    let receiver = Receiver::new(
        HookSecrets::new(SecretString::from(PATH), vec![SecretString::from(TOKEN)]),
        hub.clone(),
        "n".into(),
    );
    let keys = TokenKeys::new(&SecretString::from("jwt-key-for-tests-0123456789abcdef"));
    let public = serve(receiver.router()).await;
    let local = serve(sse::router(EventsState { hub: hub.clone(), keys: keys.clone() })).await;
    if processor {
        tokio::spawn(receiver.processor().run());
    }
    let token = keys.issue("test", vec![], Duration::from_secs(600)).expose().to_owned();
    Stack { public, local, token, hub, store, receiver }
}

async fn post(http: &reqwest::Client, public: &str, key: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = http
        .post(format!("{public}/hooks/{PATH}"))
        .header("Content-Type", "application/json")
        .header("X-Gitlab-Event", "Push Hook")
        .header("X-Gitlab-Token", TOKEN)
        .header("Idempotency-Key", key)
        .body(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// Reads SSE frames until `n` events arrived (or 20 s passed), checking each comes once.
async fn sse_events(local: &str, token: &str, query: &str, n: usize) -> Vec<BuildEvent> {
    let resp = reqwest::Client::new().get(format!("{local}/v1/events{query}")).bearer_auth(token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let (mut buf, mut out) = (String::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while out.len() < n {
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let id = frame.lines().find_map(|l| l.strip_prefix("id: ")).map(|v| v.parse::<u64>().unwrap());
            let data: String = frame.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            if let Some(id) = id {
                let e: BuildEvent = serde_json::from_str(&data).unwrap();
                assert_eq!(e.seq, id);
                out.push(e);
            }
        }
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(chunk))) => buf.push_str(std::str::from_utf8(&chunk).unwrap()),
            _ => break,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deliveries_with_duplicates_are_all_answered_and_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let s = stack(&db, true).await;
    let distinct = 150;
    // Subscribers in process and over SSE, from before the first delivery.
    let mut in_process = Box::pin(s.hub.subscribe(EventFilter::default(), None));
    let sse = tokio::spawn({
        let (local, token) = (s.local.clone(), s.token.clone());
        async move { sse_events(&local, &token, "", distinct).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Each key sent three times at once: copies land in the same batch or in different ones.
    let http = reqwest::Client::new();
    let sends = (0..distinct * 3).map(|n| {
        let (http, public) = (http.clone(), s.public.clone());
        let i = n % distinct;
        async move { (i, post(&http, &public, &format!("k{i}"), push(i)).await) }
    });
    let answers = futures_util::future::join_all(sends).await;
    let mut accepted = vec![0; distinct];
    let mut ids = vec![None; distinct];
    for (i, (status, body)) in &answers {
        assert_eq!(*status, 200, "{body}");
        let id = body["delivery"].as_i64().unwrap();
        // Every copy names the same stored delivery.
        assert_eq!(*ids[*i].get_or_insert(id), id, "key k{i}");
        match body["status"].as_str().unwrap() {
            "accepted" => accepted[*i] += 1,
            "duplicate" => {}
            other => panic!("{other}"),
        }
    }
    assert!(accepted.iter().all(|&a| a == 1), "{accepted:?}");

    let stats = s.receiver.ingest_stats();
    let batches = stats.batches.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(stats.deliveries.load(std::sync::atomic::Ordering::Relaxed), (distinct * 3) as u64);
    eprintln!(
        "{} deliveries in {batches} commits, largest {}",
        distinct * 3,
        stats.max_batch.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(batches < (distinct * 3) as u64, "no two deliveries shared a commit");

    // One event per distinct delivery, once, in order, for both kinds of subscriber.
    let got = sse.await.unwrap();
    assert_eq!(got.len(), distinct);
    assert!(got.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    let mut shas: Vec<_> = got.iter().map(|e| e.sha.clone().unwrap()).collect();
    shas.sort();
    shas.dedup();
    assert_eq!(shas.len(), distinct);
    for expected in &got {
        let e = tokio::time::timeout(Duration::from_secs(10), in_process.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(&e, expected);
    }
    assert!(tokio::time::timeout(Duration::from_millis(300), in_process.next()).await.is_err());
    // And the log holds each once.
    let (logged, _) = s.hub.events_after(0, None, EventFilter::default(), 10_000).await.unwrap();
    assert_eq!(logged.len(), distinct);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_delivery_is_answered_before_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let s = stack(&db, true).await;
    // A second connection sees only what is committed.
    let reader = Arc::new(Store::open(&db, Durability::Normal).unwrap());
    let http = reqwest::Client::new();
    let sends = (0..100).map(|i| {
        let (http, public, reader) = (http.clone(), s.public.clone(), reader.clone());
        async move {
            let (status, _) = post(&http, &public, &format!("c{i}"), push(i)).await;
            assert_eq!(status, 200);
            // Right at the answer: committed, and (nothing older pending) processed with it.
            let stored =
                tokio::task::spawn_blocking(move || reader.delivery(&format!("key:c{i}")).unwrap()).await.unwrap();
            assert!(matches!(stored, Some((_, true))), "delivery c{i} answered before its commit: {stored:?}");
        }
    });
    futures_util::future::join_all(sends).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_delivery_is_processed_before_newer_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let s = stack(&db, false).await;
    // Left unprocessed, as after a crash between storing and processing.
    let old =
        NewDelivery { dedup_key: "key:old".into(), event: "Push Hook".into(), headers: "{}".into(), body: push(1000) };
    let store = s.store.clone();
    assert!(matches!(store.insert_delivery(&old).unwrap(), Stored::New(_)));
    let http = reqwest::Client::new();
    let (status, body) = post(&http, &s.public, "new", push(1001)).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("accepted")));
    // Stored, but not processed ahead of the older one.
    assert_eq!(store.delivery("key:new").unwrap().map(|d| d.1), Some(false));
    assert_eq!(store.last_seq().unwrap(), 0);
    tokio::spawn(s.receiver.processor().run());
    let got = sse_events(&s.local, &s.token, "?since=0", 2).await;
    let shas: Vec<_> = got.iter().map(|e| e.sha.clone().unwrap()).collect();
    assert_eq!(shas, [format!("{:040}", 1000), format!("{:040}", 1001)]);
    // Once the backlog is gone, deliveries are processed in their own commit again.
    post(&http, &s.public, "newer", push(1002)).await;
    assert_eq!(store.delivery("key:newer").unwrap().map(|d| d.1), Some(true));
}

#[test]
fn a_key_twice_in_one_batch_is_stored_and_logged_once() {
    let store = Store::in_memory().unwrap();
    let incoming = |key: &str, i: usize| {
        let body = push(i);
        let parsed = cloudci_gitlab::webhook::WebhookEvent::parse(Some("Push Hook"), &body).unwrap();
        Incoming {
            delivery: NewDelivery { dedup_key: key.into(), event: "Push Hook".into(), headers: "{}".into(), body },
            observations: Ok(observe(&parsed, EventSource::Webhook)),
        }
    };
    let bad = Incoming {
        delivery: NewDelivery {
            dedup_key: "bad".into(),
            event: "Push Hook".into(),
            headers: "{}".into(),
            body: b"{}".to_vec(),
        },
        observations: Err("unreadable".into()),
    };
    let done = store.ingest(vec![incoming("a", 1), incoming("a", 2), bad, incoming("b", 3)]).unwrap();
    let [Stored::New(a), Stored::Duplicate(a2), Stored::New(_), Stored::New(_)] = done.stored[..] else {
        panic!("{:?}", done.stored)
    };
    assert_eq!(a, a2);
    assert!(!done.deferred);
    // The first copy wins; the unreadable delivery is kept (processed, with its reason), no event.
    let shas: Vec<_> = done.events.iter().map(|e| e.sha.clone().unwrap()).collect();
    assert_eq!(shas, [format!("{:040}", 1), format!("{:040}", 3)]);
    assert_eq!(done.events[1].seq, done.events[0].seq + 1);
    assert_eq!(store.delivery("bad").unwrap().map(|d| d.1), Some(true));
    assert!(store.pending_deliveries(10).unwrap().is_empty());
    // A later batch with the same key again: still a duplicate.
    let again = store.ingest(vec![incoming("b", 4)]).unwrap();
    assert!(matches!(again.stored[..], [Stored::Duplicate(_)]) && again.events.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_delivery_on_an_idle_daemon_is_committed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = stack(&dir.path().join("events.db"), true).await;
    let http = reqwest::Client::new();
    post(&http, &s.public, "warm", push(0)).await;
    let mut slowest = Duration::ZERO;
    for i in 1..20 {
        let t = std::time::Instant::now();
        post(&http, &s.public, &format!("lone{i}"), push(i)).await;
        slowest = slowest.max(t.elapsed());
    }
    let stats = s.receiver.ingest_stats();
    // One after the other: one commit each, nothing waiting for company.
    assert_eq!(stats.max_batch.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
}
