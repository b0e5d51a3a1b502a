//! `cloudci relay` (run an instance) and `cloudci relay token` (a subscriber token).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use secrecy::SecretString;

use super::Failure;
use crate::api::auth::parse_duration;
use crate::config::Config;
use crate::output::print_json;
use crate::relay::{DATABASE_URL_ENV, Relay, RelayError, RelaySecrets, RelaySettings};

/// Run a team relay instance: GitLab's webhooks for the whole team into PostgreSQL, and the
/// event stream to every developer. Any number of instances may share one database.
///
/// The database: CLOUDCI_RELAY_DATABASE_URL (e.g. postgres://cloudci@db.internal/cloudci); its
/// tables are created or migrated at start. Secrets (path secret, X-Gitlab-Token, subscriber token
/// key; a `signing-token` file there turns GitLab 19 signatures on) are read from --secrets
/// (`[relay] secrets`, default `relay/` in the state directory) and generated when missing:
/// every instance must read the same ones.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RelayArgs {
    #[command(subcommand)]
    action: Option<RelayAction>,
    /// The public webhook listener, over `[relay] listen`.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// The subscriber API, over `[relay] api_listen`.
    #[arg(long, value_name = "ADDR")]
    api_listen: Option<SocketAddr>,
    /// The secrets directory, over `[relay] secrets`.
    #[arg(long, value_name = "DIR")]
    secrets: Option<PathBuf>,
    /// GitLab, over `[relay] gitlab_url`: developers open sessions with their GitLab tokens
    /// (POST /v1/sessions) and see only the projects they may read; the relay checks access with
    /// its own token, from `gitlab-token` in the secrets directory.
    #[arg(long, value_name = "URL")]
    gitlab_url: Option<String>,
    /// How long a session's token is valid: 90s, 15m, 12h.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    session_ttl: std::time::Duration,
    /// How long an access answer from GitLab is kept (at most 5m): a revoked member stops
    /// receiving a project's events within this time.
    #[arg(long, default_value = "5m", value_parser = parse_access_ttl)]
    access_ttl: std::time::Duration,
    /// A team project (path or id) whose webhook the relay installs and looks after, and whose
    /// pipelines it catches up on after outages; repeat for each, over `[relay] projects`.
    /// Needs --gitlab-url and --public-url. One instance at a time does it (the others take
    /// over when it stops).
    #[arg(long = "project", value_name = "PROJECT")]
    projects: Vec<String>,
    /// Where GitLab reaches the relay (the load balancer), over `[relay] public_url`.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// How often the hooks are checked (GitLab pauses one after four failed deliveries).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    hook_check: std::time::Duration,
    /// A pipeline nothing was heard of for this long is read from GitLab's API.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    reconcile_after: std::time::Duration,
    /// Catch up on the projects' pipelines at least this often (GitLab's API, from the last
    /// catch-up on).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    catch_up_every: std::time::Duration,
}

fn parse_access_ttl(raw: &str) -> Result<std::time::Duration, crate::api::auth::BadDuration> {
    let ttl = parse_duration(raw)?;
    if ttl > crate::relay::access::MAX_TTL {
        return Err(crate::api::auth::BadDuration::new(
            "the access TTL is at most 5m (revocation must take effect within 5 minutes)",
        ));
    }
    Ok(ttl)
}

#[derive(Debug, Subcommand)]
enum RelayAction {
    /// Issue a subscriber token (`Authorization: Bearer <token>` on the relay's /v1/events).
    Token {
        /// How long it is valid: 90s, 15m, 12h, 30d.
        #[arg(long, default_value = "30d", value_parser = parse_duration)]
        ttl: std::time::Duration,
        /// Who it is for (shows in logs).
        #[arg(long, default_value = "subscriber")]
        name: String,
        /// The secrets directory, over `[relay] secrets`.
        #[arg(long, value_name = "DIR")]
        secrets: Option<PathBuf>,
        /// Print `{"token": "..."}`.
        #[arg(long)]
        json: bool,
    },
}

impl From<RelayError> for Failure {
    fn from(e: RelayError) -> Self {
        match e {
            RelayError::NoDatabase | RelayError::NoHookSettings => Self::usage(e.to_string()),
            other => Self::general(other.to_string()),
        }
    }
}

impl RelayArgs {
    /// Runs an instance until SIGINT or SIGTERM, or issues a token.
    pub async fn run(self, config: &Config) -> Result<(), Failure> {
        let secrets_dir = |flag: Option<PathBuf>| flag.unwrap_or_else(|| config.relay_secrets());
        if let Some(RelayAction::Token { ttl, name, secrets, json }) = self.action {
            let secrets = RelaySecrets::load(&secrets_dir(secrets))?;
            // Printed on purpose: issuing a token is what the command is for.
            let jwt = secrets.issue(&name, ttl);
            if json {
                print_json(&serde_json::json!({"token": jwt.expose()}))?;
            } else {
                crate::say!("{}", jwt.expose());
            }
            return Ok(());
        }
        let database_url = std::env::var(DATABASE_URL_ENV)
            .ok()
            .filter(|u| !u.trim().is_empty())
            .map(SecretString::from)
            .ok_or(RelayError::NoDatabase)?;
        let settings = RelaySettings {
            database_url,
            listen: self.listen.unwrap_or(config.relay.listen),
            api_listen: self.api_listen.unwrap_or(config.relay.api_listen),
            secrets: secrets_dir(self.secrets),
            gitlab_url: self.gitlab_url.or_else(|| config.relay.gitlab_url.clone()),
            session_ttl: self.session_ttl,
            access_ttl: self.access_ttl,
            projects: if self.projects.is_empty() { config.relay.projects.clone() } else { self.projects },
            public_url: self.public_url.or_else(|| config.relay.public_url.clone()),
            hook_check: self.hook_check,
            reconcile_after: self.reconcile_after,
            catch_up_every: self.catch_up_every,
            // The daemon's `[retention]` names; logs and artifacts do not apply to the relay.
            retention: config.retention.interval().map(|every| (config.retention.policy().store, every)),
        };
        let relay = Relay::start(&settings).await?;
        crate::say!("relay: receiving GitLab webhooks on {} (POST /hooks/…)", relay.public_addr);
        crate::say!("relay: subscriber API on http://{} (event stream: /v1/events)", relay.api_addr);
        super::serve::wait_for_shutdown().await;
        crate::say!("relay: stopping");
        relay.stop().await;
        Ok(())
    }
}
