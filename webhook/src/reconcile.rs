//! The reconciler: when GitLab goes quiet about a pipeline that is not finished (a dropped
//! delivery, a tunnel outage, a hook GitLab auto-disabled, a restart of cloudci), it asks GitLab's
//! API and feeds what it learns through the same state machine, so subscribers never miss a
//! final state. It polls only what is silent, so a healthy webhook flow costs no API calls.

use std::time::Duration;

use cloudci_gitlab::{Gitlab, JobFilter, PipelineId, ProjectId};
use futures_util::TryStreamExt;

use crate::events::{BuildEvent, EventKind, EventSource, Observation};
use crate::hub::Hub;

/// Polls silent pipelines.
#[derive(Debug, Clone)]
pub struct Reconciler {
    gitlab: Gitlab,
    hub: Hub,
    silence: Duration,
}

impl Reconciler {
    /// A reconciler that polls pipelines nobody heard of for `silence`.
    pub fn new(gitlab: Gitlab, hub: Hub, silence: Duration) -> Self {
        Self { gitlab, hub, silence }
    }

    /// One round. With `everything`, polls every unfinished pipeline, silent or not (after a
    /// restart or a tunnel reconnect). Returns how many events it logged.
    pub async fn round(&self, everything: bool) -> Result<usize, cloudci_gitlab::Error> {
        let store = self.hub.store().clone();
        let active = tokio::task::spawn_blocking(move || store.active_pipelines())
            .await
            .expect("store task")
            .unwrap_or_default();
        let now = chrono::Utc::now().timestamp();
        let mut logged = 0;
        for p in active {
            if !everything && now - p.last_heard < self.silence.as_secs() as i64 {
                continue;
            }
            tracing::info!(pipeline.id = p.pipeline_id, "no word from GitLab; asking its API");
            let observations = self.observe(p.project_id, p.project.clone(), p.pipeline_id).await?;
            let store = self.hub.store().clone();
            let events = tokio::task::spawn_blocking(move || store.apply_observations(observations))
                .await
                .expect("store task")
                .map_err(|e| cloudci_gitlab::Error::Config(e.to_string()))?;
            logged += events.len();
            self.hub.publish(events);
        }
        Ok(logged)
    }

    async fn observe(
        &self,
        project_id: u64,
        path: Option<String>,
        id: u64,
    ) -> Result<Vec<Observation>, cloudci_gitlab::Error> {
        let pipeline = self.gitlab.pipeline(ProjectId(project_id), PipelineId(id)).await?;
        let jobs: Vec<_> = self
            .gitlab
            .pipeline_jobs(ProjectId(project_id), PipelineId(id), &JobFilter::default())
            .try_collect()
            .await?;
        let max_job_id = jobs.iter().map(|j| j.id.0).max().unwrap_or(0);
        let blank = |kind| {
            let mut e = BuildEvent::new(kind, project_id, "poll", EventSource::Poll);
            e.project.clone_from(&path);
            e.git_ref = Some(pipeline.git_ref.clone());
            e.sha = Some(pipeline.sha.clone());
            e.pipeline_id = Some(id);
            e
        };
        let mut out = Vec::new();
        let mut jobs = jobs;
        jobs.sort_by_key(|j| j.id);
        for j in &jobs {
            let mut e = blank(EventKind::Job);
            e.job_id = Some(j.id.0);
            e.job_name = Some(j.name.clone());
            e.stage = Some(j.stage.clone());
            e.status = Some(j.status.to_string());
            e.failure_reason = j.failure_reason.clone();
            e.url = Some(j.web_url.clone());
            out.push(Observation { event: e, max_job_id: j.id.0 });
        }
        // The pipeline last, after its jobs, as webhooks would have told it.
        let mut e = blank(EventKind::Pipeline);
        e.status = Some(pipeline.status.to_string());
        e.url = Some(pipeline.web_url.clone());
        out.push(Observation { event: e, max_job_id });
        Ok(out)
    }

    /// Runs rounds every `every` until dropped; the first round polls everything unfinished.
    pub async fn run(self, every: Duration) {
        let mut everything = true;
        loop {
            match self.round(everything).await {
                Ok(n) if n > 0 => tracing::info!(events = n, "reconciled from GitLab's API"),
                Ok(_) => {}
                Err(e) => tracing::warn!("reconciling: {e}"),
            }
            everything = false;
            tokio::time::sleep(every).await;
        }
    }
}
