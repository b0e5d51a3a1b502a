//! Who may see what on the relay: a session's subscriber sees an event only when its GitLab
//! user may read the event's project, which the relay asks GitLab with its own token
//! (`GET /projects/:id/members/all/:user_id`, access level at least Reporter: what reading a
//! private project's pipelines takes) and remembers for at most [`MAX_TTL`].
//!
//! The check is per event, in the subscriber's own stream, so the log's order is kept and
//! nothing is skipped for a subscriber while GitLab cannot be asked: the stream ends instead
//! (the client resumes by `Last-Event-ID`). A revoked member stops receiving the project's
//! events once the cached answer is older than the TTL: its stream stays open and the
//! project's events are left out silently, like those of a project it never could read.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cloudci_gitlab::types::Member;
use cloudci_gitlab::{Gitlab, ProjectId, UserId};

/// The longest an answer is kept (the bound on revocation).
pub const MAX_TTL: Duration = Duration::from_secs(300);

/// More cached answers than this and the expired ones are dropped.
const PRUNE_AT: usize = 10_000;

/// GitLab could not say whether a user may read a project.
#[derive(Debug, thiserror::Error)]
#[error("GitLab could not say whether user {user} may read project {project}: {source}")]
pub struct AccessError {
    user: u64,
    project: u64,
    source: cloudci_gitlab::Error,
}

/// The relay's access checks and their cache, shared by every subscriber of an instance.
#[derive(Debug)]
pub struct Access {
    /// With the relay's own token.
    gitlab: Gitlab,
    ttl: Duration,
    cache: Mutex<HashMap<(u64, u64), (bool, Instant)>>,
}

impl Access {
    /// Checks through `gitlab` (the relay's token), keeping answers for `ttl` (at most
    /// [`MAX_TTL`]).
    pub fn new(gitlab: Gitlab, ttl: Duration) -> Self {
        Self { gitlab, ttl: ttl.min(MAX_TTL), cache: Mutex::new(HashMap::new()) }
    }

    /// Whether GitLab user `user` may read project `project`'s events.
    pub async fn may_read(&self, user: u64, project: u64) -> Result<bool, AccessError> {
        let key = (user, project);
        if let Some((allowed, at)) = self.cache.lock().expect("not poisoned").get(&key)
            && at.elapsed() < self.ttl
        {
            return Ok(*allowed);
        }
        let allowed = match self.gitlab.project_member_all(ProjectId(project), UserId(user)).await {
            Ok(m) => m.access_level >= Member::REPORTER,
            // Not a member, or a project the relay's token cannot see: GitLab's 404 either way.
            Err(cloudci_gitlab::Error::NotFound { .. }) => false,
            Err(source) => return Err(AccessError { user, project, source }),
        };
        let mut cache = self.cache.lock().expect("not poisoned");
        if cache.len() >= PRUNE_AT {
            let ttl = self.ttl;
            cache.retain(|_, (_, at)| at.elapsed() < ttl);
        }
        cache.insert(key, (allowed, Instant::now()));
        Ok(allowed)
    }
}
