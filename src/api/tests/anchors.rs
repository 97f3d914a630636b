//! The audit chain against whoever can write the database but holds no master key: each
//! way of rewriting, cutting or moving a chain is answered `ok: false` by verification, a
//! chain verifies across a master-key rotation, and anchors written before seals existed
//! are sealed without letting a stripped seal pass for one of them.

use super::*;
use crate::audit::AuditStore;
use crate::audit::{AuditEvent, ChainHead, LegacyWindow, CLOSING_MS};

const V2: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

impl World {
    /// `user` adds the test key and looks at it `views` times: `views + 1` events.
    fn trail(&self, user: &str, views: usize) {
        let (s, created) = self.add(user);
        assert_eq!(s, 201, "{created}");
        let id = created["credential"]["id"].as_str().unwrap().to_owned();
        for _ in 0..views {
            let path = format!("/v1/credentials/{id}");
            assert_eq!(self.call("GET", &path, Some(user), None, vec![]).0, 200);
        }
    }

    /// `user` lists their keys `n` times: `n` more events.
    fn more(&self, user: &str, n: usize) {
        for _ in 0..n {
            assert_eq!(
                self.call("GET", "/v1/credentials", Some(user), None, vec![])
                    .0,
                200
            );
        }
    }

    fn verify(&self, user: &str) -> Value {
        let (s, v, _) = self.call("GET", "/v1/audit/verify", Some(user), None, vec![]);
        assert_eq!(s, 200, "{v}");
        v
    }

    /// What a database writer can do to `user`'s events: `edit` them, then recompute every
    /// link from genesis. Returns where the rewritten chain ends.
    fn rewrite(&self, user: &str, edit: impl FnOnce(&mut Vec<AuditEvent>)) -> ChainHead {
        let mut rows = self.audit.rows.borrow_mut();
        let mut events: Vec<AuditEvent> = rows
            .iter()
            .filter(|r| r.event.user_id.as_str() == user)
            .map(|r| r.event.clone())
            .collect();
        rows.retain(|r| r.event.user_id.as_str() != user);
        edit(&mut events);
        let chained = crate::audit::chain(&ChainHead::genesis(), events);
        let end = chained
            .last()
            .map(|r| r.head())
            .unwrap_or_else(ChainHead::genesis);
        rows.extend(chained);
        end
    }

    /// Points `user`'s stored head at `to`, keeping the rest of the row (its seal too).
    fn move_head(&self, user: &str, to: &ChainHead) {
        let mut heads = self.audit.heads.borrow_mut();
        let head = heads.get_mut(user).unwrap();
        head.seq = to.seq;
        head.hash = to.hash.clone();
    }

    fn reason(&self, user: &str) -> (bool, String) {
        let v = self.verify(user);
        (
            v["ok"].as_bool().unwrap(),
            v["broken_reason"].as_str().unwrap_or("").to_owned(),
        )
    }
}

fn broken(reason: &str) -> (bool, String) {
    (false, reason.to_owned())
}

#[test]
fn an_intact_chain_verifies_sealed_and_names_its_head() {
    let w = World::new();
    w.trail("u_a", 3);
    let v = w.verify("u_a");
    let head = w.audit.heads.borrow()["u_a"].clone();
    assert_eq!(
        v,
        json!({"ok": true, "checked": 4, "sealed": true, "head": {
            "seq": 4, "hash": head.hash, "key_version": 1,
            "sealed_at": crate::domain::Timestamp::from_millis(head.at).to_rfc3339_millis(),
        }})
    );
    assert!(head.mac.as_deref().unwrap().starts_with("s:"));
}

#[test]
fn a_chain_rewritten_with_recomputed_hashes_and_head_does_not_verify() {
    let w = World::new();
    w.trail("u_a", 3);
    // The second event is made to say something else, every hash after it recomputed,
    // and the head moved to the new end: each link holds, the head's seal does not.
    let end = w.rewrite("u_a", |events| {
        events[1].outcome = crate::audit::Outcome::Failure;
    });
    w.move_head("u_a", &end);
    assert_eq!(w.reason("u_a"), broken("head_invalid"));
    // With the seal stripped as well, the head is simply unsealed: a break too.
    {
        let mut heads = w.audit.heads.borrow_mut();
        let head = heads.get_mut("u_a").unwrap();
        (head.mac, head.mac_version) = (None, None);
    }
    assert_eq!(w.reason("u_a"), broken("head_unsealed"));
    // A user's removed event, rewritten away the same way, is caught the same way.
    w.trail("u_b", 3);
    let end = w.rewrite("u_b", |events| {
        events.remove(2);
    });
    w.move_head("u_b", &end);
    assert_eq!(w.reason("u_b"), broken("head_invalid"));
}

#[test]
fn a_chain_cut_short_with_its_head_moved_back_does_not_verify() {
    let w = World::new();
    w.trail("u_a", 4);
    let cut = {
        let mut rows = w.audit.rows.borrow_mut();
        rows.retain(|r| r.seq <= 3);
        rows.last().unwrap().head()
    };
    // Left where it was, the head shows the missing end.
    let v = w.verify("u_a");
    assert_eq!(
        (&v["ok"], &v["broken_seq"], &v["broken_reason"]),
        (&json!(false), &json!(4), &json!("events_missing"))
    );
    // Moved back to the new end, its seal no longer matches.
    w.move_head("u_a", &cut);
    assert_eq!(w.reason("u_a"), broken("head_invalid"));
}

#[test]
fn events_deleted_from_the_start_with_the_checkpoint_moved_do_not_verify() {
    let w = World::new();
    w.trail("u_a", 3);
    let head = w.audit.heads.borrow()["u_a"].clone();
    // Every event gone and the checkpoint put at the head (seal and all): the head's
    // seal is no checkpoint's.
    w.audit.rows.borrow_mut().clear();
    w.audit
        .checkpoints
        .borrow_mut()
        .insert("u_a".into(), head.clone());
    assert_eq!(w.reason("u_a"), broken("checkpoint_invalid"));
    // Without a seal it is no checkpoint either.
    w.audit.checkpoints.borrow_mut().insert(
        "u_a".into(),
        crate::audit::Anchor {
            mac: None,
            mac_version: None,
            ..head
        },
    );
    assert_eq!(w.reason("u_a"), broken("checkpoint_unsealed"));
}

#[test]
fn the_first_events_deleted_with_a_checkpoint_written_after_them_do_not_verify() {
    let w = World::new();
    w.trail("u_a", 3);
    let second = w.audit.rows.borrow()[1].head();
    w.audit.rows.borrow_mut().retain(|r| r.seq > 2);
    // The checkpoint a retention run would have written, but with a seal copied from
    // the head (the only one there is to copy).
    let mut forged = w.audit.heads.borrow()["u_a"].clone();
    (forged.seq, forged.hash) = (second.seq, second.hash);
    w.audit
        .checkpoints
        .borrow_mut()
        .insert("u_a".into(), forged);
    let v = w.verify("u_a");
    assert_eq!(
        (&v["ok"], &v["broken_reason"], &v["starts_after_seq"]),
        (&json!(false), &json!("checkpoint_invalid"), &json!(2))
    );
}

#[test]
fn a_head_moved_to_another_user_does_not_verify_there() {
    let w = World::new();
    w.trail("u_a", 2);
    w.trail("u_b", 0);
    // u_b's chain is replaced by three events of the writer's making, and u_b's head by
    // u_a's (same length, u_a's seal), pointed at the new end.
    let end = w.rewrite("u_b", |events| {
        let one = events[0].clone();
        events.extend([one.clone(), one]);
        for (i, e) in events.iter_mut().enumerate() {
            e.id = format!("ev_forged_{i}");
        }
    });
    let mut theirs = w.audit.heads.borrow()["u_a"].clone();
    (theirs.seq, theirs.hash) = (end.seq, end.hash);
    w.audit.heads.borrow_mut().insert("u_b".into(), theirs);
    assert_eq!(w.reason("u_b"), broken("head_invalid"));
    // u_a's own chain is untouched and still verifies.
    assert_eq!(w.verify("u_a")["ok"], true);
}

#[test]
fn a_head_seal_is_bound_to_its_user_point_time_and_kind() {
    use crate::audit::{AnchorKind, SealCheck};
    let sealer = crate::testing::test_sealer();
    let point = ChainHead {
        seq: 7,
        hash: "ab".repeat(32),
    };
    let head = sealer
        .successor(AnchorKind::Head, "u_a", None, &point, LegacyWindow::Closed)
        .unwrap();
    let ok = SealCheck::Sealed {
        strict: true,
        version: 1,
    };
    assert_eq!(sealer.check(AnchorKind::Head, "u_a", &head), ok);
    assert_eq!(
        sealer.check(AnchorKind::Head, "u_b", &head),
        SealCheck::Broken
    );
    assert_eq!(
        sealer.check(AnchorKind::Checkpoint, "u_a", &head),
        SealCheck::Broken
    );
    for change in [
        |a: &mut crate::audit::Anchor| a.seq += 1,
        |a: &mut crate::audit::Anchor| a.hash = "cd".repeat(32),
        |a: &mut crate::audit::Anchor| a.at += 1,
        |a: &mut crate::audit::Anchor| a.mac_version = Some(2),
        |a: &mut crate::audit::Anchor| a.mac = Some(a.mac.as_ref().unwrap().replace("s:", "t:")),
    ] {
        let mut forged = head.clone();
        change(&mut forged);
        assert_ne!(
            sealer.check(AnchorKind::Head, "u_a", &forged),
            ok,
            "{forged:?}"
        );
    }
    // Nothing of the master key or the MAC key is in what is stored.
    let stored = format!("{head:?}");
    assert!(!stored.contains(MASTER) && stored.len() < 200);
}

#[test]
fn a_user_who_holds_keys_but_has_no_chain_left_does_not_verify() {
    let w = World::new();
    w.trail("u_a", 1);
    w.audit.holders.borrow_mut().push("u_a".into());
    assert_eq!(w.verify("u_a")["ok"], true);
    // Events, head and checkpoint all deleted: the credential it holds was written with
    // an event, so a chain must exist.
    w.audit.rows.borrow_mut().clear();
    w.audit.heads.borrow_mut().clear();
    assert_eq!(w.reason("u_a"), broken("chain_missing"));
    // Events left without a head are a break too.
    w.trail("u_b", 1);
    w.audit.heads.borrow_mut().remove("u_b");
    assert_eq!(w.reason("u_b"), broken("head_missing"));
    // A user who never did anything verifies, empty.
    assert_eq!(
        w.verify("u_nobody"),
        json!({"ok": true, "checked": 0, "sealed": true})
    );
}

/// Version 1 and 2, 2 active, with the service tokens.
fn both_active_2() -> Config {
    config_with(
        false,
        &[
            ("SERVICE_TOKENS", &service_tokens()),
            ("MASTER_KEYS", &format!(r#"{{"1":"{MASTER}","2":"{V2}"}}"#)),
            ("MASTER_KEY_ACTIVE", "2"),
        ],
    )
}

fn only_2() -> Config {
    config_with(
        false,
        &[
            ("SERVICE_TOKENS", &service_tokens()),
            ("MASTER_KEYS", &format!(r#"{{"2":"{V2}"}}"#)),
        ],
    )
}

#[test]
fn a_chain_verifies_across_a_master_key_rotation() {
    let mut w = World::with_services(&[]);
    w.trail("u_a", 2);
    w.trail("u_idle", 1);
    // Version 2 is made active: u_a's chain moves on (its head, checked under version 1,
    // is sealed under 2); u_idle's stays sealed under 1 and still verifies.
    w.config = both_active_2();
    w.more("u_a", 2);
    let v = w.verify("u_a");
    assert_eq!(
        (&v["ok"], &v["checked"], &v["head"]["key_version"]),
        (&json!(true), &json!(5), &json!(2))
    );
    assert_eq!(w.verify("u_idle")["head"]["key_version"], 1);
    // The rotation job re-seals every anchor still under version 1 ...
    let (s, _) = w.admin("POST", "/v1/admin/master-key/rotate");
    assert_eq!(s, 202);
    for _ in 0..10 {
        if w.jobs.sent.borrow().is_empty() {
            break;
        }
        w.run_queued_jobs(vec![]);
    }
    assert!(w
        .audit
        .heads
        .borrow()
        .values()
        .all(|h| h.mac_version == Some(2)));
    // ... so version 1 can go: health is fine and every chain verifies under 2 alone.
    w.config = only_2();
    let (s, body, _) = w.call("GET", "/v1/health", None, None, vec![]);
    assert_eq!(s, 200, "{body}");
    for user in ["u_a", "u_idle"] {
        let v = w.verify(user);
        assert_eq!(
            (&v["ok"], &v["sealed"]),
            (&json!(true), &json!(true)),
            "{v}"
        );
    }
}

#[test]
fn an_anchor_under_a_removed_version_does_not_verify_and_health_names_the_version() {
    let mut w = World::with_services(&[]);
    w.trail("u_a", 1);
    // The user's key is gone (nothing but the audit chain still needs version 1) ...
    let id = w.store.rows.borrow()[0].id.to_string();
    assert_eq!(w.delete(&id), 204);
    // ... and version 1 is configured away without a rotation.
    w.config = only_2();
    assert_eq!(w.reason("u_a"), broken("head_key_version_unknown"));
    let (s, body, _) = w.call("GET", "/v1/health", None, None, vec![]);
    assert_eq!(
        (s, body["checks"]["master_key"].as_str()),
        (503, Some("version_missing")),
        "{body}"
    );
    // The chainer writes nothing over a head it cannot check: the event waits.
    let pending = w.audit.outbox.rows.borrow().len();
    w.trail("u_a", 0);
    assert_eq!(w.audit.outbox.rows.borrow().len(), pending + 1);
    // Version 1 back: the waiting events are chained and the chain verifies.
    w.config = both_active_2();
    w.chain(5);
    assert!(w.audit.outbox.rows.borrow().is_empty());
    let v = w.verify("u_a");
    assert_eq!(
        (&v["ok"], &v["head"]["key_version"]),
        (&json!(true), &json!(2))
    );
}

#[test]
fn without_a_master_key_nothing_is_chained_and_nothing_is_lost() {
    use crate::audit::{consume, nudge_body, Action, Actor, ActorType, Disposition};
    let audit = crate::testing::MemoryAudit::default();
    let user = crate::domain::UserId::parse("u_a").unwrap();
    let e = AuditEvent::new(
        "ev_0001".into(),
        crate::domain::Timestamp::from_millis(NOW_MS),
        &user,
        Action::CredentialViewed,
        Actor {
            kind: ActorType::User,
            id: "u_a".into(),
        },
    );
    audit.outbox.push(&e);
    let nudge = [json!(nudge_body(&e.id))];
    let out = block_on(consume(&audit, None, &nudge, &|_| {}));
    assert_eq!(out.dispositions, [Disposition::Ack]);
    assert!(audit.rows.borrow().is_empty() && audit.heads.borrow().is_empty());
    assert_eq!(audit.outbox.rows.borrow().len(), 1, "the event waits");
    let sealer = crate::testing::test_sealer();
    block_on(consume(&audit, Some(&sealer), &nudge, &|_| {}));
    assert_eq!(audit.rows.borrow().len(), 1);
    assert!(audit.heads.borrow()["u_a"].mac.is_some());
    // Nor can a chain be verified without the key that seals its ends.
    let w = World::new();
    w.trail("u_a", 0);
    let w = World {
        config: config(false),
        ..w
    };
    let (s, v, _) = w.call("GET", "/v1/audit/verify", Some("u_a"), None, vec![]);
    assert_eq!((s, v["code"].as_str()), (503, Some("not_configured")));
}

#[test]
fn retention_seals_the_checkpoint_it_moves_and_never_one_after_a_forgery() {
    let w = World::new();
    w.trail("u_a", 4);
    w.trail("u_b", 4);
    let cutoff = crate::domain::Timestamp::from_millis(u64::MAX / 2);
    // u_b's checkpoint is a forgery (unsealed) before retention runs.
    let forged = crate::audit::Anchor {
        mac: None,
        mac_version: None,
        ..w.audit.heads.borrow()["u_b"].clone()
    };
    w.audit
        .checkpoints
        .borrow_mut()
        .insert("u_b".into(), forged);
    w.seal_with_config();
    let sealer = w.audit.sealer.borrow();
    block_on(w.audit.apply_retention(cutoff, sealer.as_ref().unwrap())).unwrap();
    drop(sealer);
    let v = w.verify("u_a");
    assert_eq!(
        (&v["ok"], &v["sealed"], &v["starts_after_seq"]),
        (&json!(true), &json!(true), &json!(5))
    );
    // The one after the forgery stays a break.
    assert_eq!(w.reason("u_b"), broken("checkpoint_invalid"));
}

/// A world whose anchors were written before seals existed: the migration found them, so
/// the legacy window is open.
fn legacy_world() -> World {
    let w = World::new();
    w.trail("u_a", 2);
    w.trail("u_b", 1);
    for h in w.audit.heads.borrow_mut().values_mut() {
        (h.mac, h.mac_version) = (None, None);
    }
    w.audit.legacy.set(LegacyWindow::Open);
    w
}

impl World {
    /// The cron's pass over the anchors, at this world's time.
    fn settle(&self) -> crate::audit::Settled {
        self.seal_with_config();
        let sealer = self.audit.sealer.borrow();
        block_on(crate::audit::settle(
            &self.audit,
            sealer.as_ref().unwrap(),
            500,
            true,
        ))
        .unwrap()
    }
}

#[test]
fn legacy_anchors_verify_unsealed_until_the_cron_seals_them_then_the_window_closes() {
    let w = legacy_world();
    let v = w.verify("u_a");
    assert_eq!(
        (&v["ok"], &v["sealed"], &v["head"]["sealed_at"]),
        (&json!(true), &json!(false), &Value::Null)
    );
    // A legacy chain moves on unsealed until the pass has sealed it.
    w.more("u_a", 1);
    assert_eq!(w.audit.heads.borrow()["u_a"].mac, None);
    // The pass seals both heads as they are, and leaves none: the window starts closing.
    assert_eq!(w.settle().resealed, 2);
    assert_eq!(w.audit.legacy.get(), LegacyWindow::Closing);
    for user in ["u_a", "u_b"] {
        let v = w.verify(user);
        assert_eq!((&v["ok"], &v["sealed"]), (&json!(true), &json!(true)));
    }
    // It closes only once a pass finds none, long enough after the last that found one:
    // a chainer that read an unsealed head before that pass may still write after it.
    w.settle();
    assert_eq!(w.audit.legacy.get(), LegacyWindow::Closing);
    let rewind = || {
        // (The window has been closing for long enough: its row is dated back.)
        let since = w.audit.legacy_since.get();
        w.audit.legacy_since.set(since - CLOSING_MS);
    };
    {
        let mut heads = w.audit.heads.borrow_mut();
        let h = heads.get_mut("u_b").unwrap();
        (h.mac, h.mac_version) = (None, None);
    }
    rewind();
    assert_eq!(w.settle().resealed, 1);
    assert_eq!(
        w.audit.legacy.get(),
        LegacyWindow::Closing,
        "the wait starts over"
    );
    w.settle();
    assert_eq!(w.audit.legacy.get(), LegacyWindow::Closing);
    rewind();
    w.settle();
    assert_eq!(w.audit.legacy.get(), LegacyWindow::Closed);
    // Then the trusted-on-first-use seals become strict ones.
    w.settle();
    assert!(w
        .audit
        .heads
        .borrow()
        .values()
        .all(|h| h.mac.as_deref().unwrap().starts_with("s:")));
    // And a stripped seal is a break, no longer a legacy anchor.
    {
        let mut heads = w.audit.heads.borrow_mut();
        let h = heads.get_mut("u_b").unwrap();
        (h.mac, h.mac_version) = (None, None);
    }
    assert_eq!(w.reason("u_b"), broken("head_unsealed"));
}

#[test]
fn a_stripped_seal_cannot_reopen_the_legacy_window() {
    let w = World::new();
    w.trail("u_a", 2);
    w.trail("u_b", 2);
    // The writer rewrites u_a's chain, strips its head's seal and writes a legacy window
    // that looks open, as the migration would have.
    let end = w.rewrite("u_a", |events| events.truncate(1));
    w.move_head("u_a", &end);
    {
        let mut heads = w.audit.heads.borrow_mut();
        let h = heads.get_mut("u_a").unwrap();
        (h.mac, h.mac_version) = (None, None);
    }
    w.audit.legacy.set(LegacyWindow::Open);
    // u_b's strict seal shows the window was closed: u_a's unsealed head is a break.
    assert_eq!(w.reason("u_a"), broken("head_unsealed"));
    // The cron's pass seals nothing of it, and puts the window right.
    let settled = w.settle();
    assert_eq!(settled.resealed, 0);
    assert_eq!(w.audit.legacy.get(), LegacyWindow::Closed);
    assert_eq!(w.audit.heads.borrow()["u_a"].mac, None);
    // The chain moving on does not launder it: the next head is broken, for good.
    w.call("GET", "/v1/credentials", Some("u_a"), None, vec![]);
    assert_eq!(
        w.audit.heads.borrow()["u_a"].mac.as_deref(),
        Some(crate::audit::BROKEN_SEAL)
    );
    assert_eq!(w.reason("u_a"), broken("head_invalid"));
}

#[test]
fn a_head_whose_seal_fails_is_followed_by_a_broken_one_not_a_fresh_seal() {
    let w = World::new();
    w.trail("u_a", 2);
    let end = w.rewrite("u_a", |events| events.truncate(2));
    w.move_head("u_a", &end);
    assert_eq!(w.reason("u_a"), broken("head_invalid"));
    // New events are chained (nothing is lost), but the break stays visible.
    w.more("u_a", 1);
    assert_eq!(w.audit.heads.borrow()["u_a"].seq, 3);
    assert!(w.audit.outbox.rows.borrow().is_empty());
    assert_eq!(w.reason("u_a"), broken("head_invalid"));
}

#[test]
fn a_rotation_with_no_key_to_re_encrypt_still_reseals_the_chains() {
    let mut w = World::with_services(&[]);
    w.trail("u_a", 1);
    let id = w.store.rows.borrow()[0].id.to_string();
    assert_eq!(w.delete(&id), 204);
    w.config = both_active_2();
    let (s, job) = w.admin("POST", "/v1/admin/master-key/rotate");
    assert_eq!((s, &job["total"]), (202, &json!(0)));
    w.run_queued_jobs(vec![]);
    let (_, progress) = w.admin(
        "GET",
        &format!("/v1/admin/jobs/{}", job["job_id"].as_str().unwrap()),
    );
    assert_eq!(
        (&progress["state"], &progress["done"]),
        (&json!("done"), &json!(0))
    );
    w.config = only_2();
    let (s, body, _) = w.call("GET", "/v1/health", None, None, vec![]);
    assert_eq!(s, 200, "{body}");
    assert_eq!(w.verify("u_a")["head"]["key_version"], 2);
}
