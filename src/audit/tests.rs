use serde_json::json;

use super::*;
use crate::domain::{CredentialId, RequestId, Timestamp};

fn event(n: u64, action: Action) -> AuditEvent {
    let user = UserId::parse("u_1").unwrap();
    let mut e = AuditEvent::new(
        format!("ev_{n:04}"),
        Timestamp::from_millis(1_800_000_000_000 + n),
        &user,
        action,
        Actor {
            kind: ActorType::User,
            id: "u_1".into(),
        },
    );
    e.credential_id = CredentialId::parse("c_00000000000000000000000000000001");
    e.provider = Some("elevenlabs".into());
    e.request_id = RequestId::parse(&format!("req_{n}"));
    e
}

fn verify(rows: &[ChainedEvent], start: ChainHead, head: Option<&ChainHead>) -> Verification {
    let mut v = Verifier::new(start);
    for r in rows {
        v.push(r);
    }
    v.finish(head)
}

fn head_of(rows: &[ChainedEvent]) -> ChainHead {
    let last = rows.last().unwrap();
    ChainHead {
        seq: last.seq,
        hash: last.hash.clone(),
    }
}

#[test]
fn canonical_json_sorts_keys_at_every_depth_without_whitespace() {
    let v = json!({"b": 1, "a": {"d": [true, null, "x\"y"], "c": 2.5}, "é": "ü"});
    assert_eq!(
        canonical_json(&v),
        r#"{"a":{"c":2.5,"d":[true,null,"x\"y"]},"b":1,"é":"ü"}"#
    );
}

#[test]
fn the_canonical_event_has_every_member_and_its_seq() {
    let e = event(1, Action::CredentialCreated);
    assert_eq!(
        e.canonical(7),
        r#"{"action":"credential.created","actor":{"id":"u_1","type":"user"},"at":1800000000001,"credential_id":"c_00000000000000000000000000000001","detail":null,"id":"ev_0001","outcome":"success","provider":"elevenlabs","reason":null,"request_id":"req_1","seq":7,"source":null,"user_id":"u_1"}"#
    );
}

#[test]
fn hashes_link_each_event_to_the_one_before() {
    let rows = chain(
        &ChainHead::genesis(),
        vec![
            event(1, Action::CredentialCreated),
            event(2, Action::CredentialViewed),
        ],
    );
    assert_eq!(rows[0].seq, 1);
    assert_eq!(rows[0].prev_hash, GENESIS_HASH);
    assert_eq!(rows[1].prev_hash, rows[0].hash);
    assert_eq!(rows[0].hash.len(), 64);
    // SHA-256(GENESIS ‖ canonical), recomputed independently.
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    sha2::Digest::update(&mut h, GENESIS_HASH.as_bytes());
    sha2::Digest::update(&mut h, rows[0].event.canonical(1).as_bytes());
    assert_eq!(rows[0].hash, hex_bytes(&sha2::Digest::finalize(h)));
}

#[test]
fn events_are_chained_in_the_order_given() {
    // The outbox gives commit order, which is the order the operations happened in.
    let late = event(5, Action::CredentialDeleted);
    let rows = chain(
        &ChainHead::genesis(),
        vec![late, event(1, Action::CredentialCreated)],
    );
    let ids: Vec<_> = rows.iter().map(|r| (r.event.id.as_str(), r.seq)).collect();
    assert_eq!(ids, [("ev_0005", 1), ("ev_0001", 2)]);
}

#[test]
fn an_event_naming_a_provider_this_build_does_not_know_still_reads_back_and_verifies() {
    let mut e = event(1, Action::CredentialCreated);
    e.provider = Some("retired_provider".into());
    e.request_id = RequestId::parse("req from another service");
    let rows = chain(&ChainHead::genesis(), vec![e]);
    let stored = serde_json::to_string(&rows[0].event).unwrap();
    let read: AuditEvent = serde_json::from_str(&stored).unwrap();
    assert_eq!(read, rows[0].event);
    let v = verify(
        &[ChainedEvent {
            event: read,
            ..rows[0].clone()
        }],
        ChainHead::genesis(),
        Some(&head_of(&rows)),
    );
    assert!(v.ok);
}

#[test]
fn an_intact_chain_verifies() {
    let rows = chain(
        &ChainHead::genesis(),
        (1..=5)
            .map(|n| event(n, Action::CredentialViewed))
            .collect(),
    );
    let v = verify(&rows, ChainHead::genesis(), Some(&head_of(&rows)));
    assert_eq!(
        v,
        Verification {
            ok: true,
            checked: 5,
            broken_seq: None
        }
    );
}

#[test]
fn an_edited_event_breaks_the_chain_at_its_seq() {
    let mut rows = chain(
        &ChainHead::genesis(),
        (1..=5)
            .map(|n| event(n, Action::CredentialViewed))
            .collect(),
    );
    let head = head_of(&rows);
    rows[2].event.outcome = Outcome::Failure;
    let v = verify(&rows, ChainHead::genesis(), Some(&head));
    assert_eq!((v.ok, v.broken_seq), (false, Some(3)));
}

#[test]
fn a_deleted_event_breaks_the_chain_where_it_was() {
    let mut rows = chain(
        &ChainHead::genesis(),
        (1..=5)
            .map(|n| event(n, Action::CredentialViewed))
            .collect(),
    );
    let head = head_of(&rows);
    rows.remove(1);
    assert_eq!(
        verify(&rows, ChainHead::genesis(), Some(&head)).broken_seq,
        Some(2)
    );
    // Removing the newest rows is caught by the recorded head.
    let mut rows = chain(
        &ChainHead::genesis(),
        (1..=5)
            .map(|n| event(n, Action::CredentialViewed))
            .collect(),
    );
    let head = head_of(&rows);
    rows.truncate(3);
    assert_eq!(
        verify(&rows, ChainHead::genesis(), Some(&head)).broken_seq,
        Some(4)
    );
}

#[test]
fn a_rehashed_forgery_still_breaks_at_the_next_link() {
    let mut rows = chain(
        &ChainHead::genesis(),
        (1..=3)
            .map(|n| event(n, Action::CredentialViewed))
            .collect(),
    );
    let head = head_of(&rows);
    // An attacker edits event 2 and recomputes its own hash, but not the ones after it.
    rows[1].event.action = Action::CredentialDeleted;
    let forged = chain(
        &ChainHead {
            seq: 1,
            hash: rows[0].hash.clone(),
        },
        vec![rows[1].event.clone()],
    );
    rows[1] = forged[0].clone();
    assert_eq!(
        verify(&rows, ChainHead::genesis(), Some(&head)).broken_seq,
        Some(3)
    );
}

#[test]
fn a_chain_verifies_from_a_retention_checkpoint() {
    let rows = chain(
        &ChainHead::genesis(),
        (1..=6)
            .map(|n| event(n, Action::CredentialViewed))
            .collect(),
    );
    let checkpoint = ChainHead {
        seq: 3,
        hash: rows[2].hash.clone(),
    };
    let kept = &rows[3..];
    let v = verify(kept, checkpoint, Some(&head_of(&rows)));
    assert_eq!(
        v,
        Verification {
            ok: true,
            checked: 3,
            broken_seq: None
        }
    );
}

#[test]
fn event_ids_sort_by_time_then_creation_order() {
    let t = Timestamp::from_millis(1_800_000_000_000);
    let a = new_event_id(t, [0xff; 12]);
    let b = new_event_id(t, [0x00; 12]);
    assert!(a < b, "{a} {b}");
    assert!(b < new_event_id(t.plus_millis(1), [0x00; 12]));
    assert_eq!(a.len(), 3 + 12 + 4 + 24);
}

#[test]
fn events_round_trip_through_their_queue_message() {
    let mut e = event(1, Action::CredentialValidated);
    e.detail = Some(json!({"previous_status":"valid","new_status":"invalid_key"}));
    e.outcome = Outcome::Failure;
    e.reason = Some("invalid_api_key".into());
    let wire = serde_json::to_string(&e).unwrap();
    assert_eq!(serde_json::from_str::<AuditEvent>(&wire).unwrap(), e);
    assert!(wire.contains(r#""action":"credential.validated""#));
}

mod consumers {
    use futures::executor::block_on;

    use super::*;
    use crate::audit::AuditStore;
    use crate::testing::{test_sealer, MemoryAudit};

    fn msg(e: &AuditEvent) -> Value {
        Value::String(serde_json::to_string(e).unwrap())
    }

    #[test]
    fn a_batch_is_stored_and_acked_message_by_message() {
        let store = MemoryAudit::default();
        let bodies = vec![
            msg(&event(2, Action::CredentialViewed)),
            json!("not an event"),
            msg(&event(1, Action::CredentialCreated)),
        ];
        let out = block_on(consume(&store, Some(&test_sealer()), &bodies, &|_| {})).dispositions;
        assert_eq!(
            out,
            [Disposition::Ack, Disposition::Retry, Disposition::Ack]
        );
        let rows = store.rows.borrow();
        // Chained in order of time, whatever the order of delivery.
        assert_eq!(
            rows.iter()
                .map(|r| (r.seq, r.event.id.as_str()))
                .collect::<Vec<_>>(),
            [(1, "ev_0001"), (2, "ev_0002")]
        );
    }

    #[test]
    fn a_redelivered_message_leaves_one_row_and_an_intact_chain() {
        let store = MemoryAudit::default();
        let e = event(1, Action::CredentialCreated);
        block_on(consume(&store, Some(&test_sealer()), &[msg(&e)], &|_| {}));
        let again = block_on(consume(
            &store,
            Some(&test_sealer()),
            &[msg(&e), msg(&event(2, Action::CredentialViewed))],
            &|_| {},
        ))
        .dispositions;
        assert_eq!(again, [Disposition::Ack, Disposition::Ack]);
        assert_eq!(store.rows.borrow().len(), 2);
        let user = UserId::parse("u_1").unwrap();
        let page = block_on(store.chain_page(&user, 0, 10)).unwrap();
        let head = block_on(store.anchors(&user, &[1]))
            .unwrap()
            .head
            .map(|h| h.point());
        let mut v = Verifier::new(ChainHead::genesis());
        page.iter().for_each(|r| v.push(r));
        assert!(v.finish(head.as_ref()).ok);
    }

    #[test]
    fn a_backlog_beyond_one_invocation_asks_for_another_pass_until_it_is_chained() {
        use crate::audit::{nudge_body, CONSUMER_ROUNDS, ROUND_SIZE};
        let store = MemoryAudit::default();
        let backlog = CONSUMER_ROUNDS * ROUND_SIZE as usize + 30;
        let events: Vec<AuditEvent> = (1..=backlog as u64)
            .map(|n| event(n, Action::CredentialImported))
            .collect();
        block_on(store.enqueue(&events)).unwrap();
        let nudge = [Value::String(nudge_body("ev_0001"))];
        let first = block_on(consume(&store, Some(&test_sealer()), &nudge, &|_| {}));
        assert_eq!(first.dispositions, [Disposition::Ack]);
        assert!(first.more_waiting, "the bound was reached with events left");
        assert_eq!(store.rows.borrow().len(), backlog - 30);
        let second = block_on(consume(&store, Some(&test_sealer()), &nudge, &|_| {}));
        assert!(!second.more_waiting, "nothing is left: no further pass");
        assert_eq!(store.rows.borrow().len(), backlog);
        // Exactly at the bound: one more pass finds the outbox empty and stops.
        let exact = MemoryAudit::default();
        block_on(exact.enqueue(&events[..CONSUMER_ROUNDS * ROUND_SIZE as usize])).unwrap();
        assert!(block_on(consume(&exact, Some(&test_sealer()), &nudge, &|_| {})).more_waiting);
        assert!(!block_on(consume(&exact, Some(&test_sealer()), &nudge, &|_| {})).more_waiting);
    }

    #[test]
    fn a_conflict_that_does_not_clear_asks_for_no_further_pass() {
        use crate::audit::{link, nudge_body, ChainHead, CONSUMER_ROUNDS, ROUND_SIZE};
        let store = MemoryAudit::default();
        let events: Vec<AuditEvent> = (1..=(CONSUMER_ROUNDS * ROUND_SIZE as usize) as u64 + 1)
            .map(|n| event(n, Action::CredentialImported))
            .collect();
        block_on(store.enqueue(&events)).unwrap();
        // A chained row the user's head does not know of: every round's seq 1 collides.
        store.rows.borrow_mut().push(link(
            &ChainHead::genesis(),
            event(9_999, Action::CredentialViewed),
        ));
        let out = block_on(consume(
            &store,
            Some(&test_sealer()),
            &[Value::String(nudge_body("x"))],
            &|_| {},
        ));
        assert!(!out.more_waiting, "nothing was chained: no new nudge");
        assert_eq!(store.rows.borrow().len(), 1);
    }

    #[test]
    fn a_failing_store_retries_the_messages_it_could_not_take() {
        let store = MemoryAudit::default();
        store.down.set(true);
        let out = block_on(consume(
            &store,
            Some(&test_sealer()),
            &[msg(&event(1, Action::CredentialCreated))],
            &|_| {},
        ))
        .dispositions;
        assert_eq!(out, [Disposition::Retry]);
    }

    #[test]
    fn dead_letters_are_chained_if_possible_and_kept_verbatim_otherwise() {
        let store = MemoryAudit::default();
        let out = block_on(consume_dead_letters(
            &store,
            Some(&test_sealer()),
            &[
                msg(&event(1, Action::CredentialCreated)),
                json!({"junk": true}),
            ],
            &|_| {},
        ));
        assert_eq!(out, [Disposition::Ack, Disposition::Ack]);
        assert_eq!(store.rows.borrow().len(), 1);
        assert_eq!(
            store.dead_letters.borrow()[0],
            (
                r#"{"junk":true}"#.to_owned(),
                "not an audit event".to_owned()
            )
        );
    }

    #[test]
    fn retention_moves_the_checkpoint_and_the_rest_still_verifies() {
        let store = MemoryAudit::default();
        let events: Vec<_> = (1..=5)
            .map(|n| event(n, Action::CredentialViewed))
            .collect();
        block_on(store.enqueue(&events)).unwrap();
        block_on(drain(&store, &test_sealer(), 1)).unwrap();
        let removed = block_on(
            store.apply_retention(Timestamp::from_millis(1_800_000_000_003), &test_sealer()),
        )
        .unwrap();
        assert_eq!(removed, 2);
        let user = UserId::parse("u_1").unwrap();
        let anchors = block_on(store.anchors(&user, &[1])).unwrap();
        let (checkpoint, head) = (
            anchors.checkpoint.map(|c| c.point()),
            anchors.head.map(|h| h.point()),
        );
        let checkpoint = checkpoint.unwrap();
        assert_eq!(checkpoint.seq, 2);
        let mut v = Verifier::new(checkpoint);
        block_on(store.chain_page(&user, 2, 10))
            .unwrap()
            .iter()
            .for_each(|r| v.push(r));
        assert_eq!(
            v.finish(head.as_ref()),
            Verification {
                ok: true,
                checked: 3,
                broken_seq: None
            }
        );
    }
}

#[test]
fn from_json_reads_events_as_serde_does() {
    let full = {
        let mut e = event(1, Action::CredentialUsed);
        e.outcome = Outcome::Failure;
        e.reason = Some("invalid_key".into());
        e.source = Some(Source::System);
        e.detail = Some(json!({"model": "m", "n": 1.5, "list": [1, null]}));
        e.actor.kind = ActorType::Service;
        e
    };
    let bare = AuditEvent::new(
        "ev_2".into(),
        Timestamp::from_millis(7),
        &UserId::parse("u_2").unwrap(),
        Action::CredentialCreated,
        Actor {
            kind: ActorType::User,
            id: "u_2".into(),
        },
    );
    for e in [full, bare] {
        let value = serde_json::to_value(&e).unwrap();
        assert_eq!(AuditEvent::from_json(&value).as_ref(), Some(&e));
        // Variations serde takes or refuses, read the same way.
        let mut variations = vec![json!({"extra": 1}), json!({"detail": null})];
        for (name, bad) in [
            ("at", json!(-1)),
            ("at", json!(1.5)),
            ("id", json!(3)),
            ("user_id", json!("not a user id")),
            ("action", json!("credential.exploded")),
            ("actor", json!({"type": "robot", "id": "x"})),
            ("actor", json!({"type": "user"})),
            ("credential_id", json!("c_short")),
            ("source", json!("elsewhere")),
            ("reason", json!(false)),
            ("request_id", json!(12)),
        ] {
            variations.push(json!({ name: bad }));
        }
        for change in variations {
            let mut v = value.clone();
            for (k, x) in change.as_object().unwrap() {
                v[k] = x.clone();
            }
            let ours = AuditEvent::from_json(&v);
            let serde = serde_json::from_value::<AuditEvent>(v.clone()).ok();
            assert_eq!(ours, serde, "{v}");
        }
        for name in ["id", "at", "user_id", "action", "actor", "outcome"] {
            let mut v = value.clone();
            v.as_object_mut().unwrap().remove(name);
            assert_eq!(AuditEvent::from_json(&v), None, "{name}");
        }
        for name in [
            "credential_id",
            "provider",
            "reason",
            "source",
            "request_id",
            "detail",
        ] {
            let mut v = value.clone();
            v.as_object_mut().unwrap().remove(name);
            let serde = serde_json::from_value::<AuditEvent>(v.clone()).ok();
            assert_eq!(AuditEvent::from_json(&v), serde, "{name}");
        }
    }
}
