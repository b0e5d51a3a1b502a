//! Running out of things (issue 16), against a real `cloudci serve`: a state directory on a small
//! filesystem that fills while signed deliveries arrive, with the daemon's own log on it too.
//! Every connection gets an HTTP answer, refusals are 503 with `Retry-After`, the daemon says
//! "disk full" while it is, recovers when space returns without a restart, and every delivery
//! it acknowledged is in the store after a restart.
//!
//! Needs root (a tmpfs of a few hundred kilobytes is mounted); CI runs as root. Without root
//! the test fails and says why: it must never pass without having run.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const PIPELINE_SAMPLE: &str = include_str!("../gitlab/tests/fixtures/webhook-pipeline-event.json");
const NO_GITLAB: &str = "http://127.0.0.1:9";

fn require_root() {
    let uid = Command::new("id").arg("-u").output().expect("id -u");
    let uid = String::from_utf8_lossy(&uid.stdout).trim().to_owned();
    assert_eq!(
        uid, "0",
        "THIS TEST NEEDS ROOT (it mounts a small tmpfs to fill); run it as root, as CI does. Not run."
    );
}

/// A tmpfs mounted at a path, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount -t tmpfs: {}", String::from_utf8_lossy(&out.stderr));
        Self(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `cloudci serve --no-hooks` with its log (stderr, at debug: a line per request) in `log`.
fn serve_logging_to(config: &Path, log: &Path) -> Daemon {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let mut child = cloudci(config, NO_GITLAB, "x", &["serve", "--no-hooks"])
        .env("CLOUDCI_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        let n = std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
        assert!(n > 0, "cloudci serve exited before it was ready");
        if line.starts_with("local API at") {
            break;
        }
    }
    std::thread::spawn(move || for _ in std::io::BufRead::lines(reader) {});
    Daemon(child)
}

fn hook(config: &Path) -> (String, String) {
    let out = cloudci(config, NO_GITLAB, "x", &["hooks", "show", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["url"].as_str().unwrap().to_owned(), v["token"].as_str().unwrap().to_owned())
}

/// A Pipeline Hook for pipeline `id`, padded to about `pad` bytes (GitLab's bodies carry
/// commits, builds and variables; the padding makes a few deliveries fill the disk).
fn delivery(id: u64, pad: usize) -> Vec<u8> {
    let mut v: Value = serde_json::from_str(PIPELINE_SAMPLE).unwrap();
    v["object_attributes"]["id"] = id.into();
    v["padding"] = "x".repeat(pad).into();
    serde_json::to_vec(&v).unwrap()
}

/// What one delivery got: its status and `Retry-After`, or the transport error (no answer).
async fn send(
    c: &reqwest::Client,
    url: &str,
    token: &str,
    id: u64,
    pad: usize,
) -> Result<(u16, Option<String>), String> {
    let resp = c
        .post(url)
        .header("Content-Type", "application/json")
        .header("X-Gitlab-Event", "Pipeline Hook")
        .header("X-Gitlab-Token", token)
        .header("Idempotency-Key", format!("disk-full-{id}"))
        .body(delivery(id, pad))
        .send()
        .await
        .map_err(|e| format!("delivery {id}: no answer: {e:?}"))?;
    let retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    Ok((resp.status().as_u16(), retry_after))
}

async fn health(c: &reqwest::Client, api_port: u16, token: &str) -> Value {
    let resp = c.get(format!("http://127.0.0.1:{api_port}/v1/health")).bearer_auth(token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

fn has_problem(h: &Value, kind: &str) -> bool {
    h["problems"].as_array().unwrap().iter().any(|p| p["kind"] == kind)
}

/// Fills the filesystem at `dir` to the last byte; returns the filler's path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(28), "filling: {e}");
                break;
            }
        }
    }
    // The last partial page too.
    while f.write(&[0u8]).is_ok_and(|n| n == 1) {}
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_every_delivery_503_tells_the_user_and_recovers_without_a_restart() {
    require_root();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (config, _, api_port) = write_config(dir.path(), "", 30);
    let state = dir.path().join("state");
    let _fs = Tmpfs::mount(&state, "4m");
    let log = state.join("daemon.log");
    let daemon = serve_logging_to(&config, &log);
    let token = token(&config);
    let (url, hook_token) = hook(&config);
    let c = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let mut acknowledged = Vec::new();

    // Healthy: accepted.
    assert_eq!(send(&c, &url, &hook_token, 1, 1000).await.unwrap(), (200, None));
    acknowledged.push(1);
    assert_eq!(health(&c, api_port, &token).await["ok"], true);

    // Full: every delivery is answered, 200 while the store's own free pages last, then 503
    // with Retry-After; sent until the daemon has also failed to write its log.
    let filler = fill(&state);
    let (mut refused, mut next, mut lost_log) = (0, 2u64, false);
    let mut seen_full = None;
    while next < 300 && !(refused >= 5 && lost_log) {
        match send(&c, &url, &hook_token, next, 20_000).await.unwrap() {
            (200, _) => acknowledged.push(next),
            (503, retry_after) => {
                assert_eq!(retry_after.as_deref(), Some("30"), "503 without Retry-After");
                refused += 1;
            }
            other => panic!("delivery {next}: {other:?} (never a 4xx: GitLab counts those towards disabling)"),
        }
        next += 1;
        let h = health(&c, api_port, &token).await;
        lost_log |= h["lost_log_lines"].as_u64().unwrap() > 0;
        if has_problem(&h, "disk_full") {
            seen_full = Some(h);
        }
    }
    assert!(refused >= 5, "the disk never filled: {refused} refused of {}", next - 2);
    assert!(lost_log, "the daemon's log never failed to write (is it on the tmpfs?)");
    let h = seen_full.expect("/v1/health never said disk_full while deliveries were refused");
    assert_eq!(h["ok"], false, "{h}");
    // A burst at once: each connection answered too.
    let burst: Vec<_> = (next..next + 20)
        .map(|id| {
            let (c, url, t) = (c.clone(), url.clone(), hook_token.clone());
            tokio::spawn(async move { (id, send(&c, &url, &t, id, 20_000).await) })
        })
        .collect();
    next += 20;
    for b in burst {
        let (id, got) = b.await.unwrap();
        match got.unwrap() {
            (200, _) => acknowledged.push(id),
            (503, Some(r)) if r == "30" => {}
            other => panic!("delivery {id} in the burst: {other:?}"),
        }
    }
    // The CLI says it too (the local API still answers: it needs no disk to).
    let out = cloudci(&config, NO_GITLAB, "x", &["status", "--daemon", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(has_problem(&said, "disk_full"), "{said}");
    let out = cloudci(&config, NO_GITLAB, "x", &["status"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning: cloudci serve: disk full since"), "{err}");

    // Space returns: the daemon sees it by itself (no delivery needed), then accepts again.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = health(&c, api_port, &token).await;
        if !has_problem(&h, "disk_full") {
            break;
        }
        assert!(Instant::now() < deadline, "still disk_full 10 s after space returned: {h}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for id in next..next + 5 {
        assert_eq!(send(&c, &url, &hook_token, id, 20_000).await.unwrap().0, 200, "delivery {id} after recovery");
        acknowledged.push(id);
    }
    let h = health(&c, api_port, &token).await;
    assert_eq!(h["ok"], true, "{h}");
    assert!(h["refused_deliveries"].as_u64().unwrap() >= 5, "{h}");
    // The log says how much of it was lost, on a line of its own.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("\n[cloudci] ") && text.contains(" log lines could not be written\n"), "{text}");

    // Every acknowledged delivery survives a restart.
    assert!(daemon.terminate().success());
    let again = serve_logging_to(&config, &log);
    let h = health(&c, api_port, &token).await;
    assert_eq!(h["ok"], true, "{h}");
    assert!(again.terminate().success());
    let db = rusqlite::Connection::open(state.join("events.db")).unwrap();
    let mut stmt = db.prepare("SELECT dedup_key FROM deliveries").unwrap();
    let stored: std::collections::BTreeSet<String> =
        stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    let missing: Vec<&u64> =
        acknowledged.iter().filter(|id| !stored.contains(&format!("key:disk-full-{id}"))).collect();
    assert!(missing.is_empty(), "acknowledged but not stored: {missing:?}");
    eprintln!(
        "disk full: {} deliveries, {} acknowledged (all stored), {refused}+ refused with 503, in {:?}",
        next - 1 + 5,
        acknowledged.len(),
        started.elapsed()
    );
}
