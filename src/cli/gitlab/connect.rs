//! Which GitLab `cloudci gitlab` talks to, with which token, and why.

use std::path::Path;

use secrecy::SecretString;

use crate::cli::Failure;
use crate::config::{Config, ConfigError};

use super::DEFAULT_SERVER;

/// `GITLAB_HOST` may be a bare host name, as glab accepts.
pub(super) fn server_url(raw: Option<&str>) -> String {
    match raw.map(str::trim).filter(|s| !s.is_empty()) {
        None => DEFAULT_SERVER.to_owned(),
        Some(s) if s.contains("://") => s.to_owned(),
        Some(host) => format!("https://{host}"),
    }
}

/// Whether two server URLs name the same GitLab (scheme, host, port and relative root).
pub(super) fn same_server(a: &str, b: &str) -> bool {
    let key = |raw: &str| match url::Url::parse(raw.trim()) {
        Ok(u) => format!(
            "{}://{}:{}{}",
            u.scheme(),
            u.host_str().unwrap_or_default().to_ascii_lowercase(),
            u.port_or_known_default().unwrap_or_default(),
            u.path().trim_end_matches('/').trim_end_matches("/api/v4")
        ),
        Err(_) => raw.trim().trim_end_matches('/').to_owned(),
    };
    key(a) == key(b)
}

/// Where `cloudci gitlab` talks to, with which token, and why.
#[derive(Debug)]
pub(super) struct Connection {
    pub(super) url: String,
    pub(super) token: Option<SecretString>,
    /// Nothing named a server: gitlab.com by default.
    pub(super) defaulted: bool,
}

/// Picks the server and token (see [`GitlabCommand`]'s help): an explicit server
/// (`--gitlab-url`/`GITLAB_HOST`) goes with `GITLAB_TOKEN` (`env_token`), the configuration's
/// server with the configuration's token.
pub(super) fn connection(
    explicit: Option<&str>,
    config: Option<&Config>,
    env_token: Option<SecretString>,
) -> Result<Connection, Failure> {
    let explicit = explicit.map(str::trim).filter(|s| !s.is_empty());
    let config_token = |c: &Config| match c.gitlab_token() {
        Ok(t) => Ok(Some(t)),
        // A token file that is configured but unreadable is an error, not an anonymous call.
        Err(e) if c.gitlab.token_file.is_some() => Err(Failure::auth(e.to_string())),
        Err(_) => Ok(None),
    };
    Ok(match (explicit, config) {
        (Some(url), Some(c)) => {
            let url = server_url(Some(url));
            let token =
                if same_server(&url, &server_url(c.gitlab.url.as_deref())) { config_token(c)? } else { env_token };
            Connection { url, token, defaulted: false }
        }
        (Some(url), None) => Connection { url: server_url(Some(url)), token: env_token, defaulted: false },
        (None, Some(c)) => {
            Connection { url: server_url(c.gitlab.url.as_deref()), token: config_token(c)?, defaulted: false }
        }
        (None, None) => Connection { url: DEFAULT_SERVER.to_owned(), token: env_token, defaulted: true },
    })
}

/// The configuration at `--config` (which must exist), or the first one found by the default
/// lookup; `None` when there is none. A configuration that exists but is broken is an error:
/// falling back to gitlab.com would send its token to the wrong server.
pub(super) fn optional_config(explicit: Option<&Path>) -> Result<Option<Config>, Failure> {
    match crate::config::load(explicit) {
        Ok(c) => Ok(Some(c)),
        Err(ConfigError::NotFound(_)) if explicit.is_none() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn env_token() -> Option<SecretString> {
    std::env::var("GITLAB_TOKEN").ok().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).map(SecretString::from)
}
