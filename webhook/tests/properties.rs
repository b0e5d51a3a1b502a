//! Property tests (the fuzz suite): header+body parsing and signature checking never panic and
//! accept exactly what they should; the state machine never moves backwards whatever the order.

use cloudci_gitlab::types::Status;
use cloudci_gitlab::webhook::WebhookEvent;
use cloudci_webhook::{DeliveryHeaders, EventSource, HookSecrets, VerifyError, judge_job, observe, sign};
use proptest::prelude::*;
use secrecy::SecretString;

const KEY: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn secrets() -> HookSecrets {
    HookSecrets::new(SecretString::from("path"), vec![]).with_signing_token(&SecretString::from(KEY)).unwrap()
}

/// JSON values shaped like webhook bodies: a known or unknown object_kind and random fields.
fn body_like() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "[a-z_ ]{0,12}".prop_map(serde_json::Value::from),
    ];
    let value = leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z_]{1,16}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    let kind = prop_oneof![
        Just("pipeline"),
        Just("build"),
        Just("merge_request"),
        Just("push"),
        Just("tag_push"),
        Just("deployment"),
        Just("note"),
    ];
    (kind, prop::collection::btree_map("[a-z_]{1,20}", value, 0..8)).prop_map(|(k, fields)| {
        let mut m: serde_json::Map<String, serde_json::Value> = fields.into_iter().collect();
        m.insert("object_kind".into(), k.into());
        serde_json::Value::Object(m)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parsing_arbitrary_bytes_never_panics(header in proptest::option::of(".{0,40}"), body in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(event) = WebhookEvent::parse(header.as_deref(), &body) {
            let _ = observe(&event, EventSource::Webhook);
        }
    }

    #[test]
    fn parsing_body_shaped_json_never_panics(body in body_like(), header in prop_oneof![Just(None), Just(Some("Pipeline Hook")), Just(Some("Job Hook")), Just(Some("Other Hook"))]) {
        let bytes = serde_json::to_vec(&body).unwrap();
        match WebhookEvent::parse(header, &bytes) {
            Ok(event) => { let _ = observe(&event, EventSource::Webhook); }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn a_valid_signature_verifies_and_any_change_breaks_it(
        body in prop::collection::vec(any::<u8>(), 0..256),
        id in "[a-zA-Z0-9_-]{1,40}",
        flip in any::<prop::sample::Index>(),
    ) {
        let now = 1_700_000_000i64;
        let ts = now.to_string();
        let sig = sign(KEY, &id, &ts, &body).unwrap();
        let h = DeliveryHeaders { token: None, webhook_id: Some(&id), timestamp: Some(&ts), signature: Some(&sig) };
        prop_assert_eq!(secrets().check(&h, &body, now), Ok(()));
        if !body.is_empty() {
            let mut changed = body.clone();
            let i = flip.index(changed.len());
            changed[i] ^= 0x01;
            prop_assert_eq!(secrets().check(&h, &changed, now), Err(VerifyError::BadSignature));
        }
        let other_id = format!("{id}x");
        let h2 = DeliveryHeaders { webhook_id: Some(&other_id), ..h };
        prop_assert_eq!(secrets().check(&h2, &body, now), Err(VerifyError::BadSignature));
    }

    #[test]
    fn arbitrary_signature_headers_are_refused_not_panicked_on(
        sig in ".{0,120}", id in proptest::option::of(".{0,20}"), ts in proptest::option::of(".{0,12}"),
    ) {
        let h = DeliveryHeaders { token: None, webhook_id: id.as_deref(), timestamp: ts.as_deref(), signature: Some(&sig) };
        let refused = secrets().check(&h, b"[]", 1_700_000_000).is_err();
        prop_assert!(refused);
    }

    /// Any order, with repeats, of statuses along one run: what is accepted only ever moves
    /// forward, and ends at the furthest status delivered.
    #[test]
    fn statuses_only_move_forward(order in Just(vec![0usize, 1, 2, 3, 3, 2, 1, 0, 2]).prop_shuffle(), end in 0usize..3) {
        let path = [Status::Created, Status::Pending, Status::Running, [Status::Success, Status::Failed, Status::Canceled][end].clone()];
        let mut known = None;
        let mut accepted: Vec<Status> = Vec::new();
        for i in &order {
            let s = &path[*i];
            if judge_job(known.as_ref(), s).accepted() {
                known = Some(s.clone());
                accepted.push(s.clone());
            }
        }
        prop_assert!(accepted.windows(2).all(|w| w[1].rank() > w[0].rank()), "{:?}", accepted);
        prop_assert_eq!(accepted.last(), Some(&path[3]));
    }
}
