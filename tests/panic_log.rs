//! A panicking handler on either listener is answered 500 with the JSON error body and a request
//! id, and logged once inside its request's span.
//!
//! A test binary of its own, with the process's global subscriber set before any callsite is
//! reached: tracing caches callsite interest process-wide, so a thread-local subscriber in a
//! binary whose other tests' threads reach the same spans first can miss them (seen in CI, and
//! `rebuild_interest_cache()` did not prevent it; `gitlab/tests/token_in_logs.rs` is the same cure).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::routing::get;
use cloudci::layers::{AllowedHosts, Layers, REQUEST_ID};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_panicking_handler_is_answered_500_json_and_logged_once() {
    let log = Captured::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .init();
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
    let listen: SocketAddr = "127.0.0.1:8788".parse().unwrap();
    for app in [layers.public(router.clone()), layers.local(router, AllowedHosts::new(listen, &[]))] {
        let req = Request::builder().uri("/boom").header(header::HOST, "127.0.0.1:8788").body(Body::empty()).unwrap();
        let resp = app.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(resp.headers().contains_key(REQUEST_ID));
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body, serde_json::json!({"error": "internal error"}));
    }
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert_eq!(text.matches("the handler broke").count(), 2, "once per request:\n{text}");
    assert!(text.contains(r#"route="/boom""#), "{text}");
}
