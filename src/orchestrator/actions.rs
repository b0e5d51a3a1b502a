//! After success: each build's artifacts, and, once every target of a project succeeded, the
//! project's merge request (found or opened once), auto-merge and promotion. Each step is
//! recorded when done, and the ones that write to GitLab find before they create, so a restart
//! or a retry never does one twice.

use std::path::Path;

use cloudci_gitlab::types::{CreateMergeRequest, CreatePipeline, MergeOptions, MergeRequest};
use cloudci_gitlab::{MergeRequestFilter, ProjectRef};
use futures_util::TryStreamExt;

use super::{BuildStatus, Orchestrator, OrchestratorError, create};
use crate::builds::{BuildRecord, BuildWork};

/// Fetches the artifacts of this attempt's jobs into `artifacts/<project>/<sha>/<target>/`
/// (kept zipped and extracted), unless they were fetched for it already, and records them.
pub(super) async fn fetch_artifacts(
    o: &Orchestrator,
    record: &BuildRecord,
    jobs: &[super::jobs::SettledJob],
    label: &str,
) -> Result<(), OrchestratorError> {
    let (_, work) = o.records().get(record.id).await?;
    if !o.config().projects.get(&record.project).is_some_and(|p| p.after_success.download_artifacts)
        || work.artifacts_attempt == Some(work.attempt)
    {
        return Ok(());
    }
    let sha = record.sha.clone().unwrap_or_default();
    let dest =
        o.state_dir().join("artifacts").join(sanitize(&record.project)).join(&sha).join(sanitize(&record.target));
    let project = ProjectRef::parse(&record.gitlab);
    let mut first = None;
    for job in jobs.iter().filter(|j| j.artifacts.is_some()) {
        let zip = dest.join(format!("{}.zip", sanitize(&job.name)));
        let total = job.artifacts.flatten();
        // The client streams to the file: its growing size is the download's progress.
        let (reporter, what, path) = (o.inner.reporter.clone(), job.name.clone(), zip.clone());
        let build = label.to_owned();
        let watcher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(150)).await;
                let done = tokio::fs::metadata(&path).await.map(|m| m.len()).unwrap_or(0);
                reporter.download(&build, &what, done, total);
            }
        });
        let downloaded = o.inner.gitlab.download_artifacts(project.clone(), job.id, &zip).await;
        watcher.abort();
        let size = downloaded?;
        o.inner.reporter.download(label, &job.name, size, Some(size));
        unzip(&zip, &dest).map_err(OrchestratorError::io(&zip))?;
        o.inner.reporter.line(label, &format!("artifacts of {} ({size} bytes) in {}", job.name, dest.display()));
        first.get_or_insert(job.id.0);
    }
    let attempt = work.attempt;
    let dest = first.map(|_| dest.display().to_string());
    o.records()
        .update(record.id, move |r, w| {
            if dest.is_some() {
                r.artifacts.clone_from(&dest);
            }
            w.artifact_job = first.or(w.artifact_job);
            w.artifacts_attempt = Some(attempt);
        })
        .await?;
    Ok(())
}

/// Once every build of `project` in `run` settled: on all-success, the project's actions; then
/// each build gets its final status. Until then (a sibling still runs) nothing happens: the last
/// one to settle does it.
pub(super) async fn finish_project(o: &Orchestrator, run: i64, project: &str) -> Result<(), OrchestratorError> {
    let lock = {
        let mut locks = o.inner.projects.lock().await;
        locks.entry((run, project.to_owned())).or_default().clone()
    };
    let _held = lock.lock().await;
    let builds: Vec<(BuildRecord, BuildWork)> =
        o.records().run(run).await?.into_iter().filter(|(r, _)| r.project == project).collect();
    if builds.is_empty() || builds.iter().any(|(_, w)| w.settled.is_none()) {
        return Ok(());
    }
    let all_ok = builds.iter().all(|(_, w)| w.settled == Some(BuildStatus::Success));
    if all_ok && builds[0].1.actions {
        project_actions(o, project, &builds).await;
    }
    for (r, _) in builds {
        o.records()
            .update(r.id, |r, w| {
                if !w.done {
                    r.status = w.settled.unwrap_or(BuildStatus::Error);
                    // A passed pipeline whose job said "cloudci: skipped: <why>" was skipped.
                    super::skip::mark(r);
                    w.done = true;
                }
            })
            .await?;
    }
    Ok(())
}

/// Applies `change` to every build of the project, so each record shows the project's actions.
async fn record_all(
    o: &Orchestrator,
    builds: &[(BuildRecord, BuildWork)],
    change: impl Fn(&mut BuildRecord, &mut BuildWork) + Clone + Send + 'static,
) -> Result<(), OrchestratorError> {
    for (r, _) in builds {
        let c = change.clone();
        o.records().update(r.id, move |r, w| c(r, w)).await?;
    }
    Ok(())
}

/// The merge request, auto-merge and promotion; failures are reported, not fatal.
async fn project_actions(o: &Orchestrator, name: &str, builds: &[(BuildRecord, BuildWork)]) {
    let Some(p) = o.config().projects.get(name) else { return };
    let project = ProjectRef::parse(&p.gitlab);
    let (first, work) = &builds[0];
    let (Some(git_ref), Some(sha)) = (first.git_ref.clone(), first.sha.clone()) else { return };
    let reporter = &o.inner.reporter;
    if let Some(mr) = &p.after_success.merge_request
        && mr.target_branch != git_ref
    {
        let result = merge_request(o, builds, &project, &git_ref, &mr.target_branch, mr.title.as_deref()).await;
        match result {
            Ok(url) => reporter.line(name, &format!("merge request: {url}")),
            Err(e) => reporter.line(name, &format!("merge request failed: {e}")),
        }
    }
    if let Some(promote) = &p.after_success.promote
        && first.promoted.is_none()
    {
        let target = ProjectRef::parse(promote.project.as_deref().unwrap_or(&p.gitlab));
        let artifact_job = builds.iter().find_map(|(_, w)| w.artifact_job).map(|j| j.to_string()).unwrap_or_default();
        let result = promotion(o, builds, work, &target, &promote.git_ref, &sha, &artifact_job, &promote.variables);
        match result.await {
            Ok(url) => reporter.line(name, &format!("promoted: pipeline {url}")),
            Err(e) => reporter.line(name, &format!("promotion failed: {e}")),
        }
    }
}

/// The open merge request from `source` into `target`: the recorded one, else found, else
/// opened (after an ambiguous failure, found again before opening again); auto-merge set once.
async fn merge_request(
    o: &Orchestrator,
    builds: &[(BuildRecord, BuildWork)],
    project: &ProjectRef,
    source: &str,
    target: &str,
    title: Option<&str>,
) -> Result<String, OrchestratorError> {
    let gitlab = &o.inner.gitlab;
    let auto_merge = o.config().projects.get(&builds[0].0.project).is_some_and(|p| p.after_success.auto_merge);
    let (first, work) = &builds[0];
    let mr: MergeRequest = match (work.merge_request_iid, &first.merge_request) {
        (Some(iid), Some(_)) => gitlab.merge_request(project.clone(), cloudci_gitlab::MergeRequestIid(iid)).await?,
        _ => {
            let filter = MergeRequestFilter {
                source_branch: Some(source.to_owned()),
                target_branch: Some(target.to_owned()),
                state: Some("opened".into()),
            };
            let params = CreateMergeRequest {
                source_branch: source.to_owned(),
                target_branch: target.to_owned(),
                title: title.map(str::to_owned).unwrap_or_else(|| format!("{source}: built by cloudci")),
                description: Some("Opened by cloudci after every target built successfully.".into()),
                ..Default::default()
            };
            let mut attempts = 0;
            let mr = loop {
                let existing: Vec<_> = gitlab.merge_requests(project.clone(), &filter).try_collect().await?;
                if let Some(mr) = existing.into_iter().next() {
                    break mr;
                }
                match gitlab.create_merge_request(project.clone(), &params).await {
                    Ok(mr) => break mr,
                    Err(cloudci_gitlab::Error::MaybeApplied { .. }) if attempts < 3 => attempts += 1,
                    Err(e) => return Err(e.into()),
                }
            };
            let (url, iid) = (mr.web_url.clone(), mr.iid.0);
            record_all(o, builds, move |r, w| {
                r.merge_request = Some(url.clone());
                w.merge_request_iid = Some(iid);
            })
            .await?;
            mr
        }
    };
    if auto_merge && !work.auto_merged {
        // Merged or set already (before a restart): nothing to do but record it.
        if !mr.merge_when_pipeline_succeeds && mr.state == "opened" {
            gitlab.merge(project.clone(), mr.iid, &MergeOptions { auto_merge: true, ..Default::default() }).await?;
        }
        record_all(o, builds, |_, w| w.auto_merged = true).await?;
    }
    Ok(mr.web_url)
}

/// Starts the promotion pipeline once: its request id is recorded before it is created, and
/// after a restart the pipeline carrying it is found before one is created.
#[allow(clippy::too_many_arguments)]
async fn promotion(
    o: &Orchestrator,
    builds: &[(BuildRecord, BuildWork)],
    work: &BuildWork,
    target: &ProjectRef,
    git_ref: &str,
    sha: &str,
    artifact_job: &str,
    variables: &std::collections::BTreeMap<String, String>,
) -> Result<String, OrchestratorError> {
    let gitlab = &o.inner.gitlab;
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    let mut found = None;
    let request = match &work.promote_request {
        Some(request) => {
            found = create::find_pipeline(gitlab, target, git_ref, request, since).await?;
            request.clone()
        }
        None => {
            let request = cloudci_webhook::random_token(12);
            let saved = request.clone();
            record_all(o, builds, move |_, w| w.promote_request = Some(saved.clone())).await?;
            request
        }
    };
    let pipeline = match found {
        Some(p) => p,
        None => {
            let mut params = CreatePipeline::new(git_ref.to_owned())
                .variable("CLOUDCI_SHA", sha.to_owned())
                .variable("CLOUDCI_ARTIFACT_JOB", artifact_job.to_owned());
            for (k, v) in variables {
                params = params.variable(k.clone(), v.clone());
            }
            params = params.variable(create::REQUEST_VARIABLE, request);
            create::start_pipeline(gitlab, target, &params, since, o.inner.reporter.as_ref(), "promotion").await?
        }
    };
    let url = pipeline.web_url.clone();
    record_all(o, builds, move |r, _| r.promoted = Some(url.clone())).await?;
    Ok(format!("{} {}", pipeline.id, pipeline.web_url))
}

/// A name safe as one path component.
pub(super) fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect()
}

/// Extracts `zip` into `dest`, refusing entries that would land outside it.
fn unzip(zip: &Path, dest: &Path) -> std::io::Result<()> {
    let file = std::fs::File::open(zip)?;
    let mut archive = zip::ZipArchive::new(file).map_err(std::io::Error::other)?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(std::io::Error::other)?;
        let Some(rel) = entry.enclosed_name() else { continue };
        let out = dest.join(rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&out)?;
        } else {
            if let Some(parent) = out.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut f = std::fs::File::create(&out)?;
            std::io::copy(&mut entry, &mut f)?;
            #[cfg(unix)]
            if let Some(mode) = entry.unix_mode() {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&out, std::fs::Permissions::from_mode(mode & 0o777))?;
            }
        }
    }
    Ok(())
}
