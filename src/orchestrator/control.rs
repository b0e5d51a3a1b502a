//! Acting on a build's pipeline on GitLab — retry, cancel, play its manual jobs — and carrying
//! the build on again as a new attempt when it is this process's to carry.

use cloudci_gitlab::types::Status;
use cloudci_gitlab::{JobFilter, PipelineId, ProjectRef};
use futures_util::TryStreamExt;

use super::{BuildStatus, Orchestrator, OrchestratorError, targets};
use crate::builds::BuildRecord;

impl Orchestrator {
    /// Retries build `id`'s pipeline on GitLab and follows the new attempt: its jobs, logs,
    /// artifacts and, on success, what follows (the merge request still once). A build that
    /// never got a pipeline (canceled while queued, or refused) is queued again.
    pub async fn retry(&self, id: i64) -> Result<BuildRecord, OrchestratorError> {
        let (record, work) = self.records().get(id).await?;
        let ours = work.owner == self.inner.owner || work.done;
        let Some(pipeline) = record.pipeline_id else {
            if !record.status.is_final() {
                return Err(OrchestratorError::NoPipeline(id));
            }
            // No pipeline to retry: the build starts again from its queue turn.
            return self.reopen(id, ours, BuildStatus::Queued).await;
        };
        if let Some(selector) = &work.selector {
            // A target of a shared pipeline: only its failed jobs (what they skipped follows).
            let gitlab = &self.inner.gitlab;
            let project = ProjectRef::parse(&record.gitlab);
            let jobs: Vec<_> = gitlab
                .pipeline_jobs(project.clone(), PipelineId(pipeline), &JobFilter::default())
                .try_collect()
                .await?;
            let failed: Vec<_> = jobs
                .iter()
                .filter(|j| selector.matches(&j.name))
                .filter(|j| (j.status == Status::Failed && !j.allow_failure) || j.status == Status::Canceled)
                .collect();
            if failed.is_empty() {
                return Err(OrchestratorError::NothingToDo {
                    build: id,
                    what: "no failed or canceled job to retry".into(),
                });
            }
            for j in failed {
                gitlab.retry_job(project.clone(), j.id).await?;
            }
        } else {
            self.inner.gitlab.retry_pipeline(ProjectRef::parse(&record.gitlab), PipelineId(pipeline)).await?;
        }
        self.reopen(id, ours, BuildStatus::Running).await
    }

    /// Cancels build `id`'s pipeline; it is followed until GitLab says it settled, and recorded
    /// with its canceled jobs. Returns the record with GitLab's answer as its status. A build
    /// still queued leaves the queue and ends canceled, with no pipeline.
    pub async fn cancel(&self, id: i64) -> Result<BuildRecord, OrchestratorError> {
        let (record, work) = self.records().get(id).await?;
        let ours = work.owner == self.inner.owner || work.done;
        let Some(pipeline) = record.pipeline_id else {
            if record.status != BuildStatus::Queued {
                return Err(OrchestratorError::NoPipeline(id));
            }
            let (record, _) = self
                .records()
                .update(id, |r, w| {
                    if r.pipeline_id.is_none() && w.settled.is_none() {
                        r.status = BuildStatus::Canceled;
                        r.reason = Some("canceled while queued".into());
                        w.settled = Some(BuildStatus::Canceled);
                    }
                })
                .await?;
            self.inner.queue.cancel(id);
            if ours {
                self.spawn_build(id);
            }
            return Ok(record);
        };
        let answer = match &work.selector {
            // A target of a shared pipeline: only its own jobs.
            Some(selector) => {
                let gitlab = &self.inner.gitlab;
                let project = ProjectRef::parse(&record.gitlab);
                let jobs: Vec<_> = gitlab
                    .pipeline_jobs(project.clone(), PipelineId(pipeline), &JobFilter::default())
                    .try_collect()
                    .await?;
                let mut now = Vec::new();
                for j in jobs.into_iter().filter(|j| selector.matches(&j.name)) {
                    let j = if j.status.is_completed() { j } else { gitlab.cancel_job(project.clone(), j.id).await? };
                    now.push(j);
                }
                targets::composite(now.iter().map(|j| (j.name.as_str(), &j.status, j.allow_failure)))
                    .map_or(record.status, |c| c.status)
            }
            None => BuildStatus::from_pipeline(
                &self
                    .inner
                    .gitlab
                    .cancel_pipeline(ProjectRef::parse(&record.gitlab), PipelineId(pipeline))
                    .await?
                    .status,
            ),
        };
        let mut record = record;
        if ours {
            (record, _) = self
                .records()
                .update(id, |r, w| {
                    r.status = BuildStatus::Running;
                    w.settled = None;
                    w.done = false;
                })
                .await?;
            self.spawn_build(id);
        }
        record.status = answer;
        Ok(record)
    }

    /// Starts build `id`'s manual jobs (`job`: only that one) on GitLab and follows the build
    /// again: in a shared pipeline, the target's own manual jobs only.
    pub async fn play(&self, id: i64, job: Option<&str>) -> Result<BuildRecord, OrchestratorError> {
        let (record, work) = self.records().get(id).await?;
        let ours = work.owner == self.inner.owner || work.done;
        let Some(pipeline) = record.pipeline_id else { return Err(OrchestratorError::NoPipeline(id)) };
        let gitlab = &self.inner.gitlab;
        let project = ProjectRef::parse(&record.gitlab);
        let jobs: Vec<_> =
            gitlab.pipeline_jobs(project.clone(), PipelineId(pipeline), &JobFilter::default()).try_collect().await?;
        let manual: Vec<_> = jobs
            .iter()
            .filter(|j| work.selector.as_ref().is_none_or(|s| s.matches(&j.name)))
            .filter(|j| j.status == Status::Manual)
            .collect();
        let chosen: Vec<_> = match job {
            Some(name) => manual.iter().copied().filter(|j| j.name == name).collect(),
            None => manual.clone(),
        };
        if chosen.is_empty() {
            let names: Vec<&str> = manual.iter().map(|j| j.name.as_str()).collect();
            let what = match job {
                Some(name) if !names.is_empty() => {
                    format!("no manual job {name:?}; its manual jobs: {}", names.join(", "))
                }
                Some(name) => format!("no manual job {name:?} (none waits to be started)"),
                None => "no manual job to start".into(),
            };
            return Err(OrchestratorError::NothingToDo { build: id, what });
        }
        for j in chosen {
            gitlab.play_job(project.clone(), j.id, &[]).await?;
            self.inner.reporter.line(&format!("{}/{}", record.project, record.target), &format!("started {}", j.name));
        }
        self.reopen(id, ours, BuildStatus::Running).await
    }

    /// A new attempt of the build, in `status` (`Running` after a retry or a play on GitLab,
    /// `Queued` when it has no pipeline and starts again), carried on by this process when it
    /// is this process's to carry.
    async fn reopen(&self, id: i64, ours: bool, status: BuildStatus) -> Result<BuildRecord, OrchestratorError> {
        let (record, _) = self
            .records()
            .update(id, move |r, w| {
                r.status = status;
                r.reason = None;
                w.attempt += 1;
                if ours {
                    w.settled = None;
                    w.done = false;
                }
            })
            .await?;
        if ours {
            self.spawn_build(id);
        }
        Ok(record)
    }
}
