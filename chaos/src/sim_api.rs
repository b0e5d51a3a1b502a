//! The sim's REST API as the harness uses it: creating, cancelling and retrying pipelines, and
//! reading the truth at the end. The sim injects its API faults (`api_429`, `api_5xx`) into every
//! client, this one included, so every call is retried on 429 (after `Retry-After`), 5xx and
//! connection errors. Retrying a POST is safe here: the sim's `api_5xx` answers before the call is
//! carried out (the harness never turns on `api_5xx_after`), and cancel/retry are idempotent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::analysis::{Truth, TruthJob, TruthPipeline};

/// A project path as a URL path segment.
pub(crate) fn enc(project: &str) -> String {
    project.replace('/', "%2F")
}

/// The sim's API at `URL/api/v4`.
#[derive(Debug)]
pub(crate) struct SimApi {
    base: String,
    token: String,
    http: reqwest::Client,
    retries: AtomicU64,
}

impl SimApi {
    pub(crate) fn new(url: &str, token: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .expect("a reqwest client with the TLS provider installed");
        Self { base: format!("{url}/api/v4"), token: token.to_owned(), http, retries: AtomicU64::new(0) }
    }

    /// Calls answered 429/5xx or failed, then retried.
    pub(crate) fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// One call, retried until it gets an answer that is neither 429 nor 5xx (for at most 90 s).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<(reqwest::StatusCode, reqwest::header::HeaderMap, Value), String> {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut req =
                self.http.request(method.clone(), format!("{}{path}", self.base)).header("PRIVATE-TOKEN", &self.token);
            if !query.is_empty() {
                req = req.query(query);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let wait = match req.send().await {
                Ok(resp) if resp.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                    let secs = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .unwrap_or(1);
                    Duration::from_secs(secs.min(10))
                }
                Ok(resp) if resp.status().is_server_error() => Duration::from_millis(200 * u64::from(attempt.min(10))),
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    let text = resp.text().await.map_err(|e| format!("{method} {path}: reading the body: {e}"))?;
                    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    if !status.is_success() {
                        return Err(format!("{method} {path}: {status}: {value}"));
                    }
                    return Ok((status, headers, value));
                }
                Err(_) => Duration::from_millis(200 * u64::from(attempt.min(10))),
            };
            self.retries.fetch_add(1, Ordering::Relaxed);
            if Instant::now() + wait > deadline {
                return Err(format!("{method} {path}: no answer after {attempt} attempts"));
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// `POST path` (no body).
    pub(crate) async fn post(&self, path: &str) -> Result<Value, String> {
        self.call(reqwest::Method::POST, path, &[], None).await.map(|(_, _, v)| v)
    }

    /// `DELETE path`, retried like every call (a membership removed twice is a 404 the second
    /// time, which is success here).
    pub(crate) async fn delete(&self, path: &str) -> Result<(), String> {
        match self.call(reqwest::Method::DELETE, path, &[], None).await {
            Ok(_) => Ok(()),
            Err(e) if e.contains("404") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `POST /projects/:id/pipeline` with variables; the new pipeline's id.
    pub(crate) async fn create_pipeline(
        &self,
        project: &str,
        git_ref: &str,
        vars: &[(String, String)],
    ) -> Result<u64, String> {
        let variables: Vec<Value> = vars.iter().map(|(k, v)| json!({"key": k, "value": v})).collect();
        let body = json!({"ref": git_ref, "variables": variables});
        let (_, _, v) =
            self.call(reqwest::Method::POST, &format!("/projects/{}/pipeline", enc(project)), &[], Some(&body)).await?;
        v["id"].as_u64().ok_or_else(|| format!("create pipeline: no id in {v}"))
    }

    /// Every item of a paginated list (`per_page=100`, following `x-next-page`).
    async fn list_all(&self, path: &str, query: &[(&str, String)]) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        let mut page = 1u64;
        loop {
            let mut q: Vec<(&str, String)> = query.to_vec();
            q.push(("per_page", "100".into()));
            q.push(("page", page.to_string()));
            let (_, headers, v) = self.call(reqwest::Method::GET, path, &q, None).await?;
            match v {
                Value::Array(items) => out.extend(items),
                other => return Err(format!("GET {path}: not a list: {other}")),
            }
            let next =
                headers.get("x-next-page").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
            match next {
                Some(n) if n > page => page = n,
                _ => return Ok(out),
            }
        }
    }

    /// How many of the project's pipelines are not finished.
    pub(crate) async fn unfinished_pipelines(&self, project: &str) -> Result<usize, String> {
        let list = self.list_all(&format!("/projects/{}/pipelines", enc(project)), &[]).await?;
        Ok(list.iter().filter(|p| !crate::analysis::completed(p["status"].as_str().unwrap_or(""))).count())
    }

    /// The first hook's `alert_status`.
    pub(crate) async fn hook_alert_status(&self, project: &str) -> Option<String> {
        let hooks = self.list_all(&format!("/projects/{}/hooks", enc(project)), &[]).await.ok()?;
        let statuses: Vec<String> =
            hooks.iter().filter_map(|h| h["alert_status"].as_str().map(str::to_owned)).collect();
        (!statuses.is_empty()).then(|| statuses.join(","))
    }

    /// Every pipeline with its final status and `finished_at`, and every job (retried ones
    /// included).
    pub(crate) async fn truth(&self, project: &str) -> Result<Truth, String> {
        let p = enc(project);
        let list = self.list_all(&format!("/projects/{p}/pipelines"), &[("sort", "asc".into())]).await?;
        let ids: Vec<u64> = list.iter().filter_map(|v| v["id"].as_u64()).collect();
        let results: Vec<Result<TruthPipeline, String>> = futures_util::stream::iter(ids)
            .map(|id| {
                let p = p.clone();
                async move {
                    let (_, _, pipeline) =
                        self.call(reqwest::Method::GET, &format!("/projects/{p}/pipelines/{id}"), &[], None).await?;
                    let jobs = self
                        .list_all(&format!("/projects/{p}/pipelines/{id}/jobs"), &[("include_retried", "true".into())])
                        .await?;
                    let mut jobs: Vec<TruthJob> = jobs
                        .iter()
                        .map(|j| TruthJob {
                            id: j["id"].as_u64().unwrap_or(0),
                            name: j["name"].as_str().unwrap_or("").to_owned(),
                            status: j["status"].as_str().unwrap_or("").to_owned(),
                            finished_at: time(&j["finished_at"]),
                        })
                        .collect();
                    jobs.sort_by_key(|j| j.id);
                    Ok(TruthPipeline {
                        id,
                        status: pipeline["status"].as_str().unwrap_or("").to_owned(),
                        finished_at: time(&pipeline["finished_at"]),
                        jobs,
                    })
                }
            })
            .buffered(8)
            .collect()
            .await;
        Ok(Truth { pipelines: results.into_iter().collect::<Result<Vec<_>, _>>()? })
    }
}

fn time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str().and_then(|s| cloudci_gitlab::types::Timestamp::parse(s).ok()).map(|t| t.at())
}
