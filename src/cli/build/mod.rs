//! `cloudci build`: plan, then start and follow the builds through the daemon when one answers
//! (`daemon.rs`), else in this process; `--dry-run` says what would happen (`dry_run.rs`);
//! `summary.rs` prints how they ended.

use std::sync::Arc;

use clap::Args;

use crate::cli::Failure;
use crate::config::Config;
use crate::daemon::gitlab_client;
use crate::orchestrator::{self, BuildOutcome, EventFeed, Orchestrator, Quiet, Reporter, Request, StderrReporter};
use crate::output::stderr_is_terminal;
use crate::sse_client::{DaemonClient, DaemonClientError};
use crate::state::StateDir;

mod daemon;
mod dry_run;
mod summary;

use daemon::through_daemon;
use dry_run::{dry_run, lint_jobs};
pub(super) use summary::print_outcomes;

/// Build projects (or groups) for their targets: one pipeline per project × target, in
/// dependency order. Exit 0 when every build succeeded; 3 when GitLab refused the token, 4 when it
/// did not find a project, 1 otherwise.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Projects or groups from the configuration.
    #[arg(required = true, value_name = "PROJECT_OR_GROUP")]
    names: Vec<String>,
    /// Ref to build (default: each project's `ref`, else its default branch).
    #[arg(long = "ref", value_name = "REF")]
    git_ref: Option<String>,
    /// Only these targets; repeatable.
    #[arg(long = "target", value_name = "TARGET")]
    targets: Vec<String>,
    /// An extra CI variable, KEY=VALUE; repeatable.
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = super::vars::parse_var)]
    vars: Vec<(String, String)>,
    /// Show every status change as it happens (on stderr).
    #[arg(long)]
    watch: bool,
    /// Print the GitLab calls it would make, in order, and make none.
    #[arg(long)]
    dry_run: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
    /// Skip what happens after success (artifacts, merge request, promotion).
    #[arg(long)]
    no_actions: bool,
}

impl From<orchestrator::OrchestratorError> for Failure {
    fn from(e: orchestrator::OrchestratorError) -> Self {
        match e {
            orchestrator::OrchestratorError::Gitlab(g) => g.into(),
            orchestrator::OrchestratorError::Plan(p) => Self::usage(p.to_string()),
            other => Self::general(other.to_string()),
        }
    }
}

impl BuildArgs {
    /// Runs it: through the daemon when one answers (it owns the builds), else in this process.
    pub async fn run(self, config: &Config) -> Result<(), Failure> {
        let request = Request {
            names: self.names.clone(),
            git_ref: self.git_ref.clone(),
            targets: self.targets.clone(),
            variables: self.vars.iter().cloned().collect(),
        };
        let plan = orchestrator::plan(config, &request).map_err(|e| Failure::usage(e.to_string()))?;
        if self.dry_run {
            for line in dry_run(config, &plan, !self.no_actions) {
                crate::say!("{line}");
            }
            for line in lint_jobs(config, &plan).await {
                crate::say!("{line}");
            }
            return Ok(());
        }
        let state = StateDir::new(config.state_dir());
        state.ensure_usable()?;
        let progress = self.watch || (stderr_is_terminal() && !self.json);
        // Live lines and bars on a terminal (not with --json); plain lines when piped and asked
        // for (--watch); else nothing.
        let reporter: Arc<dyn Reporter> = if stderr_is_terminal() && !self.json {
            Arc::new(crate::output::TerminalProgress::default())
        } else if progress {
            Arc::new(StderrReporter)
        } else {
            Arc::new(Quiet)
        };
        let (log_dir, outcomes) = match DaemonClient::find(&state).await {
            Some(daemon) => {
                through_daemon(&daemon, &state, &request, !self.no_actions, reporter, progress, self.watch).await?
            }
            None => {
                let store = crate::builds::SqliteBuilds::open(&state.root().join("builds.db"))
                    .map_err(|e| Failure::general(e.to_string()))?;
                let config = Arc::new(config.clone());
                let gitlab = gitlab_client(&config)?;
                let orchestrator = Orchestrator::new(config, gitlab, Arc::new(store), EventFeed::None, state.root())
                    .with_reporter(reporter, self.watch);
                let finished = orchestrator.run(&plan, !self.no_actions).await?;
                (finished.log_dir, finished.outcomes)
            }
        };
        print_outcomes(&outcomes, self.json, Some(&log_dir))?;
        outcome_failure(&outcomes).map_or(Ok(()), Err)
    }
}

/// The exit for a finished run: 0 when every build succeeded; else 3 when GitLab refused one
/// for authentication or permission, 4 when it did not find something, 1 otherwise.
pub(super) fn outcome_failure(outcomes: &[BuildOutcome]) -> Option<Failure> {
    if outcomes.iter().all(BuildOutcome::succeeded) {
        return None;
    }
    let refused = |codes: &[u16]| outcomes.iter().any(|o| o.gitlab_status.is_some_and(|s| codes.contains(&s)));
    let mut failure = Failure::general("some builds did not succeed");
    if refused(&[401, 403]) {
        failure.code = 3;
        failure.message = "GitLab refused the token for some builds (see above)".into();
    } else if refused(&[404]) {
        failure.code = 4;
        failure.message = "GitLab did not find what some builds need (see above)".into();
    }
    Some(failure)
}

pub(super) fn daemon_failure(e: DaemonClientError) -> Failure {
    let code = match &e {
        DaemonClientError::Refused { status: 401 | 403, .. } => 3,
        DaemonClientError::Refused { status: 404, .. } => 4,
        DaemonClientError::Refused { status: 400 | 422, .. } => 2,
        _ => 1,
    };
    Failure { message: e.to_string(), code }
}
