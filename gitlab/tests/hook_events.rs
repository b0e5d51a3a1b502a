//! The delivery-log types decode GitLab's own samples (`api-hook-events-list.json`,
//! `api-hook-event-resend-response.json`) and write them back unchanged.

use std::path::PathBuf;

use cloudci_gitlab::types::{HookEvent, HookEventResend, HookEventStatus, HookResponseStatus};
use serde_json::Value;

fn sample(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

#[test]
fn the_events_list_sample_decodes_and_round_trips() {
    let raw = sample("api-hook-events-list.json");
    let events: Vec<HookEvent> = serde_path_to_error::deserialize(raw.clone()).unwrap();
    assert_eq!(events.len(), 2);
    let first = &events[0];
    assert_eq!(first.id, 1);
    assert_eq!(first.url, "https://example.net/");
    assert_eq!(first.trigger, "push_hooks");
    // GitLab sends the status as text; it reads as a code all the same.
    assert_eq!(first.response_status, HookResponseStatus::Text("200".into()));
    assert_eq!(first.response_status.code(), Some(200));
    assert!(first.response_status.delivered());
    assert!(!first.response_status.is_internal_error());
    assert_eq!(first.response_body.as_deref(), Some("{\"success\":true}"));
    assert!((first.execution_duration.unwrap() - 1.090_648).abs() < 1e-6);
    assert_eq!(first.idempotency_key(), Some("3a427872-00df-429c-9bc9-a9475de2efe4"));
    assert_eq!(first.request_header("x-gitlab-token"), Some("[REDACTED]"));
    assert_eq!(first.event_name(), Some("Push Hook"));
    assert_eq!(first.request_data["object_kind"], "push");
    assert!(first.extra.contains_key("response_headers"), "kept in extra");
    assert_ne!(events[0].idempotency_key(), events[1].idempotency_key());
    // Written back, it is the sample.
    assert_eq!(serde_json::to_value(&events).unwrap(), raw);
}

#[test]
fn the_resend_sample_decodes() {
    let raw = sample("api-hook-event-resend-response.json");
    let resend: HookEventResend = serde_json::from_value(raw.clone()).unwrap();
    assert_eq!(resend.response_status, HookResponseStatus::Number(200));
    assert_eq!(resend.response_status.code(), Some(200));
    assert_eq!(serde_json::to_value(&resend).unwrap(), raw);
}

#[test]
fn response_status_forms() {
    let internal: HookResponseStatus = serde_json::from_str("\"internal error\"").unwrap();
    assert!(internal.is_internal_error());
    assert_eq!(internal.code(), None);
    assert!(!internal.delivered());
    let moved: HookResponseStatus = serde_json::from_str("\"302\"").unwrap();
    assert!(moved.delivered(), "GitLab counts 3xx as delivered");
    let failed: HookResponseStatus = serde_json::from_str("500").unwrap();
    assert_eq!(failed, HookResponseStatus::Number(500));
    assert!(!failed.delivered());
    assert_eq!(failed.to_string(), "500");
    assert_eq!(HookEventStatus::ServerFailure.as_query(), "server_failure");
    assert_eq!(HookEventStatus::ClientFailure.as_query(), "client_failure");
    assert_eq!(HookEventStatus::Successful.as_query(), "successful");
    assert_eq!(HookEventStatus::Code(404).as_query(), "404");
}
