//! What each `cloudci gitlab` command does, on one client.

use std::io::Write;
use std::time::Duration;

use cloudci_gitlab::types::{CreateMergeRequest, CreatePipeline, PipelineVariable, Status};
use cloudci_gitlab::{Gitlab, JobFilter, JobId, MergeRequestFilter, PipelineFilter, PipelineId, ProjectRef};
use futures_util::{StreamExt, TryStreamExt};

use crate::cli::Failure;
use crate::output::{Table, print_json, stderr_is_terminal};

use super::{GitlabAction, MrAction, PipelineCreate};

impl GitlabAction {
    pub(super) async fn run(self, gitlab: &Gitlab) -> Result<(), Failure> {
        match self {
            GitlabAction::Pipeline {
                create: Some(PipelineCreate::Create { project, git_ref, vars, file_vars, out }),
                ..
            } => {
                let mut params = CreatePipeline::new(git_ref);
                params.variables.extend(vars.into_iter().map(|(k, v)| PipelineVariable::env(k, v)));
                params.variables.extend(file_vars.into_iter().map(|(k, v)| PipelineVariable::file(k, v)));
                let pipeline = gitlab.create_pipeline(ProjectRef::parse(&project), &params).await?;
                if out.json {
                    print_json(&pipeline)?;
                } else {
                    crate::say!("pipeline {} created: {} ({})", pipeline.id, pipeline.web_url, pipeline.status);
                }
            }
            GitlabAction::Pipeline { project: Some(project), pipeline_id: Some(id), out, .. } => {
                let p = gitlab.pipeline(ProjectRef::parse(&project), PipelineId(id)).await?;
                if out.json {
                    print_json(&p)?;
                } else {
                    let mut t = Table::new(&["FIELD", "VALUE"]);
                    t.row(vec!["id".into(), p.id.to_string()]);
                    t.row(vec!["status".into(), p.status.to_string()]);
                    t.row(vec!["ref".into(), p.git_ref.clone()]);
                    t.row(vec!["sha".into(), p.sha.clone()]);
                    t.row(vec!["source".into(), p.source.clone().unwrap_or_default()]);
                    t.row(vec!["created".into(), opt_time(p.created_at.as_ref())]);
                    t.row(vec!["finished".into(), opt_time(p.finished_at.as_ref())]);
                    t.row(vec!["duration".into(), p.duration.map(|d| format!("{d}s")).unwrap_or_default()]);
                    t.row(vec!["url".into(), p.web_url.clone()]);
                    t.print()?;
                }
            }
            GitlabAction::Pipeline { .. } => {
                return Err(Failure::usage(
                    "usage: cloudci gitlab pipeline <PROJECT> <PIPELINE_ID> | pipeline create ...",
                ));
            }
            GitlabAction::Pipelines { project, git_ref, status, limit, out } => {
                let filter = PipelineFilter {
                    git_ref,
                    status: status.as_deref().map(Status::parse),
                    per_page: Some(limit.clamp(1, 100)),
                    ..Default::default()
                };
                let list: Vec<_> =
                    gitlab.pipelines(ProjectRef::parse(&project), &filter).take(limit).try_collect().await?;
                if out.json {
                    print_json(&list)?;
                } else {
                    let mut t = Table::new(&["ID", "STATUS", "REF", "SHA", "SOURCE", "CREATED", "URL"]);
                    for p in &list {
                        t.row(vec![
                            p.id.to_string(),
                            p.status.to_string(),
                            p.git_ref.clone(),
                            p.sha.chars().take(8).collect(),
                            p.source.clone().unwrap_or_default(),
                            opt_time(p.created_at.as_ref()),
                            p.web_url.clone(),
                        ]);
                    }
                    t.print()?;
                }
            }
            GitlabAction::Jobs { project, pipeline_id, include_retried, out } => {
                let filter = JobFilter { include_retried, ..Default::default() };
                let mut jobs: Vec<_> = gitlab
                    .pipeline_jobs(ProjectRef::parse(&project), PipelineId(pipeline_id), &filter)
                    .try_collect()
                    .await?;
                // GitLab lists newest first; a table reads better in run order.
                jobs.sort_by_key(|j| j.id);
                if out.json {
                    print_json(&jobs)?;
                } else {
                    let mut t = Table::new(&["ID", "NAME", "STAGE", "STATUS", "DURATION", "URL"]);
                    for j in &jobs {
                        t.row(vec![
                            j.id.to_string(),
                            j.name.clone(),
                            j.stage.clone(),
                            j.status.to_string(),
                            j.duration.map(|d| format!("{d:.1}s")).unwrap_or_default(),
                            j.web_url.clone(),
                        ]);
                    }
                    t.print()?;
                }
            }
            GitlabAction::Trace { project, job_id, follow, interval } => {
                let interval = Duration::try_from_secs_f64(interval)
                    .ok()
                    .filter(|d| *d >= Duration::from_millis(100))
                    .ok_or_else(|| Failure::usage("--interval must be at least 0.1 seconds"))?;
                follow_trace(gitlab, ProjectRef::parse(&project), JobId(job_id), follow, interval).await?;
            }
            GitlabAction::Artifacts { project, job_id, output, json } => {
                let show = stderr_is_terminal() && !json;
                let size = gitlab
                    .download_artifacts_with_progress(
                        ProjectRef::parse(&project),
                        JobId(job_id),
                        &output,
                        |done, total| {
                            if show {
                                let total = total.map(|t| format!(" of {}", human_bytes(t))).unwrap_or_default();
                                eprint!("\r\x1b[Kdownloading {}{total}", human_bytes(done));
                            }
                        },
                    )
                    .await?;
                if show {
                    eprintln!();
                }
                if json {
                    print_json(&serde_json::json!({"path": output, "size": size}))?;
                } else {
                    crate::say!("{} ({})", output.display(), human_bytes(size));
                }
            }
            GitlabAction::Mr { action } => action.run(gitlab).await?,
        }
        Ok(())
    }
}

impl MrAction {
    async fn run(self, gitlab: &Gitlab) -> Result<(), Failure> {
        match self {
            MrAction::List { project, state, source_branch, target_branch, limit, out } => {
                let filter = MergeRequestFilter { source_branch, target_branch, state: Some(state) };
                let list: Vec<_> =
                    gitlab.merge_requests(ProjectRef::parse(&project), &filter).take(limit).try_collect().await?;
                if out.json {
                    print_json(&list)?;
                } else {
                    let mut t = Table::new(&["IID", "STATE", "BRANCHES", "TITLE", "AUTHOR", "URL"]);
                    for m in &list {
                        t.row(vec![
                            format!("!{}", m.iid),
                            m.state.clone(),
                            format!("{} → {}", m.source_branch, m.target_branch),
                            m.title.clone(),
                            m.author.as_ref().map(|a| a.username.clone()).unwrap_or_default(),
                            m.web_url.clone(),
                        ]);
                    }
                    t.print()?;
                }
            }
            MrAction::Create {
                project,
                source_branch,
                target_branch,
                title,
                description,
                labels,
                remove_source_branch,
                squash,
                out,
            } => {
                if title.trim().is_empty() {
                    return Err(Failure::usage("--title must not be empty"));
                }
                let params = CreateMergeRequest {
                    source_branch,
                    target_branch,
                    title,
                    description,
                    labels: (!labels.is_empty()).then(|| labels.join(",")),
                    remove_source_branch: remove_source_branch.then_some(true),
                    squash: squash.then_some(true),
                };
                let mr = gitlab.create_merge_request(ProjectRef::parse(&project), &params).await?;
                if out.json {
                    print_json(&mr)?;
                } else {
                    crate::say!("merge request !{} opened: {}", mr.iid, mr.web_url);
                }
            }
        }
        Ok(())
    }
}

async fn follow_trace(
    gitlab: &Gitlab,
    project: ProjectRef,
    job: JobId,
    follow: bool,
    interval: Duration,
) -> Result<(), Failure> {
    let mut offset = 0;
    let mut out = std::io::stdout().lock();
    let mut pace = crate::orchestrator::tail::Pace::new(interval, crate::orchestrator::tail::Pace::MAX);
    loop {
        // Read the status first: output written before the job ended is then surely in the read
        // that follows, so the last read after completion misses nothing.
        let finished = if follow { gitlab.job(project.clone(), job).await?.status.is_completed() } else { true };
        let chunk = gitlab.job_trace_from(project.clone(), job, offset).await?;
        if chunk.reset && offset > 0 {
            writeln!(out, "\n--- the log was restarted (job retried or erased) ---")?;
        }
        out.write_all(&chunk.data)?;
        out.flush()?;
        offset = chunk.next_offset;
        if finished {
            return Ok(());
        }
        tokio::time::sleep(pace.after(!chunk.data.is_empty())).await;
    }
}

fn opt_time(t: Option<&cloudci_gitlab::types::Timestamp>) -> String {
    t.map(|t| t.at().format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default()
}

pub(super) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}
