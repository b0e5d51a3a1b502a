//! The layers both listeners of `cloudci serve` share, in one place: a request id, a tracing span
//! per request, a panic guard, request timeouts, and on the local API a body limit, the `Host`
//! check, `Referrer-Policy`, JSON error bodies and event streams that end at shutdown.
//!
//! [`Layers::public`] wraps the receiver's router, [`Layers::local`] the local API's; the daemon
//! applies them where it composes both (`daemon.rs`). They are added with `Router::layer`, so they
//! run after routing and see the matched route template ([`MatchedPath`]): a span names
//! `/hooks/{secret}`, never the path secret, and never a query string (`?access_token=`).
//!
//! Outside in: sensitive headers marked, request id, (`Referrer-Policy`,) trace span, (`Host`
//! check, JSON errors,) panic guard, timeout, (end of event streams at shutdown, body limit,) the
//! route.
//!
//! No CORS layer, on purpose: the local API is for this machine's CLI, IDE and its own dashboard
//! (same origin), so no other origin is ever allowed to read it.

use std::net::SocketAddr;
use std::sync::{Arc, Once};
use std::time::Duration;

use crate::api::error::ApiError;
use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;

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
const EVENTS_ROUTE: &str = "/v1/events";

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

/// The names the local API answers to: its own address (`127.0.0.1:PORT`, `localhost:PORT`,
/// `[::1]:PORT`, the listener's address) and configured ones (`[api] hosts`). A request for any
/// other `Host` is refused with 421: a web page that rebinds its own DNS name to 127.0.0.1 talks
/// to the API under that name, and must not be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHosts {
    names: Vec<String>,
}

impl AllowedHosts {
    /// For a listener on `listen`, plus `configured` names: `name` (on the listener's port) or
    /// `name:port`.
    pub fn new(listen: SocketAddr, configured: &[String]) -> Self {
        let port = listen.port();
        let mut names =
            vec![format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}"), listen.to_string()];
        for name in configured {
            let name = name.trim().to_ascii_lowercase();
            let has_port = name
                .rsplit_once(':')
                .is_some_and(|(h, p)| p.parse::<u16>().is_ok() && (!h.contains(':') || h.ends_with(']')));
            names.push(if has_port { name } else { format!("{name}:{port}") });
        }
        // Without a port, `Host` means port 80.
        if port == 80 {
            let bare: Vec<String> = names.iter().filter_map(|n| n.strip_suffix(":80").map(str::to_owned)).collect();
            names.extend(bare);
        }
        names.sort();
        names.dedup();
        Self { names }
    }

    /// Whether a `Host` header value is one of ours.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        self.names.contains(&host)
    }
}

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
}

fn shared(router: Router) -> Router {
    with_request_id(with_trace(router))
}

fn with_trace(router: Router) -> Router {
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

fn with_request_id(router: Router) -> Router {
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

impl<B> tower_http::trace::OnResponse<B> for Answered {
    fn on_response(self, resp: &axum::http::Response<B>, latency: Duration, span: &Span) {
        span.record("status", resp.status().as_u16());
        span.record("latency_ms", latency.as_millis() as u64);
        tracing::debug!("answered");
    }
}

async fn time_limit(State(timeouts): State<Timeouts>, req: Request, next: Next) -> Response {
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

async fn panic_scope(req: Request, next: Next) -> Response {
    IN_REQUEST.scope((), next.run(req)).await
}

/// A panic in a request handler is logged once, through tracing (so in the request's span, with
/// its id), instead of the default hook's raw stderr line; other panics go to the previous hook.
/// The message is the code's own text (`expect` messages, index errors), never request data.
fn install_panic_hook() {
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

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
}

async fn host_check(State(hosts): State<Arc<AllowedHosts>>, req: Request, next: Next) -> Response {
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
    let authority = req.uri().authority().map(|a| a.as_str());
    let ok = host.is_some_and(|h| hosts.allows(h)) && authority.is_none_or(|a| hosts.allows(a));
    if ok {
        return next.run(req).await;
    }
    tracing::warn!("refused a request for another host (DNS rebinding?)");
    ApiError::new(
        StatusCode::MISDIRECTED_REQUEST,
        "this is cloudci's local API: it answers requests for its own address only (add other names to [api] hosts)",
    )
    .field("Host")
    .into_response()
}

/// Every local API error has the JSON error body, also those written by axum or tower-http (an
/// unknown route, a method not allowed, a body too large, a query that does not parse).
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("the request body is larger than the local API takes ({API_BODY_LIMIT} bytes)")
    } else {
        let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&text).trim().to_owned();
        if text.is_empty() { status.canonical_reason().unwrap_or("error").to_lowercase() } else { text }
    };
    let mut out = ApiError::new(status, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    out
}

/// An event stream ends when the daemon stops: between two of its writes (each holds whole
/// events), so the client sees the stream end, not a reset, and resumes with `Last-Event-ID`
/// from the next daemon. This also lets the graceful shutdown finish: it waits for open answers.
async fn end_streams(State(shutdown): State<CancellationToken>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let is_stream = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    if !is_stream {
        return resp;
    }
    resp.map(|body| Body::from_stream(body.into_data_stream().take_until(shutdown.cancelled_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use tower::ServiceExt;

    fn local_addr() -> SocketAddr {
        "127.0.0.1:8788".parse().unwrap()
    }

    async fn json(resp: Response) -> serde_json::Value {
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    fn get_req(uri: &str, host: &str) -> Request {
        axum::http::Request::get(uri).header(header::HOST, host).body(Body::empty()).unwrap()
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panicking_handler_is_answered_500_json_and_logged_once() {
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        // Callsite interest is cached process-wide: a span first reached by another test's
        // thread before this subscriber existed stays disabled here unless it is recomputed
        // (seen once in CI as a panic log without its `route` span).
        tracing::callsite::rebuild_interest_cache();
        let layers = Layers::new(CancellationToken::new());
        let router = Router::new().route(
            "/boom",
            get(|| async {
                let v: Vec<u8> = Vec::new();
                if v.is_empty() {
                    panic!("the handler broke");
                }
                "never"
            }),
        );
        for app in [layers.public(router.clone()), layers.local(router, AllowedHosts::new(local_addr(), &[]))] {
            let resp = app.oneshot(get_req("/boom", "127.0.0.1:8788")).await.unwrap();
            assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
            assert!(resp.headers().contains_key(REQUEST_ID));
            assert_eq!(json(resp).await, serde_json::json!({"error": "internal error"}));
        }
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("the handler broke").count(), 2, "once per request:\n{text}");
        assert!(text.contains(r#"route="/boom""#), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_answer_503_json_but_never_cut_the_event_stream() {
        let layers = Layers::new(CancellationToken::new()).with_timeouts(Timeouts {
            request: Duration::from_secs(1),
            action: Duration::from_secs(2),
            transfer: Duration::from_secs(3),
        });
        let slow = |secs| {
            move || async move {
                tokio::time::sleep(Duration::from_secs(secs)).await;
                "done"
            }
        };
        let router = Router::new()
            .route("/v1/builds/{id}", get(slow(2)))
            .route("/v1/builds/{id}/log", get(slow(2)))
            .route("/v1/events", get(slow(100)))
            .route("/v1/builds", post(slow(3)));
        let app = layers.local(router, AllowedHosts::new(local_addr(), &[]));
        let resp = app.clone().oneshot(get_req("/v1/builds/1", "127.0.0.1:8788")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json(resp).await["error"], "no answer within 1 s");
        let resp = app.clone().oneshot(get_req("/v1/builds/1/log", "127.0.0.1:8788")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let resp = app.clone().oneshot(get_req("/v1/events", "127.0.0.1:8788")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let post = axum::http::Request::post("/v1/builds").header(header::HOST, "localhost:8788").body(Body::empty());
        let resp = app.oneshot(post.unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn the_local_api_answers_its_own_names_only_without_cors() {
        let layers = Layers::new(CancellationToken::new());
        let router = Router::new().route("/v1/builds", get(|| async { "[]" }));
        let hosts = AllowedHosts::new(local_addr(), &["devbox".into(), "proxy.example:9000".into()]);
        let app = layers.local(router, hosts);
        for ok in
            ["127.0.0.1:8788", "localhost:8788", "LOCALHOST:8788", "[::1]:8788", "devbox:8788", "proxy.example:9000"]
        {
            let resp = app.clone().oneshot(get_req("/v1/builds", ok)).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{ok}");
            assert_eq!(resp.headers()[header::REFERRER_POLICY], "no-referrer");
        }
        for bad in ["evil.example:8788", "localhost:9999", "127.0.0.1", "devbox:1", "localhost.:8788"] {
            let resp = app.clone().oneshot(get_req("/v1/builds", bad)).await.unwrap();
            assert_eq!(resp.status(), StatusCode::MISDIRECTED_REQUEST, "{bad}");
            assert_eq!(resp.headers()[header::REFERRER_POLICY], "no-referrer");
            assert_eq!(json(resp).await["field"], "Host");
        }
        let no_host = axum::http::Request::get("/v1/builds").body(Body::empty()).unwrap();
        assert_eq!(app.clone().oneshot(no_host).await.unwrap().status(), StatusCode::MISDIRECTED_REQUEST);
        // A preflight from another origin: an error with the JSON body, and nothing that allows it.
        let preflight = axum::http::Request::builder()
            .method(Method::OPTIONS)
            .uri("/v1/builds")
            .header(header::HOST, "127.0.0.1:8788")
            .header(header::ORIGIN, "http://evil.example")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(preflight).await.unwrap();
        assert!(resp.status().is_client_error());
        assert!(!resp.headers().keys().any(|k| k.as_str().starts_with("access-control-")), "{:?}", resp.headers());
        assert!(json(resp).await["error"].is_string());
        // Over the body limit: 413 with the JSON body.
        let big = axum::http::Request::post("/v1/builds")
            .header(header::HOST, "127.0.0.1:8788")
            .header(header::CONTENT_LENGTH, (API_BODY_LIMIT + 1).to_string())
            .body(Body::from(vec![b'x'; API_BODY_LIMIT + 1]))
            .unwrap();
        let resp = app.oneshot(big).await.unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(json(resp).await["error"].as_str().unwrap().contains("larger"));
    }

    #[tokio::test]
    async fn event_streams_end_at_shutdown() {
        let shutdown = CancellationToken::new();
        let layers = Layers::new(shutdown.clone());
        let router = Router::new().route(
            "/v1/events",
            get(|| async {
                let frames = futures_util::stream::repeat_with(|| Ok::<_, std::convert::Infallible>("data: x\n\n"))
                    .then(|f| async move {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        f
                    });
                ([(header::CONTENT_TYPE, "text/event-stream")], Body::from_stream(frames))
            }),
        );
        let app = layers.local(router, AllowedHosts::new(local_addr(), &[]));
        let resp = app.oneshot(get_req("/v1/events", "127.0.0.1:8788")).await.unwrap();
        let mut body = resp.into_body().into_data_stream();
        assert_eq!(body.next().await.unwrap().unwrap(), "data: x\n\n");
        shutdown.cancel();
        let rest = tokio::time::timeout(Duration::from_secs(5), body.collect::<Vec<_>>()).await.unwrap();
        assert!(rest.iter().all(|f| f.as_ref().is_ok_and(|b| b == "data: x\n\n")), "{rest:?}");
    }

    #[test]
    fn timeouts_by_route() {
        let t = Timeouts::default();
        assert_eq!(t.limit(&Method::POST, Some("/hooks/{secret}")), Some(t.request));
        assert_eq!(t.limit(&Method::GET, Some(EVENTS_ROUTE)), None);
        assert_eq!(t.limit(&Method::GET, Some("/v1/events/recent")), Some(t.request));
        assert_eq!(t.limit(&Method::GET, Some("/v1/builds/{id}/source")), Some(t.transfer));
        assert_eq!(t.limit(&Method::POST, Some("/v1/builds/{id}/retry")), Some(t.action));
        assert_eq!(t.limit(&Method::GET, None), Some(t.request));
    }

    #[test]
    fn api_hosts_are_read_and_checked_with_their_place() {
        let path = std::path::Path::new("cloudci.toml");
        let ok = crate::config::parse("[api]\nhosts = [\"devbox\", \"proxy.lan:9000\"]\n", path).unwrap();
        assert_eq!(ok.api.hosts, ["devbox", "proxy.lan:9000"]);
        assert!(crate::config::parse("[api]\n", path).unwrap().api.hosts.is_empty());
        let err = crate::config::parse("[api]\nlisten = \"127.0.0.1:1\"\nhosts = [\"http://evil\"]\n", path)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cloudci.toml:3:") && err.contains("api.hosts") && err.contains("http://evil"),
            "{err}"
        );
    }
}
