//! The pipeline follower: one way, for every caller, to learn how a pipeline goes until it
//! settles. Inside the daemon it listens to the hub (the daemon's reconciler turns GitLab's API
//! into events when webhooks are silent): a pipeline followed from its creation settles on the
//! hub's final event, which went through the daemon's state machine; one followed again (after
//! a restart or a retry) is confirmed with GitLab's API, and a long silence is a safety net.
//! Without a daemon it polls GitLab, from 1 s backing off to 30 s with jitter.

use std::pin::Pin;
use std::time::Duration;

use cloudci_gitlab::types::Status;
use cloudci_gitlab::{Gitlab, JobFilter, PipelineId, ProjectRef};
use cloudci_webhook::{BuildEvent, EventFilter, EventKind, Hub};
use futures_util::{FutureExt, Stream, StreamExt, TryStreamExt};

/// Where live events come from.
#[derive(Clone)]
pub enum EventFeed {
    /// No daemon: poll GitLab.
    None,
    /// The daemon in this process.
    Hub(Hub),
}

/// Events about one project, subscribed before its pipeline is created so none is missed.
pub type Events = Pin<Box<dyn Stream<Item = BuildEvent> + Send>>;

/// Whether the jobs a caller follows are done, given the pipeline's jobs (name → status).
pub type JobsDone<'a> = dyn Fn(&std::collections::BTreeMap<String, Status>) -> bool + Send + Sync + 'a;

/// A job's status as the follower saw it change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSeen {
    /// Job name.
    pub name: String,
    /// Job id (0 when the event did not say).
    pub id: u64,
    /// New status.
    pub status: Status,
    /// Its stage, when known.
    pub stage: Option<String>,
}

/// With events, how long a silence lasts before the follower asks GitLab itself. The daemon's
/// reconciler covers silent pipelines long before this; it is only a safety net.
const SAFETY_NET: Duration = Duration::from_secs(60);
/// Without events: the first poll, and the longest wait between polls. The first comes after
/// 1 s (then 2, 4, … s) so that `--watch` still sees a short job running.
const FIRST_POLL: Duration = Duration::from_millis(1000);
const MAX_POLL: Duration = Duration::from_secs(30);

/// Finished, or blocked on a person (a required manual job): either way, nothing more happens
/// without someone acting, so the build reports where it stands instead of waiting forever.
pub fn settled(status: &Status) -> bool {
    status.is_completed() || status.is_blocked()
}

/// Follows pipelines.
#[derive(Clone)]
pub struct Follower {
    gitlab: Gitlab,
    feed: EventFeed,
}

impl Follower {
    /// A follower over `feed`, asking `gitlab` when it must.
    pub fn new(gitlab: Gitlab, feed: EventFeed) -> Self {
        Self { gitlab, feed }
    }

    /// Where its events come from.
    pub fn feed(&self) -> &EventFeed {
        &self.feed
    }

    /// The events about `gitlab_project` from now on, if there is a feed.
    pub async fn subscribe(&self, gitlab_project: &str) -> Option<Events> {
        match &self.feed {
            EventFeed::None => None,
            EventFeed::Hub(hub) => {
                let filter = EventFilter { projects: vec![gitlab_project.to_owned()], ..EventFilter::default() };
                Some(Box::pin(hub.subscribe(filter, None).filter_map(|r| async move { r.ok() })))
            }
        }
    }

    /// Asks the daemon's reconciler to cover `pipeline` if its webhooks stay silent.
    pub async fn track(&self, project_id: u64, path: &str, pipeline: u64) {
        if let EventFeed::Hub(hub) = &self.feed
            && hub.track(project_id, path, pipeline).await.is_err()
        {
            tracing::warn!(pipeline.id = pipeline, "could not hand the pipeline to the reconciler");
        }
    }

    /// Follows `id` until it settles; returns its settled status as GitLab's API gives it.
    /// `check_first` asks GitLab before waiting (a pipeline followed again after a restart or a
    /// retry may have settled already). Each job change is passed to `on_job`.
    pub async fn follow(
        &self,
        project: &ProjectRef,
        id: PipelineId,
        events: Option<Events>,
        check_first: bool,
        on_job: &mut (dyn FnMut(JobSeen) + Send),
    ) -> Result<Status, cloudci_gitlab::Error> {
        self.follow_until(project, id, events, check_first, on_job, None).await
    }

    /// Like [`Follower::follow`], and it also ends when `done` says so of the pipeline's jobs
    /// (name → status) as GitLab's API lists them: a target that is some jobs of a shared
    /// pipeline is settled when its own jobs are, whatever the others do. Returns the
    /// pipeline's status at that moment (not settled, then).
    pub async fn follow_until(
        &self,
        project: &ProjectRef,
        id: PipelineId,
        mut events: Option<Events>,
        check_first: bool,
        on_job: &mut (dyn FnMut(JobSeen) + Send),
        done: Option<&JobsDone<'_>>,
    ) -> Result<Status, cloudci_gitlab::Error> {
        let mut known: std::collections::BTreeMap<String, Status> = std::collections::BTreeMap::new();
        let mut poll_wait = FIRST_POLL;
        let mut ask = check_first;
        // How long a silence may last with events; shortened once events and GitLab disagreed.
        let mut patience = SAFETY_NET;
        let mut said_final = false;
        // Events about a pipeline followed from its creation are trusted to say it settled;
        // one followed again (after a restart or a retry) is confirmed with GitLab's API.
        let trust_final = !check_first;
        loop {
            if ask {
                ask = false;
                let contradicted = std::mem::take(&mut said_final);
                // Events can be late or, around retries, wrong: GitLab's API decides.
                let p = self.gitlab.pipeline(project.clone(), id).await?;
                if events.is_none() || settled(&p.status) || done.is_some() {
                    // Without events, job changes are seen here.
                    let jobs: Vec<_> =
                        self.gitlab.pipeline_jobs(project.clone(), id, &JobFilter::default()).try_collect().await?;
                    for j in jobs {
                        if known.get(&j.name) != Some(&j.status) {
                            known.insert(j.name.clone(), j.status.clone());
                            on_job(JobSeen { name: j.name, id: j.id.0, status: j.status, stage: Some(j.stage) });
                        }
                    }
                }
                if settled(&p.status) || done.is_some_and(|d| d(&known)) {
                    return Ok(p.status);
                }
                if contradicted {
                    // An event said final and GitLab says not: do not trust the feed's silence
                    // either (e.g. a retried pipeline whose last event was stale).
                    patience = jittered(poll_wait);
                    poll_wait = (poll_wait * 2).min(MAX_POLL);
                }
            }
            let Some(stream) = events.as_mut() else {
                tokio::time::sleep(jittered(poll_wait)).await;
                poll_wait = (poll_wait * 2).min(MAX_POLL);
                ask = true;
                continue;
            };
            match tokio::time::timeout(patience, stream.next()).await {
                Ok(Some(e)) if e.pipeline_id == Some(id.0) => {
                    let status = e.status().unwrap_or(Status::Created);
                    match e.kind {
                        EventKind::Job => {
                            let name = e.job_name.clone().unwrap_or_default();
                            if known.get(&name) != Some(&status) {
                                known.insert(name.clone(), status.clone());
                                on_job(JobSeen { name, id: e.job_id.unwrap_or(0), status, stage: e.stage.clone() });
                                // The target's jobs may be done: GitLab's API confirms.
                                ask |= done.is_some_and(|d| d(&known));
                            }
                        }
                        EventKind::Pipeline if settled(&status) && trust_final && done.is_none() => {
                            // A pipeline created after we subscribed: every event about it went
                            // through the daemon's state machine, so a final one is final. Its
                            // jobs' last events come in the same batch, already here.
                            while let Some(Some(e)) = stream.next().now_or_never() {
                                if e.kind == EventKind::Job && e.pipeline_id == Some(id.0) {
                                    let status = e.status().unwrap_or(Status::Created);
                                    let name = e.job_name.clone().unwrap_or_default();
                                    if known.get(&name) != Some(&status) {
                                        known.insert(name.clone(), status.clone());
                                        on_job(JobSeen {
                                            name,
                                            id: e.job_id.unwrap_or(0),
                                            status,
                                            stage: e.stage.clone(),
                                        });
                                    }
                                }
                            }
                            return Ok(status);
                        }
                        EventKind::Pipeline if settled(&status) => {
                            said_final = true;
                            ask = true;
                        }
                        _ => {}
                    }
                }
                Ok(Some(_)) => {}
                // The feed ended (it should not): poll from now on.
                Ok(None) => {
                    events = None;
                    ask = true;
                }
                Err(_) => {
                    // After a contradiction, each silence counts as one: keep checking.
                    said_final |= patience < SAFETY_NET;
                    ask = true;
                }
            }
        }
    }
}

/// `wait` ± 20%, so many followers do not poll in step.
pub(super) fn jittered(wait: Duration) -> Duration {
    let spread = wait.as_millis() as u64 / 5;
    let offset = rand::random_range(0..=2 * spread.max(1));
    (wait + Duration::from_millis(offset)).saturating_sub(Duration::from_millis(spread))
}

#[cfg(test)]
mod tests {
    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..100 {
            let d = super::jittered(std::time::Duration::from_secs(10));
            assert!(d >= std::time::Duration::from_secs(8) && d <= std::time::Duration::from_secs(12), "{d:?}");
        }
    }
}
