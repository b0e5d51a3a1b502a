//! A session resuming from before what retention removed: the daemon's `resync` frame and
//! snapshot (`cloudci-webhook`'s hub has them for operator tokens), with the snapshot cut down to
//! the projects the session's user may read, each checked like a live event.

use axum::body::Bytes;
use axum::http::StatusCode;
use cloudci_relay::PgLog;
use cloudci_webhook::{BuildEvent, EventFilter, EventLog, Hub, Resync};

use super::Access;
use crate::api::error::ApiError;

fn unavailable(what: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("cannot resume the event stream now: {what}"))
}

/// `None` when nothing after `requested` was removed; else the frames to send first and the seq
/// live events follow from.
///
/// The log is read under the hub's bound on log reads ([`Hub::read_log`]): every session that
/// reconnects after a peer's kill asks this at once.
pub async fn for_session(
    hub: &Hub<PgLog>,
    access: &Access,
    user: u64,
    filter: EventFilter,
    requested: u64,
) -> Result<Option<(Bytes, u64)>, ApiError> {
    let found = hub
        .read_log(move |log| {
            let removed_through = log.removed_through()?;
            if requested >= removed_through {
                return Ok(None);
            }
            let last_seq = log.last_seq()?;
            Ok(Some((removed_through, last_seq, log.snapshot(&filter, last_seq)?)))
        })
        .await
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use cloudci_gitlab::webhook::WebhookEvent;
    use cloudci_relay::{PgLog, ScratchCluster};
    use cloudci_webhook::{
        EventFilter, EventLog, EventSource, Hub, Incoming, NewDelivery, StorePolicy, now_ms, observe,
    };

    use super::for_session;
    use crate::relay::access::Access;
    use crate::relay::access::tests::{ALICE, BOB, gitlab, sim};

    const DAY_MS: i64 = 86_400_000;
    const SAMPLE: &[u8] = include_bytes!("../../gitlab/tests/fixtures/webhook-pipeline-event.json");

    fn pipeline(project: (u64, &str), id: u64, status: &str) -> Incoming {
        let mut v: serde_json::Value = serde_json::from_slice(SAMPLE).unwrap();
        v["project"]["id"] = project.0.into();
        v["project"]["path_with_namespace"] = project.1.into();
        v["object_attributes"]["id"] = id.into();
        v["object_attributes"]["status"] = status.into();
        v["builds"] = serde_json::json!([]);
        let body = serde_json::to_vec(&v).unwrap();
        let observations =
            Ok(observe(&WebhookEvent::parse(Some("Pipeline Hook"), &body).unwrap(), EventSource::Webhook));
        let delivery = NewDelivery {
            dedup_key: format!("{}-{id}-{status}", project.0),
            event: "Pipeline Hook".into(),
            headers: "{}".into(),
            body,
        };
        Incoming { delivery, observations }
    }

    /// A session resuming from before what retention removed gets the resync frame and a
    /// snapshot of only the projects its user may read; one resuming after it, nothing extra.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_resumed_past_retention_gets_a_snapshot_of_what_its_user_may_read() {
        let Some(pg) = ScratchCluster::for_test() else { return };
        let url = pg.url();
        let (firmware, secret) = ((1, "acme/firmware"), (2, "acme/secret"));
        // Two pipelines still running in each project, and one finished in each, which a month
        // later retention removes (the running ones' events stay: the catch-up follows them).
        let (log, removed_through) = tokio::task::spawn_blocking(move || {
            let log = PgLog::open(&url).unwrap();
            for d in [
                pipeline(firmware, 10, "running"),
                pipeline(secret, 20, "running"),
                pipeline(firmware, 11, "running"),
                pipeline(secret, 21, "running"),
                pipeline(firmware, 11, "success"),
                pipeline(secret, 21, "success"),
            ] {
                log.ingest(vec![d]).unwrap();
            }
            let r = log.gc(&StorePolicy::default(), now_ms() + 31 * DAY_MS, false).unwrap();
            (Arc::new(log), r.removed_through)
        })
        .await
        .unwrap();
        assert_eq!(removed_through, 6, "the finished pipelines' events went");

        let dir = tempfile::tempdir().unwrap();
        let sim = sim(dir.path(), "").await;
        let access = Access::new(gitlab(&sim), Duration::from_secs(60));
        let hub = Hub::new(log.clone());
        let all = EventFilter::default();
        let (frames, last) = for_session(&hub, &access, ALICE, all.clone(), 3).await.unwrap().expect("a resync");
        assert_eq!(last, 6);
        let text = String::from_utf8(frames.to_vec()).unwrap();
        let frames: Vec<&str> = text.split("\n\n").filter(|f| !f.is_empty()).collect();
        assert!(frames[0].starts_with("id: 6\nevent: resync\n"), "{}", frames[0]);
        assert!(frames[0].contains("\"snapshot\":1"), "{}", frames[0]);
        // The snapshot: alice's one readable pipeline left, nothing of acme/secret.
        assert_eq!(frames.len(), 2, "{text}");
        assert!(frames[1].contains("\"pipeline_id\":10") && frames[1].contains("\"project_id\":1"), "{}", frames[1]);
        assert!(!text.contains("acme/secret") && !text.contains("\"project_id\":2"), "{text}");
        // bob (a Guest) may read neither project: the resync says so with an empty snapshot.
        let (frames, _) = for_session(&hub, &access, BOB, all.clone(), 3).await.unwrap().expect("a resync");
        let text = String::from_utf8(frames.to_vec()).unwrap();
        assert!(text.contains("\"snapshot\":0") && !text.contains("event: pipeline"), "{text}");
        // Resuming from where retention stopped, nothing was removed after it: no resync.
        assert!(for_session(&hub, &access, ALICE, all, 6).await.unwrap().is_none());
        // The blocking client closes off the runtime.
        tokio::task::spawn_blocking(move || drop((hub, log))).await.unwrap();
    }
}
