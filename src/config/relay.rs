//! `[relay]`: `cloudci relay`, the team's shared receiver (its listeners and secrets), and for a
//! developer's `cloudci serve` the relay to take its events from (`url`). The database is named
//! only by the environment (`CLOUDCI_RELAY_DATABASE_URL`): a connection string may hold a
//! password, and secrets never live in the file.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::Config;
use super::error::{ConfigError, Source};

/// `[relay]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySection {
    /// The public webhook listener, behind the team's load balancer (default `127.0.0.1:8790`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The subscriber API (`/v1/events`, `/v1/openapi.json`), for the team's network (default
    /// `127.0.0.1:8791`).
    #[serde(default = "default_api_listen")]
    pub api_listen: SocketAddr,
    /// Where the relay's secrets are (path secret, `X-Gitlab-Token`, signing token, the
    /// subscriber token key), generated on first start; every instance must read the same
    /// (default: `relay/` in the state directory).
    pub secrets: Option<PathBuf>,
    /// GitLab, where developers' sessions and their access to projects are checked (the relay's
    /// own token: `gitlab-token` in the secrets directory). Without it: operator tokens only.
    pub gitlab_url: Option<String>,
    /// For a developer's `cloudci serve`: the team relay's subscriber API (e.g.
    /// `https://relay.example.com:8791`). With it the daemon opens no tunnel and no public
    /// listener and installs no hooks: it takes its events from the relay (`serve --relay`).
    pub url: Option<String>,
    /// The team's projects whose hooks the relay manages and catches up on (`--project`).
    #[serde(default)]
    pub projects: Vec<String>,
    /// Where GitLab reaches the relay (the load balancer's URL, `--public-url`).
    pub public_url: Option<String>,
}

impl Default for RelaySection {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            api_listen: default_api_listen(),
            secrets: None,
            gitlab_url: None,
            url: None,
            projects: Vec::new(),
            public_url: None,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8790))
}

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8791))
}

/// Why a relay URL is not one the daemon can subscribe to (`[relay] url`, `serve --relay`).
pub fn check_relay_url(url: &str) -> Result<(), String> {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        Ok(_) => Err(format!("relay.url must be an http:// or https:// URL, not {url:?}")),
        Err(e) => Err(format!("relay.url is not a URL ({e}): {url:?}")),
    }
}

/// `[relay]`'s rules beyond its types.
pub(super) fn check(relay: &RelaySection, src: &Source<'_>) -> Result<(), ConfigError> {
    match relay.url.as_deref().map(check_relay_url) {
        Some(Err(why)) => Err(src.at(src.section("relay"), why)),
        _ => Ok(()),
    }
}

impl Config {
    /// The relay's secrets directory: `[relay] secrets`, else `relay/` in the state directory.
    pub fn relay_secrets(&self) -> PathBuf {
        match &self.relay.secrets {
            Some(p) => self.resolve(p),
            None => self.state_dir().join("relay"),
        }
    }
}
