//! Creating pipelines exactly once. Every pipeline cloudci starts carries
//! `CLOUDCI_REQUEST=<id>`, saved in the build's record before the POST; when the POST may or may
//! not have reached GitLab (an ambiguous failure, or a crash before the answer was recorded),
//! the pipeline carrying that id is looked for and adopted instead of started again.

use cloudci_gitlab::types::{CreatePipeline, Pipeline};
use cloudci_gitlab::{Gitlab, PipelineFilter, PipelineId, ProjectRef};
use futures_util::{StreamExt, TryStreamExt};

use super::{BuildStatus, Orchestrator, OrchestratorError, Reporter};
use crate::builds::{BuildRecord, BuildWork};

/// The CI variable holding the id of the request that started a pipeline.
pub const REQUEST_VARIABLE: &str = "CLOUDCI_REQUEST";

/// Starts the pipeline `params` describes (which carries [`REQUEST_VARIABLE`]). After an
/// ambiguous failure ([`cloudci_gitlab::Error::MaybeApplied`]) it adopts the pipeline GitLab
/// started, or tries again when there is none — never two pipelines for one request.
pub async fn start_pipeline(
    gitlab: &Gitlab,
    project: &ProjectRef,
    params: &CreatePipeline,
    since: chrono::DateTime<chrono::Utc>,
    reporter: &dyn Reporter,
    label: &str,
) -> Result<Pipeline, cloudci_gitlab::Error> {
    let request = params.variables.iter().find(|v| v.key == REQUEST_VARIABLE).map(|v| v.value.clone());
    let mut attempts = 0;
    loop {
        match gitlab.create_pipeline(project.clone(), params).await {
            Ok(p) => return Ok(p),
            Err(e @ cloudci_gitlab::Error::MaybeApplied { .. }) if attempts < 3 => {
                attempts += 1;
                reporter.line(label, &format!("{e}; checking whether GitLab started it"));
                if let Some(id) = &request
                    && let Some(p) = find_pipeline(gitlab, project, &params.git_ref, id, since).await?
                {
                    reporter.line(label, &format!("it did: pipeline {}", p.id));
                    return Ok(p);
                }
                reporter.line(label, "it did not; starting it again");
            }
            Err(e) => return Err(e),
        }
    }
}

/// The API pipeline on `git_ref` updated since `since` that carries `request`, if any.
pub async fn find_pipeline(
    gitlab: &Gitlab,
    project: &ProjectRef,
    git_ref: &str,
    request: &str,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<Option<Pipeline>, cloudci_gitlab::Error> {
    let filter = PipelineFilter {
        git_ref: Some(git_ref.to_owned()),
        source: Some("api".into()),
        updated_after: Some(since),
        ..Default::default()
    };
    let candidates: Vec<_> = gitlab.pipelines(project.clone(), &filter).take(50).try_collect().await?;
    for c in candidates {
        let vars = gitlab.pipeline_variables(project.clone(), c.id).await?;
        if vars.iter().any(|v| v.key == REQUEST_VARIABLE && v.value == request) {
            return gitlab.pipeline(project.clone(), c.id).await.map(Some);
        }
    }
    Ok(None)
}

impl Orchestrator {
    /// Creates the build's pipeline, or adopts the one a create before a crash made.
    pub(super) async fn create_pipeline(
        &self,
        record: &BuildRecord,
        work: &BuildWork,
        project: &ProjectRef,
        label: &str,
    ) -> Result<PipelineId, OrchestratorError> {
        let gitlab = &self.inner.gitlab;
        let git_ref = match &work.git_ref {
            Some(r) => r.clone(),
            None => gitlab
                .project(project.clone())
                .await?
                .default_branch
                .ok_or_else(|| OrchestratorError::NoDefaultBranch(record.gitlab.clone()))?,
        };
        let created = chrono::DateTime::parse_from_rfc3339(&record.created_at)
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_else(|_| chrono::Utc::now());
        let since = created - chrono::Duration::seconds(60);
        let mut found = None;
        if work.create_attempted {
            found = find_pipeline(gitlab, project, &git_ref, &work.request_id, since).await?;
            if let Some(p) = &found {
                self.inner.reporter.line(label, &format!("adopted pipeline {} created before a restart", p.id));
            }
        }
        let pipeline = match found {
            Some(p) => p,
            None => {
                let r = git_ref.clone();
                self.records()
                    .update(record.id, move |rec, w| {
                        rec.git_ref = Some(r.clone());
                        w.create_attempted = true;
                    })
                    .await?;
                let mut params = CreatePipeline::new(git_ref.clone());
                for (k, v) in &work.variables {
                    params = params.variable(k.clone(), v.clone());
                }
                params = params.variable(REQUEST_VARIABLE, work.request_id.clone());
                start_pipeline(gitlab, project, &params, since, self.inner.reporter.as_ref(), label)
                    .await
                    .map_err(|e| OrchestratorError::creating(e, &record.gitlab, &git_ref))?
            }
        };
        let (pid, url, sha, r) = (pipeline.id.0, pipeline.web_url.clone(), pipeline.sha.clone(), git_ref);
        self.records()
            .update(record.id, move |rec, _| {
                rec.pipeline_id = Some(pid);
                rec.pipeline_url = Some(url.clone());
                rec.sha = Some(sha.clone());
                rec.git_ref = Some(r.clone());
                rec.status = BuildStatus::Running;
                // What it waited for (the queue) is over.
                rec.reason = None;
            })
            .await?;
        self.inner.reporter.line(label, &format!("pipeline {} started: {}", pipeline.id, pipeline.web_url));
        // The daemon's reconciler covers this pipeline if its webhooks stay silent.
        let project_id = pipeline.project_id.map(|p| p.0).unwrap_or(0);
        self.inner.follower.track(project_id, &record.gitlab, pipeline.id.0).await;
        Ok(pipeline.id)
    }
}
