//! A session resuming from before what retention removed: the daemon's `resync` frame and
//! snapshot (`cloudci-webhook`'s hub has them for operator tokens), with the snapshot cut down to
//! the projects the session's user may read, each checked like a live event.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::StatusCode;
use cloudci_relay::PgLog;
use cloudci_webhook::{BuildEvent, EventFilter, EventLog, Resync};

use super::Access;
use crate::api::error::ApiError;

fn unavailable(what: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("cannot resume the event stream now: {what}"))
}

/// `None` when nothing after `requested` was removed; else the frames to send first and the seq
/// live events follow from.
pub async fn for_session(
    log: Arc<PgLog>,
    access: &Access,
    user: u64,
    filter: EventFilter,
    requested: u64,
) -> Result<Option<(Bytes, u64)>, ApiError> {
    let found = tokio::task::spawn_blocking(move || {
        let removed_through = log.removed_through()?;
        if requested >= removed_through {
            return Ok(None);
        }
        let last_seq = log.last_seq()?;
        Ok::<_, cloudci_webhook::StoreError>(Some((removed_through, last_seq, log.snapshot(&filter, last_seq)?)))
    })
    .await
    .map_err(unavailable)?
    .map_err(unavailable)?;
    let Some((removed_through, last_seq, snapshot)) = found else { return Ok(None) };
    let mut readable: Vec<BuildEvent> = Vec::with_capacity(snapshot.len());
    for e in snapshot {
        if access.may_read(user, e.project_id).await.map_err(|_| unavailable("GitLab cannot say what you may read"))? {
            readable.push(e);
        }
    }
    let resync = Resync {
        reason: format!(
            "events after {requested} up to {removed_through} may have been removed by retention; \
             the latest known event of each pipeline, job and merge request you may read follows, then live events after {last_seq}"
        ),
        requested,
        removed_through,
        last_seq,
        snapshot: readable.len(),
    };
    // The daemon's frames: the resync with `id:`, the snapshot's events without.
    let mut f = format!("id: {last_seq}\nevent: resync\ndata: ").into_bytes();
    f.extend_from_slice(&serde_json::to_vec(&resync).unwrap_or_else(|_| b"{}".to_vec()));
    f.extend_from_slice(b"\n\n");
    for e in &readable {
        f.extend_from_slice(format!("event: {}\ndata: ", e.kind.as_str()).as_bytes());
        f.extend_from_slice(&serde_json::to_vec(e).unwrap_or_else(|_| b"{}".to_vec()));
        f.extend_from_slice(b"\n\n");
    }
    Ok(Some((Bytes::from(f), last_seq)))
}
