use std::path::Path;

use bytes::Bytes;
use futures_util::Stream;

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
    /// GitLab's trace endpoint (gitlab.com included) ignores `Range` and answers 200 with the
    /// whole log, as the API handler sends `build.trace.raw` as one body; so no `Range` is sent
    /// (reqwest would then also stop asking for a compressed answer, and GitLab's nginx gzips
    /// `text/plain`, which is what makes reading a growing log again cheap). The bytes before
    /// `offset` are dropped here as they stream in, never held: following a 100 MB log holds only
    /// what is new. A log shorter than `offset` (the job was retried or erased) is read again and
    /// returned whole with `reset`.
    pub async fn job_trace_from(
        &self,
        project: impl Into<ProjectRef>,
        id: JobId,
        offset: u64,
    ) -> Result<TraceChunk, Error> {
        let path = format!("{}/jobs/{id}/trace", project_path(&project.into()));
        let (data, len) = self.trace_after(&path, offset).await?;
        if len >= offset {
            return Ok(TraceChunk { data, next_offset: len, reset: false });
        }
        // Rare (a retried or erased job), and the new log is shorter than what was seen: read it
        // whole rather than keep every prefix in case.
        let (data, len) = self.trace_after(&path, 0).await?;
        Ok(TraceChunk { data, next_offset: len, reset: true })
    }

    /// The bytes of the trace at `path` after `offset`, and the whole log's length.
    async fn trace_after(&self, path: &str, offset: u64) -> Result<(Bytes, u64), Error> {
        let req = Request::get(path).streaming();
        let mut resp = self.send(&req).await?;
        let url = resp.url().clone();
        let mut kept = Vec::new();
        let mut len = 0u64;
        while let Some(chunk) =
            resp.chunk().await.map_err(|source| Error::transport(format!("GET /{path}"), &url, source))?
        {
            let start = len;
            len += chunk.len() as u64;
            if len > offset {
                let skip = usize::try_from(offset.saturating_sub(start)).unwrap_or(chunk.len());
                kept.extend_from_slice(&chunk[skip..]);
            }
        }
        Ok((Bytes::from(kept), len))
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
