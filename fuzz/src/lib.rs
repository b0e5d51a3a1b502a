//! The bodies of cloudci's fuzz targets, shared by two drivers:
//! - `cargo fuzz run <target>` (nightly, libFuzzer with sanitizer coverage): `fuzz_targets/*.rs`
//!   call these functions;
//! - the test suite on stable: `tests/fuzz.rs` includes this file and replays the committed corpus
//!   (`fuzz/corpus/<target>/`) plus seeded mutations of it through the same functions.
//!
//! Each function takes arbitrary bytes and must return normally: a product panic is a finding, and
//! so is a broken invariant the function asserts (a forged signature accepted, a server error for
//! bad input). Malformed input must come back as an error value, never a panic.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use cloudci::api::auth::TokenKeys;
use cloudci_gitlab::webhook::{WebhookEvent, WebhookParseError};
use cloudci_webhook::{DeliveryHeaders, EventSource, HookSecrets, Hub, Incoming, NewDelivery, Store, observe, sign};
use secrecy::SecretString;
use tower::ServiceExt;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The targets by name, as `cargo fuzz` and the corpus directories name them.
pub const TARGETS: [(&str, Target); 5] =
    [("webhook", webhook), ("verify", verify), ("sse", sse), ("config", config), ("ci", ci)];

/// Splits `data` into at most `n` newline-separated fields; the last one keeps the rest.
fn fields(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |&b| b == b'\n').collect()
}

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// A delivery: the first line is `X-Gitlab-Event` (empty: none), the rest the body. Runs what the
/// receiver runs: parse, delivery → observations, the SSE frame of each, then the store's ingest
/// (delivery row, state machine, event log) in a fresh in-memory store.
pub fn webhook(data: &[u8]) {
    let f = fields(data, 2);
    let event = std::str::from_utf8(f[0]).unwrap_or("");
    let body = f.get(1).copied().unwrap_or_default();
    let observations = match WebhookEvent::parse(Some(event).filter(|e| !e.is_empty()), body) {
        Ok(parsed) => {
            let _ = (parsed.event_name(), parsed.project_id(), parsed.to_value());
            let observations = observe(&parsed, EventSource::Webhook);
            for o in &observations {
                let _ = (cloudci_webhook::frame(&o.event), o.event.status(), o.is_weak());
            }
            Ok(observations)
        }
        // Refused with a 400 before anything is stored.
        Err(WebhookParseError::NotJson(_)) => return,
        Err(e) => Err(e.to_string().into()),
    };
    let store = Store::in_memory().expect("an in-memory store opens");
    let delivery = NewDelivery {
        dedup_key: "key:fuzz".into(),
        event: event.to_owned(),
        headers: "{}".into(),
        body: body.to_vec(),
    };
    // A store error here would answer 503 to every copy GitLab retries: a finding, like a panic.
    store.ingest(vec![Incoming { delivery, observations }]).expect("a parsed delivery is stored");
}

/// The signing token of the `verify` target (the Standard Webhooks reference key).
const SIGNING: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The `verify` target's clock.
const NOW: i64 = 1_614_265_330;

/// Signature check: fields `X-Gitlab-Token`, `webhook-id`, `webhook-timestamp`,
/// `webhook-signature` (each empty: absent), then the body. Besides not panicking: what the fuzzer
/// made up is never accepted unless it carries the right token and a signature that `sign`
/// computes, and a delivery signed with the real key is accepted whatever the id, timestamp (within
/// tolerance) and body.
pub fn verify(data: &[u8]) {
    let f = fields(data, 5);
    let part = |i: usize| f.get(i).and_then(|b| std::str::from_utf8(b).ok()).filter(|s| !s.is_empty());
    let body = f.get(4).copied().unwrap_or_default();
    let secrets = HookSecrets::new(SecretString::from("p4th"), vec![SecretString::from("t0ken")])
        .with_signing_token(&SecretString::from(SIGNING))
        .expect("the reference key is a signing token");
    let headers = DeliveryHeaders { token: part(0), webhook_id: part(1), timestamp: part(2), signature: part(3) };
    let verdict = secrets.check(&headers, body, NOW);
    if verdict.is_ok() {
        assert_eq!(headers.token.map(str::trim), Some("t0ken"), "accepted without the token");
        let (id, ts) = (headers.webhook_id.unwrap_or(""), headers.timestamp.unwrap_or("").trim());
        let expected = sign(SIGNING, id, ts, body).expect("the reference key signs");
        let given = headers.signature.unwrap_or("");
        assert!(given.split(' ').any(|s| s == expected), "accepted a signature that is not the right one: {given:?}");
    }
    let _ = secrets.check_path(part(0).unwrap_or(""));
    // The same headers, signed for real, must pass.
    if let (Some(id), Some(ts)) = (headers.webhook_id, headers.timestamp)
        && ts.trim().parse::<i64>().is_ok_and(|t| (NOW - t).abs() <= cloudci_webhook::SIGNATURE_TOLERANCE_SECS)
    {
        let good = sign(SIGNING, id, ts.trim(), body).expect("the reference key signs");
        let signed = DeliveryHeaders { token: Some("t0ken"), signature: Some(&good), ..headers };
        assert_eq!(secrets.check(&signed, body, NOW), Ok(()), "a correctly signed delivery was refused");
    }
    // A made-up signing token is refused or accepted, never a panic.
    if let Some(token) = part(0) {
        let _ = HookSecrets::new(SecretString::from("p"), vec![]).with_signing_token(&SecretString::from(token));
        let _ = sign(token, part(1).unwrap_or(""), part(2).unwrap_or(""), body);
    }
}

struct Local {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    token: String,
}

fn local() -> &'static Local {
    static LOCAL: OnceLock<Local> = OnceLock::new();
    LOCAL.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let store = Arc::new(Store::in_memory().expect("an in-memory store opens"));
        let keys = TokenKeys::new(&SecretString::from("fuzz-secret-fuzz-secret-fuzz-secret!"));
        let token = keys.issue("fuzz", vec!["group/app".into()], Duration::from_secs(3600)).expose().to_owned();
        let router = cloudci::api::sse::router(cloudci::api::sse::EventsState { hub: Hub::new(store), keys });
        Local { runtime, router, token }
    })
}

/// `GET /v1/events` through its router: fields query string, `Last-Event-ID` (empty: absent),
/// `Authorization` (empty: a valid token for project `group/app`). Bad input is a 4xx; a 5xx or a
/// panic is a finding. A 200 is a stream that is dropped at once.
pub fn sse(data: &[u8]) {
    let f = fields(data, 3);
    let local = local();
    let Ok(uri) = axum::http::Uri::try_from(format!("/v1/events?{}", text(f[0]))) else {
        return; // hyper refuses such a request line before any handler runs
    };
    let mut request = Request::get(uri);
    if let Some(id) = f.get(1).filter(|v| !v.is_empty()) {
        request = request.header("last-event-id", *id);
    }
    match f.get(2).filter(|v| !v.is_empty()) {
        Some(auth) => request = request.header(header::AUTHORIZATION, *auth),
        None => request = request.header(header::AUTHORIZATION, format!("Bearer {}", local.token)),
    }
    let Ok(request) = request.body(Body::empty()) else {
        return; // not a header value hyper would accept
    };
    let status = local.runtime.block_on(async {
        let response = local.router.clone().oneshot(request).await.expect("axum routers are infallible");
        response.status()
    });
    assert!(
        status == StatusCode::OK || status.is_client_error(),
        "GET /v1/events answered {status} to {:?}",
        String::from_utf8_lossy(data)
    );
}

/// `cloudci.toml` (lossy UTF-8, as a file read would refuse the rest): parse and check, then what
/// the daemon derives from it; also the `--ttl` duration parser.
pub fn config(data: &[u8]) {
    let text = text(data);
    if let Ok(config) = cloudci::config::parse(&text, Path::new("/fuzz/cloudci.toml")) {
        let _ = (config.state_dir(), config.gitlab_url(), config.gitlab.max_concurrent_pipelines());
        for target in config.targets.values() {
            let _ = target.selector();
        }
    }
    let _ = cloudci::api::auth::parse_duration(&text);
}

/// gitlab-sim's `.gitlab-ci.yml` reader (lossy UTF-8): compose, check and populate a pipeline;
/// also its duration parser (`timeout:`, `start_in:`, `expire_in:`).
pub fn ci(data: &[u8]) {
    let text = text(data);
    let _ = gitlab_sim::ci::parse(&text);
    let _ = gitlab_sim::ci::parse_duration(&text);
}
