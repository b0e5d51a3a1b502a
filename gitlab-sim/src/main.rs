//! `gitlab-sim --listen 127.0.0.1:0 --token TOKEN --project GROUP/NAME=PATH [--project ...]
//! [--user NAME=TOKEN ...] [--member PATH=USER:ROLE ...] [--visibility PATH=LEVEL ...]
//! [--hook-rate-limit N] [--premium] [--faults SPEC] [--seed N] [--state DIR]`
//!
//! Prints `gitlab-sim listening on http://HOST:PORT` as its first line, then serves until
//! interrupted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gitlab_sim::{FaultSpec, Sim, SimConfig, SimMember, SimUser, Visibility};

/// A local stand-in for GitLab: REST API v4 subset, real pipeline runs, GitLab-style webhooks.
#[derive(Debug, Parser)]
#[command(name = "gitlab-sim", version)]
struct Args {
    /// Address to listen on; port 0 picks a free one. Loopback only is advised: the sim runs the
    /// projects' scripts.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The administrator's access token (user 1, root), sent as PRIVATE-TOKEN or Authorization:
    /// Bearer.
    #[arg(long, env = "GITLAB_SIM_TOKEN", hide_env_values = true)]
    token: String,
    /// Another user and their own token: NAME=TOKEN. Repeatable (ids 2, 3, ... in order); in the
    /// environment, comma-separated.
    #[arg(
        long = "user",
        value_name = "NAME=TOKEN",
        env = "GITLAB_SIM_USERS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    users: Vec<SimUser>,
    /// A file of users, one NAME=TOKEN a line (blank lines and `#` comments skipped), so tokens
    /// stay off the command line.
    #[arg(long, value_name = "FILE")]
    users_file: Option<PathBuf>,
    /// A membership: PATH=USER:ROLE, PATH a project (acme/firmware) or a group (acme), ROLE guest,
    /// planner, reporter, developer, maintainer, owner or 10-50. Group members are inherited by
    /// the group's projects and subgroups. Repeatable.
    #[arg(long = "member", value_name = "PATH=USER:ROLE")]
    members: Vec<SimMember>,
    /// Visibility of a project or group: PATH=private|internal|public (default private).
    #[arg(long = "visibility", value_name = "PATH=LEVEL", value_parser = parse_visibility)]
    visibility: Vec<(String, Visibility)>,
    /// GitLab.com's webhook rate limit: deliveries per top-level namespace per minute; the rest
    /// are dropped unsent and unlogged, as GitLab does.
    #[arg(long, value_name = "N")]
    hook_rate_limit: Option<u32>,
    /// Premium features: group webhooks.
    #[arg(long)]
    premium: bool,
    /// A project: GROUP/NAME=PATH_TO_GIT_REPO. Repeatable; ids are 1, 2, ... in order.
    #[arg(long = "project", value_name = "GROUP/NAME=PATH", required = true, value_parser = parse_project)]
    projects: Vec<(String, PathBuf)>,
    /// Faults to inject, e.g. drop=0.1,lost=0.05,duplicate=0.1,delay=0..500,reorder=0.2,api_429=0.05
    /// (`drop`: never sent nor logged; `lost`: sent, never arrives, logged as `internal error`).
    #[arg(long, default_value = "")]
    faults: FaultSpec,
    /// Seed for the faults' random choices.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Directory for builds and artifacts (default: a temporary one).
    #[arg(long = "state", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Jobs that may run at once.
    #[arg(long, default_value_t = 4)]
    runners: usize,
}

/// Why a users file cannot be read.
#[derive(Debug, thiserror::Error)]
enum UsersFileError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: {source}")]
    Line { line: usize, source: gitlab_sim::access::AccessError },
}

fn read_users(path: &std::path::Path) -> Result<Vec<SimUser>, UsersFileError> {
    let text = std::fs::read_to_string(path)?;
    let mut users = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        users.push(line.parse().map_err(|source| UsersFileError::Line { line: i + 1, source })?);
    }
    Ok(users)
}

fn parse_visibility(raw: &str) -> Result<(String, Visibility), String> {
    let (path, level) = raw.split_once('=').ok_or_else(|| format!("{raw:?} is not PATH=LEVEL"))?;
    let level = Visibility::parse(level).ok_or_else(|| format!("{level:?}: expected private, internal or public"))?;
    Ok((path.to_owned(), level))
}

fn parse_project(raw: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = raw.split_once('=').ok_or_else(|| format!("{raw:?} is not GROUP/NAME=PATH"))?;
    Ok((name.to_owned(), PathBuf::from(path)))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("GITLAB_SIM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let mut users = args.users;
    if let Some(path) = &args.users_file {
        match read_users(path) {
            Ok(more) => users.extend(more),
            Err(e) => {
                eprintln!("gitlab-sim: {}: {e}", path.display());
                return ExitCode::from(1);
            }
        }
    }
    let config = SimConfig {
        listen: args.listen,
        token: args.token,
        users,
        members: args.members,
        visibility: args.visibility,
        hook_rate_limit: args.hook_rate_limit,
        premium: args.premium,
        projects: args.projects,
        faults: args.faults,
        seed: args.seed,
        state_dir: args.state_dir,
        runners: args.runners,
        ..SimConfig::default()
    };
    let sim = match Sim::start(config).await {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("gitlab-sim: {e}");
            return ExitCode::from(1);
        }
    };
    println!("gitlab-sim listening on {}", sim.url());
    let _ = tokio::signal::ctrl_c().await;
    drop(sim);
    ExitCode::SUCCESS
}
