//! The build routes: start builds, list and read them, follow a pipeline started elsewhere, and
//! cancel, retry or play one. Starting, retrying and canceling is the orchestrator's; here are
//! only the request and answer shapes.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::error::{ApiError, Authorized};
use super::params::{ApiQuery, BuildId, MAX_ID, bounded, json_body};
use super::{ApiState, auth, internal, orchestrator, orchestrator_error, plan_error};
use crate::builds::{BuildRecord, BuildStore};
use crate::orchestrator::Request;

/// `POST /v1/builds` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBuilds {
    /// Project or group names from the configuration (at least one: the document says
    /// `minItems: 1`, and an empty list is refused by the plan with 422).
    projects: Vec<String>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    #[serde(default)]
    targets: Vec<String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    /// Run the after-success actions (default true).
    actions: Option<bool>,
}

pub(super) async fn start_builds(
    State(s): State<ApiState>,
    Authorized(claims): Authorized,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: StartBuilds = json_body(&body)?;
    let request =
        Request { names: req.projects.clone(), git_ref: req.git_ref, targets: req.targets, variables: req.variables };
    let plan = crate::orchestrator::plan(&s.config, &request).map_err(plan_error)?;
    if let Some(denied) = plan.builds.values().flatten().find(|b| !claims.allows(&b.gitlab)) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, format!("this token may not build {}", denied.gitlab))
            .field("projects"));
    }
    let started = orchestrator(&s)?.start(&plan, req.actions.unwrap_or(true)).await.map_err(orchestrator_error)?;
    let builds: Vec<_> = started
        .builds
        .iter()
        .map(|(id, p, t)| json!({"id": id, "project": p, "target": t, "url": format!("/v1/builds/{id}")}))
        .collect();
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"run": started.run, "builds": builds}))).into_response())
}

/// `POST /v1/watch` body: a pipeline started elsewhere (by another tool) that the daemon
/// should follow, polling GitLab if its webhooks stay silent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Watch {
    project_id: u64,
    project: String,
    pipeline_id: u64,
}

pub(super) async fn watch(
    State(s): State<ApiState>,
    Authorized(claims): Authorized,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let w: Watch = json_body(&body)?;
    // GitLab's ids start at 1 and are signed 64-bit, like the store's columns.
    bounded(Some(w.project_id), "project_id", 1, 1, MAX_ID)?;
    bounded(Some(w.pipeline_id), "pipeline_id", 1, 1, MAX_ID)?;
    if !claims.allows(&w.project) {
        return Err(
            ApiError::new(StatusCode::FORBIDDEN, format!("this token may not watch {}", w.project)).field("project")
        );
    }
    s.events.hub.track(w.project_id, &w.project, w.pipeline_id).await.map_err(internal)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    limit: Option<u64>,
}

pub(super) async fn list_builds(
    State(s): State<ApiState>,
    Authorized(claims): Authorized,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let store = s.builds.clone();
    let limit = bounded(q.limit, "limit", 50, 1, 1000)? as usize;
    let list = tokio::task::spawn_blocking(move || store.list(limit)).await.map_err(internal)?.map_err(internal)?;
    let visible: Vec<BuildRecord> = list.into_iter().filter(|b| claims.allows(&b.gitlab)).collect();
    Ok(axum::Json(visible).into_response())
}

/// Build `id` when the token may see it; a 404 otherwise.
pub(super) async fn record(s: &ApiState, claims: &auth::Claims, BuildId(id): BuildId) -> Result<BuildRecord, ApiError> {
    let store = s.builds.clone();
    let found = tokio::task::spawn_blocking(move || store.get(id)).await.map_err(internal)?.map_err(internal)?;
    match found {
        Some(b) if claims.allows(&b.gitlab) => Ok(b),
        // A build the token may not see does not exist for it.
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no build {id}")).field("id")),
    }
}

pub(super) async fn get_build(
    State(s): State<ApiState>,
    Authorized(c): Authorized,
    id: BuildId,
) -> Result<Response, ApiError> {
    Ok(axum::Json(record(&s, &c, id).await?).into_response())
}

async fn pipeline_action(s: &ApiState, c: &auth::Claims, id: BuildId, retry: bool) -> Result<Response, ApiError> {
    let b = record(s, c, id).await?;
    let orchestrator = orchestrator(s)?;
    // The orchestrator follows the pipeline to its new end and records it like any build.
    let b = if retry { orchestrator.retry(b.id).await } else { orchestrator.cancel(b.id).await }
        .map_err(orchestrator_error)?;
    Ok((StatusCode::ACCEPTED, axum::Json(b)).into_response())
}

pub(super) async fn cancel(
    State(s): State<ApiState>,
    Authorized(c): Authorized,
    id: BuildId,
) -> Result<Response, ApiError> {
    pipeline_action(&s, &c, id, false).await
}

pub(super) async fn retry(
    State(s): State<ApiState>,
    Authorized(c): Authorized,
    id: BuildId,
) -> Result<Response, ApiError> {
    pipeline_action(&s, &c, id, true).await
}

/// `POST /v1/builds/{id}/play` body: which manual job (default: every manual job of the build).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlayBody {
    job: Option<String>,
}

pub(super) async fn play(
    State(s): State<ApiState>,
    Authorized(c): Authorized,
    id: BuildId,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // The body is optional: none means every manual job.
    let body: PlayBody = if body.is_empty() { PlayBody::default() } else { json_body(&body)? };
    let b = record(&s, &c, id).await?;
    let b = orchestrator(&s)?.play(b.id, body.job.as_deref()).await.map_err(orchestrator_error)?;
    Ok((StatusCode::ACCEPTED, axum::Json(b)).into_response())
}
