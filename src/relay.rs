//! `cloudci relay`: the team's shared receiver. Any number of instances run against one
//! PostgreSQL database (`cloudci-relay`'s [`PgLog`]), behind one load balancer; each serves:
//! - the public webhook listener, exactly as `serve` has it (the receiver's router: path secret,
//!   `X-Gitlab-Token`, GitLab 19 signatures, 25 MB, group commit, 503 + `Retry-After` whenever
//!   the database cannot take a delivery, never a 4xx for that), with `serve`'s public layers;
//! - the subscriber API: `GET /v1/events` (the daemon's SSE code and frames, `Last-Event-ID`
//!   resumes on any instance) and `GET /v1/openapi.json`.
//!
//! Each instance's group commit stores raw deliveries without a lock shared with the others;
//! its [`Sequencer`] turns stored deliveries (its own, and what a dead instance left) into
//! events, one sequencing transaction at a time across instances, so seqs stay in commit order
//! (`relay/src/sequencer.rs`); each instance tails the shared log into its own fan-out
//! ([`Tail`]), and its processor is the backstop for anything left pending.
//!
//! Subscribers: with `--gitlab-url` (`[relay] gitlab_url`) and the relay's own GitLab token
//! in its secrets directory (`gitlab-token`), a developer opens a session with their GitLab
//! token (`POST /v1/sessions`, [`sessions`]) and sees only the events of projects their GitLab
//! user may read ([`access`]). A token from `cloudci relay token` is an operator's: signed with
//! the same key, it names no GitLab user and sees every project (kept for the operator's own
//! tools and tests; whoever holds the secrets directory could sign one anyway).
//!
//! Hook management and catch-up ([`catchup`]): with GitLab, the team's projects
//! (`--project`) and the relay's public URL (`--public-url`), the instance that holds the
//! leader's advisory lock installs and looks after one hook per project and runs the daemon's
//! reconciler over the shared log; the others take over when it dies.
//!
//! # Seams for what comes next
//! - **Another bus** (NATS JetStream): replace [`Tail`]; the hub takes batches from anywhere.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use cloudci_relay::{PgLog, Sequencer, Tail};
use cloudci_webhook::{HookSecrets, Hub, Receiver, SecretFiles};
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::auth::{Jwt, TokenKeys};
use crate::api::error::{ApiError, Authorized};
use crate::api::params::ApiQuery;
use crate::api::sse::{EventsQuery, EventsState, last_event_id, scoped_filter, stream_response};

pub mod access;
pub mod catchup;
pub mod resync;
pub mod retention;
pub mod sessions;

pub use access::Access;
pub use sessions::Sessions;

/// The environment variable naming the relay's database.
pub const DATABASE_URL_ENV: &str = "CLOUDCI_RELAY_DATABASE_URL";

/// Files in the relay's secrets directory.
const PATH_SECRET: &str = "path-secret";
const HOOK_TOKEN: &str = "hook-token";
/// Present: every delivery must carry a valid GitLab 19 signature made with it (GitLab before
/// 19.0 never signs, so it is not generated: the operator puts it there with the hook's).
const SIGNING_TOKEN: &str = "signing-token";
const TOKEN_KEY: &str = "token-key";
/// The relay's own GitLab token, for the access checks (never generated: the operator puts a
/// token there that can read the team's projects' members).
const GITLAB_TOKEN: &str = "gitlab-token";
/// The relay's installation id, shared by every instance: it names the team's hooks, so that
/// an instance recognises (and never duplicates) the hooks another one made.
const RELAY_ID: &str = "relay-id";

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// No database named.
    #[error("no database: set {DATABASE_URL_ENV} (e.g. postgres://cloudci@db.internal/cloudci)")]
    NoDatabase,
    /// The database could not be opened or migrated.
    #[error("relay database: {0}")]
    Database(#[from] cloudci_relay::PgError),
    /// The secrets directory.
    #[error(transparent)]
    Secrets(#[from] cloudci_webhook::SecretFileError),
    /// A signing token that is not GitLab's format.
    #[error("{}/{SIGNING_TOKEN}: {source}", dir.display())]
    BadSigningToken {
        /// The secrets directory.
        dir: PathBuf,
        /// What is wrong with it.
        source: cloudci_webhook::BadSigningToken,
    },
    /// A GitLab URL without the relay's GitLab token.
    #[error("{}/{GITLAB_TOKEN}: missing; with a GitLab URL the relay needs its own token there (one that can read the team's projects' members)", dir.display())]
    NoGitlabToken {
        /// The secrets directory.
        dir: PathBuf,
    },
    /// Hook management asked for without what it needs.
    #[error("the team's hooks (--project) need GitLab (--gitlab-url) and the relay's public URL (--public-url)")]
    NoHookSettings,
    /// The GitLab client could not be made.
    #[error("GitLab client: {0}")]
    Gitlab(#[from] cloudci_gitlab::Error),
    /// A listener could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Where an instance listens and what it reads.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// The database's connection string (from [`DATABASE_URL_ENV`]); never logged.
    pub database_url: SecretString,
    /// The public webhook listener.
    pub listen: SocketAddr,
    /// The subscriber API.
    pub api_listen: SocketAddr,
    /// The secrets directory, shared by every instance.
    pub secrets: PathBuf,
    /// GitLab, where sessions and access are checked; without it there are no sessions (only
    /// operator tokens).
    pub gitlab_url: Option<String>,
    /// How long a session's token is valid.
    pub session_ttl: Duration,
    /// How long an access answer is kept (at most [`access::MAX_TTL`]).
    pub access_ttl: Duration,
    /// The team's projects (paths or ids) whose hooks the relay manages and catches up on;
    /// none: no hook management.
    pub projects: Vec<String>,
    /// Where GitLab reaches the relay (the load balancer), without `/hooks/...`.
    pub public_url: Option<String>,
    /// How often the leader checks that GitLab did not pause a hook.
    pub hook_check: Duration,
    /// A pipeline nothing was heard of for this long is read from GitLab's API.
    pub reconcile_after: Duration,
    /// The leader catches up at least this often.
    pub catch_up_every: Duration,
    /// Retention of the shared log (`[retention]`'s `deliveries_days`, `events_days`), and the
    /// time between two passes; `None`: nothing is removed.
    pub retention: Option<(cloudci_webhook::StorePolicy, Duration)>,
}

/// The relay's secrets, read (and generated on first start) from its directory.
#[derive(Debug)]
pub struct RelaySecrets {
    /// What the public listener checks.
    pub hooks: HookSecrets,
    /// Signs and checks subscriber tokens.
    pub keys: TokenKeys,
    /// The relay's own GitLab token, when there is one.
    pub gitlab_token: Option<SecretString>,
    /// The path secret, the hook token and the signing token, for the hooks.
    hook_params: (SecretString, SecretString, Option<SecretString>),
    /// The installation id naming the team's hooks.
    relay_id: SecretString,
}

impl RelaySecrets {
    /// Reads the directory, generating the path secret, hook token and token key when missing.
    pub fn load(dir: &std::path::Path) -> Result<Self, RelayError> {
        let files = SecretFiles::new(dir);
        let (path, token) = (files.get_or_create(PATH_SECRET, 16)?, files.get_or_create(HOOK_TOKEN, 32)?);
        let mut hooks = HookSecrets::new(path.clone(), vec![token.clone()]);
        let signing = files.read(SIGNING_TOKEN)?;
        if let Some(signing) = &signing {
            hooks = hooks
                .with_signing_token(signing)
                .map_err(|source| RelayError::BadSigningToken { dir: dir.to_owned(), source })?;
        }
        Ok(Self {
            hooks,
            keys: TokenKeys::new(&files.get_or_create(TOKEN_KEY, 32)?),
            gitlab_token: files.read(GITLAB_TOKEN)?,
            hook_params: (path, token, signing),
            relay_id: files.get_or_create(RELAY_ID, 12)?,
        })
    }

    /// An operator's subscriber token for `sub`, valid for `ttl`: it sees every project.
    pub fn issue(&self, sub: &str, ttl: Duration) -> Jwt {
        self.keys.issue(sub, Vec::new(), ttl)
    }
}

/// The subscriber API's state.
#[derive(Debug, Clone)]
pub struct RelayApi {
    /// What `/v1/events` serves from.
    pub events: EventsState<PgLog>,
    /// Sessions' access checks (none without GitLab).
    pub access: Option<Arc<Access>>,
    /// `POST /v1/sessions` (none without GitLab).
    pub sessions: Option<Sessions>,
}

impl axum::extract::FromRef<RelayApi> for TokenKeys {
    fn from_ref(s: &RelayApi) -> Self {
        s.events.keys.clone()
    }
}

/// The relay's OpenAPI document.
pub const OPENAPI: &str = include_str!("relay_openapi.json");

/// The subscriber API's routes.
pub fn api_router(state: RelayApi) -> Router {
    let sessions = match state.sessions.clone() {
        Some(s) => Router::new().route("/v1/sessions", post(sessions::create)).with_state(s),
        None => Router::new().route(
            "/v1/sessions",
            post(|| async {
                ApiError::new(
                    axum::http::StatusCode::NOT_FOUND,
                    "this relay opens no sessions: it has no GitLab (--gitlab-url, [relay] gitlab_url)",
                )
            }),
        ),
    };
    Router::new()
        .route(
            "/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response() }),
        )
        .route("/v1/events", get(events))
        .with_state(state)
        .merge(sessions)
}

/// `GET /v1/events`: an operator's token gets the daemon's stream as it is; a session's only
/// the events of projects its GitLab user may read, checked per event ([`access`]), and after
/// retention removed what it resumes from, a resync whose snapshot is checked alike ([`resync`]).
async fn events(
    State(api): State<RelayApi>,
    Authorized(claims): Authorized,
    headers: axum::http::HeaderMap,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<axum::response::Response, ApiError> {
    let after = last_event_id(&headers)?.or(q.since);
    // A session's claims name no projects, so this never refuses one (nor says why).
    let filter = scoped_filter(&claims, &q)?;
    let Some(user) = claims.gitlab_user else {
        return Ok(stream_response(api.events.hub.subscribe_frames(filter, after)));
    };
    let access = api.access.clone().ok_or_else(|| {
        ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "this relay checks no access: it has no GitLab")
    })?;
    let (resync, after) = match after {
        Some(requested) => {
            match resync::for_session(&api.events.hub, &access, user, filter.clone(), requested).await? {
                Some((frames, last_seq)) => (Some(frames), Some(last_seq)),
                None => (None, Some(requested)),
            }
        }
        None => (None, None),
    };
    use futures_util::StreamExt;
    let frames = api.events.hub.subscribe(filter, after).then(move |item| {
        let access = access.clone();
        async move {
            let e = item.map_err(|_| ())?;
            match access.may_read(user, e.project_id).await {
                Ok(true) => Ok(Some(cloudci_webhook::frame(&e))),
                Ok(false) => Ok(None),
                Err(err) => {
                    // Ends the stream before this event: nothing is skipped, the client resumes.
                    tracing::warn!("relay: closing a subscriber's stream: {err}");
                    Err(())
                }
            }
        }
    });
    let frames = frames.filter_map(|r| std::future::ready(r.transpose()));
    Ok(stream_response(futures_util::stream::iter(resync.map(Ok)).chain(frames)))
}

/// A running relay instance.
#[derive(Debug)]
pub struct Relay {
    /// Where the public webhook listener listens.
    pub public_addr: SocketAddr,
    /// Where the subscriber API listens.
    pub api_addr: SocketAddr,
    shutdown: CancellationToken,
    servers: Vec<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
    _sequencer: Sequencer,
    _tail: Tail,
    _leader: cloudci_relay::Leader,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, RelayError> {
    TcpListener::bind(addr).await.map_err(|source| RelayError::Listen { addr, source })
}

impl Relay {
    /// Connects to the database (running its migrations), opens both listeners and starts the
    /// processor and the tail.
    pub async fn start(settings: &RelaySettings) -> Result<Self, RelayError> {
        use secrecy::ExposeSecret;
        let dir = settings.secrets.clone();
        let secrets = tokio::task::spawn_blocking(move || RelaySecrets::load(&dir)).await.expect("not cancelled")?;
        let url = settings.database_url.expose_secret().to_owned();
        let log = Arc::new(tokio::task::spawn_blocking(move || PgLog::open(&url)).await.expect("not cancelled")?);
        let mut relay_gitlab = None;
        let (access, sessions) = match &settings.gitlab_url {
            None => (None, None),
            Some(url) => {
                let token = secrets
                    .gitlab_token
                    .clone()
                    .ok_or_else(|| RelayError::NoGitlabToken { dir: settings.secrets.clone() })?;
                let gitlab = cloudci_gitlab::Gitlab::builder(url.clone())
                    .private_token(token)
                    .timeout(Duration::from_secs(10))
                    .build()?;
                relay_gitlab = Some(gitlab.clone());
                let sessions =
                    Sessions { gitlab_url: url.clone(), keys: secrets.keys.clone(), ttl: settings.session_ttl };
                (Some(Arc::new(Access::new(gitlab, settings.access_ttl))), Some(sessions))
            }
        };
        let duties = match (&settings.projects[..], &relay_gitlab, &settings.public_url) {
            ([], _, _) => None,
            (projects, Some(gitlab), Some(public_url)) => {
                let (path, token, signing) = secrets.hook_params.clone();
                let url = format!("{}/hooks/{}", public_url.trim_end_matches('/'), path.expose_secret());
                let hooks = cloudci_webhook::HookManager::new(
                    gitlab.clone(),
                    format!("relay-{}", secrets.relay_id.expose_secret()),
                    url,
                    vec![path],
                    token,
                    signing,
                );
                Some((hooks, gitlab.clone(), projects.iter().map(|p| cloudci_gitlab::ProjectRef::parse(p)).collect()))
            }
            _ => return Err(RelayError::NoHookSettings),
        };
        let hub = Hub::new(log.clone());
        crate::logging::report_to(hub.health());
        let receiver = Receiver::new(secrets.hooks, hub.clone(), cloudci_webhook::random_token(16));
        let shutdown = CancellationToken::new();
        let layers = crate::layers::Layers::new(shutdown.clone());
        let public = bind(settings.listen).await?;
        let api = bind(settings.api_listen).await?;
        let io = |addr| move |source| RelayError::Listen { addr, source };
        let public_addr = public.local_addr().map_err(io(settings.listen))?;
        let api_addr = api.local_addr().map_err(io(settings.api_listen))?;
        let servers = vec![
            crate::daemon::spawn_server(
                crate::resources::Side::Public,
                public,
                layers.public(receiver.router()),
                shutdown.clone(),
                hub.health(),
            ),
            crate::daemon::spawn_server(
                crate::resources::Side::Local,
                api,
                layers.relay_api(api_router(RelayApi {
                    events: EventsState { hub: hub.clone(), keys: secrets.keys.clone() },
                    access,
                    sessions,
                })),
                shutdown.clone(),
                hub.health(),
            ),
        ];
        let mut tasks = vec![tokio::spawn(receiver.processor().run())];
        // Where this instance's subscribers stand, for the leader's retention passes.
        let instance = format!("{}-{}", std::process::id(), cloudci_webhook::random_token(6));
        tasks.push(tokio::spawn(retention::hold(log.clone(), hub.clone(), instance)));
        let l = cloudci_relay::Leader::start(log.clone());
        if let Some((policy, every)) = settings.retention.clone() {
            let log = log.clone();
            let passes = move || retention::passes(log.clone(), policy.clone(), every);
            tasks.push(tokio::spawn(catchup::while_leading(l.watch(), passes)));
        }
        if let Some((hooks, gitlab, projects)) = duties {
            let duties = catchup::Duties {
                hooks,
                gitlab,
                hub: hub.clone(),
                projects,
                hook_check: settings.hook_check,
                silence: settings.reconcile_after,
                catch_up_every: settings.catch_up_every,
            };
            tasks.push(tokio::spawn(catchup::run(l.watch(), duties)));
        }
        let sequencer = Sequencer::start(hub.clone(), log.clone());
        let tail = Tail::start(hub, log);
        Ok(Self { public_addr, api_addr, shutdown, servers, tasks, _sequencer: sequencer, _tail: tail, _leader: l })
    }

    /// Stops gracefully: no new connections, answers in progress finish (a delivery is answered
    /// once committed), event streams end between two writes (their clients resume on another
    /// instance by `Last-Event-ID`), for at most the daemon's grace period.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let servers = futures_util::future::join_all(self.servers.iter_mut());
        if tokio::time::timeout(crate::daemon::SHUTDOWN_GRACE, servers).await.is_err() {
            tracing::warn!("relay: answers still open after the grace period; closing them");
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}
