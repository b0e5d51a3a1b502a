//! Who may see what on `cloudci relay` (a real process on a throwaway PostgreSQL, gitlab-sim on
//! loopback for GitLab): a developer opens a session with their own GitLab token
//! (`POST /v1/sessions`), which never reaches the relay's logs; a subscriber sees only the events
//! of projects its GitLab user may read (Reporter or more), live and on resume from an old
//! `Last-Event-ID`; a member removed from a project stops receiving its events within the
//! (test-short) access TTL.
//!
//! Projects: acme/firmware (1, alice Reporter, bob Guest), acme/secret (2, neither), acme/shared
//! (3, both Reporters). Every round of deliveries ends with one to acme/shared, which both may
//! see: a stream that reaches it has been handed everything before it, so "nothing forbidden
//! came" is read off the stream, not waited for.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudci_relay::ScratchCluster;
use cloudci_webhook::SecretFiles;
use futures_util::StreamExt;
use gitlab_sim::{Sim, SimConfig, SimMember, SimUser};
use serde_json::Value;

const PATH: &str = "cmVsYXktcGF0aC1zZWNyZXQ";
const HOOK_TOKEN: &str = "relay-hook-token";
const ROOT: &str = "root-token-for-the-relay-0001";
const ALICE: &str = "alice-gitlab-token-7f3a9c";
const BOB: &str = "bob-gitlab-token-55e1d0";
const ACCESS_TTL: Duration = Duration::from_secs(1);

const FIRMWARE: (u64, &str) = (1, "acme/firmware");
const SECRET: (u64, &str) = (2, "acme/secret");
const SHARED: (u64, &str) = (3, "acme/shared");

/// A relay instance (killed when dropped) and everything it printed.
struct Relay {
    child: Child,
    public: String,
    api: String,
    output: Arc<Mutex<String>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Relay {
    fn start(url: &str, secrets: &Path, gitlab: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cloudci"))
            .args(["relay", "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0", "--access-ttl", "1s"])
            .args(["--gitlab-url", gitlab, "--secrets"])
            .arg(secrets)
            .env("CLOUDCI_RELAY_DATABASE_URL", url)
            // Everything the relay can log, to look for the developers' tokens in it.
            .env("CLOUDCI_LOG", "debug")
            .env("CLOUDCI_CONFIG", "/nonexistent/cloudci.toml")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let out = output.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                out.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr_after = |line: &str, prefix: &str| -> Option<String> {
            line.strip_prefix(prefix).map(|rest| rest.split_whitespace().next().unwrap_or_default().to_owned())
        };
        let (mut public, mut api) = (None, None);
        while public.is_none() || api.is_none() {
            let line = lines.next().expect("cloudci relay exited before it was ready").unwrap();
            output.lock().unwrap().push_str(&format!("{line}\n"));
            public = public.or_else(|| addr_after(&line, "relay: receiving GitLab webhooks on "));
            api = api.or_else(|| addr_after(&line, "relay: subscriber API on http://"));
        }
        let out = output.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                out.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Self { child, public: format!("http://{}", public.unwrap()), api: format!("http://{}", api.unwrap()), output }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

async fn sim(dir: &Path) -> Sim {
    let projects = [FIRMWARE.1, SECRET.1, SHARED.1]
        .iter()
        .map(|p| {
            let name = p.rsplit('/').next().unwrap();
            (p.to_string(), gitlab_sim::fixtures::repo_with(dir, name, &[(".gitlab-ci.yml", "b:\n  script: echo\n")]))
        })
        .collect();
    let members = ["acme/firmware=alice:reporter", "acme/firmware=bob:guest", "acme/shared=alice:reporter"]
        .iter()
        .chain(&["acme/shared=bob:reporter"])
        .map(|m| m.parse::<SimMember>().unwrap())
        .collect();
    Sim::start(SimConfig {
        token: ROOT.into(),
        users: [("alice", ALICE), ("bob", BOB)]
            .iter()
            .map(|(u, t)| format!("{u}={t}").parse::<SimUser>().unwrap())
            .collect(),
        members,
        projects,
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

fn secrets_dir(dir: &Path) -> PathBuf {
    let secrets = dir.join("secrets");
    let files = SecretFiles::new(&secrets);
    files.write("path-secret", PATH).unwrap();
    files.write("hook-token", HOOK_TOKEN).unwrap();
    files.write("gitlab-token", ROOT).unwrap();
    secrets
}

/// Push delivery `n` to `project`: its commit sha is `n` in hex.
async fn deliver(http: &reqwest::Client, relay: &Relay, n: u64, project: (u64, &str)) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("gitlab/tests/fixtures/webhook-push-event.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["after"] = format!("{n:040x}").into();
    v["project_id"] = project.0.into();
    v["project"]["id"] = project.0.into();
    v["project"]["path_with_namespace"] = project.1.into();
    let resp = http
        .post(format!("{}/hooks/{PATH}", relay.public))
        .header("Content-Type", "application/json")
        .header("X-Gitlab-Event", "Push Hook")
        .header("X-Gitlab-Token", HOOK_TOKEN)
        .header("Idempotency-Key", format!("k{n}"))
        .body(serde_json::to_vec(&v).unwrap())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "delivery {n}: {}", resp.status());
}

async fn session(http: &reqwest::Client, relay: &Relay, gitlab_token: Option<&str>) -> (u16, Value) {
    let mut req = http.post(format!("{}/v1/sessions", relay.api));
    if let Some(t) = gitlab_token {
        req = req.header("PRIVATE-TOKEN", t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// One event as a subscriber got it: (id, project id, sha number).
type Got = (u64, u64, u64);

struct Stream {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl Stream {
    async fn open(http: &reqwest::Client, relay: &Relay, token: &str, last_event_id: Option<u64>) -> Self {
        let mut req = http.get(format!("{}/v1/events?since=0", relay.api)).bearer_auth(token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        Self { body: Box::pin(resp.bytes_stream()), buf: String::new() }
    }

    async fn next(&mut self) -> Got {
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let id = frame.lines().find_map(|l| l.strip_prefix("id: ")).and_then(|v| v.parse().ok());
                if let (Some(id), Some(data)) = (id, frame.lines().find_map(|l| l.strip_prefix("data: "))) {
                    let e: Value = serde_json::from_str(data).unwrap();
                    let sha = u64::from_str_radix(e["sha"].as_str().unwrap(), 16).unwrap();
                    return (id, e["project_id"].as_u64().unwrap(), sha);
                }
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.body.next())
                .await
                .expect("no event within 20 s")
                .expect("the stream ended")
                .unwrap();
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Everything up to and including the event with sha `n`.
    async fn until(&mut self, n: u64) -> Vec<Got> {
        let mut got = Vec::new();
        loop {
            let e = self.next().await;
            got.push(e);
            if e.2 == n {
                return got;
            }
        }
    }
}

fn projects(got: &[Got]) -> Vec<u64> {
    got.iter().map(|g| g.1).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_access_resume_and_revocation() {
    let Some(pg) = ScratchCluster::for_test() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(dir.path()).await;
    let relay = Relay::start(&pg.url(), &secrets_dir(dir.path()), sim.url());
    let http = reqwest::Client::new();

    // (a) Sessions: the developer's own token in, the relay's token out; bad or no token: 401.
    let (status, alice) = session(&http, &relay, Some(ALICE)).await;
    assert_eq!(status, 200, "{alice}");
    let alice_token = alice["token"].as_str().unwrap().to_owned();
    let expires = chrono::DateTime::parse_from_rfc3339(alice["expires_at"].as_str().unwrap()).unwrap();
    let left = expires.timestamp() - chrono::Utc::now().timestamp();
    assert!((3000..=3601).contains(&left), "a session lasts the default hour, {left} s left");
    assert_ne!(alice_token, ALICE);
    let (status, bob) = session(&http, &relay, Some(BOB)).await;
    assert_eq!(status, 200, "{bob}");
    let bob_token = bob["token"].as_str().unwrap().to_owned();
    for bad in [Some("not-a-gitlab-token"), Some(""), None] {
        let (status, body) = session(&http, &relay, bad).await;
        assert_eq!(status, 401, "{bad:?}: {body}");
        assert!(body["token"].is_null());
    }
    // A GitLab token is not a subscriber token.
    let resp = http.get(format!("{}/v1/events", relay.api)).bearer_auth(ALICE).send().await.unwrap();
    assert_eq!(resp.status(), 401);

    // (b) Live: alice sees firmware and shared, bob only shared; nobody sees secret.
    let mut a = Stream::open(&http, &relay, &alice_token, None).await;
    let mut b = Stream::open(&http, &relay, &bob_token, None).await;
    let round = [FIRMWARE, SECRET, FIRMWARE, SECRET, SHARED];
    for (n, p) in round.iter().enumerate() {
        deliver(&http, &relay, n as u64 + 1, *p).await;
    }
    let got_a = a.until(5).await;
    assert_eq!(projects(&got_a), [1, 1, 3], "alice: {got_a:?}");
    let got_b = b.until(5).await;
    assert_eq!(projects(&got_b), [3], "bob: {got_b:?}");
    // Asking for a project by name shows nothing more, and no error says it exists.
    let resp = http
        .get(format!("{}/v1/events?since=0&project=acme/secret", relay.api))
        .bearer_auth(&bob_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);

    // Resume from an old Last-Event-ID (and from the very start): still filtered.
    let mut b = Stream::open(&http, &relay, &bob_token, Some(0)).await;
    assert_eq!(projects(&b.until(5).await), [3]);
    let first_a = got_a[0].0;
    let mut a2 = Stream::open(&http, &relay, &alice_token, Some(first_a)).await;
    let resumed = a2.until(5).await;
    assert_eq!(projects(&resumed), [1, 3], "alice after {first_a}: {resumed:?}");
    assert!(resumed.iter().all(|g| g.0 > first_a));

    // (c) Revocation: alice leaves acme/firmware; within the TTL (plus a GitLab round trip)
    // her open stream stops carrying its events, and stays open for the others.
    let resp = http
        .delete(format!("{}/api/v4/projects/1/members/2", sim.url()))
        .header("PRIVATE-TOKEN", ROOT)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    // The last answer cached before the removal is at most ACCESS_TTL old by `revoked +
    // ACCESS_TTL`, so an event delivered after that is checked with GitLab again: judged by when
    // each round was sent, not by how long the machine took to carry it.
    let revoked = Instant::now();
    let mut n = 5;
    loop {
        n += 2;
        let sent = revoked.elapsed();
        deliver(&http, &relay, n - 1, FIRMWARE).await;
        deliver(&http, &relay, n, SHARED).await;
        let got = a.until(n).await;
        if projects(&got) == [3] {
            break;
        }
        assert_eq!(projects(&got), [1, 3]);
        assert!(sent < ACCESS_TTL + Duration::from_millis(200), "alice still sees acme/firmware {sent:?} after");
        // Pacing between rounds (not a wait for anything).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And for good: live and on resume.
    deliver(&http, &relay, n + 1, FIRMWARE).await;
    deliver(&http, &relay, n + 2, SHARED).await;
    assert_eq!(projects(&a.until(n + 2).await), [3]);
    let mut a3 = Stream::open(&http, &relay, &alice_token, Some(0)).await;
    assert!(projects(&a3.until(n + 2).await).iter().all(|p| *p == SHARED.0));

    // The developers' GitLab tokens never reached the relay's output.
    let out = relay.output();
    assert!(out.contains("session for GitLab user alice"), "the relay logs sessions:\n{out}");
    for secret in [ALICE, BOB, ROOT] {
        assert!(!out.contains(secret), "a GitLab token in the relay's output:\n{out}");
    }
}

#[test]
fn an_access_ttl_over_five_minutes_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_cloudci"))
        .args(["relay", "--access-ttl", "6m"])
        .env("CLOUDCI_CONFIG", "/nonexistent/cloudci.toml")
        .env_remove("CLOUDCI_RELAY_DATABASE_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at most 5m"), "{err}");
}
