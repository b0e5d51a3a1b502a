//! What observations are made of, for the two hooks that come by the thousand: Pipeline and Job
//! Hooks. The receiver reads these facts straight from a delivery's bytes, and
//! [`crate::observe`] builds the same facts from GitLab's full types, so both turn into
//! observations through one function each.
//!
//! Reading the full types costs ~46 µs for GitLab's 7.4 KB sample pipeline delivery: every
//! `#[serde(flatten)]` level buffers its fields, and everything cloudci does not model becomes a
//! `serde_json::Value` (BENCHMARKS.md, issue 10's sixth round). These structs name only the fields
//! observations use and skip the rest unread. They check only those fields, so a delivery whose
//! other fields GitLab got wrong is still observed; one these cannot read (a field they use is
//! missing or of another type, a key repeated) takes the full types' path, for the same result
//! or its precise error.

use std::borrow::Cow;

use cloudci_gitlab::types::Status;
use cloudci_gitlab::webhook::{JobEvent, PipelineEvent};
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::events::{BuildEvent, EventKind, EventSource, Observation};

/// `X-Gitlab-Event` of a Pipeline Hook.
pub(crate) const PIPELINE_HOOK: &str = "Pipeline Hook";
/// `X-Gitlab-Event` of a Job Hook.
pub(crate) const JOB_HOOK: &str = "Job Hook";

/// A Pipeline Hook's facts.
#[derive(Debug, Deserialize)]
pub(crate) struct PipelineHook<'a> {
    #[serde(borrow)]
    object_kind: Cow<'a, str>,
    #[serde(borrow)]
    object_attributes: PipelineAttributes<'a>,
    #[serde(borrow)]
    project: Project<'a>,
    #[serde(default, borrow)]
    builds: Vec<Build<'a>>,
}

#[derive(Debug, Deserialize)]
struct PipelineAttributes<'a> {
    id: u64,
    #[serde(rename = "ref", borrow)]
    git_ref: Cow<'a, str>,
    #[serde(borrow)]
    sha: Cow<'a, str>,
    status: Status,
    #[serde(default, borrow)]
    url: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct Project<'a> {
    id: u64,
    #[serde(borrow)]
    path_with_namespace: Cow<'a, str>,
    #[serde(borrow)]
    web_url: Cow<'a, str>,
}

/// One of a pipeline's jobs.
#[derive(Debug, Deserialize)]
struct Build<'a> {
    id: u64,
    #[serde(borrow)]
    stage: Cow<'a, str>,
    #[serde(borrow)]
    name: Cow<'a, str>,
    status: Status,
    #[serde(default, borrow)]
    failure_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    allow_failure: bool,
    /// Only whether there is one (`null` when the job has not started).
    #[serde(default)]
    started_at: Option<IgnoredAny>,
    #[serde(default)]
    artifacts_file: Option<ArtifactsFile>,
}

/// `{"filename": null, "size": null}` when the job has none.
#[derive(Debug, Deserialize)]
struct ArtifactsFile {
    #[serde(default)]
    filename: Option<IgnoredAny>,
}

/// A Job Hook's facts.
#[derive(Debug, Deserialize)]
pub(crate) struct JobHook<'a> {
    #[serde(borrow)]
    object_kind: Cow<'a, str>,
    #[serde(rename = "ref", borrow)]
    git_ref: Cow<'a, str>,
    #[serde(borrow)]
    sha: Cow<'a, str>,
    build_id: u64,
    #[serde(borrow)]
    build_name: Cow<'a, str>,
    #[serde(borrow)]
    build_stage: Cow<'a, str>,
    build_status: Status,
    #[serde(default, borrow)]
    build_failure_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    build_allow_failure: bool,
    #[serde(default)]
    build_started_at: Option<IgnoredAny>,
    pipeline_id: u64,
    project_id: u64,
    /// The pipeline's status (GitLab's `commit` describes the pipeline).
    #[serde(default)]
    commit: Option<JobCommit>,
    #[serde(borrow)]
    project: Project<'a>,
}

#[derive(Debug, Deserialize)]
struct JobCommit {
    status: Status,
}

/// A delivery's observations read from its bytes, when it is a Pipeline or Job Hook these facts
/// can read; `None` for anything else (then the full types read it).
pub(crate) fn observe_bytes(event_header: &str, body: &[u8], source: EventSource) -> Option<Vec<Observation>> {
    let header = event_header.trim();
    if header.eq_ignore_ascii_case(PIPELINE_HOOK) {
        let hook: PipelineHook<'_> = serde_json::from_slice(body).ok()?;
        (hook.object_kind == "pipeline").then(|| pipeline_observations(&hook, source))
    } else if header.eq_ignore_ascii_case(JOB_HOOK) {
        let hook: JobHook<'_> = serde_json::from_slice(body).ok()?;
        (hook.object_kind == "build").then(|| job_observations(&hook, source))
    } else {
        None
    }
}

impl<'a> From<&'a PipelineEvent> for PipelineHook<'a> {
    fn from(p: &'a PipelineEvent) -> Self {
        let a = &p.object_attributes;
        Self {
            object_kind: Cow::Borrowed(&p.object_kind),
            object_attributes: PipelineAttributes {
                id: a.id.0,
                git_ref: Cow::Borrowed(&a.git_ref),
                sha: Cow::Borrowed(&a.sha),
                status: a.status.clone(),
                url: a.url.as_deref().map(Cow::Borrowed),
            },
            project: Project {
                id: p.project.id.0,
                path_with_namespace: Cow::Borrowed(&p.project.path_with_namespace),
                web_url: Cow::Borrowed(&p.project.web_url),
            },
            builds: p
                .builds
                .iter()
                .map(|b| Build {
                    id: b.id.0,
                    stage: Cow::Borrowed(&b.stage),
                    name: Cow::Borrowed(&b.name),
                    status: b.status.clone(),
                    failure_reason: b.failure_reason.as_deref().map(Cow::Borrowed),
                    allow_failure: b.allow_failure,
                    started_at: b.started_at.as_ref().map(|_| IgnoredAny),
                    artifacts_file: b.extra.get("artifacts_file").map(|a| ArtifactsFile {
                        filename: a.get("filename").filter(|f| !f.is_null()).map(|_| IgnoredAny),
                    }),
                })
                .collect(),
        }
    }
}

impl<'a> From<&'a JobEvent> for JobHook<'a> {
    fn from(j: &'a JobEvent) -> Self {
        Self {
            object_kind: Cow::Borrowed(&j.object_kind),
            git_ref: Cow::Borrowed(&j.git_ref),
            sha: Cow::Borrowed(&j.sha),
            build_id: j.build_id.0,
            build_name: Cow::Borrowed(&j.build_name),
            build_stage: Cow::Borrowed(&j.build_stage),
            build_status: j.build_status.clone(),
            build_failure_reason: j.build_failure_reason.as_deref().map(Cow::Borrowed),
            build_allow_failure: j.build_allow_failure,
            build_started_at: j.build_started_at.as_ref().map(|_| IgnoredAny),
            pipeline_id: j.pipeline_id.0,
            project_id: j.project_id.0,
            commit: j.commit.as_ref().map(|c| JobCommit { status: c.status.clone() }),
            project: Project {
                id: j.project.id.0,
                path_with_namespace: Cow::Borrowed(&j.project.path_with_namespace),
                web_url: Cow::Borrowed(&j.project.web_url),
            },
        }
    }
}

/// A pipeline event yields the pipeline and each of its jobs (so a lost job delivery is made up
/// for).
pub(crate) fn pipeline_observations(p: &PipelineHook<'_>, source: EventSource) -> Vec<Observation> {
    let a = &p.object_attributes;
    let max_job_id = p.builds.iter().map(|b| b.id).max().unwrap_or(0);
    let base = |kind| {
        let mut e = BuildEvent::new(kind, p.project.id, PIPELINE_HOOK, source);
        e.project = Some(p.project.path_with_namespace.clone().into_owned());
        e.git_ref = Some(a.git_ref.clone().into_owned());
        e.sha = Some(a.sha.clone().into_owned());
        e.pipeline_id = Some(a.id);
        e
    };
    let mut out = Vec::with_capacity(1 + p.builds.len());
    let mut pe = base(EventKind::Pipeline);
    pe.status = Some(a.status.to_string());
    pe.url = a.url.as_deref().map(str::to_owned);
    out.push(Observation { event: pe, max_job_id });
    // Jobs in creation order, so that their events come out in a natural order.
    let mut builds: Vec<_> = p.builds.iter().collect();
    builds.sort_by_key(|b| b.id);
    for b in builds {
        let mut je = base(EventKind::Job);
        je.job_id = Some(b.id);
        je.job_name = Some(b.name.clone().into_owned());
        je.stage = Some(b.stage.clone().into_owned());
        je.status = Some(b.status.to_string());
        je.failure_reason = b.failure_reason.as_deref().map(str::to_owned);
        je.allow_failure = Some(b.allow_failure);
        je.started = Some(b.started_at.is_some());
        je.artifacts = Some(b.artifacts_file.as_ref().is_some_and(|a| a.filename.is_some()));
        out.push(Observation { event: je, max_job_id: b.id });
    }
    out
}

/// A job event yields the job and its pipeline (`commit.status` is the pipeline's status).
pub(crate) fn job_observations(j: &JobHook<'_>, source: EventSource) -> Vec<Observation> {
    let base = |kind| {
        let mut e = BuildEvent::new(kind, j.project_id, JOB_HOOK, source);
        e.project = Some(j.project.path_with_namespace.clone().into_owned());
        e.git_ref = Some(j.git_ref.clone().into_owned());
        e.sha = Some(j.sha.clone().into_owned());
        e.pipeline_id = Some(j.pipeline_id);
        e
    };
    let mut out = Vec::with_capacity(2);
    let mut je = base(EventKind::Job);
    je.job_id = Some(j.build_id);
    je.job_name = Some(j.build_name.clone().into_owned());
    je.stage = Some(j.build_stage.clone().into_owned());
    je.status = Some(j.build_status.to_string());
    if j.build_status == Status::Failed {
        je.failure_reason = j.build_failure_reason.as_deref().map(str::to_owned);
    }
    je.url = Some(format!("{}/-/jobs/{}", j.project.web_url, j.build_id));
    je.allow_failure = Some(j.build_allow_failure);
    je.started = Some(j.build_started_at.is_some());
    out.push(Observation { event: je, max_job_id: j.build_id });
    if let Some(commit) = &j.commit {
        let mut pe = base(EventKind::Pipeline);
        pe.status = Some(commit.status.to_string());
        pe.url = Some(format!("{}/-/pipelines/{}", j.project.web_url, j.pipeline_id));
        out.push(Observation { event: pe, max_job_id: j.build_id });
    }
    out
}

#[cfg(test)]
mod tests {
    use cloudci_gitlab::webhook::WebhookEvent;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    const PIPELINE: &[u8] = include_bytes!("../../gitlab/tests/fixtures/webhook-pipeline-event.json");
    const JOB: &[u8] = include_bytes!("../../gitlab/tests/fixtures/webhook-job-event.json");

    /// The observations without their `received_at` (the clock's, different between two calls).
    fn comparable(mut o: Vec<Observation>) -> Vec<Observation> {
        for x in &mut o {
            x.event.received_at.clear();
        }
        o
    }

    /// Whatever the full types read, the facts read the same, from the bytes.
    fn same_as_full_types(header: &str, body: &[u8]) -> Result<(), TestCaseError> {
        let full = WebhookEvent::parse(Some(header), body);
        let fast = observe_bytes(header, body, EventSource::Webhook);
        match (full, fast) {
            (Ok(event), Some(fast)) => {
                prop_assert_eq!(comparable(fast), comparable(crate::observe(&event, EventSource::Webhook)));
            }
            // Not read here: the full types' path reads it, for their result or their error.
            (_, None) => {}
            // Read here though the full types refuse it: only for a field observations do not use.
            (Err(e), Some(_)) => {
                prop_assert!(
                    !e.to_string().contains("object_kind") && !e.to_string().contains("X-Gitlab-Event"),
                    "{e}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn gitlabs_samples_are_read_from_their_bytes_as_the_full_types_read_them() {
        for (header, body) in [(PIPELINE_HOOK, PIPELINE), (JOB_HOOK, JOB), ("pipeline hook", PIPELINE)] {
            assert!(observe_bytes(header, body, EventSource::Webhook).is_some(), "{header}");
            same_as_full_types(header, body).unwrap();
        }
        // Another kind, a header that disagrees with object_kind, no header: the full types' path.
        assert!(observe_bytes("Push Hook", PIPELINE, EventSource::Webhook).is_none());
        assert!(observe_bytes(JOB_HOOK, PIPELINE, EventSource::Webhook).is_none());
        assert!(observe_bytes("", PIPELINE, EventSource::Webhook).is_none());
    }

    /// A value for a field: what GitLab sends there, or something it would not.
    fn field_value() -> impl Strategy<Value = Option<Value>> {
        prop_oneof![
            3 => Just(None),
            1 => Just(Some(Value::Null)),
            1 => any::<u32>().prop_map(|n| Some(json!(n))),
            1 => Just(Some(json!("2016-08-12 15:26:12 UTC"))),
            1 => Just(Some(json!("not a time"))),
            1 => Just(Some(json!("failed"))),
            1 => Just(Some(json!(true))),
            1 => Just(Some(json!({"filename": "a.zip", "size": 3}))),
            1 => Just(Some(json!({"filename": null}))),
            1 => Just(Some(json!([]))),
        ]
    }

    const PIPELINE_FIELDS: [&str; 16] = [
        "id",
        "stage",
        "name",
        "status",
        "started_at",
        "finished_at",
        "failure_reason",
        "allow_failure",
        "artifacts_file",
        "manual",
        "when",
        "duration",
        "user",
        "runner",
        "environment",
        "created_at",
    ];
    const JOB_FIELDS: [&str; 14] = [
        "build_id",
        "build_name",
        "build_stage",
        "build_status",
        "build_started_at",
        "build_failure_reason",
        "build_allow_failure",
        "pipeline_id",
        "project_id",
        "commit",
        "ref",
        "sha",
        "project",
        "object_kind",
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn a_pipeline_hook_with_any_field_changed_is_read_as_the_full_types_read_it(
            build in 0usize..5,
            changes in prop::collection::vec((0..PIPELINE_FIELDS.len(), field_value()), 1..5),
            attribute in prop::sample::select(vec!["id", "ref", "sha", "status", "url", "name"]),
            attribute_value in field_value(),
        ) {
            let mut body: Value = serde_json::from_slice(PIPELINE).unwrap();
            for (field, value) in changes {
                let b = body["builds"][build].as_object_mut().unwrap();
                match value {
                    Some(v) => { b.insert(PIPELINE_FIELDS[field].into(), v); }
                    None => { b.remove(PIPELINE_FIELDS[field]); }
                }
            }
            let a = body["object_attributes"].as_object_mut().unwrap();
            match attribute_value {
                Some(v) => { a.insert(attribute.into(), v); }
                None => { a.remove(attribute); }
            }
            same_as_full_types(PIPELINE_HOOK, &serde_json::to_vec(&body).unwrap())?;
        }

        #[test]
        fn a_job_hook_with_any_field_changed_is_read_as_the_full_types_read_it(
            changes in prop::collection::vec((0..JOB_FIELDS.len(), field_value()), 1..4),
            commit_status in prop::option::of(prop::sample::select(vec!["running", "success", "teleporting"])),
        ) {
            let mut body: Value = serde_json::from_slice(JOB).unwrap();
            if let Some(s) = commit_status {
                body["commit"]["status"] = json!(s);
            }
            let j = body.as_object_mut().unwrap();
            for (field, value) in changes {
                match value {
                    Some(v) => { j.insert(JOB_FIELDS[field].into(), v); }
                    None => { j.remove(JOB_FIELDS[field]); }
                }
            }
            same_as_full_types(JOB_HOOK, &serde_json::to_vec(&body).unwrap())?;
        }
    }
}
