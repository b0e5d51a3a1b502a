//! The soak: `cloudci serve` for a long time under steady, ordinary load, measured.
//!
//! gitlab-sim runs in process (no faults) with the chaos pipeline (four short jobs). The load, all
//! at once until the end:
//! - **deliveries**: signed Pipeline Hooks (the `X-Gitlab-Token` and `webhook-signature` `serve`
//!   keeps in its state directory) POSTed straight to the public listener at a steady rate, each a
//!   new finished pipeline of a synthetic project; the time to the 2xx is the ingest latency;
//! - **builds**: `POST /v1/builds` every few seconds; the sim runs them and delivers its own hooks,
//!   so builds start, run and finish;
//! - **subscribers**: a few SSE clients that connect to `GET /v1/events` (resuming from a recent
//!   id), read for 0.5–5 s and leave, over and over.
//!
//! Every sample (JSON lines in `soak.jsonl`) records RSS, open file descriptors, database and
//! state directory size, ingest latency over the interval, and the load so far. The summary
//! (`summary.json`, and [`SoakReport`]'s `Display`) compares the start with the end and says
//! whether memory and file descriptors stayed flat. File descriptors are compared while idle
//! (before the load, and after it stopped, every subscriber left and the sim stopped), so open
//! connections do not count as a leak; what they were is kept by kind (`fd_kinds`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{Error, PROJECT, SIM_TOKEN, daemon, free_port, probe};

/// What the soak runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoakOptions {
    /// The `cloudci` executable.
    pub cloudci: PathBuf,
    /// How long the load runs, in seconds.
    pub duration_secs: f64,
    /// Seconds between two samples.
    pub sample_secs: f64,
    /// Synthetic deliveries per second.
    pub delivery_rate: f64,
    /// Seconds between two `POST /v1/builds`.
    pub build_every_secs: f64,
    /// SSE subscribers connecting and leaving at any time.
    pub subscribers: usize,
    /// The share of the run after which memory is taken as warmed up (0–1).
    pub warmup: f64,
    /// Where the run's files go; a new temporary directory when `None`. Kept after the run.
    pub dir: Option<PathBuf>,
    /// `CLOUDCI_LOG` for `serve`.
    pub serve_log: String,
}

impl Default for SoakOptions {
    fn default() -> Self {
        Self {
            cloudci: PathBuf::from("cloudci"),
            duration_secs: 3600.0,
            sample_secs: 10.0,
            delivery_rate: 5.0,
            build_every_secs: 10.0,
            subscribers: 4,
            warmup: 0.1,
            dir: None,
            serve_log: "info".into(),
        }
    }
}

/// One sample.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub t_secs: f64,
    /// `serve`'s resident memory, KiB.
    pub rss_kib: u64,
    /// `serve`'s open file descriptors.
    pub fds: u64,
    /// `events.db` and `builds.db` with their WAL files, bytes.
    pub db_bytes: u64,
    /// The whole state directory, bytes.
    pub state_bytes: u64,
    /// Deliveries answered 2xx so far.
    pub deliveries: u64,
    /// Deliveries answered otherwise, or not at all, so far.
    pub delivery_errors: u64,
    /// Ingest latency over the interval (median, p99, max), ms; `None` without deliveries.
    pub ingest_ms: Option<[f64; 3]>,
    /// `POST /v1/builds` answered 202 so far.
    pub builds_started: u64,
    /// Subscriber connections made so far.
    pub subscriber_connects: u64,
    /// Events the subscribers received so far.
    pub events_received: u64,
}

/// What the soak measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoakReport {
    /// The options it ran with.
    pub options: SoakOptions,
    /// Every sample.
    pub samples: Vec<Sample>,
    /// RSS right after start, before any load, KiB.
    pub rss_start_kib: u64,
    /// RSS once warmed up (median of the samples in the warm-up's next tenth of the run), KiB.
    pub rss_warm_kib: u64,
    /// RSS at the end (median of the last tenth of the samples), KiB.
    pub rss_end_kib: u64,
    /// The largest RSS sampled, KiB.
    pub rss_peak_kib: u64,
    /// Open fds before the load.
    pub fds_idle_start: u64,
    /// Open fds after the load stopped, the subscribers left and the sim was stopped.
    pub fds_idle_end: u64,
    /// What the idle fds were before and after, by kind (`tcp:sim`, `tcp:hooks`, `tcp:api` for
    /// connections on those ports, `listen:*`, `file`, `anon`, ...).
    pub fd_kinds: [BTreeMap<String, u64>; 2],
    /// The most fds sampled.
    pub fds_peak: u64,
    /// Database bytes at the first and the last sample.
    pub db_bytes: [u64; 2],
    /// Ingest latency over the whole run (median, p99, max), ms.
    pub ingest_ms: Option<[f64; 3]>,
    /// p99 ingest latency of the first and the last tenth of the run, ms.
    pub ingest_p99_first_last_ms: Option<[f64; 2]>,
    /// Deliveries answered 2xx, and otherwise.
    pub deliveries: [u64; 2],
    /// Builds started, and finished (success, failed, canceled, skipped, error) at the end.
    pub builds: [u64; 2],
    /// Subscriber connections, and events they received.
    pub subscribers: [u64; 2],
    /// RSS grew by no more than 16 MiB or 10 % from warm to end.
    pub memory_flat: bool,
    /// Idle fds at the end within 8 of the start, and fds under load at the end within 8 of
    /// those once warm (medians of a tenth of the samples each).
    pub fds_flat: bool,
    /// The run directory (`soak.jsonl`, `summary.json`, `serve-N.{out,err}`, the state).
    pub dir: PathBuf,
    /// The whole run, seconds.
    pub wall_secs: f64,
}

/// The synthetic project deliveries are about (the sim does not know it; cloudci keeps them).
pub(crate) const SYNTHETIC_PROJECT_ID: u64 = 900_001;

/// Counters the load tasks share with the sampler.
#[derive(Debug, Default)]
pub(crate) struct Load {
    pub(crate) stop: AtomicBool,
    pub(crate) deliveries: AtomicU64,
    pub(crate) delivery_errors: AtomicU64,
    pub(crate) builds_started: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) events: AtomicU64,
    /// The highest seq a subscriber saw: where the next one resumes from.
    pub(crate) last_seq: AtomicU64,
    /// Ingest latencies since the last sample, µs.
    pub(crate) window: std::sync::Mutex<Vec<u64>>,
}

/// Runs the soak; `serve` and the sim are stopped before it returns.
pub async fn soak(opts: SoakOptions) -> Result<SoakReport, Error> {
    cloudci_gitlab::install_tls_provider();
    let started = Instant::now();
    let dir = crate::run_dir(opts.dir.as_deref(), "cloudci-soak-", &opts.cloudci)?;
    let repo_parent = dir.join("git");
    if repo_parent.join("repo").exists() {
        std::fs::remove_dir_all(repo_parent.join("repo"))?;
    }
    std::fs::create_dir_all(&repo_parent)?;
    let repo = gitlab_sim::fixtures::repo_with(&repo_parent, "repo", &[(".gitlab-ci.yml", crate::CI_YAML)]);
    let sim = gitlab_sim::Sim::start(gitlab_sim::SimConfig {
        token: SIM_TOKEN.into(),
        projects: vec![(PROJECT.into(), repo)],
        runners: 8,
        ..gitlab_sim::SimConfig::default()
    })
    .await
    .map_err(|e| Error::Sim(e.to_string()))?;

    let (hook_port, api_port) = (free_port()?, free_port()?);
    let config = daemon::write_config(&dir, hook_port, api_port, 30, PROJECT)?;
    let token = daemon::issue_token(&opts.cloudci, &config).await.map_err(Error::Cloudci)?;
    let mut serve = daemon::Serve::new(
        opts.cloudci.clone(),
        config,
        sim.url().to_owned(),
        SIM_TOKEN.to_owned(),
        opts.serve_log.clone(),
        dir.clone(),
    );
    serve.start().await.map_err(Error::Cloudci)?;
    let pid = serve.pid().ok_or_else(|| Error::Cloudci("serve has no pid".into()))?;
    let state = dir.join("state");
    let hook = crate::soak_load::Hook::read(&state, hook_port)?;
    let api = format!("http://127.0.0.1:{api_port}");

    // Idle, before any load.
    let rss_start_kib = probe::rss_kib(pid).unwrap_or(0);
    let fds_idle_start = probe::open_fds(pid).unwrap_or(0);
    let sim_port = sim.url().rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).unwrap_or(0);
    let ports = [(sim_port, "sim"), (hook_port, "hooks"), (api_port, "api")];
    let kinds_start = probe::fd_kinds(pid, &ports);

    let load = Arc::new(Load::default());
    let t0 = Instant::now();
    let mut tasks = vec![
        tokio::spawn(crate::soak_load::deliveries(hook, opts.delivery_rate, load.clone())),
        tokio::spawn(crate::soak_load::builds(api.clone(), token.clone(), opts.build_every_secs, load.clone())),
    ];
    for i in 0..opts.subscribers {
        tasks.push(tokio::spawn(crate::soak_load::subscriber(api.clone(), token.clone(), i as u64, load.clone())));
    }

    let mut samples = Vec::new();
    let mut file = std::fs::File::create(dir.join("soak.jsonl"))?;
    let end = t0 + Duration::from_secs_f64(opts.duration_secs);
    let mut next = t0;
    let mut all_latencies: Vec<(f64, u64)> = Vec::new();
    loop {
        next += Duration::from_secs_f64(opts.sample_secs.max(0.2));
        tokio::time::sleep_until(next.min(end).into()).await;
        let t = t0.elapsed().as_secs_f64();
        let window = std::mem::take(&mut *load.window.lock().unwrap_or_else(|e| e.into_inner()));
        all_latencies.extend(window.iter().map(|&us| (t, us)));
        let sample = Sample {
            t_secs: t,
            rss_kib: probe::rss_kib(pid).unwrap_or(0),
            fds: probe::open_fds(pid).unwrap_or(0),
            db_bytes: probe::files_bytes(&state, "events.db") + probe::files_bytes(&state, "builds.db"),
            state_bytes: probe::tree_bytes(&state),
            deliveries: load.deliveries.load(Ordering::Relaxed),
            delivery_errors: load.delivery_errors.load(Ordering::Relaxed),
            ingest_ms: quantiles(window),
            builds_started: load.builds_started.load(Ordering::Relaxed),
            subscriber_connects: load.connects.load(Ordering::Relaxed),
            events_received: load.events.load(Ordering::Relaxed),
        };
        use std::io::Write;
        writeln!(file, "{}", serde_json::to_string(&sample).unwrap_or_default())?;
        samples.push(sample);
        if Instant::now() >= end || !serve.running() {
            break;
        }
    }

    // Stop the load; wait (bounded) for every subscriber to leave, then for serve to close them.
    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
    }
    let finished = crate::soak_load::finished_builds(&api, &token).await.unwrap_or(0);
    // The sim's hook client keeps connections to `serve` open (as a keep-alive pool does), and
    // `serve` keeps some to the sim: without the sim, what is left open is `serve`'s own.
    drop(sim);
    // An event stream whose client left is closed at its next write: within a heartbeat.
    let idle_deadline = Instant::now() + Duration::from_secs(20);
    let mut fds_idle_end = probe::open_fds(pid).unwrap_or(0);
    while fds_idle_end > fds_idle_start && Instant::now() < idle_deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        fds_idle_end = probe::open_fds(pid).unwrap_or(0);
    }
    let kinds_end = probe::fd_kinds(pid, &ports);
    serve.terminate().await;

    let report = summarize(
        opts,
        samples,
        &all_latencies,
        rss_start_kib,
        ([fds_idle_start, fds_idle_end], [kinds_start, kinds_end]),
        &load,
        finished,
        dir.clone(),
        started,
    );
    std::fs::write(dir.join("summary.json"), serde_json::to_vec_pretty(&report).unwrap_or_default())?;
    Ok(report)
}

/// Median, p99 and max of latencies in µs, as ms.
fn quantiles(mut us: Vec<u64>) -> Option<[f64; 3]> {
    if us.is_empty() {
        return None;
    }
    us.sort_unstable();
    let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    Some([at(0.5), at(0.99), at(1.0)])
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
fn summarize(
    options: SoakOptions,
    samples: Vec<Sample>,
    latencies: &[(f64, u64)],
    rss_start_kib: u64,
    (fds_idle, fd_kinds): ([u64; 2], [BTreeMap<String, u64>; 2]),
    load: &Load,
    finished: u64,
    dir: PathBuf,
    started: Instant,
) -> SoakReport {
    let n = samples.len();
    let tenth = (n / 10).max(1);
    let warm_from = ((n as f64 * options.warmup) as usize).min(n.saturating_sub(1));
    let rss = |s: &[Sample]| median(s.iter().map(|s| s.rss_kib).collect());
    let rss_warm_kib = rss(&samples[warm_from..(warm_from + tenth).min(n)]);
    let rss_end_kib = rss(&samples[n.saturating_sub(tenth)..]);
    let span = options.duration_secs;
    let part = |from: f64, to: f64| {
        quantiles(latencies.iter().filter(|(t, _)| *t >= from && *t <= to).map(|(_, us)| *us).collect())
    };
    let first_last = match (part(0.0, span / 10.0), part(span * 0.9, f64::MAX)) {
        (Some(a), Some(b)) => Some([a[1], b[1]]),
        _ => None,
    };
    let growth = rss_end_kib.saturating_sub(rss_warm_kib);
    let fds = |s: &[Sample]| median(s.iter().map(|s| s.fds).collect());
    let fds_loaded = [fds(&samples[warm_from..(warm_from + tenth).min(n)]), fds(&samples[n.saturating_sub(tenth)..])];
    SoakReport {
        rss_start_kib,
        rss_warm_kib,
        rss_end_kib,
        rss_peak_kib: samples.iter().map(|s| s.rss_kib).max().unwrap_or(0),
        fds_idle_start: fds_idle[0],
        fds_idle_end: fds_idle[1],
        fds_peak: samples.iter().map(|s| s.fds).max().unwrap_or(0),
        db_bytes: [samples.first().map_or(0, |s| s.db_bytes), samples.last().map_or(0, |s| s.db_bytes)],
        ingest_ms: quantiles(latencies.iter().map(|(_, us)| *us).collect()),
        ingest_p99_first_last_ms: first_last,
        deliveries: [load.deliveries.load(Ordering::Relaxed), load.delivery_errors.load(Ordering::Relaxed)],
        builds: [load.builds_started.load(Ordering::Relaxed), finished],
        subscribers: [load.connects.load(Ordering::Relaxed), load.events.load(Ordering::Relaxed)],
        memory_flat: growth <= (16 * 1024).max(rss_warm_kib / 10),
        fds_flat: fds_idle[1] <= fds_idle[0] + 8 && fds_loaded[1] <= fds_loaded[0] + 8,
        fd_kinds,
        options,
        samples,
        dir,
        wall_secs: started.elapsed().as_secs_f64(),
    }
}

impl std::fmt::Display for SoakReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |kib: u64| kib as f64 / 1024.0;
        let ms = |q: Option<[f64; 3]>| {
            q.map_or("no samples".into(), |[m, p, x]| format!("median {m:.1} ms, p99 {p:.1} ms, max {x:.1} ms"))
        };
        writeln!(f, "cloudci soak: {:.0} s of load, {} samples", self.options.duration_secs, self.samples.len())?;
        writeln!(
            f,
            "  memory: RSS {:.1} MiB idle, {:.1} MiB warm, {:.1} MiB at the end, peak {:.1} MiB: {}",
            mib(self.rss_start_kib),
            mib(self.rss_warm_kib),
            mib(self.rss_end_kib),
            mib(self.rss_peak_kib),
            if self.memory_flat { "flat" } else { "GROWING" }
        )?;
        writeln!(
            f,
            "  fds: {} idle before, {} idle after, peak {}: {}",
            self.fds_idle_start,
            self.fds_idle_end,
            self.fds_peak,
            if self.fds_flat { "flat" } else { "LEAKING" }
        )?;
        let kinds =
            |k: &BTreeMap<String, u64>| k.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ");
        writeln!(f, "    idle before: {}", kinds(&self.fd_kinds[0]))?;
        writeln!(f, "    idle after:  {}", kinds(&self.fd_kinds[1]))?;
        writeln!(f, "  database: {:.1} MiB -> {:.1} MiB", mib(self.db_bytes[0] / 1024), mib(self.db_bytes[1] / 1024))?;
        writeln!(
            f,
            "  deliveries: {} accepted, {} not; ingest {}",
            self.deliveries[0],
            self.deliveries[1],
            ms(self.ingest_ms)
        )?;
        if let Some([a, b]) = self.ingest_p99_first_last_ms {
            writeln!(f, "  ingest p99: first tenth {a:.1} ms, last tenth {b:.1} ms")?;
        }
        writeln!(f, "  builds: {} started, {} finished", self.builds[0], self.builds[1])?;
        writeln!(f, "  subscribers: {} connections, {} events", self.subscribers[0], self.subscribers[1])?;
        write!(f, "  run directory: {}", self.dir.display())
    }
}
