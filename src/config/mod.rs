//! `cloudci.toml`: where GitLab is, how webhooks reach us, and what to build for which boards.
//!
//! Found at `--config`, else `$CLOUDCI_CONFIG`, else `./cloudci.toml`, else
//! `$XDG_CONFIG_HOME/cloudci/config.toml`. Every error names the file, the line and the key.
//! Secrets never live in the file: the GitLab token comes from an environment variable or a file.
//!
//! One room per section: a section's types, defaults and checks live in its own file
//! (`gitlab.rs` for `[gitlab]`, ...), [`load`] and [`parse`] find and read the file and run each
//! section's checks in turn, `error.rs` says what went wrong and where. A new section is a new
//! file, a field on [`Config`], and (if it has rules beyond its types) one line in `parse`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

mod api;
mod error;
mod gitlab;
mod load;
mod notify;
mod projects;
mod relay;
mod retention;
mod store;
mod targets;
#[cfg(test)]
mod tests;
mod webhook;

pub use api::ApiSection;
pub use error::ConfigError;
pub use gitlab::{DEFAULT_MAX_CONCURRENT_PIPELINES, GitlabSection, TokenError};
pub use load::{candidates, load, parse};
pub use notify::NotifySection;
pub use projects::{AfterSuccess, MergeRequestConfig, ProjectConfig, PromoteConfig};
pub use relay::{RelaySection, check_relay_url};
pub use retention::RetentionSection;
pub use store::StoreSection;
pub use targets::TargetConfig;
pub use webhook::{DurabilitySetting, TunnelKind, WebhookSection};

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[gitlab]`
    #[serde(default)]
    pub gitlab: GitlabSection,
    /// `[webhook]`
    #[serde(default)]
    pub webhook: WebhookSection,
    /// `[api]`
    #[serde(default)]
    pub api: ApiSection,
    /// `[store]`
    #[serde(default)]
    pub store: StoreSection,
    /// `[targets.<name>]`: CI variables per embedded target.
    #[serde(default)]
    pub targets: BTreeMap<String, TargetConfig>,
    /// `[projects.<name>]`
    #[serde(default)]
    pub projects: BTreeMap<String, ProjectConfig>,
    /// `[groups]`: `name = ["project", ...]`.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<Spanned<String>>>,
    /// `[notify]`
    #[serde(default)]
    pub notify: NotifySection,
    /// `[retention]`: how long the daemon keeps deliveries, events, logs and artifacts.
    #[serde(default)]
    pub retention: RetentionSection,
    /// `[relay]`: `cloudci relay`, the team's shared receiver.
    #[serde(default)]
    pub relay: RelaySection,
    /// The file it came from (set by [`load`]); relative paths inside are relative to its folder.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl Config {
    /// Resolves a path written in the file: relative paths are relative to the file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        let joined = match (&self.source, p.is_relative()) {
            (Some(src), true) => src.parent().map(|d| d.join(p)).unwrap_or_else(|| p.to_owned()),
            _ => p.to_owned(),
        };
        // Absolute, so paths the daemon records (logs, artifacts) mean the same to every reader,
        // whatever directory it or they were started in.
        std::path::absolute(&joined).unwrap_or(joined)
    }
}

/// Serde's default for switches that are on unless turned off.
fn yes() -> bool {
    true
}
