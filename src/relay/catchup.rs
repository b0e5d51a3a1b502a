//! The relay's GitLab side, run by the one instance that leads ([`cloudci_relay::Leader`]):
//! the team's project hooks (find-or-create one per project, pointing at the relay's public
//! URL; health; re-enable what GitLab paused), resending what GitLab's delivery log says failed,
//! and the daemon's own reconciler over the shared log (silent pipelines, and catch-up on what
//! no delivery announced). What GitLab could not deliver while an instance or PostgreSQL was
//! down comes back this way: a delivery answered 503 or never answered is in GitLab's delivery
//! log (resent for what the API cannot tell again) and its pipeline in the API (caught up).
//!
//! When PostgreSQL goes away, the leader's session and lock go with it: when it is back, an
//! instance takes the lock and starts these duties afresh — hooks checked and re-enabled,
//! failures resent, every unfinished pipeline read, a catch-up. So an outage's end is handled
//! by the same path as a new leader's start.

use std::time::Duration;

use cloudci_gitlab::{Gitlab, ProjectRef};
use cloudci_relay::PgLog;
use cloudci_webhook::{HookManager, Hub, Reconciler};
use tokio::sync::watch;

/// The leader's duties and what they need.
#[derive(Debug, Clone)]
pub struct Duties {
    /// The team's projects' hooks.
    pub hooks: HookManager,
    /// With the relay's own token.
    pub gitlab: Gitlab,
    /// The instance's fan-out over the shared log.
    pub hub: Hub<PgLog>,
    /// The team's projects.
    pub projects: Vec<ProjectRef>,
    /// How often the hooks are checked (GitLab paused one?).
    pub hook_check: Duration,
    /// A pipeline silent this long is read again.
    pub silence: Duration,
    /// Catch up at least this often.
    pub catch_up_every: Duration,
}

/// Aborts a task when dropped: a duty ends with the leadership it belongs to.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the duties whenever this instance leads, and stops them when it no longer does.
pub async fn run(leading: watch::Receiver<bool>, duties: Duties) {
    while_leading(leading, move || duties.clone().lead()).await;
}

/// Runs `duty()` whenever this instance leads, and aborts it when it no longer does.
pub async fn while_leading<F, Fut>(mut leading: watch::Receiver<bool>, duty: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        let task = AbortOnDrop(tokio::spawn(duty()));
        if leading.wait_for(|l| !*l).await.is_err() {
            return;
        }
        drop(task);
    }
}

impl Duties {
    async fn lead(self) {
        let reconciler = Reconciler::new(self.gitlab.clone(), self.hub.clone(), self.silence)
            .with_projects(self.projects.clone())
            .with_catch_up_every(self.catch_up_every);
        // Its first round reads every unfinished pipeline and catches up: what a new leader owes
        // (the previous one may have died mid-round, PostgreSQL may just be back).
        let _reconciler =
            AbortOnDrop(tokio::spawn(reconciler.clone().run((self.silence / 3).max(Duration::from_secs(1)))));
        let mut not_installed = self.projects.clone();
        let mut resend = Vec::new();
        let mut first = true;
        loop {
            let mut installed_late = false;
            let mut still = Vec::new();
            for p in not_installed.drain(..) {
                match self.hooks.install(&p).await {
                    Ok(hook) => {
                        tracing::info!(project = %p, hook.id = %hook.id, "relay: the team's webhook is installed");
                        installed_late |= !first;
                        resend.push(p);
                    }
                    Err(e) => {
                        tracing::warn!(project = %p, "relay: cannot install the webhook yet: {e}");
                        still.push(p);
                    }
                }
            }
            not_installed = still;
            first = false;
            for p in resend.drain(..) {
                if let Err(e) = self.hooks.resend_failed(&p).await {
                    tracing::warn!(project = %p, "relay: reading the webhook's delivery log: {e}");
                }
            }
            if installed_late {
                reconciler.request_catch_up();
            }
            tokio::time::sleep(self.hook_check).await;
            let mut re_enabled = false;
            for p in self.projects.iter().filter(|p| !not_installed.contains(p)) {
                match self.hooks.ensure_enabled(p).await {
                    Ok(true) => {
                        re_enabled = true;
                        resend.push(p.clone());
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(project = %p, "relay: checking the webhook: {e}"),
                }
            }
            if re_enabled {
                reconciler.request_catch_up();
            }
        }
    }
}
