//! What keeps a request from hanging or taking the listener down: timeouts by route, and the
//! panic guard (logged once in the request's span, answered 500).

use std::sync::Once;
use std::time::Duration;

use crate::api::error::ApiError;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::EVENTS_ROUTE;

/// How long a request may take to get its answer's head (a streamed body is never cut).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Reads and webhook deliveries (GitLab itself gives up after 10 s): 30 s.
    pub request: Duration,
    /// Local API `POST`s, which act on GitLab: 5 min, longer than the GitLab client's longest
    /// wait (a 120 s `Retry-After` and its retries), because an action cut half-way is worse
    /// than a slow one.
    pub action: Duration,
    /// Answers prepared from a whole download before their head is sent (`/log` reads the whole
    /// job log, `/source` the archive; `/download` streams a file): 10 min.
    pub transfer: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { request: Duration::from_secs(30), action: Duration::from_secs(300), transfer: Duration::from_secs(600) }
    }
}

impl Timeouts {
    /// The limit for a request to `route` (a route template), `None` for the event stream.
    pub fn limit(&self, method: &Method, route: Option<&str>) -> Option<Duration> {
        let route = route.unwrap_or("");
        if route == EVENTS_ROUTE {
            None
        } else if ["/log", "/source", "/download"].iter().any(|s| route.ends_with(s)) {
            Some(self.transfer)
        } else if route.starts_with("/hooks/") || method != Method::POST {
            Some(self.request)
        } else {
            Some(self.action)
        }
    }
}

pub(super) async fn time_limit(State(timeouts): State<Timeouts>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let Some(limit) = timeouts.limit(req.method(), route.as_deref()) else {
        return next.run(req).await;
    };
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            tracing::warn!(limit_s = limit.as_secs(), "no answer in time; answered 503");
            let mut resp =
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("no answer within {} s", limit.as_secs()))
                    .into_response();
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            resp
        }
    }
}

tokio::task_local! {
    /// Set while a request's handler runs: the panic hook logs such panics once, the panic guard
    /// answers them.
    static IN_REQUEST: ();
}

pub(super) async fn panic_scope(req: Request, next: Next) -> Response {
    IN_REQUEST.scope((), next.run(req)).await
}

/// The panic guard of a route whose body no layer may wrap (the event stream): the handler's
/// panic is logged (in the request's scope) and answered 500, like `CatchPanicLayer` does; a
/// panic while the body streams ends that connection only (hyper's task).
pub(super) async fn catch_handler_panic(req: Request, next: Next) -> Response {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(IN_REQUEST.scope((), next.run(req))).catch_unwind().await {
        Ok(resp) => resp,
        Err(payload) => panic_response(payload),
    }
}

/// A panic in a request handler is logged once, through tracing (so in the request's span, with
/// its id), instead of the default hook's raw stderr line; other panics go to the previous hook.
/// The message is the code's own text (`expect` messages, index errors), never request data.
pub(super) fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_REQUEST.try_with(|()| ()).is_ok() {
                let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
                let payload = info.payload();
                let what = payload
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("(no message)");
                tracing::error!(at, "a request handler panicked: {what}; answered 500");
            } else {
                previous(info);
            }
        }));
    });
}

pub(super) fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
}
