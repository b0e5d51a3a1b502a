//! `cloudci serve --relay URL` (`[relay] url`): the daemon takes GitLab's events from the team
//! relay instead of a tunnel and hooks of its own.
//!
//! It opens a session with the developer's own GitLab token (`POST /v1/sessions`, renewed when
//! three quarters of its life are over), follows the relay's `GET /v1/events` with
//! `Last-Event-ID`, and writes each event into the daemon's own log with the relay's seq as the
//! checkpoint, in one transaction ([`Hub::mirror`]): from there the hub hands it to everything
//! downstream exactly as a delivery's events (build records, the pipeline follower, artifacts,
//! merge requests, notifications, the local `/v1/events`, the dashboard). A restart resumes
//! after the last event committed, never before it, never after.
//!
//! When the relay cannot be reached (or will not open a session), the daemon's health says so
//! ([`Problem::RelayUnreachable`]: `/v1/health`, `cloudci status --daemon`, the dashboard), one
//! log line says so, and it retries with capped exponential backoff and jitter; once the relay
//! answers, the stream resumes from the relay's log, not from GitLab. A 401 on the stream (an
//! expired session, a relay whose key changed) opens a new session at once. Neither the
//! developer's GitLab token nor the relay's bearer token reaches a log line, an error or `Debug`.
//!
//! One file (~420 lines with its tests): the session, the stream, its frames and the backoff
//! are one loop's parts.

use std::time::Duration;

use cloudci_webhook::{BuildEvent, Hub, Problem};
use futures_util::StreamExt;
use rand::RngExt;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

/// How long the stream may be silent before the connection is taken for dead: the relay sends
/// a heartbeat every 15 s, so three are missing.
const SILENCE: Duration = Duration::from_secs(45);
/// The first wait after a failure, doubled after each further one up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// The longest wait between two attempts (a team's daemons, jittered, keep a restarted relay
/// from being hit all at once, and none waits long once it is back).
const MAX_RETRY: Duration = Duration::from_secs(10);
/// Opening a connection, and whole requests other than the stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A stream that lasted this long was a working connection: the backoff starts over. One that
/// ends sooner (a proxy that closes it, a relay stopping) keeps backing off.
const STEADY: Duration = Duration::from_secs(5);
/// The wait after the relay refused the developer's GitLab token: each attempt costs the relay a
/// GitLab call, and the token only changes with a restart of the daemon.
const REFUSED_WAIT: Duration = Duration::from_secs(60);

/// Why the feed is not following the relay now. Never carries a token.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// No answer (refused, reset, timed out).
    #[error("cannot reach the relay at {url}: {message}")]
    Unreachable {
        /// The relay's URL.
        url: String,
        /// The transport's message (without the URL).
        message: String,
    },
    /// `POST /v1/sessions` refused the developer's GitLab token.
    #[error("the relay refused a session for this GitLab token ({status}): {message}")]
    SessionRefused {
        /// The HTTP status.
        status: u16,
        /// The relay's `error` text.
        message: String,
    },
    /// `/v1/events` answered 401: the session expired or the relay no longer knows it.
    #[error("the relay no longer accepts this daemon's session")]
    SessionExpired,
    /// Any other error answer.
    #[error("the relay answered {status}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The relay's `error` text.
        message: String,
    },
    /// An answer that is not the relay's API.
    #[error("the relay's answer is not understood: {0}")]
    Malformed(String),
    /// Not even a heartbeat for 45 s (the relay sends one every 15 s).
    #[error("the relay's event stream was silent for {} s", SILENCE.as_secs())]
    Silent,
    /// The relay ended the stream (it stopped, or a proxy closed it).
    #[error("the relay ended the event stream")]
    Ended,
    /// The daemon's own log could not take the events (they are read again after the restart
    /// of the stream: the checkpoint did not move).
    #[error(transparent)]
    Store(#[from] cloudci_webhook::StoreError),
}

/// The relay's subscriber token, and when to get the next one.
struct Session {
    token: SecretString,
    renew_at: Instant,
}

/// `POST /v1/sessions`'s answer.
#[derive(serde::Deserialize)]
struct SessionAnswer {
    token: SecretString,
    expires_at: String,
}

/// The daemon's link to a team relay.
pub struct RelayFeed {
    url: String,
    gitlab_token: SecretString,
    /// The configured projects (GitLab paths or ids), asked of the relay; all it allows when empty.
    projects: Vec<String>,
    hub: Hub,
    http: reqwest::Client,
}

impl std::fmt::Debug for RelayFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayFeed").field("url", &self.url).field("projects", &self.projects).finish_non_exhaustive()
    }
}

impl RelayFeed {
    /// A feed from the relay at `url` (its subscriber API) into `hub`, with sessions opened with
    /// `gitlab_token` (the developer's own), for `projects` (all the relay allows when empty).
    pub fn new(url: &str, gitlab_token: SecretString, projects: Vec<String>, hub: Hub) -> Self {
        cloudci_gitlab::install_tls_provider();
        // Idle connections let go before the relay's own listener closes them (see `cloudci_http`).
        let http = reqwest::Client::builder()
            .connect_timeout(REQUEST_TIMEOUT)
            .pool_idle_timeout(crate::server::IDLE / 2)
            .build()
            .unwrap_or_default();
        Self { url: url.trim_end_matches('/').to_owned(), gitlab_token, projects, hub, http }
    }

    /// Follows the relay until the task is dropped.
    pub async fn run(self) {
        let health = self.hub.health().clone();
        let mut session: Option<Session> = None;
        let mut retry = Backoff::default();
        // A 401 on the stream is answered with a new session at once, but only once in a row.
        let mut renewed_for_401 = false;
        loop {
            match self.connect(&mut session).await {
                Ok((resp, after)) => {
                    let resuming = after.map_or("from now".to_owned(), |id| format!("after event {id}"));
                    if health.clear(Problem::RelayUnreachable) {
                        tracing::info!("relay at {} answers again; catching up {resuming}", self.url);
                    } else {
                        tracing::info!("following the relay at {} {resuming}", self.url);
                    }
                    renewed_for_401 = false;
                    let since = Instant::now();
                    let why = self.read(resp, &mut session).await;
                    if since.elapsed() >= STEADY {
                        retry.reset();
                    }
                    match why {
                        // A full disk or a locked database: the health says so (once), and the
                        // events are read again from the checkpoint, which did not move.
                        FeedError::Store(e) => match e.problem() {
                            Some(p) if !health.set(p, &e) => tracing::debug!("relay: cannot log its events yet: {e}"),
                            _ => tracing::warn!("relay: cannot log its events ({e}); reading them again"),
                        },
                        why => tracing::info!("relay: {why}; reconnecting"),
                    }
                }
                Err(FeedError::SessionExpired) if !renewed_for_401 => {
                    tracing::info!("{}; opening a new session", FeedError::SessionExpired);
                    session = None;
                    renewed_for_401 = true;
                    continue;
                }
                Err(e) => {
                    if matches!(e, FeedError::SessionExpired) {
                        session = None;
                    }
                    if health.set(Problem::RelayUnreachable, &e) {
                        tracing::warn!(
                            "relay unreachable: {e}; retrying with backoff (said once: `cloudci status --daemon` shows it until it is over)"
                        );
                    } else {
                        tracing::debug!("relay still unreachable: {e}");
                    }
                    if matches!(e, FeedError::SessionRefused { .. }) {
                        tokio::time::sleep(REFUSED_WAIT).await;
                        continue;
                    }
                }
            }
            tokio::time::sleep(retry.next()).await;
        }
    }

    /// A session (the one held while it is fresh), then the event stream after the checkpoint:
    /// the answer and the `Last-Event-ID` it was asked with.
    async fn connect(&self, session: &mut Option<Session>) -> Result<(reqwest::Response, Option<u64>), FeedError> {
        let token = match session.take().filter(|s| s.renew_at > Instant::now()) {
            Some(s) => session.insert(s),
            None => session.insert(self.open_session().await?),
        }
        .token
        .clone();
        let after = self.hub.relay_cursor(&self.url).await?;
        let mut req = self
            .http
            .get(format!("{}/v1/events", self.url))
            .bearer_auth(token.expose_secret())
            .header(ACCEPT, "text/event-stream");
        if !self.projects.is_empty() {
            req = req.query(&[("project", self.projects.join(","))]);
        }
        if let Some(id) = after {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        match resp.status() {
            s if s.is_success() => {
                let kind = resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
                match kind {
                    Some(k) if k.starts_with("text/event-stream") => Ok((resp, after)),
                    other => Err(FeedError::Malformed(format!(
                        "/v1/events answered {} instead of an event stream: is this the relay's subscriber API?",
                        other.unwrap_or("no content type")
                    ))),
                }
            }
            StatusCode::UNAUTHORIZED => Err(FeedError::SessionExpired),
            s => Err(FeedError::Refused { status: s.as_u16(), message: error_text(resp).await }),
        }
    }

    /// `POST /v1/sessions` with the developer's GitLab token.
    async fn open_session(&self) -> Result<Session, FeedError> {
        let mut gitlab_token = HeaderValue::from_str(self.gitlab_token.expose_secret())
            .map_err(|_| FeedError::Malformed("the GitLab token is not a valid header value".into()))?;
        gitlab_token.set_sensitive(true);
        let resp = self
            .http
            .post(format!("{}/v1/sessions", self.url))
            .header("PRIVATE-TOKEN", gitlab_token)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(FeedError::SessionRefused { status: status.as_u16(), message: error_text(resp).await });
        }
        if !status.is_success() {
            return Err(FeedError::Refused { status: status.as_u16(), message: error_text(resp).await });
        }
        let answer: SessionAnswer = resp.json().await.map_err(|e| FeedError::Malformed(e.without_url().to_string()))?;
        let expires = chrono::DateTime::parse_from_rfc3339(&answer.expires_at)
            .map_err(|e| FeedError::Malformed(format!("expires_at {:?}: {e}", answer.expires_at)))?;
        let life = (expires.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().unwrap_or_default();
        tracing::info!("relay: session opened, valid until {}", answer.expires_at);
        Ok(Session { token: answer.token, renew_at: Instant::now() + life * 3 / 4 })
    }

    /// Reads the stream into the daemon's log until it breaks; renews the session meanwhile.
    async fn read(&self, resp: reqwest::Response, session: &mut Option<Session>) -> FeedError {
        let mut body = resp.bytes_stream();
        let mut frames = Frames::default();
        loop {
            let renew_at = session.as_ref().map_or_else(|| Instant::now() + SILENCE, |s| s.renew_at);
            tokio::select! {
                chunk = tokio::time::timeout(SILENCE, body.next()) => {
                    let chunk = match chunk {
                        Err(_) => return FeedError::Silent,
                        Ok(None) => return FeedError::Ended,
                        Ok(Some(Err(e))) => return self.unreachable(e),
                        Ok(Some(Ok(chunk))) => chunk,
                    };
                    let events = frames.push(&chunk);
                    if !events.is_empty()
                        && let Err(e) = self.hub.mirror(&self.url, events).await
                    {
                        return e.into();
                    }
                }
                // The stream goes on with the token it was opened with; the next connection
                // uses the new one.
                () = tokio::time::sleep_until(renew_at) => match self.open_session().await {
                    Ok(s) => *session = Some(s),
                    Err(e) => {
                        tracing::warn!("relay: renewing the session: {e}; trying again in 30 s");
                        if let Some(s) = session.as_mut() {
                            s.renew_at = Instant::now() + Duration::from_secs(30);
                        }
                    }
                },
            }
        }
    }

    /// The transport's failure, with its causes (reqwest's own text is only "error sending
    /// request") and without the URL.
    fn unreachable(&self, e: reqwest::Error) -> FeedError {
        let e = e.without_url();
        let mut message = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            message = format!("{message}: {c}");
            cause = c.source();
        }
        FeedError::Unreachable { url: self.url.clone(), message }
    }
}

/// The `error` text of an error answer (the relay's JSON errors), or nothing.
async fn error_text(resp: reqwest::Response) -> String {
    let body = resp.bytes().await.unwrap_or_default();
    serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Capped exponential backoff with jitter: each wait is between half and all of the current
/// step, so a team's daemons do not come back in step.
#[derive(Debug)]
struct Backoff {
    step: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { step: FIRST_RETRY }
    }
}

impl Backoff {
    fn reset(&mut self) {
        self.step = FIRST_RETRY;
    }

    fn next(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(MAX_RETRY);
        let half = step / 2;
        half + Duration::from_millis(rand::rng().random_range(0..=half.as_millis() as u64))
    }
}

/// Server-Sent Events frames, from chunks as they arrive (a frame, or a character, may span two).
#[derive(Debug, Default)]
struct Frames {
    buf: Vec<u8>,
}

impl Frames {
    /// The events that `chunk` completes, with their relay seqs.
    fn push(&mut self, chunk: &[u8]) -> Vec<BuildEvent> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let frame: Vec<u8> = self.buf.drain(..end + 2).collect();
            out.extend(event_of(&frame));
        }
        out
    }
}

/// One frame's event: `None` for a heartbeat, or what is not an event (said once, in the log).
fn event_of(frame: &[u8]) -> Option<BuildEvent> {
    let Ok(text) = std::str::from_utf8(frame) else {
        tracing::warn!("relay: a frame that is not UTF-8; skipped");
        return None;
    };
    let (mut id, mut kind, mut data) = (None, None, String::new());
    for line in text.lines().filter(|l| !l.starts_with(':')) {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = value.parse::<u64>().ok(),
            "event" => kind = Some(value),
            "data" => {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            _ => {}
        }
    }
    if data.is_empty() {
        return None;
    }
    if kind == Some("resync") {
        // Sessions never get one (the relay's log removes nothing yet); an operator's stream may.
        tracing::warn!("relay: it removed events this daemon had not seen ({data}); going on after them");
    }
    match serde_json::from_str::<BuildEvent>(&data) {
        Ok(mut e) => {
            if let Some(id) = id {
                e.seq = id;
            }
            Some(e)
        }
        Err(_) if kind == Some("resync") => None,
        Err(e) => {
            tracing::warn!("relay: an event this daemon cannot read ({e}); skipped");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_anywhere_give_their_events_with_the_relays_ids() {
        let mut e =
            BuildEvent::new(cloudci_webhook::EventKind::Job, 7, "Job Hook", cloudci_webhook::EventSource::Webhook);
        e.seq = 3;
        e.job_name = Some("build: [ünïcode]".into());
        let mut stream = b":\n\n".to_vec();
        stream.extend_from_slice(&cloudci_webhook::frame(&e));
        e.seq = 9;
        stream.extend_from_slice(&cloudci_webhook::frame(&e));
        stream.extend_from_slice(b"id: 10\nevent: other\ndata: not json\n\n");
        for cut in 0..stream.len() {
            let mut frames = Frames::default();
            let mut got = frames.push(&stream[..cut]);
            got.extend(frames.push(&stream[cut..]));
            assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 9], "cut at {cut}");
            assert_eq!(got[0].job_name.as_deref(), Some("build: [ünïcode]"));
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_starts_over() {
        let mut b = Backoff::default();
        let waits: Vec<Duration> = (0..10).map(|_| b.next()).collect();
        assert!(waits[0] >= FIRST_RETRY / 2 && waits[0] <= FIRST_RETRY, "{waits:?}");
        assert!(waits.iter().all(|w| *w <= MAX_RETRY), "{waits:?}");
        assert!(waits[9] >= MAX_RETRY / 2, "{waits:?}");
        b.reset();
        assert!(b.next() <= FIRST_RETRY);
    }

    /// A stand-in relay on loopback: sessions always open, `/v1/events` answers `events`.
    async fn fake_relay(events: axum::routing::MethodRouter) -> String {
        let app = axum::Router::new()
            .route(
                "/v1/sessions",
                axum::routing::post(|| async {
                    let expires = chrono::Utc::now() + chrono::Duration::hours(1);
                    axum::Json(serde_json::json!({"token": "eyJ-relay-token", "expires_at": expires.to_rfc3339()}))
                }),
            )
            .route("/v1/events", events);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    /// Runs a feed against `url` until its health reports the relay unreachable; the detail.
    async fn problem_with(url: &str) -> String {
        let hub = Hub::new(std::sync::Arc::new(cloudci_webhook::Store::in_memory().unwrap()));
        let feed = RelayFeed::new(url, SecretString::from("glpat-developer"), vec![], hub.clone());
        let task = tokio::spawn(feed.run());
        let report = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let Some(r) = hub.health().reports().into_iter().find(|r| r.kind == Problem::RelayUnreachable) {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the relay was never reported unreachable");
        task.abort();
        report.detail
    }

    #[tokio::test]
    async fn what_is_not_the_relays_event_stream_is_a_problem_named_as_such() {
        let html = fake_relay(axum::routing::get(|| async { axum::response::Html("<html>a login page</html>") })).await;
        let detail = problem_with(&html).await;
        assert!(detail.contains("instead of an event stream"), "{detail}");
        // A 401 right after a new session: not taken for an expired one again and again.
        let refusing = fake_relay(axum::routing::get(|| async { axum::http::StatusCode::UNAUTHORIZED })).await;
        let detail = problem_with(&refusing).await;
        assert!(detail.contains("no longer accepts this daemon's session"), "{detail}");
        assert!(!detail.contains("eyJ") && !detail.contains("glpat"), "{detail}");
    }

    #[test]
    fn debug_shows_no_token() {
        let hub = Hub::new(std::sync::Arc::new(cloudci_webhook::Store::in_memory().unwrap()));
        let feed = RelayFeed::new("http://relay.example/", SecretString::from("glpat-secret-token"), vec![], hub);
        let shown = format!("{feed:?}");
        assert!(shown.contains("http://relay.example") && !shown.contains("glpat-secret-token"), "{shown}");
    }
}
