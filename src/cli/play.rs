//! `cloudci play`: start a build's manual jobs (GitLab's `POST /projects/:id/jobs/:id/play`) and
//! follow the build to its end. Through the daemon's API when one answers; else directly with
//! GitLab and the build store.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::Failure;
use super::build::{daemon_failure, print_outcomes};
use crate::builds::{BuildRecord, SqliteBuilds};
use crate::config::Config;
use crate::orchestrator::{BuildOutcome, EventFeed, Orchestrator, OrchestratorError, Quiet, Reporter, StderrReporter};
use crate::sse_client::{DaemonClient, DaemonClientError};
use crate::state::StateDir;

/// Start a build's manual jobs (in a pipeline shared by several targets, the target's own) and
/// follow it to its end. Exit 0 when it succeeded, 1 when not, 4 for no such build.
#[derive(Debug, Args)]
pub struct PlayArgs {
    /// The build id.
    id: i64,
    /// Only this manual job (default: every manual job of the build).
    #[arg(long, value_name = "NAME")]
    job: Option<String>,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

impl PlayArgs {
    /// Runs it.
    pub async fn run(self, config: &Config) -> Result<(), Failure> {
        let state = StateDir::new(config.state_dir());
        let progress = crate::output::stderr_is_terminal() && !self.json;
        let b = match DaemonClient::find(&state).await {
            Some(daemon) => {
                play_on_daemon(&daemon, self.id, self.job.as_deref()).await?;
                daemon_wait(&daemon, self.id).await?
            }
            None => {
                let store =
                    SqliteBuilds::open(&state.root().join("builds.db")).map_err(|e| Failure::general(e.to_string()))?;
                let config = Arc::new(config.clone());
                let gitlab = crate::daemon::gitlab_client(&config)?;
                let reporter: Arc<dyn Reporter> = if progress { Arc::new(StderrReporter) } else { Arc::new(Quiet) };
                let o = Orchestrator::new(config, gitlab, Arc::new(store), EventFeed::None, state.root())
                    .with_reporter(reporter, false);
                o.play(self.id, self.job.as_deref()).await.map_err(failure)?;
                o.settle(self.id).await.map_err(failure)?
            }
        };
        let outcome = BuildOutcome::from(&b);
        print_outcomes(std::slice::from_ref(&outcome), self.json, b.log_dir.as_deref().map(std::path::Path::new))?;
        if outcome.succeeded() { Ok(()) } else { Err(Failure::general(format!("build {} {}", b.id, b.status))) }
    }
}

fn failure(e: OrchestratorError) -> Failure {
    match e {
        OrchestratorError::NoBuild(id) => Failure { message: format!("no build {id} (see `cloudci status`)"), code: 4 },
        other => other.into(),
    }
}

/// `POST /v1/builds/{id}/play` on the daemon.
async fn play_on_daemon(daemon: &DaemonClient, id: i64, job: Option<&str>) -> Result<(), Failure> {
    let resp = crate::sse_client::cloudci_http()
        .post(format!("{}/v1/builds/{id}/play", daemon.api_url))
        .bearer_auth(daemon.token())
        .json(&serde_json::json!({ "job": job }))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .map_err(|e| Failure::general(format!("the daemon at {} is not reachable: {e}", daemon.api_url)))?;
    let status = resp.status().as_u16();
    if resp.status().is_success() {
        return Ok(());
    }
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    let message = body["error"].as_str().unwrap_or("refused").to_owned();
    Err(match status {
        404 => Failure { message: format!("no build {id} (see `cloudci status`)"), code: 4 },
        409 => Failure::general(message),
        _ => daemon_failure(DaemonClientError::Refused { status, message }),
    })
}

/// Polls the daemon until build `id` is final.
async fn daemon_wait(daemon: &DaemonClient, id: i64) -> Result<BuildRecord, Failure> {
    loop {
        let b = daemon.build(id).await.map_err(daemon_failure)?;
        if b.status.is_final() {
            return Ok(b);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
