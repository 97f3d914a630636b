//! Changing, rotating, re-checking and choosing credentials.

use super::*;

#[test]
fn rotation_validates_the_new_key_first_and_keeps_the_old_one_on_failure() {
    let w = World::new();
    let id = w.added();
    let before = w.stored().secret.unwrap();
    let (s, b) = w.patch(&id, json!({"api_key": KEY2}), vec![respond(401, INVALID)]);
    assert_eq!((s, b["code"].as_str()), (422, Some("invalid_api_key")));
    assert_eq!(w.stored().secret.unwrap(), before);
    let (s, b) = w.patch(
        &id,
        json!({"api_key": KEY2}),
        vec![respond(200, SUBSCRIPTION), respond(200, MODELS)],
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["key_hint"], "…bbbb");
    assert_ne!(w.stored().secret.unwrap(), before);
    assert_eq!(w.actions("u_a").last().unwrap().0, "credential.rotated");
}

#[test]
fn an_echoed_hint_or_empty_key_never_overwrites() {
    let w = World::new();
    let id = w.added();
    let before = w.stored().secret.unwrap();
    for key in ["", "…9f2a", "  "] {
        let (s, b) = w.patch(&id, json!({"api_key": key, "label": "Work"}), vec![]);
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["label"], "Work");
    }
    assert_eq!(w.stored().secret.unwrap(), before);
    assert_eq!(w.actions("u_a").last().unwrap().0, "credential.updated");
}

#[test]
fn a_model_must_be_one_the_provider_lists() {
    let w = World::new();
    let id = w.added();
    let (s, b) = w.patch(&id, json!({"model": "eleven_imaginary"}), vec![]);
    assert_eq!((s, b["errors"][0]["field"].as_str()), (400, Some("model")));
    let (s, b) = w.patch(&id, json!({"model": "eleven_multilingual_v2"}), vec![]);
    assert_eq!(
        (s, b["model"].as_str()),
        (200, Some("eleven_multilingual_v2"))
    );
    assert_eq!(w.actions("u_a").last().unwrap().0, "model.selected");
}

#[test]
fn patch_needs_something_to_change_and_refuses_unknown_fields() {
    let w = World::new();
    let id = w.added();
    assert_eq!(w.patch(&id, json!({}), vec![]).0, 400);
    assert_eq!(w.patch(&id, json!({"colour": "red"}), vec![]).0, 400);
    assert_eq!(w.patch(&id, json!({"region": "eastus"}), vec![]).0, 400);
}

#[test]
fn revalidation_reports_a_dead_key_as_a_status() {
    let w = World::new();
    let id = w.added();
    let path = format!("/v1/credentials/{id}/validate");
    let (s, b, _) = w.call(
        "POST",
        &path,
        Some("u_a"),
        None,
        vec![respond(401, INVALID)],
    );
    assert_eq!((s, b["status"].as_str()), (200, Some("invalid_key")));
    assert_eq!(b["status_detail"], "ElevenLabs says: Invalid API key");
    assert_eq!(w.stored().consecutive_failures, 1);
    let last = w.audit.rows.borrow().last().unwrap().event.clone();
    assert_eq!(last.action, crate::audit::Action::CredentialValidated);
    assert_eq!(last.reason.as_deref(), Some("invalid_api_key"));
    assert_eq!(
        last.detail.unwrap(),
        json!({"previous_status":"valid","new_status":"invalid_key"})
    );
    let (s, b, _) = w.call(
        "POST",
        &path,
        Some("u_a"),
        None,
        vec![respond(200, SUBSCRIPTION), respond(200, MODELS)],
    );
    assert_eq!((s, b["status"].as_str()), (200, Some("valid")));
    assert_eq!(w.stored().consecutive_failures, 0);
}

#[test]
fn a_key_that_no_longer_decrypts_needs_reconfiguration() {
    let w = World::new();
    let id = w.added();
    w.store.rows.borrow_mut()[0]
        .secret
        .as_mut()
        .unwrap()
        .ciphertext[0] ^= 1;
    let (s, b, _) = w.call(
        "POST",
        &format!("/v1/credentials/{id}/validate"),
        Some("u_a"),
        None,
        vec![],
    );
    assert_eq!(
        (s, b["status"].as_str()),
        (200, Some("needs_reconfiguration"))
    );
    let (s, list, _) = w.call("GET", "/v1/credentials", Some("u_a"), None, vec![]);
    assert_eq!(
        (s, list["credentials"][0]["status"].as_str()),
        (200, Some("needs_reconfiguration"))
    );
}

#[test]
fn models_are_cached_until_refreshed() {
    let w = World::new();
    let id = w.added();
    let path = format!("/v1/credentials/{id}/models");
    let (s, b, _) = w.call("GET", &path, Some("u_a"), None, vec![]);
    assert_eq!(
        (s, b["models"][0]["id"].as_str()),
        (200, Some("eleven_multilingual_v2"))
    );
    assert!(b["fetched_at"].is_string());
    let newer = r#"[{"model_id":"eleven_v3","name":"Eleven v3","can_do_text_to_speech":true}]"#;
    let (s, b, _) = w.call(
        "GET",
        &format!("{path}?refresh=true"),
        Some("u_a"),
        None,
        vec![respond(200, SUBSCRIPTION), respond(200, newer)],
    );
    assert_eq!((s, b["models"][0]["id"].as_str()), (200, Some("eleven_v3")));
}

#[test]
fn preferences_point_at_the_users_own_capable_credentials() {
    let w = World::new();
    let id = w.added();
    let (s, b, _) = w.call("GET", "/v1/preferences", Some("u_a"), None, vec![]);
    assert_eq!(
        (s, b),
        (
            200,
            json!({"tts": null, "stt": null, "llm": null, "embedding": null})
        )
    );
    let put = |user: &str, cap: &str, body: Value| {
        w.call(
            "PUT",
            &format!("/v1/preferences/{cap}"),
            Some(user),
            Some(body),
            vec![],
        )
    };
    let (s, b, _) = put(
        "u_a",
        "tts",
        json!({"credential_id": id, "model": "eleven_multilingual_v2"}),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(put("u_a", "llm", json!({"credential_id": id})).0, 400);
    assert_eq!(put("u_a", "embedding", json!({"credential_id": id})).0, 400);
    assert_eq!(
        put("u_a", "tts", json!({"credential_id": id, "model": "nope"})).0,
        400
    );
    assert_eq!(put("u_b", "tts", json!({"credential_id": id})).0, 404);
    assert_eq!(put("u_a", "video", json!({"credential_id": id})).0, 404);
    let (_, b, _) = w.call("GET", "/v1/preferences", Some("u_a"), None, vec![]);
    assert_eq!(
        b["tts"],
        json!({"credential_id": id, "provider": "elevenlabs", "model": "eleven_multilingual_v2"})
    );
    w.delete(&id);
    let (_, b, _) = w.call("GET", "/v1/preferences", Some("u_a"), None, vec![]);
    assert_eq!(b["tts"], Value::Null);
}

#[test]
fn another_users_credential_cannot_be_changed_checked_or_listed() {
    let w = World::new();
    let id = w.added();
    let (s, _, _) = w.call(
        "PATCH",
        &format!("/v1/credentials/{id}"),
        Some("u_b"),
        Some(json!({"label": "mine"})),
        vec![],
    );
    assert_eq!(s, 404);
    assert_eq!(
        w.call(
            "POST",
            &format!("/v1/credentials/{id}/validate"),
            Some("u_b"),
            None,
            vec![]
        )
        .0,
        404
    );
    assert_eq!(
        w.call(
            "GET",
            &format!("/v1/credentials/{id}/models"),
            Some("u_b"),
            None,
            vec![]
        )
        .0,
        404
    );
    assert_eq!(w.stored().label.as_deref(), Some("Personal"));
}

#[test]
fn a_change_that_fails_is_audited_as_a_failed_update_without_what_it_would_have_changed() {
    let w = World::new();
    let id = w.added();
    let (s, _) = w.patch(&id, json!({"model": "eleven_imaginary"}), vec![]);
    assert_eq!(s, 400);
    assert_eq!(
        w.actions("u_a").pop().unwrap(),
        (
            "credential.updated".into(),
            "failure".into(),
            Some("invalid_request".into())
        )
    );
    assert_eq!(w.audit.rows.borrow().last().unwrap().event.detail, None);
}
