//! `GET /v1/events/recent`: a window of the newest events, for a page that shows them and then
//! follows the event stream from there.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::error::{ApiError, Authorized};
use super::params::{ApiQuery, bounded};
use super::{ApiState, internal};

#[derive(Debug, Deserialize)]
pub(super) struct RecentQuery {
    limit: Option<u64>,
}

/// How far back `/v1/events/recent` looks in the log for events the token may see.
const RECENT_WINDOW: u64 = 2000;

/// `GET /v1/events/recent?limit=`: the newest events the token may see (newest last) and the
/// log's last seq, so a page shows a window and then follows `/v1/events?since=<last_seq>`
/// instead of replaying the whole log.
pub(super) async fn recent_events(
    State(s): State<ApiState>,
    Authorized(claims): Authorized,
    ApiQuery(q): ApiQuery<RecentQuery>,
) -> Result<Response, ApiError> {
    let limit = bounded(q.limit, "limit", 50, 1, 500)? as usize;
    let hub = &s.events.hub;
    let filter = cloudci_webhook::EventFilter { projects: claims.projects.clone(), ..Default::default() };
    // A full disk or a locked database says so (503), not "internal error".
    let unavailable = |e: cloudci_webhook::StoreError| match e.problem() {
        Some(p) => ApiError::unavailable(p),
        None => internal(e),
    };
    let last = hub.last_seq().await.map_err(unavailable)?;
    let (mut events, _) = hub
        .events_after(last.saturating_sub(RECENT_WINDOW), Some(last), filter, usize::MAX)
        .await
        .map_err(unavailable)?;
    let skip = events.len().saturating_sub(limit);
    events.drain(..skip);
    Ok(axum::Json(json!({"events": events, "last_seq": last})).into_response())
}
