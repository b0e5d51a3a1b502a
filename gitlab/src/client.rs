//! The HTTP transport: base URL, authentication, retries, redirects, timeouts, decoding and
//! pagination. Endpoint methods live in `api/` and describe requests as [`Request`] values.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt, stream};
use reqwest::header::{HeaderMap, LINK, LOCATION};
use reqwest::{Method, Response, StatusCode};
use secrecy::SecretString;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;
use url::Url;

use crate::error::{authority, describe, gitlab_message};
use crate::retry::{RetryPolicy, rate_limit_wait};
use crate::{Auth, Error};

/// Items per page when listing: GitLab's maximum.
const PER_PAGE: usize = 100;
/// Redirect hops followed before giving up.
const MAX_REDIRECTS: usize = 10;

/// A GitLab REST v4 client. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Gitlab {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// `https://host[/relative-root]/api/v4/`
    base: Url,
    auth: Auth,
    retry: RetryPolicy,
    timeout: Duration,
}

impl fmt::Debug for Gitlab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gitlab")
            .field("base", &self.inner.base.as_str())
            .field("auth", &self.inner.auth)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Gitlab`] client.
#[derive(Debug)]
pub struct GitlabBuilder {
    url: String,
    auth: Auth,
    retry: RetryPolicy,
    timeout: Duration,
    connect_timeout: Duration,
    user_agent: String,
}

impl Gitlab {
    /// Starts building a client for the GitLab at `url` (`https://gitlab.com`, a self-managed
    /// instance with or without a relative root, or a URL already ending in `/api/v4`).
    pub fn builder(url: impl Into<String>) -> GitlabBuilder {
        GitlabBuilder {
            url: url.into(),
            auth: Auth::None,
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            user_agent: concat!("cloudci/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }

    /// A client with an access token and default settings.
    pub fn new(url: impl Into<String>, token: SecretString) -> Result<Self, Error> {
        Self::builder(url).private_token(token).build()
    }

    /// The API base, e.g. `https://gitlab.com/api/v4/`.
    pub fn api_url(&self) -> &Url {
        &self.inner.base
    }

    /// The instance's web root, e.g. `https://gitlab.com/`.
    pub fn web_url(&self) -> Url {
        let mut url = self.inner.base.clone();
        let path = url.path().trim_end_matches('/').trim_end_matches("/api/v4").to_owned();
        url.set_path(&format!("{path}/"));
        url
    }
}

impl GitlabBuilder {
    /// Authenticate with a personal/project/group access token (`PRIVATE-TOKEN`).
    pub fn private_token(mut self, token: SecretString) -> Self {
        self.auth = Auth::PrivateToken(token);
        self
    }

    /// Authenticate with an OAuth 2 token (`Authorization: Bearer`).
    pub fn oauth_token(mut self, token: SecretString) -> Self {
        self.auth = Auth::OAuth(token);
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Limit for one API call, and for each read of a download (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Limit for establishing a connection (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The `User-Agent` to send.
    pub fn user_agent(mut self, agent: impl Into<String>) -> Self {
        self.user_agent = agent.into();
        self
    }

    /// Builds the client.
    pub fn build(self) -> Result<Gitlab, Error> {
        crate::install_tls_provider();
        let base = api_base(&self.url)?;
        // Checked here so that a token unusable in a header fails at start-up, not on first use.
        self.auth.header()?;
        let http = reqwest::Client::builder()
            .user_agent(self.user_agent)
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.timeout)
            // Redirects are followed by hand: the token must not follow a redirect to another host
            // (artifact downloads go through a CDN on gitlab.com), and reqwest only strips the
            // standard `Authorization` header, not `PRIVATE-TOKEN`.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Config(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Gitlab { inner: Arc::new(Inner { http, base, auth: self.auth, retry: self.retry, timeout: self.timeout }) })
    }
}

fn api_base(raw: &str) -> Result<Url, Error> {
    let mut url = Url::parse(raw.trim()).map_err(|e| Error::Config(format!("invalid GitLab URL {raw:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(Error::Config(format!("invalid GitLab URL {raw:?}: expected http(s)://host")));
    }
    if url.password().is_some() || !url.username().is_empty() {
        return Err(Error::Config("the GitLab URL must not contain credentials; use GITLAB_TOKEN".into()));
    }
    url.set_query(None);
    url.set_fragment(None);
    let path = url.path().trim_end_matches('/');
    let path = path.strip_suffix("/api/v4").unwrap_or(path).to_owned();
    url.set_path(&format!("{path}/api/v4/"));
    Ok(url)
}

/// Whether a request may be sent again after a failure that leaves its effect unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idempotency {
    /// GET, PUT, DELETE: doing it twice is the same as once.
    Idempotent,
    /// POST that creates or starts something.
    Write,
}

/// One API request, described as data by the endpoint methods.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    method: Method,
    /// Relative to the API base (`projects/1/pipelines`), or absolute for a `Link` next page.
    target: Target,
    query: Vec<(String, String)>,
    body: Option<serde_json::Value>,
    headers: HeaderMap,
    idempotency: Idempotency,
    /// Apply the per-call timeout (off for downloads, which are bounded per read instead).
    whole_timeout: bool,
}

#[derive(Debug, Clone)]
enum Target {
    Path(String),
    Url(Url),
}

impl Request {
    pub(crate) fn new(method: Method, path: impl Into<String>) -> Self {
        let idempotency = if method == Method::POST { Idempotency::Write } else { Idempotency::Idempotent };
        Self {
            method,
            target: Target::Path(path.into()),
            query: Vec::new(),
            body: None,
            headers: HeaderMap::new(),
            idempotency,
            whole_timeout: true,
        }
    }

    pub(crate) fn get(path: impl Into<String>) -> Self {
        Self::new(Method::GET, path)
    }

    pub(crate) fn post(path: impl Into<String>) -> Self {
        Self::new(Method::POST, path)
    }

    pub(crate) fn put(path: impl Into<String>) -> Self {
        Self::new(Method::PUT, path)
    }

    pub(crate) fn delete(path: impl Into<String>) -> Self {
        Self::new(Method::DELETE, path)
    }

    pub(crate) fn query(mut self, key: &str, value: impl ToString) -> Self {
        self.query.push((key.to_owned(), value.to_string()));
        self
    }

    pub(crate) fn query_opt(self, key: &str, value: Option<impl ToString>) -> Self {
        match value {
            Some(v) => self.query(key, v),
            None => self,
        }
    }

    pub(crate) fn json(mut self, body: &impl serde::Serialize) -> Result<Self, Error> {
        let value = serde_json::to_value(body).map_err(|e| Error::Config(format!("cannot encode request: {e}")))?;
        self.body = Some(value);
        Ok(self)
    }

    pub(crate) fn streaming(mut self) -> Self {
        self.whole_timeout = false;
        self
    }

    /// `GET /projects/1/pipelines`, for messages and logs; never includes the query.
    fn endpoint(&self) -> String {
        match &self.target {
            Target::Path(p) => format!("{} /{}", self.method, p),
            Target::Url(u) => format!("{} {}", self.method, u.path()),
        }
    }
}

enum Attempt {
    Done(Response),
    Retry { wait: Duration, why: String },
    Fail(Error),
}

impl Gitlab {
    fn url_for(&self, req: &Request) -> Result<Url, Error> {
        let mut url = match &req.target {
            Target::Path(p) => self
                .inner
                .base
                .join(p.trim_start_matches('/'))
                .map_err(|e| Error::Config(format!("bad API path {p:?}: {e}")))?,
            Target::Url(u) => u.clone(),
        };
        if !req.query.is_empty() {
            url.query_pairs_mut().extend_pairs(req.query.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
        Ok(url)
    }

    fn same_origin(&self, url: &Url) -> bool {
        url.origin() == self.inner.base.origin()
    }

    /// Sends `req`, retrying as the policy allows, and returns a successful (2xx) response.
    pub(crate) async fn send(&self, req: &Request) -> Result<Response, Error> {
        let endpoint = req.endpoint();
        let url = self.url_for(req)?;
        let mut attempt = 0u32;
        loop {
            match self.attempt(req, &endpoint, url.clone(), attempt).await {
                Attempt::Done(resp) => return Ok(resp),
                Attempt::Fail(err) => return Err(err),
                Attempt::Retry { wait, why } => {
                    tracing::warn!(
                        endpoint = %endpoint,
                        attempt = attempt + 1,
                        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        "GitLab request failed ({why}); retrying"
                    );
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn attempt(&self, req: &Request, endpoint: &str, url: Url, attempt: u32) -> Attempt {
        let policy = &self.inner.retry;
        let can_retry = attempt < policy.max_retries;
        let idempotent = req.idempotency == Idempotency::Idempotent;
        let resp = match self.send_following_redirects(req, url).await {
            Ok(resp) => resp,
            Err(Error::Transport { source, host, .. }) => {
                // A connect error means nothing reached GitLab: safe to retry any request.
                let nothing_sent = source.is_connect();
                if can_retry && (nothing_sent || idempotent) {
                    return Attempt::Retry { wait: policy.backoff(attempt), why: describe(&host, &source) };
                }
                if source.is_timeout() {
                    return Attempt::Fail(if idempotent {
                        Error::Timeout { endpoint: endpoint.to_owned(), host, timeout: self.inner.timeout }
                    } else {
                        Error::MaybeApplied {
                            endpoint: endpoint.to_owned(),
                            cause: format!("no answer from {host} in time"),
                        }
                    });
                }
                return Attempt::Fail(if nothing_sent || idempotent {
                    Error::Transport { endpoint: endpoint.to_owned(), host, source }
                } else {
                    Error::MaybeApplied { endpoint: endpoint.to_owned(), cause: describe(&host, &source) }
                });
            }
            Err(other) => return Attempt::Fail(other),
        };
        let status = resp.status();
        if status.is_success() {
            return Attempt::Done(resp);
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            // A throttled request was not performed, so even a write may be sent again.
            let asked = rate_limit_wait(resp.headers(), chrono::Utc::now());
            let wait = asked.unwrap_or_else(|| policy.backoff(attempt));
            if can_retry && wait <= policy.max_rate_limit_wait {
                return Attempt::Retry { wait, why: "429 Too Many Requests".into() };
            }
            return Attempt::Fail(Error::RateLimited { endpoint: endpoint.to_owned(), retry_after: asked });
        }
        let transient = matches!(status.as_u16(), 500 | 502 | 503 | 504);
        if transient && idempotent && can_retry {
            return Attempt::Retry { wait: policy.backoff(attempt), why: status.to_string() };
        }
        let status_text = status.to_string();
        let body = resp.bytes().await.unwrap_or_default();
        let message = gitlab_message(&body, &status_text);
        let endpoint = endpoint.to_owned();
        Attempt::Fail(match status.as_u16() {
            401 => Error::Unauthorized { endpoint, message },
            403 => Error::Forbidden { endpoint, message },
            404 => Error::NotFound { endpoint, message },
            s if transient && !idempotent => Error::MaybeApplied { endpoint, cause: format!("{s}: {message}") },
            s => Error::Api { endpoint, status: s, message },
        })
    }

    async fn send_following_redirects(&self, req: &Request, mut url: Url) -> Result<Response, Error> {
        let mut method = req.method.clone();
        let mut body = req.body.as_ref();
        for _ in 0..=MAX_REDIRECTS {
            let mut builder = self.inner.http.request(method.clone(), url.clone()).headers(req.headers.clone());
            // The credential goes only to the GitLab instance itself.
            if self.same_origin(&url)
                && let Some((name, value)) = self.inner.auth.header()?
            {
                builder = builder.header(name, value);
            }
            if let Some(json) = body {
                builder = builder.json(json);
            }
            if req.whole_timeout {
                builder = builder.timeout(self.inner.timeout);
            }
            let resp = builder.send().await.map_err(|source| Error::transport(req.endpoint(), &url, source))?;
            let status = resp.status();
            if !status.is_redirection() || status == StatusCode::NOT_MODIFIED {
                return Ok(resp);
            }
            let Some(next) = resp.headers().get(LOCATION).and_then(|l| l.to_str().ok()).and_then(|l| url.join(l).ok())
            else {
                return Ok(resp);
            };
            if status == StatusCode::SEE_OTHER
                || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND) && method == Method::POST)
            {
                method = Method::GET;
                body = None;
            }
            tracing::debug!(from = %url.path(), to_host = next.host_str().unwrap_or(""), "following redirect");
            url = next;
        }
        Err(Error::Api { endpoint: req.endpoint(), status: 310, message: "too many redirects".into() })
    }

    /// Sends `req` and decodes a JSON answer, naming the failing field on error.
    pub(crate) async fn json<T: DeserializeOwned>(&self, req: &Request) -> Result<T, Error> {
        let resp = self.send(req).await?;
        let body = self.body(req, resp).await?;
        decode(&req.endpoint(), &body)
    }

    /// Sends `req` and ignores the answer's body.
    pub(crate) async fn ignore(&self, req: &Request) -> Result<(), Error> {
        let resp = self.send(req).await?;
        self.body(req, resp).await.map(drop)
    }

    pub(crate) async fn body(&self, req: &Request, resp: Response) -> Result<Bytes, Error> {
        let url = resp.url().clone();
        resp.bytes().await.map_err(|source| {
            if source.is_timeout() {
                Error::Timeout { endpoint: req.endpoint(), host: authority(&url), timeout: self.inner.timeout }
            } else {
                Error::transport(req.endpoint(), &url, source)
            }
        })
    }

    /// Every item of a list endpoint, page after page, as a stream. Follows `Link: rel="next"`, or
    /// `x-next-page` when there is no `Link`; never relies on `x-total`, which GitLab omits above
    /// 10,000 items. Stop early by dropping the stream (or `take(n)`).
    pub(crate) fn paged<T>(
        &self,
        req: Request,
        per_page: Option<usize>,
    ) -> impl Stream<Item = Result<T, Error>> + Send + 'static
    where
        T: DeserializeOwned + Send + 'static,
    {
        let first = req.query("per_page", per_page.unwrap_or(PER_PAGE).clamp(1, PER_PAGE));
        let client = self.clone();
        stream::try_unfold(Some(first), move |next| {
            let client = client.clone();
            async move {
                let Some(req) = next else { return Ok(None) };
                let resp = client.send(&req).await?;
                let mut following = client.next_page(&req, resp.headers());
                // A server that names the same page again would make this loop forever.
                if let Some(next) = &following
                    && client.url_for(next).ok() == client.url_for(&req).ok()
                {
                    tracing::warn!(endpoint = %req.endpoint(), "the next page is this page again; stopping");
                    following = None;
                }
                let body = client.body(&req, resp).await?;
                let items: Vec<T> = decode(&req.endpoint(), &body)?;
                Ok(Some((items, following)))
            }
        })
        .map_ok(|items| stream::iter(items.into_iter().map(Ok)))
        .try_flatten()
    }

    fn next_page(&self, req: &Request, headers: &HeaderMap) -> Option<Request> {
        let link_next = headers
            .get_all(LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(parse_next_link);
        if let Some(next) = link_next {
            match Url::parse(&next) {
                // A next link to another host would take the token with it: ignore it.
                Ok(url) if self.same_origin(&url) => {
                    let mut following = req.clone();
                    following.target = Target::Url(url);
                    following.query.clear();
                    return Some(following);
                }
                _ => tracing::warn!("ignoring a pagination link to another host"),
            }
        }
        let page = headers.get("x-next-page")?.to_str().ok()?.trim();
        if page.is_empty() {
            return None;
        }
        // Rebuild the current URL with only `page` replaced (it may itself come from a `Link`).
        let mut url = self.url_for(req).ok()?;
        let kept: Vec<(String, String)> =
            url.query_pairs().filter(|(k, _)| k != "page").map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        url.query_pairs_mut().clear().extend_pairs(kept).append_pair("page", page);
        let mut following = req.clone();
        following.target = Target::Url(url);
        following.query.clear();
        Some(following)
    }

    /// Streams the answer to `req` into `dest` (through `dest.part`, renamed when complete),
    /// reporting `(bytes so far, total if known)` to `progress`. Returns the size.
    pub(crate) async fn download(
        &self,
        req: &Request,
        dest: &Path,
        mut progress: impl FnMut(u64, Option<u64>) + Send,
    ) -> Result<u64, Error> {
        let resp = self.send(req).await?;
        let total = resp.content_length();
        let url = resp.url().clone();
        let part = dest.with_file_name(format!(
            "{}.part",
            dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "download".into())
        ));
        let io = |source| Error::Io { path: dest.to_owned(), source };
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(io)?;
        }
        let result = async {
            let mut file = tokio::fs::File::create(&part).await.map_err(io)?;
            let mut written = 0u64;
            let mut chunks = resp.bytes_stream();
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|source| Error::transport(req.endpoint(), &url, source))?;
                file.write_all(&chunk).await.map_err(io)?;
                written += chunk.len() as u64;
                progress(written, total);
            }
            file.flush().await.map_err(io)?;
            file.sync_all().await.map_err(io)?;
            if let Some(expected) = total.filter(|t| *t != written) {
                return Err(Error::Decode {
                    endpoint: req.endpoint(),
                    path: ".".into(),
                    message: format!("download ended after {written} of {expected} bytes"),
                });
            }
            tokio::fs::rename(&part, dest).await.map_err(io)?;
            Ok(written)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&part).await;
        }
        result
    }
}

fn decode<T: DeserializeOwned>(endpoint: &str, body: &[u8]) -> Result<T, Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| Error::Decode {
        endpoint: endpoint.to_owned(),
        path: e.path().to_string(),
        message: e.into_inner().to_string(),
    })
}

/// `<https://x/api/v4/projects?page=2>; rel="next"` → the URL, for the `next` relation only.
fn parse_next_link(part: &str) -> Option<String> {
    let mut pieces = part.split(';');
    let target = pieces.next()?.trim().strip_prefix('<')?.strip_suffix('>')?;
    pieces
        .any(|p| {
            let p = p.trim();
            p.strip_prefix("rel=")
                .map(|r| r.trim_matches('"').split_whitespace().any(|r| r.eq_ignore_ascii_case("next")))
                .unwrap_or(false)
        })
        .then(|| target.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_forms() {
        for (raw, want) in [
            ("https://gitlab.com", "https://gitlab.com/api/v4/"),
            ("https://gitlab.com/", "https://gitlab.com/api/v4/"),
            ("https://gitlab.com/api/v4", "https://gitlab.com/api/v4/"),
            ("https://h.example/gitlab/", "https://h.example/gitlab/api/v4/"),
            ("http://127.0.0.1:8080?x=1", "http://127.0.0.1:8080/api/v4/"),
        ] {
            assert_eq!(api_base(raw).unwrap().as_str(), want, "{raw}");
        }
        assert!(api_base("gitlab.com").is_err());
        assert!(api_base("ftp://gitlab.com").is_err());
        assert!(api_base("https://user:pw@gitlab.com").is_err());
    }

    #[test]
    fn web_url_strips_the_api_path() {
        let c = Gitlab::builder("https://h.example/gitlab").build().unwrap();
        assert_eq!(c.web_url().as_str(), "https://h.example/gitlab/");
    }

    #[test]
    fn link_header_next() {
        let h = r#"<https://g/api/v4/p?page=1&per_page=3>; rel="prev", <https://g/api/v4/p?page=3&per_page=3>; rel="next", <https://g/api/v4/p?page=1>; rel="first""#;
        let next = h.split(',').find_map(parse_next_link);
        assert_eq!(next.as_deref(), Some("https://g/api/v4/p?page=3&per_page=3"));
        assert_eq!(parse_next_link(r#"<https://g/x>; rel="last""#), None);
    }

    #[test]
    fn debug_never_shows_the_token() {
        let c = Gitlab::new("https://gitlab.example", SecretString::from("glpat-SECRET123")).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("SECRET123"), "{shown}");
        assert!(shown.contains("gitlab.example"));
    }
}
