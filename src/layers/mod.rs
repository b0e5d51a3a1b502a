//! The layers both listeners of `cloudci serve` share, in one place: a request id, a tracing span
//! per request, a panic guard, request timeouts, and on the local API a body limit, the `Host`
//! check, `Referrer-Policy`, JSON error bodies and event streams that end at shutdown.
//!
//! [`Layers::public`] wraps the receiver's router, [`Layers::local`] the local API's; the daemon
//! applies them where it composes both (`daemon.rs`). They are added with `Router::layer`, so they
//! run after routing and see the matched route template ([`MatchedPath`](axum::extract::MatchedPath)): a span names
//! `/hooks/{secret}`, never the path secret, and never a query string (`/login?code=`).
//!
//! Outside in: sensitive headers marked, request id, (`Referrer-Policy`,) trace span, (`Host`
//! check, JSON errors,) panic guard, timeout, (end of event streams at shutdown, body limit,) the
//! route.
//!
//! No CORS layer, on purpose: the local API is for this machine's CLI, IDE and its own dashboard
//! (same origin), so no other origin is ever allowed to read it.
//!
//! Rooms: `trace.rs` (request id, spans), `guard.rs` (timeouts, the panic guard), `local.rs`
//! (what only the local API has: the `Host` check, JSON error bodies, the end of event streams).

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::{self};
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;

mod guard;
mod local;
#[cfg(test)]
mod tests;
mod trace;

pub use guard::Timeouts;
pub use local::AllowedHosts;

use guard::{catch_handler_panic, install_panic_hook, panic_response, panic_scope, time_limit};
use local::{end_streams, host_check, json_errors};
use trace::{handler_span, with_request_id, with_trace};

/// The request id header: set on every request (replacing one a client sent, so ids in the log
/// are always ours) and returned on every answer.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request headers that carry secrets: shown as `Sensitive` if anything ever formats them.
pub const SENSITIVE_HEADERS: [HeaderName; 6] = [
    header::AUTHORIZATION,
    header::COOKIE,
    HeaderName::from_static("x-gitlab-token"),
    HeaderName::from_static("private-token"),
    HeaderName::from_static("webhook-signature"),
    HeaderName::from_static("proxy-authorization"),
];

/// The local API's body limit: its bodies are small JSON documents (a build request, a job
/// name); nothing uploads. The public listener keeps GitLab's 25 MB ([`cloudci_webhook::MAX_BODY`]).
pub const API_BODY_LIMIT: usize = 1024 * 1024;

/// The SSE route: long-lived, never timed out, ended at shutdown.
pub(super) const EVENTS_ROUTE: &str = "/v1/events";

/// The layers, with the daemon's shutdown signal and the timeouts.
#[derive(Debug, Clone)]
pub struct Layers {
    shutdown: CancellationToken,
    timeouts: Timeouts,
}

impl Layers {
    /// Layers whose event streams end when `shutdown` is cancelled, with the default timeouts.
    pub fn new(shutdown: CancellationToken) -> Self {
        install_panic_hook();
        Self { shutdown, timeouts: Timeouts::default() }
    }

    /// Other timeouts (tests).
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// The public listener: everything shared. Its own 404s stay empty; its body limit is the
    /// receiver's (GitLab's 25 MB).
    pub fn public(&self, router: Router) -> Router {
        let router = router
            .layer(middleware::from_fn_with_state(self.timeouts, time_limit))
            .layer(middleware::from_fn(panic_scope))
            .layer(CatchPanicLayer::custom(panic_response));
        shared(router)
    }

    /// The local API: everything shared, plus the body limit, event streams that end at
    /// shutdown, JSON error bodies, the `Host` check and `Referrer-Policy: no-referrer`.
    pub fn local(&self, router: Router, hosts: AllowedHosts) -> Router {
        let router = router
            .layer(RequestBodyLimitLayer::new(API_BODY_LIMIT))
            .layer(middleware::from_fn_with_state(self.shutdown.clone(), end_streams))
            .layer(middleware::from_fn_with_state(self.timeouts, time_limit))
            .layer(middleware::from_fn(panic_scope))
            .layer(CatchPanicLayer::custom(panic_response))
            .layer(middleware::from_fn(json_errors))
            .layer(middleware::from_fn_with_state(Arc::new(hosts), host_check));
        let router = with_trace(router).layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ));
        with_request_id(router)
    }

    /// The relay's subscriber API (`cloudci relay`): the local API's layers but the `Host`
    /// check. That check keeps a web page that rebinds its DNS name to 127.0.0.1 away from a
    /// loopback API; the relay serves a network behind a load balancer under whatever name the
    /// team gives it, and takes only bearer tokens, which no page can send on its own.
    pub fn relay_api(&self, router: Router) -> Router {
        let router = router
            .layer(RequestBodyLimitLayer::new(API_BODY_LIMIT))
            .layer(middleware::from_fn_with_state(self.shutdown.clone(), end_streams))
            .layer(middleware::from_fn_with_state(self.timeouts, time_limit))
            .layer(middleware::from_fn(panic_scope))
            .layer(CatchPanicLayer::custom(panic_response))
            .layer(middleware::from_fn(json_errors));
        let router = with_trace(router).layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ));
        with_request_id(router)
    }
}

impl Layers {
    /// The event stream's router (`/v1/events`): the local API's layers that act on the request
    /// and the answer's head (sensitive headers, request id, span, `Host` check, JSON errors,
    /// panic guard, `Referrer-Policy`), none that wraps the body. A body layer is polled again on
    /// every write to every subscriber — `TraceLayer` entering its span, `CatchPanicLayer` and
    /// the body limit boxing it, the end at shutdown polling its signal — a measurable share of
    /// the fan-out's CPU at 1,000 subscribers. So the span and the panic guard cover the handler
    /// (the stream is the hub's), the stream ends at shutdown from the hub
    /// ([`Hub::end_streams`](cloudci_webhook::Hub::end_streams), which the daemon calls), no
    /// timeout applies to it anyway, and no body limit is needed: the route reads no body.
    pub fn events(&self, router: Router, hosts: AllowedHosts) -> Router {
        let router = router
            .layer(middleware::from_fn(catch_handler_panic))
            .layer(middleware::from_fn(json_errors))
            .layer(middleware::from_fn_with_state(Arc::new(hosts), host_check))
            .layer(middleware::from_fn(handler_span))
            .layer(SetResponseHeaderLayer::overriding(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ));
        with_request_id(router)
    }
}

fn shared(router: Router) -> Router {
    with_request_id(with_trace(router))
}
