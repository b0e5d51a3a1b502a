use futures_util::Stream;

use super::project_path;
use crate::client::Request;
use crate::types::{CreatePipeline, Pipeline, PipelineBasic, PipelineVariable, Status};
use crate::{Error, Gitlab, PipelineId, ProjectRef};

/// Filters for `GET /projects/:id/pipelines`. Unset fields are not sent.
#[derive(Debug, Clone, Default)]
pub struct PipelineFilter {
    /// Only this branch or tag.
    pub git_ref: Option<String>,
    /// Only this status.
    pub status: Option<Status>,
    /// Only this commit.
    pub sha: Option<String>,
    /// Only this source (`push`, `web`, `api`, ...).
    pub source: Option<String>,
    /// Only pipelines updated after this time.
    pub updated_after: Option<chrono::DateTime<chrono::Utc>>,
    /// Only pipelines started by this user.
    pub username: Option<String>,
    /// Items per page (1-100); the stream still yields every item.
    pub per_page: Option<usize>,
}

impl Gitlab {
    /// `POST /projects/:id/pipeline`: starts a pipeline.
    ///
    /// Never retried after a failure that may have reached GitLab ([`Error::MaybeApplied`]), so a
    /// pipeline is not started twice.
    ///
    /// ```no_run
    /// # async fn f(gitlab: cloudci_gitlab::Gitlab) -> Result<(), cloudci_gitlab::Error> {
    /// use cloudci_gitlab::types::CreatePipeline;
    /// let pipeline = gitlab
    ///     .create_pipeline("acme/firmware", &CreatePipeline::new("main").variable("BOARD", "nucleo-f401re"))
    ///     .await?;
    /// println!("{}", pipeline.web_url);
    /// # Ok(()) }
    /// ```
    pub async fn create_pipeline(
        &self,
        project: impl Into<ProjectRef>,
        params: &CreatePipeline,
    ) -> Result<Pipeline, Error> {
        let req = Request::post(format!("{}/pipeline", project_path(&project.into()))).json(params)?;
        self.json(&req).await
    }

    /// `GET /projects/:id/pipelines/:pipeline_id`
    pub async fn pipeline(&self, project: impl Into<ProjectRef>, id: PipelineId) -> Result<Pipeline, Error> {
        self.json(&Request::get(format!("{}/pipelines/{id}", project_path(&project.into())))).await
    }

    /// `GET /projects/:id/pipelines`, newest first, every page.
    ///
    /// ```no_run
    /// # async fn f(gitlab: cloudci_gitlab::Gitlab) -> Result<(), cloudci_gitlab::Error> {
    /// use cloudci_gitlab::PipelineFilter;
    /// use futures_util::TryStreamExt;
    /// let filter = PipelineFilter { git_ref: Some("main".into()), ..Default::default() };
    /// let recent: Vec<_> = gitlab.pipelines("acme/firmware", &filter).try_collect().await?;
    /// # Ok(()) }
    /// ```
    pub fn pipelines(
        &self,
        project: impl Into<ProjectRef>,
        filter: &PipelineFilter,
    ) -> impl Stream<Item = Result<PipelineBasic, Error>> + Send + 'static {
        let req = Request::get(format!("{}/pipelines", project_path(&project.into())))
            .query_opt("ref", filter.git_ref.as_ref())
            .query_opt("status", filter.status.as_ref())
            .query_opt("sha", filter.sha.as_ref())
            .query_opt("source", filter.source.as_ref())
            .query_opt(
                "updated_after",
                filter.updated_after.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            )
            .query_opt("username", filter.username.as_ref());
        self.paged(req, filter.per_page)
    }

    /// `POST /projects/:id/pipelines/:pipeline_id/cancel` (GitLab answers 200 whatever the state).
    pub async fn cancel_pipeline(&self, project: impl Into<ProjectRef>, id: PipelineId) -> Result<Pipeline, Error> {
        self.json(&Request::post(format!("{}/pipelines/{id}/cancel", project_path(&project.into())))).await
    }

    /// `POST /projects/:id/pipelines/:pipeline_id/retry`: retries failed and canceled jobs.
    pub async fn retry_pipeline(&self, project: impl Into<ProjectRef>, id: PipelineId) -> Result<Pipeline, Error> {
        self.json(&Request::post(format!("{}/pipelines/{id}/retry", project_path(&project.into())))).await
    }

    /// `GET /projects/:id/pipelines/:pipeline_id/variables`
    pub async fn pipeline_variables(
        &self,
        project: impl Into<ProjectRef>,
        id: PipelineId,
    ) -> Result<Vec<PipelineVariable>, Error> {
        self.json(&Request::get(format!("{}/pipelines/{id}/variables", project_path(&project.into())))).await
    }
}
