//! What a build produced: a job's log (polled by offset), the firmware archive and the source
//! at the built commit.

use std::path::PathBuf;

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use cloudci_gitlab::{ArchiveFormat, JobId, ProjectRef};
use serde::Deserialize;

use super::builds::record;
use super::error::{ApiError, Authorized};
use super::params::{ApiQuery, BuildId, MAX_ID, bounded};
use super::{ApiState, gitlab, gitlab_error, internal};
use crate::builds::{BuildRecord, NoJob};
use crate::orchestrator::Orchestrator;

#[derive(Debug, Deserialize)]
pub(super) struct LogQuery {
    job: Option<String>,
    offset: Option<u64>,
}

/// The log of one job (`?job=`; default the running job, else the next to run, else the first
/// failed, else the last), from `?offset=`. `X-Next-Offset` says where to continue,
/// `X-Log-Reset: true` that the log restarted (a retried job), `X-Job` and `X-Job-Status` which
/// job and where it stands, and `X-Log-Complete: true` that the job ended and this answer holds
/// the rest of its log: a client polls with the offset until then.
pub(super) async fn build_log(
    State(s): State<ApiState>,
    Authorized(c): Authorized,
    id: BuildId,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Response, ApiError> {
    let offset = bounded(q.offset, "offset", 0, 0, MAX_ID)?;
    let b = record(&s, &c, id).await?;
    let (name, job) = b.pick_job(q.job.as_deref()).map_err(|e| match e {
        NoJob::Unknown { .. } => ApiError::new(StatusCode::NOT_FOUND, e.to_string()).field("job"),
        // The build is there; its jobs are not yet.
        NoJob::NoneYet { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
    })?;
    if let Some(o) = &s.orchestrator
        && let Some(answer) = local_log(o, &b, name, job, offset).await
    {
        return Ok(answer);
    }
    let gitlab = gitlab(&s)?;
    let project = ProjectRef::parse(&b.gitlab);
    // Status first: whatever the job wrote before it ended is in the read that follows.
    let status = match gitlab.job(project.clone(), JobId(job.id)).await {
        Ok(j) => j.status,
        Err(e) if e.is_not_found() => return Err(gitlab_error(e)),
        Err(_) => job.status.clone(),
    };
    let chunk = gitlab.job_trace_from(project, JobId(job.id), offset).await.map_err(gitlab_error)?;
    let complete = status.is_completed();
    Ok(log_answer(name, &status, chunk.data, chunk.next_offset, chunk.reset, complete))
}

/// The log as this daemon has it: the saved file of a finished job, or the file its follower
/// writes (one follower per job however many readers poll, reading GitLab at the log's pace;
/// the job's status comes from the record, which webhooks keep current). `None`: ask GitLab
/// (the follower gave up).
async fn local_log(
    o: &Orchestrator,
    b: &BuildRecord,
    name: &str,
    job: &crate::builds::JobRecord,
    offset: u64,
) -> Option<Response> {
    use cloudci_gitlab::types::Status;
    let started = (job.status == Status::Running || job.status.is_completed()) && job.status != Status::Skipped;
    let (path, complete) = match job.log.as_ref().map(PathBuf::from) {
        Some(saved) if job.status.is_completed() && saved.exists() => (saved, true),
        _ if started => {
            let tail = o.tail(b, name, job.id, None);
            // Read before the file: when it says done, the file holds the whole log.
            let done = *tail.done.borrow();
            match done {
                Some(false) => return None,
                done => (tail.path, done.is_some()),
            }
        }
        // Not started (or skipped): no log yet, or none ever.
        _ => return Some(log_answer(name, &job.status, Vec::new(), offset, false, job.status.is_completed())),
    };
    let log = tokio::fs::read(&path).await.unwrap_or_default();
    let (data, reset) = match usize::try_from(offset).ok().filter(|&o| o <= log.len()) {
        Some(from) => (log[from..].to_vec(), false),
        // Shorter than what the reader has: a retried job's new log, from its start.
        None => (log, true),
    };
    let next = if reset { data.len() as u64 } else { offset + data.len() as u64 };
    Some(log_answer(name, &job.status, data, next, reset, complete))
}

/// A piece of a job's log with the headers that say where the reader stands (see [`build_log`]).
fn log_answer(
    name: &str,
    status: &cloudci_gitlab::types::Status,
    data: impl Into<Body>,
    next_offset: u64,
    reset: bool,
    complete: bool,
) -> Response {
    let header = header::HeaderName::from_static;
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
            (header("x-next-offset"), next_offset.to_string()),
            (header("x-log-reset"), reset.to_string()),
            (header("x-job"), name.to_owned()),
            (header("x-job-status"), status.to_string()),
            (header("x-log-complete"), complete.to_string()),
        ],
        data.into(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct JobQuery {
    job: Option<String>,
}

/// The firmware: the artifact archive fetched after success (`?job=` to choose).
pub(super) async fn download(
    State(s): State<ApiState>,
    Authorized(c): Authorized,
    id: BuildId,
    ApiQuery(q): ApiQuery<JobQuery>,
) -> Result<Response, ApiError> {
    let b = record(&s, &c, id).await?;
    let dir = match b.artifacts {
        Some(dir) => dir,
        // Artifacts are fetched after success: a build still on its way has none yet.
        None if !b.status.is_final() => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("build {} has no artifacts yet (it is {})", b.id, b.status.as_str()),
            ));
        }
        None => return Err(ApiError::new(StatusCode::NOT_FOUND, format!("build {} has no artifacts", b.id))),
    };
    let mut zips: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(internal)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "zip"))
        .collect();
    zips.sort();
    let chosen = match &q.job {
        Some(job) => zips.into_iter().find(|p| p.file_stem().is_some_and(|s| s == job.as_str())),
        None => zips.into_iter().next(),
    }
    .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such artifact archive").field("job"))?;
    let file = tokio::fs::File::open(&chosen).await.map_err(internal)?;
    let name = chosen.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok((
        [
            (header::CONTENT_TYPE, "application/zip".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{}-{}-{name}\"", b.project, b.target)),
        ],
        Body::from_stream(file_stream(file)),
    )
        .into_response())
}

fn file_stream(file: tokio::fs::File) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    futures_util::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
}

/// The source at the built commit, as GitLab's `.tar.gz` archive.
pub(super) async fn source(
    State(s): State<ApiState>,
    Authorized(c): Authorized,
    id: BuildId,
) -> Result<Response, ApiError> {
    let b = record(&s, &c, id).await?;
    // The commit is known once the pipeline is created.
    let sha = b.sha.clone().ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "the build has no commit yet"))?;
    let dir = tempfile::tempdir().map_err(internal)?;
    let path = dir.path().join("source.tar.gz");
    gitlab(&s)?
        .download_archive(ProjectRef::parse(&b.gitlab), &sha, ArchiveFormat::TarGz, &path)
        .await
        .map_err(gitlab_error)?;
    let file = tokio::fs::File::open(&path).await.map_err(internal)?;
    // The open file stays readable after the folder is removed (Unix); keep it until sent anyway.
    let stream = futures_util::StreamExt::map(file_stream(file), move |chunk| {
        let _keep = &dir;
        chunk
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}-{}.tar.gz\"", b.project, &sha[..sha.len().min(8)]),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
