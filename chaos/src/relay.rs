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
//! - `count`: the per-subscriber counts.
//! - `answers`: GitLab's answers, and the cause of each 5xx outside PostgreSQL's downtime.
//! - `disrupt`: the pipelines and the disruptions over time.
//! - `report`: [`RelayOptions`] and [`RelayReport`].

mod answers;
mod count;
mod disrupt;
mod instances;
mod proxy;
mod report;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use answers::{Answers, Outside};
pub use count::{REVOCATION_SLACK, SubscriberCounts};
pub use report::{RelayOptions, RelayReport};

use crate::{Error, free_port, sim_api, subscriber};

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

/// Which user a subscriber is: eve first, then alice, bob and carol in turn.
fn user_of(i: usize) -> usize {
    if i == 0 { 3 } else { (i - 1) % 3 }
}

/// Runs the relay chaos test. [`Error::NoPostgres`] when PostgreSQL is not installed.
pub async fn run_relay(opts: RelayOptions) -> Result<RelayReport, Error> {
    cloudci_gitlab::install_tls_provider();
    let started = Instant::now();
    let dir = crate::run_dir(opts.dir.as_deref(), "cloudci-relay-chaos-", &opts.cloudci)?;
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
    let creator = tokio::spawn(disrupt::create(api.clone(), opts.clone(), t0));
    let disruptor = tokio::spawn(disrupt::disrupt(
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
            let ttl = chrono::Duration::seconds(opts.access_ttl_secs as i64) + REVOCATION_SLACK;
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
            if i == 0 {
                // The revoked subscriber's stream, to tell a lagging stream from a late send.
                let lines: Vec<String> = e.iter().filter_map(|e| serde_json::to_string(e).ok()).collect();
                let _ = std::fs::write(dir.join("eve.jsonl"), lines.join("\n"));
            }
            if i == 0
                && let Some(at) = revoked_at
            {
                // Her last acme/secret event: when it arrived, and when the relay had accepted it.
                let secs = |t: chrono::DateTime<chrono::Utc>| (t - at).num_milliseconds() as f64 / 1e3;
                revoked_last = e
                    .iter()
                    .filter(|e| e.project_id == Some(2))
                    .max_by_key(|e| e.received)
                    .map(|last| (secs(last.received), last.accepted.map(secs)));
            }
            count::count(user, connects, e, &truth_for[i], &allowed[i])
        });
        counts.push(c);
    }
    for s in subs {
        s.stop();
    }
    let stopping = chrono::Utc::now();
    let (mut starts, mut failed) = (0, 0);
    for r in &relays {
        let mut r = r.lock().await;
        r.terminate().await;
        starts += r.starts;
        failed += r.failed_starts;
    }
    let answers = answers::answers(&sim.delivery_outcomes(), &down, stopping, &dir);
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
        totals.late_after_revocation += c.late_after_revocation;
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
        revoked_last_event_after_secs: revoked_last.map(|r| r.0),
        revoked_last_accepted_after_secs: revoked_last.and_then(|r| r.1),
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
