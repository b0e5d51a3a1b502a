//! cloudci's project hooks on GitLab: install (or update) one per project, find the ones this
//! installation left behind, re-enable one GitLab auto-disabled, remove them on shutdown.
//!
//! Hooks are recognised by the installation id in their description (GitLab 17.1+ keeps `name`
//! and `description`), so two developers' cloudci on the same project never touch each other's
//! hook; on older servers, by the receiver's path secret in the URL.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudci_gitlab::types::{HookEventFilter, HookEventStatus, HookEvents, HookParams, ProjectHook};
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
    /// Idempotency keys already resent by this process, so a delivery is resent once.
    resent: Arc<Mutex<HashSet<String>>>,
}

/// The deliveries worth resending: what GitLab's API cannot tell again. Pipelines and jobs are
/// caught up from the API (the reconciler); pushes and merge request events are not.
const RESENT_TRIGGERS: [&str; 3] = ["push_hooks", "tag_push_hooks", "merge_request_hooks"];
/// GitLab allows 5 resends a minute per project and user (FACTS §1.7): one every 12 s.
const RESEND_EVERY: Duration = Duration::from_secs(12);
/// How many of the newest failed deliveries are looked at (one page of GitLab's log).
const FAILED_LOOKBACK: usize = 20;

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
        Self {
            gitlab,
            instance: instance.into(),
            url: url.into(),
            path_secrets,
            token,
            signing_token,
            resent: Arc::default(),
        }
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
    /// updates the first one found, deletes any others, or creates one. A create that may have
    /// reached GitLab ([`Error::MaybeApplied`]) is followed by another look before trying again,
    /// so a restart under GitLab trouble never leaves two hooks. A hook GitLab paused after
    /// failed deliveries (a restart of a few seconds costs four) is re-enabled at once.
    pub async fn install(&self, project: &ProjectRef) -> Result<ProjectHook, Error> {
        let params = self.params();
        let mut attempts = 0;
        let hook = loop {
            let mut ours = self.find(project).await?;
            if let Some(existing) = ours.first() {
                let hook = self.gitlab.edit_hook(project.clone(), existing.id, &params).await?;
                for stale in ours.drain(1..) {
                    tracing::info!(hook.id = %stale.id, "removing a duplicate cloudci hook");
                    self.gitlab.delete_hook(project.clone(), stale.id).await?;
                }
                break hook;
            }
            match self.gitlab.create_hook(project.clone(), &params).await {
                Ok(hook) => break hook,
                Err(e @ Error::MaybeApplied { .. }) if attempts < 3 => {
                    attempts += 1;
                    tracing::warn!("creating the hook: {e}; looking whether GitLab created it");
                }
                Err(e) => return Err(e),
            }
        };
        if hook.is_disabled() {
            self.re_enable(project, &hook).await?;
            return Ok(self.find(project).await?.into_iter().next().unwrap_or(hook));
        }
        Ok(hook)
    }

    async fn re_enable(&self, project: &ProjectRef, hook: &ProjectHook) -> Result<(), Error> {
        tracing::warn!(
            hook.id = %hook.id,
            status = hook.alert_status.as_deref().unwrap_or(""),
            "GitLab paused the hook after failed deliveries; sending a test delivery to re-enable it"
        );
        self.gitlab.test_hook(project.clone(), hook.id, "push_events").await
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
    /// 2xx. Returns true when a disabled hook was found (what GitLab did meanwhile was not
    /// delivered: the caller should catch up).
    pub async fn ensure_enabled(&self, project: &ProjectRef) -> Result<bool, Error> {
        let mut found = false;
        for h in self.find(project).await? {
            if h.is_disabled() {
                found = true;
                self.re_enable(project, &h).await?;
            }
        }
        Ok(found)
    }

    /// Resends, within GitLab's limit, the push and merge request deliveries that GitLab logged
    /// as failed with no answer or a 5xx (cloudci was down, stopped or unreachable), oldest first,
    /// each once per process. The receiver de-duplicates on the `Idempotency-Key` a resend keeps,
    /// so one that did arrive after all changes nothing. Returns how many were resent.
    pub async fn resend_failed(&self, project: &ProjectRef) -> Result<usize, Error> {
        use futures_util::StreamExt;
        let failed = HookEventFilter { status: Some(HookEventStatus::ServerFailure) };
        let mut resent = 0;
        for hook in self.find(project).await? {
            let log: Vec<_> =
                self.gitlab.hook_events(project.clone(), hook.id, &failed).take(FAILED_LOOKBACK).try_collect().await?;
            let due: Vec<_> = log
                .into_iter()
                .rev()
                .filter(|e| RESENT_TRIGGERS.contains(&e.trigger.as_str()))
                .filter_map(|e| Some((e.idempotency_key()?.to_owned(), e.id)))
                .collect();
            for (key, event_id) in due {
                if !self.resent.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone()) {
                    continue;
                }
                if resent > 0 {
                    tokio::time::sleep(RESEND_EVERY).await;
                }
                match self.gitlab.resend_hook_event(project.clone(), hook.id, event_id).await {
                    Ok(_) => resent += 1,
                    // Past the limit or refused (the hook's URL changed since): what is left waits
                    // for the next outage's turn; polling branch heads covers pushes meanwhile.
                    Err(e) => {
                        tracing::warn!(hook.id = %hook.id, "resending a failed delivery: {e}");
                        self.resent.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                        return Ok(resent);
                    }
                }
            }
        }
        if resent > 0 {
            tracing::info!(project = %project, resent, "resent deliveries GitLab could not make");
        }
        Ok(resent)
    }
}
