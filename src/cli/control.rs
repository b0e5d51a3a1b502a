//! `cloudci cancel`, `cloudci retry`, `cloudci source`: acting on one build. Through the
//! daemon's API when one answers (it owns the builds it started and follows them on); else
//! directly with GitLab and the build store, following the build to its end in this process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::Failure;
use super::build::{daemon_failure, print_outcomes};
use crate::builds::{BuildRecord, BuildStatus, BuildStore, SqliteBuilds};
use crate::config::Config;
use crate::orchestrator::{BuildOutcome, EventFeed, Orchestrator, OrchestratorError, Quiet, StderrReporter};
use crate::sse_client::{DaemonClient, DaemonClientError};
use crate::state::StateDir;

/// How long `cloudci cancel` waits for GitLab to say the pipeline settled.
const CANCEL_PATIENCE: Duration = Duration::from_secs(120);

fn orchestrator_failure(e: OrchestratorError) -> Failure {
    match e {
        OrchestratorError::NoBuild(id) => Failure { message: format!("no build {id} (see `cloudci status`)"), code: 4 },
        other => other.into(),
    }
}

/// The orchestrator of this process, for when no daemon answers.
fn local(config: &Config, state: &StateDir, progress: bool) -> Result<Orchestrator, Failure> {
    let store = SqliteBuilds::open(&state.root().join("builds.db")).map_err(|e| Failure::general(e.to_string()))?;
    let config = Arc::new(config.clone());
    let gitlab = crate::daemon::gitlab_client(&config)?;
    let reporter: Arc<dyn crate::orchestrator::Reporter> =
        if progress { Arc::new(StderrReporter) } else { Arc::new(Quiet) };
    Ok(Orchestrator::new(config, gitlab, Arc::new(store), EventFeed::None, state.root()).with_reporter(reporter, false))
}

/// Polls the daemon until build `id` is final (or `patience` ran out).
async fn daemon_wait(daemon: &DaemonClient, id: i64, patience: Option<Duration>) -> Result<BuildRecord, Failure> {
    let deadline = patience.map(|p| tokio::time::Instant::now() + p);
    loop {
        let b = daemon.build(id).await.map_err(daemon_failure)?;
        if b.status.is_final() || deadline.is_some_and(|d| tokio::time::Instant::now() > d) {
            return Ok(b);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn refused_as_not_found(e: DaemonClientError, id: i64) -> Failure {
    match e {
        DaemonClientError::Refused { status: 404, .. } => {
            Failure { message: format!("no build {id} (see `cloudci status`)"), code: 4 }
        }
        DaemonClientError::Refused { status: 409, message } => Failure::general(message),
        other => daemon_failure(other),
    }
}

/// Cancel a build: its pipeline on GitLab, or its place in the queue. Waits until GitLab says
/// the pipeline settled; exit 0 when the build ended canceled or had finished already.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The build id.
    id: i64,
}

impl CancelArgs {
    /// Runs it.
    pub async fn run(self, config: &Config) -> Result<(), Failure> {
        let state = StateDir::new(config.state_dir());
        let b = match DaemonClient::find(&state).await {
            Some(daemon) => {
                daemon.cancel(self.id).await.map_err(|e| refused_as_not_found(e, self.id))?;
                daemon_wait(&daemon, self.id, Some(CANCEL_PATIENCE)).await?
            }
            None => {
                let o = local(config, &state, false)?;
                o.cancel(self.id).await.map_err(orchestrator_failure)?;
                tokio::time::timeout(CANCEL_PATIENCE, o.settle(self.id))
                    .await
                    .map_err(|_| {
                        Failure::general(format!("GitLab did not settle build {}'s pipeline in time", self.id))
                    })?
                    .map_err(orchestrator_failure)?
            }
        };
        match b.status {
            BuildStatus::Canceled => crate::say!("build {}: canceled", b.id),
            s if s.is_final() => crate::say!("build {}: already {s}", b.id),
            s => crate::say!("build {}: {s} (GitLab is still canceling it)", b.id),
        }
        Ok(())
    }
}

/// Retry a build: GitLab retries its pipeline's failed and canceled jobs (a build that never
/// got a pipeline is queued again), and the new attempt is followed to its end. Exit 0 when it
/// succeeded, 1 when not.
#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The build id.
    id: i64,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

impl RetryArgs {
    /// Runs it.
    pub async fn run(self, config: &Config) -> Result<(), Failure> {
        let state = StateDir::new(config.state_dir());
        let progress = crate::output::stderr_is_terminal() && !self.json;
        let b = match DaemonClient::find(&state).await {
            Some(daemon) => {
                daemon.retry(self.id).await.map_err(|e| refused_as_not_found(e, self.id))?;
                if progress {
                    eprintln!("[build {}] retried; following it on the daemon", self.id);
                }
                // The record says running from the retry on; it is final once the new attempt is.
                daemon_wait(&daemon, self.id, None).await?
            }
            None => {
                let o = local(config, &state, progress)?;
                o.retry(self.id).await.map_err(orchestrator_failure)?;
                o.settle(self.id).await.map_err(orchestrator_failure)?
            }
        };
        let outcome = BuildOutcome::from(&b);
        print_outcomes(std::slice::from_ref(&outcome), self.json, b.log_dir.as_deref().map(std::path::Path::new))?;
        if outcome.succeeded() { Ok(()) } else { Err(Failure::general(format!("build {} {}", b.id, b.status))) }
    }
}

/// Download the source a build was built from (GitLab's `.tar.gz` of its commit).
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// The build id.
    id: i64,
    /// Where to write the archive.
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
}

impl SourceArgs {
    /// Runs it.
    pub async fn run(self, config: &Config) -> Result<(), Failure> {
        let state = StateDir::new(config.state_dir());
        let size = match DaemonClient::find(&state).await {
            Some(daemon) => daemon.source(self.id, &self.output).await.map_err(|e| refused_as_not_found(e, self.id))?,
            None => {
                let store =
                    SqliteBuilds::open(&state.root().join("builds.db")).map_err(|e| Failure::general(e.to_string()))?;
                let b = store
                    .get(self.id)
                    .map_err(|e| Failure::general(e.to_string()))?
                    .ok_or(Failure { message: format!("no build {} (see `cloudci status`)", self.id), code: 4 })?;
                let sha = b.sha.ok_or(Failure { message: format!("build {} has no commit yet", b.id), code: 4 })?;
                let gitlab = crate::daemon::gitlab_client(config)?;
                let project = cloudci_gitlab::ProjectRef::parse(&b.gitlab);
                gitlab.download_archive(project, &sha, cloudci_gitlab::ArchiveFormat::TarGz, &self.output).await?
            }
        };
        crate::say!("{} ({size} bytes)", self.output.display());
        Ok(())
    }
}
