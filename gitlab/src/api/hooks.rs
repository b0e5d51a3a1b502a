use futures_util::Stream;

use super::project_path;
use crate::client::Request;
use crate::types::{HookDelivery, HookEvent, HookEventFilter, HookEventResend, HookParams, ProjectHook};
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

    /// `GET /projects/:id/hooks/:hook_id/events`: the delivery log of the last 7 days (GitLab 17.3+),
    /// untyped. Prefer [`Gitlab::hook_events`].
    pub fn hook_deliveries(
        &self,
        project: impl Into<ProjectRef>,
        id: HookId,
    ) -> impl Stream<Item = Result<HookDelivery, Error>> + Send + 'static {
        self.paged(Request::get(format!("{}/hooks/{id}/events", project_path(&project.into()))), Some(EVENTS_PER_PAGE))
    }

    /// `GET /projects/:id/hooks/:hook_id/events`: the hook's delivery log (GitLab 17.3+), newest
    /// first, every page. GitLab lists the past 7 days only (from the start of the day, 7 days
    /// ago). A delivery its webhook rate limit dropped is not there at all.
    ///
    /// ```no_run
    /// # async fn f(gitlab: cloudci_gitlab::Gitlab, hook: cloudci_gitlab::HookId) -> Result<(), cloudci_gitlab::Error> {
    /// use cloudci_gitlab::types::{HookEventFilter, HookEventStatus};
    /// use futures_util::TryStreamExt;
    /// let failed = HookEventFilter { status: Some(HookEventStatus::ServerFailure) };
    /// let events: Vec<_> = gitlab.hook_events("acme/firmware", hook, &failed).try_collect().await?;
    /// # Ok(()) }
    /// ```
    pub fn hook_events(
        &self,
        project: impl Into<ProjectRef>,
        id: HookId,
        filter: &HookEventFilter,
    ) -> impl Stream<Item = Result<HookEvent, Error>> + Send + 'static {
        let req = Request::get(format!("{}/hooks/{id}/events", project_path(&project.into())))
            .query_opt("status", filter.status.map(|s| s.as_query()));
        self.paged(req, Some(EVENTS_PER_PAGE))
    }

    /// `POST /projects/:id/hooks/:hook_id/events/:hook_event_id/resend` (GitLab 17.4+): sends a
    /// logged delivery again, synchronously, with the same body and the same `Idempotency-Key` /
    /// `webhook-id` (a new `X-Gitlab-Webhook-UUID` and timestamp). The resend is logged as a new
    /// entry and counts toward auto-disabling like any delivery.
    ///
    /// GitLab answers 201 with the receiver's status; 422 ([`Error::Api`]) when the hook's URL
    /// changed since, when the hook is disabled (`Hook disabled`: re-enable it with
    /// [`Gitlab::test_hook`] first), or when the receiver did not answer; 429 beyond 5 resends per
    /// minute per project and user (`Retry-After: 60`).
    ///
    /// Retries: this stays a write (`Request::post`), so after a failure that may have reached
    /// GitLab (a 502, a timeout) it is not sent again behind the caller's back and fails with
    /// [`Error::MaybeApplied`]. Repeating it would be harmless for the receiver, which
    /// de-duplicates on the `Idempotency-Key` that every resend reuses, so marking it idempotent
    /// would be defensible; but each attempt spends one of the 5 resends a minute, and the caller
    /// (which knows its budget) is better placed to decide.
    pub async fn resend_hook_event(
        &self,
        project: impl Into<ProjectRef>,
        id: HookId,
        event_id: u64,
    ) -> Result<HookEventResend, Error> {
        let path = format!("{}/hooks/{id}/events/{event_id}/resend", project_path(&project.into()));
        self.json(&Request::post(path)).await
    }
}

/// GitLab's events endpoint accepts `per_page` 1-20 only (a 400 beyond).
const EVENTS_PER_PAGE: usize = 20;
