//! `cloudci-chaos`: the measuring instrument for cloudci's central promise — every pipeline's and
//! job's final status reaches every subscriber, once, in order, whatever happens on the way.
//!
//! [`run`] starts gitlab-sim in process (a generated repository with a three-stage
//! `.gitlab-ci.yml`, delivery and API faults, a short hook auto-disable backoff), starts
//! `cloudci serve` as a real process, follows `GET /v1/events` with a subscriber that resumes by
//! `Last-Event-ID`, creates pipelines over time (a few cancelled and retried mid-run), and
//! disrupts `serve` on a schedule proportional to the run: two SIGKILLs with quick restarts, a
//! SIGSTOP longer than GitLab's 10 s delivery timeout, and an outage while pipelines start and
//! finish. At the end it compares what the subscriber saw with the sim's API and counts lost,
//! wrong, backwards and repeated events, and the time from GitLab's `finished_at` to the
//! subscriber.
//!
//! # Layout
//! - `sim_api`: the sim's REST API with retries (the sim injects API faults into every client).
//! - `daemon`: `cloudci serve` as a child process: start (wait for `local API at`), kill,
//!   stop/continue, terminate; its output goes to files in the run directory.
//! - `subscriber`: the SSE client that records every event and reconnects.
//! - `analysis`: the comparison with the sim's truth, and the failure list.
//! - [`Report`]: the figures, printable for people ([`std::fmt::Display`]) or as JSON.
//! - [`relay`]: the team relay's chaos run ([`relay::run_relay`]): three instances behind a
//!   proxy, PostgreSQL restarted and away, many subscribers with their users' access.
//! - [`soak`]: the other instrument — `serve` for an hour under steady load, its memory, file
//!   descriptors, database size and ingest latency sampled over time (`soak_load`: the load,
//!   `probe`: `/proc` and the state directory).

mod analysis;
mod daemon;
mod probe;
pub mod relay;
mod sim_api;
pub mod soak;
mod soak_load;
mod subscriber;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use analysis::{Counts, Failure, Latency};

/// The project the sim serves and cloudci follows.
const PROJECT: &str = "acme/firmware";
/// The sim's access token (a loopback-only sim; not a secret).
const SIM_TOKEN: &str = "chaos-sim-token";

/// The pipeline definition the sim runs: three stages, four short jobs; `test` fails when the
/// pipeline carries `CHAOS_FAIL=1` (and `deploy` is then skipped).
pub const CI_YAML: &str = r#"stages: [build, test, deploy]
build-a:
  stage: build
  script:
    - sleep 0.2
build-b:
  stage: build
  script:
    - sleep 0.3
test:
  stage: test
  script:
    - sleep 0.2
    - test "$CHAOS_FAIL" != "1"
deploy:
  stage: deploy
  script:
    - sleep 0.1
"#;

/// What to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Options {
    /// The `cloudci` executable to run as `cloudci serve`.
    pub cloudci: PathBuf,
    /// Pipelines to create.
    pub pipelines: usize,
    /// Pipelines created per second.
    pub rate: f64,
    /// The creation phase lasts at least this long (the disruptions need room), in seconds.
    pub min_duration_secs: f64,
    /// gitlab-sim fault spec for deliveries and its API (see `gitlab_sim::faults`); the harness
    /// adds `disable_backoff_ms` from [`Options::disable_backoff_ms`] unless the spec has one.
    pub faults: String,
    /// First hook auto-disable period, in ms (GitLab: 60,000).
    pub disable_backoff_ms: u64,
    /// Seed for the sim's faults and the harness's own choices (which pipelines fail, which are
    /// cancelled).
    pub seed: u64,
    /// Jobs the sim runs at once.
    pub runners: usize,
    /// Share of pipelines created with `CHAOS_FAIL=1` (their `test` job fails).
    pub fail_ratio: f64,
    /// Pipelines cancelled shortly after creation and then retried.
    pub cancel_retry: usize,
    /// Do the disruptions (false: faults only, a baseline).
    pub disrupt: bool,
    /// SIGKILLs of `serve`, each followed by a restart after `restart_after_ms`.
    pub kills: usize,
    /// How long after a SIGKILL `serve` is started again, in ms.
    pub restart_after_ms: u64,
    /// How long `serve` is stopped (SIGSTOP … SIGCONT), in seconds; 0 for none.
    pub stop_secs: f64,
    /// How long `serve` is down in the outage, in seconds; 0 for none.
    pub outage_secs: f64,
    /// `[webhook] reconcile_after` for `serve`, in seconds.
    pub reconcile_after: u64,
    /// After every pipeline finished: stop waiting for events after this long without one.
    pub quiet_secs: f64,
    /// After every pipeline finished: stop waiting for events after this long in any case.
    pub settle_timeout_secs: f64,
    /// Give up waiting for the sim's pipelines to finish after this long.
    pub finish_timeout_secs: f64,
    /// Where the run's files go (config, state, serve logs, events, truth, failures); a new
    /// directory under the system's temporary directory when `None`. Kept after the run.
    pub dir: Option<PathBuf>,
    /// `CLOUDCI_LOG` for `serve` (its stderr goes to the run directory).
    pub serve_log: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            cloudci: PathBuf::from("cloudci"),
            pipelines: 200,
            rate: 4.0,
            min_duration_secs: 75.0,
            faults: "drop=0.2,duplicate=0.1,reorder=0.2,delay=0..200,api_429=0.02,api_5xx=0.02".into(),
            disable_backoff_ms: 2000,
            seed: 1,
            runners: 12,
            fail_ratio: 0.1,
            cancel_retry: 5,
            disrupt: true,
            kills: 2,
            restart_after_ms: 1500,
            stop_secs: 15.0,
            outage_secs: 20.0,
            reconcile_after: 3,
            quiet_secs: 20.0,
            settle_timeout_secs: 120.0,
            finish_timeout_secs: 600.0,
            dir: None,
            serve_log: "info".into(),
        }
    }
}

/// One disruption that was carried out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Disruption {
    /// `sigkill`, `sigstop` or `outage`.
    pub what: String,
    /// Seconds after the first pipeline was created.
    pub at_secs: f64,
    /// When it began (wall clock, to compare with the sim's timestamps and serve's logs).
    pub at: DateTime<Utc>,
    /// How long `serve` was killed, stopped or absent, in seconds (until it answered again).
    pub down_secs: f64,
    /// Attempts it took to start `serve` again (0 for a SIGSTOP).
    pub start_attempts: u32,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The options it ran with.
    pub options: Options,
    /// When the first pipeline was created (wall clock).
    pub started_at: DateTime<Utc>,
    /// Pipelines on the sim at the end (the truth).
    pub pipelines: usize,
    /// Jobs on the sim at the end, retried ones included.
    pub jobs: usize,
    /// Pipelines the harness failed to create (after retries).
    pub create_failures: usize,
    /// Pipelines cancelled and retried.
    pub cancelled_and_retried: Vec<u64>,
    /// Pipelines not finished on the sim when the harness gave up waiting.
    pub unfinished_on_sim: usize,
    /// Events the subscriber received (all kinds).
    pub events: usize,
    /// Times the subscriber (re)connected.
    pub connects: u32,
    /// API calls of the harness that were answered 429/5xx or failed, and retried.
    pub api_retries: u64,
    /// Times `serve` was started (the first start included).
    pub serve_starts: u32,
    /// Starts of `serve` that exited or hung before saying `local API at`.
    pub serve_failed_starts: u32,
    /// The counts, for pipelines and jobs.
    pub counts: Counts,
    /// Time from the sim's pipeline `finished_at` to its final status at the subscriber.
    pub pipeline_latency: Latency,
    /// Time from the sim's job `finished_at` to its final status at the subscriber.
    pub job_latency: Latency,
    /// The disruptions carried out.
    pub disruptions: Vec<Disruption>,
    /// The hook's `alert_status` on the sim just before `serve` was stopped at the end.
    pub hook_alert_status: Option<String>,
    /// Seconds from the last pipeline finishing on the sim to the end of the wait for events.
    pub settle_secs: f64,
    /// The whole run, in seconds.
    pub wall_secs: f64,
    /// The run directory (`failures.json`, `events.jsonl`, `truth.json`, `serve-N.{out,err}`).
    pub dir: PathBuf,
    /// Lost and wrong objects by where their finish fell: `during outage`, `after sigkill`
    /// (between its end and the next disruption), `before any disruption`.
    pub lost_or_wrong_by_context: std::collections::BTreeMap<String, usize>,
    /// The first failures (all of them are in `failures.json`).
    pub failures: Vec<Failure>,
}

impl Report {
    /// True when the promise held: nothing lost, wrong, backwards or repeated, and every pipeline
    /// finished on the sim.
    pub fn clean(&self) -> bool {
        self.counts.total() == 0 && self.unfinished_on_sim == 0 && self.create_failures == 0
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.counts;
        writeln!(f, "cloudci chaos run: {} pipelines, {} jobs, {:.0} s", self.pipelines, self.jobs, self.wall_secs)?;
        writeln!(
            f,
            "  faults: {} (seed {}, hook backoff {} ms)",
            self.options.faults, self.options.seed, self.options.disable_backoff_ms
        )?;
        for d in &self.disruptions {
            writeln!(
                f,
                "  disruption: {:<7} at {:>5.1} s, down {:>4.1} s{}",
                d.what,
                d.at_secs,
                d.down_secs,
                if d.start_attempts > 1 { format!(" ({} start attempts)", d.start_attempts) } else { String::new() }
            )?;
        }
        writeln!(
            f,
            "  subscriber: {} events, {} connections; serve started {} times ({} failed starts); harness API retries {}",
            self.events, self.connects, self.serve_starts, self.serve_failed_starts, self.api_retries
        )?;
        if !self.cancelled_and_retried.is_empty() {
            writeln!(f, "  cancelled then retried: {:?}", self.cancelled_and_retried)?;
        }
        writeln!(f, "                 pipelines       jobs")?;
        let pct = |n: usize, of: usize| if of == 0 { 0.0 } else { 100.0 * n as f64 / of as f64 };
        writeln!(
            f,
            "  lost        {:>6} ({:>5.1}%) {:>6} ({:>5.1}%)",
            c.pipelines_lost,
            pct(c.pipelines_lost, self.pipelines),
            c.jobs_lost,
            pct(c.jobs_lost, self.jobs)
        )?;
        writeln!(f, "  wrong       {:>6}          {:>6}", c.pipelines_wrong, c.jobs_wrong)?;
        writeln!(f, "  backwards   {:>6}          {:>6}", c.pipelines_backwards, c.jobs_backwards)?;
        writeln!(f, "  repeated    {:>6}          {:>6}", c.pipelines_repeated, c.jobs_repeated)?;
        writeln!(f, "  seq received twice or out of order: {}", c.seq_repeated)?;
        let lat = |l: &Latency| match (l.median_ms, l.p99_ms, l.max_ms) {
            (Some(m), Some(p), Some(x)) => {
                format!("median {:.2} s, p99 {:.2} s, max {:.2} s (n={})", m / 1e3, p / 1e3, x / 1e3, l.samples)
            }
            _ => "no samples".into(),
        };
        writeln!(f, "  latency finished_at -> subscriber: pipelines {}", lat(&self.pipeline_latency))?;
        writeln!(f, "                                     jobs      {}", lat(&self.job_latency))?;
        if self.unfinished_on_sim > 0 || self.create_failures > 0 {
            writeln!(
                f,
                "  harness: {} pipelines unfinished on the sim, {} failed creations",
                self.unfinished_on_sim, self.create_failures
            )?;
        }
        if let Some(s) = &self.hook_alert_status {
            writeln!(f, "  hook alert_status at the end: {s}")?;
        }
        writeln!(f, "  waited {:.1} s for events after the last pipeline finished", self.settle_secs)?;
        if !self.lost_or_wrong_by_context.is_empty() {
            let parts: Vec<String> = self.lost_or_wrong_by_context.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            writeln!(f, "  lost or wrong, by where the sim finished them: {}", parts.join(", "))?;
        }
        for failure in self.failures.iter().take(15) {
            writeln!(f, "  - {failure}")?;
        }
        if c.total() > self.failures.len().min(15) {
            writeln!(f, "  ... all failures in {}", self.dir.join("failures.json").display())?;
        }
        write!(f, "  run directory: {}", self.dir.display())
    }
}

/// Why a run could not be carried out (as opposed to what it measured).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The run directory, the repository or a file.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The sim did not start.
    #[error("gitlab-sim: {0}")]
    Sim(String),
    /// `cloudci` did not do what the harness needs (start, issue a token).
    #[error("cloudci: {0}")]
    Cloudci(String),
    /// The relay run needs PostgreSQL (`initdb`, `pg_ctl`), which is not installed.
    #[error("PostgreSQL is not installed (apt-get install postgresql)")]
    NoPostgres,
}

/// A small deterministic generator (splitmix64) for the harness's own choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
}

/// A free loopback port (bound, then released), kept for every start of `serve`.
/// The run's folder (`dir`, created if needed, or a new kept temporary one named `prefix…`), once
/// `cloudci` is known to be a file.
fn run_dir(dir: Option<&std::path::Path>, prefix: &str, cloudci: &std::path::Path) -> Result<PathBuf, Error> {
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.to_path_buf()
        }
        None => tempfile::Builder::new().prefix(prefix).tempdir()?.keep(),
    };
    if !cloudci.is_file() {
        return Err(Error::Cloudci(format!(
            "{} is not a file (build it: cargo build --release --bin cloudci)",
            cloudci.display()
        )));
    }
    Ok(dir)
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Runs the chaos test and reports what it measured. Every wait has a deadline; `serve` and the
/// sim are stopped before it returns.
pub async fn run(opts: Options) -> Result<Report, Error> {
    cloudci_gitlab::install_tls_provider();
    let started = Instant::now();
    let dir = run_dir(opts.dir.as_deref(), "cloudci-chaos-", &opts.cloudci)?;

    // The sim: a generated repository, faults, a short auto-disable backoff.
    let repo_parent = dir.join("git");
    if repo_parent.join("repo").exists() {
        std::fs::remove_dir_all(repo_parent.join("repo"))?;
    }
    std::fs::create_dir_all(&repo_parent)?;
    let repo = gitlab_sim::fixtures::repo_with(&repo_parent, "repo", &[(".gitlab-ci.yml", CI_YAML)]);
    let mut spec = opts.faults.clone();
    if !spec.contains("disable_backoff_ms") {
        if !spec.trim().is_empty() {
            spec.push(',');
        }
        spec.push_str(&format!("disable_backoff_ms={}", opts.disable_backoff_ms));
    }
    let faults: gitlab_sim::FaultSpec = spec.parse().map_err(Error::Sim)?;
    let sim = gitlab_sim::Sim::start(gitlab_sim::SimConfig {
        token: SIM_TOKEN.into(),
        projects: vec![(PROJECT.into(), repo)],
        faults,
        seed: opts.seed,
        runners: opts.runners,
        ..gitlab_sim::SimConfig::default()
    })
    .await
    .map_err(|e| Error::Sim(e.to_string()))?;
    let api = Arc::new(sim_api::SimApi::new(sim.url(), SIM_TOKEN));

    // cloudci serve on fixed loopback ports.
    let (hook_port, api_port) = (free_port()?, free_port()?);
    let config = daemon::write_config(&dir, hook_port, api_port, opts.reconcile_after, PROJECT)?;
    let token = daemon::issue_token(&opts.cloudci, &config).await.map_err(Error::Cloudci)?;
    let serve = Arc::new(tokio::sync::Mutex::new(daemon::Serve::new(
        opts.cloudci.clone(),
        config,
        sim.url().to_owned(),
        SIM_TOKEN.to_owned(),
        opts.serve_log.clone(),
        dir.clone(),
    )));
    serve.lock().await.start().await.map_err(Error::Cloudci)?;
    let sub = subscriber::Subscriber::start(format!("http://127.0.0.1:{api_port}/v1/events"), token);

    // The creation phase and the disruptions, at once.
    let duration = (opts.pipelines as f64 / opts.rate.max(0.01)).max(opts.min_duration_secs);
    let t0 = Instant::now();
    let started_at = Utc::now();
    let creator = tokio::spawn(create_pipelines(api.clone(), opts.clone(), t0));
    let disruptor = tokio::spawn(disrupt(serve.clone(), opts.clone(), t0, duration));
    let (created, cancelled) = creator.await.unwrap_or_default();
    let disruptions = disruptor.await.unwrap_or_default();
    // Whatever happened, serve must be up for the end.
    if !serve.lock().await.running() {
        let _ = serve.lock().await.start().await;
    }

    // Wait for the sim to finish every pipeline.
    let finish_deadline = Instant::now() + Duration::from_secs_f64(opts.finish_timeout_secs);
    let mut unfinished = usize::MAX;
    while Instant::now() < finish_deadline {
        match api.unfinished_pipelines(PROJECT).await {
            Ok(0) => {
                unfinished = 0;
                break;
            }
            Ok(n) => unfinished = n,
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let sim_done = Instant::now();
    let truth = api.truth(PROJECT).await.map_err(Error::Sim)?;
    let unfinished_on_sim = if unfinished == usize::MAX {
        truth.pipelines.iter().filter(|p| !analysis::completed(&p.status)).count()
    } else {
        unfinished
    };

    // Wait for the subscriber: every final status arrived, or quiet, or the deadline.
    // Quiet counts from the later of the last event and the start of this wait.
    let settle_start = Instant::now();
    let settle_deadline = settle_start + Duration::from_secs_f64(opts.settle_timeout_secs);
    loop {
        let events = sub.snapshot();
        if analysis::all_final_arrived(&truth, &events) {
            break;
        }
        let quiet = sub.quiet_for().min(settle_start.elapsed());
        if quiet >= Duration::from_secs_f64(opts.quiet_secs) || Instant::now() >= settle_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let settle_secs = sim_done.elapsed().as_secs_f64();
    let hook_alert_status = api.hook_alert_status(PROJECT).await;
    let events = sub.snapshot();
    let stats = sub.stop();
    serve.lock().await.terminate().await;
    let (serve_starts, serve_failed_starts) = {
        let s = serve.lock().await;
        (s.starts, s.failed_starts)
    };
    drop(sim);

    let mut analysed = analysis::analyse(&truth, &events);
    analysis::place(&mut analysed.failures, &disruptions);
    write_files(&dir, &truth, &events, &analysed.failures)?;
    let mut lost_or_wrong_by_context = std::collections::BTreeMap::new();
    for f in analysed.failures.iter().filter(|f| f.what == "lost" || f.what == "wrong") {
        let c = f.context.as_deref().unwrap_or("unknown");
        let bucket = match c.split_once(" s after ") {
            Some((_, what)) => format!("after {what}"),
            None => c.to_owned(),
        };
        *lost_or_wrong_by_context.entry(bucket).or_insert(0) += 1;
    }
    Ok(Report {
        options: opts,
        started_at,
        pipelines: truth.pipelines.len(),
        jobs: truth.pipelines.iter().map(|p| p.jobs.len()).sum(),
        create_failures: created.iter().filter(|c| c.is_none()).count(),
        cancelled_and_retried: cancelled,
        unfinished_on_sim,
        events: events.len(),
        connects: stats.connects,
        api_retries: api.retries(),
        serve_starts,
        serve_failed_starts,
        counts: analysed.counts,
        pipeline_latency: analysed.pipeline_latency,
        job_latency: analysed.job_latency,
        disruptions,
        hook_alert_status,
        settle_secs,
        wall_secs: started.elapsed().as_secs_f64(),
        dir,
        lost_or_wrong_by_context,
        failures: analysed.failures.into_iter().take(50).collect(),
    })
}

fn write_files(
    dir: &std::path::Path,
    truth: &analysis::Truth,
    events: &[subscriber::Received],
    failures: &[Failure],
) -> std::io::Result<()> {
    std::fs::write(dir.join("truth.json"), serde_json::to_vec_pretty(truth).unwrap_or_default())?;
    std::fs::write(dir.join("failures.json"), serde_json::to_vec_pretty(failures).unwrap_or_default())?;
    let mut lines = String::new();
    for e in events {
        lines.push_str(&serde_json::to_string(e).unwrap_or_default());
        lines.push('\n');
    }
    std::fs::write(dir.join("events.jsonl"), lines)
}

/// Creates the pipelines at `opts.rate` per second (each on its own task, so a throttled call
/// holds up no other); cancels and retries a few. Returns the created ids (None: gave up) and the
/// cancelled-and-retried ones.
async fn create_pipelines(api: Arc<sim_api::SimApi>, opts: Options, t0: Instant) -> (Vec<Option<u64>>, Vec<u64>) {
    let mut rng = Rng(opts.seed ^ 0xC4A0_5EED);
    let n = opts.pipelines;
    let cancel_every = n.checked_div(opts.cancel_retry).map_or(usize::MAX, |k| k.max(1));
    let mut tasks = Vec::new();
    for i in 0..n {
        let at = t0 + Duration::from_secs_f64(i as f64 / opts.rate.max(0.01));
        tokio::time::sleep_until(at.into()).await;
        let fail = rng.chance(opts.fail_ratio);
        // Spread the cancelled ones over the run, never on a pipeline meant to fail.
        let cancel = !fail && i % cancel_every == cancel_every / 2 && i / cancel_every < opts.cancel_retry;
        let delay_ms = 300 + rng.next() % 600;
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut vars = vec![("CHAOS_N".to_owned(), i.to_string())];
            if fail {
                vars.push(("CHAOS_FAIL".to_owned(), "1".to_owned()));
            }
            let id = api.create_pipeline(PROJECT, "main", &vars).await.ok()?;
            if cancel {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                let _ = api.post(&format!("/projects/{}/pipelines/{id}/cancel", sim_api::enc(PROJECT))).await;
                tokio::time::sleep(Duration::from_millis(1000 + delay_ms)).await;
                let _ = api.post(&format!("/projects/{}/pipelines/{id}/retry", sim_api::enc(PROJECT))).await;
            }
            Some((id, cancel))
        }));
    }
    let mut created = Vec::new();
    let mut cancelled = Vec::new();
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(120), t).await {
            Ok(Ok(Some((id, c)))) => {
                created.push(Some(id));
                if c {
                    cancelled.push(id);
                }
            }
            _ => created.push(None),
        }
    }
    (created, cancelled)
}

/// The disruptions, at fractions of the creation phase, each after the previous one ended.
async fn disrupt(
    serve: Arc<tokio::sync::Mutex<daemon::Serve>>,
    opts: Options,
    t0: Instant,
    duration: f64,
) -> Vec<Disruption> {
    let mut done = Vec::new();
    if !opts.disrupt {
        return done;
    }
    // (what, fraction of the creation phase)
    let mut plan: Vec<(&str, f64)> = Vec::new();
    let kill_fractions = [0.12, 0.55, 0.85, 0.95];
    for f in kill_fractions.iter().take(opts.kills) {
        plan.push(("sigkill", *f));
    }
    if opts.stop_secs > 0.0 {
        plan.push(("sigstop", 0.25));
    }
    if opts.outage_secs > 0.0 {
        plan.push(("outage", 0.68));
    }
    plan.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut not_before = t0;
    for (what, fraction) in plan {
        let at = (t0 + Duration::from_secs_f64(duration * fraction)).max(not_before);
        tokio::time::sleep_until(at.into()).await;
        let at_secs = t0.elapsed().as_secs_f64();
        let at_wall = Utc::now();
        let begun = Instant::now();
        let mut attempts = 0;
        match what {
            "sigstop" => {
                serve.lock().await.signal("STOP");
                tokio::time::sleep(Duration::from_secs_f64(opts.stop_secs)).await;
                serve.lock().await.signal("CONT");
            }
            _ => {
                serve.lock().await.kill().await;
                let down = if what == "outage" {
                    Duration::from_secs_f64(opts.outage_secs)
                } else {
                    Duration::from_millis(opts.restart_after_ms)
                };
                tokio::time::sleep(down).await;
                let mut s = serve.lock().await;
                let before = s.starts;
                let _ = s.start().await;
                attempts = s.starts - before;
            }
        }
        done.push(Disruption {
            what: what.to_owned(),
            at_secs,
            at: at_wall,
            down_secs: begun.elapsed().as_secs_f64(),
            start_attempts: attempts,
        });
        not_before = Instant::now() + Duration::from_secs(3);
    }
    done
}
