//! `cloudci serve`: the long-running side. It opens the public webhook listener (through the
//! tunnel), the local API, registers hooks on GitLab, turns deliveries into events, reconciles
//! silent pipelines, and removes its hooks again on a clean shutdown.
//!
//! Pointed at a team relay (`serve --relay URL`, `[relay] url`) it does none of the GitLab-facing
//! half: no public listener, no tunnel, no hooks, no reconciler or catch-up against GitLab; its
//! events come from the relay ([`crate::relay_feed`]) into the same log and hub, and everything
//! after them (builds, the local API, watchers, retention) runs as before.
//!
//! Both listeners get [`crate::layers`]. A stop is graceful: the listeners stop accepting, answers
//! in progress are finished (a delivery is answered once its commit is done), event streams end,
//! all within [`SHUTDOWN_GRACE`]; then the background tasks stop and the hooks are removed.
//!
//! One file on purpose (~560 lines): `serve`'s start and stop read top to bottom, in order, in
//! [`Daemon`]; what it starts (receiver, reconciler, API, watchers, retention) lives elsewhere.

use std::sync::Arc;
use std::time::Duration;

use crate::api::auth::TokenKeys;
use crate::api::sse::EventsState;
use cloudci_gitlab::{Gitlab, ProjectRef};
use cloudci_webhook::{
    Durability, HookManager, Hub, NoTunnel, OpenTunnel, Problem, Receiver, Reconciler, Store, Tunnel,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DurabilitySetting, TunnelKind};
use crate::state::{HookInfo, StateDir};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration does not allow a start (e.g. a tunnel without what it needs).
    #[error("{0}")]
    Setup(String),
    /// A secret in the state directory could not be read or written.
    #[error(transparent)]
    Secrets(#[from] cloudci_webhook::SecretFileError),
    /// The webhook secrets are not usable.
    #[error(transparent)]
    HookSecrets(#[from] crate::state::HookSecretsError),
    /// The event store could not be opened.
    #[error(transparent)]
    Events(#[from] cloudci_webhook::StoreError),
    /// The build store could not be opened.
    #[error(transparent)]
    Builds(#[from] crate::builds::BuildStoreError),
    /// A file of the state directory.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A listener could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The tunnel failed.
    #[error(transparent)]
    Tunnel(#[from] cloudci_webhook::TunnelError),
    /// GitLab refused something.
    #[error("GitLab: {0}")]
    Gitlab(#[from] cloudci_gitlab::Error),
    /// No usable GitLab token (exit 3, like any authentication failure).
    #[error(transparent)]
    Token(#[from] crate::config::TokenError),
    /// Another daemon uses the state directory.
    #[error(transparent)]
    Locked(#[from] crate::state::LockError),
}

/// A running daemon.
pub struct Daemon {
    /// The public listener's address (none when fed by a relay).
    pub public_addr: Option<std::net::SocketAddr>,
    /// The local API's address.
    pub api_addr: std::net::SocketAddr,
    /// The public base URL GitLab reaches (none when fed by a relay).
    pub public_url: Option<String>,
    /// The team relay the events come from (`serve --relay`), if any.
    pub relay: Option<String>,
    /// The fan-out hub (in-process subscribers).
    pub hub: Hub,
    /// Token keys of the local API.
    pub keys: TokenKeys,
    hooks: Option<HookManager>,
    projects: Vec<ProjectRef>,
    /// Cancelled by [`Daemon::stop`]: the listeners stop accepting and event streams end.
    shutdown: CancellationToken,
    /// The two listeners, which finish once their open answers are done.
    servers: Vec<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
    _tunnel: Option<Box<dyn OpenTunnel>>,
    _lock: crate::state::DaemonLock,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("public_url", &self.public_url)
            .field("relay", &self.relay)
            .field("api", &self.api_addr)
            .finish_non_exhaustive()
    }
}

/// The GitLab client the configuration describes.
pub fn gitlab_client(config: &Config) -> Result<Gitlab, DaemonError> {
    let token = config.gitlab_token()?;
    Gitlab::builder(config.gitlab_url()).private_token(token).build().map_err(DaemonError::Gitlab)
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr).await.map_err(|source| DaemonError::Listen { addr, source })
}

/// The event store's durability the configuration asks for.
pub fn durability(config: &Config) -> Durability {
    match config.webhook.durability {
        DurabilitySetting::Full => Durability::Full,
        DurabilitySetting::Normal => Durability::Normal,
    }
}

/// How long a stop waits for answers in progress and open event streams.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown`, then finishes what is in progress.
pub(crate) fn spawn_server(
    side: crate::resources::Side,
    listener: TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
    health: &cloudci_webhook::Health,
) -> JoinHandle<()> {
    // Out of file descriptors is answered and reported, never the end of the listener.
    let listener = crate::resources::Guarded::new(listener, health.clone(), side);
    tokio::spawn(async move {
        // A connection that sends nothing, or idles between requests, is closed after
        // `server::IDLE` (axum::serve has no such timeout).
        crate::server::serve(listener, router, shutdown, crate::server::IDLE).await;
    })
}

impl Daemon {
    /// Starts everything; hooks are registered when `register_hooks` and projects are configured.
    pub async fn start(config: &Config, register_hooks: bool) -> Result<Self, DaemonError> {
        Self::start_with(config, register_hooks, None).await
    }

    /// Like [`Daemon::start`], talking to GitLab through `gitlab` instead of the configured one.
    pub async fn start_with(
        config: &Config,
        register_hooks: bool,
        gitlab: Option<Gitlab>,
    ) -> Result<Self, DaemonError> {
        let state = StateDir::new(config.state_dir());
        let io = |path: &std::path::Path| {
            let path = path.to_owned();
            move |source| DaemonError::Io { path, source }
        };
        state.create().map_err(io(state.root()))?;
        let lock = state.lock_daemon()?;
        let durability = durability(config);
        let store = Arc::new(Store::open(&state.database(), durability)?);
        let hub = Hub::new(store.clone());
        crate::logging::report_to(hub.health());
        // Login codes taken stay taken across restarts (`api/login.rs`).
        let spent = state.root().join("login-codes-spent");
        let keys = TokenKeys::with_spent_codes(&state.jwt_key()?, &spent).map_err(io(&spent))?;
        let probe_nonce = cloudci_webhook::random_token(16);
        let relay = config.relay.url.clone();
        // Fed by a relay, nothing here receives deliveries: no receiver, no public listener.
        let receiver = match relay {
            None => Some(Receiver::new(state.hook_secrets(false)?, hub.clone(), probe_nonce.clone())),
            Some(_) => None,
        };
        let mut tasks = Vec::new();
        let shutdown = CancellationToken::new();
        let layers = crate::layers::Layers::new(shutdown.clone());

        let mut servers = Vec::new();
        let mut public_addr = None;
        if let Some(receiver) = &receiver {
            let public = bind(config.webhook.listen).await?;
            public_addr = Some(public.local_addr().map_err(io(state.root()))?);
            servers.push(spawn_server(
                crate::resources::Side::Public,
                public,
                layers.public(receiver.router()),
                shutdown.clone(),
                hub.health(),
            ));
        }
        let api = bind(config.api.listen).await?;
        let api_addr = api.local_addr().map_err(io(state.root()))?;
        let api_gitlab = match &gitlab {
            Some(g) => Some(g.clone()),
            None => gitlab_client(config).ok(),
        };
        let builds = Arc::new(crate::builds::SqliteBuilds::open(&state.root().join("builds.db"))?);
        let shared_config = Arc::new(config.clone());
        // The daemon's one orchestrator: it owns the builds started here and resumes them.
        let orchestrator = api_gitlab.as_ref().map(|g| {
            crate::orchestrator::Orchestrator::new(
                shared_config.clone(),
                g.clone(),
                builds.clone(),
                crate::orchestrator::EventFeed::Hub(hub.clone()),
                state.root(),
            )
        });
        if let (Some(g), Some(o)) = (&api_gitlab, &orchestrator) {
            tasks.push(tokio::spawn(crate::watchers::rebuild_on_push(
                shared_config.clone(),
                g.clone(),
                hub.clone(),
                o.clone(),
            )));
        }
        tasks.push(tokio::spawn(crate::watchers::notify(shared_config.clone(), hub.clone())));
        if let Some(every) = config.retention.interval() {
            let builds: Arc<dyn crate::builds::BuildStore> = builds.clone();
            let policy = config.retention.policy();
            tasks.push(tokio::spawn(crate::retention::every(
                state.root().to_owned(),
                store.clone(),
                hub.clone(),
                builds,
                policy,
                every,
            )));
        }
        // `cloudci build` on this machine talks to this daemon with this token.
        let cli_token = keys.issue("cloudci CLI", vec![], Duration::from_secs(30 * 24 * 3600));
        state.write_cli_token(&cli_token)?;
        let api_router = crate::api::router(crate::api::ApiState {
            events: EventsState { hub: hub.clone(), keys: keys.clone() },
            config: shared_config,
            gitlab: api_gitlab,
            orchestrator: orchestrator.clone(),
            builds,
            state_dir: state.root().to_owned(),
        });
        let hosts = crate::layers::AllowedHosts::new(api_addr, &config.api.hosts);
        // The event stream with its own layers (none on its body, see `Layers::events`), in
        // front of everything else with the local API's.
        let events = EventsState { hub: hub.clone(), keys: keys.clone() };
        let local = layers
            .events(crate::api::sse::router(events), hosts.clone())
            .fallback_service(layers.local(api_router, hosts));
        servers.push(spawn_server(crate::resources::Side::Local, api, local, shutdown.clone(), hub.health()));
        tasks.push(tokio::spawn(crate::resources::watch_store(hub.clone())));
        // Builds a stop or crash left unfinished are carried on, each step once.
        if let Some(o) = orchestrator {
            tasks.push(tokio::spawn(async move { o.resume().await }));
        }
        let direct = match (receiver, public_addr, &relay) {
            (Some(receiver), Some(public_addr), _) => {
                tasks.push(tokio::spawn(receiver.processor().run()));
                let ends = Ends { register_hooks, gitlab, public_addr, probe_nonce: &probe_nonce };
                receive_directly(config, &state, &hub, receiver, ends, &mut tasks).await?
            }
            (_, _, Some(url)) => {
                // The developer's own token: the relay shows what GitLab lets them read.
                let feed = crate::relay_feed::RelayFeed::new(
                    url,
                    config.gitlab_token()?,
                    config.projects.values().map(|p| p.gitlab.clone()).collect(),
                    hub.clone(),
                );
                tasks.push(tokio::spawn(feed.run()));
                Direct::default()
            }
            _ => unreachable!("a receiver and its listener, or a relay"),
        };
        state
            .write_hook_info(&HookInfo {
                public_url: direct.public_url.clone().unwrap_or_default(),
                signing_confirmed: direct.signing_confirmed,
                api_url: format!("http://{api_addr}"),
                relay: relay.clone(),
            })
            .map_err(io(&state.root().join("hook.json")))?;
        Ok(Self {
            public_addr,
            api_addr,
            public_url: direct.public_url,
            relay,
            hub,
            keys,
            hooks: direct.hooks,
            projects: direct.projects,
            shutdown,
            servers,
            tasks,
            _tunnel: direct.tunnel,
            _lock: lock,
        })
    }

    /// Stops gracefully: the listeners stop accepting; deliveries in progress are answered once
    /// committed, other answers finish, event streams end (their clients resume from the next
    /// daemon by `Last-Event-ID`), for at most [`SHUTDOWN_GRACE`]; then the background tasks stop
    /// and this installation's hooks are removed unless `keep_hooks`.
    pub async fn stop(mut self, keep_hooks: bool) {
        self.shutdown.cancel();
        // The event streams' own end (their route has no body layer to end them).
        self.hub.end_streams();
        let drained =
            tokio::time::timeout(SHUTDOWN_GRACE, futures_util::future::join_all(self.servers.iter_mut())).await;
        if drained.is_err() {
            tracing::warn!("answers still open after {} s; closing them", SHUTDOWN_GRACE.as_secs());
            for s in &self.servers {
                s.abort();
            }
        }
        for t in &self.tasks {
            t.abort();
        }
        if let (Some(manager), false) = (&self.hooks, keep_hooks) {
            for p in &self.projects {
                match manager.remove(p).await {
                    Ok(n) => tracing::info!(project = %p, removed = n, "webhook removed"),
                    Err(e) => tracing::warn!(project = %p, "could not remove the webhook: {e}"),
                }
            }
        }
    }
}

/// What receiving GitLab's webhooks directly (not through a relay) started.
#[derive(Default)]
struct Direct {
    public_url: Option<String>,
    tunnel: Option<Box<dyn OpenTunnel>>,
    hooks: Option<HookManager>,
    projects: Vec<ProjectRef>,
    signing_confirmed: bool,
}

/// What [`receive_directly`] needs besides the daemon's parts.
struct Ends<'a> {
    register_hooks: bool,
    gitlab: Option<Gitlab>,
    public_addr: std::net::SocketAddr,
    probe_nonce: &'a str,
}

/// The GitLab-facing half of `serve` without a relay: the tunnel to the public listener (probed
/// end to end), this installation's hooks, the reconciler and catch-up, and the secrets' watch.
async fn receive_directly(
    config: &Config,
    state: &StateDir,
    hub: &Hub,
    receiver: Receiver,
    ends: Ends<'_>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<Direct, DaemonError> {
    let Ends { register_hooks, gitlab, public_addr, probe_nonce } = ends;
    let tunnel = open_tunnel(config, public_addr).await?;
    let public_url = tunnel.public_url().trim_end_matches('/').to_owned();
    cloudci_webhook::probe(&public_url, probe_nonce, Duration::from_secs(30)).await?;

    let mut projects = Vec::new();
    let mut hooks = None;
    let mut signing_confirmed = false;
    if register_hooks && !config.projects.is_empty() {
        let gitlab = match gitlab {
            Some(g) => g,
            None => gitlab_client(config)?,
        };
        let manager = HookManager::new(
            gitlab.clone(),
            state.instance_id()?,
            state.hook_url(&public_url)?,
            state.path_secrets()?,
            state.hook_token()?,
            if config.webhook.signing { Some(state.signing_token()?) } else { None },
        );
        signing_confirmed = config.webhook.signing;
        let silence = Duration::from_secs(config.webhook.reconcile_after.max(1));
        projects = config.projects.values().map(|p| ProjectRef::parse(&p.gitlab)).collect();
        let reconciler = Reconciler::new(gitlab.clone(), hub.clone(), silence).with_projects(projects.clone());
        // A hook GitLab will not take now (an outage, a 502) does not keep the daemon from
        // starting: it is retried in the background, and meanwhile the reconciler asks the API.
        let mut not_installed = Vec::new();
        for p in &projects {
            match manager.install(p).await {
                Ok(hook) => {
                    tracing::info!(project = %p, hook.id = %hook.id, "webhook installed");
                    // GitLab before 19.0 ignores the signing token and never signs.
                    signing_confirmed &= hook.signing_token_present == Some(true);
                }
                Err(e) => {
                    tracing::warn!(project = %p, "cannot install the webhook yet ({e}); retrying in the background");
                    signing_confirmed = false;
                    not_installed.push(p.clone());
                }
            }
        }
        if signing_confirmed {
            receiver.set_secrets(state.hook_secrets(true)?);
        }
        tasks.push(tokio::spawn(reconciler.clone().run(Duration::from_secs((silence.as_secs() / 3).max(1)))));
        tasks.push(tokio::spawn(watch_hooks(
            manager.clone(),
            projects.clone(),
            not_installed,
            reconciler,
            hub.clone(),
        )));
        hooks = Some(manager);
    }
    tasks.push(tokio::spawn(watch_secrets(state.clone(), receiver.clone(), signing_confirmed)));
    Ok(Direct { public_url: Some(public_url), tunnel: Some(tunnel), hooks, projects, signing_confirmed })
}

async fn open_tunnel(config: &Config, local: std::net::SocketAddr) -> Result<Box<dyn OpenTunnel>, DaemonError> {
    let kind = config.webhook.tunnel.unwrap_or(if config.webhook.public_url.is_some() {
        TunnelKind::None
    } else {
        TunnelKind::Ngrok
    });
    match kind {
        TunnelKind::None => {
            let url =
                config.webhook.public_url.clone().ok_or_else(|| {
                    DaemonError::Setup("webhook.public_url is required with tunnel = \"none\"".into())
                })?;
            Ok(NoTunnel { public_url: url }.open(local).await?)
        }
        #[cfg(feature = "ngrok")]
        TunnelKind::Ngrok => {
            let token = std::env::var("NGROK_AUTHTOKEN").ok().filter(|t| !t.trim().is_empty()).ok_or_else(|| {
                DaemonError::Setup(
                    "tunnel = \"ngrok\" needs NGROK_AUTHTOKEN (or set [webhook] public_url and tunnel = \"none\")"
                        .into(),
                )
            })?;
            let tunnel = cloudci_webhook::NgrokTunnel { authtoken: secrecy::SecretString::from(token) };
            Ok(tunnel.open(local).await?)
        }
        #[cfg(not(feature = "ngrok"))]
        TunnelKind::Ngrok => Err(DaemonError::Setup(
            "this cloudci was built without the ngrok feature; set [webhook] public_url and tunnel = \"none\"".into(),
        )),
    }
}

/// How often hooks are looked after.
const HOOK_CHECK: Duration = Duration::from_secs(60);

/// Installs the hooks that could not be installed at start, and, whenever the webhooks have been
/// silent for a minute, checks that GitLab did not pause ours (it does after four failed
/// deliveries: a sleeping laptop, a restart); a paused hook is re-enabled with a test delivery and
/// the reconciler catches up on what GitLab did not deliver meanwhile.
async fn watch_hooks(
    manager: HookManager,
    projects: Vec<ProjectRef>,
    mut not_installed: Vec<ProjectRef>,
    reconciler: Reconciler,
    hub: Hub,
) {
    let mut retry = Duration::from_secs(5);
    // What failed while this daemon was away: GitLab's delivery log says, for what its API cannot.
    let mut resend: Vec<ProjectRef> = projects.iter().filter(|p| !not_installed.contains(p)).cloned().collect();
    let mut health = hub.health().changes();
    let mut refusing = false;
    loop {
        for p in resend.drain(..) {
            if let Err(e) = manager.resend_failed(&p).await {
                tracing::warn!(project = %p, "reading the webhook's delivery log: {e}");
            }
        }
        let pause = tokio::time::sleep(if not_installed.is_empty() { HOOK_CHECK } else { retry });
        tokio::select! {
            _ = pause => {}
            Ok(()) = health.changed() => {
                // Deliveries answered 503 meanwhile (a full disk, no descriptors) are in
                // GitLab's delivery log as failed: once it is over, have them resent, and catch
                // up on what GitLab gave up on.
                let now = refuses_deliveries(hub.health());
                if refusing && !now {
                    tracing::info!("deliveries are stored again: resending what failed meanwhile and catching up");
                    resend.extend(projects.iter().filter(|p| !not_installed.contains(p)).cloned());
                    reconciler.request_catch_up();
                }
                refusing = now;
                continue;
            }
        }
        let mut installed_now = false;
        let mut still = Vec::new();
        for p in not_installed.drain(..) {
            match manager.install(&p).await {
                Ok(hook) => {
                    tracing::info!(project = %p, hook.id = %hook.id, "webhook installed");
                    installed_now = true;
                    resend.push(p.clone());
                }
                Err(e) => {
                    tracing::warn!(project = %p, "installing the webhook: {e}");
                    still.push(p);
                }
            }
        }
        not_installed = still;
        retry = (retry * 2).min(HOOK_CHECK);
        let last = hub.last_delivery_at().await.ok();
        let silent = last.flatten().is_none_or(|t| chrono::Utc::now().timestamp() - t >= HOOK_CHECK.as_secs() as i64);
        let mut re_enabled = false;
        if silent {
            for p in projects.iter().filter(|p| !not_installed.contains(p)) {
                match manager.ensure_enabled(p).await {
                    Ok(found) => {
                        re_enabled |= found;
                        if found {
                            resend.push(p.clone());
                        }
                    }
                    Err(e) => tracing::warn!(project = %p, "checking the webhook: {e}"),
                }
            }
        }
        if installed_now || re_enabled {
            reconciler.request_catch_up();
        }
    }
}

/// Whether a resource problem keeps deliveries from being stored.
fn refuses_deliveries(health: &cloudci_webhook::Health) -> bool {
    [Problem::DiskFull, Problem::DatabaseBusy, Problem::OutOfFiles].into_iter().any(|p| health.has(p))
}

/// Picks up secrets rotated by `cloudci hooks rotate` while running.
async fn watch_secrets(state: StateDir, receiver: Receiver, require_signature: bool) {
    let mut version = state.secrets_version();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = state.secrets_version();
        if now != version {
            match state.hook_secrets(require_signature) {
                Ok(s) => {
                    receiver.set_secrets(s);
                    tracing::info!("webhook secrets rotated");
                    version = now;
                }
                Err(e) => tracing::warn!("reading rotated secrets: {e}"),
            }
        }
    }
}
