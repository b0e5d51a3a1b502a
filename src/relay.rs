//! `cloudci relay`: the team's shared receiver. Any number of instances run against one
//! PostgreSQL database (`cloudci-relay`'s [`PgLog`]), behind one load balancer; each serves:
//! - the public webhook listener, exactly as `serve` has it (the receiver's router: path secret,
//!   `X-Gitlab-Token`, GitLab 19 signatures, 25 MB, group commit, 503 + `Retry-After` whenever
//!   the database cannot take a delivery, never a 4xx for that), with `serve`'s public layers;
//! - the subscriber API: `GET /v1/events` (the daemon's SSE code and frames, `Last-Event-ID`
//!   resumes on any instance) and `GET /v1/openapi.json`.
//!
//! Each instance tails the shared log into its own fan-out ([`Tail`]); deliveries are processed
//! by whichever instance stored them (seqs stay in commit order: `relay/src/pg.rs`), and a
//! processor on each instance picks up what a dead instance left pending.
//!
//! # Seams for what comes next
//! - **Subscriber auth** is, for now, a bearer JWT signed with the relay's `token-key` (every
//!   instance reads the same secrets directory; `cloudci relay token` issues one). Part C
//!   replaces the issuing with `POST /v1/sessions` (a GitLab-checked session) and adds
//!   per-project access checks: [`RelayApi::events`] is the state the SSE route takes, and the
//!   route's filter ([`crate::api::sse::scoped_filter`]) is where a session's projects apply.
//! - **Hook management and catch-up** (part B) start here too, beside the processor, with the
//!   same [`HookSecrets`] this module reads.
//! - **Another bus** (NATS JetStream): replace [`Tail`]; the hub takes batches from anywhere.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use cloudci_relay::{PgLog, Tail};
use cloudci_webhook::{HookSecrets, Hub, Receiver, SecretFiles};
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::auth::{Jwt, TokenKeys};
use crate::api::sse::EventsState;

/// The environment variable naming the relay's database.
pub const DATABASE_URL_ENV: &str = "CLOUDCI_RELAY_DATABASE_URL";

/// Files in the relay's secrets directory.
const PATH_SECRET: &str = "path-secret";
const HOOK_TOKEN: &str = "hook-token";
/// Present: every delivery must carry a valid GitLab 19 signature made with it (GitLab before
/// 19.0 never signs, so it is not generated: the operator puts it there with the hook's).
const SIGNING_TOKEN: &str = "signing-token";
const TOKEN_KEY: &str = "token-key";

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
}

/// The relay's secrets, read (and generated on first start) from its directory.
#[derive(Debug)]
pub struct RelaySecrets {
    /// What the public listener checks.
    pub hooks: HookSecrets,
    /// Signs and checks subscriber tokens.
    pub keys: TokenKeys,
}

impl RelaySecrets {
    /// Reads the directory, generating the path secret, hook token and token key when missing.
    pub fn load(dir: &std::path::Path) -> Result<Self, RelayError> {
        let files = SecretFiles::new(dir);
        let mut hooks =
            HookSecrets::new(files.get_or_create(PATH_SECRET, 16)?, vec![files.get_or_create(HOOK_TOKEN, 32)?]);
        if let Some(signing) = files.read(SIGNING_TOKEN)? {
            hooks = hooks
                .with_signing_token(&signing)
                .map_err(|source| RelayError::BadSigningToken { dir: dir.to_owned(), source })?;
        }
        Ok(Self { hooks, keys: TokenKeys::new(&files.get_or_create(TOKEN_KEY, 32)?) })
    }

    /// A subscriber token for `sub`, valid for `ttl` (part C: issued by a GitLab-checked session).
    pub fn issue(&self, sub: &str, ttl: Duration) -> Jwt {
        self.keys.issue(sub, Vec::new(), ttl)
    }
}

/// The subscriber API's state.
#[derive(Debug, Clone)]
pub struct RelayApi {
    /// What `/v1/events` serves from.
    pub events: EventsState<PgLog>,
}

/// The relay's OpenAPI document.
pub const OPENAPI: &str = include_str!("relay_openapi.json");

/// The subscriber API's routes.
pub fn api_router(state: RelayApi) -> Router {
    Router::new()
        .route(
            "/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response() }),
        )
        .merge(crate::api::sse::router(state.events))
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
    _tail: Tail,
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
                layers.relay_api(api_router(RelayApi { events: EventsState { hub: hub.clone(), keys: secrets.keys } })),
                shutdown.clone(),
                hub.health(),
            ),
        ];
        let tasks = vec![tokio::spawn(receiver.processor().run())];
        let tail = Tail::start(hub, log);
        Ok(Self { public_addr, api_addr, shutdown, servers, tasks, _tail: tail })
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
