//! The jobs of a settled pipeline, as the build records them: from what the webhooks told the
//! daemon when that is complete (no request), else from GitLab's job list.

use cloudci_gitlab::types::{Job, Status};
use cloudci_gitlab::{JobFilter, JobId, PipelineId, ProjectRef};
use cloudci_webhook::KnownJob;
use futures_util::TryStreamExt;

use super::Orchestrator;
use super::follow::EventFeed;

/// One job of a settled pipeline: what the record, the logs and the artifacts need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettledJob {
    /// This attempt's id.
    pub id: JobId,
    /// Name.
    pub name: String,
    /// Stage.
    pub stage: String,
    /// Final (or blocked) status.
    pub status: Status,
    /// May fail without failing the pipeline.
    pub allow_failure: bool,
    /// It started, so it has a log.
    pub started: bool,
    /// It has an artifact archive; its size when known.
    pub artifacts: Option<Option<u64>>,
}

impl From<Job> for SettledJob {
    fn from(j: Job) -> Self {
        Self {
            id: j.id,
            started: j.started_at.is_some(),
            artifacts: j.artifacts_file.map(|a| a.size),
            name: j.name,
            stage: j.stage,
            status: j.status,
            allow_failure: j.allow_failure,
        }
    }
}

impl SettledJob {
    /// From the daemon's store, when it knows all this job needs (name, stage, whether it may
    /// fail and started; for a passed job, whether it has artifacts).
    fn known(k: KnownJob) -> Option<Self> {
        let artifacts = match k.artifacts {
            Some(a) => a.then_some(None),
            None if k.status == Status::Success => return None,
            None => None,
        };
        Some(Self {
            id: JobId(k.id),
            name: k.name?,
            stage: k.stage?,
            allow_failure: k.allow_failure?,
            started: k.started?,
            status: k.status,
            artifacts,
        })
    }
}

impl Orchestrator {
    /// Pipeline `pipeline`'s latest jobs once it settled. With the daemon's webhooks, as they
    /// told it, when every job is settled there and fully described (a Pipeline Hook lists
    /// them all with their artifacts); else GitLab's list.
    pub(super) async fn settled_jobs(
        &self,
        project: &ProjectRef,
        pipeline: PipelineId,
    ) -> Result<Vec<SettledJob>, cloudci_gitlab::Error> {
        if let EventFeed::Hub(hub) = self.inner.follower.feed() {
            let known = hub.pipeline_jobs(pipeline.0).await;
            if let Ok(known) = known {
                let settled = !known.is_empty()
                    && known
                        .iter()
                        .all(|k| k.status.is_completed() || k.status.is_blocked() || k.status == Status::Created);
                let jobs: Option<Vec<SettledJob>> = known.into_iter().map(SettledJob::known).collect();
                if let Some(jobs) = jobs.filter(|_| settled) {
                    return Ok(jobs);
                }
            }
        }
        let listed: Vec<Job> =
            self.inner.gitlab.pipeline_jobs(project.clone(), pipeline, &JobFilter::default()).try_collect().await?;
        Ok(listed.into_iter().map(Into::into).collect())
    }
}
