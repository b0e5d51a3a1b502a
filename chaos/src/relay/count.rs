//! What each relay subscriber saw against the sim's truth and its user's access: lost, wrong,
//! duplicated, out of order and forbidden events, per project, and how far its stream lagged.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::analysis::{self, Truth, TruthPipeline};
use crate::subscriber::Received;

/// One subscriber's counts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubscriberCounts {
    /// The GitLab user whose session it holds.
    pub user: String,
    /// Events received.
    pub events: usize,
    /// Times it (re)connected.
    pub connects: u32,
    /// Events the relay learnt from GitLab's API (`source: poll`: catch-up and silent pipelines
    /// read again), not from a delivery.
    pub from_api: usize,
    /// Pipelines and jobs of projects it may read whose final status never arrived as their last.
    pub lost: usize,
    /// ... that ended on another final status than the sim's.
    pub wrong: usize,
    /// Events whose seq it had already received.
    pub duplicated: usize,
    /// Events whose seq is below one received before; and statuses that went backwards.
    pub out_of_order: usize,
    /// Events repeating an object's previous status (a second event for the same news).
    pub repeated: usize,
    /// Events of a project its user may not read: never could, or that *arrived* later after
    /// the user's removal than the access TTL and [`REVOCATION_SLACK`].
    pub forbidden: usize,
    /// Of those forbidden by arrival after a removal, how many the relay had accepted before
    /// removal + TTL: the stream lagged (sockets, the proxy, the harness's reading) rather than
    /// the relay sending on an answer older than its TTL. Still forbidden: what counts is when
    /// the developer sees it.
    pub late_after_revocation: usize,
    /// Events received per project id (0: none).
    pub by_project: BTreeMap<u64, usize>,
    /// Arrival less the relay's acceptance, over events from deliveries, in ms: median, 99th
    /// percentile, largest.
    pub lag_ms: [i64; 3],
}

/// How long after removal + TTL an event of the revoked project may still arrive: one that the
/// relay checked just inside the TTL, on its way through the proxy.
pub const REVOCATION_SLACK: chrono::Duration = chrono::Duration::seconds(2);

impl SubscriberCounts {
    /// Everything that should be zero.
    pub fn bad(&self) -> usize {
        self.lost + self.wrong + self.duplicated + self.out_of_order + self.repeated + self.forbidden
    }
}

/// Who may read what: projects always readable, and one project readable until `revoked_at`.
#[derive(Debug, Clone)]
pub(crate) struct Allowed {
    pub(crate) projects: BTreeSet<u64>,
    /// (project, when the membership was removed plus the access TTL and [`REVOCATION_SLACK`]).
    pub(crate) until: Option<(u64, DateTime<Utc>)>,
}

impl Allowed {
    fn forbidden(&self, e: &Received) -> bool {
        let Some(p) = e.project_id else { return false };
        if self.projects.contains(&p) {
            return false;
        }
        match self.until {
            Some((q, until)) if q == p => e.received > until,
            _ => true,
        }
    }
}

/// Median, 99th percentile and largest of arrival less acceptance, in ms, over `events` from
/// deliveries.
fn lag_ms(events: &[Received]) -> [i64; 3] {
    let mut lags: Vec<i64> = events
        .iter()
        .filter(|e| e.source.as_deref() == Some("webhook"))
        .filter_map(|e| e.accepted.map(|a| (e.received - a).num_milliseconds()))
        .collect();
    if lags.is_empty() {
        return [0; 3];
    }
    lags.sort_unstable();
    let at = |q: f64| lags[((lags.len() - 1) as f64 * q).round() as usize];
    [at(0.5), at(0.99), at(1.0)]
}

/// The truth restricted to the pipelines of `projects`.
pub(crate) fn truth_of(all: &[(u64, Truth)], projects: &BTreeSet<u64>) -> Truth {
    let pipelines: Vec<TruthPipeline> =
        all.iter().filter(|(p, _)| projects.contains(p)).flat_map(|(_, t)| t.pipelines.iter().cloned()).collect();
    Truth { pipelines }
}

/// Counts one subscriber's events.
pub(crate) fn count(
    user: &str,
    connects: u32,
    events: &[Received],
    truth: &Truth,
    allowed: &Allowed,
) -> SubscriberCounts {
    let mut c = SubscriberCounts { user: user.to_owned(), events: events.len(), connects, ..Default::default() };
    let mut seen = HashSet::new();
    let mut last = 0;
    for e in events {
        if !seen.insert(e.seq) {
            c.duplicated += 1;
        } else if e.seq < last {
            c.out_of_order += 1;
        }
        last = last.max(e.seq);
        if e.source.as_deref() == Some("poll") {
            c.from_api += 1;
        }
        *c.by_project.entry(e.project_id.unwrap_or(0)).or_default() += 1;
        if allowed.forbidden(e) {
            c.forbidden += 1;
            // `until` includes the slack; acceptance is judged against removal + TTL alone.
            if allowed.until.is_some_and(|(q, until)| {
                e.project_id == Some(q) && e.accepted.is_some_and(|a| a <= until - REVOCATION_SLACK)
            }) {
                c.late_after_revocation += 1;
            }
        }
    }
    c.lag_ms = lag_ms(events);
    // Lost, wrong, backwards and repeated on the projects it may read throughout.
    let readable: Vec<Received> =
        events.iter().filter(|e| e.project_id.is_some_and(|p| allowed.projects.contains(&p))).cloned().collect();
    let a = analysis::analyse(truth, &readable);
    c.lost = a.counts.lost();
    c.wrong = a.counts.pipelines_wrong + a.counts.jobs_wrong;
    c.out_of_order += a.counts.pipelines_backwards + a.counts.jobs_backwards;
    c.repeated = a.counts.pipelines_repeated + a.counts.jobs_repeated;
    c
}

/// Whether every final status of `truth` arrived at the subscriber.
pub(crate) fn complete(events: &[Received], truth: &Truth) -> bool {
    analysis::all_final_arrived(truth, events)
}
