use std::path::Path;

use bytes::Bytes;
use futures_util::Stream;
use reqwest::header::{CONTENT_RANGE, HeaderValue};

use super::project_path;
use crate::client::Request;
use crate::types::{Job, JobScope, PipelineVariable};
use crate::{Error, Gitlab, JobId, PipelineId, ProjectRef};

/// Filters for `GET /projects/:id/pipelines/:pipeline_id/jobs`.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only jobs in these states (`scope[]`); all when empty.
    pub scope: Vec<JobScope>,
    /// Include jobs that were retried (GitLab leaves them out by default).
    pub include_retried: bool,
}

/// New log output read from an offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceChunk {
    /// The bytes after the offset asked for (after 0 when `reset`).
    pub data: Bytes,
    /// Where to read from next time.
    pub next_offset: u64,
    /// The log is now shorter than the offset asked for (the job was retried or erased): `data`
    /// is the whole new log from its start.
    pub reset: bool,
}

impl Gitlab {
    /// `GET /projects/:id/pipelines/:pipeline_id/jobs`, every page.
    pub fn pipeline_jobs(
        &self,
        project: impl Into<ProjectRef>,
        pipeline: PipelineId,
        filter: &JobFilter,
    ) -> impl Stream<Item = Result<Job, Error>> + Send + 'static {
        let mut req = Request::get(format!("{}/pipelines/{pipeline}/jobs", project_path(&project.into())));
        for scope in &filter.scope {
            req = req.query("scope[]", scope.as_str());
        }
        if filter.include_retried {
            req = req.query("include_retried", true);
        }
        self.paged(req, None)
    }

    /// `GET /projects/:id/jobs/:job_id`
    pub async fn job(&self, project: impl Into<ProjectRef>, id: JobId) -> Result<Job, Error> {
        self.json(&Request::get(format!("{}/jobs/{id}", project_path(&project.into())))).await
    }

    /// `POST /projects/:id/jobs/:job_id/play`: starts a manual job, optionally with variables.
    pub async fn play_job(
        &self,
        project: impl Into<ProjectRef>,
        id: JobId,
        variables: &[PipelineVariable],
    ) -> Result<Job, Error> {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            job_variables_attributes: &'a [PipelineVariable],
        }
        let req = Request::post(format!("{}/jobs/{id}/play", project_path(&project.into())))
            .json(&Body { job_variables_attributes: variables })?;
        self.json(&req).await
    }

    /// `POST /projects/:id/jobs/:job_id/retry`: returns the new job.
    pub async fn retry_job(&self, project: impl Into<ProjectRef>, id: JobId) -> Result<Job, Error> {
        self.json(&Request::post(format!("{}/jobs/{id}/retry", project_path(&project.into())))).await
    }

    /// `POST /projects/:id/jobs/:job_id/cancel`
    pub async fn cancel_job(&self, project: impl Into<ProjectRef>, id: JobId) -> Result<Job, Error> {
        self.json(&Request::post(format!("{}/jobs/{id}/cancel", project_path(&project.into())))).await
    }

    /// `GET /projects/:id/jobs/:job_id/trace`: the whole log.
    pub async fn job_trace(&self, project: impl Into<ProjectRef>, id: JobId) -> Result<Bytes, Error> {
        Ok(self.job_trace_from(project, id, 0).await?.data)
    }

    /// The log after byte `offset`, for following a running job.
    ///
    /// Asks with `Range: bytes=<offset>-`. A server that honours it answers 206 with only the new
    /// bytes (or 416 when there are none). GitLab's own endpoint (gitlab.com included) ignores
    /// `Range` and answers 200 with the whole log, since the API handler sends `build.trace.raw`
    /// as one body; then the bytes before `offset` are skipped as they arrive and not kept.
    pub async fn job_trace_from(
        &self,
        project: impl Into<ProjectRef>,
        id: JobId,
        offset: u64,
    ) -> Result<TraceChunk, Error> {
        let path = format!("{}/jobs/{id}/trace", project_path(&project.into()));
        let chunk = self.trace_after(&path, offset).await?;
        match chunk {
            // The log is shorter than what was already read: the job was retried or erased. Read
            // the new log from its start (only in this rare case are bytes fetched twice).
            None => Ok(TraceChunk { reset: true, ..self.trace_after(&path, 0).await?.unwrap_or_default() }),
            Some(chunk) => Ok(chunk),
        }
    }

    /// `None` when the log is shorter than `offset`.
    async fn trace_after(&self, path: &str, offset: u64) -> Result<Option<TraceChunk>, Error> {
        let mut req = Request::get(path).pass_through(&[416]).streaming();
        if offset > 0 {
            let range = HeaderValue::from_str(&format!("bytes={offset}-")).map_err(|e| Error::Config(e.to_string()))?;
            req = req.header("range", range);
        }
        let mut resp = self.send(&req).await?;
        let url = resp.url().clone();
        let endpoint = || format!("GET /{path}");
        match resp.status().as_u16() {
            // Nothing after `offset` (a server may also say so when the log shrank; the next
            // read after a retry shows the new log through the 200 path or a smaller range).
            416 => Ok(Some(TraceChunk { data: Bytes::new(), next_offset: offset, reset: false })),
            206 => {
                let start = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if start != Some(offset) {
                    return Err(Error::Decode {
                        endpoint: endpoint(),
                        path: "Content-Range".into(),
                        message: format!("asked for bytes from {offset}, got a range starting at {start:?}"),
                    });
                }
                let data = self.body(&req, resp).await?;
                Ok(Some(TraceChunk { next_offset: offset + data.len() as u64, data, reset: false }))
            }
            _ => {
                // The whole log: skip the first `offset` bytes as they stream past.
                let mut seen = 0u64;
                let mut fresh = Vec::new();
                while let Some(chunk) =
                    resp.chunk().await.map_err(|source| Error::transport(endpoint(), &url, source))?
                {
                    let chunk_start = seen;
                    seen += chunk.len() as u64;
                    if seen > offset {
                        let from = usize::try_from(offset.saturating_sub(chunk_start)).unwrap_or(chunk.len());
                        fresh.extend_from_slice(&chunk[from..]);
                    }
                }
                if seen < offset {
                    return Ok(None);
                }
                Ok(Some(TraceChunk { next_offset: seen, data: Bytes::from(fresh), reset: false }))
            }
        }
    }

    /// `GET /projects/:id/jobs/:job_id/artifacts`: streams the job's artifact archive (a zip) into
    /// `dest`, following redirects (gitlab.com serves artifacts from a CDN; the token is not sent
    /// there). Returns the size.
    pub async fn download_artifacts(
        &self,
        project: impl Into<ProjectRef>,
        id: JobId,
        dest: &Path,
    ) -> Result<u64, Error> {
        self.download_artifacts_with_progress(project, id, dest, |_, _| {}).await
    }

    /// Like [`Gitlab::download_artifacts`], calling `progress(bytes_so_far, total_if_known)` as
    /// data arrives.
    pub async fn download_artifacts_with_progress(
        &self,
        project: impl Into<ProjectRef>,
        id: JobId,
        dest: &Path,
        progress: impl FnMut(u64, Option<u64>) + Send,
    ) -> Result<u64, Error> {
        let req = Request::get(format!("{}/jobs/{id}/artifacts", project_path(&project.into()))).streaming();
        self.download(&req, dest, progress).await
    }
}
