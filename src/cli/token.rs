//! `cloudci token issue`, `cloudci dashboard`

use crate::api::auth::{TokenKeys, parse_duration};
use clap::{Args, Subcommand};

use super::Failure;
use crate::config::Config;
use crate::output::print_json;
use crate::state::StateDir;

/// Tokens for the local API (IDE plugins, scripts).
#[derive(Debug, Args)]
pub struct TokenCommand {
    #[command(subcommand)]
    action: TokenAction,
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Issue a token: `Authorization: Bearer <token>` on the local API.
    Issue {
        /// Limit it to these projects (GitLab paths); all when none is given. Repeatable.
        #[arg(long = "project", value_name = "PATH")]
        projects: Vec<String>,
        /// How long it is valid: 90s, 15m, 12h, 30d.
        #[arg(long, default_value = "30d", value_parser = parse_duration)]
        ttl: std::time::Duration,
        /// Who it is for (shows in logs).
        #[arg(long, default_value = "cli")]
        name: String,
        /// Print `{"token": "..."}`.
        #[arg(long)]
        json: bool,
    },
}

impl TokenCommand {
    /// Runs it.
    pub fn run(self, config: &Config) -> Result<(), Failure> {
        let TokenAction::Issue { projects, ttl, name, json } = self.action;
        let known: Vec<&str> = config.projects.values().map(|p| p.gitlab.as_str()).collect();
        if let Some(unknown) = projects.iter().find(|p| !known.contains(&p.as_str())) {
            return Err(Failure::usage(format!(
                "unknown project {unknown:?}; configured projects: {}",
                if known.is_empty() { "(none)".into() } else { known.join(", ") }
            )));
        }
        let state = StateDir::new(config.state_dir());
        state.create()?;
        let keys = TokenKeys::new(&state.jwt_key().map_err(|e| Failure::general(e.to_string()))?);
        // Printed on purpose: issuing a token is what the command is for.
        let jwt = keys.issue(&name, projects, ttl);
        let token = jwt.expose();
        if json {
            print_json(&serde_json::json!({"token": token}))?;
        } else {
            crate::say!("{token}");
        }
        Ok(())
    }
}

/// `cloudci dashboard`: the running daemon's dashboard address with a one-time login code.
#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Print `{"url": "...", "expires_in": 60}`.
    #[arg(long)]
    json: bool,
}

impl DashboardArgs {
    /// Runs it.
    pub async fn run(self, config: &Config) -> Result<(), Failure> {
        let state = StateDir::new(config.state_dir());
        let Some(daemon) = crate::sse_client::DaemonClient::find(&state).await else {
            return Err(Failure::general(
                "no daemon answers for this state directory (start `cloudci serve`: it serves the dashboard)",
            ));
        };
        let keys = TokenKeys::new(&state.jwt_key().map_err(|e| Failure::general(e.to_string()))?);
        // Printed on purpose: the code is for the user's browser, and works once, for a minute.
        let url = format!("{}/login?code={}", daemon.api_url, keys.login_code().expose());
        let ttl = crate::api::login::LOGIN_CODE_TTL.as_secs();
        if self.json {
            print_json(&serde_json::json!({"url": url, "expires_in": ttl}))?;
        } else {
            crate::say!("{url}");
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("(open it within {ttl} s; it works once)\n").as_bytes(),
            );
        }
        Ok(())
    }
}
