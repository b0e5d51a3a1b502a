//! A developer's `cloudci serve --relay URL` (issue 17's done-when line), all real processes: a
//! throwaway PostgreSQL, `cloudci relay` with its hook on the project in gitlab-sim, the
//! developer's daemon with their own sim user token, and `cloudci build --watch` of one target
//! through to its artifacts and merge request. The daemon has no hook on GitLab and no public
//! listener. Mid-pipeline the relay is killed and restarted (with a new subscriber key, so the
//! daemon's session is refused and it opens a new one): the daemon reports the relay
//! unreachable (once in its log, and in `/v1/health` and `cloudci status --daemon`), then catches
//! up from the relay's log by `Last-Event-ID`, and its log holds exactly the relay's events, the
//! pipeline's final status once.
//!
//! Deterministic: the job waits for a gate file the test creates, so the pipeline is "mid" for
//! as long as the test needs; and the daemon reaches the relay through a loopback proxy the test
//! holds closed until the relay has logged the pipeline's end, so the daemon's catch-up always
//! covers it (a daemon that reconnected earlier would prove less).
//!
//! A second test: short sessions renewed under an open stream, and `kill -9` of the daemon with
//! a restart resuming after its last committed event. One file (~480 lines): both share the
//! harness (relay, proxy, daemon, the daemon's log).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudci::api::auth::TokenKeys;
use cloudci_relay::ScratchCluster;
use cloudci_webhook::SecretFiles;
use common::{cloudci, free_port, write_config};
use futures_util::StreamExt;
use gitlab_sim::{Sim, SimConfig, SimMember, SimUser};
use secrecy::SecretString;
use serde_json::{Value, json};

const ROOT: &str = "root-token-for-the-relay-5d1e";
const ALICE: &str = "alice-own-gitlab-token-8b20c4";
const PATH: &str = "cmVsYXktZGFlbW9uLXBhdGgtc2VjcmV0";
const HOOK_TOKEN: &str = "relay-daemon-hook-token";
const KEY: &str = "relay-daemon-token-key-one-0123456789abcdef";
const ROTATED_KEY: &str = "relay-daemon-token-key-two-fedcba9876543210";
const PROJECTS: &str = "[projects.firmware]\ngitlab = \"acme/firmware\"\ntargets = [\"host\"]\nafter_success = { merge_request = { target_branch = \"main\" } }\n";

/// Output of a child process, gathered by threads as it comes.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<String>>);

impl Output {
    fn gather(&self, from: impl std::io::Read + Send + 'static) {
        let out = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(from).lines().map_while(Result::ok) {
                out.lock().unwrap().push_str(&(line + "\n"));
            }
        });
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    fn count(&self, needle: &str) -> usize {
        self.text().matches(needle).count()
    }
}

/// A child killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Everything the processes said, for a failure's message.
static OUTPUTS: Mutex<Vec<(&'static str, Output)>> = Mutex::new(Vec::new());

fn said() -> String {
    OUTPUTS.lock().unwrap().iter().map(|(who, out)| format!("--- {who}:\n{}", out.text())).collect()
}

/// Polls `cond` every 50 ms for up to `secs`.
async fn until(what: &str, secs: u64, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {secs} s\n{}", said());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The relay's secrets folder under `dir`: its path secret, hook token, token key and GitLab token.
fn relay_secrets(dir: &Path) -> PathBuf {
    let secrets = dir.join("relay-secrets");
    let files = SecretFiles::new(&secrets);
    for (name, value) in [("path-secret", PATH), ("hook-token", HOOK_TOKEN), ("token-key", KEY), ("gitlab-token", ROOT)]
    {
        files.write(name, value).unwrap();
    }
    secrets
}

/// `cloudci relay` on fixed loopback ports (so a restart is found where it was).
fn relay(db: &str, secrets: &Path, gitlab: &str, (public, api): (u16, u16), extra: &[&str], out: &Output) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloudci"))
        .args(["relay", "--listen", &format!("127.0.0.1:{public}"), "--api-listen", &format!("127.0.0.1:{api}")])
        .args(extra)
        .args(["--gitlab-url", gitlab, "--secrets"])
        .arg(secrets)
        .env("CLOUDCI_RELAY_DATABASE_URL", db)
        .env("CLOUDCI_LOG", "debug")
        .env("CLOUDCI_CONFIG", "/nonexistent/cloudci.toml")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    out.gather(child.stderr.take().unwrap());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("cloudci relay exited before it was ready").unwrap();
        out.0.lock().unwrap().push_str(&format!("{line}\n"));
        if line.starts_with("relay: subscriber API on") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Proc(child)
}

/// A loopback TCP proxy to the relay's subscriber API that the test can hold closed (each
/// connection is then dropped at once, as a relay that is not there), counting connections.
struct Gate {
    url: String,
    open: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
}

async fn gate(upstream: SocketAddr) -> Gate {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (open, connections) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicUsize::new(0)));
    let (o, c) = (open.clone(), connections.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut down, _)) = listener.accept().await else { return };
            c.fetch_add(1, Ordering::SeqCst);
            if !o.load(Ordering::SeqCst) {
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
    });
    Gate { url, open, connections }
}

/// The relay's own stream (an operator's token: every project), read until `done` holds for an
/// event; everything read, in order, as (id, event).
async fn relay_events(api: u16, key: &str, done: impl Fn(&Value) -> bool) -> Vec<(u64, Value)> {
    let token = TokenKeys::new(&SecretString::from(key)).issue("test", vec![], Duration::from_secs(600));
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{api}/v1/events?since=0"))
        .bearer_auth(token.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let (mut buf, mut got) = (String::new(), Vec::new());
    loop {
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let id = frame.lines().find_map(|l| l.strip_prefix("id: ")).and_then(|v| v.parse().ok());
            if let (Some(id), Some(data)) = (id, frame.lines().find_map(|l| l.strip_prefix("data: "))) {
                let e: Value = serde_json::from_str(data).unwrap();
                let last = done(&e);
                got.push((id, e));
                if last {
                    return got;
                }
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(60), body.next())
            .await
            .expect("the relay logged nothing more within 60 s")
            .expect("the relay's stream ended")
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// What an event says, without when or where it was logged.
fn gist(e: &Value) -> (String, Value, Value, Value) {
    (e["kind"].as_str().unwrap().to_owned(), e["pipeline_id"].clone(), e["job_id"].clone(), e["status"].clone())
}

/// The daemon's own log, in order.
fn local_log(state: &Path) -> Vec<Value> {
    let db = rusqlite::Connection::open(state.join("events.db")).unwrap();
    let mut stmt = db.prepare("SELECT data FROM events ORDER BY seq").unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0)).unwrap().map(|d| serde_json::from_str(&d.unwrap()).unwrap()).collect()
}

/// `cloudci serve --relay URL` with alice's token, once its API answers: the process and what
/// it printed by then.
fn serve_relay(config: &Path, gitlab: &str, relay_url: &str, out: &Output) -> (Proc, String) {
    let mut child = cloudci(config, gitlab, ALICE, &["serve", "--relay", relay_url])
        .env("CLOUDCI_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    out.gather(child.stderr.take().unwrap());
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ready = String::new();
    while !ready.contains("local API at") {
        ready.push_str(&(stdout.next().expect("cloudci serve exited before it was ready").unwrap() + "\n"));
    }
    std::thread::spawn(move || for _ in stdout {});
    (Proc(child), ready)
}

async fn health(http: &reqwest::Client, api_port: u16, token: &str) -> Value {
    let resp = http.get(format!("http://127.0.0.1:{api_port}/v1/health")).bearer_auth(token).send().await.unwrap();
    resp.json().await.unwrap()
}

fn has_problem(h: &Value, kind: &str) -> bool {
    h["problems"].as_array().is_some_and(|ps| ps.iter().any(|p| p["kind"] == kind))
}

async fn sim(dir: &Path, gate_file: &Path) -> Sim {
    let ci = format!(
        "build:\n  stage: build\n  script:\n    - mkdir -p out && echo \"firmware $BOARD\" > out/fw.bin\n    - for i in $(seq 600); do [ -f {g} ] && break; sleep 0.1; done\n    - test -f {g}\n  artifacts:\n    paths: [out/]\n",
        g = gate_file.display()
    );
    let repo = gitlab_sim::fixtures::repo_with(dir, "repo", &[(".gitlab-ci.yml", &ci)]);
    Sim::start(SimConfig {
        token: ROOT.into(),
        users: vec![format!("alice={ALICE}").parse::<SimUser>().unwrap()],
        members: vec!["acme/firmware=alice:developer".parse::<SimMember>().unwrap()],
        projects: vec![("acme/firmware".into(), repo)],
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_on_the_relay_builds_through_a_relay_restart() {
    let Some(pg) = ScratchCluster::for_test() else { return };
    let dir = tempfile::tempdir().unwrap();
    let gate_file = dir.path().join("gate");
    let sim = sim(dir.path(), &gate_file).await;
    let http = reqwest::Client::new();
    let root = |req: reqwest::RequestBuilder| req.header("PRIVATE-TOKEN", ROOT);
    let api_v4 = format!("{}/api/v4/projects/1", sim.url());

    // The relay, and its hook on the project: the only hook there will be.
    let secrets = relay_secrets(dir.path());
    let (relay_public, relay_api) = (free_port(), free_port());
    let relay_out = Output::default();
    OUTPUTS.lock().unwrap().push(("relay", relay_out.clone()));
    let relay_proc = relay(&pg.url(), &secrets, sim.url(), (relay_public, relay_api), &[], &relay_out);
    let hook_url = format!("http://127.0.0.1:{relay_public}/hooks/{PATH}");
    let resp = root(http.post(format!("{api_v4}/hooks")))
        .json(&json!({"url": hook_url, "token": HOOK_TOKEN, "push_events": true, "pipeline_events": true,
            "job_events": true, "merge_requests_events": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let proxy = gate(SocketAddr::from(([127, 0, 0, 1], relay_api))).await;

    // The developer's daemon: their own GitLab token, the relay's URL, no tunnel.
    let (config, hook_port, api_port) = write_config(dir.path(), PROJECTS, 2);
    let daemon_out = Output::default();
    OUTPUTS.lock().unwrap().push(("daemon", daemon_out.clone()));
    let (_daemon, ready) = serve_relay(&config, sim.url(), &proxy.url, &daemon_out);
    assert!(ready.contains("taking GitLab's events from the team relay at"), "{ready}");
    assert!(!ready.contains("receiving GitLab webhooks"), "{ready}");
    until("the daemon follows the relay", 20, async || daemon_out.count("following the relay at") == 1).await;
    let token = std::fs::read_to_string(dir.path().join("state/secrets/cli-token")).unwrap();

    // No hook of its own on GitLab, no public listener (its configured port is closed).
    let hooks: Value = root(http.get(format!("{api_v4}/hooks"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(hooks.as_array().unwrap().len(), 1, "{hooks}");
    assert_eq!(hooks[0]["url"], hook_url);
    assert!(std::net::TcpStream::connect(("127.0.0.1", hook_port)).is_err(), "a public listener is open");

    // `cloudci build --watch`: the CLI talks to the daemon only (its GitLab leads nowhere).
    let build_err = Output::default();
    OUTPUTS.lock().unwrap().push(("cloudci build", build_err.clone()));
    let mut build = cloudci(
        &config,
        "http://127.0.0.1:9",
        "unused",
        &["build", "firmware", "--ref", "feature", "--watch", "--json"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    build_err.gather(build.stderr.take().unwrap());
    let build_stdout = build.stdout.take().unwrap();
    let summary = std::thread::spawn(move || std::io::read_to_string(build_stdout).unwrap());
    let mut build = Proc(build);
    // Status live, through the relay: the daemon's record has the job running (it waits for
    // the gate), and the CLI follows its log.
    until("the job runs", 60, async || {
        let list = http.get(format!("http://127.0.0.1:{api_port}/v1/builds")).bearer_auth(&token).send().await;
        let list: Value = match list {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Value::Null,
        };
        list[0]["jobs"]["build"]["status"] == "running"
    })
    .await;
    until("the CLI shows the job running", 20, async || build_err.text().contains("[firmware/host] build: running"))
        .await;
    until("the CLI shows the job's log", 20, async || build_err.text().contains("[firmware/host build] $ for i in"))
        .await;

    // The relay goes away mid-pipeline; the daemon says so, once, while it retries.
    proxy.open.store(false, Ordering::SeqCst);
    drop(relay_proc);
    until("the daemon reports the relay unreachable", 20, async || {
        has_problem(&health(&http, api_port, &token).await, "relay_unreachable")
    })
    .await;
    let tried = proxy.connections.load(Ordering::SeqCst);
    until("three more attempts", 30, async || proxy.connections.load(Ordering::SeqCst) >= tried + 3).await;
    let status = cloudci(&config, sim.url(), ALICE, &["status", "--daemon"]).output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.contains("relay unreachable since"), "{status}");
    assert!(status.contains(&format!("takes its events from the team relay at {}", proxy.url)), "{status}");
    assert_eq!(daemon_out.count("relay unreachable:"), 1, "one line, not one per retry:\n{}", daemon_out.text());

    // Back, with a new subscriber key (the daemon's session is refused), and the pipeline ends
    // while the daemon still cannot get through: only the relay's log has its end.
    SecretFiles::new(&secrets).write("token-key", ROTATED_KEY).unwrap();
    let _relay = relay(&pg.url(), &secrets, sim.url(), (relay_public, relay_api), &[], &relay_out);
    std::fs::write(&gate_file, "").unwrap();
    let relay_log = relay_events(relay_api, ROTATED_KEY, |e| e["kind"] == "pipeline" && e["status"] == "success").await;
    assert!(health(&http, api_port, &token).await["ok"] == false, "the daemon cannot have caught up yet");
    proxy.open.store(true, Ordering::SeqCst);

    // The daemon catches up from the relay's log and the build finishes: artifacts, merge request.
    until("the build ends", 60, async || build.0.try_wait().unwrap().is_some()).await;
    let code = build.0.wait().unwrap().code();
    let summary = summary.join().unwrap();
    assert_eq!(code, Some(0), "{summary}\n{}\n{}", build_err.text(), daemon_out.text());
    let summary: Value = serde_json::from_str(&summary).unwrap();
    let b = &summary["builds"][0];
    assert_eq!((b["status"].as_str(), b["jobs"]["build"].as_str()), (Some("success"), Some("success")), "{summary}");
    let artifacts = PathBuf::from(b["artifacts"].as_str().unwrap());
    assert_eq!(std::fs::read_to_string(artifacts.join("out/fw.bin")).unwrap(), "firmware host\n");
    assert!(b["merge_request"].as_str().unwrap().contains("/merge_requests/"), "{summary}");
    assert!(build_err.text().contains("[firmware/host] build: success"), "{}", build_err.text());

    // Built with the developer's own token.
    let pipelines: Value = root(http.get(format!("{api_v4}/pipelines"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(pipelines.as_array().unwrap().len(), 1, "{pipelines}");
    let pipeline: Value = root(http.get(format!("{api_v4}/pipelines/{}", pipelines[0]["id"])))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pipeline["user"]["username"], "alice", "{pipeline}");
    let mrs: Value = root(http.get(format!("{api_v4}/merge_requests"))).send().await.unwrap().json().await.unwrap();
    assert_eq!((mrs.as_array().unwrap().len(), &mrs[0]["author"]["username"]), (1, &json!("alice")), "{mrs}");

    // The daemon's log is the relay's, event for event: nothing lost, nothing twice, the
    // pipeline's final status once.
    let state = dir.path().join("state");
    let relay_gists: Vec<_> = relay_log.iter().map(|(_, e)| gist(e)).collect();
    let local: Vec<_> = local_log(&state).iter().map(gist).collect();
    assert!(local.len() >= relay_gists.len(), "the daemon's log {local:?}\nthe relay's {relay_gists:?}");
    assert_eq!(local[..relay_gists.len()], relay_gists[..], "the daemon's log against the relay's");
    let finals = local.iter().filter(|g| g.0 == "pipeline" && g.3 == "success").count();
    assert_eq!(finals, 1, "{local:?}");
    let h = health(&http, api_port, &token).await;
    assert!(h["ok"] == true, "{h}");
    let log = daemon_out.text();
    assert!(log.contains("no longer accepts this daemon's session; opening a new session"), "{log}");
    assert_eq!(daemon_out.count("answers again; catching up after event"), 1, "{log}");
    assert_eq!(daemon_out.count("relay unreachable:"), 1, "{log}");

    // No secret in either's output.
    let relay_text = relay_out.text();
    for (who, text) in [("daemon", &log), ("relay", &relay_text), ("cli", &build_err.text())] {
        assert!(!text.contains(ALICE) && !text.contains(ROOT), "a GitLab token in the {who}'s output:\n{text}");
        // A JWT starts with its header, `{"typ":...` or `{"alg":...` in base64url (a bare "eyJ"
        // turns up in random request ids now and then).
        for header in ["eyJ0eXAi", "eyJhbGci"] {
            assert!(!text.contains(header), "a bearer token in the {who}'s output:\n{text}");
        }
    }
}

/// Push delivery `n` for acme/firmware, straight to the relay's public listener (its commit sha
/// is `n` in hex).
async fn push(http: &reqwest::Client, relay_public: u16, n: u64) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("gitlab/tests/fixtures/webhook-push-event.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["after"] = format!("{n:040x}").into();
    v["project_id"] = 1.into();
    v["project"]["id"] = 1.into();
    v["project"]["path_with_namespace"] = "acme/firmware".into();
    let resp = http
        .post(format!("http://127.0.0.1:{relay_public}/hooks/{PATH}"))
        .header("Content-Type", "application/json")
        .header("X-Gitlab-Event", "Push Hook")
        .header("X-Gitlab-Token", HOOK_TOKEN)
        .header("Idempotency-Key", format!("push-{n}"))
        .body(serde_json::to_vec(&v).unwrap())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "push {n}: {}", resp.status());
}

/// The commit numbers of the pushes in the daemon's log, in order.
fn pushes(state: &Path) -> Vec<u64> {
    local_log(state)
        .iter()
        .filter(|e| e["kind"] == "push")
        .map(|e| u64::from_str_radix(e["sha"].as_str().unwrap(), 16).unwrap())
        .collect()
}

/// Sessions a few seconds long are renewed before they expire, while the stream stays open;
/// `kill -9` of the daemon and a restart resume after the last event it committed: what the
/// relay logged meanwhile arrives, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_renewed_and_a_restarted_daemon_resumes_where_it_stopped() {
    let Some(pg) = ScratchCluster::for_test() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(dir.path(), &dir.path().join("gate")).await;
    let http = reqwest::Client::new();
    let secrets = relay_secrets(dir.path());
    let ports = (free_port(), free_port());
    let relay_out = Output::default();
    OUTPUTS.lock().unwrap().push(("relay", relay_out.clone()));
    let _relay = relay(&pg.url(), &secrets, sim.url(), ports, &["--session-ttl", "3s"], &relay_out);
    let (config, _, _) = write_config(dir.path(), PROJECTS, 2);
    let state = dir.path().join("state");
    let relay_url = format!("http://127.0.0.1:{}", ports.1);
    let first_out = Output::default();
    OUTPUTS.lock().unwrap().push(("daemon", first_out.clone()));
    let (daemon, _) = serve_relay(&config, sim.url(), &relay_url, &first_out);
    until("the daemon follows the relay", 20, async || first_out.count("following the relay at") == 1).await;
    for n in 1..=3 {
        push(&http, ports.0, n).await;
    }
    until("three pushes in the daemon's log", 20, async || pushes(&state).len() == 3).await;
    // Renewed before each expiry: the open stream never needed a new connection or met a 401.
    until("two renewals", 20, async || relay_out.count("session for GitLab user alice") >= 3).await;
    assert_eq!(first_out.count("following the relay at"), 1, "{}", said());
    assert_eq!(first_out.count("no longer accepts"), 0, "{}", said());
    // The relay logs a session before answering it; the daemon logs each before asking again.
    assert!(first_out.count("relay: session opened") >= 2, "{}", said());

    // Killed; the relay goes on logging; the restarted daemon resumes after what it committed.
    drop(daemon);
    for n in 4..=6 {
        push(&http, ports.0, n).await;
    }
    let second_out = Output::default();
    OUTPUTS.lock().unwrap().push(("daemon, again", second_out.clone()));
    let (_daemon, _) = serve_relay(&config, sim.url(), &relay_url, &second_out);
    until("six pushes in the daemon's log", 20, async || pushes(&state).len() >= 6).await;
    push(&http, ports.0, 7).await;
    until("the live one after them", 20, async || pushes(&state).len() >= 7).await;
    assert_eq!(pushes(&state), [1, 2, 3, 4, 5, 6, 7], "{}", said());
    assert_eq!(second_out.count("following the relay at"), 1, "{}", said());
    assert!(second_out.text().contains(" after event 3"), "{}", said());
}

/// A measurement, not a check: how long from a delivery sent to the relay until its event is on
/// the developer daemon's own `/v1/events` (the relay's commit and sequencing, its stream, the
/// daemon's commit and fan-out), one delivery at a time, and how long the relay took to answer
/// the delivery. BENCHMARKS.md has the figures with this command:
/// `cargo test --all-features --test relay_daemon -- --ignored --nocapture` (a debug build, as the
/// suite builds it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn measure_delivery_to_the_daemons_local_stream() {
    let Some(pg) = ScratchCluster::for_test() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(dir.path(), &dir.path().join("gate")).await;
    let http = reqwest::Client::new();
    let secrets = relay_secrets(dir.path());
    let ports = (free_port(), free_port());
    let relay_out = Output::default();
    let _relay = relay(&pg.url(), &secrets, sim.url(), ports, &[], &relay_out);
    let (config, _, api_port) = write_config(dir.path(), PROJECTS, 2);
    let out = Output::default();
    let (_daemon, _) = serve_relay(&config, sim.url(), &format!("http://127.0.0.1:{}", ports.1), &out);
    until("the daemon follows the relay", 20, async || out.count("following the relay at") == 1).await;
    let token = std::fs::read_to_string(dir.path().join("state/secrets/cli-token")).unwrap();
    let mut local = common::Events::open(api_port, token.trim(), "").await;
    let n = 300;
    let (mut answered, mut arrived) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 1..=n as u64 {
        let sent = std::time::Instant::now();
        push(&http, ports.0, i).await;
        answered.push(sent.elapsed());
        loop {
            let e = local.next(Duration::from_secs(20)).await.expect("no event within 20 s");
            if e["sha"].as_str().and_then(|s| u64::from_str_radix(s, 16).ok()) == Some(i) {
                break;
            }
        }
        arrived.push(sent.elapsed());
    }
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1].as_secs_f64() * 1000.0
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "relay -> daemon, {n} deliveries one at a time (load {}): relay answered p50 {:.1} ms p99 {:.1} ms; \
         event on the daemon's /v1/events p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
        load.split_whitespace().next().unwrap_or("?"),
        pct(&mut answered, 0.5),
        pct(&mut answered, 0.99),
        pct(&mut arrived, 0.5),
        pct(&mut arrived, 0.99),
        pct(&mut arrived, 1.0),
    );
}
