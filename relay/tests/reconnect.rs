//! A relay instance whose sessions went idle across a PostgreSQL restart stores the next
//! delivery at once: the blocking client learns of the broken session only when it uses it, and
//! that first call must not become a 503 for GitLab once PostgreSQL is back.

use std::path::PathBuf;

use cloudci_gitlab::webhook::WebhookEvent;
use cloudci_relay::{PgLog, ScratchCluster};
use cloudci_webhook::{EventLog, EventSource, Incoming, NewDelivery, Stored, observe};

fn push(n: u64) -> Incoming {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../gitlab/tests/fixtures/webhook-push-event.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["after"] = format!("{n:040x}").into();
    let body = serde_json::to_vec(&v).unwrap();
    let observations = Ok(observe(&WebhookEvent::parse(Some("Push Hook"), &body).unwrap(), EventSource::Webhook));
    Incoming {
        delivery: NewDelivery { dedup_key: format!("key:r{n}"), event: "Push Hook".into(), headers: "{}".into(), body },
        observations,
    }
}

#[test]
fn the_first_delivery_after_a_restart_is_stored_not_refused() {
    let Some(pg) = ScratchCluster::for_test() else { return };
    let log = PgLog::open(&pg.url()).unwrap();
    assert!(matches!(log.receive(vec![push(1)]).unwrap().stored[..], [Stored::New(_)]));
    for round in 2..4 {
        pg.stop_immediate().unwrap();
        pg.start_again().unwrap();
        let done = log.receive(vec![push(round)]);
        assert!(matches!(done.as_ref().map(|d| &d.stored[..]), Ok([Stored::New(_)])), "round {round}: {done:?}");
    }
    // And a resend of what was stored is still a duplicate, not a second row.
    assert!(matches!(log.receive(vec![push(2)]).unwrap().stored[..], [Stored::Duplicate(_)]));
}
