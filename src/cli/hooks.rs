//! `cloudci hooks show|list|install|remove|rotate`

use clap::{Args, Subcommand};
use cloudci_gitlab::{Gitlab, ProjectRef};
use cloudci_webhook::HookManager;
use secrecy::ExposeSecret;

use super::Failure;
use crate::config::Config;
use crate::output::{Table, print_json};
use crate::state::StateDir;

/// cloudci's webhooks on GitLab.
#[derive(Debug, Args)]
pub struct HooksCommand {
    #[command(subcommand)]
    action: HooksAction,
    /// Machine-readable output: `show` {"url", "token"}; `list`, `install`, `rotate`
    /// [{"project", "hook"}] (GitLab's hook objects); `remove` [{"project", "removed"}].
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum HooksAction {
    /// The current hook URL and secret token (as `cloudci serve` registered them).
    Show,
    /// This installation's hooks on each configured project.
    List,
    /// Install or update the hooks (pointing at the URL `cloudci serve` published, or --url).
    Install {
        /// Public base URL to use instead of the published one.
        #[arg(long)]
        url: Option<String>,
    },
    /// Remove this installation's hooks.
    Remove,
    /// New path secret and token; updates the hooks. The old ones stay accepted until the next
    /// rotation, so deliveries already under way are not refused.
    Rotate,
}

impl HooksCommand {
    /// Runs it.
    pub async fn run(self, config: &Config) -> Result<(), Failure> {
        let state = StateDir::new(config.state_dir());
        state.create()?;
        let secret = |e: cloudci_webhook::SecretFileError| Failure::general(e.to_string());
        let published = state.hook_info();
        if let Some(relay) = published.as_ref().and_then(|i| i.relay.clone()) {
            return Err(Failure::general(format!(
                "this daemon takes its events from the team relay at {relay}: it has no hook of its own (the relay's operator manages the team's hooks)"
            )));
        }
        match self.action {
            HooksAction::Show => {
                let info = published.ok_or_else(|| Failure::general("no hook URL yet: start `cloudci serve` first"))?;
                let url = state.hook_url(&info.public_url).map_err(secret)?;
                let token = state.hook_token().map_err(secret)?;
                if self.json {
                    print_json(&serde_json::json!({"url": url, "token": token.expose_secret()}))?;
                } else {
                    crate::say!("url:   {url}\ntoken: {}", token.expose_secret());
                }
            }
            HooksAction::List => {
                let manager = manager(config, &state, published.map(|i| i.public_url).unwrap_or_default())?;
                let mut rows = Vec::new();
                for (name, p) in &config.projects {
                    for h in manager.find(&ProjectRef::parse(&p.gitlab)).await? {
                        rows.push((name.clone(), h));
                    }
                }
                if self.json {
                    print_json(
                        &rows.iter().map(|(n, h)| serde_json::json!({"project": n, "hook": h})).collect::<Vec<_>>(),
                    )?;
                } else {
                    let mut t = Table::new(&["PROJECT", "HOOK", "STATUS", "URL"]);
                    for (n, h) in &rows {
                        t.row(vec![
                            n.clone(),
                            h.id.to_string(),
                            h.alert_status.clone().unwrap_or_else(|| "executable".into()),
                            redact(&h.url),
                        ]);
                    }
                    t.print()?;
                }
            }
            HooksAction::Install { url } => {
                let base = url
                    .or(published.map(|i| i.public_url))
                    .ok_or_else(|| Failure::usage("no public URL known: start `cloudci serve` once, or pass --url"))?;
                let manager = manager(config, &state, base)?;
                let mut installed = Vec::new();
                for (name, p) in &config.projects {
                    let h = manager.install(&ProjectRef::parse(&p.gitlab)).await?;
                    if !self.json {
                        crate::say!("{name}: hook {} installed", h.id);
                    }
                    installed.push(serde_json::json!({"project": name, "hook": h}));
                }
                if self.json {
                    print_json(&installed)?;
                }
            }
            HooksAction::Remove => {
                let manager = manager(config, &state, String::new())?;
                let mut removed = Vec::new();
                for (name, p) in &config.projects {
                    let n = manager.remove(&ProjectRef::parse(&p.gitlab)).await?;
                    if !self.json {
                        crate::say!("{name}: {n} hook(s) removed");
                    }
                    removed.push(serde_json::json!({"project": name, "removed": n}));
                }
                if self.json {
                    print_json(&removed)?;
                }
            }
            HooksAction::Rotate => {
                state.rotate().map_err(secret)?;
                let mut updated = Vec::new();
                if let Some(info) = published {
                    let manager = manager(config, &state, info.public_url)?;
                    for (name, p) in &config.projects {
                        let h = manager.install(&ProjectRef::parse(&p.gitlab)).await?;
                        if !self.json {
                            crate::say!("{name}: hook {} updated with the new secrets", h.id);
                        }
                        updated.push(serde_json::json!({"project": name, "hook": h}));
                    }
                } else if !self.json {
                    crate::say!("secrets rotated; no hooks to update yet");
                }
                if self.json {
                    print_json(&updated)?;
                }
            }
        }
        Ok(())
    }
}

fn manager(config: &Config, state: &StateDir, public_url: String) -> Result<HookManager, Failure> {
    let secret = |e: cloudci_webhook::SecretFileError| Failure::general(e.to_string());
    // No usable token is an authentication failure (exit 3), like a token GitLab refuses.
    let token = config.gitlab_token().map_err(|e| Failure::auth(e.to_string()))?;
    let gitlab =
        Gitlab::builder(config.gitlab_url()).private_token(token).build().map_err(|e| Failure::usage(e.to_string()))?;
    let url = if public_url.is_empty() { String::new() } else { state.hook_url(&public_url).map_err(secret)? };
    Ok(HookManager::new(
        gitlab,
        state.instance_id().map_err(secret)?,
        url,
        state.path_secrets().map_err(secret)?,
        state.hook_token().map_err(secret)?,
        if config.webhook.signing { Some(state.signing_token().map_err(secret)?) } else { None },
    ))
}

/// A hook URL without its path secret.
fn redact(url: &str) -> String {
    match url.find("/hooks/") {
        Some(i) => format!("{}/hooks/…", &url[..i]),
        None => url.to_owned(),
    }
}
