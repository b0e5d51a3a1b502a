//! The `cloudci` command line.

mod build;
mod demo;
mod gitlab;
mod hooks;
mod records;
mod serve;
mod token;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use build::BuildArgs;
pub use demo::DemoArgs;
pub use gitlab::GitlabCommand;
pub use hooks::HooksCommand;
pub use records::{ArtifactsArgs, LogsArgs, StatusArgs};
pub use serve::ServeArgs;
pub use token::TokenCommand;

/// Start firmware builds on GitLab CI and follow them live.
#[derive(Debug, Parser)]
#[command(name = "cloudci", version, about, propagate_version = true)]
pub struct Cli {
    /// Configuration file (default: $CLOUDCI_CONFIG, ./cloudci.toml, then
    /// $XDG_CONFIG_HOME/cloudci/config.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build projects or groups for their targets, in dependency order.
    Build(BuildArgs),
    /// Everything on this machine against a simulated GitLab: build, follow, fetch, merge request.
    Demo(DemoArgs),
    /// Run the daemon: receive GitLab's webhooks, serve the local API and event stream.
    Serve(ServeArgs),
    /// Recent builds, or one in detail.
    Status(StatusArgs),
    /// A build's job logs.
    Logs(LogsArgs),
    /// A build's firmware.
    Artifacts(ArtifactsArgs),
    /// Tokens for the local API.
    Token(TokenCommand),
    /// cloudci's webhooks on GitLab.
    Hooks(HooksCommand),
    /// Talk to GitLab directly: pipelines, jobs, logs, artifacts.
    Gitlab(GitlabCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// A failed command: the one line to print and the exit code.
#[derive(Debug)]
pub struct Failure {
    /// One line for stderr; never contains a secret.
    pub message: String,
    /// 1 failure, 2 usage, 3 authentication or permission, 4 not found.
    pub code: u8,
}

impl Failure {
    /// Exit code 1 with this message.
    pub fn general(message: impl Into<String>) -> Self {
        Self { message: message.into(), code: 1 }
    }

    /// Exit code 2 (bad usage) with this message.
    pub fn usage(message: impl Into<String>) -> Self {
        Self { message: message.into(), code: 2 }
    }
}

impl From<cloudci_gitlab::Error> for Failure {
    fn from(e: cloudci_gitlab::Error) -> Self {
        let code = if e.is_auth() {
            3
        } else if e.is_not_found() {
            4
        } else {
            1
        };
        Self { message: e.to_string(), code }
    }
}

impl From<crate::config::ConfigError> for Failure {
    fn from(e: crate::config::ConfigError) -> Self {
        Self::usage(e.to_string())
    }
}

impl From<crate::daemon::DaemonError> for Failure {
    fn from(e: crate::daemon::DaemonError) -> Self {
        match e {
            crate::daemon::DaemonError::Gitlab(g) => g.into(),
            other => Self::general(other.to_string()),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Self::general(e.to_string())
    }
}

impl Cli {
    /// Runs the command.
    pub async fn run(self) -> Result<(), Failure> {
        let config = || crate::config::load(self.config.as_deref()).map_err(Failure::from);
        match self.command {
            Command::Build(args) => args.run(&config()?).await,
            Command::Demo(args) => args.run().await,
            Command::Serve(args) => args.run(&config()?).await,
            Command::Status(args) => args.run(&config()?),
            Command::Logs(args) => args.run(&config()?).await,
            Command::Artifacts(args) => args.run(&config()?),
            Command::Token(cmd) => cmd.run(&config()?),
            Command::Hooks(cmd) => cmd.run(&config()?).await,
            Command::Gitlab(cmd) => cmd.run().await,
            Command::Completions { shell } => {
                let mut cmd = <Cli as clap::CommandFactory>::command();
                clap_complete::generate(shell, &mut cmd, "cloudci", &mut std::io::stdout());
                Ok(())
            }
        }
    }
}

/// Logs go to stderr: warnings and errors by default, more with `CLOUDCI_LOG` (e.g. `debug`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLOUDCI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(crate::output::stderr_is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .try_init();
}
