//! `[gitlab]`: where GitLab is, how the token is found, how many pipelines may run at once.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::Config;
use super::error::{ConfigError, Source};

/// `[gitlab]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitlabSection {
    /// Server URL (default `https://gitlab.com`; `GITLAB_HOST` overrides).
    pub url: Option<String>,
    /// The environment variable holding the token (default `GITLAB_TOKEN`).
    pub token_env: Option<String>,
    /// A file holding the token, used when the variable is unset.
    pub token_file: Option<PathBuf>,
    /// How many of cloudci's pipelines may run at once on this GitLab (default
    /// [`DEFAULT_MAX_CONCURRENT_PIPELINES`]); further builds wait as `queued`.
    pub max_concurrent_pipelines: Option<Spanned<u32>>,
}

/// `max_concurrent_pipelines` when none is configured: enough to keep a small runner fleet busy,
/// few enough to stay clear of GitLab's pipeline creation rate limit.
pub const DEFAULT_MAX_CONCURRENT_PIPELINES: u32 = 4;

impl GitlabSection {
    /// How many pipelines may run at once.
    pub fn max_concurrent_pipelines(&self) -> u32 {
        self.max_concurrent_pipelines.as_ref().map(|m| *m.get_ref()).unwrap_or(DEFAULT_MAX_CONCURRENT_PIPELINES)
    }
}

/// `[gitlab]`'s rules beyond its types.
pub(super) fn check(gitlab: &GitlabSection, src: &Source<'_>) -> Result<(), ConfigError> {
    if let Some(max) = &gitlab.max_concurrent_pipelines
        && *max.get_ref() == 0
    {
        return Err(src.at(
            max.span().start,
            "gitlab.max_concurrent_pipelines must be at least 1 (no pipeline could ever start)".into(),
        ));
    }
    Ok(())
}

impl Config {
    /// The GitLab server: `GITLAB_HOST`, else `[gitlab] url`, else gitlab.com.
    pub fn gitlab_url(&self) -> String {
        std::env::var("GITLAB_HOST")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .or_else(|| self.gitlab.url.clone())
            .map(|u| if u.contains("://") { u } else { format!("https://{u}") })
            .unwrap_or_else(|| "https://gitlab.com".into())
    }

    /// The GitLab token: from the variable `token_env` names (default `GITLAB_TOKEN`), else from
    /// `token_file`. The error says where it looked, never a value.
    pub fn gitlab_token(&self) -> Result<secrecy::SecretString, TokenError> {
        let var = self.gitlab.token_env.clone().unwrap_or_else(|| "GITLAB_TOKEN".into());
        if let Ok(v) = std::env::var(&var)
            && !v.trim().is_empty()
        {
            return Ok(secrecy::SecretString::from(v.trim().to_owned()));
        }
        if let Some(file) = &self.gitlab.token_file {
            let path = self.resolve(file);
            return std::fs::read_to_string(&path)
                .map(|t| secrecy::SecretString::from(t.trim().to_owned()))
                .map_err(|source| TokenError::File { path, source });
        }
        Err(TokenError::Missing { var })
    }
}

/// Why there is no GitLab token to send (exit 3, like any authentication failure).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Neither the environment variable nor a token file.
    #[error("no GitLab token: set {var} (or [gitlab] token_file)")]
    Missing {
        /// The variable looked at.
        var: String,
    },
    /// The configured token file cannot be read.
    #[error("cannot read the GitLab token from {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
