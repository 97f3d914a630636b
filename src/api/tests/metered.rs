//! Metered usage: a call's hand-off to the usage table (`metering::record`), and reading it
//! back with `GET /v1/usage` (the caller's own) and `GET /v1/admin/usage` (operators').

use super::*;
use crate::audit::Source;
use crate::domain::{CredentialId, Timestamp, UserId};
use crate::metering::{record, Metered, Usage, UsageStore};

const DAY_MS: u64 = 86_400_000;
const CRED_A: &str = "c_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const CRED_B: &str = "c_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// The UTC day `days_ago` days before the world's now.
fn day(days_ago: u64) -> String {
    Timestamp::from_millis(NOW_MS - days_ago * DAY_MS).utc_day()
}

/// A call of `user` `days_ago` days back on `provider` with credential `cred` (a system key
/// when `None`), with `model`, that used `tokens` in and out.
fn call(
    user: &str,
    days_ago: u64,
    provider: &str,
    cred: Option<&str>,
    model: Option<&str>,
    tokens: (u64, u64),
) -> Metered {
    Metered {
        user_id: UserId::parse(user).unwrap(),
        at: Timestamp::from_millis(NOW_MS - days_ago * DAY_MS),
        provider: crate::providers::find(provider).unwrap().info().id,
        source: if cred.is_some() {
            Source::User
        } else {
            Source::System
        },
        credential_id: cred.map(|c| CredentialId::parse(c).unwrap()),
        model: model.map(str::to_owned),
        usage: Usage {
            input_tokens: tokens.0,
            output_tokens: tokens.1,
            ..Default::default()
        },
    }
}

impl World {
    fn meter(&self, calls: &[Metered]) {
        for c in calls {
            block_on(record(&self.usage, c, &|line: &str| panic!("{line}")));
        }
    }

    fn usage_of(&self, user: &str, query: &str) -> (u16, Value) {
        let (s, v, _) = self.call(
            "GET",
            &format!("/v1/usage{query}"),
            Some(user),
            None,
            vec![],
        );
        (s, v)
    }
}

/// The problem's field names, in order.
fn fields(problem: &Value) -> Vec<&str> {
    assert_eq!(problem["code"], "invalid_request", "{problem}");
    problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect()
}

#[test]
fn a_call_adds_one_request_and_its_usage_and_an_incomplete_one_keeps_its_partial_counts() {
    let w = World::new();
    let whole = call("u_a", 0, "openai", Some(CRED_A), Some("gpt-4o"), (10, 5));
    let mut cut = whole.clone();
    cut.usage = Usage {
        input_tokens: 7,
        incomplete: true,
        ..Default::default()
    };
    let mut spoken = call("u_a", 0, "elevenlabs", None, None, (0, 0));
    spoken.usage.characters = 120;
    spoken.usage.audio_seconds = 2.5;
    w.meter(&[whole, cut, spoken.clone(), spoken]);

    let (s, body) = w.usage_of("u_a", "");
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body["usage"],
        json!([
            {"day": day(0), "provider": "elevenlabs", "credential_id": null, "source": "system",
             "model": null, "requests": 2, "input_tokens": 0, "output_tokens": 0,
             "characters": 240, "audio_seconds": 5.0, "incomplete": 0},
            {"day": day(0), "provider": "openai", "credential_id": CRED_A, "source": "user",
             "model": "gpt-4o", "requests": 2, "input_tokens": 17, "output_tokens": 5,
             "characters": 0, "audio_seconds": 0.0, "incomplete": 1},
        ])
    );
    assert_eq!(body["from"], day(29));
    assert_eq!(body["to"], day(0));
    assert_eq!(body["truncated"], false);
}

#[test]
fn a_usage_table_that_fails_is_logged_without_a_secret_and_never_passed_on() {
    let w = World::new();
    w.usage.down.set(true);
    let lines = std::cell::RefCell::new(Vec::new());
    let log = |line: &str| lines.borrow_mut().push(line.to_owned());
    block_on(record(
        &w.usage,
        &call("u_a", 0, "openai", Some(CRED_A), None, (1, 1)),
        &log,
    ));
    let lines = lines.into_inner();
    assert_eq!(lines.len(), 1);
    assert!(lines[0].contains("openai") && lines[0].contains("not recorded"));
    assert!(!lines[0].contains(KEY));

    // Reading it is an error, never an empty list.
    let (s, body) = w.usage_of("u_a", "");
    assert_eq!((s, &body["code"]), (500, &json!("internal")), "{body}");
}

#[test]
fn a_user_sees_only_their_own_usage_over_the_days_asked() {
    let w = World::new();
    w.meter(&[
        call("u_a", 0, "openai", Some(CRED_A), None, (1, 1)),
        call("u_a", 29, "openai", Some(CRED_A), None, (2, 2)),
        call("u_a", 30, "openai", Some(CRED_A), None, (4, 4)),
        call("u_b", 0, "openai", Some(CRED_B), None, (100, 100)),
        call("u_b", 0, "openai", None, None, (100, 100)),
    ]);
    let days = |body: &Value| -> Vec<(String, u64)> {
        body["usage"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                assert_ne!(r["credential_id"], CRED_B, "{r}");
                assert!(r.get("user_id").is_none(), "{r}");
                (
                    r["day"].as_str().unwrap().to_owned(),
                    r["input_tokens"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    // The last 30 days by default, today included.
    let (s, body) = w.usage_of("u_a", "");
    assert_eq!(s, 200);
    assert_eq!(days(&body), [(day(29), 2), (day(0), 1)]);
    // Both ends inclusive.
    let (_, body) = w.usage_of("u_a", &format!("?from={}&to={}", day(30), day(29)));
    assert_eq!(days(&body), [(day(30), 4), (day(29), 2)]);
    // `to` alone: the 30 days ending there.
    let (_, body) = w.usage_of("u_a", &format!("?to={}", day(1)));
    assert_eq!(days(&body), [(day(30), 4), (day(29), 2)]);
    // Another user's usage is never there, whatever is asked.
    let (_, body) = w.usage_of("u_c", "?group_by=provider");
    assert_eq!(body["usage"], json!([]));
    let (s, body) = w.usage_of("u_a", "?user_id=u_b");
    assert_eq!((s, fields(&body)), (400, vec!["user_id"]));
}

#[test]
fn group_by_sums_over_the_other_keys_and_leaves_them_null() {
    let w = World::new();
    w.meter(&[
        call("u_a", 0, "openai", Some(CRED_A), Some("gpt-4o"), (1, 10)),
        call(
            "u_a",
            0,
            "openai",
            Some(CRED_A),
            Some("gpt-4o-mini"),
            (2, 20),
        ),
        call("u_a", 1, "openai", Some(CRED_B), Some("gpt-4o"), (4, 40)),
        call("u_a", 1, "openai", None, Some("gpt-4o"), (8, 80)),
        call("u_a", 1, "anthropic", None, None, (16, 160)),
    ]);
    let rows = |group: &str| -> Vec<Value> {
        let (s, body) = w.usage_of("u_a", &format!("?group_by={group}"));
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["group_by"], group);
        body["usage"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let keys = ["day", "provider", "credential_id", "source", "model"];
                let mut v = json!({"requests": r["requests"], "input_tokens": r["input_tokens"]});
                for k in keys {
                    v[k] = r[k].clone();
                }
                v
            })
            .collect()
    };
    assert_eq!(
        rows("day"),
        [
            json!({"day": day(1), "provider": null, "credential_id": null, "source": null, "model": null, "requests": 3, "input_tokens": 28}),
            json!({"day": day(0), "provider": null, "credential_id": null, "source": null, "model": null, "requests": 2, "input_tokens": 3}),
        ]
    );
    assert_eq!(
        rows("credential"),
        [
            json!({"day": null, "provider": "anthropic", "credential_id": null, "source": "system", "model": null, "requests": 1, "input_tokens": 16}),
            json!({"day": null, "provider": "openai", "credential_id": null, "source": "system", "model": null, "requests": 1, "input_tokens": 8}),
            json!({"day": null, "provider": "openai", "credential_id": CRED_A, "source": "user", "model": null, "requests": 2, "input_tokens": 3}),
            json!({"day": null, "provider": "openai", "credential_id": CRED_B, "source": "user", "model": null, "requests": 1, "input_tokens": 4}),
        ]
    );
    assert_eq!(
        rows("provider"),
        [
            json!({"day": null, "provider": "anthropic", "credential_id": null, "source": null, "model": null, "requests": 1, "input_tokens": 16}),
            json!({"day": null, "provider": "openai", "credential_id": null, "source": null, "model": null, "requests": 4, "input_tokens": 15}),
        ]
    );
    assert_eq!(
        rows("model"),
        [
            json!({"day": null, "provider": "anthropic", "credential_id": null, "source": null, "model": null, "requests": 1, "input_tokens": 16}),
            json!({"day": null, "provider": "openai", "credential_id": null, "source": null, "model": "gpt-4o", "requests": 3, "input_tokens": 13}),
            json!({"day": null, "provider": "openai", "credential_id": null, "source": null, "model": "gpt-4o-mini", "requests": 1, "input_tokens": 2}),
        ]
    );
}

#[test]
fn a_malformed_or_unbounded_query_is_refused_naming_its_fields() {
    let w = World::new();
    w.meter(&[call("u_a", 0, "openai", Some(CRED_A), None, (1, 1))]);
    for (query, want) in [
        ("?from=2027-1-01", vec!["from"]),
        ("?from=2027-02-30", vec!["from"]),
        ("?to=yesterday&from=", vec!["to", "from"]),
        ("?group_by=week", vec!["group_by"]),
        ("?source=system", vec!["source"]),
        ("?limit=5", vec!["limit"]),
        ("?from=2026-03-02&to=2026-03-01", vec!["to"]),
        // From `from` to today: `to` is today when not given.
        ("?from=2099-01-01", vec!["to"]),
        // 367 days, both ends counted; 366 is the most.
        (&format!("?from={}", day(366)), vec!["from"]),
    ] {
        let (s, body) = w.usage_of("u_a", query);
        assert_eq!((s, fields(&body)), (400, want), "{query}: {body}");
    }
    let (s, body) = w.usage_of("u_a", &format!("?from={}&to={}", day(365), day(0)));
    assert_eq!(s, 200, "366 days: {body}");
    assert_eq!(body["usage"].as_array().unwrap().len(), 1);
}

#[test]
fn an_answer_lists_at_most_a_thousand_rows_and_says_when_there_were_more() {
    let w = World::new();
    let models: Vec<String> = (0..1001).map(|i| format!("model-{i:04}")).collect();
    let calls: Vec<Metered> = models
        .iter()
        .map(|m| call("u_a", 0, "openai", Some(CRED_A), Some(m), (1, 1)))
        .collect();
    for c in &calls {
        block_on(w.usage.add(c)).unwrap();
    }
    let (s, body) = w.usage_of("u_a", "");
    assert_eq!(s, 200);
    assert_eq!(body["usage"].as_array().unwrap().len(), 1000);
    assert_eq!(body["truncated"], true);
    assert_eq!(body["usage"][999]["model"], "model-0999");
    let (_, body) = w.usage_of("u_a", "?group_by=provider");
    assert_eq!(body["truncated"], false);
    assert_eq!(body["usage"][0]["requests"], 1001);
}

#[test]
fn operators_read_every_users_usage_by_user_and_source_and_only_they_may() {
    let w = World::with_services(&[]);
    w.meter(&[
        call("u_a", 0, "openai", Some(CRED_A), None, (1, 1)),
        call("u_a", 0, "openai", None, None, (2, 2)),
        call("u_b", 0, "openai", None, None, (4, 4)),
        call("u_b", 1, "openai", None, None, (8, 8)),
    ]);
    for (token, status) in [
        (None, 401),
        (Some(token("u_a")), 401),
        (Some(RESOLVER.to_owned()), 403),
    ] {
        let (s, _, _) = w.call_with_token("GET", "/v1/admin/usage", token, None, vec![]);
        assert_eq!(s, status);
    }
    let summary = |body: &Value| -> Vec<(String, Value, u64)> {
        body["usage"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["user_id"].as_str().unwrap().to_owned(),
                    r["source"].clone(),
                    r["input_tokens"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let (s, body) = w.admin("GET", "/v1/admin/usage");
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        summary(&body),
        [
            ("u_a".into(), json!("system"), 2),
            ("u_a".into(), json!("user"), 1),
            ("u_b".into(), json!("system"), 8),
            ("u_b".into(), json!("system"), 4),
        ]
    );
    // Who spent how much of the system keys: grouped, but never across users.
    let (_, body) = w.admin("GET", "/v1/admin/usage?source=system&group_by=provider");
    assert_eq!(
        summary(&body),
        [
            ("u_a".into(), json!(null), 2),
            ("u_b".into(), json!(null), 12)
        ]
    );
    let (_, body) = w.admin("GET", "/v1/admin/usage?user_id=u_b&group_by=day");
    assert_eq!(
        summary(&body),
        [
            ("u_b".into(), json!(null), 8),
            ("u_b".into(), json!(null), 4)
        ]
    );
    let (_, body) = w.admin("GET", "/v1/admin/usage?source=user");
    assert_eq!(summary(&body), [("u_a".into(), json!("user"), 1)]);
    let (s, body) = w.admin("GET", "/v1/admin/usage?source=both&user_id=");
    assert_eq!((s, fields(&body)), (400, vec!["source", "user_id"]));
}
