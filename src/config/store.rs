//! `[store]`: the state directory (databases, logs, artifacts, generated secrets).

use std::path::PathBuf;

use serde::Deserialize;

use super::Config;

/// `[store]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// State directory (default `$XDG_STATE_HOME/cloudci`).
    pub path: Option<PathBuf>,
}

impl Config {
    /// The state directory: `[store] path`, else `$XDG_STATE_HOME/cloudci`, else
    /// `~/.local/state/cloudci`.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(p) = &self.store.path {
            return self.resolve(p);
        }
        std::env::var_os("XDG_STATE_HOME")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(|| PathBuf::from("."))
            .join("cloudci")
    }
}
