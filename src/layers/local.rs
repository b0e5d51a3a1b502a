//! What only the local API has: the `Host` check against DNS rebinding, JSON error bodies for
//! every error, and event streams that end when the daemon stops.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::api::error::ApiError;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::API_BODY_LIMIT;

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

pub(super) async fn host_check(State(hosts): State<Arc<AllowedHosts>>, req: Request, next: Next) -> Response {
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
pub(super) async fn json_errors(req: Request, next: Next) -> Response {
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
pub(super) async fn end_streams(State(shutdown): State<CancellationToken>, req: Request, next: Next) -> Response {
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
