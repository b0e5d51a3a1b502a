//! The relay chaos run: the team relay's promise under fire. Three (`instances`) `cloudci
//! relay` processes behind a TCP proxy on loopback, one throwaway PostgreSQL, gitlab-sim with
//! delivery faults and two projects, and many SSE subscribers spread over the instances by the
//! proxy, each on a session of a sim user with its own member levels (alice Reporter on both
//! projects, bob Developer on one and Guest on the other, carol Guest only, eve Reporter on both
//! until she is removed from one mid-run). Meanwhile: `kill -9` of a random instance every
//! `kill_every_secs` and its restart, one PostgreSQL immediate shutdown and restart, one
//! PostgreSQL outage of `pg_outage_secs`. Counted per subscriber against the sim's final truth:
//! lost, wrong, duplicated, out-of-order and forbidden events; and from the sim's delivery log,
//! 4xx answers (must be none) and 5xx outside the PostgreSQL outages (must be none).
//!
//! # Layout
//! - `proxy`: the load balancer.
//! - `instances`: relay processes, their launch flags and shared secrets.
//! - `count`: the per-subscriber counts and GitLab's answers.

mod count;
mod instances;
mod proxy;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use count::{Answers, SubscriberCounts};

use crate::{Disruption, Error, Rng, free_port, sim_api, subscriber};

/// The projects (ids 1 and 2 on the sim).
const PROJECTS: [&str; 2] = ["acme/firmware", "acme/secret"];
/// The sim's users (ids 2.. in order) and their tokens; root's is [`crate::SIM_TOKEN`].
const USERS: [(&str, &str); 4] = [
    ("alice", "alice-chaos-token"),
    ("bob", "bob-chaos-token"),
    ("carol", "carol-chaos-token"),
    ("eve", "eve-chaos-token"),
];
/// Memberships: who may read what (Reporter or more reads).
const MEMBERS: [&str; 6] = [
    "acme/firmware=alice:reporter",
    "acme/secret=alice:reporter",
    "acme/firmware=bob:developer",
    "acme/secret=bob:guest",
    "acme/firmware=carol:guest",
    "acme/firmware=eve:reporter",
];
/// eve's membership of acme/secret, removed mid-run (user 5, project 2).
const EVE_SECRET: &str = "acme/secret=eve:reporter";
const EVE_ID: u64 = 5;

/// What to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayOptions {
    /// The `cloudci` executable.
    pub cloudci: PathBuf,
    /// Relay instances.
    pub instances: usize,
    /// SSE subscribers (the first is eve's, the others alice's, bob's and carol's in turn).
    pub subscribers: usize,
    /// Pipelines to create (two in three on acme/firmware).
    pub pipelines: usize,
    /// Pipelines created per second.
    pub rate: f64,
    /// The creation phase lasts at least this long, in seconds.
    pub min_duration_secs: f64,
    /// gitlab-sim's fault spec (deliveries and API); `disable_backoff_ms` is added.
    pub faults: String,
    /// First hook auto-disable period, in ms (GitLab: 60,000).
    pub disable_backoff_ms: u64,
    /// Seed for the faults and the harness's choices.
    pub seed: u64,
    /// Jobs the sim runs at once.
    pub runners: usize,
    /// Share of pipelines whose `test` job fails.
    pub fail_ratio: f64,
    /// Seconds between two `kill -9`s of a random instance (0: none).
    pub kill_every_secs: f64,
    /// How long after a `kill -9` the instance is started again, in ms.
    pub restart_after_ms: u64,
    /// One PostgreSQL immediate shutdown and restart (at 30 % of the creation phase).
    pub pg_restart: bool,
    /// One PostgreSQL outage this long (at 60 %), in seconds; 0 for none.
    pub pg_outage_secs: f64,
    /// Remove eve from acme/secret at 45 % of the creation phase.
    pub revoke: bool,
    /// The relays' `--access-ttl`, in seconds.
    pub access_ttl_secs: u64,
    /// The relays' `--reconcile-after`, `--catch-up-every` and `--hook-check`, in seconds.
    pub reconcile_after_secs: u64,
    /// See [`RelayOptions::reconcile_after_secs`].
    pub catch_up_every_secs: u64,
    /// See [`RelayOptions::reconcile_after_secs`].
    pub hook_check_secs: u64,
    /// At the end: stop waiting after this long without an event at any subscriber.
    pub quiet_secs: f64,
    /// At the end: stop waiting after this long in any case.
    pub settle_timeout_secs: f64,
    /// Give up waiting for the sim's pipelines after this long.
    pub finish_timeout_secs: f64,
    /// The run's files; a new temporary directory when `None` (kept).
    pub dir: Option<PathBuf>,
    /// `CLOUDCI_LOG` for the relays.
    pub relay_log: String,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            cloudci: PathBuf::from("cloudci"),
            instances: 3,
            subscribers: 200,
            pipelines: 1000,
            rate: 4.0,
            min_duration_secs: 120.0,
            faults: "drop=0.1,duplicate=0.1,reorder=0.2,delay=0..200,lost=0.02,api_429=0.01,api_5xx=0.01".into(),
            disable_backoff_ms: 2000,
            seed: 1,
            runners: 12,
            fail_ratio: 0.1,
            kill_every_secs: 20.0,
            restart_after_ms: 1500,
            pg_restart: true,
            pg_outage_secs: 30.0,
            revoke: true,
            access_ttl_secs: 5,
            reconcile_after_secs: 3,
            catch_up_every_secs: 10,
            hook_check_secs: 5,
            quiet_secs: 30.0,
            settle_timeout_secs: 180.0,
            finish_timeout_secs: 900.0,
            dir: None,
            relay_log: "info".into(),
        }
    }
}

/// What a relay run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayReport {
    /// The options.
    pub options: RelayOptions,
    /// Pipelines and jobs on the sim at the end.
    pub pipelines: usize,
    /// See [`RelayReport::pipelines`].
    pub jobs: usize,
    /// Pipelines the harness could not create, and those unfinished when it gave up.
    pub create_failures: usize,
    /// See [`RelayReport::create_failures`].
    pub unfinished_on_sim: usize,
    /// What was done to the instances and PostgreSQL.
    pub disruptions: Vec<Disruption>,
    /// Instance starts (first ones included) and failed starts.
    pub relay_starts: u32,
    /// See [`RelayReport::relay_starts`].
    pub relay_failed_starts: u32,
    /// Every subscriber's counts.
    pub subscribers: Vec<SubscriberCounts>,
    /// Sums over the subscribers.
    pub totals: SubscriberCounts,
    /// Seconds from eve's removal to the last acme/secret event she received (none: `None`).
    pub revoked_last_event_after_secs: Option<f64>,
    /// GitLab's view of the relay's answers.
    pub answers: Answers,
    /// Seconds from the last pipeline finishing to the end of the wait for events.
    pub settle_secs: f64,
    /// The whole run.
    pub wall_secs: f64,
    /// The run directory.
    pub dir: PathBuf,
}

impl RelayReport {
    /// True when the promise held.
    pub fn clean(&self) -> bool {
        self.totals.bad() == 0
            && self.answers.client_errors == 0
            && self.answers.server_errors_outside_outages == 0
            && self.unfinished_on_sim == 0
            && self.create_failures == 0
    }
}

impl std::fmt::Display for RelayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "cloudci relay chaos run: {} pipelines, {} jobs, {:.0} s",
            self.pipelines, self.jobs, self.wall_secs
        )?;
        writeln!(
            f,
            "  {} instances, {} subscribers; faults {} (seed {})",
            o.instances, o.subscribers, o.faults, o.seed
        )?;
        for d in &self.disruptions {
            writeln!(f, "  disruption: {:<12} at {:>6.1} s, {:>5.1} s", d.what, d.at_secs, d.down_secs)?;
        }
        writeln!(
            f,
            "  relay starts {} ({} failed while PostgreSQL was away or a port busy)",
            self.relay_starts, self.relay_failed_starts
        )?;
        let t = &self.totals;
        writeln!(
            f,
            "  over all subscribers: {} events ({} from GitLab's API), {} connections; lost {}, wrong {}, duplicated {}, out of order {}, repeated {}, forbidden {}",
            t.events, t.from_api, t.connects, t.lost, t.wrong, t.duplicated, t.out_of_order, t.repeated, t.forbidden
        )?;
        for s in self.subscribers.iter().filter(|s| s.bad() > 0).take(10) {
            writeln!(f, "  - {s:?}")?;
        }
        if let Some(s) = self.revoked_last_event_after_secs {
            writeln!(
                f,
                "  revocation: eve's last acme/secret event {s:.1} s after her removal (TTL {} s)",
                o.access_ttl_secs
            )?;
        }
        let a = &self.answers;
        writeln!(
            f,
            "  GitLab's log: {} attempts, {} 2xx, {} 4xx, {} 5xx ({} outside PostgreSQL outages), {} unanswered",
            a.attempts, a.ok, a.client_errors, a.server_errors, a.server_errors_outside_outages, a.no_answer
        )?;
        if self.unfinished_on_sim > 0 || self.create_failures > 0 {
            writeln!(
                f,
                "  harness: {} unfinished on the sim, {} failed creations",
                self.unfinished_on_sim, self.create_failures
            )?;
        }
        writeln!(f, "  waited {:.1} s for events after the last pipeline finished", self.settle_secs)?;
        write!(f, "  run directory: {}", self.dir.display())
    }
}

/// Which user a subscriber is: eve first, then alice, bob and carol in turn.
fn user_of(i: usize) -> usize {
    if i == 0 { 3 } else { (i - 1) % 3 }
}

/// Runs the relay chaos test. [`Error::NoPostgres`] when PostgreSQL is not installed.
pub async fn run_relay(opts: RelayOptions) -> Result<RelayReport, Error> {
    cloudci_gitlab::install_tls_provider();
    let started = Instant::now();
    let dir = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => tempfile::Builder::new().prefix("cloudci-relay-chaos-").tempdir()?.keep(),
    };
    if !opts.cloudci.is_file() {
        return Err(Error::Cloudci(format!(
            "{} is not a file (cargo build --release --bin cloudci)",
            opts.cloudci.display()
        )));
    }
    let pg = Arc::new(match cloudci_relay::ScratchCluster::start() {
        Ok(c) => c,
        Err(cloudci_relay::ScratchError::NotInstalled) => return Err(Error::NoPostgres),
        Err(e) => return Err(Error::Sim(format!("PostgreSQL: {e}"))),
    });

    let repos = dir.join("git");
    if repos.exists() {
        std::fs::remove_dir_all(&repos)?;
    }
    std::fs::create_dir_all(&repos)?;
    let projects = PROJECTS
        .iter()
        .map(|p| {
            let name = p.rsplit('/').next().unwrap_or("repo");
            (p.to_string(), gitlab_sim::fixtures::repo_with(&repos, name, &[(".gitlab-ci.yml", crate::CI_YAML)]))
        })
        .collect();
    let spec = format!("{},disable_backoff_ms={}", opts.faults.trim_end_matches(','), opts.disable_backoff_ms);
    let bad = |s: &str, e: gitlab_sim::AccessError| Error::Sim(format!("{s}: {e}"));
    let users = USERS.iter().map(|(u, t)| format!("{u}={t}").parse().map_err(|e| bad(u, e)));
    let members = MEMBERS.iter().chain([&EVE_SECRET]).map(|m| m.parse().map_err(|e| bad(m, e)));
    let sim = gitlab_sim::Sim::start(gitlab_sim::SimConfig {
        token: crate::SIM_TOKEN.into(),
        users: users.collect::<Result<_, _>>()?,
        members: members.collect::<Result<_, _>>()?,
        projects,
        faults: spec.parse().map_err(Error::Sim)?,
        seed: opts.seed,
        runners: opts.runners,
        ..gitlab_sim::SimConfig::default()
    })
    .await
    .map_err(|e| Error::Sim(e.to_string()))?;
    let api = Arc::new(sim_api::SimApi::new(sim.url(), crate::SIM_TOKEN));
    progress(started, "sim and PostgreSQL up");

    // The instances behind the proxy.
    let mut ports = Vec::new();
    for _ in 0..opts.instances {
        ports.push((free_port()?, free_port()?));
    }
    let localhost = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
    let public = proxy::Proxy::start(ports.iter().map(|p| localhost(p.0)).collect()).await?;
    let subscriber_api = proxy::Proxy::start(ports.iter().map(|p| localhost(p.1)).collect()).await?;
    let secs = |s: u64| format!("{s}s");
    let launch = instances::Launch {
        exe: opts.cloudci.clone(),
        database_url: pg.url(),
        secrets: instances::write_secrets(&dir, crate::SIM_TOKEN)?,
        gitlab_url: sim.url().to_owned(),
        public_url: format!("http://{}", public.addr),
        projects: PROJECTS.iter().map(|p| p.to_string()).collect(),
        flags: vec![
            "--access-ttl".into(),
            secs(opts.access_ttl_secs),
            "--session-ttl".into(),
            "12h".into(),
            "--reconcile-after".into(),
            secs(opts.reconcile_after_secs),
            "--catch-up-every".into(),
            secs(opts.catch_up_every_secs),
            "--hook-check".into(),
            secs(opts.hook_check_secs),
        ],
        log: opts.relay_log.clone(),
        dir: dir.clone(),
    };
    let mut relays = Vec::new();
    for (i, (p, a)) in ports.iter().enumerate() {
        let mut r = instances::Instance::new(i, *p, *a);
        r.start(&launch, Duration::from_secs(60)).await.map_err(Error::Cloudci)?;
        relays.push(Arc::new(tokio::sync::Mutex::new(r)));
    }
    // The leader installs the team's hooks.
    progress(started, "instances up");
    let hooks_deadline = Instant::now() + Duration::from_secs(30);
    for p in PROJECTS {
        while api.hook_alert_status(p).await.is_none() {
            if Instant::now() > hooks_deadline {
                return Err(Error::Cloudci(format!("no relay installed a hook on {p} in 30 s")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // Subscribers, each on a session of its user, spread over the instances by the proxy.
    progress(started, "hooks installed");
    let http =
        reqwest::Client::builder().timeout(Duration::from_secs(15)).build().map_err(|e| Error::Sim(e.to_string()))?;
    let api_url = format!("http://{}", subscriber_api.addr);
    let mut subs = Vec::new();
    for i in 0..opts.subscribers {
        let (_, gitlab_token) = USERS[user_of(i)];
        let resp = http
            .post(format!("{api_url}/v1/sessions"))
            .header("PRIVATE-TOKEN", gitlab_token)
            .send()
            .await
            .map_err(|e| Error::Cloudci(format!("POST /v1/sessions: {e}")))?;
        let v: serde_json::Value = resp.json().await.map_err(|e| Error::Cloudci(format!("POST /v1/sessions: {e}")))?;
        let token = v["token"].as_str().ok_or_else(|| Error::Cloudci(format!("POST /v1/sessions: {v}")))?;
        subs.push(subscriber::Subscriber::start_with(
            format!("{api_url}/v1/events?since=0"),
            token.to_owned(),
            Duration::from_secs(2),
        ));
    }
    let connected = Instant::now() + Duration::from_secs(30);
    while subs.iter().any(|s| s.connects() == 0) && Instant::now() < connected {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Pipelines and disruptions at once.
    progress(started, "subscribers connected");
    let duration = (opts.pipelines as f64 / opts.rate.max(0.01)).max(opts.min_duration_secs);
    let t0 = Instant::now();
    let creator = tokio::spawn(create(api.clone(), opts.clone(), t0));
    let disruptor = tokio::spawn(disrupt(
        relays.clone(),
        launch.clone(),
        pg.clone(),
        sim.url().to_owned(),
        opts.clone(),
        t0,
        duration,
    ));
    let created = creator.await.unwrap_or_default();
    let (disruptions, down, revoked_at) = disruptor.await.unwrap_or_default();
    for r in &relays {
        let mut r = r.lock().await;
        if !r.running() {
            let _ = r.start(&launch, Duration::from_secs(60)).await;
        }
    }

    let finish_deadline = Instant::now() + Duration::from_secs_f64(opts.finish_timeout_secs);
    progress(started, "creation and disruptions over");
    let mut unfinished = usize::MAX;
    while Instant::now() < finish_deadline {
        let mut n = 0;
        for p in PROJECTS {
            n += api.unfinished_pipelines(p).await.unwrap_or(usize::MAX / 4);
        }
        unfinished = n;
        if n == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let sim_done = Instant::now();
    let mut truths = Vec::new();
    for (i, p) in PROJECTS.iter().enumerate() {
        truths.push((i as u64 + 1, api.truth(p).await.map_err(Error::Sim)?));
    }
    let allowed: Vec<count::Allowed> = (0..opts.subscribers)
        .map(|i| {
            let ttl = chrono::Duration::seconds(opts.access_ttl_secs as i64 + 1);
            match user_of(i) {
                0 => count::Allowed { projects: [1, 2].into(), until: None },
                1 => count::Allowed { projects: [1].into(), until: None },
                2 => count::Allowed { projects: BTreeSet::new(), until: None },
                _ => match revoked_at {
                    Some(at) => count::Allowed { projects: [1].into(), until: Some((2, at + ttl)) },
                    None => count::Allowed { projects: [1, 2].into(), until: None },
                },
            }
        })
        .collect();
    let truth_for: Vec<crate::analysis::Truth> =
        allowed.iter().map(|a| count::truth_of(&truths, &a.projects)).collect();

    let settle_start = Instant::now();
    progress(started, "the sim finished");
    let settle_deadline = settle_start + Duration::from_secs_f64(opts.settle_timeout_secs);
    loop {
        let done = subs.iter().zip(&truth_for).all(|(s, t)| s.with_events(|e| count::complete(e, t)));
        let quiet = subs.iter().map(|s| s.quiet_for()).min().unwrap_or_default().min(settle_start.elapsed());
        if done || quiet >= Duration::from_secs_f64(opts.quiet_secs) || Instant::now() >= settle_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settle_secs = sim_done.elapsed().as_secs_f64();

    let mut counts = Vec::new();
    progress(started, "settled");
    let mut revoked_last = None;
    for (i, s) in subs.iter().enumerate() {
        let (user, connects) = (USERS[user_of(i)].0, s.connects());
        let c = s.with_events(|e| {
            if i == 0
                && let Some(at) = revoked_at
            {
                revoked_last = e
                    .iter()
                    .filter(|e| e.project_id == Some(2))
                    .map(|e| e.received)
                    .max()
                    .map(|last| (last - at).num_milliseconds() as f64 / 1e3);
            }
            count::count(user, connects, e, &truth_for[i], &allowed[i])
        });
        counts.push(c);
    }
    for s in subs {
        s.stop();
    }
    let (mut starts, mut failed) = (0, 0);
    for r in &relays {
        let mut r = r.lock().await;
        r.terminate().await;
        starts += r.starts;
        failed += r.failed_starts;
    }
    let answers = count::answers(&sim.delivery_outcomes(), &down);
    drop(sim);
    let mut totals = SubscriberCounts { user: "all".into(), ..Default::default() };
    for c in &counts {
        totals.events += c.events;
        totals.connects += c.connects;
        totals.from_api += c.from_api;
        totals.lost += c.lost;
        totals.wrong += c.wrong;
        totals.duplicated += c.duplicated;
        totals.out_of_order += c.out_of_order;
        totals.repeated += c.repeated;
        totals.forbidden += c.forbidden;
    }
    std::fs::write(dir.join("subscribers.json"), serde_json::to_vec_pretty(&counts).unwrap_or_default())?;
    Ok(RelayReport {
        options: opts,
        pipelines: truths.iter().map(|(_, t)| t.pipelines.len()).sum(),
        jobs: truths.iter().flat_map(|(_, t)| &t.pipelines).map(|p| p.jobs.len()).sum(),
        create_failures: created.iter().filter(|c| !**c).count(),
        unfinished_on_sim: if unfinished == usize::MAX { 0 } else { unfinished },
        disruptions,
        relay_starts: starts,
        relay_failed_starts: failed,
        subscribers: counts,
        totals,
        revoked_last_event_after_secs: revoked_last,
        answers,
        settle_secs,
        wall_secs: started.elapsed().as_secs_f64(),
        dir,
    })
}

/// A line on stderr: where a long run is.
fn progress(started: Instant, what: &str) {
    eprintln!("relay-chaos: {:>6.1} s: {what}", started.elapsed().as_secs_f64());
}

/// Creates the pipelines (two in three on acme/firmware); true for each one created.
async fn create(api: Arc<sim_api::SimApi>, opts: RelayOptions, t0: Instant) -> Vec<bool> {
    let mut rng = Rng(opts.seed ^ 0x5E1A_7C4A);
    let mut tasks = Vec::new();
    for i in 0..opts.pipelines {
        tokio::time::sleep_until((t0 + Duration::from_secs_f64(i as f64 / opts.rate.max(0.01))).into()).await;
        let project = PROJECTS[usize::from(i % 3 == 2)];
        let fail = rng.chance(opts.fail_ratio);
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut vars = vec![("CHAOS_N".to_owned(), i.to_string())];
            if fail {
                vars.push(("CHAOS_FAIL".to_owned(), "1".to_owned()));
            }
            api.create_pipeline(project, "main", &vars).await.is_ok()
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(matches!(tokio::time::timeout(Duration::from_secs(120), t).await, Ok(Ok(true))));
    }
    out
}

type Windows = Vec<(DateTime<Utc>, DateTime<Utc>)>;

/// The disruptions: kills on their own schedule, PostgreSQL's restart and outage and the
/// revocation at fractions of the creation phase. Returns them, the windows when PostgreSQL was
/// down (with slack for the first call after it, which finds its old session broken), and when
/// eve was removed.
async fn disrupt(
    relays: Vec<Arc<tokio::sync::Mutex<instances::Instance>>>,
    launch: instances::Launch,
    pg: Arc<cloudci_relay::ScratchCluster>,
    sim_url: String,
    opts: RelayOptions,
    t0: Instant,
    duration: f64,
) -> (Vec<Disruption>, Windows, Option<DateTime<Utc>>) {
    let mut plan: Vec<(f64, &str)> = Vec::new();
    if opts.kill_every_secs > 0.0 {
        let mut at = opts.kill_every_secs;
        while at < duration {
            plan.push((at, "sigkill"));
            at += opts.kill_every_secs;
        }
    }
    if opts.pg_restart {
        plan.push((duration * 0.3, "pg-restart"));
    }
    if opts.revoke {
        plan.push((duration * 0.45, "revoke"));
    }
    if opts.pg_outage_secs > 0.0 {
        plan.push((duration * 0.6, "pg-outage"));
    }
    plan.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rng = Rng(opts.seed ^ 0x0C4A_05);
    let (mut done, mut down, mut revoked) = (Vec::new(), Vec::new(), None);
    let mut restarts = Vec::new();
    let slack = chrono::Duration::seconds(3);
    for (at, what) in plan {
        tokio::time::sleep_until((t0 + Duration::from_secs_f64(at)).into()).await;
        let (at_secs, at_wall, begun) = (t0.elapsed().as_secs_f64(), Utc::now(), Instant::now());
        match what {
            "sigkill" => {
                let relay = relays[(rng.next() % relays.len() as u64) as usize].clone();
                relay.lock().await.kill().await;
                let (launch, wait) = (launch.clone(), Duration::from_millis(opts.restart_after_ms));
                restarts.push(tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let _ = relay.lock().await.start(&launch, Duration::from_secs(120)).await;
                }));
            }
            "pg-restart" | "pg-outage" => {
                let outage =
                    if what == "pg-outage" { Duration::from_secs_f64(opts.pg_outage_secs) } else { Duration::ZERO };
                let (a, b) = (pg.clone(), pg.clone());
                let _ = tokio::task::spawn_blocking(move || a.stop_immediate()).await;
                tokio::time::sleep(outage).await;
                let _ = tokio::task::spawn_blocking(move || b.start_again()).await;
                down.push((at_wall - slack, Utc::now() + slack));
            }
            _ => {
                let http = reqwest::Client::new();
                let url = format!("{sim_url}/api/v4/projects/2/members/{EVE_ID}");
                if http
                    .delete(url)
                    .header("PRIVATE-TOKEN", crate::SIM_TOKEN)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    revoked = Some(at_wall);
                }
            }
        }
        done.push(Disruption {
            what: what.to_owned(),
            at_secs,
            at: at_wall,
            down_secs: begun.elapsed().as_secs_f64(),
            start_attempts: 0,
        });
    }
    for r in restarts {
        let _ = r.await;
    }
    (done, down, revoked)
}
