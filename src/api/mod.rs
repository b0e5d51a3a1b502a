//! The local API (loopback by default, never behind the tunnel), after QMK's compile API: start
//! builds, read their state, logs, firmware and sources, cancel or retry them, and follow
//! everything on the event stream. Every route needs `Authorization: Bearer <token>`
//! (`cloudci token issue`); a token limited to projects sees only those. Errors are
//! `{"error": "...", "field": "..."}` with 400 (malformed), 401, 403, 404, 422 (does not fit the
//! configuration) or 503 (no GitLab access configured).
//!
//! (A little over 400 lines: one short handler per route; builds are started, retried and
//! canceled by the orchestrator, so only routing, auth and HTTP shapes live here.)
//!
//! Its parts: [`error`] (the JSON error envelope and the bearer-token extractor), [`auth`] (the
//! tokens), [`sse`] (`GET /v1/events`). They live with the local API, not the receiver, because
//! only the listener that serves subscribers uses them.

pub mod auth;
pub mod error;
pub mod sse;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use auth::TokenKeys;
use axum::Router;
use axum::body::Body;
use axum::extract::{FromRef, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cloudci_gitlab::{ArchiveFormat, Gitlab, JobId, ProjectRef};
use error::{ApiError, Authorized};
use serde::Deserialize;
use serde_json::json;
use sse::EventsState;

use crate::builds::{BuildRecord, BuildStore, SqliteBuilds};
use crate::config::Config;
use crate::orchestrator::{Orchestrator, OrchestratorError, PlanError, Request};

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
        .route("/v1/builds", post(start_builds).get(list_builds))
        .route("/v1/builds/{id}", get(get_build))
        .route("/v1/builds/{id}/log", get(build_log))
        .route("/v1/builds/{id}/download", get(download))
        .route("/v1/builds/{id}/source", get(source))
        .route("/v1/builds/{id}/cancel", post(cancel))
        .route("/v1/builds/{id}/retry", post(retry))
        .route("/v1/builds/{id}/play", post(play))
        .route("/v1/watch", post(watch))
        .route("/v1/events/recent", get(recent_events))
        .route("/v1/openapi.json", get(openapi))
        .route("/", get(dashboard))
        .with_state(state.clone())
        .merge(sse::router(state.events))
}

/// The dashboard: one static page that reads `/v1/builds` and follows `/v1/events`. It holds
/// no data itself, so it needs no token to load; its requests carry the token.
const DASHBOARD: &str = include_str!("dashboard.html");

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline' 'self'; style-src 'unsafe-inline'",
            ),
        ],
        DASHBOARD,
    )
        .into_response()
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
        other => internal(other),
    }
}

fn plan_error(e: PlanError) -> ApiError {
    let field = match &e {
        PlanError::NothingNamed => "projects",
        PlanError::UnknownName { .. } => return ApiError::new(StatusCode::NOT_FOUND, e.to_string()).field("projects"),
        PlanError::UnknownTarget { .. } => "targets",
    };
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()).field(field)
}

/// `POST /v1/builds` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBuilds {
    /// Project or group names from the configuration.
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

async fn start_builds(
    State(s): State<ApiState>,
    Authorized(claims): Authorized,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: StartBuilds = serde_json::from_slice(&body).map_err(|e| {
        let field = e.to_string().split('`').nth(1).map(str::to_owned);
        let mut err = ApiError::new(StatusCode::BAD_REQUEST, format!("invalid request body: {e}"));
        err.field = field;
        err
    })?;
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

/// `POST /v1/watch` body: a pipeline started elsewhere (by `cloudci build`) that the daemon
/// should follow, polling GitLab if its webhooks stay silent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Watch {
    project_id: u64,
    project: String,
    pipeline_id: u64,
}

async fn watch(
    State(s): State<ApiState>,
    Authorized(claims): Authorized,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let w: Watch = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid request body: {e}")))?;
    if !claims.allows(&w.project) {
        return Err(
            ApiError::new(StatusCode::FORBIDDEN, format!("this token may not watch {}", w.project)).field("project")
        );
    }
    s.events.hub.track(w.project_id, &w.project, w.pipeline_id).await.map_err(internal)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

async fn list_builds(
    State(s): State<ApiState>,
    Authorized(claims): Authorized,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let store = s.builds.clone();
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let list = tokio::task::spawn_blocking(move || store.list(limit)).await.map_err(internal)?.map_err(internal)?;
    let visible: Vec<BuildRecord> = list.into_iter().filter(|b| claims.allows(&b.gitlab)).collect();
    Ok(axum::Json(visible).into_response())
}

async fn record(s: &ApiState, claims: &auth::Claims, id: &str) -> Result<BuildRecord, ApiError> {
    let id: i64 =
        id.parse().map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "a build id is a number").field("id"))?;
    let store = s.builds.clone();
    let found = tokio::task::spawn_blocking(move || store.get(id)).await.map_err(internal)?.map_err(internal)?;
    match found {
        Some(b) if claims.allows(&b.gitlab) => Ok(b),
        // A build the token may not see does not exist for it.
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no build {id}")).field("id")),
    }
}

async fn get_build(
    State(s): State<ApiState>,
    Authorized(c): Authorized,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(record(&s, &c, &id).await?).into_response())
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    job: Option<String>,
    offset: Option<u64>,
}

/// The log of one job (`?job=`; default the running job, else the next to run, else the first
/// failed, else the last), from `?offset=`. `X-Next-Offset` says where to continue,
/// `X-Log-Reset: true` that the log restarted (a retried job), `X-Job` and `X-Job-Status` which
/// job and where it stands, and `X-Log-Complete: true` that the job ended and this answer holds
/// the rest of its log: a client polls with the offset until then.
async fn build_log(
    State(s): State<ApiState>,
    Authorized(c): Authorized,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let b = record(&s, &c, &id).await?;
    let (name, job) =
        b.pick_job(q.job.as_deref()).map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()).field("job"))?;
    if let Some(o) = &s.orchestrator
        && let Some(answer) = local_log(o, &b, name, job, q.offset.unwrap_or(0)).await
    {
        return Ok(answer);
    }
    let gitlab = gitlab(&s)?;
    let project = ProjectRef::parse(&b.gitlab);
    // Status first: whatever the job wrote before it ended is in the read that follows.
    let status = match gitlab.job(project.clone(), JobId(job.id)).await {
        Ok(j) => j.status,
        Err(e) if e.is_not_found() => return Err(gitlab_error(e)),
        Err(_) => job.status.clone(),
    };
    let chunk = gitlab.job_trace_from(project, JobId(job.id), q.offset.unwrap_or(0)).await.map_err(gitlab_error)?;
    let header = header::HeaderName::from_static;
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
            (header("x-next-offset"), chunk.next_offset.to_string()),
            (header("x-log-reset"), chunk.reset.to_string()),
            (header("x-job"), name.to_owned()),
            (header("x-job-status"), status.to_string()),
            (header("x-log-complete"), status.is_completed().to_string()),
        ],
        chunk.data,
    )
        .into_response())
}

/// The log as this daemon has it: the saved file of a finished job, or the file its follower
/// writes (one follower per job however many readers poll, reading GitLab at the log's pace;
/// the job's status comes from the record, which webhooks keep current). `None`: ask GitLab
/// (the follower gave up).
async fn local_log(
    o: &Orchestrator,
    b: &BuildRecord,
    name: &str,
    job: &crate::builds::JobRecord,
    offset: u64,
) -> Option<Response> {
    use cloudci_gitlab::types::Status;
    let started = (job.status == Status::Running || job.status.is_completed()) && job.status != Status::Skipped;
    let (path, complete) = match job.log.as_ref().map(PathBuf::from) {
        Some(saved) if job.status.is_completed() && saved.exists() => (saved, true),
        _ if started => {
            let tail = o.tail(b, name, job.id, None);
            // Read before the file: when it says done, the file holds the whole log.
            let done = *tail.done.borrow();
            match done {
                Some(false) => return None,
                done => (tail.path, done.is_some()),
            }
        }
        // Not started (or skipped): no log yet, or none ever.
        _ => return Some(log_answer(name, &job.status, Vec::new(), offset, false, job.status.is_completed())),
    };
    let log = tokio::fs::read(&path).await.unwrap_or_default();
    let (data, reset) = match usize::try_from(offset).ok().filter(|&o| o <= log.len()) {
        Some(from) => (log[from..].to_vec(), false),
        // Shorter than what the reader has: a retried job's new log, from its start.
        None => (log, true),
    };
    let next = if reset { data.len() as u64 } else { offset + data.len() as u64 };
    Some(log_answer(name, &job.status, data, next, reset, complete))
}

fn log_answer(
    name: &str,
    status: &cloudci_gitlab::types::Status,
    data: Vec<u8>,
    next_offset: u64,
    reset: bool,
    complete: bool,
) -> Response {
    let header = header::HeaderName::from_static;
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
            (header("x-next-offset"), next_offset.to_string()),
            (header("x-log-reset"), reset.to_string()),
            (header("x-job"), name.to_owned()),
            (header("x-job-status"), status.to_string()),
            (header("x-log-complete"), complete.to_string()),
        ],
        data,
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct RecentQuery {
    limit: Option<usize>,
}

/// How far back `/v1/events/recent` looks in the log for events the token may see.
const RECENT_WINDOW: u64 = 2000;

/// `GET /v1/events/recent?limit=`: the newest events the token may see (newest last) and the
/// log's last seq, so a page shows a window and then follows `/v1/events?since=<last_seq>`
/// instead of replaying the whole log.
async fn recent_events(
    State(s): State<ApiState>,
    Authorized(claims): Authorized,
    Query(q): Query<RecentQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let hub = &s.events.hub;
    let filter = cloudci_webhook::EventFilter { projects: claims.projects.clone(), ..Default::default() };
    let last = hub.last_seq().await.map_err(internal)?;
    let (mut events, _) =
        hub.events_after(last.saturating_sub(RECENT_WINDOW), Some(last), filter, usize::MAX).await.map_err(internal)?;
    let skip = events.len().saturating_sub(limit);
    events.drain(..skip);
    Ok(axum::Json(json!({"events": events, "last_seq": last})).into_response())
}

#[derive(Debug, Deserialize)]
struct JobQuery {
    job: Option<String>,
}

/// The firmware: the artifact archive fetched after success (`?job=` to choose).
async fn download(
    State(s): State<ApiState>,
    Authorized(c): Authorized,
    Path(id): Path<String>,
    Query(q): Query<JobQuery>,
) -> Result<Response, ApiError> {
    let b = record(&s, &c, &id).await?;
    let dir =
        b.artifacts.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("build {} has no artifacts", b.id)))?;
    let mut zips: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(internal)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "zip"))
        .collect();
    zips.sort();
    let chosen = match &q.job {
        Some(job) => zips.into_iter().find(|p| p.file_stem().is_some_and(|s| s == job.as_str())),
        None => zips.into_iter().next(),
    }
    .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such artifact archive").field("job"))?;
    let file = tokio::fs::File::open(&chosen).await.map_err(internal)?;
    let name = chosen.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok((
        [
            (header::CONTENT_TYPE, "application/zip".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{}-{}-{name}\"", b.project, b.target)),
        ],
        Body::from_stream(file_stream(file)),
    )
        .into_response())
}

fn file_stream(file: tokio::fs::File) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    futures_util::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
}

/// The source at the built commit, as GitLab's `.tar.gz` archive.
async fn source(
    State(s): State<ApiState>,
    Authorized(c): Authorized,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let b = record(&s, &c, &id).await?;
    let sha = b.sha.clone().ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "the build has no commit yet"))?;
    let dir = tempfile::tempdir().map_err(internal)?;
    let path = dir.path().join("source.tar.gz");
    gitlab(&s)?
        .download_archive(ProjectRef::parse(&b.gitlab), &sha, ArchiveFormat::TarGz, &path)
        .await
        .map_err(gitlab_error)?;
    let file = tokio::fs::File::open(&path).await.map_err(internal)?;
    // The open file stays readable after the folder is removed (Unix); keep it until sent anyway.
    let stream = futures_util::StreamExt::map(file_stream(file), move |chunk| {
        let _keep = &dir;
        chunk
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}-{}.tar.gz\"", b.project, &sha[..sha.len().min(8)]),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn pipeline_action(s: &ApiState, c: &auth::Claims, id: &str, retry: bool) -> Result<Response, ApiError> {
    let b = record(s, c, id).await?;
    let orchestrator = orchestrator(s)?;
    // The orchestrator follows the pipeline to its new end and records it like any build.
    let b = if retry { orchestrator.retry(b.id).await } else { orchestrator.cancel(b.id).await }
        .map_err(orchestrator_error)?;
    Ok((StatusCode::ACCEPTED, axum::Json(b)).into_response())
}

async fn cancel(
    State(s): State<ApiState>,
    Authorized(c): Authorized,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    pipeline_action(&s, &c, &id, false).await
}

async fn retry(
    State(s): State<ApiState>,
    Authorized(c): Authorized,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    pipeline_action(&s, &c, &id, true).await
}

/// `POST /v1/builds/{id}/play` body: which manual job (default: every manual job of the build).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlayBody {
    job: Option<String>,
}

async fn play(
    State(s): State<ApiState>,
    Authorized(c): Authorized,
    Path(id): Path<String>,
    body: Option<axum::Json<PlayBody>>,
) -> Result<Response, ApiError> {
    let b = record(&s, &c, &id).await?;
    let job = body.and_then(|axum::Json(b)| b.job);
    let b = orchestrator(&s)?.play(b.id, job.as_deref()).await.map_err(orchestrator_error)?;
    Ok((StatusCode::ACCEPTED, axum::Json(b)).into_response())
}
