//! The security review's findings, each as the behaviour that now holds.

use base64::{
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
    Engine as _,
};

use super::*;
use crate::domain::{Credential, UserId};

/// Everything a credential keeps that came from the provider, as one string.
fn provider_strings(c: &Credential) -> String {
    format!(
        "{:?} {:?} {:?} {:?}",
        c.warnings, c.status_detail, c.models, c.quota
    )
}

mod provider_text {
    use super::*;

    #[test]
    fn a_secondary_call_that_echoes_the_key_is_redacted_in_the_answer_the_row_and_the_list() {
        let w = World::new();
        let b64 = STANDARD.encode(KEY);
        let echo = json!({"detail": {"status": "bad_request", "message":
            format!("model access denied for {KEY} ({b64}) and {}\u{202e}\u{0007}", KEY.to_uppercase())}});
        let (s, body, _) = w.add_key(
            "u_a",
            KEY,
            vec![respond(200, SUBSCRIPTION), respond(400, &echo.to_string())],
        );
        assert_eq!(s, 201, "{body}");
        let warning = body["credential"]["warnings"][0].as_str().unwrap();
        assert!(warning.contains("[redacted]"), "{warning}");
        for leaked in [KEY, b64.as_str(), &KEY.to_uppercase(), "\u{202e}", "\u{7}"] {
            assert!(!body.to_string().contains(leaked), "{leaked} in {body}");
            assert!(!provider_strings(&w.stored()).contains(leaked));
        }
        let (_, list, _) = w.call("GET", "/v1/credentials", Some("u_a"), None, vec![]);
        assert_eq!(list["credentials"][0]["warnings"][0], warning);
    }

    #[test]
    fn a_refusal_that_echoes_the_key_in_any_case_is_redacted() {
        let w = World::new();
        let body = json!({"detail": {"status": "invalid_api_key",
            "message": format!("Invalid API key {}", KEY.to_uppercase())}});
        let (s, b, _) = w.add_key("u_a", KEY, vec![respond(401, &body.to_string())]);
        assert_eq!(s, 422);
        assert_eq!(b["detail"], "ElevenLabs says: Invalid API key [redacted]");
    }

    #[test]
    fn model_entries_are_cleaned_and_those_naming_the_key_dropped() {
        let w = World::new();
        let models = json!([
            {"model_id": KEY, "name": "the key as an id", "can_do_text_to_speech": true},
            {"model_id": "bad\u{7}id", "name": "control", "can_do_text_to_speech": true},
            {"model_id": "x".repeat(300), "name": "too long", "can_do_text_to_speech": true},
            {"model_id": "eleven_ok", "name": format!("Nice\u{200b} model\n{KEY}"), "can_do_text_to_speech": true},
        ]);
        let (s, body, _) = w.add_key(
            "u_a",
            KEY,
            vec![
                respond(200, SUBSCRIPTION),
                respond(200, &models.to_string()),
            ],
        );
        assert_eq!(s, 201);
        assert_eq!(
            body["models"],
            json!([{"id": "eleven_ok", "name": "Nice model [redacted]", "capabilities": ["tts"]}])
        );
    }

    #[test]
    fn model_lists_are_capped_and_oversized_answers_are_not_read() {
        let w = World::new();
        let many: Vec<Value> = (0..1500)
            .map(|i| json!({"model_id": format!("m{i}"), "name": format!("M {i}")}))
            .collect();
        let (s, _, _) = w.add_key(
            "u_a",
            KEY,
            vec![
                respond(200, SUBSCRIPTION),
                respond(200, &Value::Array(many).to_string()),
            ],
        );
        assert_eq!(s, 201);
        assert_eq!(
            w.stored().models.unwrap().len(),
            crate::providers::MAX_MODELS
        );

        // Long names in every entry: the list stops at its byte budget.
        let w = World::new();
        let wide: Vec<Value> = (0..1000)
            .map(|i| json!({"model_id": format!("m{i}"), "name": "名".repeat(200)}))
            .collect();
        let (s, _, _) = w.add_key(
            "u_a",
            KEY,
            vec![
                respond(200, SUBSCRIPTION),
                respond(200, &Value::Array(wide).to_string()),
            ],
        );
        assert_eq!(s, 201);
        let kept = w.stored().models.unwrap();
        let bytes: usize = kept.iter().map(|m| m.id.len() + m.name.len()).sum();
        assert!(bytes <= crate::providers::MAX_MODEL_LIST_BYTES);
        assert!(kept.len() < 1000 && !kept.is_empty());

        let w = World::new();
        let huge = format!(
            "[{{\"model_id\":\"m\",\"name\":\"{}\"}}]",
            "x".repeat(crate::http::MAX_RESPONSE_BYTES)
        );
        let (s, body, _) = w.add_key(
            "u_a",
            KEY,
            vec![respond(200, SUBSCRIPTION), respond(200, &huge)],
        );
        assert_eq!(s, 201);
        assert!(body["credential"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("larger than 2097152 bytes"));
        assert_eq!(w.stored().models, None);
    }
}

mod consistency {
    use super::*;

    /// What a rotation by another request does to the row.
    fn rotate_elsewhere(rows: &mut [Credential]) {
        let row = &mut rows[0];
        row.fingerprint = Some("v1:another-key".into());
        row.key_hint = Some("…beef".into());
        row.secret.as_mut().unwrap().ciphertext[0] ^= 0xff;
        row.version += 1;
    }

    #[test]
    fn a_re_check_that_finishes_after_a_rotation_does_not_undo_it() {
        let w = World::new();
        let id = w.added();
        w.race(Box::new(|rows: &mut Vec<Credential>| {
            rotate_elsewhere(rows)
        }));
        let (s, b, _) = w.call(
            "POST",
            &format!("/v1/credentials/{id}/validate"),
            Some("u_a"),
            None,
            valid(),
        );
        assert_eq!((s, b["code"].as_str()), (409, Some("conflict")), "{b}");
        let row = w.stored();
        assert_eq!(row.key_hint.as_deref(), Some("…beef"));
        assert_eq!(row.fingerprint.as_deref(), Some("v1:another-key"));
        // The trail says the re-check did not take.
        let last = w.actions("u_a").pop().unwrap();
        assert_eq!(
            last,
            (
                "credential.validated".into(),
                "failure".into(),
                Some("conflict".into())
            )
        );
    }

    #[test]
    fn a_re_check_builds_on_a_label_change_that_landed_meanwhile() {
        let w = World::new();
        let id = w.added();
        w.race(Box::new(|rows: &mut Vec<Credential>| {
            rows[0].label = Some("Renamed meanwhile".into());
            rows[0].version += 1;
        }));
        let (s, b, _) = w.call(
            "POST",
            &format!("/v1/credentials/{id}/validate"),
            Some("u_a"),
            None,
            vec![respond(401, INVALID)],
        );
        assert_eq!((s, b["status"].as_str()), (200, Some("invalid_key")));
        let row = w.stored();
        assert_eq!(row.label.as_deref(), Some("Renamed meanwhile"));
        assert_eq!(row.status, crate::domain::CredentialStatus::InvalidKey);
        assert_eq!(row.version, 2);
    }

    #[test]
    fn a_rotation_wins_over_a_re_check_that_wrote_meanwhile() {
        let w = World::new();
        let id = w.added();
        w.race(Box::new(|rows: &mut Vec<Credential>| {
            rows[0].status = crate::domain::CredentialStatus::InvalidKey;
            rows[0].version += 1;
        }));
        let (s, b, _) = w.call(
            "PATCH",
            &format!("/v1/credentials/{id}"),
            Some("u_a"),
            Some(json!({"api_key": KEY2})),
            valid(),
        );
        assert_eq!((s, b["key_hint"].as_str()), (200, Some("…bbbb")), "{b}");
        let row = w.stored();
        assert_eq!(row.key_hint.as_deref(), Some("…bbbb"));
        assert_eq!(row.status, crate::domain::CredentialStatus::Valid);
    }

    #[test]
    fn two_rotations_at_once_never_lose_one_silently() {
        let w = World::new();
        let id = w.added();
        w.race(Box::new(|rows: &mut Vec<Credential>| {
            rotate_elsewhere(rows)
        }));
        let (s, b, _) = w.call(
            "PATCH",
            &format!("/v1/credentials/{id}"),
            Some("u_a"),
            Some(json!({"api_key": KEY2})),
            valid(),
        );
        assert_eq!((s, b["code"].as_str()), (409, Some("conflict")));
        assert_eq!(w.stored().key_hint.as_deref(), Some("…beef"));
        let last = w.actions("u_a").pop().unwrap();
        assert_eq!(last.1, "failure");
    }

    #[test]
    fn the_same_key_added_twice_at_once_is_one_row_and_a_409() {
        // The row the parallel request stored, as it would be (same user, key, master key).
        let first = World::new();
        first.added();
        let parallel = first.stored();
        let w = World::new();
        let id = parallel.id.to_string();
        w.race(Box::new(move |rows: &mut Vec<Credential>| {
            rows.push(parallel);
        }));
        let (s, b) = w.add("u_a");
        assert_eq!((s, b["code"].as_str()), (409, Some("duplicate_credential")));
        assert_eq!(b["credential_id"], id.as_str());
        assert_eq!(w.store.rows.borrow().len(), 1);
        let last = w.actions("u_a").pop().unwrap();
        assert_eq!(last.2.as_deref(), Some("duplicate_credential"));
    }
}

mod audit_outbox {
    use super::*;

    #[test]
    fn an_event_is_stored_with_its_change_even_when_the_audit_path_is_down() {
        let w = World::new();
        w.audit.down.set(true);
        let (s, _) = w.add("u_a");
        assert_eq!(s, 201);
        // Not chained yet (the chainer could not run), but not lost either.
        assert!(w.audit.rows.borrow().is_empty());
        assert_eq!(w.audit.outbox.rows.borrow().len(), 1);
        w.audit.down.set(false);
        w.chain(1);
        assert_eq!(
            w.actions("u_a"),
            [("credential.created".into(), "success".into(), None)]
        );
    }

    #[test]
    fn a_change_that_did_not_happen_has_no_event_saying_it_did() {
        let w = World::new();
        let id = w.added();
        w.store.down.set(true);
        let (s, _, _) = w.call(
            "DELETE",
            &format!("/v1/credentials/{id}"),
            Some("u_a"),
            None,
            vec![],
        );
        assert_eq!(s, 500);
        w.store.down.set(false);
        let all = w.actions("u_a");
        assert!(!all.contains(&("credential.deleted".into(), "success".into(), None)));
        assert!(all.contains(&(
            "credential.deleted".into(),
            "failure".into(),
            Some("internal".into())
        )));
        assert_eq!(w.store.rows.borrow().len(), 1);
    }

    #[test]
    fn chaining_a_batch_costs_a_bounded_number_of_queries_whatever_its_users() {
        use crate::audit::{consume, Action, Actor, ActorType, AuditEvent};
        let audit = MemoryAudit::default();
        let mut bodies = Vec::new();
        for i in 0..50 {
            let user = UserId::parse(&format!("u_{i}")).unwrap();
            let e = AuditEvent::new(
                format!("ev_{i:04}"),
                crate::domain::Timestamp::from_millis(NOW_MS + i),
                &user,
                Action::CredentialViewed,
                Actor {
                    kind: ActorType::User,
                    id: user.as_str().into(),
                },
            );
            audit.outbox.push(&e);
            bodies.push(json!(crate::audit::nudge_body(&e.id)));
        }
        audit.queries.set(0);
        let sealer = crate::testing::test_sealer();
        let out = block_on(consume(&audit, Some(&sealer), &bodies, &|_| {}));
        assert!(out
            .dispositions
            .iter()
            .all(|d| *d == crate::audit::Disposition::Ack));
        assert_eq!(audit.rows.borrow().len(), 50);
        // pending, heads, commit, and one more pending that finds the outbox empty.
        assert!(audit.queries.get() <= 4, "{} queries", audit.queries.get());
    }

    #[test]
    fn the_dead_letter_consumer_is_bounded_too() {
        use crate::audit::{consume_dead_letters, Action, Actor, ActorType, AuditEvent};
        let audit = MemoryAudit::default();
        let mut bodies: Vec<Value> = (0..40)
            .map(|i| {
                let user = UserId::parse(&format!("u_{i}")).unwrap();
                let e = AuditEvent::new(
                    format!("ev_{i:04}"),
                    crate::domain::Timestamp::from_millis(NOW_MS + i),
                    &user,
                    Action::CredentialViewed,
                    Actor {
                        kind: ActorType::User,
                        id: user.as_str().into(),
                    },
                );
                json!(serde_json::to_string(&e).unwrap())
            })
            .collect();
        bodies.extend((0..10).map(|i| json!(format!("junk {i}"))));
        audit.queries.set(0);
        let sealer = crate::testing::test_sealer();
        let out = block_on(consume_dead_letters(
            &audit,
            Some(&sealer),
            &bodies,
            &|_| {},
        ));
        assert!(out.iter().all(|d| *d == crate::audit::Disposition::Ack));
        assert_eq!(audit.rows.borrow().len(), 40);
        assert_eq!(audit.dead_letters.borrow().len(), 10);
        // enqueue, dead letters, then pending, heads, commit, pending.
        assert!(audit.queries.get() <= 6, "{} queries", audit.queries.get());
    }
}

mod limits {
    use super::*;

    #[test]
    fn live_checks_over_the_per_user_limit_are_refused_before_the_provider() {
        let w = World {
            limiter: CountingLimiter::new(2),
            ..World::new()
        };
        let id = w.added();
        let path = format!("/v1/credentials/{id}/validate");
        assert_eq!(w.call("POST", &path, Some("u_a"), None, valid()).0, 200);
        let before = w.provider_calls.get();
        let (s, b, r) = w.add_key("u_a", KEY2, valid());
        assert_eq!((s, b["code"].as_str()), (429, Some("rate_limited")));
        assert_eq!(r.header("retry-after"), Some("60"));
        assert_eq!(b["retry_after_seconds"], 60);
        assert_eq!(w.provider_calls.get(), before, "the provider was contacted");
        for path in [
            path.clone(),
            format!("/v1/credentials/{id}/models?refresh=true"),
        ] {
            let method = if path.ends_with("validate") {
                "POST"
            } else {
                "GET"
            };
            assert_eq!(w.call(method, &path, Some("u_a"), None, valid()).0, 429);
        }
        let (s, _, _) = w.call(
            "PATCH",
            &format!("/v1/credentials/{id}"),
            Some("u_a"),
            Some(json!({"api_key": KEY2})),
            valid(),
        );
        assert_eq!(s, 429);
        assert_eq!(w.provider_calls.get(), before);
        // Views and edits that reach no provider are not limited.
        assert_eq!(
            w.call(
                "GET",
                &format!("/v1/credentials/{id}"),
                Some("u_a"),
                None,
                vec![]
            )
            .0,
            200
        );
        let last = w.actions("u_a").pop().unwrap();
        assert_eq!(last.2.as_deref(), None);
        assert!(w.actions("u_a").contains(&(
            "credential.created".into(),
            "failure".into(),
            Some("rate_limited".into())
        )));
    }

    #[test]
    fn one_address_is_limited_across_many_users() {
        let w = World {
            limiter: CountingLimiter::new(3),
            ..World::new()
        };
        let keys = [
            "sk_aaaaaaaaaaaaaaaaaaaa1",
            "sk_bbbbbbbbbbbbbbbbbbbb2",
            "sk_cccccccccccccccccccc3",
            "sk_dddddddddddddddddddd4",
        ];
        let statuses: Vec<u16> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| w.add_key(&format!("u_{i}"), k, valid()).0)
            .collect();
        assert_eq!(statuses, [201, 201, 201, 429]);
        // Another address is counted apart.
        *w.address.borrow_mut() = "198.51.100.20".into();
        assert_eq!(w.add_key("u_9", "sk_eeeeeeeeeeeeeeeeeeee5", valid()).0, 201);
    }

    #[test]
    fn an_ipv6_caller_is_counted_by_its_64_whatever_address_of_it_it_uses() {
        let w = World {
            limiter: CountingLimiter::new(2),
            ..World::new()
        };
        let mut statuses = Vec::new();
        for (i, address) in [
            "2001:db8:1:2::1",
            "2001:db8:1:2:ffff::9",
            "2001:0db8:0001:0002:dead:beef:0:1",
        ]
        .iter()
        .enumerate()
        {
            *w.address.borrow_mut() = (*address).into();
            let key = format!("sk_v6_key_number_{i}_000000000");
            statuses.push(w.add_key(&format!("u_v6_{i}"), &key, valid()).0);
        }
        assert_eq!(statuses, [201, 201, 429]);
        // The refused address spent nothing of the user's allowance.
        let seen = w.limiter.seen.borrow();
        assert_eq!(seen.get(&("user".to_owned(), "u_v6_2".to_owned())), None);
        drop(seen);
        *w.address.borrow_mut() = "2001:db8:1:3::1".into();
        let (s, _, _) = w.add_key("u_v6_3", "sk_v6_key_number_3_000000000", valid());
        assert_eq!(s, 201);
    }

    #[test]
    fn without_rate_limits_nothing_is_counted_and_a_missing_limiter_fails_closed() {
        let w = World {
            limiter: CountingLimiter::new(0),
            ..World::with_config(&[("RATE_LIMITS", "off"), ("ENVIRONMENT", "development")])
        };
        assert_eq!(w.add("u_a").0, 201);
        let w = World::new();
        w.limiter.down.set(true);
        let (s, b) = w.add("u_a");
        assert_eq!((s, b["code"].as_str()), (503, Some("not_configured")));
        assert_eq!(w.provider_calls.get(), 0);
    }

    #[test]
    fn a_user_holds_at_most_the_configured_number_of_credentials() {
        let w = World::with_config(&[("MAX_CREDENTIALS_PER_USER", "2")]);
        assert_eq!(w.add_key("u_a", KEY, valid()).0, 201);
        assert_eq!(w.add_key("u_a", KEY2, valid()).0, 201);
        let before = w.provider_calls.get();
        let (s, b, _) = w.add_key("u_a", "sk_third_key_0000000000000", valid());
        assert_eq!(
            (s, b["code"].as_str()),
            (409, Some("credential_limit_reached"))
        );
        assert_eq!(w.provider_calls.get(), before);
        // Others are not affected; a deleted key frees its slot.
        assert_eq!(w.add_key("u_b", KEY, valid()).0, 201);
        let id = w.store.rows.borrow()[0].id.to_string();
        w.delete(&id);
        assert_eq!(
            w.add_key("u_a", "sk_third_key_0000000000000", valid()).0,
            201
        );
    }

    #[test]
    fn the_limit_holds_when_a_parallel_add_takes_the_last_slot() {
        let other = World::new();
        let (_, _, _) = other.add_key("u_a", KEY2, valid());
        let parallel = other.stored();
        let w = World::with_config(&[("MAX_CREDENTIALS_PER_USER", "1")]);
        w.race(Box::new(move |rows: &mut Vec<Credential>| {
            rows.push(parallel)
        }));
        let (s, b) = w.add("u_a");
        assert_eq!(
            (s, b["code"].as_str()),
            (409, Some("credential_limit_reached"))
        );
        assert_eq!(w.store.rows.borrow().len(), 1);
    }

    #[test]
    fn verification_is_bounded_per_request_and_pages_through_a_long_chain() {
        let w = World::new();
        let user = UserId::parse("u_long").unwrap();
        let events: Vec<_> = (0..12_001u64)
            .map(|i| {
                crate::audit::AuditEvent::new(
                    format!("ev_{i:08}"),
                    crate::domain::Timestamp::from_millis(NOW_MS + i),
                    &user,
                    crate::audit::Action::CredentialViewed,
                    crate::audit::Actor {
                        kind: crate::audit::ActorType::User,
                        id: "u_long".into(),
                    },
                )
            })
            .collect();
        let rows = crate::audit::chain(&crate::audit::ChainHead::genesis(), events);
        w.audit.set_head("u_long", &rows.last().unwrap().head());
        w.audit.rows.borrow_mut().extend(rows);
        let verify = |cursor: Option<&str>| {
            let path = match cursor {
                Some(c) => format!("/v1/audit/verify?cursor={c}"),
                None => "/v1/audit/verify".into(),
            };
            w.audit.queries.set(0);
            let (s, b, _) = w.call("GET", &path, Some("u_long"), None, vec![]);
            assert_eq!(s, 200, "{b}");
            assert!(
                w.audit.queries.get() <= 8,
                "{} queries",
                w.audit.queries.get()
            );
            b
        };
        let first = verify(None);
        assert_eq!(
            (first["ok"].as_bool(), first["checked"].as_u64()),
            (Some(true), Some(5000))
        );
        let second = verify(first["next_cursor"].as_str());
        assert_eq!(second["checked"], 10_000);
        let last = verify(second["next_cursor"].as_str());
        assert_eq!(verdict(&last), json!({"ok": true, "checked": 12_001}));
        assert_eq!(last["head"]["seq"], 12_001);

        // A row edited on the second page is found by following the pages.
        w.audit.rows.borrow_mut()[7_000].event.outcome = crate::audit::Outcome::Failure;
        let first = verify(None);
        let second = verify(first["next_cursor"].as_str());
        assert_eq!(
            verdict(&second),
            json!({"ok": false, "checked": 7_000, "broken_seq": 7_001})
        );
        // Another user's cursor, and cursors written by hand (near the head, claiming a
        // count), are refused.
        let theirs = first["next_cursor"].as_str().unwrap();
        let path = format!("/v1/audit/verify?cursor={theirs}");
        assert_eq!(w.call("GET", &path, Some("u_other"), None, vec![]).0, 400);
        let forged = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(format!("v1:12000:{}:999999", "0".repeat(64))),
            "00".repeat(16)
        );
        for bogus in ["bogus", forged.as_str()] {
            let path = format!("/v1/audit/verify?cursor={bogus}");
            assert_eq!(w.call("GET", &path, Some("u_long"), None, vec![]).0, 400);
        }
    }
}

mod input {
    use super::*;

    #[test]
    fn every_path_refuses_hidden_characters_in_keys_and_labels() {
        let w = World::new();
        let id = w.added();
        let before = w.stored();
        for body in [
            json!({"api_key": "sk_new\u{7}key_0123456789"}),
            json!({"api_key": "sk_new\u{200b}key_0123456789"}),
            json!({"label": "Per\u{202e}sonal"}),
            json!({"label": "a\u{2066}b"}),
            json!({"label": "zero\u{200b}width"}),
        ] {
            let (s, b, _) = w.call(
                "PATCH",
                &format!("/v1/credentials/{id}"),
                Some("u_a"),
                Some(body.clone()),
                valid(),
            );
            assert_eq!(
                (s, b["code"].as_str()),
                (400, Some("invalid_request")),
                "{body}"
            );
            let mut post = body.clone();
            post["provider"] = json!("elevenlabs");
            if post.get("api_key").is_none() {
                post["api_key"] = json!(KEY2);
            }
            let (s, _, _) = w.call("POST", "/v1/credentials", Some("u_b"), Some(post), valid());
            assert_eq!(s, 400, "{body}");
        }
        let after = w.stored();
        assert_eq!((after.label, after.secret), (before.label, before.secret));
        assert_eq!(
            w.provider_calls.get(),
            2,
            "only the first add reached the provider"
        );
    }
}

mod tokens {
    use super::*;

    #[test]
    fn a_token_without_the_configured_audience_is_refused() {
        let w = World::new();
        for claims in [
            json!({"sub":"u_a","exp":NOW_MS / 1000 + 600}),
            json!({"sub":"u_a","exp":NOW_MS / 1000 + 600,"aud":"https://other.example"}),
        ] {
            let token = sign_hs256(&json!({"alg":"HS256"}), &claims, SECRET.as_bytes());
            let (status, _, _) =
                w.call_with_token("GET", "/v1/credentials", Some(token), None, vec![]);
            assert_eq!(status, 401, "{claims}");
        }
    }
}
