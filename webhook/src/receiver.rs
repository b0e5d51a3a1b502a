//! The public listener: `POST /hooks/{path-secret}` and nothing else.
//!
//! A delivery is checked (path, token, signature), limited to GitLab's 25 MB, required to be JSON,
//! stored durably, and only then answered 2xx — well within GitLab's 10 s. Turning it into events
//! happens after the answer, in the [`Processor`], which also picks up whatever a crash left
//! unprocessed. Anything else on this listener is a 404 with an empty body.

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
use crate::store::{NewDelivery, Stored};
use crate::verify::{DeliveryHeaders, HookSecrets};

/// GitLab's cap on a webhook body (FACTS §1.1).
pub const MAX_BODY: usize = 25 * 1024 * 1024;

/// What the public listener needs.
#[derive(Debug, Clone)]
pub struct Receiver {
    secrets: Arc<std::sync::RwLock<Arc<HookSecrets>>>,
    hub: Hub,
    wake: Arc<Notify>,
    probe: Arc<str>,
}

impl Receiver {
    /// A receiver checking against `secrets` and storing into `hub`'s store. `probe` is a random
    /// value: `GET /probe/{probe}` answers 204, so a tunnel can be checked end to end.
    pub fn new(secrets: HookSecrets, hub: Hub, probe: String) -> Self {
        Self {
            secrets: Arc::new(std::sync::RwLock::new(Arc::new(secrets))),
            hub,
            wake: Arc::new(Notify::new()),
            probe: probe.into(),
        }
    }

    /// Replaces the secrets (token or path rotation) without a restart.
    pub fn set_secrets(&self, secrets: HookSecrets) {
        *self.secrets.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(secrets);
    }

    /// The processor that turns stored deliveries into events.
    pub fn processor(&self) -> Processor {
        Processor { hub: self.hub.clone(), wake: self.wake.clone() }
    }

    /// The public listener's routes.
    pub fn router(&self) -> Router {
        Router::new()
            // Any other method is a plain 404 too, not a 405 that would confirm the path exists.
            .route("/hooks/{secret}", post(receive).fallback(|| async { StatusCode::NOT_FOUND }))
            .route("/probe/{nonce}", axum::routing::get(probe).fallback(|| async { StatusCode::NOT_FOUND }))
            .fallback(|| async { StatusCode::NOT_FOUND })
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(self.clone())
    }
}

async fn probe(State(r): State<Receiver>, Path(nonce): Path<String>) -> StatusCode {
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

async fn receive(State(r): State<Receiver>, Path(secret): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
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
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
        return refuse(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}"));
    }
    let event = header(&headers, "x-gitlab-event").unwrap_or("").to_owned();
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
    let store = r.hub.store().clone();
    match tokio::task::spawn_blocking(move || store.insert_delivery(&delivery)).await {
        Ok(Ok(Stored::New(id))) => {
            r.wake.notify_one();
            (StatusCode::OK, axum::Json(json!({"status": "accepted", "delivery": id}))).into_response()
        }
        Ok(Ok(Stored::Duplicate(id))) => {
            (StatusCode::OK, axum::Json(json!({"status": "duplicate", "delivery": id}))).into_response()
        }
        // Not stored, so not acknowledged: GitLab records a failure and the reconciler covers it.
        Ok(Err(e)) => {
            tracing::error!("cannot store a webhook delivery: {e}");
            refuse(StatusCode::SERVICE_UNAVAILABLE, "cannot store the delivery")
        }
        Err(e) => {
            tracing::error!("store task failed: {e}");
            refuse(StatusCode::SERVICE_UNAVAILABLE, "cannot store the delivery")
        }
    }
}

/// Turns stored deliveries into events, in arrival order, and publishes them.
#[derive(Debug, Clone)]
pub struct Processor {
    hub: Hub,
    wake: Arc<Notify>,
}

impl Processor {
    /// Processes everything pending now. Returns how many deliveries it processed.
    pub async fn drain(&self) -> Result<usize, crate::store::StoreError> {
        let mut total = 0;
        loop {
            let store = self.hub.store().clone();
            let batch = crate::hub::blocking(move || store.pending_deliveries(100)).await?;
            if batch.is_empty() {
                return Ok(total);
            }
            for d in batch {
                let (observations, error) =
                    match WebhookEvent::parse(Some(&d.event).filter(|e| !e.is_empty()).map(String::as_str), &d.body) {
                        Ok(event) => (observe(&event, EventSource::Webhook), None),
                        // Kept and marked, never dropped silently: a GitLab change we cannot read yet.
                        Err(e) => {
                            tracing::warn!(delivery = d.id, "cannot read a stored delivery: {e}");
                            (Vec::new(), Some(e.to_string()))
                        }
                    };
                let store = self.hub.store().clone();
                let events =
                    crate::hub::blocking(move || store.process_delivery(d.id, observations, error.as_deref())).await?;
                self.hub.publish(events);
                total += 1;
            }
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
