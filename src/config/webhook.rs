//! `[webhook]`: the public listener GitLab's hooks reach, and how durable their log is.

use std::net::SocketAddr;

use serde::Deserialize;

use super::error::{ConfigError, Source};

/// How GitLab reaches the public listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelKind {
    /// `public_url` already forwards to `listen` (your own reverse proxy, or loopback in tests).
    None,
    /// An ngrok endpoint (`NGROK_AUTHTOKEN`), opened at start.
    Ngrok,
}

/// `[webhook]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSection {
    /// The public listener (default `127.0.0.1:8787`).
    #[serde(default = "default_webhook_listen")]
    pub listen: SocketAddr,
    /// `none` or `ngrok` (default: `none` when `public_url` is set, else `ngrok`).
    pub tunnel: Option<TunnelKind>,
    /// The URL GitLab can reach `listen` at (with `tunnel = "none"`).
    pub public_url: Option<String>,
    /// `full` (fsync every commit, survives power loss; default) or `normal` (survives crashes).
    #[serde(default)]
    pub durability: DurabilitySetting,
    /// Give hooks a GitLab 19 signing token and require signatures when GitLab confirms it.
    #[serde(default = "super::yes")]
    pub signing: bool,
    /// Seconds without news about an unfinished pipeline before GitLab's API is asked (default 30).
    #[serde(default = "default_reconcile")]
    pub reconcile_after: u64,
}

impl Default for WebhookSection {
    fn default() -> Self {
        Self {
            listen: default_webhook_listen(),
            tunnel: None,
            public_url: None,
            durability: DurabilitySetting::default(),
            signing: true,
            reconcile_after: default_reconcile(),
        }
    }
}

/// `durability = "full" | "normal"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilitySetting {
    /// fsync on every commit.
    #[default]
    Full,
    /// WAL without per-commit fsync.
    Normal,
}

/// `[webhook]`'s rules beyond its types.
pub(super) fn check(webhook: &WebhookSection, src: &Source<'_>) -> Result<(), ConfigError> {
    if webhook.tunnel == Some(TunnelKind::None) && webhook.public_url.is_none() {
        return Err(src.at(src.section("webhook"), "webhook.public_url is required with tunnel = \"none\"".into()));
    }
    Ok(())
}

fn default_webhook_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8787))
}

fn default_reconcile() -> u64 {
    30
}
