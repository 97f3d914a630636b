//! The revalidation sweep: claiming what is due, the admin trigger, and the consumer's
//! checks (bounded, spread per provider, back-off as a delayed retry, conditional writes,
//! only status changes audited).

use super::*;
use crate::domain::{CredentialStatus, Timestamp};
use crate::jobs::{Job, JobOutcome};
use crate::testing::respond_with;

fn world() -> World {
    World::with_services(&[
        ("REVALIDATE_AFTER_HOURS", "0"),
        ("ENVIRONMENT", "development"),
    ])
}

impl World {
    fn sweep_now(&self) -> (u16, Value) {
        let (s, v, _) = self.call_with_token(
            "POST",
            "/v1/admin/revalidate",
            Some(ADMIN.into()),
            None,
            vec![],
        );
        (s, v)
    }

    /// Runs the queued jobs through the consumer with `script` as the providers' answers.
    fn consume(&self, script: Vec<Scripted>) -> (Vec<JobOutcome>, usize) {
        self.run_queued_jobs(script)
    }

    fn status_of(&self, user: &str) -> CredentialStatus {
        let rows = self.store.rows.borrow();
        rows.iter()
            .find(|c| c.user_id.as_str() == user)
            .unwrap()
            .status
    }
}

#[test]
fn a_sweep_claims_what_is_due_once_and_the_admin_can_start_one() {
    let w = world();
    for user in ["u_1", "u_2", "u_3"] {
        assert_eq!(w.add_key(user, KEY, valid()).0, 201);
    }
    let (s, body) = w.sweep_now();
    assert_eq!((s, body["queued"].as_u64()), (202, Some(3)), "{body}");
    let sent = w.jobs.sent.borrow().clone();
    assert!(sent
        .iter()
        .all(|j| matches!(j, Job::Revalidate { provider, .. } if provider == "elevenlabs")));
    // Claimed: a second sweep within the hour queues nothing again.
    assert_eq!(w.sweep_now().1["queued"], 0);
    w.clock.advance(crate::jobs::CLAIM_TTL_MS + 1);
    assert_eq!(
        w.sweep_now().1["queued"],
        3,
        "a claim that expired is due again"
    );
    // Only an admin token starts one.
    let (s, _, _) = w.call_with_token(
        "POST",
        "/v1/admin/revalidate",
        Some(token("u_1")),
        None,
        vec![],
    );
    assert_eq!(s, 401);
}

#[test]
fn the_consumer_flips_a_revoked_key_audits_only_the_change_and_spreads_per_provider() {
    let w = world();
    for user in ["u_1", "u_2", "u_3"] {
        w.add_key(user, KEY, valid());
    }
    w.clock.advance(1000);
    w.sweep_now();
    let (outcomes, calls) = w.consume(vec![
        // u_1: still valid (subscription, models); u_2: revoked.
        respond(200, SUBSCRIPTION),
        respond(200, MODELS),
        respond(401, INVALID),
    ]);
    // Two checks of one provider per batch; the third waits a little.
    assert_eq!(
        outcomes,
        [JobOutcome::Ack, JobOutcome::Ack, JobOutcome::RetryAfter(5)]
    );
    assert_eq!(calls, 3);
    assert_eq!(w.status_of("u_1"), CredentialStatus::Valid);
    assert_eq!(w.status_of("u_2"), CredentialStatus::InvalidKey);
    let validated = |user: &str| -> Vec<_> {
        w.actions(user)
            .into_iter()
            .filter(|(a, _, _)| a == "credential.validated")
            .collect()
    };
    assert!(
        validated("u_1").is_empty(),
        "an unchanged status is not audited"
    );
    assert_eq!(
        validated("u_2"),
        [(
            "credential.validated".to_string(),
            "failure".to_string(),
            Some("invalid_api_key".to_string())
        )]
    );
}

#[test]
fn a_providers_back_off_becomes_a_delayed_retry_and_nothing_is_written() {
    let w = world();
    w.add_key("u_1", KEY, valid());
    let before = w.stored();
    w.clock.advance(1000);
    w.sweep_now();
    let limited = r#"{"detail":{"status":"too_many_concurrent_requests","message":"Too many concurrent requests."}}"#;
    let (outcomes, calls) = w.consume(vec![respond_with(429, &[("retry-after", "7")], limited)]);
    assert_eq!(
        (outcomes.as_slice(), calls),
        (&[JobOutcome::RetryAfter(7)][..], 1)
    );
    let after = w.stored();
    assert_eq!(
        (after.version, after.status),
        (before.version, before.status)
    );
    // An outage says nothing about the key either.
    w.clock.advance(crate::jobs::CLAIM_TTL_MS + 1);
    w.sweep_now();
    let (outcomes, _) = w.consume(vec![Scripted::Refuse]);
    assert_eq!(outcomes, [JobOutcome::RetryAfter(60)]);
    assert_eq!(w.stored().status, CredentialStatus::Valid);
}

#[test]
fn a_sweep_never_undoes_a_rotation_and_a_redelivery_checks_nothing_twice() {
    let w = world();
    let id = w.added();
    w.clock.advance(1000);
    w.sweep_now();
    let queued = w.jobs.sent.borrow().clone();
    // The user rotates while the sweep's check of the old key is under way.
    w.race(move |rows| {
        rows[0].version += 1;
        rows[0].key_hint = Some("…bbbb".into());
    });
    let (outcomes, _) = w.consume(vec![respond(401, INVALID)]);
    assert_eq!(outcomes, [JobOutcome::Ack]);
    let row = w.stored();
    assert_eq!(
        (row.status, row.key_hint.as_deref()),
        (CredentialStatus::Valid, Some("…bbbb"))
    );
    assert!(!w
        .actions("u_a")
        .iter()
        .any(|(a, _, r)| a == "credential.validated" && r.is_some()));

    // The same message again, after a check that landed: nothing is asked.
    w.clock.advance(1000);
    let (s, _, _) = w.call(
        "POST",
        &format!("/v1/credentials/{id}/validate"),
        Some("u_a"),
        None,
        valid(),
    );
    assert_eq!(s, 200);
    *w.jobs.sent.borrow_mut() = queued;
    let (outcomes, calls) = w.consume(vec![]);
    assert_eq!((outcomes.as_slice(), calls), (&[JobOutcome::Ack][..], 0));
    let _ = Timestamp::from_millis(0);
}

#[test]
fn a_row_under_a_master_key_version_configured_away_is_left_alone() {
    let mut w = world();
    w.added();
    w.clock.advance(1000);
    w.sweep_now();
    let before = w.stored();
    // Version 1 was dropped from the configuration by mistake.
    let tokens = w.config.service_tokens.clone();
    w.config = crate::config::Config::parse(|k| match k {
        "AUTH_JWT_SECRET" => Some(SECRET.into()),
        "AUTH_AUDIENCE" => Some(AUDIENCE.into()),
        "MASTER_KEYS" => Some(r#"{"2":"ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="}"#.into()),
        "REVALIDATE_AFTER_HOURS" => Some("0".into()),
        "ENVIRONMENT" => Some("development".into()),
        _ => None,
    })
    .unwrap();
    w.config.service_tokens = tokens;
    let (outcomes, calls) = w.consume(vec![]);
    assert_eq!((outcomes.as_slice(), calls), (&[JobOutcome::Ack][..], 0));
    let after = w.stored();
    assert_eq!(
        (after.status, after.version),
        (before.status, before.version)
    );
}

#[test]
fn a_message_that_outlived_its_claim_gives_way_to_the_newer_one() {
    let w = world();
    w.added();
    w.clock.advance(1000);
    w.sweep_now();
    let old = w.jobs.sent.borrow_mut().drain(..).collect::<Vec<_>>();
    // The check was deferred past the claim's hour; the next sweep claims it again.
    w.clock.advance(crate::jobs::CLAIM_TTL_MS + 1);
    w.sweep_now();
    let new = w.jobs.sent.borrow_mut().drain(..).collect::<Vec<_>>();
    assert_eq!(new.len(), 1);
    *w.jobs.sent.borrow_mut() = old;
    let (outcomes, calls) = w.consume(vec![]);
    assert_eq!(
        (outcomes.as_slice(), calls),
        (&[JobOutcome::Ack][..], 0),
        "the stale message checked"
    );
    *w.jobs.sent.borrow_mut() = new;
    let (_, calls) = w.consume(valid());
    assert_eq!(calls, 2, "the newer message checks it");
}

impl World {
    /// The operator imports `entries` without a check (a real run).
    fn import_unchecked(&self, entries: Value) {
        let (s, _, _) = self.call_with_token(
            "POST",
            "/v1/admin/import",
            Some(ADMIN.into()),
            Some(json!({"dry_run": false, "entries": entries})),
            vec![],
        );
        assert_eq!(s, 200);
    }

    /// What the limiter counted for `scope` and `key`.
    fn counted(&self, scope: &str, key: &str) -> u32 {
        let seen = self.limiter.seen.borrow();
        seen.get(&(scope.to_owned(), key.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Spends the limiter's whole allowance for `scope` and `key`.
    fn spend(&self, scope: &str, key: &str, n: u32) {
        self.limiter
            .seen
            .borrow_mut()
            .insert((scope.to_owned(), key.to_owned()), n);
    }

    fn row_of(&self, user: &str) -> crate::domain::Credential {
        let rows = self.store.rows.borrow();
        rows.iter()
            .find(|c| c.user_id.as_str() == user)
            .unwrap()
            .clone()
    }
}

fn imported(user: &str, key: &str) -> Value {
    json!({"user_id": user, "provider": "elevenlabs", "api_key": key})
}

#[test]
fn the_sweeps_check_of_an_imported_row_counts_against_its_users_limit_and_waits_when_refused() {
    let w = world();
    w.import_unchecked(json!([imported("u_a", KEY), imported("u_b", KEY2)]));
    // u_a has spent this minute's live checks (adding keys, say).
    w.spend("User", "u_a", 1000);
    let before = w.row_of("u_a");
    w.sweep_now();
    let queued = w.jobs.sent.borrow().clone();
    let (outcomes, calls) = w.consume(valid());
    // u_a's check waits a minute and asks nothing; u_b's runs.
    assert_eq!(outcomes, [JobOutcome::RetryAfter(60), JobOutcome::Ack]);
    assert_eq!(calls, 2, "only u_b's key was checked");
    let after = w.row_of("u_a");
    assert_eq!(
        (after.status, after.version, after.last_validated_at),
        (CredentialStatus::Unverified, before.version, None),
        "a refused check marks nothing"
    );
    assert_eq!(w.row_of("u_b").status, CredentialStatus::Valid);
    assert_eq!(w.counted("User", "u_b"), 1);
    assert_eq!(
        w.counted("ClientAddress", "sweep"),
        2,
        "every imported row's check"
    );
    // The message comes back once the minute has passed: now it is checked.
    w.spend("User", "u_a", 0);
    *w.jobs.sent.borrow_mut() = queued[..1].to_vec();
    let (outcomes, calls) = w.consume(valid());
    assert_eq!((outcomes.as_slice(), calls), (&[JobOutcome::Ack][..], 2));
    assert_eq!(w.row_of("u_a").status, CredentialStatus::Valid);
}

#[test]
fn the_sweeps_checks_of_imported_rows_share_one_limit_in_total() {
    let w = world();
    w.import_unchecked(json!([imported("u_a", KEY), imported("u_b", KEY2)]));
    w.spend("ClientAddress", "sweep", 1000);
    w.sweep_now();
    let (outcomes, calls) = w.consume(vec![]);
    assert_eq!(
        (outcomes.as_slice(), calls),
        (
            &[JobOutcome::RetryAfter(60), JobOutcome::RetryAfter(60)][..],
            0
        )
    );
    assert_eq!(
        w.counted("User", "u_a"),
        0,
        "a refused total spends no user's allowance"
    );
    // A limiter out of reach checks nothing either.
    w.spend("ClientAddress", "sweep", 0);
    w.limiter.down.set(true);
    w.clock.advance(crate::jobs::CLAIM_TTL_MS + 1);
    w.sweep_now();
    let (outcomes, calls) = w.consume(vec![]);
    assert_eq!((outcomes.len(), calls), (2, 0));
    assert!(outcomes.iter().all(|o| *o == JobOutcome::RetryAfter(60)));
    assert_eq!(w.row_of("u_a").status, CredentialStatus::Unverified);
}

#[test]
fn the_sweeps_check_of_a_key_its_user_added_is_not_counted() {
    let w = world();
    w.add_key("u_a", KEY, valid());
    let added = w.counted("User", "u_a");
    w.clock.advance(1000);
    w.sweep_now();
    let (outcomes, _) = w.consume(valid());
    assert_eq!(outcomes, [JobOutcome::Ack]);
    assert_eq!(w.counted("User", "u_a"), added);
    assert_eq!(w.counted("ClientAddress", "sweep"), 0);
}

#[test]
fn a_dead_key_is_rechecked_less_and_less_often_then_not_until_its_user_acts() {
    let w = world();
    let id = w.added();
    let day = 86_400_000;
    let queued = |w: &World| w.sweep_now().1["queued"].as_u64().unwrap();
    // The sweep finds it revoked.
    w.clock.advance(1000);
    assert_eq!(queued(&w), 1);
    w.consume(vec![respond(401, INVALID)]);
    assert_eq!(w.stored().status, CredentialStatus::InvalidKey);
    // Then asks again after 1, 2, 4, 8 and 16 days, never sooner.
    for wait in [day, 2 * day, 4 * day, 8 * day, 16 * day] {
        w.clock.advance(wait - 1);
        assert_eq!(queued(&w), 0, "asked again before {} days", wait / day);
        w.clock.advance(1);
        assert_eq!(queued(&w), 1, "not asked after {} days", wait / day);
        let (_, calls) = w.consume(vec![respond(401, INVALID)]);
        assert_eq!(calls, 1);
    }
    // Six checks in a row found it dead: no more, however long it stays.
    w.clock.advance(365 * day);
    assert_eq!(queued(&w), 0, "a key dead for a month is still asked");
    assert_eq!(w.stored().dead_checks, crate::jobs::DEAD_CHECKS_MAX);
    // Its user re-checks it (still dead): the usual schedule again.
    // (A token for now: a year has passed since the world's own were minted.)
    let now_token = || {
        sign_hs256(
            &json!({"alg":"HS256"}),
            &json!({"sub":"u_a","exp":w.clock.now().as_unix_seconds() + 600,"aud":AUDIENCE}),
            SECRET.as_bytes(),
        )
    };
    let path = format!("/v1/credentials/{id}/validate");
    let (s, body, _) = w.call_with_token(
        "POST",
        &path,
        Some(now_token()),
        None,
        vec![respond(401, INVALID)],
    );
    assert_eq!((s, body["status"].as_str()), (200, Some("invalid_key")));
    assert_eq!(w.stored().dead_checks, 0);
    w.clock.advance(1000);
    assert_eq!(queued(&w), 1);
    // A rotation to a working key ends it too; a key found working is never backed off.
    w.consume(vec![respond(401, INVALID)]);
    assert_eq!(w.stored().dead_checks, 1);
    let (s, _, _) = w.call_with_token(
        "PATCH",
        &format!("/v1/credentials/{id}"),
        Some(now_token()),
        Some(json!({"api_key": KEY2})),
        valid(),
    );
    assert_eq!(s, 200);
    assert_eq!(
        (w.stored().status, w.stored().dead_checks),
        (CredentialStatus::Valid, 0)
    );
}

#[test]
fn deleting_a_credential_removes_its_notices_not_yet_delivered() {
    let w = world();
    let id = w.added();
    let other = w.add_key("u_b", KEY2, valid()).1["credential"]["id"].clone();
    w.clock.advance(1000);
    w.sweep_now();
    // Both keys were revoked: a notice each waits for delivery.
    w.consume(vec![respond(401, INVALID), respond(401, INVALID)]);
    let notices = || -> Vec<Option<String>> {
        w.audit
            .outbox
            .notices
            .borrow()
            .iter()
            .map(|n| n.credential_id.clone())
            .collect()
    };
    assert_eq!(notices().len(), 2);
    assert_eq!(w.delete(&id), 204);
    assert_eq!(
        notices(),
        [other.as_str().map(str::to_owned)],
        "u_a's notice is still queued"
    );
}
