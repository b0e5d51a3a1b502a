use futures_util::Stream;

use super::project_path;
use crate::client::Request;
use crate::types::{CreateMergeRequest, MergeOptions, MergeRequest};
use crate::{Error, Gitlab, MergeRequestIid, ProjectRef};

/// Filters for `GET /projects/:id/merge_requests`.
#[derive(Debug, Clone, Default)]
pub struct MergeRequestFilter {
    /// Only from this branch.
    pub source_branch: Option<String>,
    /// Only into this branch.
    pub target_branch: Option<String>,
    /// `opened`, `closed`, `locked`, `merged` or `all` (GitLab's default is all).
    pub state: Option<String>,
}

impl Gitlab {
    /// `POST /projects/:id/merge_requests`. Not retried after an ambiguous failure
    /// ([`Error::MaybeApplied`]): list by source branch before trying again.
    pub async fn create_merge_request(
        &self,
        project: impl Into<ProjectRef>,
        params: &CreateMergeRequest,
    ) -> Result<MergeRequest, Error> {
        let req = Request::post(format!("{}/merge_requests", project_path(&project.into()))).json(params)?;
        self.json(&req).await
    }

    /// `GET /projects/:id/merge_requests/:merge_request_iid`
    pub async fn merge_request(
        &self,
        project: impl Into<ProjectRef>,
        iid: MergeRequestIid,
    ) -> Result<MergeRequest, Error> {
        self.json(&Request::get(format!("{}/merge_requests/{iid}", project_path(&project.into())))).await
    }

    /// `GET /projects/:id/merge_requests`, every page.
    pub fn merge_requests(
        &self,
        project: impl Into<ProjectRef>,
        filter: &MergeRequestFilter,
    ) -> impl Stream<Item = Result<MergeRequest, Error>> + Send + 'static {
        let req = Request::get(format!("{}/merge_requests", project_path(&project.into())))
            .query_opt("source_branch", filter.source_branch.as_ref())
            .query_opt("target_branch", filter.target_branch.as_ref())
            .query_opt("state", filter.state.as_ref());
        self.paged(req, None)
    }

    /// `PUT /projects/:id/merge_requests/:merge_request_iid/merge`: merges now, or with
    /// `auto_merge` when the pipeline succeeds. For auto-merge both `auto_merge` (GitLab 17.11+)
    /// and the deprecated `merge_when_pipeline_succeeds` are sent: a server ignores the one it does
    /// not know, and a server that knew neither would merge at once.
    pub async fn merge(
        &self,
        project: impl Into<ProjectRef>,
        iid: MergeRequestIid,
        options: &MergeOptions,
    ) -> Result<MergeRequest, Error> {
        let mut body = serde_json::to_value(options).map_err(|e| Error::Config(e.to_string()))?;
        if options.auto_merge
            && let Some(map) = body.as_object_mut()
        {
            map.insert("auto_merge".into(), true.into());
            map.insert("merge_when_pipeline_succeeds".into(), true.into());
        }
        let req = Request::put(format!("{}/merge_requests/{iid}/merge", project_path(&project.into()))).json(&body)?;
        self.json(&req).await
    }

    /// `POST /projects/:id/merge_requests/:iid/cancel_merge_when_pipeline_succeeds`
    pub async fn cancel_auto_merge(
        &self,
        project: impl Into<ProjectRef>,
        iid: MergeRequestIid,
    ) -> Result<MergeRequest, Error> {
        let path =
            format!("{}/merge_requests/{iid}/cancel_merge_when_pipeline_succeeds", project_path(&project.into()));
        self.json(&Request::post(path)).await
    }
}
