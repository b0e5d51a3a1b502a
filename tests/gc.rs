//! `cloudci gc`: a dry run removes nothing and reports what the real pass then removes; neither
//! touches what an unfinished build holds (its pipeline's events, its run's logs, its commit's
//! artifacts); with a daemon holding the state directory only the dry run runs.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use cloudci::builds::{BuildStore, BuildWork, NewBuild, Owner, SqliteBuilds};
use cloudci_webhook::{
    BuildEvent, Durability, EventFilter, EventKind, EventSource, Incoming, NewDelivery, Observation, Store,
};

const DAY: Duration = Duration::from_secs(86_400);

fn obs(kind: EventKind, pipeline: u64, job: Option<u64>, status: &str) -> Observation {
    let mut e = BuildEvent::new(kind, 1, "Pipeline Hook", EventSource::Webhook);
    e.project = Some("acme/fw".into());
    e.pipeline_id = Some(pipeline);
    e.job_id = job;
    e.job_name = job.map(|j| format!("job{j}"));
    e.status = Some(status.into());
    Observation { event: e, max_job_id: job.unwrap_or(0) }
}

fn deliver(store: &Store, key: &str, observations: Vec<Observation>) {
    let delivery = NewDelivery {
        dedup_key: key.into(),
        event: "Pipeline Hook".into(),
        headers: "{}".into(),
        body: vec![b'x'; 500],
    };
    store.ingest(vec![Incoming { delivery, observations: Ok(observations) }]).unwrap();
}

fn write(path: &Path, bytes: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, vec![b'l'; bytes]).unwrap();
}

fn age(path: &Path, by: Duration) {
    let f = std::fs::File::open(path).unwrap();
    f.set_modified(SystemTime::now() - by).unwrap();
}

fn gc(config: &Path, args: &[&str]) -> (bool, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cloudci"))
        .arg("--config")
        .arg(config)
        .arg("gc")
        .args(args)
        .env_remove("CLOUDCI_CONFIG")
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.success(), json, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn gc_removes_only_what_it_may_and_the_dry_run_says_so_first() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let config = dir.path().join("cloudci.toml");
    std::fs::write(&config, format!("[store]\npath = {:?}\n", state.display().to_string())).unwrap();

    // Pipeline 1 finished; pipeline 2 finished too, but its build is not done.
    {
        let store = Store::open(&state.join("events.db"), Durability::Normal).unwrap();
        for p in [1, 2] {
            deliver(&store, &format!("{p}-a"), vec![obs(EventKind::Job, p, Some(p * 10), "running")]);
            deliver(
                &store,
                &format!("{p}-b"),
                vec![obs(EventKind::Job, p, Some(p * 10), "success"), obs(EventKind::Pipeline, p, None, "success")],
            );
        }
    }
    // Everything in the log is 40 days old.
    let conn = rusqlite::Connection::open(state.join("events.db")).unwrap();
    let old_ms = (SystemTime::now() - 40 * DAY).duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as i64;
    conn.execute("UPDATE events SET logged_at = ?1", [old_ms]).unwrap();
    conn.execute(
        "UPDATE deliveries SET received_at = strftime('%Y-%m-%dT%H:%M:%fZ', ?1 / 1000.0, 'unixepoch')",
        [old_ms],
    )
    .unwrap();
    conn.execute("UPDATE pipelines SET last_heard = ?1", [old_ms / 1000]).unwrap();
    drop(conn);

    // 25 runs of the project's logs; the unfinished build's run is the second.
    let logs = state.join("logs");
    for n in 1..=25 {
        write(&logs.join(format!("2026-01-01_{n:02}/fw/host/build.log")), 100);
    }
    let builds = SqliteBuilds::open(&state.join("builds.db")).unwrap();
    let new = NewBuild {
        project: "fw".into(),
        gitlab: "acme/fw".into(),
        target: "host".into(),
        work: BuildWork { owner: Owner::Daemon, ..BuildWork::default() },
    };
    let held_run = logs.join("2026-01-01_02");
    let (_, ids) = builds.create_run(&[new], Some(&held_run.display().to_string())).unwrap();
    builds
        .update(ids[0], &mut |r, _| {
            r.pipeline_id = Some(2);
            r.sha = Some("held".into());
        })
        .unwrap();
    drop(builds);

    // Artifacts: old, old but of the unfinished build's commit, recent.
    let artifacts = state.join("artifacts/fw");
    for (sha, bytes) in [("old", 1000), ("held", 2000), ("new", 4000)] {
        write(&artifacts.join(sha).join("host/fw.bin"), bytes);
    }
    age(&artifacts.join("old/host"), 40 * DAY);
    age(&artifacts.join("held/host"), 40 * DAY);

    let (ok, dry, err) = gc(&config, &["--dry-run", "--json"]);
    assert!(ok, "{err}");
    assert_eq!(dry["dry_run"], true);
    // Every raw delivery (processed: the events hold what they said); pipeline 1's three events
    // and its state (one pipeline, one job).
    assert_eq!(dry["deliveries"]["count"], 4, "{dry}");
    assert_eq!(dry["events"]["count"], 3, "{dry}");
    assert_eq!(dry["pipelines"]["count"], 1);
    assert_eq!(dry["jobs"]["count"], 1);
    // Runs 1, 3, 4, 5 (run 2 is held): 25 runs, 20 kept.
    assert_eq!(dry["logs"]["count"], 4, "{dry}");
    assert_eq!(dry["logs"]["bytes"], 400);
    assert_eq!(dry["artifacts"]["count"], 1);
    assert_eq!(dry["artifacts"]["bytes"], 1000);
    // Nothing went.
    assert!(logs.join("2026-01-01_01/fw/host/build.log").exists());
    assert!(artifacts.join("old/host/fw.bin").exists());

    let (ok, real, err) = gc(&config, &["--json"]);
    assert!(ok, "{err}");
    let mut expected = dry.clone();
    expected["dry_run"] = false.into();
    assert_eq!(real, expected, "the pass removed something else than the dry run said");
    for n in [1, 3, 4, 5] {
        assert!(!logs.join(format!("2026-01-01_{n:02}")).exists(), "run {n} is still there");
    }
    assert!(held_run.join("fw/host/build.log").exists());
    assert!(logs.join("2026-01-01_06/fw/host/build.log").exists());
    assert!(!artifacts.join("old").exists());
    assert!(artifacts.join("held/host/fw.bin").exists() && artifacts.join("new/host/fw.bin").exists());
    let store = Store::open(&state.join("events.db"), Durability::Normal).unwrap();
    let (left, _) = store.events_after(0, None, &EventFilter::default(), 100).unwrap();
    assert_eq!(left.len(), 3);
    assert!(left.iter().all(|e| e.pipeline_id == Some(2)));
    drop(store);

    // Again: nothing left to remove, said in a table too.
    let out = Command::new(env!("CARGO_BIN_EXE_cloudci")).arg("--config").arg(&config).arg("gc").output().unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("removed") && table.contains("raw deliveries"), "{table}");

    // A daemon holding the state directory does its own passes: only the dry run runs.
    let lock = cloudci::state::StateDir::new(&state).lock_daemon().unwrap();
    let (ok, _, err) = gc(&config, &[]);
    assert!(!ok);
    assert!(err.contains("cloudci serve") && err.contains("--dry-run"), "{err}");
    assert!(gc(&config, &["--dry-run"]).0);
    drop(lock);
}
