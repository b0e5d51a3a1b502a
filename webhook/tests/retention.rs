//! Retention of the event store: what a pass removes and what it must keep (an unfinished
//! pipeline, an unfinished build's pipeline, a connected laggard's unread events), a dry run that
//! removes nothing and reports the same, and the `resync` a subscriber gets when it resumes from
//! before what was removed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cloudci_webhook::{
    BuildEvent, Durability, EventFilter, EventKind, EventSource, Hub, Incoming, Keep, NewDelivery, Observation, Store,
    StorePolicy, now_ms,
};
use futures_util::StreamExt;

const DAY_MS: i64 = 86_400_000;

fn obs(kind: EventKind, pipeline: u64, job: Option<u64>, status: &str) -> Observation {
    let mut e = BuildEvent::new(kind, 1, "Pipeline Hook", EventSource::Webhook);
    e.project = Some("acme/fw".into());
    e.pipeline_id = Some(pipeline);
    e.job_id = job;
    e.job_name = job.map(|j| format!("job{j}"));
    e.status = Some(status.into());
    Observation { event: e, max_job_id: job.unwrap_or(0) }
}

/// 1,000 bytes deflate cannot shrink (the store keeps bodies deflated; the sizes a pass reports
/// are the bytes it removed from disk).
fn noise() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    (0..1000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn deliver(store: &Store, key: &str, observations: Vec<Observation>) -> Vec<BuildEvent> {
    let delivery =
        NewDelivery { dedup_key: key.into(), event: "Pipeline Hook".into(), headers: "{}".into(), body: noise() };
    store.ingest(vec![Incoming { delivery, observations: Ok(observations) }]).unwrap().events
}

/// Pipeline 1 finished, 2 running, 3 finished but followed by an unfinished build; then a push.
fn fill(store: &Store) -> u64 {
    for (p, job) in [(1, 10), (2, 20), (3, 30)] {
        deliver(
            store,
            &format!("{p}-a"),
            vec![obs(EventKind::Job, p, Some(job), "running"), obs(EventKind::Pipeline, p, None, "running")],
        );
    }
    deliver(
        store,
        "1-b",
        vec![obs(EventKind::Job, 1, Some(10), "success"), obs(EventKind::Pipeline, 1, None, "success")],
    );
    deliver(
        store,
        "3-b",
        vec![obs(EventKind::Job, 3, Some(30), "success"), obs(EventKind::Pipeline, 3, None, "success")],
    );
    let mut push = obs(EventKind::Push, 0, None, "pushed");
    push.event.pipeline_id = None;
    deliver(store, "push", vec![push]).last().unwrap().seq
}

fn seqs(store: &Store) -> Vec<(u64, Option<u64>)> {
    let (events, _) = store.events_after(0, None, &EventFilter::default(), 10_000).unwrap();
    events.iter().map(|e| (e.seq, e.pipeline_id)).collect()
}

#[test]
fn a_pass_removes_only_what_it_may_and_a_dry_run_says_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("e.db"), Durability::Normal).unwrap();
    let last = fill(&store);
    // Stored, never processed: the processor still needs it.
    store
        .insert_delivery(&NewDelivery {
            dedup_key: "pending".into(),
            event: "Job Hook".into(),
            headers: "{}".into(),
            body: b"{}".to_vec(),
        })
        .unwrap();
    let policy = StorePolicy { batch: 2, ..StorePolicy::default() };
    let keep = Keep { pipelines: vec![3], subscribers_at: None };
    let later = now_ms() + 40 * DAY_MS;

    // Nothing is old yet.
    let now = store.gc(&policy, &keep, now_ms(), false).unwrap();
    assert_eq!((now.deliveries.count, now.events.count, now.pipelines.count), (0, 0, 0));

    let before = seqs(&store);
    let dry = store.gc(&policy, &keep, later, true).unwrap();
    assert_eq!(seqs(&store), before, "a dry run removed something");
    assert_eq!(store.removed_through().unwrap(), 0);
    // Six processed deliveries of 1,000 bytes (and their keys, headers); not the pending one.
    assert_eq!(dry.deliveries.count, 6);
    assert!(dry.deliveries.bytes >= 6000);
    // Pipeline 1's four events and the push.
    assert_eq!(dry.events.count, 5);
    assert_eq!((dry.pipelines.count, dry.jobs.count), (1, 1));

    let real = store.gc(&policy, &keep, later, false).unwrap();
    assert_eq!(real, dry, "the pass removed something else than the dry run reported");
    let left = seqs(&store);
    assert!(left.iter().all(|(_, p)| matches!(p, Some(2 | 3))), "{left:?}");
    assert_eq!(left.len(), 6);
    assert_eq!(store.removed_through().unwrap(), last);
    assert_eq!(real.removed_through, last);
    assert!(store.pending_deliveries(10).unwrap().iter().any(|d| d.event == "Job Hook"));
    let statuses = store.pipeline_statuses(&[1, 2, 3]).unwrap();
    assert!(!statuses.contains_key(&1) && statuses.contains_key(&2) && statuses.contains_key(&3));
    // A second pass has nothing more to do.
    let again = store.gc(&policy, &keep, later, false).unwrap();
    assert_eq!((again.deliveries.count, again.events.count, again.pipelines.count), (0, 0, 0));
}

#[tokio::test]
async fn a_connected_laggard_keeps_what_it_has_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("e.db"), Durability::Normal).unwrap());
    let hub = Hub::new(store.clone());
    fill(&store);
    assert_eq!(hub.oldest_subscriber(), None);
    // Connected, resuming after event 2, and reading nothing.
    let laggard = hub.subscribe_frames(EventFilter::default(), Some(2));
    let reader = hub.subscribe_frames(EventFilter::default(), None);
    assert_eq!(hub.oldest_subscriber(), Some(2));
    let keep = Keep { pipelines: vec![], subscribers_at: hub.oldest_subscriber() };
    let report = store.gc(&StorePolicy::default(), &keep, now_ms() + 40 * DAY_MS, false).unwrap();
    // Pipeline 1's first two events (seqs 1 and 2) only; its later ones are above the laggard.
    assert_eq!(report.events.count, 2);
    assert_eq!(report.pipelines.count, 0, "pipeline 1 still has events");
    assert!(seqs(&store).iter().all(|(s, _)| *s > 2));
    drop((laggard, reader));
    assert_eq!(hub.oldest_subscriber(), None);
}

async fn first_frame(stream: impl futures_util::Stream<Item = Result<Bytes, cloudci_webhook::StoreError>>) -> String {
    let mut stream = Box::pin(stream);
    let bytes = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("a frame").unwrap().unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn resuming_from_before_what_was_removed_gets_resync_and_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("e.db"), Durability::Normal).unwrap());
    let hub = Hub::new(store.clone());
    let last = fill(&store);
    let keep = Keep { pipelines: vec![3], subscribers_at: None };
    store.gc(&StorePolicy::default(), &keep, now_ms() + 40 * DAY_MS, false).unwrap();
    let removed_through = store.removed_through().unwrap();
    assert_eq!(removed_through, last);

    let text = first_frame(hub.subscribe_frames(EventFilter::default(), Some(1))).await;
    let mut frames = text.split("\n\n").filter(|f| !f.is_empty());
    let resync = frames.next().unwrap();
    assert!(resync.starts_with(&format!("id: {last}\nevent: resync\ndata: ")), "{resync}");
    let data: serde_json::Value =
        serde_json::from_str(resync.lines().nth(2).unwrap().strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(data["requested"], 1);
    assert_eq!(data["removed_through"], removed_through);
    assert_eq!(data["last_seq"], last);
    assert!(data["reason"].as_str().unwrap().contains("retention"));
    // The state still known: pipelines 2 and 3 and their jobs (1's events are gone), latest each,
    // without ids (the client's last id stays the resync's).
    let rest: Vec<BuildEvent> = frames
        .map(|f| {
            assert!(!f.contains("id: "), "{f}");
            serde_json::from_str(f.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap()
        })
        .collect();
    assert_eq!(data["snapshot"], rest.len());
    let mut got: Vec<(EventKind, Option<u64>, String)> =
        rest.iter().map(|e| (e.kind, e.pipeline_id, e.status.clone().unwrap())).collect();
    got.sort_by_key(|g| (g.1, g.0 == EventKind::Pipeline));
    assert_eq!(
        got,
        [
            (EventKind::Job, Some(2), "running".into()),
            (EventKind::Pipeline, Some(2), "running".into()),
            (EventKind::Job, Some(3), "success".into()),
            (EventKind::Pipeline, Some(3), "success".into()),
        ]
    );

    // From the newest id there is nothing missed: no resync, just what comes next.
    let mut current = Box::pin(hub.subscribe_frames(EventFilter::default(), Some(last)));
    let next = deliver(&store, "2-b", vec![obs(EventKind::Pipeline, 2, None, "success")]);
    hub.publish(next.clone());
    let bytes = tokio::time::timeout(Duration::from_secs(5), current.next()).await.unwrap().unwrap().unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(text.starts_with(&format!("id: {}\nevent: pipeline\n", next[0].seq)), "{text}");
}

fn incoming(key: &str, observations: Vec<Observation>) -> Vec<Incoming> {
    let delivery =
        NewDelivery { dedup_key: key.into(), event: "Job Hook".into(), headers: "{}".into(), body: vec![b'x'; 1000] };
    vec![Incoming { delivery, observations: Ok(observations) }]
}

/// Ages every row already stored by `days` (through a connection of its own: the store's clock
/// is the real one).
fn age(path: &std::path::Path, days: i64) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute(
        "UPDATE deliveries SET received_at = strftime('%Y-%m-%dT%H:%M:%fZ', received_at, ?1)",
        [format!("-{days} days")],
    )
    .unwrap();
    conn.execute("UPDATE events SET logged_at = logged_at - ?1", [days * DAY_MS]).unwrap();
    conn.execute("UPDATE pipelines SET last_heard = last_heard - ?1", [days * 86_400]).unwrap();
}

fn deliveries(path: &std::path::Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn.prepare("SELECT dedup_key FROM deliveries ORDER BY id").unwrap();
    stmt.query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
}

#[test]
fn commits_remove_what_expired_and_keep_what_a_pass_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.db");
    let store = Store::open(&path, Durability::Normal).unwrap();
    let last = fill(&store);
    store
        .insert_delivery(&NewDelivery {
            dedup_key: "pending".into(),
            event: "Job Hook".into(),
            headers: "{}".into(),
            body: b"{}".to_vec(),
        })
        .unwrap();
    age(&path, 40);
    let running =
        |p| vec![obs(EventKind::Job, p, Some(p * 10), "running"), obs(EventKind::Pipeline, p, None, "running")];

    // Until a pass gave the limits, a commit removes nothing. (The pending delivery defers the
    // processing of those after it: they are stored, and stay pending too.)
    let first = store.ingest_retaining(incoming("4-a", running(4)), None).unwrap();
    assert!(first.deferred);
    assert_eq!(seqs(&store).len(), last as usize);
    // A pass whose clock is a year back removes nothing itself, and turns the commits' sweep on.
    let keep = Keep { pipelines: vec![3], subscribers_at: None };
    let in_commit = StorePolicy { in_commit: true, ..StorePolicy::default() };
    let pass = store.gc(&in_commit, &keep, now_ms() - 365 * DAY_MS, false).unwrap();
    assert_eq!((pass.deliveries.count, pass.events.count), (0, 0));

    // A subscriber at seq 2: only pipeline 1's first two events are below it.
    store.ingest_retaining(incoming("5-a", running(5)), Some(2)).unwrap();
    assert!(seqs(&store).iter().all(|(s, _)| *s > 2), "{:?}", seqs(&store));
    assert_eq!(store.removed_through().unwrap(), 2);
    // Every aged, processed delivery went; the pending one and the fresh ones stay.
    assert_eq!(deliveries(&path), ["pending", "4-a", "5-a"]);

    // Nobody connected: pipeline 1's other events and the push go; 2 (running) and 3 (an
    // unfinished build's) stay.
    store.ingest_retaining(incoming("6-a", running(6)), None).unwrap();
    let left = seqs(&store);
    assert!(left.iter().all(|(_, p)| matches!(p, Some(2 | 3))), "{left:?}");
    assert_eq!(left.len(), 6, "{left:?}");
    assert_eq!(store.removed_through().unwrap(), last);
    assert!(store.pending_deliveries(10).unwrap().iter().any(|d| d.event == "Job Hook"));
    // A later pass finds what the commits left: pipeline 1's state, nothing of 2 or 3.
    let later = store.gc(&in_commit, &keep, now_ms(), false).unwrap();
    assert_eq!((later.deliveries.count, later.events.count, later.pipelines.count), (0, 0, 1));
}

#[test]
fn by_default_commits_leave_retention_to_the_pass() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.db");
    let store = Store::open(&path, Durability::Normal).unwrap();
    fill(&store);
    age(&path, 40);
    let pass = store.gc(&StorePolicy::default(), &Keep::default(), now_ms() - 365 * DAY_MS, false).unwrap();
    assert_eq!((pass.deliveries.count, pass.events.count), (0, 0));
    let before = (deliveries(&path).len(), seqs(&store).len());
    store.ingest_retaining(incoming("new", vec![obs(EventKind::Pipeline, 9, None, "running")]), None).unwrap();
    assert_eq!(deliveries(&path).len(), before.0 + 1, "a commit removed deliveries");
    assert!(seqs(&store).len() >= before.1, "a commit removed events");
}

#[test]
fn a_commit_removes_about_as_much_as_it_adds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.db");
    let store = Store::open(&path, Durability::Normal).unwrap();
    let mut push = obs(EventKind::Push, 0, None, "pushed");
    push.event.pipeline_id = None;
    for k in 0..100 {
        deliver(&store, &format!("push-{k}"), vec![push.clone()]);
    }
    age(&path, 40);
    let in_commit = StorePolicy { in_commit: true, ..StorePolicy::default() };
    store.gc(&in_commit, &Keep::default(), now_ms() - 365 * DAY_MS, false).unwrap();
    // One delivery, one event: it removes at most 1 + 16 of each (the backlog is the pass's, or
    // busier commits').
    let mut commits = 0;
    while deliveries(&path).len() > commits {
        let before = (deliveries(&path).len(), seqs(&store).len());
        store.ingest_retaining(incoming(&format!("new-{commits}"), vec![push.clone()]), None).unwrap();
        let after = (deliveries(&path).len(), seqs(&store).len());
        commits += 1;
        // Rows removed besides the one added: some, and 17 at most.
        let removed = (before.0 + 1 - after.0, before.1 + 1 - after.1);
        assert!((1..=17).contains(&removed.0) && (1..=17).contains(&removed.1), "{before:?} -> {after:?}");
        assert!(commits < 100, "the backlog is not shrinking");
    }
    // 100 aged rows, 17 a commit: 6 commits.
    assert_eq!(commits, 6);
    assert!(deliveries(&path).iter().all(|k| k.starts_with("new-")));
}
