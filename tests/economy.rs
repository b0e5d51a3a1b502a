//! What a build costs on GitLab's side, counted by gitlab-sim per route (its sim-only
//! `/-/sim/requests`): requests for one watched build through the daemon with webhooks flowing,
//! and bytes read while following a growing log (on the wire, gzipped as GitLab's nginx sends
//! them) against the log's final size. The counts do not depend on timing; the byte ratios do
//! a little (how many reads a growing log gets), with a wide margin.
//!
//! `benches/economy.sh` runs these with a bigger, longer log (`ECONOMY_LOG_KB`, `ECONOMY_SECS`)
//! and prints the figures (`ECONOMY_REPORT=1`).

mod common;

use std::time::Duration;

use cloudci_gitlab::types::{CreatePipeline, Status};
use cloudci_gitlab::{JobFilter, ProjectRef};
use common::*;
use futures_util::TryStreamExt;
use gitlab_sim::{RequestCounts, Sim};

const TOKEN: &str = "sim-token-for-economy";
const PROJECTS: &str = "[projects.firmware]\ngitlab = \"acme/firmware\"\ntargets = [\"host\"]\nafter_success = { merge_request = { target_branch = \"main\" } }\n";
const TRACE: &str = "GET /api/v4/projects/{id}/jobs/{jid}/trace";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A job that writes about `kb` KB of compiler-like lines over about `secs` seconds (in ten
/// bursts), with artifacts.
fn ci(kb: u64, secs: u64) -> String {
    // ~80 bytes a line; $RANDOM keeps lines from repeating exactly, as real output does.
    let per_burst = kb * 1024 / 80 / 10;
    let pause = secs as f64 / 10.0;
    format!(
        "build:\n  script:\n    - mkdir -p out && echo fw > out/fw.bin\n    - for b in $(seq 1 10); do for i in $(seq 1 {per_burst}); do echo \"  CC      src/drivers/mod_${{b}}_$i.c -o build/mod_${{b}}_$i.o -DSEED=$RANDOM -Wall\"; done; sleep {pause}; done\n  artifacts:\n    paths: [out/]\n"
    )
}

fn report(what: &str, counts: &RequestCounts) {
    if std::env::var_os("ECONOMY_REPORT").is_some() {
        println!("{what}:");
        for (route, c) in &counts.routes {
            println!("  {route}: {} requests, {} bytes", c.requests, c.bytes);
        }
    }
}

/// Waits until the daemon's start-up calls to GitLab (hook install and check) are over, so that
/// what is counted next is the build's: its hook is there and nothing came for 0.7 s.
async fn quiet_after_start(sim: &Sim) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let before = sim.requests().total().requests;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let hooked = sim.requests().route("POST /api/v4/projects/{id}/hooks").requests > 0;
        if hooked && sim.requests().total().requests == before {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the daemon kept calling GitLab: {:?}", sim.requests());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_build_through_the_daemon_costs_four_requests_and_reads_its_log_about_once() {
    let (kb, secs) = (env_or("ECONOMY_LOG_KB", 300), env_or("ECONOMY_SECS", 3));
    let dir = tempfile::tempdir().unwrap();
    let sim = sim_with(dir.path(), TOKEN, &ci(kb, secs), "", 1).await;
    let (config, _, _) = write_config(dir.path(), PROJECTS, 30);
    let _daemon = serve(&config, sim.url(), TOKEN, &[]);
    quiet_after_start(&sim).await;
    sim.reset_requests();

    let out = cloudci(&config, "http://127.0.0.1:9", "unused", &["build", "firmware", "--ref", "feature", "--watch"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let counts = sim.requests();
    report("cloudci build --watch through the daemon", &counts);

    // Create, artifacts, merge request lookup and create; nothing the webhooks told.
    let api: u64 = counts.routes.iter().filter(|(r, _)| r.as_str() != TRACE).map(|(_, c)| c.requests).sum();
    assert_eq!(api, 4, "{counts:#?}");
    for route in [
        "POST /api/v4/projects/{id}/pipeline",
        "GET /api/v4/projects/{id}/jobs/{jid}/artifacts",
        "GET /api/v4/projects/{id}/merge_requests",
        "POST /api/v4/projects/{id}/merge_requests",
    ] {
        assert_eq!(counts.route(route).requests, 1, "{route}: {counts:#?}");
    }

    // The log that was followed is the log saved, whole, and it was read about once.
    let gitlab = client_of(sim.url(), TOKEN);
    let project = ProjectRef::from("acme/firmware");
    let pipelines: Vec<_> = gitlab.pipelines(project.clone(), &Default::default()).try_collect().await.unwrap();
    let jobs: Vec<_> =
        gitlab.pipeline_jobs(project.clone(), pipelines[0].id, &JobFilter::default()).try_collect().await.unwrap();
    let log = gitlab.job_trace(project, jobs[0].id).await.unwrap();
    let saved = std::fs::read(dir.path().join("state/logs/latest/firmware/host/build.log")).unwrap();
    assert_eq!(saved.len(), log.len());
    assert!(saved == log, "the saved log differs from GitLab's");
    assert!(stderr.contains("src/drivers/mod_10_"), "the last lines were shown: {stderr}");
    let ratio = counts.route(TRACE).bytes as f64 / log.len() as f64;
    if std::env::var_os("ECONOMY_REPORT").is_some() {
        println!(
            "build --watch: {} trace reads, {} bytes for a {} byte log: {ratio:.3}x",
            counts.route(TRACE).requests,
            counts.route(TRACE).bytes,
            log.len()
        );
    }
    assert!(ratio <= 1.05, "read {ratio:.2}x the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_follow_reads_a_growing_log_about_once() {
    let (kb, secs) = (env_or("ECONOMY_LOG_KB", 300), env_or("ECONOMY_SECS", 3));
    let dir = tempfile::tempdir().unwrap();
    let sim = sim_with(dir.path(), TOKEN, &ci(kb, secs), "", 1).await;
    let (config, _, _) = write_config(dir.path(), PROJECTS, 30);
    let gitlab = client_of(sim.url(), TOKEN);
    let project = ProjectRef::from("acme/firmware");
    let p = gitlab.create_pipeline(project.clone(), &CreatePipeline::new("main")).await.unwrap();
    // From the job's first moments (before it writes much), as a user would.
    let job = loop {
        let jobs: Vec<_> =
            gitlab.pipeline_jobs(project.clone(), p.id, &JobFilter::default()).try_collect().await.unwrap();
        if let Some(j) = jobs.into_iter().find(|j| j.status == Status::Running || j.status.is_completed()) {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    sim.reset_requests();
    let out =
        cloudci(&config, sim.url(), TOKEN, &["gitlab", "trace", "acme/firmware", &job.id.to_string(), "--follow"])
            .output()
            .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let counts = sim.requests();
    report("cloudci gitlab trace --follow", &counts);
    let log = gitlab.job_trace(project, job.id).await.unwrap();
    assert!(out.stdout == log, "what was printed is the log ({} of {} bytes)", out.stdout.len(), log.len());
    // Everything read while following: the log and the job's status before each read.
    let ratio = counts.total().bytes as f64 / log.len() as f64;
    if std::env::var_os("ECONOMY_REPORT").is_some() {
        println!(
            "trace --follow: {} requests, {} bytes for a {} byte log: {ratio:.3}x",
            counts.total().requests,
            counts.total().bytes,
            log.len()
        );
    }
    assert!(ratio <= 1.05, "read {ratio:.2}x the log: {counts:#?}");
}

/// Without a daemon nothing tells a build how its pipeline goes but GitLab's API: the first
/// status check comes within 3 s of the pipeline's creation (1 s ± 20% after it), then each
/// wait is about twice the one before (up to 30 s, `follow.rs`), so a 5 s job costs three
/// checks, not one a second. Times are the sim's own arrival times of each request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_daemon_the_first_status_check_comes_within_3_s_then_backs_off() {
    const CREATE: &str = "POST /api/v4/projects/{id}/pipeline";
    const STATUS: &str = "GET /api/v4/projects/{id}/pipelines/{pid}";
    let dir = tempfile::tempdir().unwrap();
    let sim = sim_with(dir.path(), TOKEN, "build:\n  script:\n    - sleep 5\n", "", 1).await;
    let (config, _, _) = write_config(dir.path(), PROJECTS, 30);
    sim.reset_requests();
    let out = cloudci(&config, sim.url(), TOKEN, &["build", "firmware", "--ref", "feature", "--watch", "--no-actions"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let counts = sim.requests();
    report("cloudci build --watch without a daemon", &counts);
    let created = counts.at_ms.get(CREATE).and_then(|t| t.first().copied()).expect("the pipeline was created");
    let checks = counts.at_ms.get(STATUS).cloned().unwrap_or_default();
    let since: Vec<u64> = checks.iter().map(|t| t - created).collect();
    if std::env::var_os("ECONOMY_REPORT").is_some() {
        println!("status checks without a daemon, ms after the pipeline's creation: {since:?}");
    }
    assert!(since.len() >= 2, "the pipeline was checked {} times: {counts:#?}", since.len());
    assert!(since[0] <= 3000, "first status check {} ms after the creation", since[0]);
    // Backing off: each wait between checks longer than the one before (the waits double,
    // ± 20%, so each is at least 0.8 s longer; the time from the creation to the first check
    // is left out: it also holds the CLI's own start-up work). A check each second would be
    // five or six for this job.
    let waits: Vec<u64> = since.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(waits.windows(2).all(|w| w[1] > w[0]), "waits between status checks (ms): {waits:?}");
    assert!(since.len() <= 4, "checked {} times in {} ms", since.len(), since.last().unwrap());
}
