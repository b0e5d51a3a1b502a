//! The layers on small routers, driven with `oneshot`.

use super::*;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
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
    for ok in ["127.0.0.1:8788", "localhost:8788", "LOCALHOST:8788", "[::1]:8788", "devbox:8788", "proxy.example:9000"]
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
            let frames = futures_util::stream::repeat_with(|| Ok::<_, std::convert::Infallible>("data: x\n\n")).then(
                |f| async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    f
                },
            );
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
    assert!(err.starts_with("cloudci.toml:3:") && err.contains("api.hosts") && err.contains("http://evil"), "{err}");
}
