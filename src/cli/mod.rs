//! The `cloudci` command line.

mod build;
mod control;
#[cfg(feature = "demo")]
mod demo;
mod gc;
mod gitlab;
mod hooks;
mod play;
mod records;
mod relay;
mod serve;
mod token;
pub mod vars;

use std::io::{ErrorKind, Write};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use build::BuildArgs;
pub use control::{CancelArgs, RetryArgs, SourceArgs};
#[cfg(feature = "demo")]
pub use demo::DemoArgs;
pub use gc::GcArgs;
pub use gitlab::GitlabCommand;
pub use hooks::HooksCommand;
pub use play::PlayArgs;
pub use records::{ArtifactsArgs, LogsArgs, StatusArgs};
pub use relay::RelayArgs;
pub use serve::ServeArgs;
pub use token::{DashboardArgs, TokenCommand};

/// Start firmware builds on GitLab CI and follow them live.
#[derive(Debug, Parser)]
#[command(name = "cloudci", version, about, propagate_version = true)]
pub struct Cli {
    /// Configuration file (default: $CLOUDCI_CONFIG, ./cloudci.toml, then
    /// $XDG_CONFIG_HOME/cloudci/config.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Show the library's log on stderr: -v warnings, -vv progress, -vvv debug (or set
    /// `CLOUDCI_LOG` / `RUST_LOG`, e.g. `debug`). `serve` logs its progress by default.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

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
    #[cfg(feature = "demo")]
    Demo(DemoArgs),
    /// Run the daemon: receive GitLab's webhooks, serve the local API and event stream.
    Serve(ServeArgs),
    /// Run a team relay instance (webhooks into PostgreSQL, the event stream to the team), or
    /// issue a subscriber token (`relay token`).
    Relay(RelayArgs),
    /// Recent builds, or one in detail.
    Status(StatusArgs),
    /// A build's job logs.
    Logs(LogsArgs),
    /// A build's firmware.
    Artifacts(ArtifactsArgs),
    /// Cancel a build (its pipeline, or its place in the queue).
    Cancel(CancelArgs),
    /// Retry a build and follow the new attempt.
    Retry(RetryArgs),
    /// Start a build's manual jobs and follow it.
    Play(PlayArgs),
    /// Download the source a build was built from.
    Source(SourceArgs),
    /// Tokens for the local API.
    Token(TokenCommand),
    /// The running daemon's dashboard: its address with a login code for the browser (works
    /// once, within a minute; no token in the address).
    Dashboard(DashboardArgs),
    /// cloudci's webhooks on GitLab.
    Hooks(HooksCommand),
    /// Remove old deliveries, events, logs and artifacts now (`--dry-run`: only say what).
    Gc(GcArgs),
    /// Talk to GitLab directly: pipelines, jobs, logs, artifacts, merge requests.
    ///
    /// The server: --gitlab-url or GITLAB_HOST when set, else `[gitlab] url` of the configuration
    /// (--config FILE, else $CLOUDCI_CONFIG, ./cloudci.toml, ~/.config/cloudci/config.toml), else
    /// <https://gitlab.com> (said once on stderr when it is a terminal).
    ///
    /// The token: with the configuration's server, the one `cloudci build` uses (the variable
    /// `[gitlab] token_env` names, default GITLAB_TOKEN, else `token_file`); with a server from
    /// --gitlab-url or GITLAB_HOST, GITLAB_TOKEN only, so a token configured for one server is
    /// never sent to another. Never from the command line, where other users could read it.
    /// Without a token only public projects are visible.
    Gitlab(GitlabCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// A failed command: the one line to print and the exit code.
///
/// Code 0 is the quiet end: the reader of stdout went away (`cloudci status --json | head -1`),
/// which is not a failure of the command; nothing is printed and the exit status is 0.
#[derive(Debug)]
pub struct Failure {
    /// One line for stderr; never contains a secret.
    pub message: String,
    /// 1 failure, 2 usage, 3 authentication or permission, 4 not found (0: see [`Failure::quiet`]).
    pub code: u8,
}

impl Failure {
    /// Stop here, print nothing, exit 0: stdout's reader has gone (a broken pipe).
    pub fn quiet() -> Self {
        Self { message: String::new(), code: 0 }
    }

    /// Whether this is [`Failure::quiet`].
    pub fn is_quiet(&self) -> bool {
        self.code == 0
    }

    /// Exit code 1 with this message.
    pub fn general(message: impl Into<String>) -> Self {
        Self { message: message.into(), code: 1 }
    }

    /// Exit code 2 (bad usage) with this message.
    pub fn usage(message: impl Into<String>) -> Self {
        Self { message: message.into(), code: 2 }
    }

    /// Exit code 3 (authentication or permission) with this message, e.g. no usable token.
    pub fn auth(message: impl Into<String>) -> Self {
        Self { message: message.into(), code: 3 }
    }
}

/// A write to a pipe whose reader has gone, also when wrapped (as `print_json` wraps
/// serde_json's error).
pub fn is_broken_pipe(e: &std::io::Error) -> bool {
    if e.kind() == ErrorKind::BrokenPipe {
        return true;
    }
    let Some(inner) = e.get_ref() else { return false };
    inner.downcast_ref::<serde_json::Error>().and_then(serde_json::Error::io_error_kind) == Some(ErrorKind::BrokenPipe)
        || inner.downcast_ref::<std::io::Error>().is_some_and(is_broken_pipe)
}

impl From<cloudci_gitlab::Error> for Failure {
    fn from(e: cloudci_gitlab::Error) -> Self {
        if let cloudci_gitlab::Error::Io { source, .. } = &e
            && is_broken_pipe(source)
        {
            return Self::quiet();
        }
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
            crate::daemon::DaemonError::Token(e) => Self::auth(e.to_string()),
            other => Self::general(other.to_string()),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        if is_broken_pipe(&e) { Self::quiet() } else { Self::general(e.to_string()) }
    }
}

impl Cli {
    /// Runs the command.
    pub async fn run(self) -> Result<(), Failure> {
        let config = || crate::config::load(self.config.as_deref()).map_err(Failure::from);
        // Commands that keep state check its directory first, so that a bad path fails with the
        // path and the cause rather than deep inside SQLite.
        let with_state = || -> Result<crate::config::Config, Failure> {
            let config = config()?;
            crate::state::StateDir::new(config.state_dir()).ensure_usable()?;
            Ok(config)
        };
        match self.command {
            Command::Build(args) => args.run(&config()?).await,
            #[cfg(feature = "demo")]
            Command::Demo(args) => args.run().await,
            Command::Serve(args) => args.run(&with_state()?).await,
            // No configuration file is fine: flags and the environment say everything.
            Command::Relay(args) => {
                let config = match crate::config::load(self.config.as_deref()) {
                    Ok(c) => c,
                    Err(crate::config::ConfigError::NotFound(_)) if self.config.is_none() => Default::default(),
                    Err(e) => return Err(e.into()),
                };
                args.run(&config).await
            }
            Command::Status(args) => args.run(&with_state()?).await,
            Command::Logs(args) => args.run(&with_state()?).await,
            Command::Artifacts(args) => args.run(&with_state()?),
            Command::Cancel(args) => args.run(&with_state()?).await,
            Command::Retry(args) => args.run(&with_state()?).await,
            Command::Play(args) => args.run(&with_state()?).await,
            Command::Source(args) => args.run(&with_state()?).await,
            Command::Token(cmd) => cmd.run(&with_state()?),
            Command::Dashboard(args) => args.run(&with_state()?).await,
            Command::Hooks(cmd) => cmd.run(&with_state()?).await,
            Command::Gc(args) => args.run(&with_state()?),
            Command::Gitlab(cmd) => cmd.run(self.config.as_deref()).await,
            Command::Completions { shell } => {
                // Into memory first: clap_complete panics when it cannot write, e.g. into `| head`.
                let mut script = Vec::new();
                let mut cmd = <Cli as clap::CommandFactory>::command();
                clap_complete::generate(shell, &mut cmd, "cloudci", &mut script);
                let mut out = std::io::stdout().lock();
                out.write_all(&script)?;
                out.flush()?;
                Ok(())
            }
        }
    }
}

/// Logs go to stderr. A command's own output says what a user needs; the library's log (retries,
/// fallbacks) is shown only when asked for with `-v` or `CLOUDCI_LOG`/`RUST_LOG`. The daemon
/// (`serve`) logs its progress (`info`) by default: that log is its output.
pub fn init_logging(cli: &Cli) {
    let level =
        if matches!(cli.command, Command::Serve(_) | Command::Relay(_)) { cli.verbose.max(2) } else { cli.verbose };
    let default = match level {
        0 => "off",
        1 => "warn",
        2 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLOUDCI_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // A log that cannot be written (stderr redirected to a full disk) must never fail or
        // panic the code that logs (see `crate::logging`).
        .with_writer(crate::logging::stderr())
        .log_internal_errors(false)
        .with_ansi(crate::output::stderr_is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .try_init();
}
