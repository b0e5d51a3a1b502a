//! The soak's load: signed deliveries, builds, and subscribers that come and go.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Error;
use crate::soak::{Load, SYNTHETIC_PROJECT_ID};

/// GitLab's Pipeline Hook sample, the shape every synthetic delivery takes.
const PIPELINE_HOOK: &str = include_str!("../../gitlab/tests/fixtures/webhook-pipeline-event.json");

/// Where and how to deliver: the hook URL and the secrets `serve` keeps in its state directory.
#[derive(Debug, Clone)]
pub(crate) struct Hook {
    url: String,
    token: String,
    signing: Option<String>,
}

impl Hook {
    /// Reads `secrets/path-secret`, `hook-token` and (when `serve` made one) `signing-token`.
    pub(crate) fn read(state: &Path, port: u16) -> Result<Self, Error> {
        let read = |name: &str| std::fs::read_to_string(state.join("secrets").join(name)).map(|s| s.trim().to_owned());
        let path = read("path-secret")?;
        Ok(Self {
            url: format!("http://127.0.0.1:{port}/hooks/{path}"),
            token: read("hook-token")?,
            signing: read("signing-token").ok(),
        })
    }
}

/// A client that keeps no idle connection: GitLab opens one per delivery, and the idle fds at the
/// end then count only what `serve` itself keeps open.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(3))
        .build()
        .expect("a reqwest client with the TLS provider installed")
}

/// The `n`th synthetic delivery: a new pipeline of the synthetic project, finished, with its jobs.
fn pipeline_body(template: &Value, n: u64) -> Vec<u8> {
    let mut v = template.clone();
    let id = 10_000_000 + n;
    v["object_attributes"]["id"] = json!(id);
    v["object_attributes"]["iid"] = json!(n + 1);
    v["object_attributes"]["status"] = json!("success");
    v["project"]["id"] = json!(SYNTHETIC_PROJECT_ID);
    v["project"]["path_with_namespace"] = json!("soak/synthetic");
    if let Some(builds) = v["builds"].as_array_mut() {
        for (k, b) in builds.iter_mut().enumerate() {
            b["id"] = json!(id * 10 + k as u64);
            b["status"] = json!("success");
        }
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Delivers at `rate` per second until told to stop; each POST on its own task (at most 64 at
/// once), so a slow answer does not slow the rate.
pub(crate) async fn deliveries(hook: Hook, rate: f64, load: Arc<Load>) {
    let http = client();
    let template: Value = serde_json::from_str(PIPELINE_HOOK).expect("the fixture is JSON");
    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.01)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    while !load.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let Ok(permit) = limit.clone().acquire_owned().await else { break };
        let body = pipeline_body(&template, n);
        let (http, hook, load) = (http.clone(), hook.clone(), load.clone());
        n += 1;
        tokio::spawn(async move {
            let id = format!("soak-{n}");
            let ts = chrono::Utc::now().timestamp().to_string();
            let mut req = http
                .post(&hook.url)
                .header("Content-Type", "application/json")
                .header("X-Gitlab-Event", "Pipeline Hook")
                .header("X-Gitlab-Token", &hook.token)
                .header("Idempotency-Key", &id)
                .header("webhook-id", &id)
                .header("webhook-timestamp", &ts);
            if let Some(sig) = hook.signing.as_deref().and_then(|key| gitlab_sim::sign(key, &id, &ts, &body)) {
                req = req.header("webhook-signature", sig);
            }
            let sent = Instant::now();
            let ok = matches!(req.body(body).send().await, Ok(r) if r.status().is_success());
            let us = sent.elapsed().as_micros() as u64;
            if ok {
                load.deliveries.fetch_add(1, Ordering::Relaxed);
                load.window.lock().unwrap_or_else(|e| e.into_inner()).push(us);
            } else {
                load.delivery_errors.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
    // Let the last POSTs finish (bounded by the client's timeout).
    let _ = limit.acquire_many(64).await;
}

/// `POST /v1/builds` (project `fw`, target `host`) every `every` seconds until told to stop.
pub(crate) async fn builds(api: String, token: String, every: f64, load: Arc<Load>) {
    let http = client();
    let body = json!({"projects": ["fw"], "targets": ["host"]});
    while !load.stop.load(Ordering::Relaxed) {
        let started = http.post(format!("{api}/v1/builds")).bearer_auth(&token).json(&body).send().await;
        if matches!(started, Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED) {
            load.builds_started.fetch_add(1, Ordering::Relaxed);
        }
        stoppable_sleep(&load, Duration::from_secs_f64(every.max(0.1))).await;
    }
}

/// Sleeps `d`, waking early when the load stops.
async fn stoppable_sleep(load: &Load, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until && !load.stop.load(Ordering::Relaxed) {
        tokio::time::sleep((until - Instant::now()).min(Duration::from_millis(250))).await;
    }
}

/// A subscriber that connects, reads for 0.5–5 s and leaves, over and over: from a recent seq
/// (`?since=`) on even connections, by `Last-Event-ID` on odd ones.
pub(crate) async fn subscriber(api: String, token: String, seed: u64, load: Arc<Load>) {
    let http = client();
    let mut rng = crate::Rng(seed.wrapping_mul(0x9E37_79B9) ^ 0x50A6);
    let mut connection = 0u64;
    while !load.stop.load(Ordering::Relaxed) {
        connection += 1;
        let hold = Duration::from_millis(500 + rng.next() % 4500);
        let from = load.last_seq.load(Ordering::Relaxed).saturating_sub(rng.next() % 50);
        let mut req = http.get(format!("{api}/v1/events")).bearer_auth(&token).timeout(hold + Duration::from_secs(5));
        req = if connection.is_multiple_of(2) {
            req.query(&[("since", from)])
        } else {
            req.header("Last-Event-ID", from.to_string())
        };
        if let Ok(resp) = req.send().await
            && resp.status().is_success()
        {
            load.connects.fetch_add(1, Ordering::Relaxed);
            let mut stream = resp.bytes_stream();
            let until = Instant::now() + hold;
            while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(until.into(), stream.next()).await {
                // Frames start with `id: <seq>`; chunks may split one, which only undercounts.
                for line in chunk.split(|&b| b == b'\n') {
                    if let Some(seq) =
                        line.strip_prefix(b"id: ").and_then(|s| std::str::from_utf8(s).ok()?.parse().ok())
                    {
                        load.events.fetch_add(1, Ordering::Relaxed);
                        load.last_seq.fetch_max(seq, Ordering::Relaxed);
                    }
                }
                if load.stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        }
        // Dropping the stream closes the connection: the subscriber leaves.
        stoppable_sleep(&load, Duration::from_millis(100)).await;
    }
}

/// A build's status as the local API names it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum BuildState {
    Success,
    Failed,
    Canceled,
    Skipped,
    Error,
    #[serde(other)]
    Unfinished,
}

#[derive(Debug, Deserialize)]
struct Build {
    status: BuildState,
}

/// Builds the daemon lists as finished.
pub(crate) async fn finished_builds(api: &str, token: &str) -> Result<u64, reqwest::Error> {
    let list: Vec<Build> =
        client().get(format!("{api}/v1/builds?limit=1000")).bearer_auth(token).send().await?.json().await?;
    Ok(list.iter().filter(|b| !matches!(b.status, BuildState::Unfinished)).count() as u64)
}
