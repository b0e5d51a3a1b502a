//! The state machine that keeps statuses from going backwards.
//!
//! GitLab sends each delivery from its own worker, so deliveries arrive late, twice, or not at all
//! (FACTS §1.5). For every pipeline and job the log keeps the last accepted status; an observation
//! is judged against it:
//! - a status further along the lifecycle ([`Status::rank`]) is accepted;
//! - the same status again is a duplicate;
//! - a different status of the same rank is accepted while not finished (`manual` → `pending`
//!   when someone plays a job), and refused once finished;
//! - a status further back is late, unless the observation mentions a job newer than any seen
//!   before: GitLab gives retried jobs new ids, so that is a real retry and is accepted;
//! - after a retry, an observation that mentions no job of the retry predates it and is late.

use cloudci_gitlab::types::Status;

/// What the log knows of a pipeline or job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// Last accepted status.
    pub status: Status,
    /// Highest job id seen for it (for a job: its own id).
    pub max_job_id: u64,
    /// Jobs below this id predate the last retry (0: never retried).
    pub retry_floor: u64,
}

/// The judgement on one observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Never seen: accept.
    New,
    /// Further along (or a lateral move while running): accept.
    Advance,
    /// Backwards because jobs were retried: accept as a retry.
    Retry,
    /// The same status again: drop.
    Duplicate,
    /// Older than what is known: drop.
    Late,
}

impl Verdict {
    /// Whether the observation becomes an event.
    pub fn accepted(self) -> bool {
        matches!(self, Self::New | Self::Advance | Self::Retry)
    }
}

/// Judges `status`, observed with `max_job_id` as evidence, against what is known.
pub fn judge(known: Option<&Known>, status: &Status, max_job_id: u64) -> Verdict {
    let Some(k) = known else { return Verdict::New };
    if max_job_id < k.retry_floor {
        return Verdict::Late;
    }
    let retried = max_job_id > k.max_job_id;
    if *status == k.status {
        return Verdict::Duplicate;
    }
    let (new, old) = (status.rank(), k.status.rank());
    if new > old {
        return Verdict::Advance;
    }
    if new == old && !k.status.is_completed() {
        return Verdict::Advance;
    }
    if retried {
        return Verdict::Retry;
    }
    Verdict::Late
}

/// What is known after accepting an observation.
pub fn next(known: Option<&Known>, status: &Status, max_job_id: u64, verdict: Verdict) -> Known {
    let prev_max = known.map(|k| k.max_job_id).unwrap_or(0);
    let floor = known.map(|k| k.retry_floor).unwrap_or(0);
    Known {
        status: status.clone(),
        max_job_id: prev_max.max(max_job_id),
        retry_floor: if verdict == Verdict::Retry { prev_max + 1 } else { floor },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Status::*;

    /// Feeds `(status, max_job_id)` observations and returns the accepted statuses.
    fn run(obs: &[(Status, u64)]) -> Vec<Status> {
        let mut known: Option<Known> = None;
        let mut accepted = Vec::new();
        for (s, m) in obs {
            let v = judge(known.as_ref(), s, *m);
            if v.accepted() {
                known = Some(next(known.as_ref(), s, *m, v));
                accepted.push(s.clone());
            }
        }
        accepted
    }

    #[test]
    fn late_and_repeated_deliveries_never_move_back() {
        assert_eq!(
            run(&[(Pending, 1), (Running, 1), (Pending, 1), (Success, 1), (Running, 1), (Success, 1)]),
            [Pending, Running, Success]
        );
        // Arriving in reverse: only the final state shows.
        assert_eq!(run(&[(Success, 1), (Running, 1), (Pending, 1), (Created, 1)]), [Success]);
        // A finished status is not replaced by another finished one without a retry.
        assert_eq!(run(&[(Failed, 3), (Success, 3)]), [Failed]);
        // A played manual job.
        assert_eq!(run(&[(Manual, 4), (Pending, 4), (Running, 4), (Success, 4)]), [Manual, Pending, Running, Success]);
    }

    #[test]
    fn a_real_retry_shows_and_what_predates_it_does_not() {
        // Failed with jobs 1-3; retried job 4 runs; then a late `failed` (jobs 1-3) arrives.
        assert_eq!(
            run(&[(Running, 3), (Failed, 3), (Running, 4), (Failed, 3), (Success, 4)]),
            [Running, Failed, Running, Success]
        );
        // A retry that fails again is still shown as the new failure.
        assert_eq!(run(&[(Failed, 3), (Pending, 4), (Failed, 4)]), [Failed, Pending, Failed]);
    }
}
