//! Retention of the relay's log on a throwaway PostgreSQL: old events and processed deliveries
//! go in batches; what a connected subscriber (any instance's hold), the catch-up (an unfinished
//! pipeline) or the processor (a pending delivery) still needs stays; nothing younger than
//! GitLab's 7-day delivery log goes whatever the policy says; a dry run removes nothing and
//! counts what the real pass then removes.

use std::path::PathBuf;
use std::time::Duration;

use cloudci_gitlab::webhook::WebhookEvent;
use cloudci_relay::{PgLog, ScratchCluster};
use cloudci_webhook::{
    EventFilter, EventKind, EventLog, EventSource, Incoming, NewDelivery, StorePolicy, now_ms, observe,
};

const DAY_MS: i64 = 86_400_000;

fn fixture(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../gitlab/tests/fixtures").join(name);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn delivery(key: &str, event: &str, body: serde_json::Value) -> Incoming {
    let body = serde_json::to_vec(&body).unwrap();
    let observations = Ok(observe(&WebhookEvent::parse(Some(event), &body).unwrap(), EventSource::Webhook));
    Incoming {
        delivery: NewDelivery { dedup_key: format!("key:{key}"), event: event.into(), headers: "{}".into(), body },
        observations,
    }
}

fn push(n: u64) -> Incoming {
    let mut v = fixture("webhook-push-event.json");
    v["after"] = format!("{n:040x}").into();
    delivery(&format!("push-{n}"), "Push Hook", v)
}

fn pipeline(id: u64, status: &str) -> Incoming {
    let mut v = fixture("webhook-pipeline-event.json");
    v["object_attributes"]["id"] = id.into();
    v["object_attributes"]["status"] = status.into();
    v["builds"] = serde_json::json!([]);
    delivery(&format!("pipeline-{id}-{status}"), "Pipeline Hook", v)
}

fn seqs(log: &PgLog) -> Vec<u64> {
    let (events, _) = log.events_after(0, None, &EventFilter::default(), 100_000).unwrap();
    events.iter().map(|e| e.seq).collect()
}

fn count(url: &str, sql: &str) -> i64 {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    c.query_one(sql, &[]).unwrap().get(0)
}

fn policy(batch: usize) -> StorePolicy {
    StorePolicy { batch, ..StorePolicy::default() }
}

#[test]
fn retention_removes_old_rows_in_batches_and_keeps_what_is_needed() {
    let Some(pg) = ScratchCluster::for_test() else { return };
    let url = pg.url();
    let log = PgLog::open(&url).unwrap();
    // Pipeline 100 finishes; 200 is still running (the catch-up follows it); pushes between.
    let mut batches = vec![vec![pipeline(200, "running")], vec![pipeline(100, "running")]];
    batches.extend((1..=10).map(|n| vec![push(n)]));
    batches.push(vec![pipeline(100, "success")]);
    batches.extend((11..=20).map(|n| vec![push(n)]));
    for b in batches {
        log.ingest(b).unwrap();
    }
    let all = seqs(&log);
    assert_eq!(all, (1..=23).collect::<Vec<_>>());
    let kinds = |seq: u64| {
        let (e, _) = log.events_after(seq - 1, Some(seq), &EventFilter::default(), 1).unwrap();
        (e[0].kind, e[0].pipeline_id)
    };
    assert_eq!(kinds(1), (EventKind::Pipeline, Some(200)));
    // A delivery still pending (an instance died before sequencing it).
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    c.execute(
        "INSERT INTO deliveries (dedup_key, event, headers, body) VALUES ('key:pending', 'Push Hook', '{}', '{}')",
        &[],
    )
    .unwrap();
    let deliveries = count(&url, "SELECT COUNT(*) FROM deliveries");
    assert_eq!(deliveries, 24);

    // Young: nothing goes, whatever the policy, before GitLab's 7-day window is over.
    let eager = StorePolicy { deliveries: Duration::from_secs(3600), events: Duration::from_secs(3600), ..policy(3) };
    let r = log.gc(&eager, now_ms() + 6 * DAY_MS, false).unwrap();
    assert_eq!((r.deliveries.count, r.events.count, r.pipelines.count), (0, 0, 0), "{r:?}");
    assert_eq!(log.removed_through().unwrap(), 0);

    // A month on, one instance's subscriber is at seq 15: everything above it stays.
    log.hold("instance-a", Some(15)).unwrap();
    log.hold("instance-b", None).unwrap();
    let month = now_ms() + 31 * DAY_MS;
    let dry = log.gc(&policy(3), month, true).unwrap();
    assert_eq!(seqs(&log), all, "a dry run removes nothing");
    assert_eq!(count(&url, "SELECT COUNT(*) FROM deliveries"), deliveries);
    let r = log.gc(&policy(3), month, false).unwrap();
    // The dry run counts the deliveries and events the pass removes; pipeline state it cannot
    // (a pipeline whose last events only the real pass removes is not counted by it).
    assert_eq!((r.deliveries, r.events, r.removed_through), (dry.deliveries, dry.events, dry.removed_through));
    // Every processed delivery went (in batches of 3), the pending one stayed.
    assert_eq!(r.deliveries.count, 23);
    assert!(r.deliveries.bytes > 0);
    assert_eq!(count(&url, "SELECT COUNT(*) FROM deliveries WHERE dedup_key = 'key:pending'"), 1);
    assert_eq!(count(&url, "SELECT COUNT(*) FROM deliveries"), 1);
    // Events 2..=15 went but pipeline 200's (seq 1), which is unfinished.
    assert_eq!(seqs(&log), [1].into_iter().chain(16..=23).collect::<Vec<_>>());
    assert_eq!((r.events.count, r.removed_through), (14, 15));
    assert_eq!(log.removed_through().unwrap(), 15);
    // Pipeline 100's state stays while an event of it is left... none is (its two events were
    // at 2 and 13): it goes; 200's stays.
    assert_eq!(r.pipelines.count, 1);
    assert_eq!(count(&url, "SELECT COUNT(*) FROM pipelines WHERE id = 200"), 1);
    assert_eq!(count(&url, "SELECT COUNT(*) FROM pipelines WHERE id = 100"), 0);
    // last_seq still says where the log is.
    assert_eq!(log.last_seq().unwrap(), 23);

    // instance-a died a while ago: its hold is stale and ignored.
    c.execute(
        "UPDATE subscriber_holds SET updated_at = now() - interval '10 minutes' WHERE instance = 'instance-a'",
        &[],
    )
    .unwrap();
    assert_eq!(log.oldest_held().unwrap(), None);
    let r = log.gc(&policy(3), month, false).unwrap();
    assert_eq!((r.events.count, r.removed_through), (8, 23));
    assert_eq!(seqs(&log), [1]);
    // The snapshot of what is left: the running pipeline's latest event.
    let snap = log.snapshot(&EventFilter::default(), 23).unwrap();
    assert_eq!(snap.iter().map(|e| (e.seq, e.pipeline_id)).collect::<Vec<_>>(), [(1, Some(200))]);
}
