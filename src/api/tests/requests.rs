//! Requests as HTTP: bad input, unknown routes, headers, CORS.

use super::*;

#[test]
fn bad_input_is_a_precise_error_and_changes_nothing() {
    let w = World::new();
    let long = "k".repeat(1025);
    let cases = [
        (json!({"api_key":KEY}), 400, "invalid_request", "provider"),
        (
            json!({"provider":"elevenlabs"}),
            400,
            "invalid_request",
            "api_key",
        ),
        (
            json!({"provider":"elevenlabs","api_key":""}),
            400,
            "invalid_request",
            "api_key",
        ),
        (
            json!({"provider":"elevenlabs","api_key":long}),
            400,
            "invalid_request",
            "api_key",
        ),
        (
            json!({"provider":"elevenlabs","api_key":42}),
            400,
            "invalid_request",
            "api_key",
        ),
        (
            json!({"provider":"elevenlabs","api_key":"sk a b c d e f"}),
            400,
            "invalid_request",
            "api_key",
        ),
        (
            json!({"provider":"elevenlabs","api_key":KEY,"label":"x".repeat(101)}),
            400,
            "invalid_request",
            "label",
        ),
        (
            json!({"provider":"elevenlabs","api_key":KEY,"colour":"red"}),
            400,
            "invalid_request",
            "colour",
        ),
        (
            json!({"provider":"elevenlabs","api_key":KEY,"region":"eastus"}),
            400,
            "invalid_request",
            "region",
        ),
        (
            json!({"provider":"nope","api_key":KEY}),
            400,
            "unknown_provider",
            "provider",
        ),
        (json!([1, 2]), 400, "invalid_request", "body"),
    ];
    for (body, status, code, field) in cases {
        let (s, b, _) = w.call(
            "POST",
            "/v1/credentials",
            Some("u_a"),
            Some(body.clone()),
            vec![],
        );
        assert_eq!((s, b["code"].as_str()), (status, Some(code)), "{body}");
        assert!(
            b["errors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["field"] == field),
            "{body}: {b}"
        );
    }
    assert!(w.store.rows.borrow().is_empty());
}

#[test]
fn responses_carry_no_store_request_ids_and_cors_for_allowed_origins_only() {
    let w = World::new();
    let (_, _, r) = w.call("GET", "/v1/health", None, None, vec![]);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(r.header("x-request-id").unwrap().starts_with("req_"));
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[test]
fn unknown_paths_and_methods() {
    let w = World::new();
    assert_eq!(
        w.call("GET", "/v1/nothing", Some("u_a"), None, vec![]).0,
        404
    );
    assert_eq!(
        w.call("PUT", "/v1/credentials", Some("u_a"), None, vec![])
            .0,
        405
    );
    assert_eq!(
        w.call("GET", "/v1/credentials/c_%27", Some("u_a"), None, vec![])
            .0,
        404
    );
}

#[test]
fn cors_preflight_is_answered_for_allowed_origins_only() {
    let w = World::new();
    let preflight = |origin: &str| {
        let http = FakeHttp::new(&w.clock, vec![]);
        let app = w.app(&http, &|_: &str| {});
        let request = Request::new(
            "OPTIONS",
            Url::parse("https://vault.test/v1/credentials").unwrap(),
            vec![
                ("origin".into(), origin.into()),
                ("access-control-request-method".into(), "POST".into()),
            ],
            Box::new(crate::testing::Bytes(vec![])),
        );
        block_on(handle_all(&app, &request))
    };
    let ok = preflight("https://app.example");
    assert_eq!(ok.status, 204);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(ok
        .header("access-control-allow-methods")
        .unwrap()
        .contains("PATCH"));
    assert_eq!(ok.header("vary"), Some("Origin"));
    let other = preflight("https://evil.example");
    assert_eq!(other.header("access-control-allow-origin"), None);
}

#[test]
fn every_request_writes_one_json_log_line_with_its_route_status_and_cause() {
    let w = World::new();
    let id = w.added();
    let line = |w: &World| -> Value {
        let logs = w.logs.borrow();
        let last = logs.iter().rev().find(|l| l.starts_with('{')).unwrap();
        serde_json::from_str(last).unwrap()
    };
    let added = line(&w);
    assert_eq!(added["route"], "/v1/credentials");
    assert_eq!(
        (added["method"].as_str(), added["status"].as_u64()),
        (Some("POST"), Some(201))
    );
    assert!(added["request_id"].as_str().unwrap().starts_with("req_"));
    assert!(added["code"].is_null() && added["cause"].is_null());

    // A re-check of a dead key answers 200; the line says what failed.
    let path = format!("/v1/credentials/{id}/validate");
    w.call(
        "POST",
        &path,
        Some("u_a"),
        None,
        vec![respond(401, INVALID)],
    );
    let dead = line(&w);
    assert_eq!(dead["route"], "/v1/credentials/{id}/validate");
    assert_eq!(dead["failure"], "invalid_api_key");

    // An error keeps its cause for the log, never for the caller.
    w.store.down.set(true);
    let (s, body, _) = w.call("GET", "/v1/credentials", Some("u_a"), None, vec![]);
    assert_eq!(s, 500);
    assert!(!body.to_string().contains("down"));
    let failed = line(&w);
    assert_eq!(failed["code"], "internal");
    assert!(failed["cause"]
        .as_str()
        .unwrap()
        .contains("test database is down"));
    // One line per request.
    let lines = w
        .logs
        .borrow()
        .iter()
        .filter(|l| l.starts_with('{'))
        .count();
    assert_eq!(lines, 3);
}

#[test]
fn the_api_description_is_a_named_503_when_the_build_did_not_deploy_it() {
    let w = World::new();
    let (s, body, r) = w.call("GET", "/v1/openapi.json", None, None, vec![]);
    assert_eq!(s, 503);
    assert_eq!(body["code"], "not_configured");
    assert_eq!(r.header("cache-control"), Some("no-store"));
}
