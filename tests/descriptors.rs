//! Out of file descriptors (issue 16), against a real `cloudci serve` whose `RLIMIT_NOFILE` is
//! lowered while it runs (`prlimit --pid`) and then filled by event-stream subscribers: every
//! connection that asked something gets an HTTP answer (503 with `Retry-After`, never a reset),
//! nothing acknowledged is lost, the daemon says so (`/v1/health`, `cloudci status --daemon`),
//! does not spin while connections wait in the backlog, and recovers by itself once the
//! subscribers leave.

mod common;

use std::time::{Duration, Instant};

use common::hooks::*;
use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NO_GITLAB: &str = "http://127.0.0.1:9";

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// User and system CPU time of `pid` so far, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After "pid (comm) ": state is field 3, utime 14 and stime 15.
    let rest: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap()
}

/// Lowers the running process's soft `RLIMIT_NOFILE` to `n`.
fn limit_fds(pid: u32, n: usize) {
    let out = std::process::Command::new("prlimit").arg(format!("--pid={pid}")).arg(format!("--nofile={n}:")).output();
    let out = out.expect("this test needs prlimit (util-linux)");
    assert!(out.status.success(), "prlimit: {}", String::from_utf8_lossy(&out.stderr));
}

/// An HTTP answer read off a raw connection: status, head, body.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Reads one answer's head (and, when it says how long, its body) off `stream`.
async fn read_answer(stream: &mut TcpStream) -> Result<Answer, String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) => return Err(format!("closed without an answer after {} bytes", seen.len())),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return Err(format!("no answer: {e}")),
            Err(_) => return Err("no answer within 10 s".into()),
        }
    };
    let head = String::from_utf8_lossy(&seen[..end]).to_lowercase();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or(format!("not HTTP: {head}"))?;
    let mut body = seen[end..].to_vec();
    let length = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok());
    if let Some(length) = length {
        while body.len() < length {
            match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => body.extend_from_slice(&buf[..n]),
                _ => return Err(format!("the body ended at {} of {length} bytes", body.len())),
            }
        }
    }
    Ok(Answer { status, head, body })
}

/// A subscriber of `GET /v1/events` on its own connection: the connection and its answer's head.
async fn subscribe(api_port: u16, token: &str) -> (TcpStream, Result<Answer, String>) {
    let mut stream = TcpStream::connect(("127.0.0.1", api_port)).await.unwrap();
    let request =
        format!("GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{api_port}\r\nAuthorization: Bearer {token}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let answer = read_answer(&mut stream).await;
    (stream, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_every_connection_is_answered_the_user_told_and_it_recovers_by_itself() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (config, _, api_port) = write_config(dir.path(), "", 30);
    let daemon = serve(&config, NO_GITLAB, "x", &["--no-hooks"]);
    let pid = daemon.0.id();
    let token = token(&config);
    let (url, hook_token) = hook(&config);
    // One connection to the local API, made now and kept: it can still ask once none can be
    // accepted. The deliveries, like GitLab's, each make a new one.
    let api = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
    let gitlab = reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(10)).build().unwrap();
    assert_eq!(health(&api, api_port, &token).await["ok"], true);
    assert_eq!(send(&gitlab, &url, &hook_token, 1).await.unwrap(), (200, None));
    let mut acknowledged = vec![1];

    // A few descriptors more than are open now, then subscribers until one is not accepted: it
    // is answered 503 (with the reserve descriptor), says why, and the daemon is full.
    limit_fds(pid, open_fds(pid) + 8);
    let mut subscribers = Vec::new();
    let refusal = loop {
        assert!(subscribers.len() < 40, "40 subscribers and still room: is the limit applied?");
        let (stream, answer) = subscribe(api_port, &token).await;
        let answer = answer.unwrap_or_else(|e| panic!("subscriber {}: {e}", subscribers.len() + 1));
        match answer.status {
            200 => subscribers.push(stream),
            503 => break answer,
            other => panic!("subscriber {}: {other} {}", subscribers.len() + 1, answer.head),
        }
    };
    assert!(refusal.head.contains("retry-after: 30\r\n"), "{}", refusal.head);
    let said: Value = serde_json::from_slice(&refusal.body).unwrap();
    assert!(said["error"].as_str().unwrap().contains("out of file descriptors"), "{said}");
    assert!(has_problem(&said, "out_of_files"), "the local API's refusal carries the health report: {said}");
    let h = health(&api, api_port, &token).await;
    assert!(has_problem(&h, "out_of_files") && h["ok"] == false, "{h}");

    // Deliveries at once, each on a new connection: every one answered, 200 (stored) or 503
    // with Retry-After, never a reset or silence.
    let burst: Vec<_> = (100..120)
        .map(|id| {
            let (c, url, t) = (gitlab.clone(), url.clone(), hook_token.clone());
            tokio::spawn(async move { (id, send(&c, &url, &t, id).await) })
        })
        .collect();
    let mut refused = Vec::new();
    for b in burst {
        let (id, got) = b.await.unwrap();
        match got.unwrap() {
            (200, _) => acknowledged.push(id),
            (503, Some(r)) if r == "30" => refused.push(id),
            other => panic!("delivery {id}: {other:?} (a 503 needs Retry-After; never a 4xx)"),
        }
    }
    assert!(!refused.is_empty(), "no delivery was refused: the daemon was not out of descriptors");

    // Connections that ask nothing wait in the backlog meanwhile: the listener keeps trying
    // without spinning (axum's own listener would sleep 1 s; a busy loop would burn a core).
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(url.trim_start_matches("http://").split('/').next().unwrap()).await.unwrap());
    }
    let (t0, ticks0) = (Instant::now(), cpu_ticks(pid));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let busy = (cpu_ticks(pid) - ticks0) as f64 / 100.0 / t0.elapsed().as_secs_f64();
    assert!(busy < 0.5, "the daemon used {:.0}% of a core while out of descriptors", busy * 100.0);
    drop(idle);

    // The CLI is told too, though its own connections are not accepted either.
    let out = cloudci(&config, NO_GITLAB, "x", &["status", "--daemon", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(has_problem(&said, "out_of_files"), "{said}");

    // The subscribers leave: the daemon accepts again by itself, and GitLab's retries of the
    // refused deliveries go through.
    let subscribed = subscribers.len();
    drop(subscribers);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match send(&gitlab, &url, &hook_token, 1).await.unwrap() {
            (200, _) => break,
            (503, Some(_)) => {}
            other => panic!("after the subscribers left: {other:?}"),
        }
        assert!(Instant::now() < deadline, "still refusing 20 s after the subscribers left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let h = health(&api, api_port, &token).await;
    assert_eq!(h["ok"], true, "{h}");
    assert!(h["refused_deliveries"].as_u64().unwrap() >= refused.len() as u64, "{h}");
    for &id in &refused {
        assert_eq!(send(&gitlab, &url, &hook_token, id).await.unwrap().0, 200, "delivery {id}, retried");
        acknowledged.push(id);
    }

    // Every acknowledged delivery is in the store.
    assert!(daemon.terminate().success());
    let stored = stored_keys(&dir.path().join("state"));
    let missing: Vec<&u64> = acknowledged.iter().filter(|id| !stored.contains(&format!("key:{}", key(**id)))).collect();
    assert!(missing.is_empty(), "acknowledged but not stored: {missing:?}");
    eprintln!(
        "out of descriptors: {subscribed} subscribers filled the limit; of 20 deliveries at once {} refused with 503, \
         {} stored; CPU {:.0}% of a core while connections waited; recovered, all {} acknowledged stored; {:?}",
        refused.len(),
        20 - refused.len(),
        busy * 100.0,
        acknowledged.len(),
        started.elapsed()
    );
}
