//! The state machine that keeps statuses from going backwards, on GitLab's retry model.
//!
//! GitLab sends each delivery from its own worker, so deliveries arrive late, twice, or not at all
//! (FACTS §1.5), and each hook is rendered independently. The log keeps, per job id and per
//! pipeline, the last accepted status; an observation is judged against it.
//!
//! # Jobs
//! Each job id is one attempt, judged on its own: further along the lifecycle ([`Status::rank`])
//! is accepted, the same status is a duplicate, a lateral move is accepted while unfinished
//! (`manual` → `pending` when someone plays a job), anything older is late. One exception: GitLab
//! resets `skipped` jobs in place (same id) when the pipeline is retried; a skipped job seen
//! `pending`, running or finished otherwise than skipped has been reset (it can only be skipped
//! from `created`), which is accepted as a retry. `created` after `skipped` is ambiguous (a late
//! delivery or a reset) and is refused; the reset job's next status shows anyway. For the same
//! reason `skipped` after a queued or later status is late.
//!
//! # Pipelines
//! A retry is a **new job id for a job name already seen in the pipeline** (GitLab clones retried
//! jobs under new ids; FACTS §2.1, §2.2). The pipeline remembers the jobs (name → id) that the
//! evidence for its current status mentioned, its *basis*. Then:
//! - an observation mentioning a job whose name has a newer known id predates that retry: late;
//! - the same status is a duplicate, a status further along (or lateral while unfinished) advances;
//! - a finished pipeline moves to any other status only as a retry: the observation mentions a
//!   newer attempt of a job in the basis, or it mentions every basis job at least as far along
//!   plus a job created after all of them (the retry's first attempt at a name we never heard
//!   of). Anything else is late: reordered sibling hooks never move a status backwards.
//! - a Job Hook's pipeline status (`commit.status`) is weak evidence, rendered at the moment of
//!   that job's transition: it counts only when the job's own status is news, it never finishes
//!   a pipeline while its job is unfinished (the retried clone's hook carries the status from
//!   before the retry), and once the pipeline was retried it counts only from a job at least as
//!   new as the newest retry attempt (an older sibling's hook may predate the retry), or from a
//!   skipped job whose reset it shows — and that one never finishes the pipeline; nor does a
//!   Job Hook of a job older than one the known status rests on (its retry may be unheard of).

use std::collections::BTreeMap;

use cloudci_gitlab::types::Status;

/// The judgement on one observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Never seen: accept.
    New,
    /// Further along (or a lateral move while unfinished): accept.
    Advance,
    /// Backwards or from one finished status to another, because jobs were retried: accept.
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

/// Judges a job attempt's `status` against its last accepted status.
pub fn judge_job(known: Option<&Status>, status: &Status) -> Verdict {
    let Some(k) = known else { return Verdict::New };
    if status == k {
        return Verdict::Duplicate;
    }
    // Skipped is left only through a reset by a retry; statuses a job has before it is skipped
    // (created, waiting for a resource, preparing) cannot tell a reset from a late delivery.
    if *k == Status::Skipped && !matches!(status, Status::Created | Status::WaitingForResource | Status::Preparing) {
        return Verdict::Retry;
    }
    // Likewise a job is skipped only before it is queued: a `skipped` after that is from before a
    // reset, however far along it ranks.
    if *status == Status::Skipped
        && !(matches!(k, Status::Created | Status::WaitingForResource | Status::Preparing) || k.is_blocked())
    {
        return Verdict::Late;
    }
    // A job waits for a person (`manual`) or a timer (`scheduled`) only right after it is created;
    // one seen queued or later is past that, so the blocked status is from before.
    if status.is_blocked() && *k != Status::Created {
        return Verdict::Late;
    }
    forward(k, status)
}

/// The rank rule shared by jobs and pipelines.
fn forward(known: &Status, status: &Status) -> Verdict {
    let (new, old) = (status.rank(), known.rank());
    if new > old || (new == old && !known.is_completed()) { Verdict::Advance } else { Verdict::Late }
}

/// What the log knows of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PipelineKnown {
    /// Last accepted status.
    pub status: Status,
    /// The jobs (name → id) that the evidence for `status` mentioned.
    pub basis: BTreeMap<String, u64>,
}

/// One job a delivery mentions, with what the log knew of it before the delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JobMention {
    /// Job id.
    pub id: u64,
    /// Job name (absent in rows stored before names were kept).
    pub name: Option<String>,
    /// The status the delivery gives it.
    pub status: Status,
    /// Lowest and highest other id known for the same name in the pipeline.
    pub other_attempts: Option<(u64, u64)>,
    /// The job-level judgement of `status` ([`judge_job`]).
    pub verdict: Verdict,
}

impl JobMention {
    /// A newer attempt of this job's name is known: whatever mentions it predates that retry.
    pub(crate) fn superseded(&self) -> bool {
        self.other_attempts.is_some_and(|(_, max)| max > self.id)
    }

    /// An earlier attempt of this job's name is known: this id is a retry.
    pub(crate) fn is_retry_attempt(&self) -> bool {
        self.other_attempts.is_some_and(|(min, _)| min < self.id)
    }
}

/// What a pipeline observation brings besides its status.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PipelineEvidence<'a> {
    /// The jobs the same delivery mentions (for a Job Hook: its one job).
    pub mentions: &'a [JobMention],
    /// The status is a Job Hook's `commit.status`.
    pub weak: bool,
    /// The highest id known (in the log or this delivery) to be a retry attempt in the pipeline;
    /// 0 when the pipeline was never retried.
    pub newest_retry_attempt: u64,
}

/// The basis a pipeline status gets from the jobs its evidence mentions.
pub(crate) fn basis_of(mentions: &[JobMention]) -> BTreeMap<String, u64> {
    mentions.iter().filter_map(|m| Some((m.name.clone()?, m.id))).collect()
}

/// Judges a pipeline observation of `status` against what is known.
pub(crate) fn judge_pipeline(known: Option<&PipelineKnown>, status: &Status, ev: &PipelineEvidence<'_>) -> Verdict {
    if ev.mentions.iter().any(JobMention::superseded) {
        return Verdict::Late;
    }
    if ev.weak {
        // A Job Hook without its job cannot be placed in time.
        let Some(job) = ev.mentions.first() else { return Verdict::Late };
        let unfinished = !(job.status.is_completed() || job.status == Status::Manual);
        if status.is_completed() && unfinished {
            return Verdict::Late;
        }
        // Old news about its job: its pipeline status is no newer than what is known.
        if !job.verdict.accepted() {
            return Verdict::Late;
        }
        // An older sibling of a retry attempt may have been rendered before the retry: its
        // `commit.status` cannot be placed. Only a reset it proves itself (skipped, then queued)
        // dates it after the retry, and even then it never finishes the pipeline.
        if job.id < ev.newest_retry_attempt && (status.is_completed() || job.verdict != Verdict::Retry) {
            return Verdict::Late;
        }
    }
    let Some(k) = known else { return Verdict::New };
    if *status == k.status {
        return Verdict::Duplicate;
    }
    // A Job Hook of a job older than one the known status rests on may be from an earlier
    // attempt whose retry we never heard of (its clone's hook lost): it does not finish the
    // pipeline. A Pipeline Hook or the catch-up does.
    if ev.weak && status.is_completed() && ev.mentions.first().is_some_and(|j| k.basis.values().any(|&b| b > j.id)) {
        return Verdict::Late;
    }
    if k.status.is_completed() {
        return if reopens(k, ev.mentions) { Verdict::Retry } else { Verdict::Late };
    }
    // A pipeline that reaches a required manual (or delayed) job stops there: `manual` ranks with
    // `pending`, below `running`, but comes after them. Past `created`, only a full account of its
    // jobs shows that — none of them active, none older than what is known — not a Job Hook's one
    // job, and not a delivery from before someone played the job.
    if status.is_blocked() && k.status != Status::Created {
        let full_account = !ev.weak
            && !ev.mentions.is_empty()
            && ev.mentions.iter().all(|m| m.verdict != Verdict::Late && !m.status.is_active());
        return if full_account { Verdict::Advance } else { Verdict::Late };
    }
    forward(&k.status, status)
}

/// Whether `mentions` prove that jobs were retried after the evidence for `k`.
fn reopens(k: &PipelineKnown, mentions: &[JobMention]) -> bool {
    let newer_attempt =
        mentions.iter().any(|m| m.name.as_ref().and_then(|n| k.basis.get(n)).is_some_and(|b| m.id > *b));
    if newer_attempt {
        return true;
    }
    // The earlier attempt of the retried job may never have reached us: then the observation must
    // be no older than the basis on every job, and mention a job created after all of them.
    let Some(newest) = k.basis.values().max() else { return false };
    let covers = k.basis.iter().all(|(name, id)| {
        mentions.iter().any(|m| m.name.as_ref() == Some(name) && m.id == *id && m.verdict != Verdict::Late)
    });
    covers && mentions.iter().any(|m| m.id > *newest)
}

#[cfg(test)]
mod tests {
    //! The orders GitLab produces, played through the store (the real glue) as the observations
    //! `observe` makes of Pipeline Hooks and Job Hooks.
    use super::*;
    use crate::events::{BuildEvent, EventKind, EventSource, Observation};
    use crate::store::Store;
    use Status::*;

    const PIPELINE: u64 = 50;

    fn blank(kind: EventKind, gitlab_event: &str) -> BuildEvent {
        let mut e = BuildEvent::new(kind, 1, gitlab_event, EventSource::Webhook);
        e.pipeline_id = Some(PIPELINE);
        e
    }

    fn job(id: u64, name: &str, status: &Status, gitlab_event: &str) -> Observation {
        let mut e = blank(EventKind::Job, gitlab_event);
        e.job_id = Some(id);
        e.job_name = Some(name.into());
        e.status = Some(status.to_string());
        Observation { event: e, max_job_id: id }
    }

    fn pipeline(status: &Status, gitlab_event: &str) -> Observation {
        let mut e = blank(EventKind::Pipeline, gitlab_event);
        e.status = Some(status.to_string());
        Observation { event: e, max_job_id: 0 }
    }

    /// A delivery, as `observe` renders it.
    enum D<'a> {
        /// Pipeline Hook: status and builds `(id, name, status)`.
        P(Status, &'a [(u64, &'a str, Status)]),
        /// Job Hook: job id, name, status, and `commit.status`.
        J(u64, &'a str, Status, Status),
    }

    /// Plays deliveries and returns the accepted events as `kind:id:status`, `+r` for retries.
    fn play(deliveries: &[D<'_>]) -> Vec<String> {
        let store = Store::in_memory().unwrap();
        let mut out = Vec::new();
        for d in deliveries {
            let obs = match d {
                D::P(s, builds) => {
                    let mut v = vec![pipeline(s, "Pipeline Hook")];
                    v.extend(builds.iter().map(|(id, n, st)| job(*id, n, st, "Pipeline Hook")));
                    v
                }
                D::J(id, n, st, ps) => vec![job(*id, n, st, "Job Hook"), pipeline(ps, "Job Hook")],
            };
            for e in store.apply_observations(obs).unwrap() {
                let who = match e.kind {
                    EventKind::Pipeline => "p".to_owned(),
                    _ => format!("j{}", e.job_id.unwrap()),
                };
                out.push(format!("{who}:{}{}", e.status.unwrap(), if e.retry { "+r" } else { "" }));
            }
        }
        out
    }

    fn pipeline_events(deliveries: &[D<'_>]) -> Vec<String> {
        play(deliveries).into_iter().filter(|e| e.starts_with("p:")).collect()
    }

    #[test]
    fn job_attempts_move_forward_only_except_a_reset_of_a_skipped_job() {
        let run = |seq: &[Status]| {
            let mut known: Option<Status> = None;
            let mut accepted = Vec::new();
            for s in seq {
                let v = judge_job(known.as_ref(), s);
                if v.accepted() {
                    known = Some(s.clone());
                    accepted.push((s.clone(), v == Verdict::Retry));
                }
            }
            accepted
        };
        assert_eq!(run(&[Pending, Success, Running, Pending, Success]), [(Pending, false), (Success, false)]);
        assert_eq!(run(&[Failed, Success]), [(Failed, false)]);
        assert_eq!(
            run(&[Manual, Pending, Running, Success]),
            [(Manual, false), (Pending, false), (Running, false), (Success, false)]
        );
        // Skipped, then reset by a retry: `created` is ambiguous, `pending` is not.
        assert_eq!(
            run(&[Skipped, Created, Pending, Skipped, Success]),
            [(Skipped, false), (Pending, true), (Success, false)]
        );
        assert_eq!(run(&[Skipped, Success]), [(Skipped, false), (Success, true)]);
        assert_eq!(run(&[Success, Skipped]), [(Success, false)]);
    }

    #[test]
    fn reordered_sibling_hooks_never_move_the_pipeline_back() {
        // Issue 9, cause 3: job 2's `created` hook overtaken by job 1's `pending`.
        let ev = pipeline_events(&[
            D::J(1, "build", Pending, Pending),
            D::J(2, "test", Created, Created),
            D::J(3, "lint", Created, Created),
        ]);
        assert_eq!(ev, ["p:pending"]);
        // Siblings finishing: a higher id never reopens a finished pipeline.
        let ev = pipeline_events(&[
            D::P(Success, &[(1, "build", Success), (2, "test", Success)]),
            D::J(2, "test", Running, Running),
            D::J(1, "build", Running, Running),
            D::P(Running, &[(1, "build", Success), (2, "test", Running)]),
        ]);
        assert_eq!(ev, ["p:success"]);
    }

    #[test]
    fn a_sibling_hook_from_before_a_retry_does_not_advance_the_retried_pipeline() {
        // Found by the retries property test (seed 1204720486654844350): job10's `skipped` hook,
        // rendered while the first attempt ran, arrives after job00's retry was heard of.
        let ev = pipeline_events(&[
            D::J(112, "job00", Pending, Created),
            D::J(112, "job00", Failed, Failed),
            D::J(117, "job00", Canceled, Pending),
            D::J(114, "job10", Skipped, Running),
            D::P(Canceled, &[(117, "job00", Canceled), (115, "job11", Canceled), (114, "job10", Canceled)]),
        ]);
        assert_eq!(ev, ["p:created", "p:failed", "p:pending+r", "p:canceled"]);
        // A reset the hook proves itself (skipped, then queued) is after the retry: it counts.
        let ev = pipeline_events(&[
            D::P(Failed, &[(1, "build", Failed), (2, "test", Skipped)]),
            D::J(3, "build", Success, Pending),
            D::J(2, "test", Running, Running),
        ]);
        assert_eq!(ev, ["p:failed", "p:pending+r", "p:running"]);
        // Seed 16632492043864081616: the first thing heard is a retry clone's weak `running`; a
        // first attempt's `canceled` hook (its retry never heard of) must not finish it.
        let ev = pipeline_events(&[
            D::J(129, "job11", Skipped, Running),
            D::J(120, "job01", Canceled, Canceled),
            D::P(Running, &[(124, "job00", Running), (126, "job01", Pending), (129, "job11", Created)]),
        ]);
        assert_eq!(ev, ["p:running"]);
    }

    #[test]
    fn cancel_then_retry_ends_on_the_real_final_status() {
        // Issue 9, cause 4, in GitLab's order: the clone's hook carries the pre-retry status.
        let ev = play(&[
            D::P(Running, &[(1, "build", Running), (2, "test", Created)]),
            D::J(2, "test", Canceled, Running),
            D::J(1, "build", Canceled, Canceled),
            D::P(Canceled, &[(1, "build", Canceled), (2, "test", Canceled)]),
            D::J(3, "build", Created, Canceled),
            D::J(4, "test", Created, Canceled),
            D::J(3, "build", Pending, Canceled),
            D::P(Pending, &[(3, "build", Pending), (4, "test", Created)]),
            D::J(3, "build", Running, Pending),
            D::P(Running, &[(3, "build", Running), (4, "test", Created)]),
            D::J(3, "build", Success, Running),
            D::J(4, "test", Pending, Running),
            D::J(4, "test", Running, Running),
            D::J(4, "test", Success, Running),
            D::P(Success, &[(3, "build", Success), (4, "test", Success)]),
        ]);
        let p: Vec<_> = ev.iter().filter(|e| e.starts_with("p:")).collect();
        assert_eq!(p, ["p:running", "p:canceled", "p:pending+r", "p:running", "p:success"]);
        assert!(ev.contains(&"j3:success".to_owned()) && ev.contains(&"j4:success".to_owned()));
        // The same, with every pre-retry delivery late and the final one first.
        let ev = pipeline_events(&[
            D::P(Canceled, &[(1, "build", Canceled), (2, "test", Canceled)]),
            D::P(Success, &[(3, "build", Success), (4, "test", Success)]),
            D::J(3, "build", Created, Canceled),
            D::P(Pending, &[(3, "build", Pending), (4, "test", Created)]),
            D::J(1, "build", Canceled, Canceled),
            D::P(Running, &[(1, "build", Running), (2, "test", Created)]),
        ]);
        assert_eq!(ev, ["p:canceled", "p:success+r"]);
    }

    #[test]
    fn a_retry_reopens_once_and_what_predates_it_stays_late() {
        let ev = pipeline_events(&[
            D::P(Failed, &[(1, "build", Success), (2, "test", Failed)]),
            // A late hook of the failed attempt is no retry.
            D::J(2, "test", Running, Running),
            D::J(7, "test", Running, Running),
            // The Pipeline Hook from before the retry, overtaken by it, names the old attempt.
            D::P(Failed, &[(1, "build", Success), (2, "test", Failed)]),
        ]);
        assert_eq!(ev, ["p:failed", "p:running+r"]);
        let ev = pipeline_events(&[
            D::P(Failed, &[(1, "build", Success), (2, "test", Failed)]),
            D::J(7, "test", Running, Running),
            D::J(7, "test", Failed, Failed),
        ]);
        assert_eq!(ev, ["p:failed", "p:running+r", "p:failed"]);
        // A retry that ends as the first run did shows nothing new, and the lagging `running`
        // of that retry stays late.
        let ev = pipeline_events(&[
            D::P(Failed, &[(1, "build", Success), (2, "test", Failed)]),
            D::P(Failed, &[(1, "build", Success), (7, "test", Failed)]),
            D::P(Running, &[(1, "build", Success), (7, "test", Running)]),
        ]);
        assert_eq!(ev, ["p:failed"]);
    }

    #[test]
    fn weak_pipeline_statuses_never_finish_a_pipeline_wrongly() {
        // A parallel job finishing last carries `failed` (after test:2 failed), then test is
        // retried while all about test:2 was lost; the final hook reopens by covering the basis.
        let ev = pipeline_events(&[
            D::J(1, "build_a", Success, Failed),
            D::P(Success, &[(1, "build_a", Success), (9, "test", Success)]),
        ]);
        assert_eq!(ev, ["p:failed", "p:success+r"]);
        // Reopening without a known earlier attempt needs the basis covered: this Pipeline Hook
        // shows build_a older than the hook that finished the pipeline, so it is not a retry.
        let ev = pipeline_events(&[
            D::J(1, "build_a", Success, Failed),
            D::P(Running, &[(1, "build_a", Running), (2, "test", Failed)]),
        ]);
        assert_eq!(ev, ["p:failed"]);
        // After a retry, an older sibling's hook carrying a finished status may predate it.
        let ev = pipeline_events(&[
            D::P(Failed, &[(1, "a", Success), (2, "b", Failed)]),
            D::P(Running, &[(1, "a", Success), (9, "b", Running)]),
            D::J(3, "c", Success, Failed),
        ]);
        assert_eq!(ev, ["p:failed", "p:running+r"]);
        // A finished status from a hook whose job is still queued is stale.
        assert_eq!(pipeline_events(&[D::J(5, "x", Pending, Success)]), Vec::<String>::new());
        // A hook repeating what is known of its job tells nothing new of the pipeline.
        let ev = pipeline_events(&[
            D::P(Running, &[(1, "build", Success), (2, "test", Running)]),
            D::J(1, "build", Success, Pending),
        ]);
        assert_eq!(ev, ["p:running"]);
        // Nor can it finish the pipeline: it may have been rendered at any time after its job
        // finished, so it is no evidence about the other jobs.
        let ev = pipeline_events(&[
            D::P(Running, &[(1, "build", Success), (2, "test", Running)]),
            D::J(1, "build", Success, Failed),
        ]);
        assert_eq!(ev, ["p:running"]);
        // The last job's hook makes up for the lost final Pipeline Hook.
        let ev = pipeline_events(&[
            D::P(Running, &[(1, "build", Success), (2, "test", Running)]),
            D::J(2, "test", Success, Success),
        ]);
        assert_eq!(ev, ["p:running", "p:success"]);
    }

    #[test]
    fn a_played_manual_job_and_previous_statuses() {
        let store = Store::in_memory().unwrap();
        let mut seen = Vec::new();
        for (s, ps) in [(Manual, Manual), (Pending, Pending), (Running, Running), (Success, Success)] {
            let obs = vec![job(1, "deploy", &s, "Job Hook"), pipeline(&ps, "Job Hook")];
            for e in store.apply_observations(obs).unwrap() {
                seen.push((e.kind, e.status.unwrap(), e.previous_status));
            }
        }
        let pipes: Vec<_> = seen.iter().filter(|e| e.0 == EventKind::Pipeline).map(|e| e.1.as_str()).collect();
        assert_eq!(pipes, ["manual", "pending", "running", "success"]);
        assert_eq!(seen[2], (EventKind::Job, "pending".into(), Some("manual".into())));
    }

    #[test]
    fn a_pipeline_that_reaches_a_manual_job_stops_there() {
        let ev = pipeline_events(&[
            D::P(Running, &[(1, "build", Running), (2, "flash", Created)]),
            D::J(1, "build", Success, Running),
            // A Job Hook alone cannot say the pipeline is blocked.
            D::J(2, "flash", Manual, Manual),
            D::P(Manual, &[(1, "build", Success), (2, "flash", Manual)]),
            // Someone plays it; a late `manual` from before the play stays late.
            D::P(Pending, &[(1, "build", Success), (2, "flash", Pending)]),
            D::P(Manual, &[(1, "build", Success), (2, "flash", Manual)]),
            D::P(Success, &[(1, "build", Success), (2, "flash", Success)]),
        ]);
        assert_eq!(ev, ["p:running", "p:manual", "p:pending", "p:success"]);
        // A job is blocked only right after it was created.
        assert_eq!(judge_job(Some(&Pending), &Manual), Verdict::Late);
        assert_eq!(judge_job(Some(&Created), &Manual), Verdict::Advance);
    }
}
