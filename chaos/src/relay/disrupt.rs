//! The run's actions over time: creating the pipelines, and the disruptions (kills, PostgreSQL's
//! restart and outage, the revocation).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::{EVE_ID, PROJECTS, RelayOptions, instances};
use crate::{Disruption, Rng, sim_api};

/// Creates the pipelines (two in three on acme/firmware); true for each one created.
pub(super) async fn create(api: Arc<sim_api::SimApi>, opts: RelayOptions, t0: Instant) -> Vec<bool> {
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

pub(super) type Windows = Vec<(DateTime<Utc>, DateTime<Utc>)>;

/// The disruptions: kills on their own schedule, PostgreSQL's restart and outage and the
/// revocation at fractions of the creation phase. Returns them, the windows when PostgreSQL was
/// down (with slack for the first call after it, which finds its old session broken), and when
/// eve was removed.
pub(super) async fn disrupt(
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
    let mut rng = Rng(opts.seed ^ 0x000C_4A05);
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
                // Through the retrying client: the sim's API faults hit the harness too.
                let api = sim_api::SimApi::new(&sim_url, crate::SIM_TOKEN);
                if api.delete(&format!("/projects/2/members/{EVE_ID}")).await.is_ok() {
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
