//! Creating pipelines exactly once. Every pipeline cloudci starts carries
//! `CLOUDCI_REQUEST=<id>`, saved in the build's record before the POST; when the POST may or may
//! not have reached GitLab (an ambiguous failure, or a crash before the answer was recorded),
//! the pipeline carrying that id is looked for and adopted instead of started again.

use cloudci_gitlab::types::{CreatePipeline, Pipeline};
use cloudci_gitlab::{Gitlab, PipelineFilter, ProjectRef};
use futures_util::{StreamExt, TryStreamExt};

use super::Reporter;

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
