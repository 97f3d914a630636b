//! Using keys: service tokens, `/v1/resolve` and its receipts, and the proxy.

use super::*;
use crate::testing::respond_with;

const SYSTEM: &str = "sk_system_0000111122223333444455556666";

fn world(extra: &[(&str, &str)]) -> World {
    World::with_services(extra)
}

impl World {
    fn resolve(&self, body: Value) -> (u16, Value) {
        let (s, v, _) = self.call_with_token(
            "POST",
            "/v1/resolve",
            Some(RESOLVER.into()),
            Some(body),
            vec![],
        );
        (s, v)
    }

    /// `u_a` calls the proxy; the answer and what the fake provider was sent.
    fn proxy(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        script: Vec<Scripted>,
    ) -> (Response, Vec<crate::testing::Sent>, Vec<Vec<u8>>) {
        let body = crate::testing::Bytes(br#"{"text":"Hello"}"#.to_vec());
        self.proxy_with(method, path, headers, Box::new(body), script)
    }

    /// `proxy` with a body of the test's choosing (and the caller's own `authorization`,
    /// when `headers` has one).
    fn proxy_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Box<dyn crate::api::IncomingBody>,
        script: Vec<Scripted>,
    ) -> (Response, Vec<crate::testing::Sent>, Vec<Vec<u8>>) {
        let http = FakeHttp::new(&self.clock, script);
        let log = |line: &str| {
            assert!(
                !line.contains(KEY) && !line.contains(SYSTEM),
                "key in log: {line}"
            );
        };
        let app = self.app(&http, &log);
        let mut all = vec![
            ("cookie".to_string(), "session=abc".to_string()),
            ("content-type".to_string(), "application/json".to_string()),
        ];
        if !headers.iter().any(|(k, _)| *k == "authorization") {
            all.push((
                "authorization".to_string(),
                format!("Bearer {}", token("u_a")),
            ));
        }
        all.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let request = Request::new(
            method,
            Url::parse(&format!("https://vault.test{path}")).unwrap(),
            all,
            body,
        );
        let response = block_on(handle_all(&app, &request));
        let sent = http.sent.borrow().clone();
        let bodies = http.bodies.borrow().clone();
        (response, sent, bodies)
    }

    /// The `credential.used` events of `u_a`: (outcome, reason, source).
    fn uses(&self) -> Vec<(String, Option<String>, Option<String>)> {
        let (_, body, _) = self.call(
            "GET",
            "/v1/audit?action=credential.used",
            Some("u_a"),
            None,
            vec![],
        );
        body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["outcome"].as_str().unwrap().to_owned(),
                    e["reason"].as_str().map(str::to_owned),
                    e["source"].as_str().map(str::to_owned),
                )
            })
            .collect()
    }
}

#[test]
fn resolve_hands_the_users_key_to_a_service_after_one_read() {
    let w = world(&[("SYSTEM_KEY_ELEVENLABS", SYSTEM)]);
    let id = w.added();
    let reads = w.store.reads.get();
    let (s, body) = w.resolve(json!({"user_id":"u_a","capability":"tts"}));
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["source"], "user");
    assert_eq!(body["api_key"], KEY);
    assert_eq!(body["credential_id"], id.as_str());
    assert_eq!(body["provider"], "elevenlabs");
    assert!(body["fallback_reason"].is_null());
    assert_eq!(w.store.reads.get(), reads + 1);
    let (_, body, _) = w.call(
        "GET",
        "/v1/audit?action=credential.used",
        Some("u_a"),
        None,
        vec![],
    );
    let event = &body["events"][0];
    assert_eq!(event["source"], "user");
    assert_eq!(event["actor"], json!({"type":"service","id":"tts-service"}));
    assert_eq!(event["credential_id"], id.as_str());
    assert!(!body.to_string().contains(KEY));
}

#[test]
fn without_a_usable_user_key_the_system_key_serves_with_a_receipt() {
    let w = world(&[("SYSTEM_KEY_ELEVENLABS", SYSTEM)]);
    let (s, body) = w.resolve(json!({"user_id":"u_a","capability":"tts","provider":"elevenlabs"}));
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        (&body["source"], &body["fallback_reason"], &body["api_key"]),
        (
            &json!("system"),
            &json!("no_user_credential"),
            &json!(SYSTEM)
        )
    );
    assert!(body["credential_id"].is_null());

    // The user's key dies: the system key serves, and says why.
    let id = w.added();
    w.store.rows.borrow_mut()[0].status = crate::domain::CredentialStatus::InvalidKey;
    let (_, body) = w.resolve(json!({"user_id":"u_a","capability":"tts"}));
    assert_eq!(body["fallback_reason"], "user_credential_invalid", "{body}");
    // ... unless the call forbids it: then nothing, and why.
    let (s, body) = w.resolve(
        json!({"user_id":"u_a","capability":"tts","provider":"elevenlabs","allow_fallback":false}),
    );
    assert_eq!(
        (s, body["code"].as_str()),
        (404, Some("no_credential")),
        "{body}"
    );
    assert_eq!(body["provider"], "elevenlabs");
    assert_eq!(
        body["skipped"],
        json!([{"credential_id": id, "status": "invalid_key"}])
    );
    let uses = w.uses();
    assert_eq!(
        uses[0],
        ("failure".into(), Some("no_credential".into()), None)
    );
    assert_eq!(uses[1].2.as_deref(), Some("system"));
}

#[test]
fn user_only_with_nothing_is_no_credential_naming_the_provider() {
    let w = world(&[
        ("FALLBACK_POLICY", "user_only"),
        ("SYSTEM_KEY_OPENAI", SYSTEM),
    ]);
    let (s, body) = w.resolve(json!({"user_id":"u_z","capability":"llm","provider":"openai"}));
    assert_eq!(
        (s, body["code"].as_str()),
        (404, Some("no_credential")),
        "{body}"
    );
    assert_eq!(body["provider"], "openai");
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("Add a openai key"));
}

#[test]
fn service_endpoints_want_a_service_token_with_the_scope() {
    let w = world(&[]);
    let body = json!({"user_id":"u_a","capability":"tts"});
    let call = |t: Option<String>| {
        let (s, v, r) = w.call_with_token("POST", "/v1/resolve", t, Some(body.clone()), vec![]);
        (
            s,
            v["code"].as_str().map(str::to_owned),
            r.header("www-authenticate").map(str::to_owned),
        )
    };
    assert_eq!(
        call(None),
        (401, Some("unauthorized".into()), Some("Bearer".into()))
    );
    assert_eq!(
        call(Some(token("u_a"))).0,
        401,
        "a user's token is no service token"
    );
    assert_eq!(call(Some("svc-unknown".into())).0, 401);
    assert_eq!(call(Some(ADMIN.into())).0, 403);
    assert_eq!(call(Some(ADMIN.into())).1.as_deref(), Some("forbidden"));
    // A service token opens no user route.
    let (s, _, _) = w.call_with_token(
        "GET",
        "/v1/credentials",
        Some(RESOLVER.into()),
        None,
        vec![],
    );
    assert_eq!(s, 401);
}

#[test]
fn bad_resolve_bodies_are_refused_field_by_field() {
    let w = world(&[]);
    let (s, body) = w.resolve(json!({"capability":"video","provider":"x","extra":1}));
    assert_eq!(s, 400, "{body}");
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["user_id", "capability", "extra"]);
    let (s, body) = w.resolve(json!({"user_id":"u_a","capability":"tts","provider":"anthropic"}));
    assert_eq!(
        (s, body["errors"][0]["field"].as_str()),
        (400, Some("provider"))
    );
    let (s, body) = w.resolve(json!({"user_id":"u_a","capability":"tts","provider":"nope"}));
    assert_eq!(
        (s, body["code"].as_str()),
        (400, Some("unknown_provider")),
        "{body}"
    );
}

#[test]
fn the_proxy_injects_the_users_key_and_strips_the_callers_credentials() {
    let w = world(&[]);
    let id = w.added();
    let audio = "ID3-fake-mpeg-bytes";
    let (mut r, sent, bodies) = w.proxy(
        "POST",
        "/v1/proxy/elevenlabs/v1/text-to-speech/voice123/stream?output_format=mp3_44100_128&key=steal",
        &[("x-api-key", "caller"), ("x-forwarded-for", "10.0.0.1")],
        vec![respond_with(200, &[("content-type", "audio/mpeg"), ("set-cookie", "a=b")], audio)],
    );
    assert_eq!(r.status, 200);
    let streamed = r
        .stream
        .take()
        .expect("streamed")
        .0
        .downcast::<Vec<u8>>()
        .unwrap();
    assert_eq!(*streamed, audio.as_bytes());
    assert_eq!(r.header("content-type"), Some("audio/mpeg"));
    assert_eq!(r.header("set-cookie"), None);
    assert_eq!(r.header("x-byok-source"), Some("user"));
    assert_eq!(r.header("x-byok-credential-id"), Some(id.as_str()));
    assert_eq!(r.header("x-byok-fallback-reason"), None);
    let (url, headers, _) = &sent[0];
    assert!(
        url.ends_with("/v1/text-to-speech/voice123/stream?output_format=mp3_44100_128"),
        "{url}"
    );
    let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        headers.contains(&("xi-api-key".into(), KEY.into())),
        "{names:?}"
    );
    for gone in ["authorization", "cookie", "x-api-key", "x-forwarded-for"] {
        assert!(!names.contains(&gone), "{gone} forwarded: {names:?}");
    }
    assert_eq!(bodies[0], br#"{"text":"Hello"}"#);
    assert_eq!(w.uses()[0], ("success".into(), None, Some("user".into())));
}

#[test]
fn embedding_is_a_capability_of_its_own_for_defaults_resolve_and_the_proxy() {
    let w = world(&[]);
    let models = r#"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","created":1,"owned_by":"system"},{"id":"text-embedding-3-small","object":"model","created":1,"owned_by":"system"}]}"#;
    let (s, body, _) = w.call(
        "POST",
        "/v1/credentials",
        Some("u_a"),
        Some(json!({"provider":"openai","api_key":KEY})),
        vec![respond(200, models)],
    );
    assert_eq!(s, 201, "{body}");
    let id = body["credential"]["id"].as_str().unwrap().to_owned();
    let put = |model: &str| {
        w.call(
            "PUT",
            "/v1/preferences/embedding",
            Some("u_a"),
            Some(json!({"credential_id": id, "model": model})),
            vec![],
        )
    };
    // A chat model is no embedding model, and the other way round.
    assert_eq!(put("gpt-4o-mini").0, 400);
    let (s, body, _) = put("text-embedding-3-small");
    assert_eq!(
        (s, &body["capability"]),
        (200, &json!("embedding")),
        "{body}"
    );
    let (_, prefs, _) = w.call("GET", "/v1/preferences", Some("u_a"), None, vec![]);
    assert_eq!(
        prefs["embedding"],
        json!({"credential_id": id, "provider": "openai", "model": "text-embedding-3-small"})
    );

    let (s, body) = w.resolve(json!({"user_id":"u_a","capability":"embedding"}));
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        (&body["credential_id"], &body["model"], &body["api_key"]),
        (&json!(id), &json!("text-embedding-3-small"), &json!(KEY))
    );
    let (s, body) = w.resolve(json!({"user_id":"u_a","capability":"vectors"}));
    assert_eq!(s, 400);
    assert_eq!(
        body["errors"][0]["message"],
        "must be tts, stt, llm or embedding"
    );
    let (s, body) =
        w.resolve(json!({"user_id":"u_a","capability":"embedding","provider":"anthropic"}));
    assert_eq!(
        (s, body["errors"][0]["field"].as_str()),
        (400, Some("provider"))
    );

    let embeddings = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-0.2]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":2,"total_tokens":2}}"#;
    let (r, sent, bodies) = w.proxy(
        "POST",
        "/v1/proxy/openai/v1/embeddings",
        &[],
        vec![respond(200, embeddings)],
    );
    assert_eq!(r.status, 200);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, "https://api.openai.com/v1/embeddings");
    assert!(sent[0]
        .1
        .contains(&("authorization".into(), format!("Bearer {KEY}"))));
    assert_eq!(bodies[0], br#"{"text":"Hello"}"#);
    assert_eq!(r.header("x-byok-credential-id"), Some(id.as_str()));
    let (_, events, _) = w.call(
        "GET",
        "/v1/audit?action=credential.used",
        Some("u_a"),
        None,
        vec![],
    );
    assert_eq!(
        events["events"][0]["detail"]["operation"], "POST /v1/embeddings",
        "{events}"
    );

    // A look-alike is refused before any key is chosen.
    let (r, sent, _) = w.proxy("GET", "/v1/proxy/openai/v1/embeddings", &[], vec![]);
    assert_eq!((r.status, sent.len()), (403, 0));
}

#[test]
fn the_proxy_refuses_what_is_not_allow_listed_before_any_upstream_call() {
    let w = world(&[("SYSTEM_KEY_ELEVENLABS", SYSTEM)]);
    for (method, path) in [
        ("GET", "/v1/proxy/elevenlabs/v1/text-to-speech/voice123"),
        ("POST", "/v1/proxy/elevenlabs/v1/user"),
        ("DELETE", "/v1/proxy/elevenlabs/v1/voices"),
        (
            "POST",
            "/v1/proxy/elevenlabs/v1/text-to-speech/..%2F..%2Fuser",
        ),
        ("POST", "/v1/proxy/elevenlabs/v1/text-to-speech/../user"),
        ("POST", "/v1/proxy/elevenlabs/v1/text-to-speech//stream"),
        ("POST", "/v1/proxy/openai/v1/files"),
    ] {
        let (r, sent, _) = w.proxy(method, path, &[], vec![]);
        assert!(sent.is_empty(), "{method} {path} reached the provider");
        assert!(
            matches!(r.status, 403 | 404),
            "{method} {path}: {}",
            r.status
        );
    }
    let (r, sent, _) = w.proxy("POST", "/v1/proxy/nope/v1/x", &[], vec![]);
    assert_eq!((r.status, sent.len()), (400, 0));
}

#[test]
fn a_key_refused_in_use_is_marked_invalid_and_the_caller_told() {
    let w = world(&[]);
    let id = w.added();
    let (r, _, _) = w.proxy(
        "POST",
        "/v1/proxy/elevenlabs/v1/text-to-speech/voice123",
        &[],
        vec![respond(401, INVALID)],
    );
    assert_eq!(r.status, 424);
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["code"], "credential_invalid");
    assert_eq!(body["credential_id"], id.as_str());
    assert_eq!(r.header("x-byok-source"), Some("user"));
    assert_eq!(
        w.stored().status,
        crate::domain::CredentialStatus::InvalidKey
    );
    let trail = w.actions("u_a");
    assert!(
        trail.contains(&(
            "credential.validated".into(),
            "failure".into(),
            Some("credential_invalid".into())
        )),
        "{trail:?}"
    );
    assert_eq!(w.uses()[0].1.as_deref(), Some("credential_invalid"));
}

#[test]
fn a_spent_key_is_marked_and_a_rate_limit_passes_through_untouched() {
    let w = world(&[]);
    w.added();
    let limited = r#"{"detail":{"status":"too_many_concurrent_requests","message":"Too many concurrent requests."}}"#;
    let (r, _, _) = w.proxy(
        "POST",
        "/v1/proxy/elevenlabs/v1/text-to-speech/voice123",
        &[],
        vec![respond_with(429, &[("retry-after", "7")], limited)],
    );
    assert_eq!((r.status, r.header("retry-after")), (429, Some("7")));
    assert_eq!(r.body, limited.as_bytes());
    assert_eq!(w.stored().status, crate::domain::CredentialStatus::Valid);

    let quota =
        r#"{"detail":{"status":"quota_exceeded","message":"This request exceeds your quota."}}"#;
    let (r, _, _) = w.proxy(
        "POST",
        "/v1/proxy/elevenlabs/v1/text-to-speech/voice123",
        &[],
        vec![respond(401, quota)],
    );
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        (r.status, body["code"].as_str()),
        (402, Some("quota_exhausted"))
    );
    assert_eq!(
        w.stored().status,
        crate::domain::CredentialStatus::QuotaExhausted
    );
}

#[test]
fn an_error_page_that_quotes_a_system_key_never_reaches_the_user() {
    let w = world(&[("SYSTEM_KEY_ELEVENLABS", SYSTEM)]);
    let echo = format!(r#"{{"detail":{{"status":"bad_request","message":"bad key {SYSTEM}"}}}}"#);
    let (r, _, _) = w.proxy(
        "POST",
        "/v1/proxy/elevenlabs/v1/text-to-speech/voice123",
        &[],
        vec![respond(400, &echo)],
    );
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-byok-source"), Some("system"));
    assert_eq!(
        r.header("x-byok-fallback-reason"),
        Some("no_user_credential")
    );
    assert!(!String::from_utf8_lossy(&r.body).contains(SYSTEM));
}

#[test]
fn a_marked_key_keeps_its_model_list() {
    let w = world(&[]);
    w.added();
    assert!(w.stored().models.is_some());
    w.proxy(
        "POST",
        "/v1/proxy/elevenlabs/v1/text-to-speech/voice123",
        &[],
        vec![respond(401, INVALID)],
    );
    let row = w.stored();
    assert_eq!(row.status, crate::domain::CredentialStatus::InvalidKey);
    assert!(row.models.is_some(), "the model list was wiped");
}

#[test]
fn only_the_providers_own_signals_about_the_key_mark_it() {
    let w = world(&[]);
    let (_, body, _) = w.call(
        "POST",
        "/v1/credentials",
        Some("u_a"),
        Some(json!({"provider":"anthropic","api_key":KEY})),
        vec![respond(
            200,
            r#"{"data":[{"id":"claude-x","display_name":"Claude X"}],"has_more":false}"#,
        )],
    );
    let anthropic = body["credential"]["id"].as_str().unwrap().to_owned();
    // An unknown model is Anthropic's 404: the call failed, the key did not.
    let not_found =
        r#"{"type":"error","error":{"type":"not_found_error","message":"model: claude-typo"}}"#;
    let (r, _, _) = w.proxy(
        "POST",
        "/v1/proxy/anthropic/v1/messages",
        &[],
        vec![respond(404, not_found)],
    );
    assert_eq!(r.status, 404);
    let status = |id: &str| {
        let (_, c, _) = w.call(
            "GET",
            &format!("/v1/credentials/{id}"),
            Some("u_a"),
            None,
            vec![],
        );
        c["status"].as_str().unwrap().to_owned()
    };
    assert_eq!(status(&anthropic), "valid");

    // Google echoes a request's unknown field names in its message: that is no verdict.
    let (_, body, _) = w.call(
        "POST",
        "/v1/credentials",
        Some("u_a"),
        Some(json!({"provider":"gemini","api_key":KEY2})),
        vec![respond(200, r#"{"models":[{"name":"models/gemini-x","displayName":"Gemini X","supportedGenerationMethods":["generateContent"]}]}"#)],
    );
    let gemini = body["credential"]["id"].as_str().unwrap().to_owned();
    let echoed = r#"{"error":{"code":400,"message":"Invalid JSON payload received. Unknown name \"API key not valid\": Cannot find field.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"description":"Unknown name \"API_KEY_INVALID\""}]}]}}"#;
    let path = "/v1/proxy/gemini/v1beta/models/gemini-x:generateContent";
    let (r, _, _) = w.proxy("POST", path, &[], vec![respond(400, echoed)]);
    assert_eq!(r.status, 400);
    assert_eq!(status(&gemini), "valid");
    // Its structured reason is one.
    let invalid = r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#;
    let (r, _, _) = w.proxy("POST", path, &[], vec![respond(400, invalid)]);
    assert_eq!(r.status, 424);
    assert_eq!(status(&gemini), "invalid_key");
}

#[test]
fn only_allow_listed_headers_cross_the_proxy_either_way() {
    let w = world(&[("SYSTEM_KEY_OPENAI", SYSTEM)]);
    let (r, sent, _) = w.proxy(
        "POST",
        "/v1/proxy/openai/v1/chat/completions?stream=true&api_key=x&flag",
        &[
            ("openai-organization", "org-victim"),
            ("accept", "text/event-stream"),
            ("origin", "https://app.example"),
        ],
        vec![respond_with(
            200,
            &[
                ("content-type", "application/json"),
                ("openai-organization", "org-operator"),
                ("x-request-id", "req_upstream"),
                (
                    "strict-transport-security",
                    "max-age=31536000; includeSubDomains; preload",
                ),
                ("x-ratelimit-remaining-requests", "99"),
            ],
            "{}",
        )],
    );
    let (url, headers, _) = &sent[0];
    assert!(
        url.ends_with("/v1/chat/completions?stream=true&flag"),
        "{url}"
    );
    let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["content-type", "accept", "authorization"]);
    assert_eq!(r.header("openai-organization"), None);
    assert_eq!(r.header("strict-transport-security"), None);
    assert_eq!(
        r.header("x-ratelimit-remaining-requests"),
        None,
        "the operator's limits"
    );
    assert_eq!(r.header("x-upstream-request-id"), Some("req_upstream"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    // Anthropic's required version is supplied when a browser cannot send it.
    w.call(
        "POST",
        "/v1/credentials",
        Some("u_a"),
        Some(json!({"provider":"anthropic","api_key":KEY})),
        vec![respond(200, r#"{"data":[],"has_more":false}"#)],
    );
    let (_, sent, _) = w.proxy(
        "POST",
        "/v1/proxy/anthropic/v1/messages",
        &[],
        vec![respond(200, "{}")],
    );
    assert!(sent[0]
        .1
        .contains(&("anthropic-version".into(), "2023-06-01".into())));
}

#[test]
fn an_exact_credential_that_is_not_the_users_is_not_found_and_never_falls_back() {
    let w = world(&[("SYSTEM_KEY_ELEVENLABS", SYSTEM)]);
    w.added();
    let theirs = {
        let (_, body, _) = w.add_key("u_b", KEY2, valid());
        body["credential"]["id"].as_str().unwrap().to_owned()
    };
    let (s, body) = w.resolve(json!({"user_id":"u_a","capability":"tts","credential_id":theirs}));
    assert_eq!(
        (s, body["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    assert!(!body.to_string().contains(SYSTEM));
    let (r, sent, _) = w.proxy(
        "POST",
        "/v1/proxy/elevenlabs/v1/text-to-speech/voice123",
        &[("x-byok-credential-id", theirs.as_str())],
        vec![],
    );
    assert_eq!((r.status, sent.len()), (404, 0));
    let (r, _, _) = w.proxy(
        "POST",
        "/v1/proxy/elevenlabs/v1/text-to-speech/voice123",
        &[("x-byok-allow-fallback", "no")],
        vec![],
    );
    assert_eq!(r.status, 400);
}

#[test]
fn a_system_fallback_names_no_credential_in_its_event() {
    let w = world(&[("SYSTEM_KEY_ELEVENLABS", SYSTEM)]);
    let id = w.added();
    w.store.rows.borrow_mut()[0].status = crate::domain::CredentialStatus::InvalidKey;
    let (_, body) = w.resolve(json!({"user_id":"u_a","capability":"tts","credential_id":id}));
    assert_eq!(body["source"], "system", "{body}");
    let (_, trail, _) = w.call(
        "GET",
        "/v1/audit?action=credential.used",
        Some("u_a"),
        None,
        vec![],
    );
    let event = &trail["events"][0];
    assert!(event["credential_id"].is_null(), "{event}");
    assert_eq!(event["detail"]["requested_credential_id"], id.as_str());
}

#[test]
fn the_proxy_touches_no_body_before_the_caller_is_authenticated() {
    let w = world(&[("PROXY_MAX_BODY_BYTES", "2000000")]);
    w.added();
    let path = "/v1/proxy/elevenlabs/v1/speech-to-text";
    // A token shaped like a JWT but not one the vault issued, a service's, none at all.
    for auth in ["Bearer a.b.c", &format!("Bearer {RESOLVER}"), "Basic a.b.c"] {
        let (body, touched) = crate::testing::Watched::new(vec![b'x'; 1_500_000]);
        let (r, sent, _) = w.proxy_with(
            "POST",
            path,
            &[("authorization", auth), ("content-length", "1500000")],
            Box::new(body),
            vec![],
        );
        assert_eq!((r.status, sent.len()), (401, 0), "{auth}");
        assert!(!touched.get(), "{auth}: the body was touched");
    }
}

#[test]
fn the_proxy_forwards_the_body_unread_and_refuses_one_past_its_limit() {
    let w = world(&[("PROXY_MAX_BODY_BYTES", "2000000")]);
    w.added();
    let path = "/v1/proxy/elevenlabs/v1/speech-to-text";
    // Declared past the limit: refused before any of it is read, no provider asked.
    let (body, touched) = crate::testing::Watched::new(vec![]);
    let (r, sent, _) = w.proxy_with(
        "POST",
        path,
        &[("content-length", "2000001")],
        Box::new(body),
        vec![],
    );
    assert_eq!((r.status, sent.len()), (413, 0));
    assert!(!touched.get());
    // Within it: the bytes reach the provider as they were sent, held to the limit.
    let audio = vec![7u8; 1_900_000];
    let (r, _, bodies) = w.proxy_with(
        "POST",
        path,
        &[],
        Box::new(crate::testing::Bytes(audio.clone())),
        vec![respond(200, r#"{"text":"hi"}"#)],
    );
    assert_eq!(r.status, 200);
    assert!(bodies == vec![audio], "the body changed on its way");
    // Chunked past it: the forwarding stream cuts the call off, and the caller gets 413.
    let (r, _, _) = w.proxy_with(
        "POST",
        path,
        &[],
        Box::new(crate::testing::Bytes(vec![7u8; 2_000_001])),
        vec![],
    );
    assert_eq!(r.status, 413);
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["code"], "payload_too_large");
}

#[test]
fn a_proxy_refusal_never_touches_the_body() {
    let w = world(&[]);
    w.added();
    for path in [
        "/v1/proxy/elevenlabs/v1/user",
        "/v1/proxy/nope/v1/chat/completions",
    ] {
        let (body, touched) = crate::testing::Watched::new(b"{}".to_vec());
        let (r, sent, _) = w.proxy_with("POST", path, &[], Box::new(body), vec![]);
        assert!(matches!(r.status, 403 | 400 | 404), "{path}: {}", r.status);
        assert_eq!(sent.len(), 0);
        assert!(!touched.get(), "{path}: the body was touched");
    }
}

#[test]
fn a_system_key_that_needs_a_region_is_used_in_the_configured_one() {
    let w = world(&[
        ("SYSTEM_KEY_AZURE_SPEECH", SYSTEM),
        ("SYSTEM_KEY_AZURE_SPEECH_REGION", "westeurope"),
    ]);
    let (r, sent, _) = w.proxy(
        "POST",
        "/v1/proxy/azure_speech/cognitiveservices/v1",
        &[(
            "x-microsoft-outputformat",
            "audio-16khz-32kbitrate-mono-mp3",
        )],
        vec![respond(200, "RIFF")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        sent[0].0,
        "https://westeurope.tts.speech.microsoft.com/cognitiveservices/v1"
    );
    assert!(sent[0]
        .1
        .contains(&("Ocp-Apim-Subscription-Key".into(), SYSTEM.into())));
    let (s, body) =
        w.resolve(json!({"user_id":"u_a","capability":"tts","provider":"azure_speech"}));
    assert_eq!((s, &body["params"]["region"]), (200, &json!("westeurope")));

    let w = world(&[("SYSTEM_KEY_AZURE_SPEECH", SYSTEM)]);
    let (r, sent, _) = w.proxy(
        "POST",
        "/v1/proxy/azure_speech/cognitiveservices/v1",
        &[],
        vec![],
    );
    assert_eq!((r.status, sent.len()), (503, 0));
}

/// A world with the system key for ElevenLabs and a limiter that lets `limit` through per
/// scope and key.
fn limited_world(limit: u32) -> World {
    let mut w = world(&[("SYSTEM_KEY_ELEVENLABS", SYSTEM)]);
    w.limiter = crate::testing::CountingLimiter::new(limit);
    w
}

#[test]
fn the_system_key_is_refused_past_the_users_limit_before_any_provider_call() {
    let w = limited_world(3);
    let tts = "/v1/proxy/elevenlabs/v1/text-to-speech/voice123";
    for _ in 0..3 {
        let (r, sent, _) = w.proxy("POST", tts, &[], vec![respond(200, "ID3")]);
        assert_eq!((r.status, sent.len()), (200, 1));
        assert_eq!(r.header("x-byok-source"), Some("system"));
    }
    let (r, sent, _) = w.proxy("POST", tts, &[], vec![]);
    assert_eq!((r.status, sent.len()), (429, 0), "the provider was called");
    assert_eq!(r.header("retry-after"), Some("60"));
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(body["retry_after_seconds"], 60);
    // Resolve hands the system key out under the same count.
    let (s, body) = w.resolve(json!({"user_id":"u_a","capability":"tts","provider":"elevenlabs"}));
    assert_eq!((s, &body["code"]), (429, &json!("rate_limited")), "{body}");
    assert!(body.get("api_key").is_none());
    // Each refusal is on the user's trail as a failed use of the system key.
    let uses = w.uses();
    assert_eq!(
        uses[..2],
        [
            (
                "failure".into(),
                Some("rate_limited".into()),
                Some("system".into())
            ),
            (
                "failure".into(),
                Some("rate_limited".into()),
                Some("system".into())
            )
        ]
    );
    // Another user from elsewhere is not held back by it.
    let other = format!("Bearer {}", token("u_b"));
    *w.address.borrow_mut() = "198.51.100.9".into();
    let (r, _, _) = w.proxy_with(
        "POST",
        tts,
        &[
            ("authorization", &other),
            ("cf-connecting-ip", "198.51.100.9"),
        ],
        Box::new(crate::testing::Bytes(b"{}".to_vec())),
        vec![respond(200, "ID3")],
    );
    assert_eq!(r.status, 200);
}

#[test]
fn the_system_key_is_refused_past_the_addresss_limit_whoever_asks() {
    let w = limited_world(2);
    let tts = "/v1/proxy/elevenlabs/v1/text-to-speech/voice123";
    let mut statuses = Vec::new();
    for user in ["u_1", "u_2", "u_3"] {
        let auth = format!("Bearer {}", token(user));
        let (r, _, _) = w.proxy_with(
            "POST",
            tts,
            &[
                ("authorization", &auth),
                ("cf-connecting-ip", "203.0.113.50"),
            ],
            Box::new(crate::testing::Bytes(b"{}".to_vec())),
            vec![respond(200, "ID3")],
        );
        statuses.push(r.status);
    }
    assert_eq!(statuses, [200, 200, 429]);
    // The address was counted first: the refused caller spent nothing of its own count.
    let seen = w.limiter.seen.borrow();
    assert_eq!(
        seen.get(&("SystemKeyUser".to_owned(), "u_3".to_owned())),
        None
    );
}

#[test]
fn a_users_own_key_is_not_counted_against_the_system_key_limits() {
    let w = limited_world(1);
    w.added();
    let tts = "/v1/proxy/elevenlabs/v1/text-to-speech/voice123";
    for _ in 0..3 {
        let (r, _, _) = w.proxy("POST", tts, &[], vec![respond(200, "ID3")]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-byok-source"), Some("user"));
    }
}

#[test]
fn without_rate_limits_system_key_use_is_not_counted() {
    let mut w = world(&[
        ("SYSTEM_KEY_ELEVENLABS", SYSTEM),
        ("RATE_LIMITS", "off"),
        ("ENVIRONMENT", "development"),
    ]);
    w.limiter = crate::testing::CountingLimiter::new(0);
    let (r, _, _) = w.proxy(
        "POST",
        "/v1/proxy/elevenlabs/v1/text-to-speech/voice123",
        &[],
        vec![respond(200, "ID3")],
    );
    assert_eq!(r.status, 200);
    assert!(w.limiter.seen.borrow().is_empty());
}

/// A world where every provider whose SDK puts its key somewhere of its own has a system
/// key, so the proxy serves `u_a` without a credential.
fn sdk_world() -> World {
    world(&[
        ("SYSTEM_KEY_ELEVENLABS", SYSTEM),
        ("SYSTEM_KEY_GEMINI", SYSTEM),
        ("SYSTEM_KEY_DEEPGRAM", SYSTEM),
        ("SYSTEM_KEY_ANTHROPIC", SYSTEM),
        ("SYSTEM_KEY_AZURE_SPEECH", SYSTEM),
        ("SYSTEM_KEY_AZURE_SPEECH_REGION", "westeurope"),
    ])
}

#[test]
fn the_vault_token_is_taken_where_each_providers_sdk_puts_its_key() {
    let w = sdk_world();
    let jwt = token("u_a");
    let query_path = format!(
        "/v1/proxy/gemini/v1beta/models/gemini-2.0-flash:generateContent?alt=json&key={jwt}"
    );
    let cases: Vec<(String, String, &str, &str)> = vec![
        // (path, carrier header, its value's prefix, the provider's auth header)
        (
            "/v1/proxy/elevenlabs/v1/text-to-speech/voice123".into(),
            "xi-api-key".into(),
            "",
            "xi-api-key",
        ),
        (
            "/v1/proxy/gemini/v1beta/models/gemini-2.0-flash:generateContent".into(),
            "x-goog-api-key".into(),
            "",
            "x-goog-api-key",
        ),
        (
            "/v1/proxy/deepgram/v1/listen".into(),
            "authorization".into(),
            "Token ",
            "Authorization",
        ),
        (
            "/v1/proxy/anthropic/v1/messages".into(),
            "x-api-key".into(),
            "",
            "x-api-key",
        ),
        (
            "/v1/proxy/azure_speech/cognitiveservices/v1".into(),
            "Ocp-Apim-Subscription-Key".into(),
            "",
            "Ocp-Apim-Subscription-Key",
        ),
        (query_path, String::new(), "", "x-goog-api-key"),
    ];
    for (path, carrier, prefix, auth) in cases {
        let value = format!("{prefix}{jwt}");
        // No Bearer: only the SDK's own carrier holds the token (an Authorization that is
        // no token stands in for the helper's default Bearer).
        let mut headers = vec![];
        if !carrier.is_empty() {
            headers.push((carrier.as_str(), value.as_str()));
        }
        if carrier != "authorization" {
            headers.push(("authorization", "Basic none"));
        }
        let (r, sent, _) = w.proxy("POST", &path, &headers, vec![respond(200, "{}")]);
        assert_eq!((r.status, sent.len()), (200, 1), "{path} via {carrier}");
        let (url, sent_headers, _) = &sent[0];
        assert!(
            !url.contains(&jwt),
            "{path}: the token reached the provider's URL"
        );
        assert!(
            sent_headers.iter().all(|(_, v)| !v.contains(&jwt)),
            "{path}: the token reached the provider"
        );
        assert!(
            sent_headers
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case(auth) && v.contains(SYSTEM)),
            "{path}: the provider did not get the key in {auth}"
        );
    }
}

#[test]
fn a_provider_key_where_the_sdk_puts_its_key_is_401_and_reaches_no_provider() {
    let w = sdk_world();
    let pasted = "sk_0123456789abcdef0123456789abcdef0123456789abcdef";
    for (path, header, value) in [
        (
            "/v1/proxy/elevenlabs/v1/text-to-speech/voice123",
            "xi-api-key",
            pasted.to_owned(),
        ),
        (
            "/v1/proxy/deepgram/v1/listen",
            "authorization",
            format!("Token {pasted}"),
        ),
        (
            "/v1/proxy/gemini/v1beta/models/m:generateContent",
            "x-goog-api-key",
            pasted.to_owned(),
        ),
        // Another provider's carrier is no carrier here.
        (
            "/v1/proxy/anthropic/v1/messages",
            "xi-api-key",
            token("u_a"),
        ),
    ] {
        let (r, sent, _) = w.proxy_with(
            "POST",
            path,
            &[
                (header, &value),
                (
                    "authorization",
                    if header == "authorization" {
                        &value
                    } else {
                        "Basic x"
                    },
                ),
            ],
            Box::new(crate::testing::Bytes(b"{}".to_vec())),
            vec![],
        );
        assert_eq!((r.status, sent.len()), (401, 0), "{path} {header}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert!(
            !String::from_utf8_lossy(&r.body).contains(pasted),
            "the key was echoed"
        );
    }
    let logs = w.logs.borrow();
    assert!(
        logs.iter().all(|l| !l.contains(pasted)),
        "the key was logged"
    );
}

#[test]
fn answers_from_the_provider_say_so_and_the_vaults_own_refusals_do_not() {
    let w = world(&[("SYSTEM_KEY_ELEVENLABS", SYSTEM)]);
    let tts = "/v1/proxy/elevenlabs/v1/text-to-speech/voice123";
    let (ok, _, _) = w.proxy("POST", tts, &[], vec![respond(200, "ID3")]);
    assert_eq!(ok.header("x-byok-upstream-status"), Some("200"));
    // The provider's own 401 that does not mark the key (a permission it lacks) passes
    // through marked, so a client does not take it for its session expiring.
    let scope = r#"{"detail":{"status":"missing_permissions","message":"The API key you used is missing the permission text_to_speech."}}"#;
    let (denied, _, _) = w.proxy("POST", tts, &[], vec![respond(401, scope)]);
    assert_eq!(denied.status, 401);
    assert_eq!(denied.header("x-byok-upstream-status"), Some("401"));
    assert_eq!(denied.header("www-authenticate"), None);
    let limited = respond_with(
        429,
        &[("retry-after", "7")],
        r#"{"detail":{"status":"too_many_concurrent_requests"}}"#,
    );
    let (busy, _, _) = w.proxy("POST", tts, &[], vec![limited]);
    assert_eq!(busy.header("x-byok-upstream-status"), Some("429"));
    // The vault's own: problem+json, unmarked.
    for (path, status) in [
        ("/v1/proxy/elevenlabs/v1/user", 403),
        ("/v1/proxy/openai/v1/chat/completions", 404),
    ] {
        let (r, _, _) = w.proxy("POST", path, &[], vec![]);
        assert_eq!(r.status, status, "{path}");
        assert_eq!(r.header("x-byok-upstream-status"), None, "{path}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
    }
}

#[test]
fn every_429_the_vault_answers_itself_says_when_to_come_back() {
    use crate::api::problem::ApiError;
    for e in [
        ApiError::rate_limited(crate::limits::LimitScope::SystemKeyUser, 60),
        ApiError::not_checked(),
        ApiError::from_failure(
            crate::domain::ProviderId::new("openai"),
            crate::probe::Failure::RateLimited {
                retry_after_ms: 1500,
                message: "m".into(),
            },
        ),
    ] {
        let r = crate::api::Response::problem(&e);
        assert_eq!(r.status, 429);
        assert!(r.header("retry-after").is_some(), "{}", e.code);
    }
}
