//! A simulated year (or more) of deliveries through the group commit, in three modes, in rounds
//! that alternate them (this machine's load moves p99 several times over between runs, so one run
//! per mode compares the load, not the modes): without retention; with the periodic pass alone
//! (`in_commit = false`); and with each commit removing what expired (`retention/sweep.rs`) beside
//! the same periodic pass. Records the event store's size on disk (database, WAL) and the ingest
//! latency (queued → committed and answered) of each.
//!
//! Time is compressed: a simulated day is `2000 / rate` seconds (a team project's ~2,000
//! deliveries a day: 50 pipelines of 10 jobs), and the retention limits (14 days of deliveries,
//! 30 of events) are scaled to it, so retention removes as fast as deliveries arrive (a real year
//! removes ~2,000 a day); the pass runs every half simulated day. Deliveries arrive open-loop at
//! `rate` per second, each GitLab's sample Job Hook (2.8 KB, compressed in the log as real ones
//! are) with its pipeline's and job's observations; a subscriber follows live (and so holds what
//! it has not read).
//! `durability = "normal"` (the group commit's fsync would measure the disk, not retention).
//!
//! An ignored test, so that it drives the crate's own group commit ([`crate::ingest`]):
//! `RETENTION_YEAR=200000,2000,100,3 cargo test --release -p cloudci-webhook --lib retention_year -- --ignored --nocapture`
//! (deliveries, rate per second, rows per transaction of a pass, rounds, and retention's work
//! per second as a percentage of ingest's; default 1,000,000 at 2,000/s, 100, 1, 100);
//! `RETENTION_YEAR_MODES` (e.g. `without,pass`) picks the modes; `RETENTION_YEAR_CACHE_KIB` sets
//! the writer connection's page cache (SQLite's default is 2,000 KiB). Below 100
//! the store starts with that share of the run's deliveries already aged, expiring evenly over
//! the run, and nothing of the run's own expires: a real team's peak hour, whose deliveries come
//! many times faster than the day's average that retention removes. Prints one JSON line per
//! simulated month and per run (latency, the writer's time, bytes written to storage and CPU time
//! per delivery, the state's size), then each mode's p99 per round and their medians.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::Notify;

use crate::ingest::Ingest;
use crate::{
    BuildEvent, Durability, EventFilter, EventKind, EventSource, Hub, Incoming, Keep, NewDelivery, Observation, Store,
    StorePolicy, now_ms,
};

const PER_DAY: u64 = 2000;
const PER_PIPELINE: u64 = 40;
const STATUSES: [&str; 4] = ["created", "pending", "running", "success"];
/// GitLab's sample Job Hook (2.8 KB), each delivery's body with its own ids and status: the log
/// keeps bodies compressed, so padding would shrink to nothing and hide the cost of real ones.
const JOB_HOOK: &str = include_str!("../../../gitlab/tests/fixtures/webhook-job-event.json");

fn incoming(k: u64) -> Incoming {
    let pipeline = 1 + k / PER_PIPELINE;
    let i = k % PER_PIPELINE;
    let job = pipeline * 100 + i / 4;
    let status = STATUSES[(i % 4) as usize];
    let mut j = BuildEvent::new(EventKind::Job, 1, "Job Hook", EventSource::Webhook);
    j.project = Some("acme/firmware".into());
    j.git_ref = Some("main".into());
    j.pipeline_id = Some(pipeline);
    j.job_id = Some(job);
    j.job_name = Some(format!("build: [board{}]", i / 4));
    j.stage = Some("build".into());
    j.status = Some(status.into());
    let mut p = j.clone();
    p.kind = EventKind::Pipeline;
    p.job_id = None;
    p.job_name = None;
    p.stage = None;
    p.status = Some(if i + 1 == PER_PIPELINE { "success" } else { "running" }.into());
    let observations = vec![Observation { event: j, max_job_id: job }, Observation { event: p, max_job_id: job }];
    let body = JOB_HOOK
        .replacen("\"build_id\": 1977", &format!("\"build_id\": {job}"), 1)
        .replacen("\"build_status\": \"created\"", &format!("\"build_status\": \"{status}\""), 1)
        .replacen("\"pipeline_id\": 2366", &format!("\"pipeline_id\": {pipeline}"), 1)
        .into_bytes();
    let delivery = NewDelivery {
        dedup_key: format!("d-{k}"),
        event: "Job Hook".into(),
        headers: "{\"X-Gitlab-Event\":\"Job Hook\"}".into(),
        body,
    };
    Incoming { delivery, observations: Ok(observations) }
}

fn disk(dir: &Path) -> u64 {
    ["events.db", "events.db-wal", "events.db-shm"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// Bytes this process has had written to storage (`write_bytes` of `/proc/self/io`: WAL appends
/// and checkpoints' copies) and its CPU time in clock ticks (user + system), for what a mode costs
/// beside its latency; zeros where `/proc` is not there.
fn io_and_cpu() -> (u64, u64) {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let written = io.lines().find_map(|l| l.strip_prefix("write_bytes: ")).and_then(|v| v.trim().parse().ok());
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    (written.unwrap_or(0), ticks)
}

fn pct(sorted: &[u32], p: f64) -> u32 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Without,
    Pass,
    InCommit,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Without => "without retention",
            Self::Pass => "periodic pass only",
            Self::InCommit => "in the group commit, and the pass",
        }
    }
}

fn count(store: &Store, table: &str) -> i64 {
    store.conn().query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0)).unwrap_or(-1)
}

/// Keys of the deliveries a run with a ratio below 1 starts with.
const PREFILL: u64 = 1_000_000_000;

/// Stores `pre` deliveries (and their events), then ages them so that they pass `horizon` evenly
/// over the next `over`: what a store holds when retention removes `pre / over` a second.
fn prefill(store: &Store, pre: u64, horizon: Duration, over: Duration) {
    let keys: Vec<u64> = (0..pre).collect();
    for chunk in keys.chunks(500) {
        store.ingest(chunk.iter().map(|&j| incoming(PREFILL + j)).collect()).expect("prefilled");
    }
    let conn = store.conn();
    let base = now_ms() - horizon.as_millis() as i64;
    let rows = |table: &str| -> i64 {
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0)).expect("a count")
    };
    let over = over.as_millis() as f64;
    let step = |rows: i64| over / rows.max(1) as f64;
    conn.execute(
        "UPDATE deliveries SET received_at = strftime('%Y-%m-%dT%H:%M:%fZ', (?1 + id * ?2) / 1000.0, 'unixepoch')",
        rusqlite::params![base, step(rows("deliveries"))],
    )
    .expect("aged deliveries");
    conn.execute(
        "UPDATE events SET logged_at = ?1 + CAST(seq * ?2 AS INTEGER)",
        rusqlite::params![base, step(rows("events"))],
    )
    .expect("aged events");
}

async fn run(mode: Mode, n: u64, rate: u64, batch: usize, ratio: f64) -> serde_json::Value {
    let (retain, name) = (mode != Mode::Without, mode.name());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Arc::new(Store::open(&dir.path().join("events.db"), Durability::Normal).expect("the store"));
    // `RETENTION_YEAR_CACHE_KIB`: the writer connection's page cache (SQLite's default 2,000 KiB).
    if let Some(kib) = std::env::var("RETENTION_YEAR_CACHE_KIB").ok().and_then(|v| v.parse::<i64>().ok()) {
        store.conn().pragma_update(None, "cache_size", -kib).expect("cache_size");
    }
    let day = Duration::from_secs_f64(PER_DAY as f64 / rate as f64);
    let in_commit = mode == Mode::InCommit;
    // Retention's work per second as a share of ingest's: 1 is the compressed clock (what expires
    // arrives as fast as deliveries do). Below 1 the store starts with `n * ratio` aged
    // deliveries that expire evenly over the run, and the limits are long enough that nothing
    // of the run's own expires.
    let policy = if ratio >= 1.0 {
        StorePolicy { deliveries: day * 14, events: day * 30, batch, in_commit }
    } else {
        let length = Duration::from_secs_f64(n as f64 / rate as f64);
        let policy = StorePolicy { deliveries: length * 4, events: length * 4, batch, in_commit };
        prefill(&store, (n as f64 * ratio) as u64, policy.deliveries, length);
        policy
    };
    let hub = Hub::new(store.clone());
    let ingest = Ingest::start(hub.clone(), Arc::new(Notify::new()));
    // A subscriber that keeps up.
    let mut live = Box::pin(hub.subscribe_frames(EventFilter::default(), None));
    let reader = tokio::spawn(async move { while live.next().await.is_some() {} });
    let stop = Arc::new(AtomicBool::new(false));
    let gc = retain.then(|| {
        let (hub, stop, policy) = (hub.clone(), stop.clone(), policy.clone());
        std::thread::spawn(move || {
            // Rows the passes removed (the commits' are the rest), and the passes' time.
            let (mut removed, mut busy) = ((0u64, 0u64), Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let keep = Keep { pipelines: vec![], subscribers_at: hub.oldest_subscriber() };
                let t = Instant::now();
                let r = hub.store().gc(&policy, &keep, now_ms(), false).expect("a pass");
                busy += t.elapsed();
                removed.0 += r.deliveries.count;
                removed.1 += r.events.count;
                std::thread::sleep(day / 2);
            }
            (removed, busy)
        })
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
    let started = Instant::now();
    let (written0, cpu0) = io_and_cpu();
    let mut max_disk = 0;
    let sample_every = PER_DAY * 30;
    for k in 0..n {
        // Open loop: delivery k is due at k / rate, whatever the previous ones took.
        let due = started + Duration::from_secs_f64(k as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let (ingest, tx) = (ingest.clone(), tx.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            ingest.store(incoming(k)).await.expect("stored");
            let _ = tx.send(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
        });
        if k % sample_every == 0 && k > 0 {
            let size = disk(dir.path());
            max_disk = max_disk.max(size);
            println!(
                "{}",
                serde_json::json!({"mode": name, "deliveries": k, "simulated_days": k / PER_DAY, "disk_bytes": size})
            );
        }
    }
    drop(tx);
    let mut lat = Vec::with_capacity(n as usize);
    while let Some(l) = rx.recv().await {
        lat.push(l);
    }
    let elapsed = started.elapsed();
    let (written1, cpu1) = io_and_cpu();
    let stats = ingest.stats();
    stop.store(true, Ordering::Relaxed);
    let (removed, pass_time) = gc.map(|g| g.join().expect("the gc thread")).unwrap_or_default();
    reader.abort();
    let size = disk(dir.path());
    max_disk = max_disk.max(size);
    let (windows, whole) = {
        // p99 per tenth of the run: flat, or growing with the log?
        let tenth = (lat.len() / 10).max(1);
        let w: Vec<u32> = lat
            .chunks(tenth)
            .map(|c| {
                let mut c = c.to_vec();
                c.sort_unstable();
                pct(&c, 0.99)
            })
            .collect();
        lat.sort_unstable();
        (w, lat)
    };
    serde_json::json!({
        "mode": name,
        "deliveries": n,
        "rate_per_s": rate,
        "batch": batch,
        "retention_per_ingest": ratio,
        "simulated_days": n / PER_DAY,
        "seconds": elapsed.as_secs_f64(),
        // The writer's time in the store per delivery (inserting, processing, removing what
        // expired, committing): what a mode adds to each commit, less moved by the machine's
        // load than a percentile of the latency.
        "store_us_per_delivery": stats.store_micros.load(Ordering::Relaxed) as f64 / stats.deliveries.load(Ordering::Relaxed).max(1) as f64,
        "mean_batch": stats.mean_batch(),
        "store_max_us": stats.max_store_micros.load(Ordering::Relaxed),
        // Batches under 1, 5, 20, 50, 200 ms in the store, and longer.
        "store_histogram": stats.store_histogram.iter().map(|b| b.load(Ordering::Relaxed)).collect::<Vec<_>>(),
        // Clock ticks are 10 ms on Linux.
        "cpu_us_per_delivery": (cpu1 - cpu0) as f64 * 10_000.0 / n as f64,
        "written_bytes_per_delivery": (written1 - written0) as f64 / n as f64,
        "ingest_p50_us": pct(&whole, 0.50),
        "ingest_p99_us": pct(&whole, 0.99),
        "ingest_p999_us": pct(&whole, 0.999),
        "ingest_max_us": whole.last().copied().unwrap_or(0),
        "ingest_p99_us_by_tenth": windows,
        "disk_bytes_final": size,
        "disk_bytes_max": max_disk,
        "removed_deliveries_by_passes": removed.0,
        "removed_events_by_passes": removed.1,
        "passes_seconds": pass_time.as_secs_f64(),
        "deliveries_left": count(&store, "deliveries"),
        "events_left": count(&store, "events"),
        "events_logged": store.last_seq().unwrap_or(0),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: minutes, gigabytes; run by hand (module docs)"]
async fn retention_year() {
    let args = std::env::var("RETENTION_YEAR").unwrap_or_default();
    let mut args = args.split(',').filter(|a| !a.is_empty()).map(|a| a.trim().parse::<u64>().expect("a number"));
    let n = args.next().unwrap_or(1_000_000);
    let rate = args.next().unwrap_or(2000).max(1);
    let batch = args.next().map_or(StorePolicy::default().batch, |b| b as usize);
    let rounds = args.next().unwrap_or(1).max(1);
    let ratio = args.next().map_or(1.0, |r| (r as f64 / 100.0).min(1.0));
    // `RETENTION_YEAR_MODES=without,pass` runs only those (a 1M-delivery round takes ~8 minutes
    // a mode); the first is what the others are compared with.
    let chosen = std::env::var("RETENTION_YEAR_MODES").unwrap_or_default();
    let modes: Vec<Mode> = [(Mode::Without, "without"), (Mode::Pass, "pass"), (Mode::InCommit, "in_commit")]
        .into_iter()
        .filter(|(_, key)| chosen.is_empty() || chosen.split(',').any(|c| c.trim() == *key))
        .map(|(m, _)| m)
        .collect();
    assert!(!modes.is_empty(), "RETENTION_YEAR_MODES names none of without, pass, in_commit");
    let mut p99: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut store_us: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for round in 0..rounds {
        // The order turns each round, so no mode always runs first (or after the same one).
        for i in 0..modes.len() {
            let m = (i + round as usize) % modes.len();
            let r = run(modes[m], n, rate, batch, ratio).await;
            println!("{r}");
            p99[m].push(r["ingest_p99_us"].as_f64().unwrap_or(0.0) / 1000.0);
            store_us[m].push(r["store_us_per_delivery"].as_f64().unwrap_or(0.0));
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = median(&p99[0]).max(0.001);
    let store_base = median(&store_us[0]).max(0.001);
    for ((m, v), us) in modes.iter().zip(&p99).zip(&store_us) {
        println!(
            "{}",
            serde_json::json!({
                "summary": m.name(),
                "ingest_p99_ms_by_round": v,
                "median_ms": median(v),
                "median_over_without": median(v) / base,
                "store_us_per_delivery_by_round": us,
                "store_us_median_over_without": median(us) / store_base,
            })
        );
    }
}
