//! The client's one error type.

use std::path::PathBuf;
use std::time::Duration;

/// Everything a GitLab call can fail with. No variant ever holds the token: requests carry it only
/// in a header marked sensitive, and error texts are built from the method, the path and GitLab's
/// own message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// 401: no token, or a wrong, revoked or expired one.
    #[error("{endpoint}: 401 Unauthorized: {message} (check the token)")]
    Unauthorized {
        /// `METHOD /path` of the request.
        endpoint: String,
        /// GitLab's message.
        message: String,
    },
    /// 403: the token is valid but may not do this (role, scope).
    #[error("{endpoint}: 403 Forbidden: {message}")]
    Forbidden {
        /// `METHOD /path` of the request.
        endpoint: String,
        /// GitLab's message, e.g. `insufficient_scope: ...`.
        message: String,
    },
    /// 404: it does not exist, or the token may not see it (GitLab hides private things behind 404).
    #[error("{endpoint}: 404 Not Found: {message}")]
    NotFound {
        /// `METHOD /path` of the request.
        endpoint: String,
        /// GitLab's message.
        message: String,
    },
    /// 429 still after the retries allowed, or asking for a longer wait than allowed.
    #[error("{endpoint}: rate limited by GitLab (429){}", retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    RateLimited {
        /// `METHOD /path` of the request.
        endpoint: String,
        /// How long GitLab asked to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// Any other error status, with GitLab's `message`/`error` text.
    #[error("{endpoint}: {status}: {message}")]
    Api {
        /// `METHOD /path` of the request.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// GitLab's message (string or per-field validation errors, flattened).
        message: String,
    },
    /// A write whose outcome is unknown: it failed after it may have reached GitLab (timeout, 5xx,
    /// connection lost). It was not retried, so that a pipeline or merge request is never created
    /// twice; look at GitLab's state before trying again.
    #[error("{endpoint}: {cause}; not retried, because GitLab may have done it already")]
    MaybeApplied {
        /// `METHOD /path` of the request.
        endpoint: String,
        /// What happened.
        cause: String,
    },
    /// No complete answer in time.
    #[error("{endpoint}: no answer from {host} within {}s", timeout.as_secs_f32())]
    Timeout {
        /// `METHOD /path` of the request.
        endpoint: String,
        /// The server asked (`host` or `host:port`; never a path or query).
        host: String,
        /// The limit.
        timeout: Duration,
    },
    /// The connection failed (DNS, refused, TLS, reset), e.g.
    /// `GET /projects/1/pipelines: cannot reach gitlab.example.com: connection refused`.
    #[error("{endpoint}: {}", describe(host, source))]
    Transport {
        /// `METHOD /path` of the request.
        endpoint: String,
        /// The server it was sent to (`host` or `host:port`; never a path or query).
        host: String,
        /// The cause, without the URL.
        #[source]
        source: reqwest::Error,
    },
    /// The answer was not what GitLab's API documents.
    #[error("{endpoint}: unexpected response: at `{path}`: {message}")]
    Decode {
        /// `METHOD /path` of the request.
        endpoint: String,
        /// Path of the offending field, e.g. `[3].pipeline.status` (`.` for the whole body).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Writing a download failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The client was configured wrongly.
    #[error("{0}")]
    Config(String),
}

impl Error {
    /// A transport failure of a request to `url`: names the server, never the path or query, and
    /// strips the URL from `source`.
    pub(crate) fn transport(endpoint: String, url: &url::Url, source: reqwest::Error) -> Self {
        Self::Transport { endpoint, host: authority(url), source: source.without_url() }
    }

    /// The HTTP status GitLab answered with, when the error is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Unauthorized { .. } => Some(401),
            Self::Forbidden { .. } => Some(403),
            Self::NotFound { .. } => Some(404),
            Self::RateLimited { .. } => Some(429),
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// 401 or 403.
    pub fn is_auth(&self) -> bool {
        matches!(self, Self::Unauthorized { .. } | Self::Forbidden { .. })
    }

    /// 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }
}

/// `host` or `host:port` of `url` (the port only when it is not the scheme's default).
pub(crate) fn authority(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or("?");
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// What went wrong on the network, in a few words: `connection refused`, `connection reset`,
/// `name resolution failed: ...`, or the innermost cause's own text (TLS and HTTP errors). Built
/// from the error chain of a URL-less `reqwest::Error`, so it holds no path, query or token.
pub(crate) fn network_cause(e: &reqwest::Error) -> String {
    use std::io::ErrorKind;
    let mut chain: Vec<&(dyn std::error::Error + 'static)> = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = current {
        chain.push(c);
        current = c.source();
    }
    let dns = chain.iter().any(|c| c.to_string().starts_with("dns error"));
    let innermost = chain.last().map(|c| c.to_string()).unwrap_or_default();
    let io = chain.iter().rev().find_map(|c| c.downcast_ref::<std::io::Error>());
    let text = match io.map(std::io::Error::kind) {
        Some(ErrorKind::ConnectionRefused) => "connection refused".to_owned(),
        Some(ErrorKind::ConnectionReset) => "connection reset".to_owned(),
        Some(ErrorKind::ConnectionAborted) => "connection aborted".to_owned(),
        Some(ErrorKind::TimedOut) => "timed out".to_owned(),
        Some(ErrorKind::HostUnreachable) => "host unreachable".to_owned(),
        Some(ErrorKind::NetworkUnreachable) => "network unreachable".to_owned(),
        _ => strip_os_error(&innermost),
    };
    let text = if text.is_empty() { "connection failed".to_owned() } else { text };
    if dns {
        let text = text.strip_prefix("failed to lookup address information: ").unwrap_or(&text);
        format!("cannot resolve the name: {text}")
    } else {
        text
    }
}

/// `cannot reach gitlab.example.com: connection refused` (nothing was sent), `lost the connection
/// to gitlab.example.com: ...` (it broke during the exchange), `no answer from ... in time`. For
/// error texts and retry warnings; no path, query or token.
pub(crate) fn describe(host: &str, e: &reqwest::Error) -> String {
    if e.is_timeout() {
        format!("no answer from {host} in time")
    } else if e.is_connect() {
        format!("cannot reach {host}: {}", network_cause(e))
    } else {
        format!("lost the connection to {host}: {}", network_cause(e))
    }
}

/// `Connection refused (os error 111)` → `Connection refused`.
fn strip_os_error(text: &str) -> String {
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_owned(),
        _ => text.to_owned(),
    }
}

/// Reads GitLab's error body: `{"message": "..."}`, `{"message": {"field": ["err", ...]}}`,
/// `{"error": "...", "error_description": "..."}`, or plain text such as `Retry later`.
pub(crate) fn gitlab_message(body: &[u8], status_text: &str) -> String {
    use serde_json::Value;
    fn flatten(v: &Value) -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Array(items) => items.iter().map(flatten).collect::<Vec<_>>().join(", "),
            Value::Object(map) => map.iter().map(|(k, v)| format!("{k} {}", flatten(v))).collect::<Vec<_>>().join("; "),
            other => other.to_string(),
        }
    }
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
        let mut parts = Vec::new();
        if let Some(m) = map.get("message") {
            parts.push(flatten(m));
        }
        if let Some(e) = map.get("error") {
            let mut s = flatten(e);
            if let Some(d) = map.get("error_description") {
                s = format!("{s}: {}", flatten(d));
            }
            parts.push(s);
        }
        if !parts.is_empty() {
            return parts.join("; ");
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() || text.starts_with('<') {
        // Empty, or an HTML error page from a proxy: the status says more.
        status_text.to_owned()
    } else {
        text.chars().take(300).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{authority, gitlab_message, strip_os_error};

    #[test]
    fn hosts_and_causes() {
        let url = |s: &str| url::Url::parse(s).unwrap();
        assert_eq!(authority(&url("https://gitlab.example.com/api/v4/x?private_token=s")), "gitlab.example.com");
        assert_eq!(authority(&url("http://127.0.0.1:9/api/v4/")), "127.0.0.1:9");
        assert_eq!(authority(&url("http://[::1]:8080/")), "[::1]:8080");
        assert_eq!(strip_os_error("Connection refused (os error 111)"), "Connection refused");
        assert_eq!(
            strip_os_error("invalid peer certificate: UnknownIssuer"),
            "invalid peer certificate: UnknownIssuer"
        );
    }

    #[test]
    fn reads_every_error_shape() {
        assert_eq!(gitlab_message(br#"{"message":"404 Project Not Found"}"#, "x"), "404 Project Not Found");
        assert_eq!(
            gitlab_message(br#"{"message":{"bio":["is too long (maximum is 255 characters)"]}}"#, "x"),
            "bio is too long (maximum is 255 characters)"
        );
        assert_eq!(
            gitlab_message(br#"{"error":"insufficient_scope","error_description":"needs api","scope":"api"}"#, "x"),
            "insufficient_scope: needs api"
        );
        assert_eq!(gitlab_message(b"Retry later\n", "429"), "Retry later");
        assert_eq!(gitlab_message(b"<html>bad gateway</html>", "502 Bad Gateway"), "502 Bad Gateway");
        assert_eq!(gitlab_message(b"", "500"), "500");
    }
}
