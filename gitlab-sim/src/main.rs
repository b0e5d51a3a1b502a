//! `gitlab-sim --listen 127.0.0.1:0 --token TOKEN --project GROUP/NAME=PATH [--project ...]
//! [--faults SPEC] [--seed N] [--state DIR]`
//!
//! Prints `gitlab-sim listening on http://HOST:PORT` as its first line, then serves until
//! interrupted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gitlab_sim::{FaultSpec, Sim, SimConfig};

/// A local stand-in for GitLab: REST API v4 subset, real pipeline runs, GitLab-style webhooks.
#[derive(Debug, Parser)]
#[command(name = "gitlab-sim", version)]
struct Args {
    /// Address to listen on; port 0 picks a free one. Loopback only is advised: the sim runs the
    /// projects' scripts.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The access token clients must send (PRIVATE-TOKEN or Authorization: Bearer).
    #[arg(long, env = "GITLAB_SIM_TOKEN", hide_env_values = true)]
    token: String,
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
    let config = SimConfig {
        listen: args.listen,
        token: args.token,
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
