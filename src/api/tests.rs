//! The API end to end over in-memory seams: statuses, bodies and what is stored.

use futures::executor::block_on;
use serde_json::{json, Value};

use super::*;
use crate::auth::jwt::sign_hs256;
use crate::testing::{
    respond, CountingLimiter, FakeClock, FakeHttp, FixedJitter, MemoryAudit, MemoryStore, Scripted,
};

const NOW_MS: u64 = 1_800_000_000_000;
const SECRET: &str = "0123456789abcdef0123456789abcdef";
const MASTER: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY: &str = "sk_3f9a0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d9f2a";
const SUBSCRIPTION: &str = r#"{"character_count":1200,"character_limit":10000,"next_character_count_reset_unix":1796083200}"#;
const MODELS: &str = r#"[{"model_id":"eleven_multilingual_v2","name":"Eleven Multilingual v2","can_do_text_to_speech":true}]"#;
const INVALID: &str = r#"{"detail":{"status":"invalid_api_key","message":"Invalid API key"}}"#;

const AUDIENCE: &str = "https://app.example";

fn config(master: bool) -> Config {
    config_with(master, &[])
}

fn config_with(master: bool, extra: &[(&str, &str)]) -> Config {
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::parse(|k| match k {
        k if extra.iter().any(|(n, _)| n == k) => {
            extra.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        }
        "AUTH_JWT_SECRET" => Some(SECRET.into()),
        "AUTH_AUDIENCE" => Some(AUDIENCE.into()),
        "MASTER_KEY" if master => Some(MASTER.into()),
        "CORS_ALLOWED_ORIGINS" => Some("https://app.example".into()),
        _ => None,
    })
    .unwrap()
}

fn token(sub: &str) -> String {
    sign_hs256(
        &json!({"alg":"HS256"}),
        &json!({"sub":sub,"exp":NOW_MS / 1000 + 600,"aud":AUDIENCE}),
        SECRET.as_bytes(),
    )
}

struct World {
    jwks: Option<crate::auth::JwksCache>,
    config: Config,
    store: MemoryStore,
    audit: MemoryAudit,
    clock: FakeClock,
    limiter: CountingLimiter,
    /// The caller's address, as the edge would report it.
    address: std::cell::RefCell<String>,
    /// Requests the fake providers received, over every call.
    provider_calls: std::cell::Cell<usize>,
    /// Every log line written.
    logs: std::cell::RefCell<Vec<String>>,
}

impl World {
    fn new() -> Self {
        let audit = MemoryAudit::default();
        Self {
            jwks: None,
            config: config(true),
            store: MemoryStore {
                outbox: audit.outbox.clone(),
                ..Default::default()
            },
            audit,
            clock: FakeClock::at(NOW_MS),
            limiter: CountingLimiter::new(1000),
            address: std::cell::RefCell::new("203.0.113.7".into()),
            provider_calls: std::cell::Cell::new(0),
            logs: std::cell::RefCell::default(),
        }
    }

    fn with_config(vars: &[(&str, &str)]) -> Self {
        Self {
            config: config_with(true, vars),
            ..Self::new()
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        user: Option<&str>,
        body: Option<Value>,
        script: Vec<Scripted>,
    ) -> (u16, Value, Response) {
        self.call_with_token(method, path, user.map(token), body, script)
    }

    /// `call` with any bearer token (or none).
    fn call_with_token(
        &self,
        method: &str,
        path: &str,
        bearer: Option<String>,
        body: Option<Value>,
        script: Vec<Scripted>,
    ) -> (u16, Value, Response) {
        let http = FakeHttp::new(&self.clock, script);
        let log = |line: &str| {
            assert!(!line.contains(KEY), "key in log: {line}");
            self.logs.borrow_mut().push(line.to_owned());
        };
        let app = App {
            config: Ok(&self.config),
            store: &self.store,
            http: &http,
            clock: &self.clock,
            jitter: &FixedJitter(0.5),
            audit: &self.audit,
            audit_log: &self.audit,
            jwks: self.jwks.as_ref(),
            signatures: &crate::testing::RustCryptoVerifier,
            limiter: &self.limiter,
            log: &log,
        };
        let mut headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            (
                "cf-connecting-ip".to_string(),
                self.address.borrow().clone(),
            ),
        ];
        if let Some(t) = bearer {
            headers.push(("authorization".into(), format!("Bearer {t}")));
        }
        let request = Request {
            method: method.into(),
            url: Url::parse(&format!("https://vault.test{path}")).unwrap(),
            headers,
            body: body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
        };
        let response = block_on(handle(&app, &request));
        self.provider_calls
            .set(self.provider_calls.get() + http.calls());
        let text = String::from_utf8(response.body.clone()).unwrap();
        assert!(!text.contains(KEY), "key in response: {text}");
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (response.status, value, response)
    }

    fn add(&self, user: &str) -> (u16, Value) {
        let (s, v, _) = self.call(
            "POST",
            "/v1/credentials",
            Some(user),
            Some(json!({"provider":"elevenlabs","api_key":KEY,"label":"Personal"})),
            vec![respond(200, SUBSCRIPTION), respond(200, MODELS)],
        );
        (s, v)
    }
}

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
        json!({"status":"ok","checks":{"config":"ok","master_key":"ok","database":"ok"}})
    );
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

fn actions(w: &World, user: &str) -> Vec<(String, String, Option<String>)> {
    let (_, body, _) = w.call("GET", "/v1/audit?limit=200", Some(user), None, vec![]);
    let mut events: Vec<_> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
                e["reason"].as_str().map(str::to_owned),
            )
        })
        .collect();
    events.reverse();
    events
}

#[test]
fn every_operation_and_failure_is_audited_once_for_its_user() {
    let w = World::new();
    let (_, created) = w.add("u_a");
    let id = created["credential"]["id"].as_str().unwrap().to_owned();
    w.call("GET", "/v1/credentials", Some("u_a"), None, vec![]);
    w.call(
        "GET",
        &format!("/v1/credentials/{id}"),
        Some("u_a"),
        None,
        vec![],
    );
    w.call(
        "GET",
        &format!("/v1/credentials/{id}"),
        Some("u_b"),
        None,
        vec![],
    );
    w.call(
        "POST",
        "/v1/credentials",
        Some("u_a"),
        Some(json!({"provider":"elevenlabs","api_key":"sk_other_key_1234567890"})),
        vec![respond(401, INVALID)],
    );
    w.call(
        "DELETE",
        &format!("/v1/credentials/{id}"),
        Some("u_a"),
        None,
        vec![],
    );
    let s = |a: &str, o: &str, r: Option<&str>| (a.to_owned(), o.to_owned(), r.map(str::to_owned));
    assert_eq!(
        actions(&w, "u_a"),
        vec![
            s("credential.created", "success", None),
            s("credential.viewed", "success", None),
            s("credential.viewed", "success", None),
            s("credential.created", "failure", Some("invalid_api_key")),
            s("credential.deleted", "success", None),
        ]
    );
    assert_eq!(
        actions(&w, "u_b"),
        vec![s("credential.viewed", "failure", Some("not_found"))]
    );
    let (_, body, _) = w.call("GET", "/v1/audit", Some("u_a"), None, vec![]);
    let first = &body["events"][4];
    assert_eq!(first["credential_id"], id.as_str());
    assert_eq!(first["provider"], "elevenlabs");
    assert_eq!(first["actor"], json!({"type":"user","id":"u_a"}));
    assert!(first["request_id"].as_str().unwrap().starts_with("req_"));
    let text = serde_json::to_string(
        &*w.audit
            .rows
            .borrow()
            .iter()
            .map(|r| r.event.clone())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(!text.contains(KEY));
}

#[test]
fn the_audit_list_pages_filters_and_verifies() {
    let w = World::new();
    w.add("u_a");
    for _ in 0..4 {
        w.call("GET", "/v1/credentials", Some("u_a"), None, vec![]);
    }
    let (s, page1, _) = w.call("GET", "/v1/audit?limit=3", Some("u_a"), None, vec![]);
    assert_eq!(s, 200);
    let seqs = |v: &Value| {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(seqs(&page1), [5, 4, 3]);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2, _) = w.call(
        "GET",
        &format!("/v1/audit?limit=3&cursor={cursor}"),
        Some("u_a"),
        None,
        vec![],
    );
    assert_eq!(seqs(&page2), [2, 1]);
    assert_eq!(page2["next_cursor"], Value::Null);
    let (_, created, _) = w.call(
        "GET",
        "/v1/audit?action=credential.created",
        Some("u_a"),
        None,
        vec![],
    );
    assert_eq!(seqs(&created), [1]);
    for bad in [
        "action=credential.exploded",
        "limit=0",
        "limit=201",
        "cursor=zzz",
        "credential_id=x",
        "colour=red",
    ] {
        let (s, b, _) = w.call(
            "GET",
            &format!("/v1/audit?{bad}"),
            Some("u_a"),
            None,
            vec![],
        );
        assert_eq!(
            (s, b["code"].as_str()),
            (400, Some("invalid_request")),
            "{bad}"
        );
    }
    let (_, v, _) = w.call("GET", "/v1/audit/verify", Some("u_a"), None, vec![]);
    assert_eq!(v, json!({"ok": true, "checked": 5}));
    w.audit.rows.borrow_mut()[2].event.action = crate::audit::Action::CredentialDeleted;
    let (_, v, _) = w.call("GET", "/v1/audit/verify", Some("u_a"), None, vec![]);
    assert_eq!(v, json!({"ok": false, "checked": 2, "broken_seq": 3}));
}

#[test]
fn an_unhealthy_audit_path_does_not_change_the_answer() {
    let w = World::new();
    w.audit.down.set(true);
    assert_eq!(w.add("u_a").0, 201);
    assert_eq!(w.store.rows.borrow().len(), 1);
}

mod lifecycle {
    use super::*;

    const KEY2: &str = "sk_1111222233334444555566667777888899990000aaaabbbb";

    fn added(w: &World) -> String {
        let (s, body) = w.add("u_a");
        assert_eq!(s, 201);
        body["credential"]["id"].as_str().unwrap().to_owned()
    }

    fn patch(w: &World, id: &str, body: Value, script: Vec<Scripted>) -> (u16, Value) {
        let (s, b, _) = w.call(
            "PATCH",
            &format!("/v1/credentials/{id}"),
            Some("u_a"),
            Some(body),
            script,
        );
        (s, b)
    }

    fn stored(w: &World) -> Credential {
        w.store.rows.borrow()[0].clone()
    }

    use crate::domain::Credential;

    #[test]
    fn rotation_validates_the_new_key_first_and_keeps_the_old_one_on_failure() {
        let w = World::new();
        let id = added(&w);
        let before = stored(&w).secret.unwrap();
        let (s, b) = patch(
            &w,
            &id,
            json!({"api_key": KEY2}),
            vec![respond(401, INVALID)],
        );
        assert_eq!((s, b["code"].as_str()), (422, Some("invalid_api_key")));
        assert_eq!(stored(&w).secret.unwrap(), before);
        let (s, b) = patch(
            &w,
            &id,
            json!({"api_key": KEY2}),
            vec![respond(200, SUBSCRIPTION), respond(200, MODELS)],
        );
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["key_hint"], "…bbbb");
        assert_ne!(stored(&w).secret.unwrap(), before);
        assert_eq!(actions(&w, "u_a").last().unwrap().0, "credential.rotated");
    }

    #[test]
    fn an_echoed_hint_or_empty_key_never_overwrites() {
        let w = World::new();
        let id = added(&w);
        let before = stored(&w).secret.unwrap();
        for key in ["", "…9f2a", "  "] {
            let (s, b) = patch(&w, &id, json!({"api_key": key, "label": "Work"}), vec![]);
            assert_eq!(s, 200, "{b}");
            assert_eq!(b["label"], "Work");
        }
        assert_eq!(stored(&w).secret.unwrap(), before);
        assert_eq!(actions(&w, "u_a").last().unwrap().0, "credential.updated");
    }

    #[test]
    fn a_model_must_be_one_the_provider_lists() {
        let w = World::new();
        let id = added(&w);
        let (s, b) = patch(&w, &id, json!({"model": "eleven_imaginary"}), vec![]);
        assert_eq!((s, b["errors"][0]["field"].as_str()), (400, Some("model")));
        let (s, b) = patch(&w, &id, json!({"model": "eleven_multilingual_v2"}), vec![]);
        assert_eq!(
            (s, b["model"].as_str()),
            (200, Some("eleven_multilingual_v2"))
        );
        assert_eq!(actions(&w, "u_a").last().unwrap().0, "model.selected");
    }

    #[test]
    fn patch_needs_something_to_change_and_refuses_unknown_fields() {
        let w = World::new();
        let id = added(&w);
        assert_eq!(patch(&w, &id, json!({}), vec![]).0, 400);
        assert_eq!(patch(&w, &id, json!({"colour": "red"}), vec![]).0, 400);
        assert_eq!(patch(&w, &id, json!({"region": "eastus"}), vec![]).0, 400);
    }

    #[test]
    fn revalidation_reports_a_dead_key_as_a_status() {
        let w = World::new();
        let id = added(&w);
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
        assert_eq!(stored(&w).consecutive_failures, 1);
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
        assert_eq!(stored(&w).consecutive_failures, 0);
    }

    #[test]
    fn a_key_that_no_longer_decrypts_needs_reconfiguration() {
        let w = World::new();
        let id = added(&w);
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
        let id = added(&w);
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
        let id = added(&w);
        let (s, b, _) = w.call("GET", "/v1/preferences", Some("u_a"), None, vec![]);
        assert_eq!(
            (s, b),
            (200, json!({"tts": null, "stt": null, "llm": null}))
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
        w.call(
            "DELETE",
            &format!("/v1/credentials/{id}"),
            Some("u_a"),
            None,
            vec![],
        );
        let (_, b, _) = w.call("GET", "/v1/preferences", Some("u_a"), None, vec![]);
        assert_eq!(b["tts"], Value::Null);
    }

    #[test]
    fn another_users_credential_cannot_be_changed_checked_or_listed() {
        let w = World::new();
        let id = added(&w);
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
        assert_eq!(stored(&w).label.as_deref(), Some("Personal"));
    }
}

#[test]
fn cors_preflight_is_answered_for_allowed_origins_only() {
    let w = World::new();
    let preflight = |origin: &str| {
        let http = FakeHttp::new(&w.clock, vec![]);
        let app = App {
            config: Ok(&w.config),
            store: &w.store,
            http: &http,
            clock: &w.clock,
            jitter: &FixedJitter(0.5),
            audit: &w.audit,
            audit_log: &w.audit,
            jwks: None,
            signatures: &crate::testing::RustCryptoVerifier,
            limiter: &w.limiter,
            log: &|_: &str| {},
        };
        let request = Request {
            method: "OPTIONS".into(),
            url: Url::parse("https://vault.test/v1/credentials").unwrap(),
            headers: vec![
                ("origin".into(), origin.into()),
                ("access-control-request-method".into(), "POST".into()),
            ],
            body: vec![],
        };
        block_on(handle(&app, &request))
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

mod hardening;
