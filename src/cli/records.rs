//! `cloudci status`, `cloudci logs`, `cloudci artifacts`: what the build store knows.

use std::path::PathBuf;

use clap::Args;

use super::Failure;
use crate::builds::{BuildRecord, BuildStore, SqliteBuilds};
use crate::config::Config;
use crate::output::{Table, print_json};
use crate::state::StateDir;

fn store(config: &Config) -> Result<SqliteBuilds, Failure> {
    let state = StateDir::new(config.state_dir());
    state.create()?;
    SqliteBuilds::open(&state.root().join("builds.db")).map_err(|e| Failure::general(e.to_string()))
}

fn one(store: &SqliteBuilds, id: i64) -> Result<BuildRecord, Failure> {
    store
        .get(id)
        .map_err(|e| Failure::general(e.to_string()))?
        .ok_or(Failure { message: format!("no build {id} (see `cloudci status`)"), code: 4 })
}

/// Recent builds, or one build in detail.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A build id; the recent builds when omitted.
    id: Option<i64>,
    /// How many recent builds.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

impl StatusArgs {
    /// Runs it.
    pub fn run(self, config: &Config) -> Result<(), Failure> {
        let store = store(config)?;
        match self.id {
            Some(id) => {
                let b = one(&store, id)?;
                if self.json {
                    return Ok(print_json(&b)?);
                }
                let mut t = Table::new(&["FIELD", "VALUE"]);
                for (k, v) in [
                    ("build", b.id.to_string()),
                    ("project", format!("{} ({})", b.project, b.gitlab)),
                    ("target", b.target.clone()),
                    ("status", b.status.to_string()),
                    ("ref", b.git_ref.clone().unwrap_or_default()),
                    ("sha", b.sha.clone().unwrap_or_default()),
                    ("pipeline", b.pipeline_url.clone().unwrap_or_default()),
                    ("artifacts", b.artifacts.clone().unwrap_or_default()),
                    ("merge request", b.merge_request.clone().unwrap_or_default()),
                    ("reason", b.reason.clone().unwrap_or_default()),
                ] {
                    t.row(vec![k.to_owned(), v]);
                }
                for (name, j) in &b.jobs {
                    t.row(vec![format!("job {name}"), format!("{} (#{})", j.status, j.id)]);
                }
                t.print()?;
            }
            None => {
                let list = store.list(self.limit).map_err(|e| Failure::general(e.to_string()))?;
                if self.json {
                    return Ok(print_json(&list)?);
                }
                let mut t = Table::new(&["ID", "PROJECT", "TARGET", "REF", "STATUS", "PIPELINE"]);
                for b in &list {
                    t.row(vec![
                        b.id.to_string(),
                        b.project.clone(),
                        b.target.clone(),
                        b.git_ref.clone().unwrap_or_default(),
                        b.status.to_string(),
                        b.pipeline_url.clone().unwrap_or_default(),
                    ]);
                }
                t.print()?;
            }
        }
        Ok(())
    }
}

/// A build's job logs.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The build id.
    id: i64,
    /// Only this job (default: every job, in order).
    #[arg(long)]
    job: Option<String>,
    /// Follow a running job's log from GitLab until it ends.
    #[arg(long)]
    follow: bool,
}

impl LogsArgs {
    /// Runs it.
    pub async fn run(self, config: &Config) -> Result<(), Failure> {
        let b = one(&store(config)?, self.id)?;
        let jobs: Vec<(&String, &crate::builds::JobRecord)> =
            b.jobs.iter().filter(|(n, _)| self.job.as_ref().is_none_or(|j| j == *n)).collect();
        if jobs.is_empty() {
            let known: Vec<&str> = b.jobs.keys().map(String::as_str).collect();
            return Err(Failure {
                message: format!(
                    "build {} has no job {:?}; its jobs: {}",
                    b.id,
                    self.job.unwrap_or_default(),
                    known.join(", ")
                ),
                code: 4,
            });
        }
        let gitlab = if self.follow || jobs.iter().any(|(_, j)| j.log.is_none()) {
            Some(crate::daemon::gitlab_client(config)?)
        } else {
            None
        };
        for (name, job) in jobs {
            if self.job.is_none() {
                crate::say!("==> {name} ({}) <==", job.status);
            }
            match (&job.log, &gitlab) {
                (Some(path), _) if !self.follow => {
                    let text = std::fs::read(path).map_err(|e| Failure::general(format!("{path}: {e}")))?;
                    std::io::Write::write_all(&mut std::io::stdout(), &text)?;
                }
                (_, Some(gitlab)) => {
                    let project = cloudci_gitlab::ProjectRef::parse(&b.gitlab);
                    let job_id = cloudci_gitlab::JobId(job.id);
                    let mut offset = 0;
                    loop {
                        let finished = !self.follow || gitlab.job(project.clone(), job_id).await?.status.is_completed();
                        let chunk = gitlab.job_trace_from(project.clone(), job_id, offset).await?;
                        std::io::Write::write_all(&mut std::io::stdout(), &chunk.data)?;
                        offset = chunk.next_offset;
                        if finished {
                            break;
                        }
                        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    }
                }
                _ => crate::say!("(no log)"),
            }
        }
        Ok(())
    }
}

/// A build's firmware: copy its artifacts folder.
#[derive(Debug, Args)]
pub struct ArtifactsArgs {
    /// The build id.
    id: i64,
    /// Copy them here (default: just print where they are).
    #[arg(long, short, value_name = "DIR")]
    output: Option<PathBuf>,
}

impl ArtifactsArgs {
    /// Runs it.
    pub fn run(self, config: &Config) -> Result<(), Failure> {
        let b = one(&store(config)?, self.id)?;
        let dir = b.artifacts.ok_or(Failure { message: format!("build {} has no artifacts", b.id), code: 4 })?;
        match self.output {
            None => crate::say!("{dir}"),
            Some(out) => {
                let n = copy_dir(std::path::Path::new(&dir), &out)?;
                crate::say!("{n} files copied to {}", out.display());
            }
        }
        Ok(())
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(to)?;
    let mut n = 0;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            n += copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), dest)?;
            n += 1;
        }
    }
    Ok(n)
}
