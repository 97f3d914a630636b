//! Adding, showing, listing and deleting keys; who may see what.

use super::*;

#[test]
fn a_valid_key_is_stored_encrypted_and_shown_masked() {
    let w = World::new();
    let (status, body) = w.add("u_a");
    assert_eq!(status, 201, "{body}");
    let c = &body["credential"];
    assert_eq!(c["key_hint"], "…9f2a");
    assert_eq!(c["status"], "valid");
    assert_eq!(c["quota"]["limit"], 10000.0);
    assert_eq!(body["models"][0]["id"], "eleven_multilingual_v2");
    assert!(c.get("api_key").is_none());
    let rows = w.store.rows.borrow();
    assert_eq!(rows.len(), 1);
    let sealed = rows[0].secret.as_ref().unwrap();
    assert!(!String::from_utf8_lossy(&sealed.ciphertext).contains(KEY));
}

#[test]
fn an_invalid_key_is_rejected_and_nothing_is_stored() {
    let w = World::new();
    let (status, body, r) = w.call(
        "POST",
        "/v1/credentials",
        Some("u_a"),
        Some(json!({"provider":"elevenlabs","api_key":KEY})),
        vec![respond(401, INVALID)],
    );
    assert_eq!(status, 422);
    assert_eq!(body["code"], "invalid_api_key");
    assert_eq!(body["detail"], "ElevenLabs says: Invalid API key");
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert!(w.store.rows.borrow().is_empty());
}

#[test]
fn without_a_master_key_nothing_is_stored_and_health_says_so() {
    let mut w = World::new();
    w.config = config(false);
    let (status, body, _) = w.call(
        "POST",
        "/v1/credentials",
        Some("u_a"),
        Some(json!({"provider":"elevenlabs","api_key":KEY})),
        vec![],
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("not_configured"))
    );
    assert!(w.store.rows.borrow().is_empty());
    let (status, body, _) = w.call("GET", "/v1/health", None, None, vec![]);
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("not_configured"))
    );
    assert_eq!(body["checks"]["master_key"], "missing");
}

#[test]
fn health_is_ok_when_everything_is_usable() {
    let w = World::new();
    let (status, body, _) = w.call("GET", "/v1/health", None, None, vec![]);
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"status":"ok","checks":{"config":"ok","master_key":"ok","database":"ok",
            "system_keys":{"source":"env","tier":"env","ok":true},"providers":"live"}})
    );
    // The sandbox says so (the settings page shows it).
    let w = World::with_config(&[("SANDBOX", "on"), ("ENVIRONMENT", "development")]);
    let (_, body, _) = w.call("GET", "/v1/health", None, None, vec![]);
    assert_eq!(body["checks"]["providers"], "sandbox");
    w.store.down.set(true);
    let (status, body, _) = w.call("GET", "/v1/health", None, None, vec![]);
    assert_eq!(status, 503);
    assert_eq!(body["checks"]["database"], "error");
}

#[test]
fn users_never_see_each_others_credentials() {
    let w = World::new();
    let (_, body) = w.add("u_a");
    let id = body["credential"]["id"].as_str().unwrap().to_owned();
    let (status, _, _) = w.call(
        "GET",
        &format!("/v1/credentials/{id}"),
        Some("u_b"),
        None,
        vec![],
    );
    assert_eq!(status, 404);
    let (_, list, _) = w.call("GET", "/v1/credentials", Some("u_b"), None, vec![]);
    assert_eq!(list, json!({"credentials": []}));
    let (status, _, _) = w.call(
        "DELETE",
        &format!("/v1/credentials/{id}"),
        Some("u_b"),
        None,
        vec![],
    );
    assert_eq!(status, 404);
    let (status, body, _) = w.call(
        "GET",
        &format!("/v1/credentials/{id}"),
        Some("u_a"),
        None,
        vec![],
    );
    assert_eq!(status, 200);
    assert_eq!(body["id"], id.as_str());
}

#[test]
fn delete_removes_the_credential() {
    let w = World::new();
    let (_, body) = w.add("u_a");
    let path = format!(
        "/v1/credentials/{}",
        body["credential"]["id"].as_str().unwrap()
    );
    assert_eq!(w.call("DELETE", &path, Some("u_a"), None, vec![]).0, 204);
    assert_eq!(w.call("GET", &path, Some("u_a"), None, vec![]).0, 404);
    assert!(w.store.rows.borrow().is_empty());
}

#[test]
fn the_same_key_twice_is_a_duplicate() {
    let w = World::new();
    let (_, first) = w.add("u_a");
    let (status, body) = w.add("u_a");
    assert_eq!(status, 409);
    assert_eq!(body["code"], "duplicate_credential");
    assert_eq!(body["credential_id"], first["credential"]["id"]);
    // Another user may store the same key.
    assert_eq!(w.add("u_b").0, 201);
}

#[test]
fn requests_without_a_valid_token_are_unauthorized() {
    let w = World::new();
    let (status, body, r) = w.call("GET", "/v1/credentials", None, None, vec![]);
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
}

#[test]
fn a_hanging_provider_is_a_504_within_the_deadline() {
    let w = World::new();
    let (status, body, _) = w.call(
        "POST",
        "/v1/credentials",
        Some("u_a"),
        Some(json!({"provider":"elevenlabs","api_key":KEY})),
        (0..5).map(|_| Scripted::Hang).collect(),
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (504, Some("provider_unreachable"))
    );
    assert!(w.clock.elapsed_since(NOW_MS) <= 10_000);
    assert!(w.store.rows.borrow().is_empty());
}
