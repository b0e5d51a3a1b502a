//! `cloudci gitlab ...`: the GitLab client from the command line, like `glab ci`.
//!
//! Rooms: this file (the commands and their arguments), `connect.rs` (which server, which
//! token), `actions.rs` (what each command does).

// Doc comments here are also the `--help` text, where a bare URL reads best.
#![allow(rustdoc::bare_urls)]

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use cloudci_gitlab::Gitlab;

use crate::cli::Failure;
use crate::cli::vars::parse_var;
use crate::output::stderr_is_terminal;

mod actions;
mod connect;
#[cfg(test)]
mod tests;

use connect::{connection, env_token, optional_config};

/// The server when neither the environment nor a configuration names one.
const DEFAULT_SERVER: &str = "https://gitlab.com";

/// `cloudci gitlab`: the server and token are chosen by `connection`; the user-facing text is
/// on `Command::Gitlab` in `cli/mod.rs` (clap takes a subcommand's help from there).
#[derive(Debug, Args)]
pub struct GitlabCommand {
    /// GitLab server, e.g. https://gitlab.example.com (over the configuration's `[gitlab] url`).
    #[arg(long, global = true, env = "GITLAB_HOST", value_name = "URL")]
    gitlab_url: Option<String>,

    #[command(subcommand)]
    action: GitlabAction,
}

/// `--json`, on the subcommands that print GitLab's objects.
#[derive(Debug, Clone, Copy, Args)]
struct Output {
    /// Print GitLab's objects as JSON (a list as one JSON array).
    #[arg(long)]
    json: bool,
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
        #[command(flatten)]
        out: Output,
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
        #[command(flatten)]
        out: Output,
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
        #[command(flatten)]
        out: Output,
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
        /// The shortest wait between reads when following, in seconds: reads come this often
        /// while the log grows and back off to 10 s while it is quiet (GitLab sends the whole
        /// log each time, gzipped).
        #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
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
        /// Print `{"path": ..., "size": ...}` when done.
        #[arg(long)]
        json: bool,
    },
    /// Merge requests: list them, or open one.
    Mr {
        #[command(subcommand)]
        action: MrAction,
    },
}

#[derive(Debug, Subcommand)]
enum MrAction {
    /// List a project's merge requests, newest first.
    List {
        /// Project id or path.
        project: String,
        /// Only in this state.
        #[arg(long, default_value = "opened", value_parser = ["opened", "closed", "merged", "locked", "all"])]
        state: String,
        /// Only from this branch.
        #[arg(long, value_name = "BRANCH")]
        source_branch: Option<String>,
        /// Only into this branch.
        #[arg(long, value_name = "BRANCH")]
        target_branch: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        out: Output,
    },
    /// Open a merge request.
    Create {
        /// Project id or path.
        project: String,
        /// The branch to merge.
        #[arg(long, short, value_name = "BRANCH")]
        source_branch: String,
        /// The branch to merge into.
        #[arg(long, short, value_name = "BRANCH")]
        target_branch: String,
        /// Its title.
        #[arg(long)]
        title: String,
        /// Its description (Markdown).
        #[arg(long, short)]
        description: Option<String>,
        /// A label; repeatable.
        #[arg(long = "label", value_name = "LABEL")]
        labels: Vec<String>,
        /// Delete the source branch when it is merged.
        #[arg(long)]
        remove_source_branch: bool,
        /// Squash the commits when it is merged.
        #[arg(long)]
        squash: bool,
        #[command(flatten)]
        out: Output,
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
        #[command(flatten)]
        out: Output,
    },
}

impl GitlabCommand {
    /// Runs the subcommand; `config` is `--config`, if given.
    pub async fn run(self, config: Option<&Path>) -> Result<(), Failure> {
        let config = optional_config(config)?;
        let conn = connection(self.gitlab_url.as_deref(), config.as_ref(), env_token())?;
        if conn.defaulted && stderr_is_terminal() {
            eprintln!(
                "note: talking to {DEFAULT_SERVER}: no GITLAB_HOST and no configuration (see `cloudci gitlab --help`)"
            );
        }
        tracing::debug!(server = %conn.url, token = conn.token.is_some(), "GitLab server");
        let anonymous = conn.token.is_none();
        let mut builder = Gitlab::builder(&conn.url);
        if let Some(token) = conn.token {
            builder = builder.private_token(token);
        }
        let gitlab = builder.build().map_err(|e| Failure::usage(e.to_string()))?;
        self.action.run(&gitlab).await.map_err(|mut f| {
            if anonymous && f.code == 3 {
                f.message.push_str("; no token was sent: set GITLAB_TOKEN");
            }
            f
        })
    }
}
