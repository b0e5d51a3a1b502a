//! The relay run's options and its report.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Answers, SubscriberCounts};
use crate::Disruption;

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
    /// ... and from her removal to when the relay had accepted that event.
    pub revoked_last_accepted_after_secs: Option<f64>,
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
        if t.late_after_revocation > 0 {
            writeln!(
                f,
                "  of the forbidden, {} acme/secret events reached eve after her removal + TTL + slack though the relay accepted them before removal + TTL (a lagging stream)",
                t.late_after_revocation
            )?;
        }
        if let Some(s) = self.revoked_last_event_after_secs {
            let accepted = self.revoked_last_accepted_after_secs.map_or("?".into(), |a| format!("{a:.1}"));
            writeln!(
                f,
                "  revocation: eve's last acme/secret event arrived {s:.1} s after her removal, accepted at {accepted} s (TTL {} s, slack {} s)",
                o.access_ttl_secs,
                super::REVOCATION_SLACK.num_seconds()
            )?;
        }
        // The evidence for "forbidden": what each user's subscribers got, per project.
        let mut users: Vec<&str> = self.subscribers.iter().map(|s| s.user.as_str()).collect();
        users.sort_unstable();
        users.dedup();
        for u in users {
            let subs: Vec<&SubscriberCounts> = self.subscribers.iter().filter(|s| s.user == u).collect();
            let mut by_project = std::collections::BTreeMap::new();
            for s in &subs {
                for (p, n) in &s.by_project {
                    *by_project.entry(*p).or_insert(0) += n;
                }
            }
            let lag_p99 = subs.iter().map(|s| s.lag_ms[1]).max().unwrap_or(0);
            let lag_max = subs.iter().map(|s| s.lag_ms[2]).max().unwrap_or(0);
            writeln!(
                f,
                "  {u} ({} subscribers): events by project {by_project:?}; forbidden {}; lag (arrival - acceptance) p99 up to {lag_p99} ms, max {lag_max} ms",
                subs.len(),
                subs.iter().map(|s| s.forbidden).sum::<usize>()
            )?;
        }
        let a = &self.answers;
        writeln!(
            f,
            "  GitLab's log: {} attempts, {} 2xx, {} 4xx, {} 5xx ({} outside PostgreSQL outages), {} unanswered",
            a.attempts, a.ok, a.client_errors, a.server_errors, a.server_errors_outside_outages, a.no_answer
        )?;
        for x in a.outside.iter().take(10) {
            writeln!(f, "  - 5xx outside: {} {} {:?}", x.at.format("%H:%M:%S%.3f"), x.status, x.body)?;
            for l in &x.relay_log {
                writeln!(f, "      {l}")?;
            }
        }
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
