//! Every API object the sim returns carries the keys of GitLab's sample for it.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn sample(name: &str) -> Value {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../gitlab/tests/fixtures");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap();
    if let Value::Array(items) = v { items.into_iter().next().unwrap() } else { v }
}

/// Keys of `want` (recursively into objects) missing from `have`.
fn missing(want: &Value, have: &Value, path: &str, out: &mut Vec<String>) {
    let (Some(w), Some(h)) = (want.as_object(), have.as_object()) else { return };
    for (k, wv) in w {
        match h.get(k) {
            None => out.push(format!("{path}{k}")),
            Some(hv) if wv.is_object() && hv.is_object() => missing(wv, hv, &format!("{path}{k}."), out),
            _ => {}
        }
    }
}

fn assert_shape(sample_name: &str, have: &Value, except: &[&str]) {
    let mut out = Vec::new();
    missing(&sample(sample_name), have, "", &mut out);
    out.retain(|k| !except.contains(&k.as_str()));
    assert!(out.is_empty(), "{sample_name}: the sim's object lacks {out:?}");
}

async fn get(url: &str) -> Value {
    reqwest::Client::new().get(url).header("PRIVATE-TOKEN", TOKEN).send().await.unwrap().json().await.unwrap()
}

async fn send(method: reqwest::Method, url: &str, body: Value) -> Value {
    let resp =
        reqwest::Client::new().request(method, url).header("PRIVATE-TOKEN", TOKEN).json(&body).send().await.unwrap();
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_objects_carry_the_samples_keys() {
    cloudci_gitlab::install_tls_provider();
    let dir = tempfile::tempdir().unwrap();
    let repo = firmware_repo(dir.path());
    let sim = start_sim(&repo, "").await;
    let api = format!("{}/api/v4", sim.url());
    let p = format!("{api}/projects/1");

    assert_shape("api-version.json", &get(&format!("{api}/version")).await, &["kas.externalUrl"]);
    assert_shape("api-user.json", &get(&format!("{api}/user")).await, &[]);
    // The sample shows group and licence details the sim has no notion of; they are present with
    // GitLab's null/neutral values except these nested ones.
    assert_shape("api-project.json", &get(&p).await, &["permissions.group_access", "license.key"]);
    assert_shape("api-branch.json", &get(&format!("{p}/repository/branches/main")).await, &[]);

    let created = send(
        reqwest::Method::POST,
        &format!("{p}/pipeline"),
        json!({"ref": "main", "variables": [{"key": "BOARD", "value": "x"}]}),
    )
    .await;
    assert_shape("api-pipeline-create-response.json", &created, &[]);
    let id = created["id"].as_u64().unwrap();
    let done = eventually(Duration::from_secs(60), || async {
        let v = get(&format!("{p}/pipelines/{id}")).await;
        (v["status"] == "success").then_some(v)
    })
    .await;
    assert_shape("api-pipeline.json", &done, &[]);
    assert_shape("api-pipelines-list.json", &get(&format!("{p}/pipelines")).await[0], &[]);
    assert_shape("api-pipeline-variables.json", &get(&format!("{p}/pipelines/{id}/variables")).await[0], &[]);
    let jobs = get(&format!("{p}/pipelines/{id}/jobs")).await;
    let build = jobs.as_array().unwrap().iter().find(|j| j["name"] == "build").unwrap().clone();
    // failure_reason is only on failed jobs; the sample's is a failed one.
    assert_shape("api-jobs-list.json", &build, &["failure_reason", "runner_manager.id"]);
    assert_shape("api-job.json", &get(&format!("{p}/jobs/{}", build["id"])).await, &[]);
    assert_eq!(build["artifacts_file"]["filename"], "artifacts.zip");

    let mr = send(
        reqwest::Method::POST,
        &format!("{p}/merge_requests"),
        json!({"source_branch": "feature", "target_branch": "main", "title": "t"}),
    )
    .await;
    assert_shape(
        "api-merge-request.json",
        &mr,
        &["milestone", "assignee", "merged_by", "merge_user", "closed_by", "pipeline"],
    );
    let listed = get(&format!("{p}/merge_requests")).await;
    assert_shape(
        "api-merge-requests-list.json",
        &listed[0],
        &["milestone", "assignee", "merged_by", "merge_user", "closed_by", "pipeline"],
    );

    let hook = send(
        reqwest::Method::POST,
        &format!("{p}/hooks"),
        json!({"url": "http://127.0.0.1:9/x", "pipeline_events": true}),
    )
    .await;
    assert_shape("api-project-hook.json", &hook, &["custom_headers"]);
    let keys: BTreeSet<&String> = hook.as_object().unwrap().keys().collect();
    assert!(!keys.iter().any(|k| k.as_str() == "token"), "the token must never be returned");
}
