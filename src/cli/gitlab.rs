//! `cloudci gitlab ...`: the GitLab client from the command line, like `glab ci`.

// Doc comments here are also the `--help` text, where a bare URL reads best.
#![allow(rustdoc::bare_urls)]

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use cloudci_gitlab::types::{CreatePipeline, PipelineVariable, Status};
use cloudci_gitlab::{Gitlab, JobFilter, JobId, PipelineFilter, PipelineId, ProjectRef};
use futures_util::{StreamExt, TryStreamExt};
use secrecy::SecretString;

use super::Failure;
use crate::output::{Table, print_json, stderr_is_terminal};

/// Talk to GitLab directly. The server comes from `--gitlab-url` or `GITLAB_HOST` (default
/// https://gitlab.com), the token from `GITLAB_TOKEN` (never from the command line, where other
/// users could read it).
#[derive(Debug, Args)]
pub struct GitlabCommand {
    /// GitLab server, e.g. https://gitlab.example.com.
    #[arg(long, global = true, env = "GITLAB_HOST", value_name = "URL")]
    gitlab_url: Option<String>,

    /// Print GitLab's objects as JSON (a list as one JSON array).
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    action: GitlabAction,
}

#[derive(Debug, Subcommand)]
enum GitlabAction {
    /// Show a pipeline, or start one (`pipeline create`).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Pipeline {
        #[command(subcommand)]
        create: Option<PipelineCreate>,
        /// Project id or path (group/name).
        #[arg(required = true)]
        project: Option<String>,
        /// Pipeline id.
        #[arg(required = true)]
        pipeline_id: Option<u64>,
    },
    /// List a project's pipelines, newest first.
    Pipelines {
        /// Project id or path.
        project: String,
        /// Only this branch or tag.
        #[arg(long = "ref", value_name = "REF")]
        git_ref: Option<String>,
        /// Only this status (created, pending, running, success, failed, canceled, ...).
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// List a pipeline's jobs.
    Jobs {
        /// Project id or path.
        project: String,
        /// Pipeline id.
        pipeline_id: u64,
        /// Include jobs that were retried.
        #[arg(long)]
        include_retried: bool,
    },
    /// Print a job's log; with --follow, keep printing until the job ends.
    Trace {
        /// Project id or path.
        project: String,
        /// Job id.
        job_id: u64,
        /// Keep reading new output until the job finishes.
        #[arg(long, short)]
        follow: bool,
        /// Seconds between reads when following.
        #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
        interval: f64,
    },
    /// Download a job's artifact archive (a zip).
    Artifacts {
        /// Project id or path.
        project: String,
        /// Job id.
        job_id: u64,
        /// Where to write the archive.
        #[arg(long, short, value_name = "FILE")]
        output: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum PipelineCreate {
    /// Start a pipeline.
    Create {
        /// Project id or path.
        project: String,
        /// Branch, tag or commit to build.
        #[arg(long = "ref", value_name = "REF")]
        git_ref: String,
        /// A CI variable for every job, KEY=VALUE; repeatable.
        #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_var)]
        vars: Vec<(String, String)>,
        /// A file-type CI variable (the job sees a path to a file holding VALUE); repeatable.
        #[arg(long = "file-var", value_name = "KEY=VALUE", value_parser = parse_var)]
        file_vars: Vec<(String, String)>,
    },
}

fn parse_var(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((k, v)) if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
            Ok((k.to_owned(), v.to_owned()))
        }
        Some(_) => Err(format!("{raw:?}: a variable name has only letters, digits and _")),
        None => Err(format!("{raw:?} is not KEY=VALUE")),
    }
}

/// `GITLAB_HOST` may be a bare host name, as glab accepts.
fn server_url(raw: Option<&str>) -> String {
    match raw.map(str::trim).filter(|s| !s.is_empty()) {
        None => "https://gitlab.com".to_owned(),
        Some(s) if s.contains("://") => s.to_owned(),
        Some(host) => format!("https://{host}"),
    }
}

impl GitlabCommand {
    /// Runs the subcommand.
    pub async fn run(self) -> Result<(), Failure> {
        let gitlab = self.client()?;
        let json = self.json;
        match self.action {
            GitlabAction::Pipeline {
                create: Some(PipelineCreate::Create { project, git_ref, vars, file_vars }),
                ..
            } => {
                let mut params = CreatePipeline::new(git_ref);
                params.variables.extend(vars.into_iter().map(|(k, v)| PipelineVariable::env(k, v)));
                params.variables.extend(file_vars.into_iter().map(|(k, v)| PipelineVariable::file(k, v)));
                let pipeline = gitlab.create_pipeline(ProjectRef::parse(&project), &params).await?;
                if json {
                    print_json(&pipeline)?;
                } else {
                    crate::say!("pipeline {} created: {} ({})", pipeline.id, pipeline.web_url, pipeline.status);
                }
            }
            GitlabAction::Pipeline { project: Some(project), pipeline_id: Some(id), .. } => {
                let p = gitlab.pipeline(ProjectRef::parse(&project), PipelineId(id)).await?;
                if json {
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
            GitlabAction::Pipelines { project, git_ref, status, limit } => {
                let filter = PipelineFilter {
                    git_ref,
                    status: status.as_deref().map(Status::parse),
                    per_page: Some(limit.clamp(1, 100)),
                    ..Default::default()
                };
                let list: Vec<_> =
                    gitlab.pipelines(ProjectRef::parse(&project), &filter).take(limit).try_collect().await?;
                if json {
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
            GitlabAction::Jobs { project, pipeline_id, include_retried } => {
                let filter = JobFilter { include_retried, ..Default::default() };
                let mut jobs: Vec<_> = gitlab
                    .pipeline_jobs(ProjectRef::parse(&project), PipelineId(pipeline_id), &filter)
                    .try_collect()
                    .await?;
                // GitLab lists newest first; a table reads better in run order.
                jobs.sort_by_key(|j| j.id);
                if json {
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
                follow_trace(&gitlab, ProjectRef::parse(&project), JobId(job_id), follow, interval).await?;
            }
            GitlabAction::Artifacts { project, job_id, output } => {
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
        }
        Ok(())
    }

    fn client(&self) -> Result<Gitlab, Failure> {
        let url = server_url(self.gitlab_url.as_deref());
        let mut builder = Gitlab::builder(url);
        match std::env::var("GITLAB_TOKEN") {
            Ok(token) if !token.trim().is_empty() => builder = builder.private_token(SecretString::from(token)),
            _ => tracing::debug!("GITLAB_TOKEN is not set; only public projects are visible"),
        }
        builder.build().map_err(|e| Failure::usage(e.to_string()))
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
        tokio::time::sleep(interval).await;
    }
}

fn opt_time(t: Option<&cloudci_gitlab::types::Timestamp>) -> String {
    t.map(|t| t.at().format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default()
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_and_hosts() {
        assert_eq!(parse_var("BOARD=nucleo=f4").unwrap(), ("BOARD".into(), "nucleo=f4".into()));
        assert!(parse_var("BOARD").is_err());
        assert!(parse_var("BO ARD=x").is_err());
        assert_eq!(server_url(None), "https://gitlab.com");
        assert_eq!(server_url(Some("gitlab.example.com")), "https://gitlab.example.com");
        assert_eq!(server_url(Some("http://127.0.0.1:9")), "http://127.0.0.1:9");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
