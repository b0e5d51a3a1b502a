//! `GET /v1/events` on the local listener: the event log as Server-Sent Events.
//!
//! Each event is `id: <seq>`, `event: <kind>`, `data: <BuildEvent JSON>`. A client that reconnects
//! with `Last-Event-ID` resumes right after it, with no gap and no duplicate. Filters:
//! `?project=a/b,c/d&ref=main&pipeline=123`; `?since=SEQ` replays from the log (0: everything).
//! Comment heartbeats every 15 s keep proxies from closing an idle stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRef, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;

use crate::api::{ApiError, Authorized};
use crate::auth::{Claims, TokenKeys};
use crate::hub::Hub;
use crate::store::EventFilter;

/// Heartbeat interval.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// What the local event routes need.
#[derive(Debug, Clone)]
pub struct EventsState {
    /// The hub.
    pub hub: Hub,
    /// Token keys.
    pub keys: TokenKeys,
}

impl FromRef<EventsState> for TokenKeys {
    fn from_ref(s: &EventsState) -> Self {
        s.keys.clone()
    }
}

/// `GET /v1/events` query.
#[derive(Debug, Default, Deserialize)]
pub struct EventsQuery {
    /// Comma-separated project paths or ids.
    pub project: Option<String>,
    /// A ref.
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// A pipeline id.
    pub pipeline: Option<u64>,
    /// Replay from after this seq.
    pub since: Option<u64>,
}

/// The routes: `GET /v1/events`.
pub fn router(state: EventsState) -> Router {
    Router::new().route("/v1/events", get(events)).with_state(state)
}

/// Builds the filter a token may use: its own scope unless it asks for a narrower one.
pub fn scoped_filter(claims: &Claims, q: &EventsQuery) -> Result<EventFilter, ApiError> {
    let mut projects: Vec<String> = q
        .project
        .as_deref()
        .map(|p| p.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    if let Some(denied) = projects.iter().find(|p| !claims.allows(p)) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, format!("this token is not allowed to see project {denied}"))
            .field("project"));
    }
    if projects.is_empty() {
        projects = claims.projects.clone();
    }
    Ok(EventFilter { projects, git_ref: q.git_ref.clone(), pipeline_id: q.pipeline })
}

async fn events(
    State(state): State<EventsState>,
    Authorized(claims): Authorized,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let filter = scoped_filter(&claims, &q)?;
    let last_event_id = match headers.get("last-event-id").map(|v| v.to_str().map(|s| s.trim().parse::<u64>())) {
        None => None,
        Some(Ok(Ok(id))) => Some(id),
        Some(_) => {
            return Err(
                ApiError::new(StatusCode::BAD_REQUEST, "Last-Event-ID must be an event id").field("Last-Event-ID")
            );
        }
    };
    let after = last_event_id.or(q.since);
    let stream = state.hub.subscribe(filter, after).take_while(|r| std::future::ready(r.is_ok())).map(|r| {
        let e = r.expect("errors end the stream above");
        Ok(Event::default()
            .id(e.seq.to_string())
            .event(e.kind.as_str())
            .json_data(&e)
            .unwrap_or_else(|_| Event::default().comment("unserializable event")))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(HEARTBEAT)))
}
