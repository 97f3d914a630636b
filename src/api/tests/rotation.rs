//! Master-key rotation: the job re-encrypts every row under the active version in
//! chunks, resumably; health names a version still in use but configured away.

use super::*;
use crate::jobs::{Job, REWRAP_CHUNK};

const V2: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

/// The world's configuration with `ring` as MASTER_KEYS and `active`.
fn configured(ring: &str, active: &str) -> Config {
    let tokens = service_tokens();
    config_with(
        false,
        &[
            ("SERVICE_TOKENS", &tokens),
            ("MASTER_KEYS", ring),
            ("MASTER_KEY_ACTIVE", active),
        ],
    )
}

fn both() -> String {
    format!(r#"{{"1":"{MASTER}","2":"{V2}"}}"#)
}

impl World {
    /// Runs the queued job messages (and those they queue) through the consumer, `rounds`
    /// times at most.
    fn run_jobs(&self, rounds: usize) {
        for _ in 0..rounds {
            if self.jobs.sent.borrow().is_empty() {
                break;
            }
            self.run_queued_jobs(vec![]);
        }
    }

    fn versions(&self) -> Vec<u32> {
        self.store
            .rows
            .borrow()
            .iter()
            .map(|c| c.secret.as_ref().unwrap().key_version.get())
            .collect()
    }
}

/// Two chunks and a bit of users with a key each, sealed under version 1; then version 2
/// is made active.
const USERS: u64 = 2 * REWRAP_CHUNK as u64 + 5;

fn rotated_world() -> World {
    let mut w = World::with_config(&[]);
    for i in 0..USERS {
        assert_eq!(w.add_key(&format!("u_{i}"), KEY, valid()).0, 201);
    }
    w.config = configured(&both(), "2");
    w
}

#[test]
fn a_rotation_reencrypts_every_row_in_chunks_and_reports_progress() {
    let w = rotated_world();
    let (s, job) = w.admin("POST", "/v1/admin/master-key/rotate");
    assert_eq!(
        (s, job["total"].as_u64(), job["state"].as_str()),
        (202, Some(USERS), Some("running")),
        "{job}"
    );
    let id = job["job_id"].as_str().unwrap().to_owned();
    // One chunk: progress shows.
    let first = w.jobs.sent.borrow().clone();
    assert_eq!(first, [Job::Rewrap { job_id: id.clone() }]);
    w.run_jobs(1);
    let (_, progress) = w.admin("GET", &format!("/v1/admin/jobs/{id}"));
    assert_eq!(
        (progress["done"].as_u64(), progress["state"].as_str()),
        (Some(u64::from(REWRAP_CHUNK)), Some("running"))
    );
    // The rest.
    w.run_jobs(10);
    let (_, progress) = w.admin("GET", &format!("/v1/admin/jobs/{id}"));
    assert_eq!(
        (
            &progress["state"],
            &progress["done"],
            &progress["failed"],
            &progress["total"]
        ),
        (&json!("done"), &json!(USERS), &json!(0), &json!(USERS))
    );
    assert!(w.versions().iter().all(|v| *v == 2));
    // Every key still opens, under version 2 alone.
    let mut w = w;
    w.config = configured(&format!(r#"{{"2":"{V2}"}}"#), "2");
    let (s, body, _) = w.call("GET", "/v1/health", None, None, vec![]);
    assert_eq!(s, 200, "{body}");
    let (s, c, _) = w.call(
        "POST",
        &format!("/v1/credentials/{}/validate", w.stored().id),
        Some("u_0"),
        None,
        valid(),
    );
    assert_eq!((s, c["status"].as_str()), (200, Some("valid")), "{c}");
    let trail = w.actions("u_3");
    assert!(
        trail
            .iter()
            .any(|(a, o, _)| a == "master_key.rotated" && o == "success"),
        "{trail:?}"
    );
}

#[test]
fn a_lost_message_is_resumed_and_a_redelivery_redoes_nothing() {
    let w = rotated_world();
    let (_, job) = w.admin("POST", "/v1/admin/master-key/rotate");
    let id = job["job_id"].as_str().unwrap().to_owned();
    w.run_jobs(1);
    // The next step's message is lost (the server stopped).
    let lost = w.jobs.sent.borrow_mut().drain(..).count();
    assert_eq!(lost, 1);
    // A redelivery of the first message carries on from the cursor, redoing nothing.
    w.jobs
        .sent
        .borrow_mut()
        .push(Job::Rewrap { job_id: id.clone() });
    w.run_jobs(1);
    w.jobs.sent.borrow_mut().clear();
    let (_, progress) = w.admin("GET", &format!("/v1/admin/jobs/{id}"));
    assert_eq!(progress["done"], 2 * REWRAP_CHUNK);
    assert!(w.jobs.sent.borrow().is_empty(), "not stalled yet");
    // Stalled: asking for the progress sets it going again.
    w.clock.advance(31_000);
    w.admin("GET", &format!("/v1/admin/jobs/{id}"));
    w.run_jobs(10);
    let (_, progress) = w.admin("GET", &format!("/v1/admin/jobs/{id}"));
    assert_eq!(
        (&progress["state"], &progress["done"]),
        (&json!("done"), &json!(USERS))
    );
    assert!(w.versions().iter().all(|v| *v == 2));
}

#[test]
fn health_names_a_version_still_in_use_that_is_configured_away() {
    let mut w = World::with_config(&[]);
    w.added();
    w.config = configured(&format!(r#"{{"2":"{V2}"}}"#), "2");
    let (s, body, _) = w.call("GET", "/v1/health", None, None, vec![]);
    assert_eq!(
        (s, body["checks"]["master_key"].as_str()),
        (503, Some("version_missing")),
        "{body}"
    );
    assert!(body["detail"].as_str().unwrap().contains("version 1"));
}

#[test]
fn a_row_that_no_longer_opens_is_counted_failed_and_left_alone() {
    let w = rotated_world();
    {
        let mut rows = w.store.rows.borrow_mut();
        let sealed = rows[4].secret.as_mut().unwrap();
        sealed.ciphertext[0] ^= 1;
    }
    let (_, job) = w.admin("POST", "/v1/admin/master-key/rotate");
    let id = job["job_id"].as_str().unwrap().to_owned();
    w.run_jobs(10);
    let (_, progress) = w.admin("GET", &format!("/v1/admin/jobs/{id}"));
    assert_eq!(
        (&progress["state"], &progress["done"], &progress["failed"]),
        (&json!("done"), &json!(USERS - 1), &json!(1))
    );
    assert_eq!(w.versions().iter().filter(|v| **v == 1).count(), 1);
}

impl World {
    /// `user`'s `master_key.rotated` events: (from, to) versions.
    fn rewraps(&self, user: &str) -> Vec<(u64, u64)> {
        let path = "/v1/audit?action=master_key.rotated&limit=200";
        let (_, body, _) = self.call("GET", path, Some(user), None, vec![]);
        body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let d = &e["detail"];
                (
                    d["from_version"].as_u64().unwrap(),
                    d["to_version"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

#[test]
fn a_step_racing_another_from_the_same_cursor_reseals_nothing_twice() {
    let w = rotated_world();
    let (_, job) = w.admin("POST", "/v1/admin/master-key/rotate");
    let id = job["job_id"].as_str().unwrap().to_owned();
    // What a delayed delivery of the first message reads before the first step writes:
    // the job at its start, and the first chunk's rows under version 1.
    let job_then = w.store.jobs.borrow()[0].clone();
    let rows_then = block_on(crate::credentials::CredentialStore::stale_keys(
        &w.store,
        2,
        None,
        REWRAP_CHUNK,
    ))
    .unwrap();
    w.run_jobs(1);
    let next = w.jobs.sent.borrow_mut().drain(..).collect::<Vec<_>>();
    assert_eq!(next.len(), 1);
    // The delayed step runs now, on what it read then.
    *w.store.job_read.borrow_mut() = Some(job_then);
    *w.store.stale_read.borrow_mut() = Some(rows_then);
    w.jobs
        .sent
        .borrow_mut()
        .push(Job::Rewrap { job_id: id.clone() });
    w.run_queued_jobs(vec![]);
    assert!(
        w.jobs.sent.borrow().is_empty(),
        "the step that lost queues nothing more"
    );
    let (_, progress) = w.admin("GET", &format!("/v1/admin/jobs/{id}"));
    assert_eq!(progress["done"], REWRAP_CHUNK, "{progress}");
    // The job carries on from where the first step left it, and ends.
    w.jobs.sent.borrow_mut().extend(next);
    w.run_jobs(10);
    let (_, progress) = w.admin("GET", &format!("/v1/admin/jobs/{id}"));
    assert_eq!(
        (
            &progress["state"],
            &progress["done"],
            &progress["failed"],
            &progress["total"]
        ),
        (&json!("done"), &json!(USERS), &json!(0), &json!(USERS))
    );
    // One event per row, and every row under version 2.
    for i in 0..USERS {
        assert_eq!(w.rewraps(&format!("u_{i}")), [(1, 2)], "u_{i}");
    }
    assert!(w.versions().iter().all(|v| *v == 2));
}

#[test]
fn a_row_already_under_the_active_version_is_left_alone() {
    let w = rotated_world();
    let (_, job) = w.admin("POST", "/v1/admin/master-key/rotate");
    let id = job["job_id"].as_str().unwrap().to_owned();
    // Between the step's read and its first write, that row's user rotates their key,
    // which seals it under the active version 2.
    let first = w
        .store
        .rows
        .borrow()
        .iter()
        .map(|c| c.id.clone())
        .min_by(|a, b| a.as_str().cmp(b.as_str()))
        .unwrap();
    let owner = w
        .store
        .rows
        .borrow()
        .iter()
        .find(|c| c.id == first)
        .unwrap()
        .user_id
        .clone();
    w.race(move |rows: &mut Vec<Credential>| {
        let v1: [u8; 32] = std::array::from_fn(|i| i as u8);
        let v2: [u8; 32] = std::array::from_fn(|i| 32 + i as u8);
        let ring = crate::crypto::MasterKeys::for_tests(&[(1, v1), (2, v2)], 2);
        let row = rows.iter_mut().find(|c| c.id == first).unwrap();
        let secret = crate::crypto::SecretKey::new(KEY.into());
        row.secret =
            Some(crate::crypto::seal(&ring, &crate::crypto::Binding::of(row), &secret).unwrap());
        row.version += 1;
    });
    w.run_jobs(10);
    let (_, progress) = w.admin("GET", &format!("/v1/admin/jobs/{id}"));
    assert_eq!(
        (&progress["state"], &progress["done"], &progress["failed"]),
        (&json!("done"), &json!(USERS - 1), &json!(0))
    );
    assert_eq!(w.rewraps(owner.as_str()), []);
    assert!(w.versions().iter().all(|v| *v == 2));
}
