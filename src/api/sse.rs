//! `GET /v1/events` on the local listener: the event log as Server-Sent Events.
//!
//! Each event is `id: <seq>`, `event: <kind>`, `data: <BuildEvent JSON>`. A client that reconnects
//! with `Last-Event-ID` resumes right after it, with no gap and no duplicate. Filters:
//! `?project=a/b,c/d&ref=main&pipeline=123`; `?since=SEQ` replays from the log (0: everything retained).
//! A resume from before what retention removed starts with an `event: resync` frame and the latest
//! known state, which the hub writes ([`cloudci_webhook::Resync`]).
//! A comment heartbeat every 15 s keeps proxies from closing an idle stream. A stream ends by itself
//! only when the store fails; a server that stops gracefully ends it between two writes (`cloudci
//! serve` does, in its local API's layers), so the client sees the end, not a reset, and resumes by id.
//!
//! Frames come from the hub already encoded ([`Hub::subscribe_frames`](cloudci_webhook::Hub::subscribe_frames)): everything pending for a
//! subscriber goes out in one write, usually the very buffer every other subscriber writes.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;

use super::auth::{Claims, TokenKeys};
use super::error::{ApiError, Authorized};
use super::params::ApiQuery;
use cloudci_webhook::{EventFilter, EventLog, Hub, Store};

/// Heartbeat interval.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// What the event routes need: the daemon's hub (over SQLite) unless said otherwise (the relay
/// serves the same stream over PostgreSQL).
#[derive(Debug)]
pub struct EventsState<L: EventLog = Store> {
    /// The hub.
    pub hub: Hub<L>,
    /// Token keys.
    pub keys: TokenKeys,
}

// By hand: a derive would ask `L: Clone`.
impl<L: EventLog> Clone for EventsState<L> {
    fn clone(&self) -> Self {
        Self { hub: self.hub.clone(), keys: self.keys.clone() }
    }
}

impl<L: EventLog> FromRef<EventsState<L>> for TokenKeys {
    fn from_ref(s: &EventsState<L>) -> Self {
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
pub fn router<L: EventLog>(state: EventsState<L>) -> Router {
    Router::new().route("/v1/events", get(events::<L>)).with_state(state)
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

async fn events<L: EventLog>(
    State(state): State<EventsState<L>>,
    Authorized(claims): Authorized,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    let filter = scoped_filter(&claims, &q)?;
    let after = last_event_id(&headers)?.or(q.since);
    // One heartbeat task for every stream (the hub's), where `stream_response` runs a timer per
    // stream, polled on every wake of every subscriber: a cost paid 1,000 times per event at
    // 1,000 subscribers.
    state.hub.heartbeat(HEARTBEAT);
    let body = state
        .hub
        .subscribe_frames(filter, after)
        // The store failed (it logged why): end the stream; the client resumes by id.
        .scan((), |(), item| std::future::ready(item.ok()))
        .map(Ok::<_, Infallible>);
    Ok(event_stream(Body::from_stream(body)))
}

/// Where a stream resumes: the `Last-Event-ID` header, checked (a 400 when it is not an id).
pub fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match headers.get("last-event-id").map(|v| v.to_str().map(|s| s.trim().parse::<u64>())) {
        None => Ok(None),
        Some(Ok(Ok(id))) => Ok(Some(id)),
        Some(_) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, "Last-Event-ID must be an event id").field("Last-Event-ID"))
        }
    }
}

/// The `text/event-stream` answer writing `frames` with a heartbeat; it ends at the first error
/// (whoever made it logged why) and the client resumes by id.
pub fn stream_response<E>(frames: impl futures_util::Stream<Item = Result<Bytes, E>> + Send + 'static) -> Response {
    let frames = Box::pin(frames);
    // One timer per stream, ticking every 15 s whatever the traffic: a timeout around each
    // `next()` registered and removed a timer per event per subscriber, a cost paid 1,000 times
    // per event at 1,000 subscribers.
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let body = futures_util::stream::unfold((frames, heartbeat), |(mut frames, mut heartbeat)| async move {
        // Dropping `next()` for a tick loses nothing: the stream keeps its own progress.
        tokio::select! {
            biased;
            item = frames.next() => match item {
                Some(Ok(bytes)) => Some((Ok::<_, Infallible>(bytes), (frames, heartbeat))),
                Some(Err(_)) | None => None,
            },
            _ = heartbeat.tick() => Some((Ok(Bytes::from_static(b":\n\n")), (frames, heartbeat))),
        }
    });
    event_stream(Body::from_stream(body))
}

/// `body` as a `text/event-stream` answer.
fn event_stream(body: Body) -> Response {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::http::Request;
    use cloudci_webhook::{Durability, Store};
    use secrecy::SecretString;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_idle_stream_gets_a_heartbeat_every_15_s() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::new(Arc::new(Store::open(&dir.path().join("events.db"), Durability::Normal).unwrap()));
        let keys = TokenKeys::new(&SecretString::from("jwt-key-for-tests-0123456789abcdef"));
        let token = keys.issue("test", Vec::new(), Duration::from_secs(3600));
        let req =
            Request::get("/v1/events?since=0").header(header::AUTHORIZATION, format!("Bearer {}", token.expose()));
        let resp = router(EventsState { hub, keys }).oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body().into_data_stream();
        let start = tokio::time::Instant::now();
        for n in 1..=3u32 {
            let chunk = tokio::time::timeout(HEARTBEAT * 2, body.next()).await.expect("no heartbeat").unwrap().unwrap();
            assert_eq!(&chunk[..], b":\n\n");
            assert!(start.elapsed() >= HEARTBEAT * n, "heartbeat {n} came early: {:?}", start.elapsed());
        }
    }
}
