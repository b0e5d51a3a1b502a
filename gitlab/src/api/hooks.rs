use futures_util::Stream;

use super::project_path;
use crate::client::Request;
use crate::types::{HookDelivery, HookParams, ProjectHook};
use crate::{Error, Gitlab, HookId, ProjectRef};

impl Gitlab {
    /// `GET /projects/:id/hooks`, every page.
    pub fn hooks(
        &self,
        project: impl Into<ProjectRef>,
    ) -> impl Stream<Item = Result<ProjectHook, Error>> + Send + 'static {
        self.paged(Request::get(format!("{}/hooks", project_path(&project.into()))), None)
    }

    /// `GET /projects/:id/hooks/:hook_id`
    pub async fn hook(&self, project: impl Into<ProjectRef>, id: HookId) -> Result<ProjectHook, Error> {
        self.json(&Request::get(format!("{}/hooks/{id}", project_path(&project.into())))).await
    }

    /// `POST /projects/:id/hooks`
    pub async fn create_hook(&self, project: impl Into<ProjectRef>, params: &HookParams) -> Result<ProjectHook, Error> {
        let req = Request::post(format!("{}/hooks", project_path(&project.into()))).json(params)?;
        self.json(&req).await
    }

    /// `PUT /projects/:id/hooks/:hook_id`. GitLab resets the secret token when the URL changes, so
    /// send the token again with every edit.
    pub async fn edit_hook(
        &self,
        project: impl Into<ProjectRef>,
        id: HookId,
        params: &HookParams,
    ) -> Result<ProjectHook, Error> {
        let req = Request::put(format!("{}/hooks/{id}", project_path(&project.into()))).json(params)?;
        self.json(&req).await
    }

    /// `DELETE /projects/:id/hooks/:hook_id`
    pub async fn delete_hook(&self, project: impl Into<ProjectRef>, id: HookId) -> Result<(), Error> {
        self.ignore(&Request::delete(format!("{}/hooks/{id}", project_path(&project.into())))).await
    }

    /// `POST /projects/:id/hooks/:hook_id/test/:trigger`: sends a test delivery (even to a
    /// disabled hook; a 2xx answer re-enables it). `trigger` is e.g. `pipeline_events`.
    pub async fn test_hook(&self, project: impl Into<ProjectRef>, id: HookId, trigger: &str) -> Result<(), Error> {
        let path = format!("{}/hooks/{id}/test/{}", project_path(&project.into()), super::segment(trigger));
        self.ignore(&Request::post(path)).await
    }

    /// `GET /projects/:id/hooks/:hook_id/events`: the delivery log of the last 7 days (GitLab 17.3+).
    pub fn hook_deliveries(
        &self,
        project: impl Into<ProjectRef>,
        id: HookId,
    ) -> impl Stream<Item = Result<HookDelivery, Error>> + Send + 'static {
        self.paged(Request::get(format!("{}/hooks/{id}/events", project_path(&project.into()))), None)
    }
}
