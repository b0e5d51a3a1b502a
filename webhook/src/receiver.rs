//! The public listener: `POST /hooks/{path-secret}` and nothing else.
//!
//! A delivery is checked (path, token, signature), limited to GitLab's 25 MB, required to be JSON,
//! read, and handed to the group commit ([`crate::ingest`]): deliveries arriving together are
//! stored and turned into events in one transaction, and each is answered 2xx only after that
//! commit — well within GitLab's 10 s. The [`Processor`] picks up whatever is left pending: what a
//! crash left behind, and deliveries whose processing had to wait for older ones. Anything else
//! on this listener is a 404 with an empty body.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use cloudci_gitlab::webhook::WebhookEvent;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::events::{EventSource, observe};
use crate::hub::Hub;
use crate::ingest::{Ingest, IngestError, IngestStats};
use crate::log::EventLog;
use crate::store::{Incoming, NewDelivery, Parsed, Store, Stored};
use crate::verify::{DeliveryHeaders, HookSecrets};

/// GitLab's cap on a webhook body (FACTS §1.1).
pub const MAX_BODY: usize = 25 * 1024 * 1024;

/// What the public listener needs, over the daemon's SQLite log unless said otherwise (the
/// relay's is PostgreSQL).
#[derive(Debug)]
pub struct Receiver<L: EventLog = Store> {
    secrets: Arc<std::sync::RwLock<Arc<HookSecrets>>>,
    hub: Hub<L>,
    wake: Arc<Notify>,
    ingest: Ingest,
    probe: Arc<str>,
}

// By hand: a derive would ask `L: Clone`.
impl<L: EventLog> Clone for Receiver<L> {
    fn clone(&self) -> Self {
        Self {
            secrets: self.secrets.clone(),
            hub: self.hub.clone(),
            wake: self.wake.clone(),
            ingest: self.ingest.clone(),
            probe: self.probe.clone(),
        }
    }
}

impl<L: EventLog> Receiver<L> {
    /// A receiver checking against `secrets` and storing into `hub`'s store. `probe` is a random
    /// value: `GET /probe/{probe}` answers 204, so a tunnel can be checked end to end.
    /// Starts the group-commit writer thread, which stops when the last clone is dropped.
    pub fn new(secrets: HookSecrets, hub: Hub<L>, probe: String) -> Self {
        let wake = Arc::new(Notify::new());
        Self {
            secrets: Arc::new(std::sync::RwLock::new(Arc::new(secrets))),
            ingest: Ingest::start(hub.clone(), wake.clone()),
            hub,
            wake,
            probe: probe.into(),
        }
    }

    /// The group commit's counters (batch sizes, time in the store).
    pub fn ingest_stats(&self) -> &IngestStats {
        self.ingest.stats()
    }

    /// Replaces the secrets (token or path rotation) without a restart.
    pub fn set_secrets(&self, secrets: HookSecrets) {
        *self.secrets.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(secrets);
    }

    /// The processor that turns stored deliveries into events.
    pub fn processor(&self) -> Processor<L> {
        Processor { hub: self.hub.clone(), wake: self.wake.clone() }
    }

    /// The public listener's routes.
    pub fn router(&self) -> Router {
        Router::new()
            // Any other method is a plain 404 too, not a 405 that would confirm the path exists.
            .route("/hooks/{secret}", post(receive::<L>).fallback(|| async { StatusCode::NOT_FOUND }))
            .route("/probe/{nonce}", axum::routing::get(probe::<L>).fallback(|| async { StatusCode::NOT_FOUND }))
            .fallback(|| async { StatusCode::NOT_FOUND })
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(self.clone())
    }
}

async fn probe<L: EventLog>(State(r): State<Receiver<L>>, Path(nonce): Path<String>) -> StatusCode {
    if nonce == *r.probe { StatusCode::NO_CONTENT } else { StatusCode::NOT_FOUND }
}

fn refuse(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": reason.into()}))).into_response()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Headers kept with the raw body: everything that helps later, nothing secret.
const KEPT_HEADERS: [&str; 8] = [
    "x-gitlab-event",
    "x-gitlab-instance",
    "x-gitlab-webhook-uuid",
    "x-gitlab-event-uuid",
    "idempotency-key",
    "webhook-id",
    "webhook-timestamp",
    "user-agent",
];

async fn receive<L: EventLog>(
    State(r): State<Receiver<L>>,
    Path(secret): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let secrets = r.secrets.read().unwrap_or_else(|e| e.into_inner()).clone();
    if secrets.check_path(&secret).is_err() {
        return StatusCode::NOT_FOUND.into_response();
    }
    let json_type = header(&headers, header::CONTENT_TYPE.as_str())
        .map(|ct| ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json"))
        .unwrap_or(false);
    if !json_type {
        return refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json");
    }
    let given = DeliveryHeaders {
        token: header(&headers, "x-gitlab-token"),
        webhook_id: header(&headers, "webhook-id"),
        timestamp: header(&headers, "webhook-timestamp"),
        signature: header(&headers, "webhook-signature"),
    };
    if let Err(e) = secrets.check(&given, &body, chrono::Utc::now().timestamp()) {
        tracing::warn!(reason = %e, "refused a webhook delivery");
        return refuse(StatusCode::UNAUTHORIZED, e.to_string());
    }
    let event = header(&headers, "x-gitlab-event").unwrap_or("").to_owned();
    // Read here, on the handler's thread, so that the writer only stores and applies.
    let observations = match read(&event, &body) {
        Ok(parsed) => parsed,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")),
    };
    // GitLab reuses Idempotency-Key (= webhook-id) for retries and resends (FACTS §1.5); before
    // 17.4 there is none, and the body's hash stands in.
    let dedup_key = header(&headers, "idempotency-key")
        .or(header(&headers, "webhook-id"))
        .filter(|k| !k.trim().is_empty())
        .map(|k| format!("key:{}", k.trim()))
        .unwrap_or_else(|| {
            let digest = Sha256::new().chain_update(event.as_bytes()).chain_update(&body).finalize();
            format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
        });
    let kept: serde_json::Map<String, serde_json::Value> =
        KEPT_HEADERS.iter().filter_map(|h| header(&headers, h).map(|v| ((*h).to_owned(), json!(v)))).collect();
    let delivery =
        NewDelivery { dedup_key, event, headers: serde_json::Value::Object(kept).to_string(), body: body.to_vec() };
    match r.ingest.store(Incoming { delivery, observations }).await {
        Ok(Stored::New(id)) => {
            (StatusCode::OK, axum::Json(json!({"status": "accepted", "delivery": id}))).into_response()
        }
        Ok(Stored::Duplicate(id)) => {
            (StatusCode::OK, axum::Json(json!({"status": "duplicate", "delivery": id}))).into_response()
        }
        // Not stored, so not acknowledged: GitLab records a failure and the reconciler covers it.
        // The writer logged why. Never a 4xx: GitLab counts those towards disabling the hook.
        Err(e) => {
            let reason = match &e {
                IngestError::Store { problem: Some(p), .. } => {
                    r.hub.health().refused_delivery();
                    p.explain()
                }
                IngestError::Store { problem: None, .. } => "cannot store the delivery",
                IngestError::Stopped => "cloudci is stopping",
            };
            unavailable(reason)
        }
    }
}

/// How long GitLab (or anyone) is told to wait after a 503.
pub const RETRY_AFTER_SECS: u64 = 30;

/// 503 with `Retry-After` and the reason in the JSON body.
pub fn unavailable(reason: &str) -> Response {
    let mut resp = refuse(StatusCode::SERVICE_UNAVAILABLE, reason);
    resp.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from(RETRY_AFTER_SECS));
    resp
}

/// Reads a delivery's body: `Err` only when it is not JSON at all (refused); a body cloudci
/// cannot interpret is kept with the reason.
fn read(event: &str, body: &[u8]) -> Result<Parsed, serde_json::Error> {
    if let Some(observations) = crate::hook_facts::observe_bytes(event, body, EventSource::Webhook) {
        return Ok(Ok(observations));
    }
    Ok(match WebhookEvent::parse(Some(event).filter(|e| !e.is_empty()), body) {
        Ok(parsed) => Ok(observe(&parsed, EventSource::Webhook)),
        Err(cloudci_gitlab::webhook::WebhookParseError::NotJson(e)) => return Err(e),
        Err(e) => Err(e.to_string().into()),
    })
}

impl crate::log::StoredDelivery {
    /// What the delivery says, read back from its stored body: its observations, or why it
    /// cannot be read (logged, and kept with the delivery when it is processed).
    pub fn parse(&self) -> Parsed {
        if let Some(reason) = &self.unreadable {
            tracing::warn!(delivery = self.id, "cannot read a stored delivery: {reason}");
            return Err(reason.as_str().into());
        }
        match read(&self.event, &self.body) {
            Ok(parsed) => parsed,
            Err(e) => Err(e.to_string().into()),
        }
        // Kept and marked, never dropped silently: a GitLab change we cannot read yet.
        .inspect_err(|e| tracing::warn!(delivery = self.id, "cannot read a stored delivery: {e}"))
    }
}

/// Turns stored deliveries into events, in arrival order, and publishes them.
#[derive(Debug)]
pub struct Processor<L: EventLog = Store> {
    hub: Hub<L>,
    wake: Arc<Notify>,
}

impl<L: EventLog> Clone for Processor<L> {
    fn clone(&self) -> Self {
        Self { hub: self.hub.clone(), wake: self.wake.clone() }
    }
}

impl<L: EventLog> Processor<L> {
    /// Processes everything pending now. Returns how many deliveries it processed.
    pub async fn drain(&self) -> Result<usize, crate::store::StoreError> {
        let mut total = 0;
        loop {
            let store = self.hub.store().clone();
            let batch = crate::hub::blocking(move || store.pending_deliveries(100)).await?;
            if batch.is_empty() {
                return Ok(total);
            }
            // One transaction for the whole batch, in arrival order.
            total += batch.len();
            let parsed: Vec<(i64, Parsed)> = batch.iter().map(|d| (d.id, d.parse())).collect();
            let store = self.hub.store().clone();
            let events = crate::hub::blocking(move || store.process_deliveries(parsed)).await?;
            self.hub.publish(events);
        }
    }

    /// Runs until the task is dropped: drains at start (what a crash left behind), then whenever
    /// a delivery arrives, and every few seconds in case a wake-up was missed.
    pub async fn run(self) {
        loop {
            if let Err(e) = self.drain().await {
                tracing::error!("processing deliveries: {e}");
            }
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.wake.notified()).await;
        }
    }
}
