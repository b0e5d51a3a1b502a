//! `[relay]`: `cloudci relay`, the team's shared receiver (its listeners and secrets). The
//! database is named only by the environment (`CLOUDCI_RELAY_DATABASE_URL`): a connection
//! string may hold a password, and secrets never live in the file.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::Config;

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
}

impl Default for RelaySection {
    fn default() -> Self {
        Self { listen: default_listen(), api_listen: default_api_listen(), secrets: None, gitlab_url: None }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8790))
}

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8791))
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
