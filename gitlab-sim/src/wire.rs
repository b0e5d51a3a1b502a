//! What goes over the wire: GitLab's nginx compression, and a count of requests and bytes per
//! route for cloudci's economy tests and benchmarks.
//!
//! Compression is GitLab's: omnibus-gitlab's nginx runs with `gzip on`, `gzip_comp_level 2` and
//! `gzip_types text/plain ... application/json` (`files/gitlab-cookbooks/gitlab/attributes/
//! default.rb`), so job logs (`text/plain`) and API answers are gzipped for a client that sends
//! `Accept-Encoding: gzip`; nginx's default `gzip_min_length` is 20 bytes.
//!
//! The counter is the sim's own: GitLab has no such endpoint. It is served under `/-/sim/`,
//! which no product code calls.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Serialize;

/// Requests and bytes sent for one route (`GET /api/v4/projects/{id}/jobs/{jid}/trace`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RouteCount {
    /// Requests answered.
    pub requests: u64,
    /// Bytes sent: the status line and headers the sim sets, and the body as sent (compressed
    /// when it was). The few header lines hyper adds itself (`date`, `content-length`) are not
    /// counted: about 60 bytes an answer.
    pub bytes: u64,
}

/// Per route (`METHOD /template`), what the sim answered since it started or was last reset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RequestCounts {
    /// By route template.
    pub routes: BTreeMap<String, RouteCount>,
    /// By route template, when each request came (milliseconds since the start or the last
    /// reset), in arrival order: how often a client polls, and how soon. The first
    /// [`MAX_TIMES`] of each route only, so a long soak does not grow the sim without bound.
    pub at_ms: BTreeMap<String, Vec<u64>>,
}

impl RequestCounts {
    /// Every route together.
    pub fn total(&self) -> RouteCount {
        self.routes.values().fold(RouteCount::default(), |a, c| RouteCount {
            requests: a.requests + c.requests,
            bytes: a.bytes + c.bytes,
        })
    }

    /// One route (`"GET /api/v4/projects/{id}/jobs/{jid}/trace"`), zero when never called.
    pub fn route(&self, route: &str) -> RouteCount {
        self.routes.get(route).copied().unwrap_or_default()
    }

    /// The routes whose template ends with `suffix`, together.
    pub fn ending(&self, suffix: &str) -> RouteCount {
        let mut out = RouteCount::default();
        for (_, c) in self.routes.iter().filter(|(r, _)| r.ends_with(suffix)) {
            out.requests += c.requests;
            out.bytes += c.bytes;
        }
        out
    }
}

/// Arrival times kept per route ([`RequestCounts::at_ms`]).
pub const MAX_TIMES: usize = 10_000;

/// The live counter.
#[derive(Debug, Clone)]
pub(crate) struct Counter(Arc<Mutex<(RequestCounts, Instant)>>);

impl Default for Counter {
    fn default() -> Self {
        Self(Arc::new(Mutex::new((RequestCounts::default(), Instant::now()))))
    }
}

impl Counter {
    pub(crate) fn snapshot(&self) -> RequestCounts {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    pub(crate) fn reset(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = (RequestCounts::default(), Instant::now());
    }

    /// Notes that a request of `route` came now.
    fn arrived(&self, route: &str) {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let ms = guard.1.elapsed().as_millis() as u64;
        let times = guard.0.at_ms.entry(route.to_owned()).or_default();
        if times.len() < MAX_TIMES {
            times.push(ms);
        }
    }

    fn add(&self, route: &str, requests: u64, bytes: u64) {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let c = guard.0.routes.entry(route.to_owned()).or_default();
        c.requests += requests;
        c.bytes += bytes;
    }
}

/// Counts each answered request and its bytes under its route template (outside compression,
/// so compressed bodies count as sent).
pub(crate) async fn count(State(counter): State<Counter>, req: Request, next: Next) -> Response {
    let route = match req.extensions().get::<MatchedPath>() {
        Some(p) => format!("{} {}", req.method(), p.as_str()),
        None => format!("{} (unmatched)", req.method()),
    };
    counter.arrived(&route);
    let resp = next.run(req).await;
    let head = head_bytes(&resp);
    match axum::body::HttpBody::size_hint(resp.body()).exact() {
        Some(n) => {
            counter.add(&route, 1, head + n);
            resp
        }
        None => {
            // A streamed body (artifacts): counted as it goes out.
            counter.add(&route, 1, head);
            let (parts, body) = resp.into_parts();
            let stream = body.into_data_stream().inspect(move |chunk| {
                if let Ok(bytes) = chunk {
                    counter.add(&route, 0, bytes.len() as u64);
                }
            });
            Response::from_parts(parts, Body::from_stream(stream))
        }
    }
}

/// The status line and the headers set so far, as HTTP/1.1 writes them.
fn head_bytes(resp: &Response) -> u64 {
    let status = "HTTP/1.1 200 OK\r\n".len() as u64;
    let headers: u64 = resp.headers().iter().map(|(k, v)| (k.as_str().len() + 2 + v.len() + 2) as u64).sum();
    status + headers + 2
}

/// Below this, nginx sends the body as it is (`gzip_min_length`'s default).
const MIN_LENGTH: usize = 20;

/// Gzips `text/plain` and JSON answers at level 2 for clients that accept gzip, as GitLab's
/// nginx does.
pub(crate) async fn compress(req: Request, next: Next) -> Response {
    let wants = accepts_gzip(req.headers());
    let resp = next.run(req).await;
    let compressible = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/plain") || t.starts_with("application/json"));
    if !wants || !compressible || resp.headers().contains_key(header::CONTENT_ENCODING) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if bytes.len() < MIN_LENGTH {
        return Response::from_parts(parts, Body::from(bytes));
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(bytes.len() / 4), flate2::Compression::new(2));
    let zipped = gz.write_all(&bytes).and_then(|()| gz.finish());
    let Ok(zipped) = zipped else { return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    parts.headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    Response::from_parts(parts, Body::from(zipped))
}

/// Whether `Accept-Encoding` names gzip (or `*`) without `q=0`.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let refused = parts.any(|p| p.strip_prefix("q=").is_some_and(|q| q.parse::<f32>().is_ok_and(|q| q == 0.0)));
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        },
    )
}

/// `GET /-/sim/requests`: the counts; `DELETE`: start again from zero.
pub(crate) fn router(counter: Counter) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/-/sim/requests",
            get(|State(c): State<Counter>| async move { axum::Json(c.snapshot()) }).delete(
                |State(c): State<Counter>| async move {
                    c.reset();
                    axum::http::StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(counter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_accepted_unless_refused() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            accepts_gzip(&m)
        };
        assert!(h("gzip"));
        assert!(h("deflate, gzip;q=0.5"));
        assert!(h("*"));
        assert!(!h("gzip;q=0"));
        assert!(!h("identity"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
