//! `GET /v1/health`: what the daemon ran out of now (issue 16), for `cloudci status`, the
//! dashboard's banner and anyone watching.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::ApiState;
use super::error::Authorized;

/// The resources the daemon ran out of now (a full disk, file descriptors, a busy database, an
/// unwritable log), each with since when and what it costs. Always 200: the answer is the
/// report; `ok` is false while anything is wrong.
pub(super) async fn health(State(s): State<ApiState>, Authorized(_): Authorized) -> Response {
    let health = s.events.hub.health();
    let problems = health.reports();
    axum::Json(json!({
        "ok": problems.is_empty(),
        "problems": problems,
        "refused_deliveries": health.refused_deliveries(),
        "lost_log_lines": crate::logging::lost_lines(),
    }))
    .into_response()
}
