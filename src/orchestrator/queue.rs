//! The queue in front of one GitLab instance: at most `max_concurrent_pipelines` of cloudci's
//! pipelines run at once, the others wait their turn (first asked, first started) as `queued`,
//! and a 429 from GitLab holds the whole queue for as long as GitLab asked (`Retry-After`)
//! instead of failing the build.
//!
//! A slot is held from just before a pipeline is created until it settles. A pipeline that runs
//! already (resumed after a restart, or retried) takes a slot without waiting: it is running on
//! GitLab whatever the queue says, and counting it keeps new ones from piling on.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How long to hold the queue after a 429 that did not say how long (GitLab's pipeline creation
/// limit counts per minute): the first hold, doubled on each 429 in a row, at most a minute.
const FIRST_HOLD: Duration = Duration::from_secs(5);
const MAX_HOLD: Duration = Duration::from_secs(60);

/// The pipeline queue of one GitLab instance. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    limit: usize,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    running: usize,
    /// Builds waiting, in turn order.
    waiting: VecDeque<i64>,
    /// Builds canceled while waiting: their wait ends with no slot.
    canceled: BTreeSet<i64>,
    /// No pipeline is created before this (GitLab said 429).
    held_until: Option<Instant>,
    /// The hold to use after a 429 without `Retry-After`.
    next_hold: Option<Duration>,
}

/// Where a waiting build stands, for progress and its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// Every slot is taken; `ahead` builds wait before this one.
    Full {
        /// Pipelines running.
        running: usize,
        /// The limit.
        limit: usize,
        /// Builds before this one in the queue.
        ahead: usize,
    },
    /// GitLab asked to wait (429) for about this long.
    RateLimited(Duration),
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Full { running, limit, ahead } => {
                write!(f, "queued: {running} of {limit} pipelines running (max_concurrent_pipelines)")?;
                if *ahead > 0 {
                    write!(f, ", {ahead} ahead")?;
                }
                Ok(())
            }
            Self::RateLimited(d) => write!(f, "queued: GitLab asked to wait {} s (429)", d.as_secs().max(1)),
        }
    }
}

/// A running pipeline's place; given back when dropped.
pub struct Slot {
    queue: Queue,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.queue.state();
        s.running = s.running.saturating_sub(1);
        drop(s);
        self.queue.inner.changed.notify_waiters();
    }
}

/// Takes a build out of the waiting line if its wait is abandoned (the task was dropped).
struct InLine<'a> {
    queue: &'a Queue,
    build: i64,
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        let mut s = self.queue.state();
        s.waiting.retain(|b| *b != self.build);
        drop(s);
        self.queue.inner.changed.notify_waiters();
    }
}

impl Queue {
    /// A queue letting `limit` pipelines run at once (at least one).
    pub fn new(limit: u32) -> Self {
        Self {
            inner: Arc::new(Inner {
                limit: usize::try_from(limit.max(1)).unwrap_or(usize::MAX),
                state: Mutex::new(State::default()),
                changed: Notify::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Pipelines counted as running now.
    pub fn running(&self) -> usize {
        self.state().running
    }

    /// A slot for a pipeline that runs already: taken at once, even above the limit.
    pub fn take_now(&self) -> Slot {
        self.state().running += 1;
        Slot { queue: self.clone() }
    }

    /// Waits for build `build`'s turn and a free slot. `first` puts it at the head of the line
    /// (it had its turn and GitLab said 429). `on_wait` hears each change of where it stands.
    /// `None`: the build was canceled while it waited.
    pub async fn acquire(&self, build: i64, first: bool, mut on_wait: impl FnMut(Waiting)) -> Option<Slot> {
        {
            let mut s = self.state();
            s.canceled.remove(&build);
            if !s.waiting.contains(&build) {
                if first {
                    s.waiting.push_front(build);
                } else {
                    s.waiting.push_back(build);
                }
            }
        }
        let _in_line = InLine { queue: self, build };
        let mut last = None;
        loop {
            // Registered before the state is read, so a change in between is not missed.
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait = {
                let mut s = self.state();
                if s.canceled.remove(&build) {
                    return None;
                }
                let now = Instant::now();
                let held = s.held_until.filter(|t| *t > now);
                let ahead = s.waiting.iter().position(|b| *b == build).unwrap_or(0);
                match held {
                    Some(until) => Some((Waiting::RateLimited(until - now), Some(until))),
                    None if ahead == 0 && s.running < self.inner.limit => {
                        s.waiting.pop_front();
                        s.running += 1;
                        None
                    }
                    None => Some((Waiting::Full { running: s.running, limit: self.inner.limit, ahead }, None)),
                }
            };
            let Some((waiting, until)) = wait else {
                // The next in line may be able to go too.
                self.inner.changed.notify_waiters();
                return Some(Slot { queue: self.clone() });
            };
            if last != Some(waiting) {
                // A hold's remaining time changes every instant: report it once per hold.
                if !matches!((last, waiting), (Some(Waiting::RateLimited(_)), Waiting::RateLimited(_))) {
                    on_wait(waiting);
                }
                last = Some(waiting);
            }
            match until {
                Some(until) => {
                    tokio::select! {
                        () = &mut changed => {}
                        () = tokio::time::sleep_until(until) => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// GitLab answered 429: no pipeline is created for `retry_after` (or, when it did not say,
    /// a hold that grows with each 429 in a row). Returns the hold.
    pub fn hold(&self, retry_after: Option<Duration>) -> Duration {
        let mut s = self.state();
        let hold = retry_after.unwrap_or_else(|| s.next_hold.unwrap_or(FIRST_HOLD)).min(Duration::from_secs(3600));
        if retry_after.is_none() {
            s.next_hold = Some((s.next_hold.unwrap_or(FIRST_HOLD) * 2).min(MAX_HOLD));
        }
        let until = Instant::now() + hold;
        s.held_until = Some(s.held_until.map_or(until, |t| t.max(until)));
        drop(s);
        self.inner.changed.notify_waiters();
        hold
    }

    /// A pipeline was created: GitLab takes them again, so the next 429 starts a short hold.
    pub fn created(&self) {
        self.state().next_hold = None;
    }

    /// Ends build `build`'s wait with no slot (it was canceled). Returns whether it was waiting.
    pub fn cancel(&self, build: i64) -> bool {
        let mut s = self.state();
        let waiting = s.waiting.contains(&build);
        if waiting {
            s.canceled.insert(build);
        }
        drop(s);
        self.inner.changed.notify_waiters();
        waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn builds_wait_their_turn_for_a_free_slot() {
        let q = Queue::new(2);
        let a = q.acquire(1, false, |_| {}).await.unwrap();
        let _b = q.acquire(2, false, |_| {}).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (q3, q4) = (q.clone(), q.clone());
        let tx3 = tx.clone();
        let c = tokio::spawn(async move {
            let slot = q3.acquire(3, false, |w| tx3.send((3, w)).unwrap()).await;
            tx3.send((3, Waiting::Full { running: 0, limit: 0, ahead: 99 })).unwrap();
            slot
        });
        tokio::task::yield_now().await;
        let d = tokio::spawn(async move { q4.acquire(4, false, |w| tx.send((4, w)).unwrap()).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(rx.recv().await.unwrap(), (3, Waiting::Full { running: 2, limit: 2, ahead: 0 }));
        assert_eq!(rx.recv().await.unwrap(), (4, Waiting::Full { running: 2, limit: 2, ahead: 1 }));
        drop(a);
        let _c = c.await.unwrap().unwrap();
        assert!(!d.is_finished(), "4 still waits: 3 took the free slot");
        assert!(q.cancel(4));
        assert!(d.await.unwrap().is_none(), "a canceled build's wait ends with no slot");
        assert_eq!(q.running(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_holds_the_queue_for_retry_after() {
        let q = Queue::new(3);
        assert_eq!(q.hold(Some(Duration::from_secs(30))), Duration::from_secs(30));
        let start = Instant::now();
        let mut seen = Vec::new();
        let slot = q.acquire(1, true, |w| seen.push(w)).await.unwrap();
        assert!(start.elapsed() >= Duration::from_secs(30), "{:?}", start.elapsed());
        assert!(matches!(seen[..], [Waiting::RateLimited(_)]), "{seen:?}");
        drop(slot);
        // Without Retry-After the hold grows, and a success resets it.
        assert_eq!(q.hold(None), FIRST_HOLD);
        assert_eq!(q.hold(None), FIRST_HOLD * 2);
        q.created();
        assert_eq!(q.hold(None), FIRST_HOLD);
        let _over = (q.take_now(), q.take_now(), q.take_now(), q.take_now());
        assert_eq!(q.running(), 4, "running pipelines count even above the limit");
    }
}
