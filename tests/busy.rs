//! A busy database (issue 16), against a real `cloudci serve`: another program holds the event
//! store's write lock (`BEGIN EXCLUSIVE` on its own connection, as a `sqlite3` shell would) for
//! longer than the busy timeout while signed deliveries arrive. Deliveries are answered 503 with
//! `Retry-After` (never a 4xx), the first after the busy timeout and the rest at once; the local
//! API keeps reading and says why; and once the lock is gone the daemon says so by itself and
//! GitLab's retries are stored and processed, each once.

mod common;

use std::time::{Duration, Instant};

use common::hooks::*;
use common::*;
use serde_json::Value;

const NO_GITLAB: &str = "http://127.0.0.1:9";

/// How many pipeline events the store logged for pipeline `id`.
fn pipeline_events(db: &rusqlite::Connection, id: u64) -> i64 {
    db.query_row("SELECT COUNT(*) FROM events WHERE kind = 'pipeline' AND pipeline_id = ?1", [id as i64], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_database_answers_deliveries_503_says_why_and_processes_everything_once_released() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (config, _, api_port) = write_config(dir.path(), "", 30);
    let daemon = serve(&config, NO_GITLAB, "x", &["--no-hooks"]);
    let token = token(&config);
    let (url, hook_token) = hook(&config);
    let c = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    assert_eq!(send(&c, &url, &hook_token, 1).await.unwrap(), (200, None));

    // Another program takes the write lock and keeps it.
    let state = dir.path().join("state");
    let other = rusqlite::Connection::open(state.join("events.db")).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();

    // The first delivery waits out the busy timeout (a brief lock would have been waited for),
    // still well within GitLab's 10 s, and is refused.
    let t = Instant::now();
    assert_eq!(send(&c, &url, &hook_token, 2).await.unwrap(), (503, Some("30".into())));
    let waited = t.elapsed();
    assert!(waited >= Duration::from_secs(4), "refused after {waited:?}, before the busy timeout");
    // Now that it is known, the next ones are refused at once, not each after 5 s.
    let t = Instant::now();
    let burst: Vec<_> = (3..13)
        .map(|id| {
            let (c, url, token) = (c.clone(), url.clone(), hook_token.clone());
            tokio::spawn(async move { (id, send(&c, &url, &token, id).await) })
        })
        .collect();
    for b in burst {
        let (id, got) = b.await.unwrap();
        assert_eq!(got.unwrap(), (503, Some("30".into())), "delivery {id} (never a 4xx)");
    }
    let burst_took = t.elapsed();
    assert!(burst_took < Duration::from_secs(3), "10 deliveries took {burst_took:?} to be refused");

    // The local API says why, and still reads (the lock stops writers, not readers).
    let h = health(&c, api_port, &token).await;
    assert!(has_problem(&h, "database_busy") && h["ok"] == false, "{h}");
    let busy = h["problems"].as_array().unwrap().iter().find(|p| p["kind"] == "database_busy").unwrap();
    assert!(busy["message"].as_str().unwrap().contains("locked by another program"), "{busy}");
    assert!(h["refused_deliveries"].as_u64().unwrap() >= 11, "{h}");
    let t = Instant::now();
    let recent = c.get(format!("http://127.0.0.1:{api_port}/v1/events/recent")).bearer_auth(&token).send().await;
    assert_eq!(recent.unwrap().status(), 200);
    assert!(t.elapsed() < Duration::from_secs(2), "a read took {:?} while the database was locked", t.elapsed());
    let out = cloudci(&config, NO_GITLAB, "x", &["status", "--daemon", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(has_problem(&said, "database_busy"), "{said}");

    // The lock goes: the daemon sees it by itself (its probe, no delivery needed).
    other.execute_batch("ROLLBACK").unwrap();
    drop(other);
    let released = Instant::now();
    loop {
        let h = health(&c, api_port, &token).await;
        if !has_problem(&h, "database_busy") {
            assert_eq!(h["ok"], true, "{h}");
            break;
        }
        assert!(released.elapsed() < Duration::from_secs(10), "still database_busy 10 s after the lock went: {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = released.elapsed();
    // GitLab's retries of the refused deliveries (same Idempotency-Key), and a resend of the
    // one acknowledged before: all 200.
    for id in (2..13).chain([1]) {
        assert_eq!(send(&c, &url, &hook_token, id).await.unwrap(), (200, None), "delivery {id}, retried");
    }

    // Each stored once, and turned into events once: as many pipeline events for each as for
    // the delivery before the lock, none waiting.
    assert!(daemon.terminate().success());
    let stored = stored_keys(&state);
    let missing: Vec<u64> = (1..13).filter(|id| !stored.contains(&format!("key:{}", key(*id)))).collect();
    assert!(missing.is_empty(), "not stored: {missing:?}");
    let db = rusqlite::Connection::open(state.join("events.db")).unwrap();
    let pending: i64 = db.query_row("SELECT COUNT(*) FROM deliveries WHERE processed = 0", [], |r| r.get(0)).unwrap();
    assert_eq!(pending, 0, "deliveries left unprocessed");
    let once = pipeline_events(&db, 1);
    assert!(once >= 1);
    for id in 2..13 {
        assert_eq!(pipeline_events(&db, id), once, "pipeline {id}'s events");
    }
    eprintln!(
        "database busy: first delivery refused after {waited:?}, 10 more in {burst_took:?}, recovered \
         {recovered:?} after the lock went, 12 of 12 stored and processed once; {:?}",
        started.elapsed()
    );
}
