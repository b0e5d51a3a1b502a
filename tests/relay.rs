//! `cloudci relay`: several instances (real processes) on one throwaway PostgreSQL. Deliveries
//! go to different instances; a subscriber moves from one instance to another with
//! `Last-Event-ID` and resumes exactly; `kill -9` of an instance and an immediate PostgreSQL
//! restart lose no acknowledged delivery, and while PostgreSQL is down deliveries are answered
//! 503 with `Retry-After`, never a 4xx.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cloudci::api::auth::TokenKeys;
use cloudci_relay::ScratchCluster;
use cloudci_webhook::SecretFiles;
use futures_util::StreamExt;
use secrecy::SecretString;
use serde_json::Value;

const PATH: &str = "cmVsYXktcGF0aC1zZWNyZXQ";
const TOKEN: &str = "relay-hook-token";
const KEY: &str = "relay-token-key-for-tests-0123456789abcdef";

/// A relay instance, killed when dropped.
struct Instance {
    child: Child,
    public: String,
    api: String,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn secrets_dir(dir: &Path) -> PathBuf {
    let secrets = dir.join("secrets");
    let files = SecretFiles::new(&secrets);
    files.write("path-secret", PATH).unwrap();
    files.write("hook-token", TOKEN).unwrap();
    files.write("token-key", KEY).unwrap();
    secrets
}

/// Starts `cloudci relay` on free loopback ports and waits until it says where it listens.
fn start(url: &str, secrets: &Path) -> Instance {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloudci"))
        .args(["relay", "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0", "--secrets"])
        .arg(secrets)
        .env("CLOUDCI_RELAY_DATABASE_URL", url)
        .env_remove("CLOUDCI_LOG")
        // No configuration file anywhere: flags and the environment only.
        .env("CLOUDCI_CONFIG", "/nonexistent/cloudci.toml")
        .env("XDG_CONFIG_HOME", secrets.parent().unwrap())
        .env("XDG_STATE_HOME", secrets.parent().unwrap())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr_after = |line: &str, prefix: &str| -> Option<String> {
        line.strip_prefix(prefix).map(|rest| rest.split_whitespace().next().unwrap_or_default().to_owned())
    };
    let (mut public, mut api) = (None, None);
    while public.is_none() || api.is_none() {
        let line = lines.next().expect("cloudci relay exited before it was ready").unwrap();
        public = public.or_else(|| addr_after(&line, "relay: receiving GitLab webhooks on "));
        api = api.or_else(|| addr_after(&line, "relay: subscriber API on http://"));
    }
    // Keep draining stdout so the instance never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Instance { child, public: format!("http://{}", public.unwrap()), api: format!("http://{}", api.unwrap()) }
}

fn push_body(n: u64) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("gitlab/tests/fixtures/webhook-push-event.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["after"] = format!("{n:040x}").into();
    serde_json::to_vec(&v).unwrap()
}

fn sha_of(n: u64) -> String {
    format!("{n:040x}")
}

/// Posts push delivery `n` (key `k<n>`) to `public`: the status, or `None` when the connection
/// failed (the instance is gone).
async fn deliver(http: &reqwest::Client, public: &str, n: u64) -> Option<reqwest::Response> {
    http.post(format!("{public}/hooks/{PATH}"))
        .header("Content-Type", "application/json")
        .header("X-Gitlab-Event", "Push Hook")
        .header("X-Gitlab-Token", TOKEN)
        .header("Idempotency-Key", format!("k{n}"))
        .timeout(Duration::from_secs(12))
        .body(push_body(n))
        .send()
        .await
        .ok()
}

fn subscriber_token() -> String {
    TokenKeys::new(&SecretString::from(KEY)).issue("test", vec![], Duration::from_secs(600)).expose().to_owned()
}

/// One connection to `/v1/events`, read frame by frame.
struct Stream {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl Stream {
    async fn open(http: &reqwest::Client, api: &str, last_event_id: Option<u64>) -> Option<Self> {
        Self::open_with(http, api, last_event_id, &subscriber_token()).await
    }

    async fn open_with(http: &reqwest::Client, api: &str, last_event_id: Option<u64>, token: &str) -> Option<Self> {
        let mut req = http.get(format!("{api}/v1/events?since=0")).bearer_auth(token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.ok()?;
        if resp.status() != 200 {
            return None;
        }
        Some(Self { body: Box::pin(resp.bytes_stream()), buf: String::new() })
    }

    /// The next event's (id, sha); `None` when the stream ended, failed or stayed silent.
    async fn next(&mut self, wait: Duration) -> Option<(u64, String)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let id = frame.lines().find_map(|l| l.strip_prefix("id: ")).and_then(|v| v.parse().ok());
                let data = frame.lines().find_map(|l| l.strip_prefix("data: "));
                if let (Some(id), Some(data)) = (id, data) {
                    let e: Value = serde_json::from_str(data).unwrap();
                    assert_eq!(e["seq"].as_u64(), Some(id), "the frame's id is the event's seq");
                    return Some((id, e["sha"].as_str().unwrap_or_default().to_owned()));
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next()).await.ok()??.ok()?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// Checks what a subscriber received: ids 1, 2, 3, ... with no gap and no repeat, each
/// acknowledged delivery exactly once.
fn check(received: &[(u64, String)], acked: &[u64]) {
    let ids: Vec<u64> = received.iter().map(|r| r.0).collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>(), "in order, no gap, no duplicate");
    for n in acked {
        let copies = received.iter().filter(|r| r.1 == sha_of(*n)).count();
        assert_eq!(copies, 1, "acknowledged delivery {n} reached the subscriber {copies} times");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_moving_between_instances_resumes_exactly() {
    let Some(pg) = ScratchCluster::for_test() else { return };
    cloudci_gitlab::install_tls_provider();
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets_dir(dir.path());
    let instances: Vec<Instance> = (0..3).map(|_| start(&pg.url(), &secrets)).collect();
    let http = reqwest::Client::new();

    let mut on_a = Stream::open(&http, &instances[0].api, None).await.expect("subscribed on A");
    // Deliveries spread over the three instances, as a load balancer spreads them.
    for n in 0..30u64 {
        let resp = deliver(&http, &instances[(n % 3) as usize].public, n).await.expect("answered");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.json::<Value>().await.unwrap()["status"], "accepted");
    }
    // GitLab's retry of a delivery, reaching another instance: answered, no second event.
    let resp = deliver(&http, &instances[2].public, 4).await.unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["status"], "duplicate");

    let mut received = Vec::new();
    while received.len() < 15 {
        received.push(on_a.next(Duration::from_secs(10)).await.expect("an event on A"));
    }
    drop(on_a);
    for n in 30..60u64 {
        let resp = deliver(&http, &instances[(n % 3) as usize].public, n).await.expect("answered");
        assert_eq!(resp.status(), 200);
    }
    // Resumes on B from the last id seen on A, with a token from `cloudci relay token`.
    let out = Command::new(env!("CARGO_BIN_EXE_cloudci"))
        .args(["relay", "token", "--json", "--secrets"])
        .arg(&secrets)
        .env("CLOUDCI_CONFIG", "/nonexistent/cloudci.toml")
        .env("XDG_CONFIG_HOME", dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token: Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = token["token"].as_str().unwrap();
    let refused = http.get(format!("{}/v1/events", instances[1].api)).bearer_auth("not-a-token").send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let mut on_b =
        Stream::open_with(&http, &instances[1].api, received.last().map(|r| r.0), token).await.expect("on B");
    while received.len() < 60 {
        received.push(on_b.next(Duration::from_secs(10)).await.expect("an event on B"));
    }
    assert!(on_b.next(Duration::from_millis(300)).await.is_none(), "nothing more than the 60");
    check(&received, &(0..60).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_an_instance_and_a_postgres_restart_lose_no_acknowledged_delivery() {
    let Some(pg) = ScratchCluster::for_test() else { return };
    cloudci_gitlab::install_tls_provider();
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets_dir(dir.path());
    let mut a = Some(start(&pg.url(), &secrets));
    let b = start(&pg.url(), &secrets);
    let http = reqwest::Client::new();
    let (mut acked, mut unavailable) = (Vec::new(), 0);
    // Delivers `n` to `public`, the way GitLab does: acknowledged on 2xx, a 503 counted; never a 4xx.
    let mut n = 0u64;
    macro_rules! deliver_to {
        ($public:expr) => {{
            let resp = deliver(&http, $public, n).await;
            if let Some(resp) = resp {
                let status = resp.status().as_u16();
                assert!(!(400..500).contains(&status), "a {status} for a valid delivery");
                if status == 200 {
                    acked.push(n);
                } else {
                    assert_eq!(status, 503);
                    assert!(resp.headers().contains_key("retry-after"), "a 503 says when to retry");
                    unavailable += 1;
                }
            }
            n += 1;
        }};
    }
    for _ in 0..10 {
        deliver_to!(&a.as_ref().unwrap().public);
        deliver_to!(&b.public);
    }
    // `kill -9` of an instance: the other goes on alone.
    let mut killed = a.take().unwrap();
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let gone = killed.public.clone();
    drop(killed);
    assert!(deliver(&http, &gone, 999).await.is_none(), "the killed instance is gone");
    for _ in 0..10 {
        deliver_to!(&b.public);
    }
    // PostgreSQL goes away at once, then comes back.
    pg.stop_immediate().unwrap();
    for _ in 0..3 {
        deliver_to!(&b.public);
    }
    assert_eq!(unavailable, 3, "every delivery is answered 503 while PostgreSQL is down");
    pg.start_again().unwrap();
    // A new instance joins after the outage; deliveries go to both again.
    let c = start(&pg.url(), &secrets);
    let before = acked.len();
    for _ in 0..10 {
        deliver_to!(&b.public);
        deliver_to!(&c.public);
    }
    assert_eq!(acked.len(), before + 20, "accepted again once PostgreSQL is back");
    assert_eq!(unavailable, 3, "503 only while PostgreSQL was down");

    // A subscriber on C reads everything; one on B, whose stream may have ended in the outage,
    // reconnects by Last-Event-ID until it has as much.
    let mut received = Vec::new();
    let mut stream = Stream::open(&http, &c.api, None).await.expect("on C");
    while let Some(e) = stream.next(Duration::from_secs(3)).await {
        received.push(e);
    }
    check(&received, &acked);
    let mut on_b = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while on_b.len() < received.len() {
        assert!(tokio::time::Instant::now() < deadline, "B's subscriber got {} of {}", on_b.len(), received.len());
        let Some(mut s) = Stream::open(&http, &b.api, on_b.last().map(|r: &(u64, String)| r.0)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while let Some(e) = s.next(Duration::from_secs(2)).await {
            on_b.push(e);
            if on_b.len() == received.len() {
                break;
            }
        }
    }
    assert_eq!(on_b, received, "every instance serves the same log");
}
