//! cloudci's project hooks on GitLab: install (or update) one per project, find the ones this
//! installation left behind, re-enable one GitLab auto-disabled, remove them on shutdown.
//!
//! Hooks are recognised by the installation id in their description (GitLab 17.1+ keeps `name`
//! and `description`), so two developers' cloudci on the same project never touch each other's
//! hook; on older servers, by the receiver's path secret in the URL.

use cloudci_gitlab::types::{HookEvents, HookParams, ProjectHook};
use cloudci_gitlab::{Error, Gitlab, ProjectRef};
use futures_util::TryStreamExt;
use secrecy::{ExposeSecret, SecretString};

/// Manages this installation's hooks.
#[derive(Clone)]
pub struct HookManager {
    gitlab: Gitlab,
    instance: String,
    url: String,
    path_secrets: Vec<SecretString>,
    token: SecretString,
    signing_token: Option<SecretString>,
}

impl std::fmt::Debug for HookManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookManager").field("instance", &self.instance).finish_non_exhaustive()
    }
}

impl HookManager {
    /// Hooks pointing at `url` (which contains the current path secret), sending `token`.
    /// `path_secrets` lists the current and any earlier path secrets, to recognise old hooks.
    pub fn new(
        gitlab: Gitlab,
        instance: impl Into<String>,
        url: impl Into<String>,
        path_secrets: Vec<SecretString>,
        token: SecretString,
        signing_token: Option<SecretString>,
    ) -> Self {
        Self { gitlab, instance: instance.into(), url: url.into(), path_secrets, token, signing_token }
    }

    /// The hook name: `cloudci-<first 8 of the installation id>`.
    pub fn name(&self) -> String {
        format!("cloudci-{}", self.instance.chars().take(8).collect::<String>())
    }

    fn description(&self) -> String {
        format!("cloudci webhook receiver {}; managed by `cloudci serve`", self.instance)
    }

    /// Whether `hook` was made by this installation.
    pub fn is_ours(&self, hook: &ProjectHook) -> bool {
        hook.description.as_deref().is_some_and(|d| d.contains(&self.instance))
            || self.path_secrets.iter().any(|s| hook.url.contains(&format!("/hooks/{}", s.expose_secret())))
    }

    fn params(&self) -> HookParams {
        let mut p = HookParams::new(self.url.clone(), HookEvents::ALL);
        p.name = Some(self.name());
        p.description = Some(self.description());
        p.token = Some(self.token.clone());
        p.signing_token = self.signing_token.clone();
        p.enable_ssl_verification = true;
        p
    }

    /// This installation's hooks on `project`.
    pub async fn find(&self, project: &ProjectRef) -> Result<Vec<ProjectHook>, Error> {
        let all: Vec<ProjectHook> = self.gitlab.hooks(project.clone()).try_collect().await?;
        Ok(all.into_iter().filter(|h| self.is_ours(h)).collect())
    }

    /// Makes sure exactly one hook of ours points at the current URL with the current token:
    /// updates the first one found, deletes any others, or creates one.
    pub async fn install(&self, project: &ProjectRef) -> Result<ProjectHook, Error> {
        let mut ours = self.find(project).await?;
        let params = self.params();
        let hook = match ours.first() {
            Some(existing) => self.gitlab.edit_hook(project.clone(), existing.id, &params).await?,
            None => self.gitlab.create_hook(project.clone(), &params).await?,
        };
        if !ours.is_empty() {
            for stale in ours.drain(1..) {
                tracing::info!(hook.id = %stale.id, "removing a duplicate cloudci hook");
                self.gitlab.delete_hook(project.clone(), stale.id).await?;
            }
        }
        Ok(hook)
    }

    /// Removes every hook of ours from `project`. Returns how many.
    pub async fn remove(&self, project: &ProjectRef) -> Result<usize, Error> {
        let ours = self.find(project).await?;
        for h in &ours {
            self.gitlab.delete_hook(project.clone(), h.id).await?;
        }
        Ok(ours.len())
    }

    /// If GitLab auto-disabled our hook, sends a test delivery, which re-enables it when it gets a
    /// 2xx. Returns true when a disabled hook was found.
    pub async fn ensure_enabled(&self, project: &ProjectRef) -> Result<bool, Error> {
        let mut found = false;
        for h in self.find(project).await? {
            if h.is_disabled() {
                found = true;
                tracing::warn!(hook.id = %h.id, status = h.alert_status.as_deref().unwrap_or(""), "GitLab disabled the hook; sending a test delivery to re-enable it");
                self.gitlab.test_hook(project.clone(), h.id, "push_events").await?;
            }
        }
        Ok(found)
    }
}
