//! Deliveries at GitLab's sizes through the receiver on loopback: a pipeline with 1,000 jobs (one
//! Pipeline Hook lists them all) becomes 1,001 events, and a delivery of exactly the 25 MB body
//! cap is accepted in bounded memory (the process's peak RSS, `VmHWM`; one test in this binary so
//! the peak is its own). Over the cap is a 413 (tests/receiver.rs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudci_webhook::{Durability, EventFilter, HookSecrets, Hub, MAX_BODY, Receiver, Store};
use secrecy::SecretString;
use serde_json::{Value, json};

const PATH: &str = "b3ZlcnNpemUtcGF0aC1zZWNyZXQ";
const TOKEN: &str = "hook-token-oversize";

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap().trim().trim_end_matches("kB").trim().parse().unwrap()
}

fn pipeline(id: u64, jobs: usize) -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/gitlab/tests/fixtures/webhook-pipeline-event.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["object_attributes"]["id"] = json!(id);
    v["object_attributes"]["status"] = json!("running");
    let template = v["builds"][0].clone();
    v["builds"] = Value::Array(
        (0..jobs)
            .map(|k| {
                let mut b = template.clone();
                b["id"] = json!(id * 10_000 + k as u64);
                b["name"] = json!(format!("build-{k}"));
                b["status"] = json!("pending");
                b
            })
            .collect(),
    );
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_sized_deliveries_are_taken_in_bounded_memory() {
    cloudci_gitlab::install_tls_provider();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("events.db"), Durability::Normal).unwrap());
    let hub = Hub::new(store.clone());
    let receiver =
        Receiver::new(HookSecrets::new(SecretString::from(PATH), vec![SecretString::from(TOKEN)]), hub, "n".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/{PATH}", listener.local_addr().unwrap());
    let router = receiver.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let post = |key: &'static str, body: Vec<u8>| {
        http.post(&url)
            .header("Content-Type", "application/json")
            .header("X-Gitlab-Event", "Pipeline Hook")
            .header("X-Gitlab-Token", TOKEN)
            .header("Idempotency-Key", key)
            .body(body)
            .send()
    };

    // 1,000 jobs: one delivery, the pipeline and every job in the log, in one commit.
    let body = serde_json::to_vec(&pipeline(7, 1000)).unwrap();
    let started = Instant::now();
    let resp = post("thousand", body).await.unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    let took = started.elapsed();
    let (events, _) = store.events_after(0, None, &EventFilter::default(), 5000).unwrap();
    assert_eq!(events.len(), 1001, "the pipeline and its 1,000 jobs");
    assert_eq!(events.iter().filter(|e| e.job_id.is_some()).count(), 1000);
    eprintln!("1,000 jobs: answered in {took:.2?}");

    // Exactly the cap: a valid Pipeline Hook padded in a field GitLab fills with user text.
    let mut big = pipeline(8, 3);
    let skeleton = serde_json::to_vec(&big).unwrap().len();
    big["commit"]["message"] = json!("x".repeat(MAX_BODY - skeleton - "\"\"".len() - 16));
    let mut body = serde_json::to_vec(&big).unwrap();
    assert!(body.len() <= MAX_BODY);
    // Whitespace after the value keeps it valid JSON and makes it exactly the cap.
    body.resize(MAX_BODY, b' ');
    let before = peak_rss_kib();
    let started = Instant::now();
    let resp = post("at-the-cap", body).await.unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    let took = started.elapsed();
    let grew_mib = peak_rss_kib().saturating_sub(before) / 1024;
    eprintln!("25 MB delivery: answered in {took:.2?}, peak RSS +{grew_mib} MiB");
    // The body is read once, parsed once and stored: a few copies of 25 MB, not a multiple of
    // that per step. Generous, as allocators keep freed memory.
    assert!(grew_mib < 250, "peak RSS grew by {grew_mib} MiB for one 25 MB delivery");
    let (events, _) = store.events_after(1001, None, &EventFilter::default(), 100).unwrap();
    assert_eq!(events.len(), 4, "the big pipeline and its 3 jobs");
}
