//! Every verbatim GitLab sample in `tests/fixtures` (from GitLab's docs; see its `SOURCES.md`)
//! decodes into its type and
//! serializes back to the same JSON (a `null` and an absent key count as the same; numbers compare
//! by value, so `17` and `17.0` are equal).

use std::path::PathBuf;

use cloudci_gitlab::types::{
    Branch, HookDelivery, Job, MergeRequest, Pipeline, PipelineBasic, PipelineVariable, Project, ProjectHook, User,
    Version,
};
use cloudci_gitlab::webhook::WebhookEvent;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

fn samples_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    assert!(dir.is_dir(), "the shared samples are missing: expected {}", dir.display());
    dir
}

fn read(name: &str) -> Value {
    let path = samples_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Drops null-valued keys and turns every number into an f64, recursively.
fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            Value::Object(map.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), normalize(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(normalize).collect()),
        Value::Number(n) => serde_json::json!(n.as_f64().unwrap()),
        other => other.clone(),
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(name: &str) {
    let original = read(name);
    let typed: T = serde_path_to_error::deserialize(original.clone())
        .unwrap_or_else(|e| panic!("{name} does not decode as {}: {e}", std::any::type_name::<T>()));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(normalize(&back), normalize(&original), "{name} changed in a round trip");
}

fn round_trip_list<T: DeserializeOwned + Serialize>(name: &str) {
    round_trip::<Vec<T>>(name);
}

#[test]
fn api_samples_round_trip() {
    round_trip::<Pipeline>("api-pipeline.json");
    round_trip::<Pipeline>("api-pipeline-create-response.json");
    round_trip::<Pipeline>("api-pipeline-cancel-response.json");
    round_trip::<Pipeline>("api-pipeline-trigger-response.json");
    round_trip::<Pipeline>("api-merge-request-pipeline-create-response.json");
    round_trip_list::<PipelineBasic>("api-pipelines-list.json");
    round_trip_list::<PipelineVariable>("api-pipeline-variables.json");
    round_trip::<Job>("api-job.json");
    round_trip::<Job>("api-job-cancel-response.json");
    round_trip::<Job>("api-job-play-response.json");
    round_trip::<Job>("api-job-retry-response.json");
    round_trip_list::<Job>("api-jobs-list.json");
    round_trip::<MergeRequest>("api-merge-request.json");
    round_trip::<MergeRequest>("api-merge-request-merge-response.json");
    round_trip_list::<MergeRequest>("api-merge-requests-list.json");
    round_trip::<ProjectHook>("api-project-hook.json");
    round_trip_list::<HookDelivery>("api-hook-events-list.json");
    round_trip::<Project>("api-project.json");
    round_trip::<User>("api-user.json");
    round_trip::<Version>("api-version.json");
    round_trip::<Branch>("api-branch.json");
}

#[test]
fn webhook_samples_parse_into_their_kind_and_round_trip() {
    for (file, header, kind) in [
        ("webhook-pipeline-event.json", "Pipeline Hook", "Pipeline Hook"),
        ("webhook-job-event.json", "Job Hook", "Job Hook"),
        ("webhook-merge-request-event.json", "Merge Request Hook", "Merge Request Hook"),
        ("webhook-push-event.json", "Push Hook", "Push Hook"),
        ("webhook-tag-push-event.json", "Tag Push Hook", "Tag Push Hook"),
        ("webhook-deployment-event.json", "Deployment Hook", "Deployment Hook"),
    ] {
        let raw = std::fs::read(samples_dir().join(file)).unwrap();
        let event = WebhookEvent::parse(Some(header), &raw).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(event.event_name(), kind, "{file}");
        assert!(!matches!(event, WebhookEvent::Other { .. }), "{file} fell through to Other");
        let original: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(normalize(&event.to_value()), normalize(&original), "{file} changed in a round trip");
        // Without the header, object_kind alone decides.
        let again = WebhookEvent::parse(None, &raw).unwrap();
        assert_eq!(again.event_name(), kind);
    }
}

#[test]
fn webhook_fields_are_read_correctly() {
    let raw = std::fs::read(samples_dir().join("webhook-job-event.json")).unwrap();
    let WebhookEvent::Job(job) = WebhookEvent::parse(Some("Job Hook"), &raw).unwrap() else { panic!("not a job") };
    assert_eq!(job.build_id.0, 1977);
    assert_eq!(job.pipeline_id.0, 2366);
    // The trap: commit.id is the pipeline id.
    assert_eq!(job.commit.as_ref().unwrap().id, job.pipeline_id);
    assert_eq!(job.build_status, cloudci_gitlab::types::Status::Created);
    assert_eq!(job.retries_count, Some(2));

    let raw = std::fs::read(samples_dir().join("webhook-pipeline-event.json")).unwrap();
    let WebhookEvent::Pipeline(p) = WebhookEvent::parse(Some("Pipeline Hook"), &raw).unwrap() else { panic!() };
    assert_eq!(p.object_attributes.status, cloudci_gitlab::types::Status::Success);
    assert_eq!(p.object_attributes.created_at.as_ref().unwrap().as_str(), "2016-08-12 15:23:28 UTC");
    assert_eq!(p.builds.len(), 5);
    assert_eq!(p.project.path_with_namespace, "gitlab-org/gitlab-test");
}

#[test]
fn every_sample_file_is_covered() {
    let covered = [
        "api-pipeline.json",
        "api-pipeline-create-response.json",
        "api-pipeline-cancel-response.json",
        "api-pipeline-trigger-response.json",
        "api-merge-request-pipeline-create-response.json",
        "api-pipelines-list.json",
        "api-pipeline-variables.json",
        "api-job.json",
        "api-job-cancel-response.json",
        "api-job-play-response.json",
        "api-job-retry-response.json",
        "api-jobs-list.json",
        "api-merge-request.json",
        "api-merge-request-merge-response.json",
        "api-merge-requests-list.json",
        "api-project-hook.json",
        "api-hook-events-list.json",
        "api-project.json",
        "api-user.json",
        "api-version.json",
        "api-branch.json",
        "webhook-pipeline-event.json",
        "webhook-job-event.json",
        "webhook-merge-request-event.json",
        "webhook-push-event.json",
        "webhook-tag-push-event.json",
        "webhook-deployment-event.json",
        // Error bodies and tiny acknowledgements, covered by the error tests in http.rs.
        "api-error-400-validation.json",
        "api-error-401.json",
        "api-error-403-insufficient-scope.json",
        "api-project-hook-test-response.json",
        "api-hook-event-resend-response.json",
    ];
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(samples_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") && !covered.contains(&name.as_str()) {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "samples with no test: {missing:?}");
}

#[test]
fn webhook_errors_are_clear() {
    use cloudci_gitlab::webhook::WebhookParseError;
    assert!(matches!(WebhookEvent::parse(Some("Job Hook"), b"{nope"), Err(WebhookParseError::NotJson(_))));
    assert!(matches!(WebhookEvent::parse(Some("Job Hook"), b"[1]"), Err(WebhookParseError::NotObject)));
    let mismatch = WebhookEvent::parse(Some("Job Hook"), br#"{"object_kind":"pipeline"}"#).unwrap_err();
    assert!(matches!(mismatch, WebhookParseError::KindMismatch { .. }), "{mismatch}");
    let err =
        WebhookEvent::parse(Some("Pipeline Hook"), br#"{"object_kind":"pipeline","object_attributes":{"id":"x"}}"#)
            .unwrap_err();
    assert!(err.to_string().contains("object_attributes.id"), "{err}");
    // Unknown events are kept, not rejected.
    let other = WebhookEvent::parse(Some("Emoji Hook"), br#"{"object_kind":"emoji","x":1}"#).unwrap();
    assert!(matches!(other, WebhookEvent::Other { ref object_kind, .. } if object_kind.as_deref() == Some("emoji")));
}
