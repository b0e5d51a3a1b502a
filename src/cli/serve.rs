//! `cloudci serve`

use clap::Args;

use super::Failure;
use crate::config::Config;
use crate::daemon::Daemon;

/// Run the daemon: receive GitLab's webhooks and serve the local API until interrupted.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Leave the GitLab hooks in place on shutdown (they are removed by default).
    #[arg(long)]
    keep_hooks: bool,
    /// Do not register hooks on GitLab (receive only what is already pointed here).
    #[arg(long)]
    no_hooks: bool,
}

impl ServeArgs {
    /// Runs until SIGINT or SIGTERM.
    pub async fn run(self, config: &Config) -> Result<(), Failure> {
        let daemon = Daemon::start(config, !self.no_hooks).await.map_err(Failure::from)?;
        crate::say!("receiving GitLab webhooks at {}/hooks/… (listening on {})", daemon.public_url, daemon.public_addr);
        crate::say!("local API at http://{} (event stream: /v1/events)", daemon.api_addr);
        for (name, p) in &config.projects {
            crate::say!("watching {name} ({})", p.gitlab);
        }
        wait_for_shutdown().await;
        crate::say!("stopping{}", if self.keep_hooks || self.no_hooks { "" } else { "; removing webhooks" });
        daemon.stop(self.keep_hooks).await;
        Ok(())
    }
}

async fn wait_for_shutdown() {
    #[cfg(unix)]
    {
        let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
