//! `cloudci status`, `cloudci logs`, `cloudci artifacts`: what the build store knows.

use std::io::Write as _;
use std::path::PathBuf;

use clap::Args;
use cloudci_gitlab::types::Status;

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
    /// The running daemon's health instead: what it ran out of (a full disk, file descriptors,
    /// a busy database, an unwritable log), as `GET /v1/health` says.
    #[arg(long, conflicts_with = "id")]
    daemon: bool,
}

impl StatusArgs {
    /// Runs it. Without `--daemon`, a daemon that reports a problem is mentioned on stderr (the
    /// list on stdout keeps its shape).
    pub async fn run(self, config: &Config) -> Result<(), Failure> {
        let state = StateDir::new(config.state_dir());
        let daemon = crate::sse_client::DaemonClient::find(&state).await;
        let health = match &daemon {
            Some(d) => d.health().await.ok(),
            None => None,
        };
        if self.daemon {
            let Some(health) = health else {
                return Err(Failure::general("no daemon answers for this state directory (start `cloudci serve`)"));
            };
            if self.json {
                return Ok(print_json(&health)?);
            }
            let problems = health["problems"].as_array().cloned().unwrap_or_default();
            if let Some(relay) = state.hook_info().and_then(|i| i.relay) {
                crate::say!("the daemon takes its events from the team relay at {relay}");
            }
            if problems.is_empty() {
                crate::say!("the daemon is healthy");
            }
            for p in &problems {
                crate::say!("{}", problem_line(p));
            }
            return Ok(());
        }
        for p in health.iter().flat_map(|h| h["problems"].as_array().cloned().unwrap_or_default()) {
            // Not eprintln!: a closed stderr must not turn a warning into a panic.
            let _ = writeln!(std::io::stderr(), "warning: cloudci serve: {}", problem_line(&p));
        }
        self.list(config)
    }

    fn list(self, config: &Config) -> Result<(), Failure> {
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
                    (
                        "its jobs",
                        b.selector
                            .as_ref()
                            .map(|s| format!("{} (a shared pipeline)", s.describe()))
                            .unwrap_or_default(),
                    ),
                ] {
                    if !v.is_empty() || k != "its jobs" {
                        t.row(vec![k.to_owned(), v]);
                    }
                }
                for w in &b.warnings {
                    t.row(vec!["warning".to_owned(), w.clone()]);
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
                        if b.warnings.is_empty() {
                            b.status.to_string()
                        } else {
                            format!("{} ({} warnings)", b.status, b.warnings.len())
                        },
                        b.pipeline_url.clone().unwrap_or_default(),
                    ]);
                }
                t.print()?;
            }
        }
        Ok(())
    }
}

/// `disk full since ...: what it means`
fn problem_line(p: &serde_json::Value) -> String {
    format!(
        "{} since {}: {}",
        p["kind"].as_str().unwrap_or("problem").replace('_', " "),
        p["since"].as_str().unwrap_or("?"),
        p["message"].as_str().unwrap_or("")
    )
}

/// A build's job logs.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The build id.
    id: i64,
    /// Only this job (default: every job, in order; with --follow, the running job, else the
    /// next to run, else the first failed, else the last).
    #[arg(long)]
    job: Option<String>,
    /// Follow the job's log as it grows, until the job ends; exit 0 when it succeeded, 1 when
    /// it did not. Through the daemon when one runs, else from GitLab.
    #[arg(long)]
    follow: bool,
}

/// How often a followed log is read again.
const LOG_POLL: std::time::Duration = std::time::Duration::from_secs(1);

impl LogsArgs {
    /// Runs it.
    pub async fn run(self, config: &Config) -> Result<(), Failure> {
        if self.follow {
            return self.follow(config).await;
        }
        let b = one(&store(config)?, self.id)?;
        if let Err(e @ crate::builds::NoJob::Unknown { .. }) = b.pick_job(self.job.as_deref()) {
            return Err(Failure { message: e.to_string(), code: 4 });
        }
        if b.jobs.is_empty() {
            let e = b.pick_job(None).expect_err("no jobs");
            return Err(Failure { message: e.to_string(), code: 4 });
        }
        let jobs: Vec<(&String, &crate::builds::JobRecord)> =
            b.jobs.iter().filter(|(n, _)| self.job.as_ref().is_none_or(|j| j == *n)).collect();
        let gitlab =
            if jobs.iter().any(|(_, j)| j.log.is_none()) { Some(crate::daemon::gitlab_client(config)?) } else { None };
        for (name, job) in jobs {
            if self.job.is_none() {
                crate::say!("==> {name} ({}) <==", job.status);
            }
            match (&job.log, &gitlab) {
                (Some(path), _) => {
                    let text = std::fs::read(path).map_err(|e| Failure::general(format!("{path}: {e}")))?;
                    std::io::Write::write_all(&mut std::io::stdout(), &text)?;
                }
                (None, Some(gitlab)) => {
                    let project = cloudci_gitlab::ProjectRef::parse(&b.gitlab);
                    let text = gitlab.job_trace(project, cloudci_gitlab::JobId(job.id)).await?;
                    std::io::Write::write_all(&mut std::io::stdout(), &text)?;
                }
                (None, None) => crate::say!("(no log)"),
            }
        }
        Ok(())
    }

    /// Prints one job's log as it grows and ends with the job: through the daemon's API when
    /// one answers, else from GitLab with the build store.
    async fn follow(self, config: &Config) -> Result<(), Failure> {
        let state = StateDir::new(config.state_dir());
        let daemon = crate::sse_client::DaemonClient::find(&state).await;
        let local = match &daemon {
            Some(_) => None,
            None => Some((store(config)?, crate::daemon::gitlab_client(config)?)),
        };
        let mut said_waiting = false;
        let mut followed: Option<(String, u64)> = None;
        let mut offset = 0;
        loop {
            let b = match (&daemon, &local) {
                (Some(d), _) => d.build(self.id).await.map_err(super::build::daemon_failure)?,
                (None, Some((store, _))) => one(store, self.id)?,
                (None, None) => unreachable!("one of the two is set"),
            };
            let picked = match &followed {
                Some((name, _)) => b.pick_job(Some(name)).map(|(n, j)| (n.to_owned(), j.clone())),
                None => b.pick_job(self.job.as_deref()).map(|(n, j)| (n.to_owned(), j.clone())),
            };
            let (name, job) = match picked {
                Ok(found) => found,
                // Not announced yet: a queued build, a pipeline just created.
                Err(e) if !b.status.is_final() && (b.jobs.is_empty() || self.job.is_none()) => {
                    if !said_waiting {
                        eprintln!("build {} is {}; waiting for its jobs…", b.id, b.status);
                        said_waiting = true;
                    }
                    tracing::debug!("{e}");
                    tokio::time::sleep(LOG_POLL).await;
                    continue;
                }
                Err(e) => return Err(Failure { message: e.to_string(), code: 4 }),
            };
            if followed.as_ref().is_none_or(|(n, id)| *n != name || *id != job.id) {
                // A retried job is a new id: its log starts again.
                if followed.is_some() {
                    offset = 0;
                }
                followed = Some((name.clone(), job.id));
            }
            let (data, next, status, complete) = match (&daemon, &local) {
                (Some(d), _) => {
                    let c = d.log(self.id, Some(&name), offset).await.map_err(super::build::daemon_failure)?;
                    (c.data, c.next_offset, c.status, c.complete)
                }
                (None, Some((_, gitlab))) => {
                    let project = cloudci_gitlab::ProjectRef::parse(&b.gitlab);
                    let id = cloudci_gitlab::JobId(job.id);
                    // Status first: what the job wrote before it ended is in the read after.
                    let status = gitlab.job(project.clone(), id).await?.status;
                    let c = gitlab.job_trace_from(project, id, offset).await?;
                    let complete = status.is_completed();
                    (c.data, c.next_offset, status, complete)
                }
                (None, None) => unreachable!("one of the two is set"),
            };
            {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                out.write_all(&data)?;
                out.flush()?;
            }
            offset = next;
            if complete {
                return match status {
                    Status::Success => Ok(()),
                    other => Err(Failure::general(format!("job {name} of build {}: {other}", self.id))),
                };
            }
            tokio::time::sleep(LOG_POLL).await;
        }
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
