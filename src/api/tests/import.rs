//! Importing keys an operator holds (`POST /v1/admin/import`) and taking a batch back
//! (`POST /v1/admin/import/{batch_id}/rollback`).

use super::*;
use crate::domain::CredentialStatus;
use crate::import::UNCHECKED_WARNING;

const KEY3: &str = "sk_9999888877776666555544443333222211110000ffffeeee";

impl World {
    fn import(&self, body: Value, script: Vec<Scripted>) -> (u16, Value) {
        self.admin_with("POST", "/v1/admin/import", Some(body), script)
    }

    fn rollback(&self, batch: &str) -> (u16, Value) {
        self.admin("POST", &format!("/v1/admin/import/{batch}/rollback"))
    }

    /// What a dry run could change: rows, queued events, jobs.
    fn footprint(&self) -> (usize, usize, usize) {
        (
            self.store.rows.borrow().len(),
            self.store.outbox.rows.borrow().len(),
            self.store.jobs.borrow().len(),
        )
    }
}

fn entry(user: &str, key: &str) -> Value {
    json!({"user_id": user, "provider": "elevenlabs", "api_key": key, "label": "Imported"})
}

fn outcomes(report: &Value) -> Vec<String> {
    report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let reason = e["reason"]
                .as_str()
                .map(|r| format!(":{r}"))
                .unwrap_or_default();
            format!("{}{reason}", e["outcome"].as_str().unwrap())
        })
        .collect()
}

/// Entries of every kind: u_a already holds KEY (added first), u_b gets KEY (twice in
/// the request), u_c gets KEY2, and four entries are wrong in different ways.
fn mixed() -> Value {
    json!([
        entry("u_a", KEY),
        entry("u_b", KEY),
        entry("u_b", KEY),
        entry("u_c", KEY2),
        // Columns shifted: the key stands where the provider should (never quoted back).
        {"user_id": "u_d", "provider": KEY, "api_key": "Imported"},
        {"user_id": "u_e", "provider": "azure_speech", "api_key": KEY},
        {"user_id": 5, "provider": "elevenlabs", "api_key": KEY},
        "not an object",
    ])
}

const MIXED: [&str; 8] = [
    "skipped:duplicate",
    "created",
    "skipped:duplicate",
    "created",
    "rejected:unknown_provider",
    "rejected:invalid_request",
    "rejected:invalid_request",
    "rejected:invalid_request",
];

#[test]
fn a_dry_run_reports_every_entry_and_changes_nothing() {
    let w = World::with_services(&[]);
    let existing = w.added();
    let before = w.footprint();
    let (s, report) = w.import(json!({"dry_run": true, "entries": mixed()}), vec![]);
    assert_eq!(s, 200, "{report}");
    assert_eq!(outcomes(&report), MIXED);
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["batch_id"], Value::Null);
    assert_eq!(
        report["summary"],
        json!({"entries": 8, "created": 2, "skipped": 2, "rejected": 4})
    );
    let e = &report["entries"];
    // Which credential holds the key is not told: a dry run writes no event that would
    // tell its user someone asked (issue 18: this assertion named `existing` before).
    assert_eq!(e[0]["credential_id"], Value::Null);
    assert!(
        !report.to_string().contains(&existing),
        "the holder was named"
    );
    assert_eq!(e[1]["status"], "unverified");
    assert_eq!(e[2]["same_as_entry"], 1);
    assert_eq!(e[1]["credential_id"], Value::Null);
    assert_eq!(e[5]["errors"][0]["field"], "params.region");
    assert_eq!(e[6]["errors"][0]["field"], "user_id");
    // Not even a clipped piece of a key in the provider column is quoted back.
    assert!(
        !report.to_string().contains(&KEY[..12]),
        "the provider column was quoted back"
    );
    assert_eq!(w.footprint(), before, "a dry run wrote something");
    assert_eq!(
        w.provider_calls.get(),
        2,
        "only the first add checked a key"
    );
}

#[test]
fn the_real_run_creates_what_the_dry_run_promised_and_a_second_run_creates_nothing() {
    let w = World::with_services(&[]);
    let existing = w.added();
    let (_, dry) = w.import(json!({"dry_run": true, "entries": mixed()}), vec![]);
    let (s, real) = w.import(json!({"dry_run": false, "entries": mixed()}), vec![]);
    assert_eq!(s, 200, "{real}");
    assert_eq!(outcomes(&real), outcomes(&dry));
    let batch = real["batch_id"].as_str().unwrap().to_owned();
    assert!(batch.starts_with("imp_"), "{batch}");
    assert_eq!(w.store.rows.borrow().len(), 3);

    // The rows are sealed for their users, marked unchecked, and in the batch.
    for (index, user, key) in [(1, "u_b", KEY), (3, "u_c", KEY2)] {
        let e = &real["entries"][index];
        assert_eq!(e["user_id"], user);
        assert_eq!(e["validated"], false);
        assert_eq!(e["key_hint"], format!("…{}", &key[key.len() - 4..]));
        let id = e["credential_id"].as_str().unwrap();
        let row = w
            .store
            .rows
            .borrow()
            .iter()
            .find(|c| c.id.as_str() == id)
            .cloned()
            .unwrap();
        assert_eq!(row.user_id.as_str(), user);
        assert_eq!(row.import_batch.as_ref().unwrap().as_str(), batch);
        // No check has confirmed it (issue 18: it was stored as `valid` before).
        assert_eq!(row.status, CredentialStatus::Unverified);
        assert_eq!(e["status"], "unverified");
        assert_eq!(row.warnings, [UNCHECKED_WARNING]);
        assert_eq!(row.last_validated_at, None, "due at the next sweep");
        let keys = w.config.master_keys.as_ref().unwrap();
        let opened = crate::crypto::open(
            keys,
            &crate::crypto::Binding::of(&row),
            row.secret.as_ref().unwrap(),
        );
        assert_eq!(opened.unwrap().expose(), key);
        let (_, view, _) = w.call(
            "GET",
            &format!("/v1/credentials/{id}"),
            Some(user),
            None,
            vec![],
        );
        assert_eq!(view["warnings"], json!([UNCHECKED_WARNING]));
        assert_eq!(view["status"], "unverified");
    }
    w.chain(5);
    assert_eq!(
        w.actions("u_b")[0],
        ("credential.imported".into(), "success".into(), None)
    );
    assert!(
        w.actions("u_e").is_empty(),
        "a rejected entry leaves no event"
    );

    // Importing the same entries again creates nothing, and names what holds each key.
    let (s, again) = w.import(json!({"dry_run": false, "entries": mixed()}), vec![]);
    assert_eq!(s, 200);
    assert_eq!(again["summary"]["created"], 0, "{again}");
    assert_eq!(again["entries"][0]["credential_id"], json!(existing));
    assert_eq!(
        again["entries"][1]["credential_id"],
        real["entries"][1]["credential_id"]
    );
    assert_eq!(w.store.rows.borrow().len(), 3);
    assert_eq!(
        w.provider_calls.get(),
        2,
        "nothing was checked without validate"
    );
}

#[test]
fn validation_checks_each_new_key_and_rejects_the_dead_ones_with_the_providers_word() {
    let w = World::with_services(&[]);
    let (s, report) = w.import(
        json!({"dry_run": false, "validate": true, "entries": [entry("u_a", KEY), entry("u_b", KEY2)]}),
        vec![
            respond(200, SUBSCRIPTION),
            respond(200, MODELS),
            respond(401, INVALID),
        ],
    );
    assert_eq!(s, 200, "{report}");
    assert_eq!(outcomes(&report), ["created", "rejected:invalid_api_key"]);
    assert_eq!(report["entries"][0]["validated"], true);
    assert_eq!(report["entries"][1]["provider"], "elevenlabs");
    assert!(report["entries"][1]["message"]
        .as_str()
        .unwrap()
        .contains("Invalid API key"));
    let row = w.stored();
    assert!(row.warnings.is_empty(), "{:?}", row.warnings);
    assert!(row.last_validated_at.unwrap().as_millis() >= NOW_MS);
    assert_eq!(row.quota.unwrap().used, Some(1200.0));
    assert_eq!(w.store.rows.borrow().len(), 1);
}

#[test]
fn validation_is_rate_limited_like_any_live_check() {
    let mut w = World::with_services(&[]);
    w.limiter = crate::testing::CountingLimiter::new(1);
    let (s, report) = w.import(
        json!({"dry_run": false, "validate": true, "entries": [entry("u_a", KEY), entry("u_b", KEY2)]}),
        valid(),
    );
    assert_eq!(s, 200, "{report}");
    // The operator's address has spent its one check on the first entry.
    assert_eq!(outcomes(&report), ["created", "rejected:rate_limited"]);
    assert!(
        report["entries"][1]["retry_after_seconds"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(
        w.provider_calls.get(),
        2,
        "the refused entry reached no provider"
    );
    assert_eq!(w.store.rows.borrow().len(), 1);
}

#[test]
fn an_import_never_takes_a_user_past_the_credential_limit() {
    let w = World::with_services(&[("MAX_CREDENTIALS_PER_USER", "2")]);
    w.added();
    let entries = json!([entry("u_a", KEY2), entry("u_a", KEY3), entry("u_b", KEY3)]);
    let (_, dry) = w.import(json!({"dry_run": true, "entries": entries}), vec![]);
    let (_, real) = w.import(json!({"dry_run": false, "entries": entries}), vec![]);
    let expected = ["created", "rejected:credential_limit_reached", "created"];
    assert_eq!(outcomes(&dry), expected);
    assert_eq!(outcomes(&real), expected);
    assert_eq!(w.store.rows.borrow().len(), 3);
}

#[test]
fn a_key_stored_by_a_parallel_request_meanwhile_is_reported_as_skipped() {
    let w = World::with_services(&[]);
    let held = w.added();
    let theirs = w.stored();
    w.store.rows.borrow_mut().clear();
    // Between the import's read and its write, u_a's own request stores the same key.
    w.race(move |rows| rows.push(theirs));
    let (s, report) = w.import(
        json!({"dry_run": false, "entries": [entry("u_a", KEY)]}),
        vec![],
    );
    assert_eq!(s, 200, "{report}");
    assert_eq!(outcomes(&report), ["skipped:duplicate"]);
    assert_eq!(report["entries"][0]["credential_id"], json!(held));
    assert_eq!(w.store.rows.borrow().len(), 1);
}

#[test]
fn the_envelope_is_checked_whole_and_a_wrong_one_changes_nothing() {
    let w = World::with_services(&[]);
    let many: Vec<Value> = (0..=crate::import::MAX_IMPORT_ENTRIES)
        .map(|i| entry(&format!("u_{i}"), KEY))
        .collect();
    let checked: Vec<Value> = (0..=crate::import::MAX_VALIDATED_ENTRIES)
        .map(|i| entry(&format!("u_{i}"), KEY))
        .collect();
    for (body, field) in [
        (json!({}), "entries"),
        (json!({"entries": []}), "entries"),
        (json!({"entries": {}}), "entries"),
        (json!({"entries": many}), "entries"),
        (json!({"entries": checked, "validate": true}), "entries"),
        (
            json!({"entries": [entry("u_a", KEY)], "dry_run": "yes"}),
            "dry_run",
        ),
        (
            json!({"entries": [entry("u_a", KEY)], "batch_id": "b_1"}),
            "batch_id",
        ),
        (json!({"entries": [entry("u_a", KEY)], "extra": 1}), "extra"),
    ] {
        let (s, problem) = w.import(body, vec![]);
        assert_eq!(s, 400, "{problem}");
        assert_eq!(problem["code"], "invalid_request");
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    // A batch id that names another kind of job is refused.
    w.store.jobs.borrow_mut().push(crate::jobs::JobRecord {
        id: BATCH.into(),
        kind: "rewrap".into(),
        state: "done".into(),
        total: 0,
        done: 0,
        failed: 0,
        cursor: None,
        created_at: crate::domain::Timestamp::from_millis(NOW_MS),
        updated_at: crate::domain::Timestamp::from_millis(NOW_MS),
    });
    let (s, problem) = w.import(
        json!({"dry_run": false, "entries": [entry("u_a", KEY)], "batch_id": BATCH}),
        vec![],
    );
    assert_eq!(
        (s, problem["errors"][0]["field"].as_str()),
        (400, Some("batch_id"))
    );
    assert_eq!(w.footprint(), (0, 0, 1));
}

const BATCH: &str = "imp_0123456789abcdef0123456789abcdef";

#[test]
fn an_import_is_a_dry_run_unless_it_says_otherwise() {
    let w = World::with_services(&[]);
    let (s, report) = w.import(json!({"entries": [entry("u_a", KEY)]}), vec![]);
    assert_eq!(s, 200, "{report}");
    assert_eq!(
        (report["dry_run"].as_bool(), report["batch_id"].as_str()),
        (Some(true), None)
    );
    assert_eq!(w.footprint(), (0, 0, 0));
}

#[test]
fn a_dry_run_with_validation_checks_keys_and_still_writes_nothing() {
    let w = World::with_services(&[]);
    let (s, report) = w.import(
        json!({"dry_run": true, "validate": true, "entries": [entry("u_a", KEY), entry("u_b", KEY2)]}),
        vec![respond(200, SUBSCRIPTION), respond(200, MODELS), respond(401, INVALID)],
    );
    assert_eq!(s, 200, "{report}");
    assert_eq!(outcomes(&report), ["created", "rejected:invalid_api_key"]);
    assert_eq!(w.provider_calls.get(), 3);
    assert_eq!(w.footprint(), (0, 0, 0));
}

#[test]
fn validation_stops_before_the_requests_provider_calls_run_out() {
    let w = World::with_services(&[]);
    let n = crate::import::MAX_VALIDATED_ENTRIES;
    let entries: Vec<Value> = (0..n).map(|i| entry(&format!("u_{i}"), KEY)).collect();
    let script: Vec<Scripted> = (0..n).flat_map(|_| valid()).collect();
    let (s, report) = w.import(
        json!({"dry_run": false, "validate": true, "entries": entries}),
        script,
    );
    assert_eq!(s, 200, "{report}");
    // Each check here costs its worst case, 2 calls: a check starts while 2 more fit.
    let fits = (crate::import::IMPORT_CALL_BUDGET / 2) as usize;
    let mut expected = vec!["created".to_owned(); fits];
    assert!(fits < n, "the budget must bind in this test");
    expected.resize(n, "rejected:not_checked".to_owned());
    assert_eq!(outcomes(&report), expected);
    assert!(w.provider_calls.get() as u32 <= crate::import::IMPORT_CALL_BUDGET);
    assert_eq!(report["entries"][n - 1]["retry_after_seconds"], 1);
    assert_eq!(w.store.rows.borrow().len(), fits);
}

#[test]
fn only_an_admin_service_may_import() {
    let w = World::with_services(&[]);
    let body = json!({"dry_run": false, "entries": [entry("u_a", KEY)]});
    for (token, status) in [
        (None, 401),
        (Some(token("u_a")), 401),
        (Some(RESOLVER.to_owned()), 403),
    ] {
        let (s, _, _) = w.call_with_token(
            "POST",
            "/v1/admin/import",
            token,
            Some(body.clone()),
            vec![],
        );
        assert_eq!(s, status);
    }
    assert_eq!(w.footprint(), (0, 0, 0));
}

#[test]
fn a_rollback_removes_exactly_the_rows_no_user_changed_or_chose_since() {
    let w = World::with_services(&[]);
    let own = w.add_key("u_z", KEY, valid()).1["credential"]["id"].clone();
    let entries = json!([
        entry("u_a", KEY),
        entry("u_b", KEY),
        entry("u_c", KEY),
        entry("u_d", KEY)
    ]);
    let (_, report) = w.import(json!({"dry_run": false, "entries": entries}), vec![]);
    let batch = report["batch_id"].as_str().unwrap().to_owned();
    let id = |i: usize| {
        report["entries"][i]["credential_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // u_a renames theirs; u_b makes theirs the TTS default; u_c re-checks theirs (a check
    // is not a change); u_d does nothing.
    assert_eq!(w.patch(&id(0), json!({"label": "Mine now"}), vec![]).0, 200);
    let (s, _, _) = w.call(
        "PUT",
        "/v1/preferences/tts",
        Some("u_b"),
        Some(json!({"credential_id": id(1)})),
        vec![],
    );
    assert_eq!(s, 200);
    let path = format!("/v1/credentials/{}/validate", id(2));
    assert_eq!(w.call("POST", &path, Some("u_c"), None, valid()).0, 200);

    let (s, back) = w.rollback(&batch);
    assert_eq!(s, 200, "{back}");
    assert_eq!(back["created"], 4);
    assert_eq!(back["removed"], 2);
    let removed: Vec<&str> = back["removed_credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["credential_id"].as_str().unwrap())
        .collect();
    let mut expected = vec![id(2), id(3)];
    expected.sort();
    assert_eq!(removed, expected);
    assert_eq!(back["kept"][0]["credential_id"], json!(id(1)));
    assert_eq!(back["more"], false);
    let left: Vec<String> = w
        .store
        .rows
        .borrow()
        .iter()
        .map(|c| c.id.as_str().to_owned())
        .collect();
    assert_eq!(left.len(), 3);
    for kept in [own.as_str().unwrap().to_owned(), id(0), id(1)] {
        assert!(left.contains(&kept), "{kept} was removed");
    }
    w.chain(5);
    let trail = w.actions("u_d");
    assert_eq!(trail.last().unwrap().0, "credential.deleted");

    // Again: nothing more to remove. An unknown or malformed batch is not found.
    let (s, again) = w.rollback(&batch);
    assert_eq!((s, again["removed"].as_u64()), (200, Some(0)));
    assert_eq!(w.rollback("imp_00000000000000000000000000000000").0, 404);
    assert_eq!(w.rollback("imp_x").0, 404);
}

#[test]
fn a_later_request_can_add_to_a_batch_and_one_rollback_takes_both_back() {
    let w = World::with_services(&[]);
    let (_, first) = w.import(
        json!({"dry_run": false, "entries": [entry("u_a", KEY)]}),
        vec![],
    );
    let batch = first["batch_id"].as_str().unwrap();
    let (s, second) = w.import(
        json!({"dry_run": false, "entries": [entry("u_b", KEY)], "batch_id": batch}),
        vec![],
    );
    assert_eq!(s, 200, "{second}");
    assert_eq!(second["batch_id"], batch);
    let (s, back) = w.rollback(batch);
    assert_eq!(
        (s, back["created"].as_u64(), back["removed"].as_u64()),
        (200, Some(2), Some(2))
    );
    assert!(w.store.rows.borrow().is_empty());
}

#[test]
fn a_run_that_stores_nothing_still_makes_a_batch_that_can_be_added_to() {
    let w = World::with_services(&[]);
    w.added();
    let (_, first) = w.import(
        json!({"dry_run": false, "entries": [entry("u_a", KEY)]}),
        vec![],
    );
    assert_eq!(outcomes(&first), ["skipped:duplicate"]);
    let batch = first["batch_id"].as_str().unwrap();
    let (s, second) = w.import(
        json!({"dry_run": false, "entries": [entry("u_b", KEY)], "batch_id": batch}),
        vec![],
    );
    assert_eq!((s, outcomes(&second)), (200, vec!["created".to_owned()]));
    assert_eq!(w.rollback(batch).1["removed"], 1);
}

#[test]
fn a_user_filling_their_last_slot_meanwhile_wins_over_the_import() {
    let w = World::with_services(&[("MAX_CREDENTIALS_PER_USER", "2")]);
    w.added();
    let mut theirs = w.stored();
    theirs.id = crate::domain::CredentialId::from_random([9; 16]);
    theirs.fingerprint = Some("v1:someone-elses-key".into());
    // Between the import's read and its write, u_a's own request takes the last slot.
    w.race(move |rows| rows.push(theirs));
    let outbox = w.store.outbox.rows.borrow().len();
    let (s, report) = w.import(
        json!({"dry_run": false, "entries": [entry("u_a", KEY2)]}),
        vec![],
    );
    assert_eq!(s, 200, "{report}");
    assert_eq!(outcomes(&report), ["rejected:credential_limit_reached"]);
    assert_eq!(w.store.rows.borrow().len(), 2);
    assert_eq!(
        w.store.outbox.rows.borrow().len(),
        outbox,
        "an event without its row"
    );
    assert_eq!(w.store.jobs.borrow()[0].total, 0);
}

#[test]
fn a_batch_named_in_advance_survives_a_retried_request() {
    let w = World::with_services(&[]);
    let body = json!({"dry_run": false, "batch_id": BATCH, "entries": [entry("u_a", KEY), entry("u_b", KEY)]});
    let (_, first) = w.import(body.clone(), vec![]);
    assert_eq!(
        (
            first["batch_id"].as_str(),
            first["summary"]["created"].as_u64()
        ),
        (Some(BATCH), Some(2))
    );
    // The answer was lost; the operator sends the same request again.
    let (_, again) = w.import(body, vec![]);
    assert_eq!(outcomes(&again), ["skipped:duplicate", "skipped:duplicate"]);
    let (_, back) = w.rollback(BATCH);
    assert_eq!(back["removed"], 2);
}

#[test]
fn rolling_back_one_batch_leaves_another_alone_and_a_rewrapped_row_still_goes() {
    let mut w = World::with_services(&[]);
    let (_, a) = w.import(
        json!({"dry_run": false, "entries": [entry("u_a", KEY)]}),
        vec![],
    );
    let (_, b) = w.import(
        json!({"dry_run": false, "entries": [entry("u_a", KEY2)]}),
        vec![],
    );
    // A master-key rotation re-seals both rows under version 2.
    let v2 = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
    let ring = format!(r#"{{"1":"{MASTER}","2":"{v2}"}}"#);
    let tokens = service_tokens();
    w.config = config_with(
        false,
        &[
            ("SERVICE_TOKENS", &tokens),
            ("MASTER_KEYS", &ring),
            ("MASTER_KEY_ACTIVE", "2"),
        ],
    );
    assert_eq!(w.admin("POST", "/v1/admin/master-key/rotate").0, 202);
    while !w.jobs.sent.borrow().is_empty() {
        w.run_queued_jobs(vec![]);
    }
    assert!(w
        .store
        .rows
        .borrow()
        .iter()
        .all(|c| c.secret.as_ref().unwrap().key_version.get() == 2));

    let (s, back) = w.rollback(a["batch_id"].as_str().unwrap());
    assert_eq!((s, back["removed"].as_u64()), (200, Some(1)));
    let left: Vec<String> = w
        .store
        .rows
        .borrow()
        .iter()
        .map(|c| c.id.as_str().to_owned())
        .collect();
    assert_eq!(left, [b["entries"][0]["credential_id"].as_str().unwrap()]);
}

#[test]
fn a_large_batch_is_rolled_back_in_chunks() {
    let w = World::with_services(&[]);
    for round in 0..3 {
        let entries: Vec<Value> = (0..crate::import::MAX_IMPORT_ENTRIES)
            .map(|i| entry(&format!("u_{round}_{i}"), KEY))
            .collect();
        let (s, r) = w.import(
            json!({"dry_run": false, "batch_id": BATCH, "entries": entries}),
            vec![],
        );
        assert_eq!((s, r["summary"]["created"].as_u64()), (200, Some(200)));
    }
    let (_, first) = w.rollback(BATCH);
    assert_eq!(
        (first["removed"].as_u64(), first["more"].as_bool()),
        (Some(500), Some(true))
    );
    let (_, second) = w.rollback(BATCH);
    assert_eq!(
        (second["removed"].as_u64(), second["more"].as_bool()),
        (Some(100), Some(false))
    );
    assert!(w.store.rows.borrow().is_empty());
}

/// A service's resolve for `user`: status and answer.
fn resolve(w: &World, body: Value) -> (u16, Value) {
    let (s, v, _) = w.call_with_token(
        "POST",
        "/v1/resolve",
        Some(RESOLVER.into()),
        Some(body),
        vec![],
    );
    (s, v)
}

#[test]
fn a_real_run_names_the_credential_holding_a_key_and_tells_its_user() {
    let w = World::with_services(&[]);
    let existing = w.added();
    let (s, report) = w.import(
        json!({"dry_run": false, "entries": [entry("u_a", KEY)]}),
        vec![],
    );
    assert_eq!(s, 200, "{report}");
    assert_eq!(outcomes(&report), ["skipped:duplicate"]);
    assert_eq!(report["entries"][0]["credential_id"], json!(existing));
    w.chain(5);
    let (_, trail, _) = w.call("GET", "/v1/audit?limit=200", Some("u_a"), None, vec![]);
    let told = trail["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "credential.imported")
        .cloned()
        .expect("no event on the holder's chain");
    assert_eq!(
        (
            told["outcome"].as_str(),
            told["reason"].as_str(),
            told["credential_id"].as_str()
        ),
        (
            Some("failure"),
            Some("duplicate_credential"),
            Some(existing.as_str())
        )
    );
    assert_eq!(told["actor"]["type"], "service");
}

#[test]
fn an_import_without_validate_never_takes_over_from_the_users_own_key() {
    let w = World::with_services(&[]);
    let own = w.added();
    w.clock.advance(1000);
    // The operator imports another key for u_a, unchecked: the newer row.
    let (_, report) = w.import(
        json!({"dry_run": false, "entries": [entry("u_a", KEY2)]}),
        vec![],
    );
    let planted = report["entries"][0]["credential_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ask = json!({"user_id": "u_a", "capability": "tts", "provider": "elevenlabs"});
    let (s, r) = resolve(&w, ask.clone());
    assert_eq!((s, r["credential_id"].as_str()), (200, Some(own.as_str())));
    assert_eq!(r["api_key"], KEY, "the user's own key serves");
    // Not even when the user's key is held up by the provider for now.
    w.store
        .rows
        .borrow_mut()
        .iter_mut()
        .filter(|c| c.id.as_str() == own)
        .for_each(|c| c.status = CredentialStatus::RateLimited);
    let (_, r) = resolve(&w, ask.clone());
    assert_eq!(r["credential_id"], json!(own));
    // Once its user has checked it (and it works), it is theirs like any other key.
    let path = format!("/v1/credentials/{planted}/validate");
    let (s, checked, _) = w.call("POST", &path, Some("u_a"), None, valid());
    assert_eq!((s, checked["status"].as_str()), (200, Some("valid")));
    let (_, r) = resolve(&w, ask);
    assert_eq!(r["credential_id"], json!(planted), "the newest valid key");
}

#[test]
fn an_unverified_key_serves_a_user_who_holds_nothing_else_for_the_provider() {
    let w = World::with_services(&[]);
    let (_, report) = w.import(
        json!({"dry_run": false, "entries": [entry("u_b", KEY)]}),
        vec![],
    );
    let id = report["entries"][0]["credential_id"].clone();
    let (s, r) = resolve(
        &w,
        json!({"user_id": "u_b", "capability": "tts", "provider": "elevenlabs"}),
    );
    assert_eq!(
        (s, &r["credential_id"], &r["source"]),
        (200, &id, &json!("user"))
    );
}

#[test]
fn an_unverified_ollama_row_is_never_called_until_a_check_succeeds_there() {
    let w = World::with_services(&[]);
    let base = "https://ollama.importer.example";
    let (s, report) = w.import(
        json!({"dry_run": false, "entries": [
            {"user_id": "u_o", "provider": "ollama", "params": {"base_url": base}}
        ]}),
        vec![],
    );
    assert_eq!((s, outcomes(&report)), (200, vec!["created".to_owned()]));
    let id = report["entries"][0]["credential_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(report["entries"][0]["status"], "unverified");
    // Asked for by provider, by default or exactly: no call reaches the importer's
    // endpoint (the fake providers have no answer scripted: a call would panic).
    for ask in [
        json!({"user_id": "u_o", "capability": "llm", "provider": "ollama"}),
        json!({"user_id": "u_o", "capability": "llm"}),
        json!({"user_id": "u_o", "capability": "llm", "credential_id": id}),
    ] {
        let (s, r) = resolve(&w, ask.clone());
        assert_eq!(
            (s, r["code"].as_str()),
            (404, Some("no_credential")),
            "{ask}"
        );
        assert_eq!(r["skipped"][0]["status"], "unverified", "{r}");
    }
    let (s, _, _) = w.call(
        "PUT",
        "/v1/preferences/llm",
        Some("u_o"),
        Some(json!({"credential_id": id})),
        vec![],
    );
    assert_eq!(s, 200);
    let (s, _) = resolve(&w, json!({"user_id": "u_o", "capability": "llm"}));
    assert_eq!(s, 404, "the default is not used either");
    assert_eq!(
        w.provider_calls.get(),
        0,
        "the importer's endpoint was called"
    );
    // Its user checks it there: from then on it serves.
    let tags = r#"{"models":[{"name":"llama3.2:latest"}]}"#;
    let path = format!("/v1/credentials/{id}/validate");
    let (s, checked, _) = w.call("POST", &path, Some("u_o"), None, vec![respond(200, tags)]);
    assert_eq!(
        (s, checked["status"].as_str()),
        (200, Some("valid")),
        "{checked}"
    );
    let (s, r) = resolve(
        &w,
        json!({"user_id": "u_o", "capability": "llm", "provider": "ollama"}),
    );
    assert_eq!((s, r["credential_id"].as_str()), (200, Some(id.as_str())));
    assert_eq!(r["params"]["base_url"], base);
}
