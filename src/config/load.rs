//! Finding, reading and checking `cloudci.toml`.

use std::path::{Path, PathBuf};

use super::error::{ConfigError, Source};
use super::{Config, gitlab, projects, relay, targets, webhook};

/// Where the configuration is looked for, in order.
pub fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_owned()];
    }
    let mut list = Vec::new();
    if let Some(p) = std::env::var_os("CLOUDCI_CONFIG").filter(|p| !p.is_empty()) {
        list.push(PathBuf::from(p));
    }
    list.push(PathBuf::from("cloudci.toml"));
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    if let Some(dir) = config_home {
        list.push(dir.join("cloudci/config.toml"));
    }
    list
}

/// Finds, reads and checks the configuration.
pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
    let places = candidates(explicit);
    let path = match explicit {
        Some(p) => p.to_owned(),
        None => places.iter().find(|p| p.is_file()).cloned().ok_or_else(|| ConfigError::NotFound(places.clone()))?,
    };
    let text = std::fs::read_to_string(&path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ConfigError::NotFound(vec![path.clone()]),
        _ => ConfigError::Read { path: path.clone(), source },
    })?;
    parse(&text, &path)
}

/// Parses and checks configuration text that came from `path`.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let src = Source { text, path };
    let mut config: Config = toml::from_str(text).map_err(|e| {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        src.at(offset, e.message().trim().to_owned())
    })?;
    // Each section's rules beyond its types, in this order (the first problem is the one told).
    gitlab::check(&config.gitlab, &src)?;
    projects::check(&config, &src)?;
    targets::check(&config.targets, &src)?;
    projects::check_groups(&config, &src)?;
    projects::check_cycles(&config, &src)?;
    webhook::check(&config.webhook, &src)?;
    relay::check(&config.relay, &src)?;
    config.source = Some(path.to_owned());
    Ok(config)
}
