//! Sends webhooks as GitLab does: one POST per delivery with GitLab's headers, a 10 s timeout,
//! no retries, 2xx and 3xx count as success, and auto-disabling after 4 consecutive failures;
//! every attempt is logged for `GET /hooks/:id/events`, and a logged delivery can be resent.
//! Each delivery runs on its own task, so a slow receiver never holds up the sim.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt;
use serde_json::Value;
use sha2::Sha256;

use crate::Shared;
use crate::access::Source;
use crate::render::VERSION;
use crate::state::{DeliveryLog, EventKind, Outgoing, State};

/// GitLab's delivery timeout.
pub(crate) const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Delivery log entries kept per hook: GitLab keeps them all for 14 days; the sim keeps at most
/// this many (a difference only above it).
const LOG_LIMIT: usize = 50_000;

/// A random version-4 UUID, as GitLab's `SecureRandom.uuid`.
pub(crate) fn uuid() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// `v1,<base64 HMAC-SHA256 over "{id}.{timestamp}.{body}">` with the key inside `whsec_<base64>`.
pub fn sign(signing_token: &str, id: &str, timestamp: &str, body: &[u8]) -> Option<String> {
    let key = STANDARD.decode(signing_token.strip_prefix("whsec_")?).ok()?;
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).ok()?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())))
}

/// Queues `event` for every hook that wants it: the project's hooks and the hooks of its group
/// and the groups above (EE's `Project#execute_hooks` runs both; a project hook and an identical
/// group hook both fire, FACTS §4). Only executable hooks are queued (`WebHook#async_execute ... if
/// executable?`), and each queued call counts toward the per-top-level-namespace limit
/// ([`apply_rate_limit`]).
pub(crate) fn dispatch(shared: &Arc<Shared>, event: Outgoing) {
    let hooks: Vec<u64> = {
        let mut state = shared.lock();
        let Some(project) = state.projects.iter().find(|p| p.id == event.project_id) else { return };
        let groups = state.access.lineage(project.group_id);
        let root = groups.last().copied().unwrap_or(project.group_id);
        let now = Utc::now();
        let hooks: Vec<u64> = state
            .hooks
            .values()
            .filter(|h| match h.owner {
                Source::Project(p) => p == event.project_id,
                Source::Group(g) => groups.contains(&g),
            })
            .filter(|h| event.kind.wanted_by(h) && h.alert_status(now) == "executable")
            .map(|h| h.id)
            .collect();
        apply_rate_limit(shared, &mut state, root, hooks)
    };
    if hooks.is_empty() {
        return;
    }
    let body: Arc<Vec<u8>> = Arc::new(serde_json::to_vec(&event.body).unwrap_or_default());
    let event_uuid = uuid();
    for hook_id in hooks {
        let shared = shared.clone();
        let body = body.clone();
        let event_uuid = event_uuid.clone();
        let kind = event.kind;
        tokio::spawn(async move { deliver(shared, hook_id, kind, body, event_uuid, false).await });
    }
}

/// GitLab.com's webhook rate limit (`Gitlab::WebHooks::RateLimiter`, `web_hook_calls`): every
/// queued call of any hook under one top-level namespace counts (`throttled?` counts the refused
/// ones too); over the limit the call is not queued, only written to the auth log (`Webhook rate
/// limit exceeded`): it is not sent, not in the hook's delivery log, and no failure is counted
/// (`WebHookService#async_execute`). The count lasts one window (a minute) from its first call.
/// Test deliveries and resends are sent synchronously and are not limited. (An EE version of the
/// limiter, commit not resolved, only logged for paid plans instead of dropping; GitLab.com's
/// docs say the namespace's hooks are paused until the next minute. The sim drops, as Free does.)
fn apply_rate_limit(shared: &Shared, state: &mut State, root: u64, hooks: Vec<u64>) -> Vec<u64> {
    let Some(limit) = shared.hook_rate_limit else { return hooks };
    let now = Instant::now();
    let mut kept = Vec::with_capacity(hooks.len());
    let mut dropped = 0;
    let window = state.hook_calls.entry(root).or_default();
    for hook_id in hooks {
        if window.allow(now, limit, shared.hook_rate_window) {
            kept.push(hook_id);
        } else {
            dropped += 1;
            tracing::info!(hook.id = hook_id, "Webhook rate limit exceeded");
        }
    }
    if dropped > 0 {
        let path = state.access.groups.iter().find(|g| g.id == root).map(|g| g.path.clone()).unwrap_or_default();
        *state.hook_rate_limited.entry(path).or_default() += dropped;
    }
    kept
}

/// What became of one HTTP attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Not sent: the hook is gone, or disabled and the delivery not forced.
    NotSent,
    /// The receiver answered with this status.
    Answered(u16),
    /// Sent, but no answer came (connection failure, timeout, or the `lost` fault). Logged as
    /// `internal error`; the text is what GitLab's API answers a resend with (GitLab's is Ruby's
    /// exception message, e.g. `Net::ReadTimeout`).
    Failed(String),
}

/// Sends one delivery (and its fault-injected duplicate). `forced` is a test delivery, sent even
/// to a disabled hook and never subject to delivery faults.
pub(crate) async fn deliver(
    shared: Arc<Shared>,
    hook_id: u64,
    kind: EventKind,
    body: Arc<Vec<u8>>,
    event_uuid: String,
    forced: bool,
) -> Option<u16> {
    let faults = &shared.faults;
    // `drop`: a delivery GitLab never queues (as its per-namespace rate limit does, which
    // `dispatch` models for real with `--hook-rate-limit`). Nothing is sent, nothing logged, no
    // failure counted (FACTS §1.5).
    if !forced && faults.chance(faults.spec.drop) {
        tracing::debug!(hook.id = hook_id, "fault: delivery dropped");
        return None;
    }
    let mut delay = faults.spec.delay_ms.clone().map(|r| faults.pick(r)).unwrap_or(0);
    if faults.chance(faults.spec.reorder) {
        delay += faults.pick(100..1000);
    }
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let idempotency_key = uuid();
    let times = if !forced && faults.chance(faults.spec.duplicate) { 2 } else { 1 };
    let mut last = None;
    for _ in 0..times {
        let outcome = send_once(&shared, hook_id, kind, &body, &event_uuid, &idempotency_key, forced).await;
        last = match outcome {
            Outcome::Answered(status) => Some(status),
            _ => None,
        };
    }
    last
}

/// Resends a logged delivery as GitLab's `ResendService` does: the same body and `Idempotency-Key`
/// (so `webhook-id` too), a new `X-Gitlab-Webhook-UUID`, a fresh `webhook-timestamp` and signature,
/// and a new `X-Gitlab-Event-UUID` (the resend is a new API request, and that header comes from
/// the request's recursion-detection id). Not forced: a disabled hook is not sent to. Logged as a
/// new entry; a failure counts toward auto-disabling. The `lost` fault applies; `drop`,
/// `duplicate`, `delay` and `reorder` (which model GitLab's asynchronous queue) do not, since a
/// resend is sent synchronously while the API request waits.
pub(crate) async fn resend(shared: Arc<Shared>, hook_id: u64, original: &DeliveryLog) -> Outcome {
    send_once(&shared, hook_id, original.kind, &original.body, &uuid(), &original.idempotency_key, false).await
}

async fn send_once(
    shared: &Arc<Shared>,
    hook_id: u64,
    kind: EventKind,
    body: &Arc<Vec<u8>>,
    event_uuid: &str,
    idempotency_key: &str,
    forced: bool,
) -> Outcome {
    let now = Utc::now();
    let (url, token, signing) = {
        let state = shared.lock();
        let Some(hook) = state.hooks.get(&hook_id) else { return Outcome::NotSent };
        // GitLab does not even enqueue deliveries for a disabled hook.
        if !forced && hook.alert_status(now) != "executable" {
            tracing::debug!(hook.id = hook_id, "hook disabled; delivery not sent");
            return Outcome::NotSent;
        }
        (hook.url.clone(), hook.token.clone(), hook.signing_token.clone())
    };
    let timestamp = now.timestamp().to_string();
    let mut headers: Vec<(&str, String)> = vec![
        ("Content-Type", "application/json".into()),
        ("User-Agent", format!("GitLab/{VERSION}")),
        ("X-Gitlab-Event", kind.header().into()),
        ("X-Gitlab-Instance", shared.render.base.clone()),
        ("X-Gitlab-Webhook-UUID", uuid()),
        ("X-Gitlab-Event-UUID", event_uuid.to_owned()),
        ("Idempotency-Key", idempotency_key.to_owned()),
        ("webhook-id", idempotency_key.to_owned()),
        ("webhook-timestamp", timestamp.clone()),
    ];
    if let Some(sig) = signing.as_deref().and_then(|t| sign(t, idempotency_key, &timestamp, body)) {
        headers.push(("webhook-signature", sig));
    }
    if let Some(token) = &token {
        headers.push(("X-Gitlab-Token", token.replace(['\r', '\n'], "")));
    }
    let started = Instant::now();
    let faults = &shared.faults;
    // (status, body) when an answer came; else the failure's text.
    let answer: Result<(u16, String), String> = if !forced && faults.chance(faults.spec.lost) {
        tracing::debug!(hook.id = hook_id, "fault: delivery lost on the way");
        Err("Connection reset by peer".to_owned())
    } else {
        let mut request = shared.http.post(&url).timeout(DELIVERY_TIMEOUT).body(body.to_vec());
        for (k, v) in &headers {
            request = request.header(*k, v);
        }
        match request.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                Ok((status, text.chars().take(8 * 1024).collect::<String>()))
            }
            Err(e) if e.is_timeout() => Err("Net::ReadTimeout".to_owned()),
            Err(_) => Err("Failed to open TCP connection".to_owned()),
        }
    };
    let ok = matches!(answer, Ok((s, _)) if (200..400).contains(&s));
    let mut state = shared.lock();
    state.last_id.delivery += 1;
    let log_id = state.last_id.delivery;
    let no_auto_disable = shared.faults.spec.no_auto_disable;
    let first_backoff = shared.faults.spec.disable_backoff_ms.unwrap_or(60_000);
    let Some(hook) = state.hooks.get_mut(&hook_id) else { return Outcome::NotSent };
    if ok {
        hook.recent_failures = 0;
        hook.disabled_until = None;
    } else if !no_auto_disable {
        hook.recent_failures = hook.recent_failures.saturating_add(1);
        if hook.recent_failures > 3 {
            // FACTS §1.5: 1 min × 2^(failures − 3), capped at 24 h; permanently off after 40.
            let factor = 1u64 << (hook.recent_failures - 3).min(20);
            let ms = first_backoff.saturating_mul(factor).min(24 * 3600 * 1000);
            hook.disabled_until =
                Some(Utc::now() + chrono::Duration::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX)));
        }
    }
    let logged: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), if *k == "X-Gitlab-Token" { "[REDACTED]".to_owned() } else { v.clone() }))
        .collect();
    let (response_status, response_body, outcome) = match answer {
        Ok((status, text)) => (status.to_string(), text, Outcome::Answered(status)),
        Err(why) => ("internal error".to_owned(), String::new(), Outcome::Failed(why)),
    };
    // Like GitLab's `WebHookLog`, the entry's id and `created_at` are given when it is written,
    // after the answer (or the failure) came.
    let logged_at = Utc::now();
    hook.deliveries.push_back(DeliveryLog {
        id: log_id,
        created_at: logged_at,
        url,
        trigger: kind.trigger().to_owned(),
        kind,
        request_headers: logged,
        idempotency_key: idempotency_key.to_owned(),
        body: body.clone(),
        request_data: serde_json::from_slice(body).unwrap_or(Value::Null),
        response_status,
        response_body,
        execution_duration: started.elapsed().as_secs_f64(),
    });
    // GitLab keeps log partitions for 14 days (`retain_for: 14.days`); the cap bounds memory.
    let retain = logged_at - chrono::Duration::days(14);
    while hook.deliveries.front().is_some_and(|d| d.created_at < retain) || hook.deliveries.len() > LOG_LIMIT {
        hook.deliveries.pop_front();
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_v4() {
        let u = uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(uuid(), u);
    }

    #[test]
    fn signature_matches_the_standard_webhooks_reference_vector() {
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig.as_deref(), Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="));
        assert!(sign("nope", "a", "b", b"c").is_none());
    }
}
