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

/// The key an upstream request carried (ElevenLabs' `xi-api-key`).
fn key_sent(sent: &crate::testing::Sent) -> &str {
    sent.1
        .iter()
        .find(|(n, _)| n == "xi-api-key")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default()
}

impl World {
    /// `u_a` holds two ElevenLabs keys: KEY (older) and KEY2 (newer); their ids.
    fn two_keys(&self) -> (String, String) {
        let first = self.added();
        let (s, body, _) = self.add_key("u_a", KEY2, valid());
        assert_eq!(s, 201, "{body}");
        (first, body["credential"]["id"].as_str().unwrap().to_owned())
    }

    fn row(&self, id: &str) -> Credential {
        self.store
            .rows
            .borrow()
            .iter()
            .find(|c| c.id.as_str() == id)
            .unwrap()
            .clone()
    }
}

const TTS: &str = "/v1/proxy/elevenlabs/v1/text-to-speech/voice123";
/// The test body's length: a body framed by its length is kept for a failover.
const FRAMED: (&str, &str) = ("content-length", "16");

#[test]
fn a_rate_limited_key_gives_way_to_the_next_within_the_request_and_cools_down() {
    let w = world(&[]);
    let (older, newer) = w.two_keys();
    let limited = respond_with(
        429,
        &[("retry-after", "30")],
        r#"{"detail":{"status":"too_many_concurrent_requests"}}"#,
    );
    let (r, sent, bodies) = w.proxy("POST", TTS, &[FRAMED], vec![limited, respond(200, "ID3")]);
    assert_eq!(r.status, 200);
    // The newest key was tried first, refused, and the older one served.
    assert_eq!(sent.len(), 2);
    assert_eq!((key_sent(&sent[0]), key_sent(&sent[1])), (KEY2, KEY));
    // Both were sent the caller's whole body.
    assert_eq!(bodies, vec![br#"{"text":"Hello"}"#.to_vec(); 2]);
    assert_eq!(r.header("x-byok-credential-id"), Some(older.as_str()));
    assert_eq!(r.header("x-byok-attempts"), Some("2"));
    // One use per key tried.
    let uses = w.uses();
    assert_eq!(uses.len(), 2, "{uses:?}");
    assert_eq!(uses[0].0, "success");
    assert_eq!(
        (uses[1].0.as_str(), uses[1].1.as_deref()),
        ("failure", Some("provider_rate_limited"))
    );
    // The refused key cools down for its Retry-After, its status untouched.
    let cooled = w.row(&newer);
    let cooldown = cooled.cooldown.expect("a cooldown");
    assert_eq!(cooldown.reason, crate::domain::CooldownReason::RateLimited);
    // (The fake provider's answers took a moment of the fake clock since.)
    let left = w.clock.now().millis_until(cooldown.until);
    assert!((29_000..=30_000).contains(&left), "{left}");
    assert_eq!(cooled.status, crate::domain::CredentialStatus::Valid);

    // While it cools, the other key is tried first, and the next answer says which was
    // passed over.
    let (r, sent, _) = w.proxy("POST", TTS, &[FRAMED], vec![respond(200, "ID3")]);
    assert_eq!((r.status, key_sent(&sent[0])), (200, KEY));
    assert_eq!(r.header("x-byok-attempts"), Some("1"));
    assert_eq!(r.header("x-byok-skipped"), Some(newer.as_str()));
    // After its cooldown it is first again, without anyone touching it.
    w.clock.advance(31_000);
    let (_, sent, _) = w.proxy("POST", TTS, &[FRAMED], vec![respond(200, "ID3")]);
    assert_eq!(key_sent(&sent[0]), KEY2);
}

#[test]
fn a_bad_or_spent_key_gives_way_and_a_spent_one_cools_until_its_quota_resets() {
    let w = world(&[]);
    let (_, newer) = w.two_keys();
    let quota =
        r#"{"detail":{"status":"quota_exceeded","message":"This request exceeds your quota."}}"#;
    let (r, sent, _) = w.proxy(
        "POST",
        TTS,
        &[FRAMED],
        vec![respond(401, quota), respond(200, "ID3")],
    );
    assert_eq!((r.status, sent.len()), (200, 2));
    let spent = w.row(&newer);
    assert_eq!(
        spent.status,
        crate::domain::CredentialStatus::QuotaExhausted
    );
    let cooldown = spent.cooldown.expect("a cooldown");
    assert_eq!(
        cooldown.reason,
        crate::domain::CooldownReason::QuotaExhausted
    );
    assert!(w.clock.now().millis_until(cooldown.until) > 0);
    // A spent key is not tried while it cools.
    let (_, sent, _) = w.proxy("POST", TTS, &[FRAMED], vec![respond(200, "ID3")]);
    assert_eq!((sent.len(), key_sent(&sent[0])), (1, KEY));

    // A key the provider refuses as bad is marked and the next serves.
    let w = world(&[]);
    let (older, newer) = w.two_keys();
    let bad = r#"{"detail":{"status":"invalid_api_key","message":"Invalid API key"}}"#;
    let (r, _, _) = w.proxy(
        "POST",
        TTS,
        &[FRAMED],
        vec![respond(401, bad), respond(200, "ID3")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-byok-credential-id"), Some(older.as_str()));
    assert_eq!(
        w.row(&newer).status,
        crate::domain::CredentialStatus::InvalidKey
    );
}

#[test]
fn failover_stops_at_the_limit_and_a_streamed_body_gets_one_key() {
    let limited = || {
        respond_with(
            429,
            &[("retry-after", "5")],
            r#"{"detail":{"status":"too_many_concurrent_requests"}}"#,
        )
    };
    // PROXY_MAX_ATTEMPTS = 1: the refusal is the answer.
    let w = world(&[("PROXY_MAX_ATTEMPTS", "1")]);
    w.two_keys();
    let (r, sent, _) = w.proxy("POST", TTS, &[FRAMED], vec![limited()]);
    assert_eq!((r.status, sent.len()), (429, 1));
    assert_eq!(r.header("x-byok-attempts"), Some("1"));
    // A body of unknown length streams through: no failover.
    let w = world(&[]);
    w.two_keys();
    let (r, sent, _) = w.proxy("POST", TTS, &[], vec![limited()]);
    assert_eq!((r.status, sent.len()), (429, 1));
    // Every key refused: the last refusal is the answer, each use audited.
    let w = world(&[]);
    w.two_keys();
    let (r, sent, _) = w.proxy("POST", TTS, &[FRAMED], vec![limited(), limited()]);
    assert_eq!((r.status, sent.len()), (429, 2));
    assert_eq!(r.header("x-byok-attempts"), Some("2"));
    assert_eq!(w.uses().len(), 2);
}

#[test]
fn priority_orders_a_users_keys_and_the_default_comes_first() {
    let w = world(&[]);
    let (older, newer) = w.two_keys();
    // Newest first when nothing is set; a lower priority goes first.
    let (s, body) = w.patch(&older, json!({"priority": -1}), vec![]);
    assert_eq!((s, &body["priority"]), (200, &json!(-1)), "{body}");
    let (_, sent, _) = w.proxy("POST", TTS, &[], vec![respond(200, "ID3")]);
    assert_eq!(key_sent(&sent[0]), KEY);
    // The capability's default goes before any priority.
    let (s, body, _) = w.call(
        "PUT",
        "/v1/preferences/tts",
        Some("u_a"),
        Some(json!({"credential_id": newer})),
        vec![],
    );
    assert_eq!(s, 200, "{body}");
    let (_, sent, _) = w.proxy("POST", TTS, &[], vec![respond(200, "ID3")]);
    assert_eq!(key_sent(&sent[0]), KEY2);
    // A priority must be a whole number in range; nothing changes otherwise.
    for bad in [json!(1.5), json!("1"), json!(10_000_000)] {
        let (s, body) = w.patch(&older, json!({"priority": bad}), vec![]);
        assert_eq!(
            (s, &body["code"]),
            (400, &json!("invalid_request")),
            "{body}"
        );
    }
    assert_eq!(w.row(&older).priority, -1);
}

#[test]
fn resolve_never_hands_out_a_cooling_key_while_another_serves_and_says_which_it_skipped() {
    let w = world(&[]);
    let (older, newer) = w.two_keys();
    let limited = respond_with(
        429,
        &[("retry-after", "60")],
        r#"{"detail":{"status":"too_many_concurrent_requests"}}"#,
    );
    w.proxy("POST", TTS, &[FRAMED], vec![limited, respond(200, "ID3")]);
    let (s, body) = w.resolve(json!({"user_id":"u_a","capability":"tts"}));
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        (body["credential_id"].as_str(), body["api_key"].as_str()),
        (Some(older.as_str()), Some(KEY))
    );
    assert_eq!(body["skipped"][0]["credential_id"], newer.as_str());
    assert_eq!(body["skipped"][0]["reason"], "rate_limited");
    // Its cooldown over, nothing is skipped.
    w.clock.advance(61_000);
    let (_, body) = w.resolve(json!({"user_id":"u_a","capability":"tts"}));
    assert_eq!(body["skipped"], json!([]));
}

impl World {
    /// `u_a`'s usage rows: (provider, source, credential_id, requests, input, output,
    /// characters, audio_seconds, incomplete).
    fn metered(&self) -> Vec<Value> {
        let (s, body, _) = self.call("GET", "/v1/usage", Some("u_a"), None, vec![]);
        assert_eq!(s, 200, "{body}");
        body["usage"].as_array().unwrap().clone()
    }
}

#[test]
fn the_proxy_meters_each_call_as_its_answer_streams_past() {
    let w = world(&[("SYSTEM_KEY_OPENAI", SYSTEM)]);
    let id = w.added();
    // Speech: the characters asked for.
    let (r, _, _) = w.proxy("POST", TTS, &[FRAMED], vec![respond(200, "ID3")]);
    assert_eq!(r.status, 200);
    // Transcription: the seconds of audio the answer says.
    let stt = r#"{"language_code":"en","text":"hi there","words":[{"text":"hi","start":0.1,"end":0.5,"type":"word"},{"text":"there","start":0.6,"end":2.5,"type":"word"}]}"#;
    let (r, _, _) = w.proxy(
        "POST",
        "/v1/proxy/elevenlabs/v1/speech-to-text",
        &[],
        vec![respond_with(
            200,
            &[("content-type", "application/json")],
            stt,
        )],
    );
    assert_eq!(r.status, 200);
    // A streamed chat on the operator's key: the tokens of its usage chunk.
    let stream = concat!(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":7,\"total_tokens\":18}}\n\n",
        "data: [DONE]\n\n"
    );
    let (r, _, _) = w.proxy(
        "POST",
        "/v1/proxy/openai/v1/chat/completions",
        &[],
        vec![respond_with(
            200,
            &[("content-type", "text/event-stream")],
            stream,
        )],
    );
    assert_eq!(r.status, 200);
    let rows = w.metered();
    let find = |provider: &str, source: &str| {
        rows.iter()
            .find(|r| {
                r["provider"] == provider
                    && r["source"] == source
                    && r["requests"].as_u64() == Some(1)
                    && (provider != "elevenlabs" || r["characters"].as_u64().is_some())
            })
            .cloned()
    };
    let tts_or_stt: Vec<&Value> = rows
        .iter()
        .filter(|r| r["provider"] == "elevenlabs")
        .collect();
    assert_eq!(tts_or_stt.len(), 1, "{rows:?}");
    let el = tts_or_stt[0];
    assert_eq!(el["credential_id"], id.as_str());
    assert_eq!(el["requests"], 2);
    assert_eq!(el["characters"], 5);
    assert_eq!(el["audio_seconds"], 2.5);
    assert_eq!(el["incomplete"], 0);
    let chat = find("openai", "system").expect("the chat's row");
    assert_eq!(
        (
            chat["input_tokens"].as_u64(),
            chat["output_tokens"].as_u64()
        ),
        (Some(11), Some(7))
    );
    assert_eq!(chat["model"], "gpt-4o-mini");
    assert!(chat["credential_id"].is_null());
    assert_eq!(chat["incomplete"], 0);
}

#[test]
fn a_stream_whose_usage_never_arrives_is_recorded_incomplete_not_as_zero() {
    let w = world(&[("SYSTEM_KEY_OPENAI", SYSTEM)]);
    let cut = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n";
    w.proxy(
        "POST",
        "/v1/proxy/openai/v1/chat/completions",
        &[],
        vec![respond_with(
            200,
            &[("content-type", "text/event-stream")],
            cut,
        )],
    );
    let rows = w.metered();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0]["requests"].as_u64(), rows[0]["incomplete"].as_u64()),
        (Some(1), Some(1))
    );
}

/// A budget refusal's members: (status, code, budget.scope, budget.unit, Retry-After).
fn refusal(r: &Response) -> (u16, Value) {
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

#[test]
fn the_operators_budget_on_system_key_use_refuses_before_the_provider_and_says_until_when() {
    let w = world(&[
        ("SYSTEM_KEY_ELEVENLABS", SYSTEM),
        (
            "SYSTEM_KEY_BUDGETS",
            r#"{"*":{"period":"day","requests":1}}"#,
        ),
    ]);
    let (r, sent, _) = w.proxy("POST", TTS, &[FRAMED], vec![respond(200, "ID3")]);
    assert_eq!((r.status, sent.len()), (200, 1));
    let (r, sent, _) = w.proxy("POST", TTS, &[FRAMED], vec![]);
    let (status, body) = refusal(&r);
    assert_eq!((status, sent.len()), (429, 0), "{body}");
    assert_eq!(body["code"], "budget_exceeded");
    assert_eq!(body["budget"]["scope"], "system");
    assert_eq!(body["budget"]["unit"], "requests");
    assert_eq!(
        (
            body["budget"]["limit"].as_u64(),
            body["budget"]["used"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    assert_eq!(body["retry_after_seconds"].as_u64(), Some(retry));
    let resets =
        crate::domain::Timestamp::parse_rfc3339(body["budget"]["resets_at"].as_str().unwrap())
            .unwrap();
    assert_eq!(resets.as_millis() % 86_400_000, 0);
    // Resolve counts against the same budget.
    let (s, body) = w.resolve(json!({"user_id":"u_a","capability":"tts"}));
    assert_eq!(
        (s, body["code"].as_str()),
        (429, Some("budget_exceeded")),
        "{body}"
    );
    // Another user has a budget of their own.
    let (s, _) = w.resolve(json!({"user_id":"u_b","capability":"tts"}));
    assert_eq!(s, 200);
    // The next day it is whole again.
    w.clock.advance(86_400_000);
    let (s, body) = w.resolve(json!({"user_id":"u_a","capability":"tts"}));
    assert_eq!(s, 200, "{body}");
}

#[test]
fn a_users_cap_on_their_key_makes_it_give_way_and_then_refuses() {
    let w = world(&[]);
    let (older, newer) = w.two_keys();
    // 5 characters a day on the newer key (tried first): one "Hello" fits, the next does
    // not, and the older key takes over.
    let (s, body) = w.patch(
        &newer,
        json!({"budget": {"period":"day","characters":5}}),
        vec![],
    );
    assert_eq!(
        (s, &body["budget"]),
        (200, &json!({"period":"day","characters":5})),
        "{body}"
    );
    let (r, sent, _) = w.proxy("POST", TTS, &[FRAMED], vec![respond(200, "ID3")]);
    assert_eq!((r.status, key_sent(&sent[0])), (200, KEY2));
    // The key shows what this period has used of its budget.
    let (_, shown, _) = w.call(
        "GET",
        &format!("/v1/credentials/{newer}"),
        Some("u_a"),
        None,
        vec![],
    );
    assert_eq!(
        (
            shown["usage_this_period"]["characters"].as_u64(),
            shown["usage_this_period"]["requests"].as_u64()
        ),
        (Some(5), Some(1)),
        "{shown}"
    );
    let (_, listed, _) = w.call("GET", "/v1/credentials", Some("u_a"), None, vec![]);
    let other = listed["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == older.as_str())
        .unwrap()
        .clone();
    assert!(other["usage_this_period"].is_null());
    let (r, sent, _) = w.proxy("POST", TTS, &[FRAMED], vec![respond(200, "ID3")]);
    assert_eq!((r.status, sent.len(), key_sent(&sent[0])), (200, 1, KEY));
    assert_eq!(r.header("x-byok-credential-id"), Some(older.as_str()));
    // Both at their budget: budget_exceeded, never no_credential, and no provider call.
    let (s, _) = w.patch(
        &older,
        json!({"budget": {"period":"month","requests":1}}),
        vec![],
    );
    assert_eq!(s, 200);
    // (A budget counts from when it is set.)
    let (r, sent, _) = w.proxy("POST", TTS, &[FRAMED], vec![respond(200, "ID3")]);
    assert_eq!((r.status, key_sent(&sent[0])), (200, KEY));
    let (r, sent, _) = w.proxy("POST", TTS, &[FRAMED], vec![]);
    let (status, body) = refusal(&r);
    assert_eq!((status, sent.len()), (429, 0), "{body}");
    assert_eq!(
        (body["code"].as_str(), body["budget"]["scope"].as_str()),
        (Some("budget_exceeded"), Some("credential"))
    );
    // A bad budget changes nothing; null removes it.
    for bad in [
        json!({"period":"week","requests":1}),
        json!({"period":"day"}),
        json!(5),
    ] {
        let (s, body) = w.patch(&older, json!({"budget": bad}), vec![]);
        assert_eq!(
            (s, &body["code"]),
            (400, &json!("invalid_request")),
            "{body}"
        );
    }
    let (s, body) = w.patch(&older, json!({"budget": null}), vec![]);
    assert_eq!((s, &body["budget"]), (200, &Value::Null));
    let (r, _, _) = w.proxy("POST", TTS, &[FRAMED], vec![respond(200, "ID3")]);
    assert_eq!(r.status, 200);
}

#[test]
fn token_budgets_reserve_the_requests_max_tokens_and_settle_what_was_used() {
    let w = world(&[
        ("SYSTEM_KEY_OPENAI", SYSTEM),
        (
            "SYSTEM_KEY_BUDGETS",
            r#"{"openai":{"period":"month","output_tokens":100}}"#,
        ),
    ]);
    let chat = "/v1/proxy/openai/v1/chat/completions";
    let answer = r#"{"id":"c1","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":30,"total_tokens":35}}"#;
    let ask = |max: u32| {
        let body = format!(r#"{{"model":"gpt-4o-mini","max_tokens":{max},"messages":[]}}"#);
        let len = body.len().to_string();
        let (r, sent, _) = w.proxy_with(
            "POST",
            chat,
            &[("content-length", &len)],
            Box::new(crate::testing::Bytes(body.into_bytes())),
            vec![respond_with(
                200,
                &[("content-type", "application/json")],
                answer,
            )],
        );
        (r.status, sent.len())
    };
    // More than the whole budget: refused before the provider.
    assert_eq!(ask(200), (429, 0));
    // 60 reserved, 30 used: 70 left after it is settled.
    assert_eq!(ask(60), (200, 1));
    assert_eq!(ask(60), (200, 1));
    // 60 used now: a reservation of 60 no longer fits, one of 40 does.
    assert_eq!(ask(60), (429, 0));
    assert_eq!(ask(40), (200, 1));
}

#[test]
fn crossing_80_and_100_percent_tells_the_webhook_once_each() {
    let w = world(&[
        ("SYSTEM_KEY_ELEVENLABS", SYSTEM),
        (
            "SYSTEM_KEY_BUDGETS",
            r#"{"elevenlabs":{"period":"day","requests":5}}"#,
        ),
    ]);
    let told = || -> Vec<Value> {
        w.budgets
            .told
            .borrow()
            .iter()
            .map(|n| serde_json::from_str(&n.body).unwrap())
            .collect()
    };
    for _ in 0..3 {
        w.proxy("POST", TTS, &[FRAMED], vec![respond(200, "ID3")]);
    }
    assert!(told().is_empty());
    w.proxy("POST", TTS, &[FRAMED], vec![respond(200, "ID3")]);
    let notices = told();
    assert_eq!(notices.len(), 1);
    let n = &notices[0];
    assert_eq!(
        (n["type"].as_str(), n["percent"].as_u64()),
        (Some("usage.threshold"), Some(80))
    );
    assert_eq!(
        (
            n["scope"].as_str(),
            n["unit"].as_str(),
            n["limit"].as_u64(),
            n["used"].as_u64()
        ),
        (Some("system"), Some("requests"), Some(5), Some(4))
    );
    assert_eq!(
        (n["user_id"].as_str(), n["provider"].as_str()),
        (Some("u_a"), Some("elevenlabs"))
    );
    w.proxy("POST", TTS, &[FRAMED], vec![respond(200, "ID3")]);
    w.proxy("POST", TTS, &[FRAMED], vec![]);
    let notices = told();
    assert_eq!(
        notices
            .iter()
            .map(|n| n["percent"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [80, 100]
    );
    assert!(!notices.iter().any(|n| n.to_string().contains(SYSTEM)));
}

#[test]
fn operators_set_a_users_budgets_which_override_the_default_and_are_audited() {
    let w = world(&[
        ("SYSTEM_KEY_ELEVENLABS", SYSTEM),
        (
            "SYSTEM_KEY_BUDGETS",
            r#"{"*":{"period":"day","requests":1}}"#,
        ),
    ]);
    let (s, body) = w.admin("GET", "/v1/admin/budgets/u_a");
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["source"], "default");
    assert_eq!(body["budgets"], json!({"*":{"period":"day","requests":1}}));
    // u_a may make three calls a day on ElevenLabs' system key.
    let (s, body) = w.admin_with(
        "PUT",
        "/v1/admin/budgets/u_a",
        Some(json!({"elevenlabs":{"period":"day","requests":3}})),
        vec![],
    );
    assert_eq!((s, body["source"].as_str()), (200, Some("user")), "{body}");
    for _ in 0..3 {
        let (r, _, _) = w.proxy("POST", TTS, &[FRAMED], vec![respond(200, "ID3")]);
        assert_eq!(r.status, 200);
    }
    let (r, _, _) = w.proxy("POST", TTS, &[FRAMED], vec![]);
    assert_eq!(r.status, 429);
    let (_, body) = w.admin("GET", "/v1/admin/budgets/u_a");
    assert_eq!(body["this_period"]["elevenlabs"]["used"]["requests"], 3);
    // The change is on the user's own trail.
    let (_, trail, _) = w.call(
        "GET",
        "/v1/audit?action=budget.updated",
        Some("u_a"),
        None,
        vec![],
    );
    let events = trail["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{trail}");
    assert_eq!(events[0]["actor"]["type"], "service");
    // A malformed body changes nothing; DELETE goes back to the default.
    let (s, body) = w.admin_with(
        "PUT",
        "/v1/admin/budgets/u_a",
        Some(json!({"elevenlabs":{"period":"fortnight","requests":3}})),
        vec![],
    );
    assert_eq!(
        (s, body["code"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    let (_, body) = w.admin("GET", "/v1/admin/budgets/u_a");
    assert_eq!(body["source"], "user");
    let (s, body) = w.admin("DELETE", "/v1/admin/budgets/u_a");
    assert_eq!((s, body["source"].as_str()), (200, Some("default")));
    // Users may not.
    let (s, _, _) = w.call("GET", "/v1/admin/budgets/u_a", Some("u_a"), None, vec![]);
    assert_eq!(s, 401);
}

/// The bytes a streamed answer passed on.
fn streamed(mut r: Response) -> Vec<u8> {
    let body = r.stream.take().expect("a streamed answer");
    *body.0.downcast::<Vec<u8>>().expect("the fake's bytes")
}

#[test]
fn a_streamed_chat_is_asked_for_its_usage_which_the_caller_sees_only_if_they_asked() {
    let w = world(&[("SYSTEM_KEY_OPENAI", SYSTEM)]);
    let stream = concat!(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2,\"total_tokens\":6}}\n\n",
        "data: [DONE]\n\n"
    );
    let chat = |body: &str| {
        let len = body.len().to_string();
        w.proxy_with(
            "POST",
            "/v1/proxy/openai/v1/chat/completions",
            &[("content-length", &len)],
            Box::new(crate::testing::Bytes(body.as_bytes().to_vec())),
            vec![respond_with(
                200,
                &[("content-type", "text/event-stream")],
                stream,
            )],
        )
    };
    // Not asked by the caller: asked by the vault, and left out of the answer.
    let (r, _, bodies) = chat(r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#);
    let sent: Value = serde_json::from_slice(&bodies[0]).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let got = String::from_utf8(streamed(r)).unwrap();
    assert!(!got.contains("prompt_tokens"), "{got}");
    assert!(
        got.contains("\"Hi\"") && got.ends_with("data: [DONE]\n\n"),
        "{got}"
    );
    // Asked by the caller: passed on as it came.
    let (r, _, bodies) = chat(
        r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
    );
    assert_eq!(bodies[0], br#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#.to_vec());
    assert_eq!(streamed(r), stream.as_bytes());
    // Both metered.
    let rows = w.metered();
    assert_eq!(
        (
            rows[0]["requests"].as_u64(),
            rows[0]["input_tokens"].as_u64(),
            rows[0]["output_tokens"].as_u64()
        ),
        (Some(2), Some(8), Some(4)),
        "{rows:?}"
    );
}

#[test]
fn a_model_name_that_echoes_the_key_is_never_kept_and_a_user_id_is_read_percent_decoded() {
    let w = world(&[("SYSTEM_KEY_OPENAI", SYSTEM)]);
    let answer = format!(
        r#"{{"id":"c1","object":"chat.completion","model":"echo-{SYSTEM}","choices":[],"usage":{{"prompt_tokens":1,"completion_tokens":1}}}}"#
    );
    w.proxy(
        "POST",
        "/v1/proxy/openai/v1/chat/completions",
        &[],
        vec![respond_with(
            200,
            &[("content-type", "application/json")],
            &answer,
        )],
    );
    let rows = w.metered();
    assert_eq!(rows.len(), 1);
    assert!(!rows[0].to_string().contains(SYSTEM), "{rows:?}");
    assert_eq!(rows[0]["input_tokens"], 1);
    // An operator names a user as their id is written, percent-encoded in the path.
    let (s, body) = w.admin_with(
        "PUT",
        "/v1/admin/budgets/auth0%7Cabc%2Bx",
        Some(json!({"*":{"period":"day","requests":2}})),
        vec![],
    );
    assert_eq!(
        (s, body["user_id"].as_str()),
        (200, Some("auth0|abc+x")),
        "{body}"
    );
}

#[test]
fn a_cooldown_that_has_passed_shows_as_none() {
    let w = world(&[]);
    let (_, newer) = w.two_keys();
    let limited = respond_with(
        429,
        &[("retry-after", "5")],
        r#"{"detail":{"status":"too_many_concurrent_requests"}}"#,
    );
    w.proxy("POST", TTS, &[FRAMED], vec![limited, respond(200, "ID3")]);
    let shown = |w: &World| {
        let (_, c, _) = w.call(
            "GET",
            &format!("/v1/credentials/{newer}"),
            Some("u_a"),
            None,
            vec![],
        );
        (c["cooldown_reason"].clone(), c["cooldown_until"].is_null())
    };
    assert_eq!(shown(&w), (json!("rate_limited"), false));
    w.clock.advance(6_000);
    assert_eq!(shown(&w), (Value::Null, true));
}

#[test]
fn unmetered_the_proxy_passes_the_answer_on_untapped_keeps_no_usage_and_a_claim_its_reservation() {
    let w = world(&[
        ("METERING", "off"),
        ("ENVIRONMENT", "development"),
        ("SYSTEM_KEY_OPENAI", SYSTEM),
        (
            "SYSTEM_KEY_BUDGETS",
            r#"{"openai":{"period":"month","output_tokens":100}}"#,
        ),
    ]);
    let stream = concat!(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2,\"total_tokens\":6}}\n\n",
        "data: [DONE]\n\n"
    );
    let chat = |max: u32| {
        let body =
            format!(r#"{{"model":"gpt-4o-mini","stream":true,"max_tokens":{max},"messages":[]}}"#);
        let len = body.len().to_string();
        let (r, sent, bodies) = w.proxy_with(
            "POST",
            "/v1/proxy/openai/v1/chat/completions",
            &[("content-length", &len)],
            Box::new(crate::testing::Bytes(body.clone().into_bytes())),
            vec![respond_with(
                200,
                &[("content-type", "text/event-stream")],
                stream,
            )],
        );
        (r, sent.len(), bodies, body)
    };
    // The body goes as it came (no usage asked for), the answer comes back as it was sent.
    let (r, calls, bodies, body) = chat(60);
    assert_eq!((r.status, calls), (200, 1));
    assert_eq!(bodies[0], body.into_bytes());
    assert_eq!(streamed(r), stream.as_bytes());
    // No usage row.
    assert_eq!(w.metered(), Vec::<Value>::new());
    // The 60 reserved stay claimed (metered, 2 were used and 98 would be left): a second
    // reservation of 60 no longer fits, one of 40 does.
    assert_eq!(chat(60).0.status, 429);
    let (r, calls, _, _) = chat(40);
    assert_eq!((r.status, calls), (200, 1));
}
