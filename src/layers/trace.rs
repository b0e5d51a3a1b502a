//! A request id on every request and answer, and one tracing span per request named by its
//! route template.

use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::{MakeSpan, TraceLayer};
use tracing::{Instrument, Span};

use super::{REQUEST_ID, SENSITIVE_HEADERS};

pub(super) fn with_trace(router: Router) -> Router {
    router.layer(
        TraceLayer::new_for_http()
            .make_span_with(RequestSpan)
            .on_request(())
            .on_response(Answered)
            .on_body_chunk(())
            .on_eos(())
            // Failures are logged once where they are handled (a handler, the panic hook, the
            // timeout), not again here.
            .on_failure(()),
    )
}

/// The same span as [`with_trace`]'s, around the handler only, for a route whose body no layer
/// may wrap (the event stream: `TraceLayer` enters the span on every poll of the body, i.e. on
/// every write to every subscriber).
pub(super) async fn handler_span(req: Request, next: Next) -> Response {
    let span = RequestSpan.make_span(&req);
    let started = std::time::Instant::now();
    let resp = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| Answered.on_response(&resp, started.elapsed(), &span));
    resp
}

pub(super) fn with_request_id(router: Router) -> Router {
    router.layer(middleware::from_fn(request_id)).layer(SetSensitiveRequestHeadersLayer::new(SENSITIVE_HEADERS))
}

async fn request_id(mut req: Request, next: Next) -> Response {
    let id = HeaderValue::from_str(&cloudci_webhook::random_token(9)).unwrap_or_else(|_| HeaderValue::from_static("-"));
    req.headers_mut().insert(REQUEST_ID, id.clone());
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(REQUEST_ID, id);
    resp
}

/// `request{id method route status latency_ms}`: the route is the matched template, so neither
/// the path secret nor a query string is ever in a span.
#[derive(Debug, Clone, Copy)]
struct RequestSpan;

impl<B> tower_http::trace::MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, req: &axum::http::Request<B>) -> Span {
        let route = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str).unwrap_or("(no route)");
        let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
        tracing::info_span!(
            "request",
            id,
            method = %req.method(),
            route,
            status = tracing::field::Empty,
            latency_ms = tracing::field::Empty,
        )
    }
}

#[derive(Debug, Clone, Copy)]
struct Answered;

use tower_http::trace::OnResponse;

impl<B> OnResponse<B> for Answered {
    fn on_response(self, resp: &axum::http::Response<B>, latency: Duration, span: &Span) {
        span.record("status", resp.status().as_u16());
        span.record("latency_ms", latency.as_millis() as u64);
        tracing::debug!("answered");
    }
}
