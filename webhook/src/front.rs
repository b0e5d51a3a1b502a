//! The event log's async front: what callers outside this crate ask of the log, through the
//! [`Hub`] they already hold. Each call runs its SQLite work on tokio's blocking pool here, so
//! no caller reaches into the store or spawns blocking work of its own. `last_seq` and
//! `events_after` work over any [`EventLog`]; the rest is the daemon's (SQLite) only.

use crate::events::BuildEvent;
use crate::hub::{Hub, blocking};
use crate::log::EventLog;
use crate::store::{EventFilter, StoreError};

impl<L: EventLog> Hub<L> {
    /// The newest seq ever logged (0 when none was), also when retention removed it.
    pub async fn last_seq(&self) -> Result<u64, StoreError> {
        let store = self.store().clone();
        blocking(move || store.last_seq()).await
    }

    /// Up to `limit` events with seqs after `seq` (and at most `until`) that `filter` matches,
    /// in order, with the last seq read (to continue from).
    pub async fn events_after(
        &self,
        seq: u64,
        until: Option<u64>,
        filter: EventFilter,
        limit: usize,
    ) -> Result<(Vec<BuildEvent>, u64), StoreError> {
        let store = self.store().clone();
        blocking(move || store.events_after(seq, until, &filter, limit)).await
    }
}

impl Hub {
    /// Starts following a pipeline cloudci created before any event about it arrived, so the
    /// reconciler polls it if GitLab stays silent.
    pub async fn track(&self, project_id: u64, project: &str, pipeline_id: u64) -> Result<(), StoreError> {
        let (store, project) = (self.store().clone(), project.to_owned());
        blocking(move || store.track_pipeline(project_id, &project, pipeline_id)).await
    }

    /// What the deliveries told of a pipeline's jobs ([`crate::Store::pipeline_jobs`]).
    pub async fn pipeline_jobs(&self, pipeline_id: u64) -> Result<Vec<crate::KnownJob>, StoreError> {
        let store = self.store().clone();
        blocking(move || store.pipeline_jobs(pipeline_id)).await
    }

    /// The relay at `relay`'s last seq this log holds ([`crate::Store::relay_cursor`]).
    pub async fn relay_cursor(&self, relay: &str) -> Result<Option<u64>, StoreError> {
        let (store, relay) = (self.store().clone(), relay.to_owned());
        blocking(move || store.relay_cursor(&relay)).await
    }

    /// Logs events streamed by the relay at `relay` ([`crate::Store::mirror`]) and announces
    /// those that were new to this hub's subscribers; returns how many there were.
    pub async fn mirror(&self, relay: &str, events: Vec<BuildEvent>) -> Result<usize, StoreError> {
        let (store, relay) = (self.store().clone(), relay.to_owned());
        let logged = blocking(move || store.mirror(&relay, events)).await?;
        let n = logged.len();
        self.publish(logged);
        Ok(n)
    }

    /// When the newest stored delivery was received (Unix seconds); `None` when there is none.
    pub async fn last_delivery_at(&self) -> Result<Option<i64>, StoreError> {
        let store = self.store().clone();
        blocking(move || store.last_delivery_at()).await
    }

    /// Writes and commits `bytes` of padding, then removes them: whether the store takes a
    /// delivery of about that size now (after a full disk, before saying it is over).
    pub async fn probe_write(&self, bytes: usize) -> Result<(), StoreError> {
        let store = self.store().clone();
        blocking(move || store.probe_write(bytes)).await
    }
}
