//! The local API (loopback by default, never behind the tunnel), after QMK's compile API: start
//! builds, read their state, logs, firmware and sources, cancel or retry them, and follow
//! everything on the event stream. Every route needs `Authorization: Bearer <token>`
//! (`cloudci token issue`) or the dashboard's cookie ([`session`]); a token limited to projects
//! sees only those. Every error is `{"error": "...", "field": "..."}`: 400 (malformed), 401,
//! 403, 404 (no such build or name), 409 (not in a state for it yet), 422 (does not fit the
//! configuration, or GitLab refused), 502 (GitLab failed) or 503 (no GitLab access configured);
//! the layers add 405, 413, 421, 500 and 503 on time-outs, in the same shape. `openapi.json`
//! declares each route's, and `tests/contract.rs` holds the server to it with schemathesis.
//!
//! Its parts: [`error`] (the JSON error envelope and the token extractor), [`auth`] (the
//! tokens), [`params`] (queries, ids and bodies read strictly, so the server takes exactly what
//! `openapi.json` allows), [`session`] (the dashboard and its cookie), [`login`] (its one-time login codes), [`sse`] (`GET
//! /v1/events`), and the routes by what they serve: `builds` (start, list, read, watch, cancel,
//! retry, play), `files` (log, firmware, source), `recent` (a window of events). They live with
//! the local API, not the receiver, because only the listener that serves subscribers uses them.

pub mod auth;
mod builds;
pub mod error;
mod files;
mod health;
pub mod login;
pub mod params;
mod recent;
pub mod session;
pub mod sse;

use std::path::PathBuf;
use std::sync::Arc;

use auth::TokenKeys;
use axum::Router;
use axum::extract::FromRef;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cloudci_gitlab::Gitlab;
use error::ApiError;
use sse::EventsState;

use crate::builds::SqliteBuilds;
use crate::config::Config;
use crate::orchestrator::{Orchestrator, OrchestratorError, PlanError};

/// What the local routes share.
#[derive(Clone)]
pub struct ApiState {
    /// The event side.
    pub events: EventsState,
    /// The configuration.
    pub config: Arc<Config>,
    /// GitLab, when a token is configured.
    pub gitlab: Option<Gitlab>,
    /// The daemon's orchestrator (there is one when GitLab is configured): starts, retries and
    /// cancels builds.
    pub orchestrator: Option<Orchestrator>,
    /// The build store (read here; written by the orchestrator).
    pub builds: Arc<SqliteBuilds>,
    /// The state directory.
    pub state_dir: PathBuf,
}

impl FromRef<ApiState> for TokenKeys {
    fn from_ref(s: &ApiState) -> Self {
        s.events.keys.clone()
    }
}

/// All local routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/builds", post(builds::start_builds).get(builds::list_builds))
        .route("/v1/builds/{id}", get(builds::get_build))
        .route("/v1/builds/{id}/log", get(files::build_log))
        .route("/v1/builds/{id}/download", get(files::download))
        .route("/v1/builds/{id}/source", get(files::source))
        .route("/v1/builds/{id}/cancel", post(builds::cancel))
        .route("/v1/builds/{id}/retry", post(builds::retry))
        .route("/v1/builds/{id}/play", post(builds::play))
        .route("/v1/watch", post(builds::watch))
        .route("/v1/events/recent", get(recent::recent_events))
        .route("/v1/health", get(health::health))
        .route("/v1/openapi.json", get(openapi))
        .route("/", get(session::dashboard))
        .route("/login", get(session::login))
        .with_state(state.clone())
        .merge(sse::router(state.events))
}

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!("local API: {e}");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error (see the daemon's log)")
}

fn gitlab_error(e: cloudci_gitlab::Error) -> ApiError {
    let status = match e.status() {
        Some(404) => StatusCode::NOT_FOUND,
        Some(401 | 403) => StatusCode::BAD_GATEWAY,
        _ => StatusCode::BAD_GATEWAY,
    };
    ApiError::new(status, format!("GitLab: {e}"))
}

fn no_gitlab() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no GitLab access configured: set GITLAB_TOKEN and restart `cloudci serve`",
    )
}

fn gitlab(s: &ApiState) -> Result<Gitlab, ApiError> {
    s.gitlab.clone().ok_or_else(no_gitlab)
}

fn orchestrator(s: &ApiState) -> Result<&Orchestrator, ApiError> {
    s.orchestrator.as_ref().ok_or_else(no_gitlab)
}

/// The HTTP answer for each kind of failure.
fn orchestrator_error(e: OrchestratorError) -> ApiError {
    match e {
        OrchestratorError::Plan(p) => plan_error(p),
        OrchestratorError::Gitlab(g) => gitlab_error(g),
        OrchestratorError::NoBuild(id) => ApiError::new(StatusCode::NOT_FOUND, format!("no build {id}")).field("id"),
        OrchestratorError::NoPipeline(_) => ApiError::new(StatusCode::CONFLICT, "the build has no pipeline yet"),
        OrchestratorError::NoDefaultBranch(_) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()).field("ref")
        }
        OrchestratorError::NothingToDo { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        OrchestratorError::Refused { .. } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        // A full disk, a locked database: 503 that says so, and passes.
        OrchestratorError::Store(s) if s.problem().is_some() => {
            tracing::warn!("local API: {s}");
            ApiError::unavailable(s.problem().expect("checked"))
        }
        other => internal(other),
    }
}

fn plan_error(e: PlanError) -> ApiError {
    let field = match &e {
        PlanError::NothingNamed => "projects",
        // A name the configuration does not have is not found, like a build id no build has.
        PlanError::UnknownName { .. } => return ApiError::new(StatusCode::NOT_FOUND, e.to_string()).field("projects"),
        PlanError::UnknownTarget { .. } => return ApiError::new(StatusCode::NOT_FOUND, e.to_string()).field("targets"),
    };
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()).field(field)
}
