//! Talking to a running daemon's local API: its event stream, and the builds it carries (what
//! `cloudci build` uses when a daemon answers, so each pipeline has one owner).

use std::time::Duration;

use cloudci_webhook::BuildEvent;
use futures_util::{Stream, StreamExt};
use secrecy::{ExposeSecret, SecretString};

use crate::builds::BuildRecord;
use crate::state::StateDir;

/// A failure talking to the daemon. Never carries the token.
#[derive(Debug, thiserror::Error)]
pub enum DaemonClientError {
    /// The daemon could not be reached (or the connection broke).
    #[error("the daemon at {url} is not reachable: {message}")]
    Unreachable {
        /// Its API URL.
        url: String,
        /// The transport's message (without the URL's query).
        message: String,
    },
    /// It answered with an error.
    #[error("the daemon answered {status}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Its `error` text.
        message: String,
    },
    /// It answered something that is not what its API documents.
    #[error("the daemon's answer is not understood: {0}")]
    Malformed(String),
    /// Writing what it sent failed (the path and the cause).
    #[error("{0}")]
    Io(String),
}

/// An HTTP client for cloudci's own listeners (a daemon's local API, a relay). It lets go of an
/// idle connection well before the server does ([`crate::server::IDLE`]): a request sent on a
/// kept-alive connection at the moment the server closes it would fail with "connection closed
/// before message completed" (reqwest keeps idle connections 90 s by default).
pub fn cloudci_http() -> reqwest::Client {
    cloudci_gitlab::install_tls_provider();
    reqwest::Client::builder().pool_idle_timeout(crate::server::IDLE / 2).build().unwrap_or_default()
}

/// Subscribes to `{api_url}/v1/events?{query}` with a bearer token.
pub async fn subscribe(
    api_url: &str,
    token: &str,
    query: &str,
) -> Result<impl Stream<Item = BuildEvent> + Send + use<>, DaemonClientError> {
    cloudci_gitlab::install_tls_provider();
    let resp = cloudci_http()
        .get(format!("{}/v1/events?{query}", api_url.trim_end_matches('/')))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| unreachable(api_url, e))?;
    if !resp.status().is_success() {
        return Err(DaemonClientError::Refused { status: resp.status().as_u16(), message: String::new() });
    }
    let bytes = resp.bytes_stream();
    Ok(futures_util::stream::unfold((bytes, String::new()), |(mut bytes, mut buf)| async move {
        loop {
            if let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                let data: String = frame.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim_start).collect();
                if let Ok(e) = serde_json::from_str::<BuildEvent>(&data) {
                    return Some((e, (bytes, buf)));
                }
                continue;
            }
            match bytes.next().await {
                Some(Ok(chunk)) => buf.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return None,
            }
        }
    }))
}

fn unreachable(url: &str, e: reqwest::Error) -> DaemonClientError {
    DaemonClientError::Unreachable { url: url.to_owned(), message: e.without_url().to_string() }
}

/// A running daemon's builds API.
#[derive(Clone)]
pub struct DaemonClient {
    /// `http://127.0.0.1:8788`
    pub api_url: String,
    token: SecretString,
    http: reqwest::Client,
}

impl std::fmt::Debug for DaemonClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonClient").field("api_url", &self.api_url).finish_non_exhaustive()
    }
}

/// What `POST /v1/builds` answers.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct StartedBuilds {
    /// Run id.
    pub run: i64,
    /// The builds.
    pub builds: Vec<StartedBuild>,
}

/// One build of [`StartedBuilds`].
#[derive(Debug, Clone, serde::Deserialize)]
pub struct StartedBuild {
    /// Build id.
    pub id: i64,
    /// Project name.
    pub project: String,
    /// Target name.
    pub target: String,
}

impl DaemonClient {
    /// The daemon whose state directory is `state`, if one answers. Its token: `CLOUDCI_TOKEN`,
    /// else the one the daemon wrote for the CLI.
    pub async fn find(state: &StateDir) -> Option<Self> {
        let info = state.hook_info()?;
        let token = match std::env::var("CLOUDCI_TOKEN").ok().filter(|t| !t.trim().is_empty()) {
            Some(t) => SecretString::from(t),
            None => state.cli_token().ok()??,
        };
        cloudci_gitlab::install_tls_provider();
        let client = Self { api_url: info.api_url, token, http: cloudci_http() };
        let alive = client
            .http
            .get(format!("{}/v1/builds?limit=1", client.api_url))
            .bearer_auth(client.token.expose_secret())
            .timeout(Duration::from_millis(1500))
            .send()
            .await;
        match alive {
            Ok(r) if r.status().is_success() => Some(client),
            // The daemon is there but cannot serve now (out of file descriptors): it says why
            // to each request, so the commands go on talking to it.
            Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => Some(client),
            Ok(r) => {
                tracing::warn!("the daemon at {} refused the CLI's token ({})", client.api_url, r.status());
                None
            }
            Err(_) => None,
        }
    }

    /// The token, for the event stream.
    pub fn token(&self) -> &str {
        self.token.expose_secret()
    }

    async fn answer<T: serde::de::DeserializeOwned>(&self, resp: reqwest::Response) -> Result<T, DaemonClientError> {
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| unreachable(&self.api_url, e))?;
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_default();
            return Err(DaemonClientError::Refused { status: status.as_u16(), message });
        }
        serde_json::from_slice(&body).map_err(|e| DaemonClientError::Malformed(e.to_string()))
    }

    /// `GET /v1/health`: what the daemon ran out of now (a full disk, file descriptors, ...).
    pub async fn health(&self) -> Result<serde_json::Value, DaemonClientError> {
        let resp = self
            .http
            .get(format!("{}/v1/health", self.api_url))
            .bearer_auth(self.token.expose_secret())
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| unreachable(&self.api_url, e))?;
        if resp.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            // Out of file descriptors, the daemon answers with its problems instead (the shape
            // of this route's answer, `ok` false).
            let body = resp.bytes().await.map_err(|e| unreachable(&self.api_url, e))?;
            let said: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| DaemonClientError::Malformed(e.to_string()))?;
            if said["problems"].is_array() {
                return Ok(said);
            }
            let message = said["error"].as_str().unwrap_or_default().to_owned();
            return Err(DaemonClientError::Refused { status: 503, message });
        }
        self.answer(resp).await
    }

    /// `POST /v1/builds`
    pub async fn start(&self, body: &serde_json::Value) -> Result<StartedBuilds, DaemonClientError> {
        let resp = self
            .http
            .post(format!("{}/v1/builds", self.api_url))
            .bearer_auth(self.token.expose_secret())
            .json(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| unreachable(&self.api_url, e))?;
        self.answer(resp).await
    }

    /// `GET /v1/builds/{id}`
    pub async fn build(&self, id: i64) -> Result<BuildRecord, DaemonClientError> {
        let resp = self
            .http
            .get(format!("{}/v1/builds/{id}", self.api_url))
            .bearer_auth(self.token.expose_secret())
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| unreachable(&self.api_url, e))?;
        self.answer(resp).await
    }

    async fn post_action(&self, id: i64, action: &str) -> Result<BuildRecord, DaemonClientError> {
        let resp = self
            .http
            .post(format!("{}/v1/builds/{id}/{action}", self.api_url))
            .bearer_auth(self.token.expose_secret())
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| unreachable(&self.api_url, e))?;
        self.answer(resp).await
    }

    /// `POST /v1/builds/{id}/cancel`: the record, with GitLab's answer as its status.
    pub async fn cancel(&self, id: i64) -> Result<BuildRecord, DaemonClientError> {
        self.post_action(id, "cancel").await
    }

    /// `POST /v1/builds/{id}/retry`
    pub async fn retry(&self, id: i64) -> Result<BuildRecord, DaemonClientError> {
        self.post_action(id, "retry").await
    }

    /// `GET /v1/builds/{id}/log?job=&offset=`: the next piece of a job's log.
    pub async fn log(&self, id: i64, job: Option<&str>, offset: u64) -> Result<LogChunk, DaemonClientError> {
        let mut query = vec![("offset", offset.to_string())];
        if let Some(job) = job {
            query.push(("job", job.to_owned()));
        }
        let resp = self
            .http
            .get(format!("{}/v1/builds/{id}/log", self.api_url))
            .query(&query)
            .bearer_auth(self.token.expose_secret())
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| unreachable(&self.api_url, e))?;
        if !resp.status().is_success() {
            return Err(self
                .answer::<serde_json::Value>(resp)
                .await
                .err()
                .unwrap_or_else(|| DaemonClientError::Malformed("an error status with a success body".into())));
        }
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (next, job, status, complete, reset) = (
            header("x-next-offset").and_then(|v| v.parse().ok()),
            header("x-job").unwrap_or_default(),
            header("x-job-status").map(|s| cloudci_gitlab::types::Status::parse(&s)),
            header("x-log-complete").is_some_and(|v| v == "true"),
            header("x-log-reset").is_some_and(|v| v == "true"),
        );
        let data = resp.bytes().await.map_err(|e| unreachable(&self.api_url, e))?;
        Ok(LogChunk {
            next_offset: next.unwrap_or(offset + data.len() as u64),
            data,
            job,
            status: status.unwrap_or(cloudci_gitlab::types::Status::Unknown(String::new())),
            complete,
            reset,
        })
    }

    /// `GET /v1/builds/{id}/source` into `path`; returns the bytes written.
    pub async fn source(&self, id: i64, path: &std::path::Path) -> Result<u64, DaemonClientError> {
        use tokio::io::AsyncWriteExt;
        let resp = self
            .http
            .get(format!("{}/v1/builds/{id}/source", self.api_url))
            .bearer_auth(self.token.expose_secret())
            .send()
            .await
            .map_err(|e| unreachable(&self.api_url, e))?;
        if !resp.status().is_success() {
            return Err(self
                .answer::<serde_json::Value>(resp)
                .await
                .err()
                .unwrap_or_else(|| DaemonClientError::Malformed("an error status with a success body".into())));
        }
        let io = |e: std::io::Error| DaemonClientError::Io(format!("{}: {e}", path.display()));
        // Written beside the destination and renamed, so a broken download leaves no half file.
        let partial = path.with_extension("partial");
        let mut file = tokio::fs::File::create(&partial).await.map_err(io)?;
        let mut stream = resp.bytes_stream();
        let mut written = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| unreachable(&self.api_url, e))?;
            file.write_all(&chunk).await.map_err(io)?;
            written += chunk.len() as u64;
        }
        file.flush().await.map_err(io)?;
        drop(file);
        tokio::fs::rename(&partial, path).await.map_err(io)?;
        Ok(written)
    }
}

/// A piece of a job's log, from the daemon.
#[derive(Debug, Clone)]
pub struct LogChunk {
    /// The bytes after the offset asked for.
    pub data: bytes::Bytes,
    /// Where to continue.
    pub next_offset: u64,
    /// The job's name.
    pub job: String,
    /// Where the job stands.
    pub status: cloudci_gitlab::types::Status,
    /// The job ended and `data` holds the rest of its log.
    pub complete: bool,
    /// The log restarted (a retried job): `data` is from its start.
    pub reset: bool,
}
