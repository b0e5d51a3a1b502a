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
//!
//! One question per user and project is in flight at a time: when an answer expires, every
//! stream of that user waits for the one request that renews it (and shares its failure)
//! instead of each asking GitLab. Without that, each expiry sent one request per stream, and
//! GitLab's rate limit (`Retry-After`) made every stream wait.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudci_gitlab::types::Member;
use cloudci_gitlab::{Gitlab, ProjectId, UserId};

/// The longest an answer is kept (the bound on revocation).
pub const MAX_TTL: Duration = Duration::from_secs(300);

/// More users-and-projects than this and the expired ones are dropped.
const PRUNE_AT: usize = 10_000;

/// A check that took longer than this is logged: every stream of the user waited for it.
const SLOW: Duration = Duration::from_secs(1);

/// GitLab could not say whether a user may read a project.
#[derive(Debug, thiserror::Error)]
#[error("GitLab could not say whether user {user} may read project {project}: {source}")]
pub struct AccessError {
    user: u64,
    project: u64,
    /// Shared by every stream that waited for the failed request.
    source: Arc<cloudci_gitlab::Error>,
}

/// One user and project: the last answer, and the lock that one renewal holds.
#[derive(Debug, Default)]
struct Slot {
    /// Requests answered so far (read before waiting for the lock, to tell whether the failure
    /// found behind it came after this caller arrived).
    answered: AtomicU64,
    state: tokio::sync::Mutex<Answer>,
}

#[derive(Debug, Default)]
struct Answer {
    known: Option<(bool, Instant)>,
    /// The last request's failure, with its number in [`Slot::answered`].
    failed: Option<(u64, Arc<cloudci_gitlab::Error>)>,
}

/// The relay's access checks and their cache, shared by every subscriber of an instance.
#[derive(Debug)]
pub struct Access {
    /// With the relay's own token.
    gitlab: Gitlab,
    ttl: Duration,
    slots: Mutex<HashMap<(u64, u64), Arc<Slot>>>,
    /// Requests sent to GitLab (what the tests count).
    requests: AtomicU64,
}

impl Access {
    /// Checks through `gitlab` (the relay's token), keeping answers for `ttl` (at most
    /// [`MAX_TTL`]).
    pub fn new(gitlab: Gitlab, ttl: Duration) -> Self {
        Self { gitlab, ttl: ttl.min(MAX_TTL), slots: Mutex::new(HashMap::new()), requests: AtomicU64::new(0) }
    }

    /// How many questions this has sent GitLab.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Whether GitLab user `user` may read project `project`'s events.
    pub async fn may_read(&self, user: u64, project: u64) -> Result<bool, AccessError> {
        let slot = self.slot(user, project);
        let arrived = slot.answered.load(Ordering::Acquire);
        let mut answer = slot.state.lock().await;
        if let Some((allowed, at)) = answer.known
            && at.elapsed() < self.ttl
        {
            return Ok(allowed);
        }
        // A request answered after this caller arrived failed: its failure is this caller's too
        // (asking again at once would queue one request per waiting stream behind each other).
        if let Some((n, source)) = &answer.failed
            && *n > arrived
        {
            return Err(AccessError { user, project, source: source.clone() });
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let asked_at = Instant::now();
        let asked = self.gitlab.project_member_all(ProjectId(project), UserId(user)).await;
        // Counted once answered, so a caller that arrived while this was in flight shares it.
        let n = slot.answered.fetch_add(1, Ordering::AcqRel) + 1;
        let allowed = match asked {
            Ok(m) => m.access_level >= Member::REPORTER,
            // Not a member, or a project the relay's token cannot see: GitLab's 404 either way.
            Err(cloudci_gitlab::Error::NotFound { .. }) => false,
            Err(e) => {
                let source = Arc::new(e);
                answer.failed = Some((n, source.clone()));
                return Err(AccessError { user, project, source });
            }
        };
        let took = asked_at.elapsed();
        if took > SLOW {
            tracing::info!("relay: GitLab took {took:.1?} to say whether user {user} may read project {project}");
        }
        // The answer is as old as the question: GitLab may have been asked before a revocation
        // that it answered after.
        answer.known = Some((allowed, asked_at));
        answer.failed = None;
        Ok(allowed)
    }

    fn slot(&self, user: u64, project: u64) -> Arc<Slot> {
        let mut slots = self.slots.lock().expect("not poisoned");
        if slots.len() >= PRUNE_AT {
            let ttl = self.ttl;
            // A slot whose lock is free and whose answer expired holds nothing anyone waits for.
            slots.retain(|_, s| {
                Arc::strong_count(s) > 1
                    || match s.state.try_lock() {
                        Ok(a) => a.known.is_some_and(|(_, at)| at.elapsed() < ttl),
                        Err(_) => true,
                    }
            });
        }
        slots.entry((user, project)).or_default().clone()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use cloudci_gitlab::{Gitlab, RetryPolicy};
    use gitlab_sim::{Sim, SimConfig};

    use super::Access;

    const ROOT: &str = "root-token-for-access-checks";
    /// The sim's users get ids from 2 in the order declared.
    pub(crate) const ALICE: u64 = 2;
    pub(crate) const BOB: u64 = 3;
    /// acme/firmware: alice is a Reporter, bob a Guest; acme/secret (2): neither is a member.
    pub(crate) const FIRMWARE: u64 = 1;

    pub(crate) async fn sim(dir: &std::path::Path, faults: &str) -> Sim {
        let ci = [(".gitlab-ci.yml", "b:\n  script: echo\n")];
        let projects = ["firmware", "secret"]
            .map(|name| (format!("acme/{name}"), gitlab_sim::fixtures::repo_with(dir, name, &ci)))
            .to_vec();
        Sim::start(SimConfig {
            token: ROOT.into(),
            users: ["alice=alice-token", "bob=bob-token"].iter().map(|u| u.parse().unwrap()).collect(),
            members: ["acme/firmware=alice:reporter", "acme/firmware=bob:guest"]
                .iter()
                .map(|m| m.parse().unwrap())
                .collect(),
            projects,
            faults: faults.parse().unwrap(),
            ..SimConfig::default()
        })
        .await
        .unwrap()
    }

    pub(crate) fn gitlab(sim: &Sim) -> Gitlab {
        Gitlab::builder(sim.url()).private_token(ROOT.into()).retry(RetryPolicy::never()).build().unwrap()
    }

    /// The answers of `n` callers asking whether `user` may read acme/firmware, every one of
    /// them waiting behind the slot's lock before the first may ask (spawned tasks start in any
    /// order; without this, one that started after the first answer would not be waiting for it).
    async fn waiting_callers(access: &Arc<Access>, user: u64, n: usize) -> Vec<Result<bool, super::AccessError>> {
        let slot = access.slot(user, FIRMWARE);
        let held = slot.state.lock().await;
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let access = access.clone();
                tokio::spawn(async move { access.may_read(user, FIRMWARE).await })
            })
            .collect();
        // The map's, this one's, and each caller's.
        while Arc::strong_count(&slot) < n + 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(held);
        futures_util::future::join_all(tasks).await.into_iter().map(|r| r.unwrap()).collect()
    }

    /// Many streams of one user reaching an unknown or expired answer at once send GitLab one
    /// request, and share its answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_waiting_for_one_answer_share_one_request() {
        let dir = tempfile::tempdir().unwrap();
        let sim = sim(dir.path(), "").await;
        let access = Arc::new(Access::new(gitlab(&sim), Duration::from_secs(60)));
        for r in waiting_callers(&access, ALICE, 50).await {
            assert!(r.unwrap(), "alice is a Reporter");
        }
        assert_eq!(access.requests(), 1);
        for r in waiting_callers(&access, BOB, 50).await {
            assert!(!r.unwrap(), "bob is a Guest");
        }
        assert_eq!(access.requests(), 2);
        // Known: no request.
        assert!(access.may_read(ALICE, FIRMWARE).await.unwrap());
        assert_eq!(access.requests(), 2);
    }

    /// An answer older than the TTL is asked again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_expired_answer_is_asked_again() {
        let dir = tempfile::tempdir().unwrap();
        let sim = sim(dir.path(), "").await;
        let access = Arc::new(Access::new(gitlab(&sim), Duration::from_millis(300)));
        assert!(access.may_read(ALICE, FIRMWARE).await.unwrap());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(access.may_read(ALICE, FIRMWARE).await.unwrap());
        assert_eq!(access.requests(), 2);
    }

    /// The callers that waited for a request that failed share its failure (each asking again
    /// in turn would queue their requests behind each other); a caller that comes later asks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_request_fails_those_that_waited_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let sim = sim(dir.path(), "api_5xx=1").await;
        let access = Arc::new(Access::new(gitlab(&sim), Duration::from_secs(60)));
        for r in waiting_callers(&access, ALICE, 20).await {
            let err = r.unwrap_err().to_string();
            assert!(err.contains("may read project 1"), "{err}");
        }
        assert_eq!(access.requests(), 1);
        assert!(access.may_read(ALICE, FIRMWARE).await.is_err());
        assert_eq!(access.requests(), 2);
    }
}
