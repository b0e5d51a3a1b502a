//! What each relay subscriber saw against the sim's truth and its user's access: lost, wrong,
//! duplicated, out of order and forbidden events; and GitLab's side (the answers in the sim's
//! delivery logs).

use std::collections::{BTreeSet, HashSet};

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
    /// Events of a project its user may not read: never could, or accepted by the relay longer
    /// after the user's removal than the access TTL (and a second's slack).
    pub forbidden: usize,
    /// Events of the revoked project that arrived after removal + TTL but were accepted before
    /// it: allowed by the rule above, counted to show how far the stream lagged (a loaded
    /// machine's sockets and the harness's own reading, or an old answer the relay kept).
    pub late_after_revocation: usize,
}

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
    /// (project, when the membership was removed plus the access TTL and a second's slack for an
    /// event already on the wire).
    pub(crate) until: Option<(u64, DateTime<Utc>)>,
}

impl Allowed {
    fn forbidden(&self, e: &Received) -> bool {
        let Some(p) = e.project_id else { return false };
        if self.projects.contains(&p) {
            return false;
        }
        match self.until {
            Some((q, until)) if q == p => e.accepted.unwrap_or(e.received) > until,
            _ => true,
        }
    }
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
        if allowed.forbidden(e) {
            c.forbidden += 1;
        } else if allowed.until.is_some_and(|(q, until)| e.project_id == Some(q) && e.received > until) {
            c.late_after_revocation += 1;
        }
    }
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

/// The receiver's answers as GitLab logged them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Answers {
    /// Delivery attempts logged (resends and test deliveries included).
    pub attempts: usize,
    /// Answered 2xx.
    pub ok: usize,
    /// Answered 4xx (every delivery is validly signed: must be 0).
    pub client_errors: usize,
    /// Answered 5xx.
    pub server_errors: usize,
    /// ... of those, outside the windows when PostgreSQL was down (must be 0).
    pub server_errors_outside_outages: usize,
    /// No answer (an instance killed mid-request, GitLab's timeout, the `lost` fault).
    pub no_answer: usize,
    /// The 5xx outside the outages: when each was sent, and its status (the first 100).
    pub outside: Vec<(DateTime<Utc>, String)>,
}

/// Counts the sim's delivery log (when each attempt was sent, and its answer) up to `until`
/// (when the harness began stopping the relays, whose last answers then say they are
/// stopping); `down` are the windows when PostgreSQL was unreachable.
pub(crate) fn answers(
    log: &[(DateTime<Utc>, String)],
    down: &[(DateTime<Utc>, DateTime<Utc>)],
    until: DateTime<Utc>,
) -> Answers {
    let log: Vec<_> = log.iter().filter(|(at, _)| *at <= until).collect();
    let mut a = Answers { attempts: log.len(), ..Default::default() };
    for (at, status) in log {
        match status.parse::<u16>() {
            Ok(s) if (200..300).contains(&s) => a.ok += 1,
            Ok(s) if (400..500).contains(&s) => a.client_errors += 1,
            Ok(s) if s >= 500 => {
                a.server_errors += 1;
                if !down.iter().any(|(from, to)| at >= from && at <= to) {
                    a.server_errors_outside_outages += 1;
                    if a.outside.len() < 100 {
                        a.outside.push((*at, status.clone()));
                    }
                }
            }
            Ok(_) => a.ok += 1,
            Err(_) => a.no_answer += 1,
        }
    }
    a
}
