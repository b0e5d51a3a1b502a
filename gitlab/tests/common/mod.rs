//! What the client tests share: a loopback HTTP server that records what it was sent and
//! answers through a closure, and a client with short retry waits.
// Each test binary uses its own part of this module.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use cloudci_gitlab::{Gitlab, RetryPolicy};
use secrecy::SecretString;

pub const TOKEN: &str = "glpat-TOPSECRET-0123456789";

/// What the server saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    /// Path and query exactly as sent (percent-encoding intact).
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub type Responder = dyn Fn(&Seen, usize) -> Response + Send + Sync;

/// A loopback HTTP server answering every request with `respond(request, index_of_request)`.
pub struct Server {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    pub async fn start(respond: impl Fn(&Seen, usize) -> Response + Send + Sync + 'static) -> Self {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let respond: Arc<Responder> = Arc::new(respond);
        let log = seen.clone();
        let app = Router::new().fallback(move |req: Request<Body>| {
            let log = log.clone();
            let respond = respond.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                let uri: &Uri = &parts.uri;
                let seen = Seen {
                    method: parts.method.clone(),
                    uri: uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
                    headers: parts.headers.clone(),
                    body,
                };
                let index = {
                    let mut log = log.lock().unwrap();
                    log.push(seen.clone());
                    log.len() - 1
                };
                respond(&seen, index)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

pub fn client(url: &str) -> Gitlab {
    Gitlab::builder(url)
        .private_token(SecretString::from(TOKEN))
        .retry(RetryPolicy {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(50),
            ..RetryPolicy::default()
        })
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

pub fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

pub fn pipeline_json(id: u64) -> serde_json::Value {
    serde_json::json!({
        "id": id, "iid": id, "project_id": 1, "status": "pending", "source": "api", "ref": "main",
        "sha": "a91957a858320c0e17f3a0eca7cfacbff50ea29a", "name": null,
        "web_url": format!("https://example.com/foo/bar/pipelines/{id}"),
        "created_at": "2016-08-11T11:28:34.085Z", "updated_at": "2016-08-11T11:32:35.169Z"
    })
}
