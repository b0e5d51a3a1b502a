//! Getting a build its pipeline: its turn in the queue, the create (once), the jobs seeded into
//! its record, and, for targets sharing a project's pipeline, adopting the sibling's.

use cloudci_gitlab::{JobFilter, PipelineId, ProjectRef};
use futures_util::TryStreamExt;

use super::queue::Slot;
use super::{BuildStatus, Orchestrator, OrchestratorError};
use crate::builds::{BuildRecord, BuildWork, JobRecord};

impl Orchestrator {
    /// Waits for the build's turn in the queue, then creates its pipeline; a 429 holds the
    /// queue and the build keeps the head of the line. `None`: canceled while it waited.
    pub(super) async fn create_when_its_turn(
        &self,
        record: &BuildRecord,
        work: &BuildWork,
        project: &ProjectRef,
        label: &str,
    ) -> Result<Option<(PipelineId, Slot)>, OrchestratorError> {
        let queue = &self.inner.queue;
        let reporter = &self.inner.reporter;
        let mut first = false;
        loop {
            let records = self.records().clone();
            let slot = queue
                .acquire(record.id, first, |w| {
                    reporter.line(label, &w.to_string());
                    reporter.state(label, BuildStatus::Queued, None);
                    let (records, text, id) = (records.clone(), w.to_string(), record.id);
                    // Shown in the record (status, API, dashboard) while it waits.
                    tokio::spawn(async move {
                        let saved = records.update(id, move |r, _| {
                            if r.status == BuildStatus::Queued && r.pipeline_id.is_none() {
                                r.reason = Some(text.clone());
                            }
                        });
                        let _ = saved.await;
                    });
                })
                .await;
            let Some(slot) = slot else { return Ok(None) };
            // Canceled while it waited (by another process, or just before its turn came).
            let (now, _) = self.records().get(record.id).await?;
            if now.status == BuildStatus::Canceled {
                return Ok(None);
            }
            match self.create_pipeline(record, work, project, label).await {
                Ok(p) => {
                    queue.created();
                    return Ok(Some((p, slot)));
                }
                Err(OrchestratorError::Gitlab(cloudci_gitlab::Error::RateLimited { retry_after, .. })) => {
                    let hold = queue.hold(retry_after);
                    reporter.line(
                        label,
                        &format!("GitLab rate limits new pipelines (429): the queue waits {} s", hold.as_secs()),
                    );
                    first = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Puts the pipeline's jobs into the record as GitLab lists them right after creation, so
    /// a running build shows its jobs (and `logs --follow` has one) before any event. A failure
    /// only delays this until the first event.
    pub(super) async fn seed_jobs(&self, id: i64, project: &ProjectRef, pipeline: PipelineId) {
        let listed: Result<Vec<_>, _> =
            self.inner.gitlab.pipeline_jobs(project.clone(), pipeline, &JobFilter::default()).try_collect().await;
        let jobs = match listed {
            Ok(jobs) => jobs,
            Err(e) => return tracing::debug!(build = id, "listing a new pipeline's jobs: {e}"),
        };
        let saved = self.records().update(id, move |r, w| {
            for j in jobs.iter().filter(|j| w.selector.as_ref().is_none_or(|s| s.matches(&j.name))) {
                let entry = r.jobs.entry(j.name.clone()).or_insert(JobRecord {
                    id: j.id.0,
                    status: j.status.clone(),
                    log: None,
                    stage: None,
                    allow_failure: j.allow_failure,
                });
                // Only a newer attempt: an event may already have moved this one further.
                if j.id.0 > entry.id {
                    entry.id = j.id.0;
                    entry.status = j.status.clone();
                }
                entry.stage = Some(j.stage.clone());
                entry.allow_failure = j.allow_failure;
            }
        });
        if let Err(e) = saved.await {
            tracing::warn!(build = id, "saving a new pipeline's jobs: {e}");
        }
    }
}

impl Orchestrator {
    /// The lock of `key` in `run` (one task at a time does what it guards).
    pub(super) async fn lock_for(&self, run: i64, key: &str) -> super::ProjectLock {
        let mut locks = self.inner.projects.lock().await;
        locks.entry((run, key.to_owned())).or_default().clone()
    }

    /// The pipeline a sibling target (same run, project and request) created for the jobs they
    /// share, taken into this build's record.
    pub(super) async fn sibling_pipeline(
        &self,
        record: &BuildRecord,
        work: &BuildWork,
    ) -> Result<Option<PipelineId>, OrchestratorError> {
        let siblings = self.records().run(record.run).await?;
        let Some((found, _)) = siblings.into_iter().find(|(r, w)| {
            r.id != record.id
                && r.project == record.project
                && w.selector.is_some()
                && w.request_id == work.request_id
                && r.pipeline_id.is_some()
        }) else {
            return Ok(None);
        };
        let (pid, url, sha, r) = (found.pipeline_id, found.pipeline_url, found.sha, found.git_ref);
        self.records()
            .update(record.id, move |rec, w| {
                rec.pipeline_id = pid;
                rec.pipeline_url.clone_from(&url);
                rec.sha.clone_from(&sha);
                rec.git_ref.clone_from(&r);
                rec.status = BuildStatus::Running;
                rec.reason = None;
                w.create_attempted = true;
            })
            .await?;
        let pid = pid.unwrap_or_default();
        self.inner.reporter.line(
            &format!("{}/{}", record.project, record.target),
            &format!("its jobs are in pipeline {pid} (shared with the project's other targets)"),
        );
        Ok(Some(PipelineId(pid)))
    }
}
