//! `cloudci serve`

use clap::Args;

use super::Failure;
use crate::config::Config;
use crate::daemon::Daemon;

/// Run the daemon: receive GitLab's webhooks and serve the local API until interrupted.
///
/// With --relay (`[relay] url`) the events come from the team relay instead: no tunnel, no
/// public listener, no hooks; the daemon opens a session there with your GitLab token.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Leave the GitLab hooks in place on shutdown (they are removed by default).
    #[arg(long)]
    keep_hooks: bool,
    /// Do not register hooks on GitLab (receive only what is already pointed here).
    #[arg(long)]
    no_hooks: bool,
    /// The public listener, over `[webhook] listen`.
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// The URL GitLab reaches the listener at (implies no tunnel), over `[webhook] public_url`.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// The local API's address, over `[api] listen`.
    #[arg(long, value_name = "ADDR")]
    api_listen: Option<std::net::SocketAddr>,
    /// Take the events from the team relay's subscriber API at URL (over `[relay] url`): no
    /// tunnel, no public listener, no hooks of this daemon's own.
    #[arg(long, value_name = "URL", conflicts_with_all = ["listen", "public_url", "no_hooks", "keep_hooks"])]
    relay: Option<String>,
}

impl ServeArgs {
    /// Runs until SIGINT or SIGTERM.
    pub async fn run(self, config: &Config) -> Result<(), Failure> {
        // Flags override the file.
        let mut config = config.clone();
        if let Some(addr) = self.listen {
            config.webhook.listen = addr;
        }
        if let Some(url) = &self.public_url {
            config.webhook.public_url = Some(url.clone());
            config.webhook.tunnel = Some(crate::config::TunnelKind::None);
        }
        if let Some(addr) = self.api_listen {
            config.api.listen = addr;
        }
        if let Some(url) = self.relay {
            crate::config::check_relay_url(&url).map_err(Failure::usage)?;
            config.relay.url = Some(url);
        }
        let config = &config;
        let daemon = Daemon::start(config, !self.no_hooks).await.map_err(Failure::from)?;
        match (&daemon.relay, &daemon.public_url, daemon.public_addr) {
            (Some(relay), _, _) => {
                crate::say!("taking GitLab's events from the team relay at {relay} (no tunnel, no hooks of its own)");
            }
            (None, Some(url), Some(addr)) => {
                crate::say!("receiving GitLab webhooks at {url}/hooks/… (listening on {addr})");
            }
            _ => {}
        }
        crate::say!("local API at http://{} (event stream: /v1/events)", daemon.api_addr);
        for (name, p) in &config.projects {
            crate::say!("watching {name} ({})", p.gitlab);
        }
        wait_for_shutdown().await;
        let hooks_to_remove = !(self.keep_hooks || self.no_hooks || daemon.relay.is_some());
        crate::say!("stopping{}", if hooks_to_remove { "; removing webhooks" } else { "" });
        daemon.stop(self.keep_hooks).await;
        Ok(())
    }
}

/// Resolves on SIGINT or SIGTERM.
pub(super) async fn wait_for_shutdown() {
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
