//! One set of cases, run against both event log backends: SQLite (the daemon's `Store`) and
//! PostgreSQL (the relay's `PgLog`, on a throwaway cluster). Append, de-duplication, replay from
//! a sequence, processing left for later, the receiver's store-then-process path, the state
//! machine, seqs consecutive and in commit
//! order as a second reader sees them while two writers commit, and crashes: `kill -9` of the
//! writing process, and (PostgreSQL) `pg_ctl stop -m immediate` under load.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cloudci_gitlab::webhook::WebhookEvent;
use cloudci_relay::{PgLog, ScratchCluster};
use cloudci_webhook::{
    Durability, EventFilter, EventLog, EventSource, Incoming, NewDelivery, Parsed, Store, Stored, observe,
};

/// Where a backend's log lives; each `open` is a new handle (another process would open one).
enum Backend {
    Sqlite(tempfile::TempDir),
    Pg(ScratchCluster),
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Pg(_) => "postgres",
        }
    }

    /// What a child process needs to open the same log.
    fn locator(&self) -> String {
        match self {
            Self::Sqlite(dir) => format!("sqlite:{}", dir.path().join("events.db").display()),
            Self::Pg(c) => format!("pg:{}", c.url()),
        }
    }

    fn open(&self) -> Arc<dyn EventLog> {
        open_locator(&self.locator())
    }

    /// Two writers committing at once: for PostgreSQL two handles (two relay instances); for
    /// SQLite two threads through one handle (the daemon is one process per database, and its
    /// `serve.lock` keeps a second one away).
    fn two_writers(&self) -> [Arc<dyn EventLog>; 2] {
        match self {
            Self::Sqlite(_) => {
                let one = self.open();
                [one.clone(), one]
            }
            Self::Pg(_) => [self.open(), self.open()],
        }
    }

    /// Stores a delivery without processing it, as an instance that died before processing left
    /// it.
    fn insert_pending(&self, key: &str, body: &[u8]) {
        match self {
            Self::Sqlite(dir) => {
                let store = Store::open(&dir.path().join("events.db"), Durability::Full).unwrap();
                store
                    .insert_delivery(&NewDelivery {
                        dedup_key: key.into(),
                        event: "Push Hook".into(),
                        headers: "{}".into(),
                        body: body.to_vec(),
                    })
                    .unwrap();
            }
            Self::Pg(c) => {
                let mut client = postgres::Client::connect(&c.url(), postgres::NoTls).unwrap();
                client
                    .execute(
                        "INSERT INTO deliveries (dedup_key, event, headers, body) VALUES ($1, 'Push Hook', '{}', $2)",
                        &[&key, &body],
                    )
                    .unwrap();
            }
        }
    }
}

fn open_locator(locator: &str) -> Arc<dyn EventLog> {
    match locator.split_once(':') {
        Some(("sqlite", path)) => Arc::new(Store::open(&PathBuf::from(path), Durability::Full).unwrap()),
        Some(("pg", url)) => Arc::new(PgLog::open(url).unwrap()),
        _ => panic!("bad locator {locator}"),
    }
}

/// SQLite always; PostgreSQL when it is installed (see `ScratchCluster::for_test`).
fn backends() -> Vec<Backend> {
    let mut all = vec![Backend::Sqlite(tempfile::tempdir().unwrap())];
    if let Some(c) = ScratchCluster::for_test() {
        all.push(Backend::Pg(c));
    }
    all
}

fn fixture(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../gitlab/tests/fixtures").join(name);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn push_body(project_id: u64, n: u64) -> Vec<u8> {
    let mut v = fixture("webhook-push-event.json");
    v["project_id"] = project_id.into();
    v["project"]["id"] = project_id.into();
    v["after"] = format!("{n:040x}").into();
    serde_json::to_vec(&v).unwrap()
}

fn pipeline_body(id: u64, status: &str) -> Vec<u8> {
    let mut v = fixture("webhook-pipeline-event.json");
    v["object_attributes"]["id"] = id.into();
    v["object_attributes"]["status"] = status.into();
    // Without jobs: one event per accepted pipeline status.
    v["builds"] = serde_json::json!([]);
    serde_json::to_vec(&v).unwrap()
}

fn parse(event: &str, body: &[u8]) -> Parsed {
    Ok(observe(&WebhookEvent::parse(Some(event), body).unwrap(), EventSource::Webhook))
}

fn incoming(key: &str, event: &str, body: Vec<u8>) -> Incoming {
    let observations = parse(event, &body);
    Incoming {
        delivery: NewDelivery { dedup_key: format!("key:{key}"), event: event.into(), headers: "{}".into(), body },
        observations,
    }
}

fn push(key: &str, project_id: u64, n: u64) -> Incoming {
    incoming(key, "Push Hook", push_body(project_id, n))
}

/// Every event in the log, checking seqs run 1, 2, 3, ... with no hole.
fn all_seqs(log: &dyn EventLog) -> Vec<u64> {
    let (events, _) = log.events_after(0, None, &EventFilter::default(), 100_000).unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "seqs are consecutive from 1");
    seqs
}

#[test]
fn append_and_dedupe() {
    for b in backends() {
        let log = b.open();
        let name = b.name();
        let done = log.ingest(vec![push("a", 1, 1), push("a", 1, 1), push("b", 1, 2)]).unwrap();
        assert!(matches!(done.stored[..], [Stored::New(_), Stored::Duplicate(_), Stored::New(_)]), "{name}");
        // The copy names the row of its first.
        assert_eq!(
            Some(done.stored[0]),
            match done.stored[1] {
                Stored::Duplicate(id) => Some(Stored::New(id)),
                _ => None,
            }
        );
        assert!(!done.deferred, "{name}");
        assert_eq!(done.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2], "{name}");
        // A resend later: no row, no event.
        let again = log.ingest(vec![push("b", 1, 2)]).unwrap();
        assert!(matches!(again.stored[..], [Stored::Duplicate(_)]), "{name}");
        assert!(again.events.is_empty(), "{name}");
        assert_eq!(log.last_seq().unwrap(), 2, "{name}");
        assert_eq!(log.delivery("key:a").unwrap().map(|d| d.1), Some(true), "{name}");
        assert_eq!(log.delivery("key:zzz").unwrap(), None, "{name}");
        // Another handle (another instance) sees the same.
        assert_eq!(all_seqs(&*b.open()), [1, 2], "{name}");
    }
}

#[test]
fn replay_from_a_sequence() {
    for b in backends() {
        let log = b.open();
        let name = b.name();
        for n in 0..12u64 {
            // Batches of one and of three; two projects.
            let batch = if n % 4 == 0 {
                (0..3).map(|i| push(&format!("{n}-{i}"), 1 + i % 2, n * 10 + i)).collect()
            } else {
                vec![push(&n.to_string(), 1 + n % 2, n * 10)]
            };
            log.ingest(batch).unwrap();
        }
        let total = log.last_seq().unwrap();
        assert_eq!(total, 9 + 3 * 3, "nine batches of one, three of three: {name}");
        for s in 0..=total {
            let (events, last) = log.events_after(s, None, &EventFilter::default(), 1000).unwrap();
            assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), (s + 1..=total).collect::<Vec<_>>(), "{name}");
            assert_eq!(last, total.max(s), "{name}");
        }
        // A limit, an upper bound, a filter: the last seq examined lets a reader go on.
        let (events, last) = log.events_after(2, Some(10), &EventFilter::default(), 3).unwrap();
        assert_eq!((events.iter().map(|e| e.seq).collect::<Vec<_>>(), last), (vec![3, 4, 5], 5), "{name}");
        let only_2 = EventFilter { projects: vec!["2".into()], ..EventFilter::default() };
        let (events, last) = log.events_after(0, None, &only_2, 1000).unwrap();
        assert!(!events.is_empty() && events.iter().all(|e| e.project_id == 2), "{name}");
        assert_eq!(last, total, "{name}");
    }
}

#[test]
fn the_state_machine_judges_alike() {
    for b in backends() {
        let log = b.open();
        let name = b.name();
        let mut statuses = Vec::new();
        for (key, status) in [("1", "running"), ("2", "success"), ("3", "running"), ("4", "success"), ("5", "failed")] {
            let done = log.ingest(vec![incoming(key, "Pipeline Hook", pipeline_body(700, status))]).unwrap();
            statuses.extend(done.events.into_iter().map(|e| (e.status, e.previous_status)));
        }
        // A late `running` and a repeated `success` add nothing; a finished pipeline does not
        // move to another status without a retry.
        assert_eq!(
            statuses,
            [(Some("running".into()), None), (Some("success".into()), Some("running".into()))],
            "{name}"
        );
    }
}

#[test]
fn what_cannot_be_processed_at_once_is_left_pending_then_processed_once() {
    for b in backends() {
        let name = b.name();
        let log = b.open();
        b.insert_pending("key:old", &push_body(3, 1));
        let done = log.ingest(vec![push("new", 3, 2)]).unwrap();
        assert!(matches!(done.stored[..], [Stored::New(_)]), "{name}");
        assert!(done.deferred && done.events.is_empty(), "an older delivery is pending: {name}");
        let pending = log.pending_deliveries(10).unwrap();
        assert_eq!(pending.len(), 2, "{name}");
        assert!(pending[0].id < pending[1].id, "oldest first: {name}");
        let parsed: Vec<(i64, Parsed)> = pending.iter().map(|d| (d.id, parse(&d.event, &d.body))).collect();
        let events = log.process_deliveries(parsed.clone()).unwrap();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2], "{name}");
        assert_eq!(events[0].sha.as_deref(), Some(format!("{:040x}", 1).as_str()), "in arrival order: {name}");
        // Processed once: a second processor that read the same pending list does nothing.
        assert!(log.process_deliveries(parsed).unwrap().is_empty(), "{name}");
        assert!(log.pending_deliveries(10).unwrap().is_empty(), "{name}");
        assert_eq!(log.delivery("key:new").unwrap().map(|d| d.1), Some(true), "{name}");
    }
}

/// The receiver's call: every delivery is stored (and deduped) when it returns; a backend that
/// left the processing for later says so, and the processor's path (pending, then process)
/// finishes it once, in arrival order.
#[test]
fn receive_stores_and_the_processor_finishes_once() {
    for b in backends() {
        let name = b.name();
        let log = b.open();
        let done = log.receive(vec![push("r1", 4, 1), push("r1", 4, 1), push("r2", 4, 2)]).unwrap();
        assert!(matches!(done.stored[..], [Stored::New(_), Stored::Duplicate(_), Stored::New(_)]), "{name}");
        assert_eq!(
            done.stored[1],
            match done.stored[0] {
                Stored::New(id) => Stored::Duplicate(id),
                other => other,
            }
        );
        // Stored durably: another handle sees both.
        let other = b.open();
        assert!(other.delivery("key:r1").unwrap().is_some() && other.delivery("key:r2").unwrap().is_some(), "{name}");
        let mut events = done.events;
        // SQLite processes at once; PostgreSQL without a sequencer asks for the processor.
        assert_eq!(done.deferred, events.is_empty(), "{name}");
        let pending = other.pending_deliveries(10).unwrap();
        let parsed: Vec<(i64, Parsed)> = pending.iter().map(|d| (d.id, parse(&d.event, &d.body))).collect();
        events.extend(other.process_deliveries(parsed.clone()).unwrap());
        assert!(other.process_deliveries(parsed).unwrap().is_empty(), "processed once: {name}");
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2], "{name}");
        let shas: Vec<_> = events.iter().map(|e| e.sha.clone().unwrap()).collect();
        assert_eq!(shas, [format!("{:040x}", 1), format!("{:040x}", 2)], "in arrival order: {name}");
        assert!(log.pending_deliveries(10).unwrap().is_empty(), "{name}");
        let again = log.receive(vec![push("r2", 4, 2)]).unwrap();
        assert!(matches!(again.stored[..], [Stored::Duplicate(_)]) && again.events.is_empty(), "{name}");
        assert_eq!(all_seqs(&*log), [1, 2], "{name}");
    }
}

/// Two writers commit at once; a third handle reads the head and then the events up to it: once
/// the head is visible, every seq below it is too (a plain `bigserial` fails this), and reading
/// on from the last seq seen never skips one that commits later.
#[test]
fn a_second_reader_sees_seqs_consecutive_and_in_commit_order() {
    for b in backends() {
        let name = b.name();
        let writers: Vec<_> = b
            .two_writers()
            .into_iter()
            .enumerate()
            .map(|(w, log)| {
                std::thread::spawn(move || {
                    for n in 0..150u64 {
                        let batch = (0..1 + n % 3).map(|i| push(&format!("{w}-{n}-{i}"), 1, n)).collect();
                        log.ingest(batch).unwrap();
                    }
                })
            })
            .collect();
        let reader = b.open();
        let mut seen = 0u64;
        let mut reads = 0;
        loop {
            let finished = writers.iter().all(|w| w.is_finished());
            let head = reader.last_seq().unwrap();
            let (events, last) = reader.events_after(seen, Some(head), &EventFilter::default(), 100_000).unwrap();
            let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
            assert_eq!(seqs, (seen + 1..=head).collect::<Vec<_>>(), "{name}: everything up to the head {head}");
            seen = last.max(seen);
            reads += 1;
            if finished && seen == reader.last_seq().unwrap() {
                break;
            }
        }
        for w in writers {
            w.join().unwrap();
        }
        let total: u64 = 2 * (0..150u64).map(|n| 1 + n % 3).sum::<u64>();
        assert_eq!(seen, total, "{name}");
        assert_eq!(all_seqs(&*reader).len() as u64, total, "{name}");
        assert!(reads > 2, "{name}: the reader read while the writers wrote ({reads} reads)");
    }
}

/// The writing process is killed (`kill -9`) in the middle of its commits: every delivery it
/// was told was committed is there and processed; the one in flight is either all there (with
/// its event) or not at all; the seqs have no hole.
#[test]
fn kill_9_of_the_writer_keeps_what_was_acknowledged() {
    for b in backends() {
        let name = b.name();
        // Create the schema first, so the child is already committing when it is killed.
        drop(b.open());
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_writer", "--ignored", "--nocapture", "--test-threads=1"])
            .env("CONFORMANCE_CHILD", b.locator())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut acked = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.len() < 40 {
            assert!(Instant::now() < deadline, "{name}: the child stalled at {} acks", acked.len());
            let line = lines.next().expect("the child ended early").unwrap();
            if let Some(n) = line.strip_prefix("ack ") {
                acked.push(n.parse::<u64>().unwrap());
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let log = b.open();
        for n in &acked {
            assert_eq!(log.delivery(&format!("key:c{n}")).unwrap().map(|d| d.1), Some(true), "{name}: ack {n}");
        }
        // What the child may have committed after its last ack: each whole.
        let mut stored = acked.len() as u64;
        for n in acked.len() as u64..acked.len() as u64 + 50 {
            if let Some((_, processed)) = log.delivery(&format!("key:c{n}")).unwrap() {
                assert!(processed, "{name}: delivery {n} was committed without its event");
                stored += 1;
            }
        }
        assert_eq!(all_seqs(&*log).len() as u64, stored, "{name}: one event per committed delivery");
        assert!(log.pending_deliveries(10).unwrap().is_empty(), "{name}");
    }
}

/// Run by [`kill_9_of_the_writer_keeps_what_was_acknowledged`] as a child process: commits one
/// delivery at a time for ever, saying `ack N` after each commit.
#[test]
#[ignore = "a child process of the kill -9 test"]
fn child_writer() {
    let Ok(locator) = std::env::var("CONFORMANCE_CHILD") else { return };
    let log = open_locator(&locator);
    for n in 0u64.. {
        log.ingest(vec![push(&format!("c{n}"), 1, n)]).unwrap();
        println!("ack {n}");
    }
}

/// PostgreSQL stops at once (`pg_ctl stop -m immediate`) while a writer commits: calls fail
/// while it is down (the receiver answers those 503), go through again once it is back, and no
/// acknowledged delivery is lost.
#[test]
fn an_immediate_postgres_shutdown_loses_nothing_acknowledged() {
    let Some(cluster) = ScratchCluster::for_test() else { return };
    let log = Arc::new(PgLog::open(&cluster.url()).unwrap());
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (log, acked, failures, stop) = (log.clone(), acked.clone(), failures.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                match log.ingest(vec![push(&format!("d{n}"), 1, n)]) {
                    Ok(_) => acked.lock().unwrap().push(n),
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                // A failed delivery is one GitLab retries under the same key: the next one here.
                n += 1;
            }
        })
    };
    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for("20 commits", &|| acked.lock().unwrap().len() >= 20);
    cluster.stop_immediate().unwrap();
    wait_for("failures while PostgreSQL is down", &|| failures.load(Ordering::Relaxed) >= 3);
    let before_restart = acked.lock().unwrap().len();
    cluster.start_again().unwrap();
    wait_for("commits after the restart", &|| acked.lock().unwrap().len() >= before_restart + 20);
    stop.store(true, Ordering::Release);
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    for n in &acked {
        assert_eq!(log.delivery(&format!("key:d{n}")).unwrap().map(|d| d.1), Some(true), "ack {n}");
    }
    let seqs = all_seqs(&*log);
    assert!(seqs.len() >= acked.len(), "{} events for {} acknowledged deliveries", seqs.len(), acked.len());
}
