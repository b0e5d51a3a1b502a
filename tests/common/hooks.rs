//! Signed deliveries to a real `cloudci serve`'s public listener, as GitLab sends them, and the
//! daemon's health as its local API reports it.

use std::path::Path;

use serde_json::Value;

use super::cloudci;

const PIPELINE_SAMPLE: &str = include_str!("../../gitlab/tests/fixtures/webhook-pipeline-event.json");
const NO_GITLAB: &str = "http://127.0.0.1:9";

/// The hook's URL and token (`cloudci hooks show --json`).
pub fn hook(config: &Path) -> (String, String) {
    let out = cloudci(config, NO_GITLAB, "x", &["hooks", "show", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["url"].as_str().unwrap().to_owned(), v["token"].as_str().unwrap().to_owned())
}

/// A Pipeline Hook for pipeline `id`.
pub fn delivery(id: u64) -> Vec<u8> {
    let mut v: Value = serde_json::from_str(PIPELINE_SAMPLE).unwrap();
    v["object_attributes"]["id"] = id.into();
    serde_json::to_vec(&v).unwrap()
}

/// The `Idempotency-Key` of delivery `id` (what GitLab sends again with each retry).
pub fn key(id: u64) -> String {
    format!("delivery-{id}")
}

/// What one delivery got: its status and `Retry-After`, or the transport error (no answer).
pub async fn send(c: &reqwest::Client, url: &str, token: &str, id: u64) -> Result<(u16, Option<String>), String> {
    let resp = c
        .post(url)
        .header("Content-Type", "application/json")
        .header("X-Gitlab-Event", "Pipeline Hook")
        .header("X-Gitlab-Token", token)
        .header("Idempotency-Key", key(id))
        .body(delivery(id))
        .send()
        .await
        .map_err(|e| format!("delivery {id}: no answer: {e:?}"))?;
    let retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    Ok((resp.status().as_u16(), retry_after))
}

/// `GET /v1/health` through `c` (200 always).
pub async fn health(c: &reqwest::Client, api_port: u16, token: &str) -> Value {
    let resp = c.get(format!("http://127.0.0.1:{api_port}/v1/health")).bearer_auth(token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// Whether a health report lists `kind` (`out_of_files`, `database_busy`, ...).
pub fn has_problem(h: &Value, kind: &str) -> bool {
    h["problems"].as_array().is_some_and(|ps| ps.iter().any(|p| p["kind"] == kind))
}

/// The dedup keys of the deliveries in the state directory's event store.
pub fn stored_keys(state: &Path) -> std::collections::BTreeSet<String> {
    let db = rusqlite::Connection::open(state.join("events.db")).unwrap();
    let mut stmt = db.prepare("SELECT dedup_key FROM deliveries").unwrap();
    stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}
