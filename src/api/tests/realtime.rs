//! `POST /v1/realtime/{provider}/sessions`: each provider's minting call and answer, the
//! lifetime rule, refusals before any provider call, and a refused key judged as on the
//! proxy.

use super::*;

const SYSTEM: &str = "sk_system_0000111122223333444455556666";
const NOW_S: u64 = NOW_MS / 1000;

fn world(extra: &[(&str, &str)]) -> World {
    World::with_services(extra)
}

/// A system key for each of the five providers (Azure's in westeurope).
fn systems() -> Vec<(&'static str, &'static str)> {
    vec![
        ("SYSTEM_KEY_OPENAI", SYSTEM),
        ("SYSTEM_KEY_ELEVENLABS", SYSTEM),
        ("SYSTEM_KEY_DEEPGRAM", SYSTEM),
        ("SYSTEM_KEY_AZURE_SPEECH", SYSTEM),
        ("SYSTEM_KEY_AZURE_SPEECH_REGION", "westeurope"),
        ("SYSTEM_KEY_GEMINI", SYSTEM),
    ]
}

struct Minted {
    status: u16,
    body: Value,
    /// What the providers were sent: (url, headers), and the bodies.
    sent: Vec<crate::testing::Sent>,
    bodies: Vec<Value>,
}

impl World {
    /// `u_a` asks `provider` for a session with `body`; `script` answers.
    fn mint(&self, provider: &str, body: Value, script: Vec<Scripted>) -> Minted {
        let http = FakeHttp::new(&self.clock, script);
        let log = |line: &str| {
            assert!(
                !line.contains(KEY) && !line.contains(SYSTEM) && !line.contains("MINTED"),
                "secret in log: {line}"
            );
            self.logs.borrow_mut().push(line.to_owned());
        };
        let app = self.app(&http, &log);
        let request = Request::new(
            "POST",
            Url::parse(&format!(
                "https://vault.test/v1/realtime/{provider}/sessions"
            ))
            .unwrap(),
            vec![
                ("content-type".into(), "application/json".into()),
                ("authorization".into(), format!("Bearer {}", token("u_a"))),
            ],
            Box::new(crate::testing::Bytes(body.to_string().into_bytes())),
        );
        let response = block_on(handle_all(&app, &request));
        let text = String::from_utf8(response.body.clone()).unwrap();
        assert!(
            !text.contains(KEY) && !text.contains(SYSTEM),
            "key in answer: {text}"
        );
        let sent = http.sent.borrow().clone();
        let bodies = http
            .sent_bodies
            .borrow()
            .iter()
            .map(|b| serde_json::from_slice(b).unwrap_or(Value::Null))
            .collect();
        Minted {
            status: response.status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            sent,
            bodies,
        }
    }

    /// `u_a`'s `credential.used` events, newest first.
    fn used(&self) -> Vec<Value> {
        let (_, body, _) = self.call(
            "GET",
            "/v1/audit?action=credential.used",
            Some("u_a"),
            None,
            vec![],
        );
        body["events"].as_array().unwrap().clone()
    }
}

fn header<'s>(sent: &'s crate::testing::Sent, name: &str) -> Option<&'s str> {
    sent.1
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn rfc3339(unix: u64) -> String {
    crate::domain::Timestamp::from_unix_seconds(unix).to_rfc3339()
}

#[test]
fn openai_mints_a_client_secret_for_a_conversation_or_a_transcription() {
    let w = world(&systems());
    let m = w.mint(
        "openai",
        json!({"kind":"conversation","model":"gpt-realtime","ttl_seconds":120}),
        vec![respond(
            200,
            &format!(
                r#"{{"value":"ek_MINTED1","expires_at":{},"session":{{"type":"realtime"}}}}"#,
                NOW_S + 120
            ),
        )],
    );
    assert_eq!(m.status, 201, "{}", m.body);
    assert!(m.sent[0].0.ends_with("/v1/realtime/client_secrets"));
    assert_eq!(
        header(&m.sent[0], "authorization"),
        Some(format!("Bearer {SYSTEM}").as_str())
    );
    assert_eq!(
        m.bodies[0],
        json!({"expires_after":{"anchor":"created_at","seconds":120},
               "session":{"type":"realtime","model":"gpt-realtime"}})
    );
    assert_eq!(
        (
            &m.body["provider"],
            &m.body["kind"],
            &m.body["token"],
            &m.body["source"]
        ),
        (
            &json!("openai"),
            &json!("conversation"),
            &json!("ek_MINTED1"),
            &json!("system")
        )
    );
    assert_eq!(m.body["expires_at"], rfc3339(NOW_S + 120));
    assert_eq!(m.body["fallback_reason"], "no_user_credential");
    assert!(m.body["credential_id"].is_null());
    assert_eq!(
        m.body["connect"],
        json!({"url":"wss://api.openai.com/v1/realtime?model=gpt-realtime",
               "protocols":["realtime","openai-insecure-api-key.ek_MINTED1"]})
    );
    // A transcription session names its model where OpenAI takes it.
    let m = w.mint(
        "openai",
        json!({"kind":"stt","model":"gpt-4o-transcribe"}),
        vec![respond(
            200,
            r#"{"value":"ek_MINTED2","expires_at":1800000600}"#,
        )],
    );
    assert_eq!(m.status, 201, "{}", m.body);
    assert_eq!(
        m.bodies[0]["session"],
        json!({"type":"transcription","audio":{"input":{"transcription":{"model":"gpt-4o-transcribe"}}}})
    );
    assert_eq!(m.body["connect"]["url"], "wss://api.openai.com/v1/realtime");
}

#[test]
fn elevenlabs_mints_a_single_use_token_for_scribe_or_the_tts_websocket() {
    let w = world(&systems());
    let m = w.mint(
        "elevenlabs",
        json!({"kind":"stt"}),
        vec![respond(200, r#"{"token":"MINTED_scribe"}"#)],
    );
    assert_eq!(m.status, 201, "{}", m.body);
    assert!(m.sent[0]
        .0
        .ends_with("/v1/single-use-token/realtime_scribe"));
    assert_eq!(header(&m.sent[0], "xi-api-key"), Some(SYSTEM));
    // Fifteen minutes, whatever was asked: ElevenLabs fixes it.
    assert_eq!(m.body["expires_at"], rfc3339(NOW_S + 900));
    assert_eq!(
        m.body["connect"],
        json!({"url":"wss://api.elevenlabs.io/v1/speech-to-text/realtime?model_id=scribe_v2_realtime&token=MINTED_scribe",
               "query_parameter":"token"})
    );
    let m = w.mint(
        "elevenlabs",
        json!({"kind":"tts","voice_id":"JBFqnCBsd6RMkjVDRZzb","model":"eleven_flash_v2_5"}),
        vec![respond(200, r#"{"token":"MINTED_tts"}"#)],
    );
    assert_eq!(m.status, 201, "{}", m.body);
    assert!(m.sent[0].0.ends_with("/v1/single-use-token/tts_websocket"));
    assert_eq!(
        m.body["connect"]["url"],
        "wss://api.elevenlabs.io/v1/text-to-speech/JBFqnCBsd6RMkjVDRZzb/stream-input?model_id=eleven_flash_v2_5&single_use_token=MINTED_tts"
    );
}

#[test]
fn deepgram_mints_a_grant_for_listen_or_speak() {
    let w = world(&systems());
    let m = w.mint(
        "deepgram",
        json!({"kind":"tts","model":"aura-2-thalia-en","ttl_seconds":60}),
        vec![respond(
            200,
            r#"{"access_token":"eyJ.MINTED.dg","expires_in":60}"#,
        )],
    );
    assert_eq!(m.status, 201, "{}", m.body);
    assert!(m.sent[0].0.ends_with("/v1/auth/grant"));
    assert_eq!(
        header(&m.sent[0], "authorization"),
        Some(format!("Token {SYSTEM}").as_str())
    );
    assert_eq!(m.bodies[0], json!({"ttl_seconds":60}));
    assert_eq!(m.body["expires_at"], rfc3339(NOW_S + 60));
    assert_eq!(
        m.body["connect"],
        json!({"url":"wss://api.deepgram.com/v1/speak?model=aura-2-thalia-en",
               "protocols":["bearer","eyJ.MINTED.dg"]})
    );
}

#[test]
fn azure_issues_a_token_in_the_keys_region() {
    let w = world(&systems());
    let m = w.mint(
        "azure_speech",
        json!({"kind":"stt"}),
        vec![respond(200, "eyJhbGciOi.MINTEDaz.c2ln")],
    );
    assert_eq!(m.status, 201, "{}", m.body);
    assert_eq!(
        m.sent[0].0,
        "https://westeurope.api.cognitive.microsoft.com/sts/v1.0/issueToken"
    );
    assert_eq!(
        header(&m.sent[0], "ocp-apim-subscription-key"),
        Some(SYSTEM)
    );
    assert_eq!(m.body["token"], "eyJhbGciOi.MINTEDaz.c2ln");
    assert_eq!(m.body["expires_at"], rfc3339(NOW_S + 600));
    assert_eq!(
        m.body["connect"],
        json!({"url":"wss://westeurope.stt.speech.microsoft.com/speech/recognition/conversation/cognitiveservices/v1",
               "region":"westeurope"})
    );
}

#[test]
fn gemini_mints_a_one_use_token_with_the_model_locked() {
    let w = world(&systems());
    let m = w.mint(
        "gemini",
        json!({"kind":"conversation","model":"gemini-live-2.5-flash-preview","ttl_seconds":300}),
        vec![respond(200, r#"{"name":"auth_tokens/MINTEDgem"}"#)],
    );
    assert_eq!(m.status, 201, "{}", m.body);
    assert!(m.sent[0].0.ends_with("/v1alpha/auth_tokens"));
    assert_eq!(header(&m.sent[0], "x-goog-api-key"), Some(SYSTEM));
    let until = rfc3339(NOW_S + 300);
    assert_eq!(
        m.bodies[0],
        json!({"uses":1,"expireTime":until,"newSessionExpireTime":until,
               "bidiGenerateContentSetup":{"model":"models/gemini-live-2.5-flash-preview"}})
    );
    assert_eq!(m.body["expires_at"], until);
    assert_eq!(
        m.body["connect"],
        json!({"url":"wss://generativelanguage.googleapis.com/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained?access_token=auth_tokens%2FMINTEDgem",
               "query_parameter":"access_token"})
    );
}

#[test]
fn the_lifetime_is_capped_by_the_setting_and_the_providers_limit() {
    let grant = || {
        vec![respond(
            200,
            r#"{"access_token":"a.MINTED.b","expires_in":1}"#,
        )]
    };
    let secret = || vec![respond(200, r#"{"value":"ek_MINTED"}"#)];
    let w = world(&systems());
    // Unasked: the setting's default (600); asked for more: still 600.
    let m = w.mint("deepgram", json!({"kind":"stt"}), grant());
    assert_eq!(m.bodies[0]["ttl_seconds"], 600);
    let m = w.mint(
        "deepgram",
        json!({"kind":"stt","ttl_seconds":5000}),
        grant(),
    );
    assert_eq!(m.bodies[0]["ttl_seconds"], 600);
    // Under OpenAI's shortest: its shortest.
    let m = w.mint("openai", json!({"kind":"stt","ttl_seconds":3}), secret());
    assert_eq!(m.bodies[0]["expires_after"]["seconds"], 10);
    // Without the provider's expiry in the answer, the one asked for.
    assert_eq!(m.body["expires_at"], rfc3339(NOW_S + 10), "{}", m.body);
    let mut vars = systems();
    vars.push(("REALTIME_TOKEN_MAX_SECONDS", "7200"));
    let w = world(&vars);
    let m = w.mint(
        "deepgram",
        json!({"kind":"stt","ttl_seconds":5000}),
        grant(),
    );
    assert_eq!(m.bodies[0]["ttl_seconds"], 3600, "Deepgram's own limit");
    let m = w.mint("openai", json!({"kind":"stt","ttl_seconds":9000}), secret());
    assert_eq!(m.bodies[0]["expires_after"]["seconds"], 7200);
    // A setting past what any provider grants is a configuration problem.
    assert!(Config::parse(|k| (k == "REALTIME_TOKEN_MAX_SECONDS").then(|| "9000".into())).is_err());
}

#[test]
fn bad_asks_are_refused_field_by_field_before_any_provider_call() {
    let w = world(&systems());
    for (provider, body, field) in [
        ("openai", json!({"kind":"tts"}), "kind"),
        ("gemini", json!({"kind":"stt"}), "kind"),
        ("deepgram", json!({"kind":"conversation"}), "kind"),
        ("openai", json!({}), "kind"),
        ("elevenlabs", json!({"kind":"tts"}), "voice_id"),
        (
            "elevenlabs",
            json!({"kind":"tts","voice_id":"../v1/user"}),
            "voice_id",
        ),
        ("openai", json!({"kind":"stt","model":"a/../b"}), "model"),
        (
            "openai",
            json!({"kind":"stt","ttl_seconds":0}),
            "ttl_seconds",
        ),
        (
            "openai",
            json!({"kind":"stt","credential_id":"nope"}),
            "credential_id",
        ),
        ("openai", json!({"kind":"stt","extra":1}), "extra"),
        ("anthropic", json!({"kind":"conversation"}), "provider"),
    ] {
        let m = w.mint(provider, body.clone(), vec![]);
        assert_eq!(
            (m.status, m.body["code"].as_str()),
            (400, Some("invalid_request")),
            "{provider} {body}: {}",
            m.body
        );
        assert!(
            m.body["errors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["field"] == field),
            "{provider} {body}: {}",
            m.body
        );
        assert!(m.sent.is_empty());
    }
    let m = w.mint("nope", json!({"kind":"stt"}), vec![]);
    assert_eq!(
        (m.status, m.body["code"].as_str(), m.sent.len()),
        (400, Some("unknown_provider"), 0)
    );
    assert!(w.used().is_empty(), "nothing was used");
}

#[test]
fn without_a_key_or_with_the_system_key_refused_by_the_caller_it_is_no_credential() {
    let w = world(&[]);
    let m = w.mint("deepgram", json!({"kind":"stt"}), vec![]);
    assert_eq!(
        (m.status, m.body["code"].as_str(), m.sent.len()),
        (404, Some("no_credential"), 0),
        "{}",
        m.body
    );
    let w = world(&systems());
    let m = w.mint(
        "deepgram",
        json!({"kind":"stt","allow_fallback":false}),
        vec![],
    );
    assert_eq!(
        (m.status, m.body["code"].as_str(), m.sent.len()),
        (404, Some("no_credential"), 0),
        "{}",
        m.body
    );
}

#[test]
fn minting_counts_against_the_budget_and_is_refused_past_it_before_the_provider() {
    let mut vars = systems();
    vars.push((
        "SYSTEM_KEY_BUDGETS",
        r#"{"*":{"period":"day","requests":1}}"#,
    ));
    let w = world(&vars);
    let grant = || {
        vec![respond(
            200,
            r#"{"access_token":"a.MINTED.b","expires_in":1}"#,
        )]
    };
    assert_eq!(
        w.mint("deepgram", json!({"kind":"stt"}), grant()).status,
        201
    );
    let m = w.mint("deepgram", json!({"kind":"stt"}), vec![]);
    assert_eq!(
        (m.status, m.body["code"].as_str(), m.sent.len()),
        (429, Some("budget_exceeded"), 0),
        "{}",
        m.body
    );
    assert_eq!(m.body["budget"]["scope"], "system");
}

#[test]
fn the_system_key_is_refused_past_the_users_limit_before_any_provider_call() {
    let mut w = world(&systems());
    w.limiter = CountingLimiter::new(1);
    let grant = || {
        vec![respond(
            200,
            r#"{"access_token":"a.MINTED.b","expires_in":1}"#,
        )]
    };
    assert_eq!(
        w.mint("deepgram", json!({"kind":"stt"}), grant()).status,
        201
    );
    let m = w.mint("deepgram", json!({"kind":"stt"}), vec![]);
    assert_eq!(
        (m.status, m.body["code"].as_str(), m.sent.len()),
        (429, Some("rate_limited"), 0),
        "{}",
        m.body
    );
}

#[test]
fn the_users_key_mints_and_the_use_is_audited_without_the_credential() {
    let w = world(&systems());
    let id = w.added();
    let m = w.mint(
        "elevenlabs",
        json!({"kind":"stt"}),
        vec![respond(200, r#"{"token":"MINTED_user"}"#)],
    );
    assert_eq!(m.status, 201, "{}", m.body);
    assert_eq!(header(&m.sent[0], "xi-api-key"), Some(KEY));
    assert_eq!(
        (
            &m.body["source"],
            &m.body["credential_id"],
            &m.body["fallback_reason"]
        ),
        (&json!("user"), &json!(id), &Value::Null)
    );
    let used = w.used();
    assert_eq!(used.len(), 1);
    let event = &used[0];
    assert_eq!(
        (&event["outcome"], &event["source"], &event["credential_id"]),
        (&json!("success"), &json!("user"), &json!(id))
    );
    assert_eq!(event["detail"]["operation"], "realtime_token");
    assert_eq!(event["detail"]["kind"], "stt");
    assert_eq!(event["detail"]["status"], 200);
    let trail = w
        .call("GET", "/v1/audit?limit=200", Some("u_a"), None, vec![])
        .1;
    assert!(!trail.to_string().contains("MINTED"), "{trail}");
    assert!(!w.logs.borrow().iter().any(|l| l.contains("MINTED")));
}

#[test]
fn a_key_refused_while_minting_is_marked_invalid_and_the_caller_told() {
    let w = world(&[]);
    let id = w.added();
    let m = w.mint(
        "elevenlabs",
        json!({"kind":"stt"}),
        vec![respond(401, INVALID)],
    );
    assert_eq!(
        (
            m.status,
            m.body["code"].as_str(),
            m.body["credential_id"].as_str()
        ),
        (424, Some("credential_invalid"), Some(id.as_str())),
        "{}",
        m.body
    );
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
    assert_eq!(w.used()[0]["reason"], "credential_invalid");
    // Marked, it serves no more: the next minting reaches no provider.
    let m = w.mint("elevenlabs", json!({"kind":"stt"}), vec![]);
    assert_eq!((m.status, m.sent.len()), (404, 0), "{}", m.body);
}

#[test]
fn a_provider_error_that_quotes_the_key_is_withheld_and_too_few_permissions_marks_nothing() {
    let w = world(&systems());
    let echo =
        format!(r#"{{"err_code":"FORBIDDEN","err_msg":"Insufficient permissions for {SYSTEM}."}}"#);
    let m = w.mint("deepgram", json!({"kind":"stt"}), vec![respond(403, &echo)]);
    assert_eq!(
        (m.status, m.body["code"].as_str()),
        (422, Some("insufficient_scope")),
        "{}",
        m.body
    );
    // (The answer is checked for the key by `mint`.)
    // A 2xx whose "token" is the key itself is no credential.
    let m = w.mint(
        "elevenlabs",
        json!({"kind":"stt"}),
        vec![respond(200, &format!(r#"{{"token":"{SYSTEM}"}}"#))],
    );
    assert_eq!(
        (m.status, m.body["code"].as_str()),
        (502, Some("provider_error")),
        "{}",
        m.body
    );
}

#[test]
fn the_vault_token_is_taken_where_the_providers_sdk_puts_its_key() {
    let w = world(&systems());
    let http = FakeHttp::new(&w.clock, vec![respond(200, r#"{"token":"MINTED_sdk"}"#)]);
    let log = |_: &str| {};
    let app = w.app(&http, &log);
    let request = Request::new(
        "POST",
        Url::parse("https://vault.test/v1/realtime/elevenlabs/sessions").unwrap(),
        vec![
            ("content-type".into(), "application/json".into()),
            ("xi-api-key".into(), token("u_a")),
        ],
        Box::new(crate::testing::Bytes(br#"{"kind":"stt"}"#.to_vec())),
    );
    let response = block_on(handle_all(&app, &request));
    assert_eq!(response.status, 201);
}

/// A WebSocket upgrade as the core answered it: the socket to pipe and the uses to record
/// when it ends, or the refusal (already recorded).
struct Upgraded {
    status: u16,
    body: Value,
    sent: Vec<crate::testing::Sent>,
    session: Option<(crate::api::realtime::Upgrade, Vec<crate::audit::AuditEvent>)>,
}

impl World {
    /// `u_a`'s (or nobody's) WebSocket upgrade to `path` with `headers`; `script` answers
    /// the provider's upgrade (101: open).
    fn upgrade(
        &self,
        path: &str,
        headers: Vec<(String, String)>,
        script: Vec<Scripted>,
    ) -> Upgraded {
        let http = FakeHttp::new(&self.clock, script);
        let log = |line: &str| {
            assert!(
                !line.contains(SYSTEM) && !line.contains(KEY),
                "secret in log: {line}"
            );
            self.logs.borrow_mut().push(line.to_owned());
        };
        let app = self.app(&http, &log);
        let mut all = vec![("upgrade".to_owned(), "websocket".to_owned())];
        all.extend(headers);
        let request = Request::new(
            "GET",
            Url::parse(&format!("https://vault.test{path}")).unwrap(),
            all,
            Box::new(crate::testing::Bytes(Vec::new())),
        );
        let mut handled = block_on(handle(&app, &request));
        let session = match handled.response.upgrade.take() {
            Some(up) => Some((*up, std::mem::take(&mut handled.uses))),
            None => {
                block_on(finish(&app, handled.uses, handled.metering));
                None
            }
        };
        let body = serde_json::from_slice(&handled.response.body).unwrap_or(Value::Null);
        let sent = http.sent.borrow().clone();
        Upgraded {
            status: handled.response.status,
            body,
            sent,
            session,
        }
    }

    /// Ends a session the Worker piped, after `feed` showed its tally the frames.
    fn end_session(
        &self,
        upgraded: Upgraded,
        feed: impl FnOnce(&mut crate::realtime::socket::Tally),
        closed_by: &'static str,
        code: u16,
    ) {
        let (up, uses) = upgraded.session.expect("an open session");
        let http = FakeHttp::new(&self.clock, vec![]);
        let log = |line: &str| {
            assert!(
                !line.contains(SYSTEM) && !line.contains(KEY),
                "secret in log: {line}"
            );
            self.logs.borrow_mut().push(line.to_owned());
        };
        let app = self.app(&http, &log);
        let mut session = up.session;
        feed(&mut session.tally);
        let end = crate::api::realtime::End {
            duration_ms: 1500,
            closed_by,
            code,
        };
        block_on(crate::api::realtime::ended(&app, uses, session, end));
    }
}

fn offered(t: &str) -> Vec<(String, String)> {
    vec![(
        "sec-websocket-protocol".to_owned(),
        format!("byok-vault, byok-vault.token.{t}"),
    )]
}

fn open() -> Vec<Scripted> {
    vec![respond(101, "")]
}

#[test]
fn the_websocket_route_takes_the_token_as_a_subprotocol_and_refuses_before_any_provider_socket() {
    let w = world(&[]);
    let listen = "/v1/realtime/deepgram/ws/v1/listen";
    // No token: 401 (closed 4401 by the Worker).
    let u = w.upgrade(
        listen,
        vec![("sec-websocket-protocol".into(), "byok-vault".into())],
        vec![],
    );
    assert_eq!(
        (u.status, u.body["code"].as_str()),
        (401, Some("unauthorized")),
        "{}",
        u.body
    );
    // The subprotocol's token authenticates; no key of any kind: no credential.
    let u = w.upgrade(listen, offered(&token("u_a")), vec![]);
    assert_eq!(
        (u.status, u.body["code"].as_str()),
        (404, Some("no_credential")),
        "{}",
        u.body
    );
    // A path that is not allow-listed, and a voice id that is not one.
    for path in [
        "/v1/realtime/deepgram/ws/v1/projects",
        "/v1/realtime/elevenlabs/ws/v1/text-to-speech/a%2Fb/stream-input",
        "/v1/realtime/elevenlabs/ws/v1/text-to-speech/../stream-input",
        "/v1/realtime/azure_speech/ws/v1/listen",
    ] {
        let u = w.upgrade(path, offered(&token("u_a")), vec![]);
        assert_eq!(
            (u.status, u.body["code"].as_str()),
            (400, Some("invalid_request")),
            "{path}: {}",
            u.body
        );
    }
    assert_eq!(crate::api::realtime::close_code(404, "no_credential"), 4404);
    assert_eq!(crate::api::realtime::close_code(401, "unauthorized"), 4401);
    assert_eq!(
        crate::api::realtime::close_code(429, "budget_exceeded"),
        4429
    );
    assert_eq!(crate::api::realtime::close_code(403, "forbidden"), 4403);
    assert_eq!(
        crate::api::realtime::close_code(502, "provider_error"),
        1011
    );
    assert_eq!(
        crate::api::realtime::subprotocol_token(Some("byok-vault, byok-vault.token.abc")),
        Some("abc")
    );
    assert_eq!(
        crate::api::realtime::subprotocol_token(Some("byok-vault")),
        None
    );
}

#[test]
fn the_users_key_opens_the_providers_socket_in_its_header_and_the_session_is_recorded() {
    let w = world(&[]);
    let id = w.added();
    let path = "/v1/realtime/elevenlabs/ws/v1/text-to-speech/JBFqnCBsd6RMkjVDRZzb/stream-input?model_id=eleven_flash_v2_5&credential_id=";
    let u = w.upgrade(&format!("{path}{id}"), offered(&token("u_a")), open());
    assert_eq!(u.status, 101, "{}", u.body);
    let (url, headers, _) = &u.sent[0];
    assert_eq!(
        url,
        "https://api.elevenlabs.io/v1/text-to-speech/JBFqnCBsd6RMkjVDRZzb/stream-input?model_id=eleven_flash_v2_5"
    );
    let sent = (u.sent[0].0.clone(), u.sent[0].1.clone(), 0);
    assert_eq!(header(&sent, "xi-api-key"), Some(KEY));
    assert!(
        !headers.iter().any(|(_, v)| v.contains("byok-vault")),
        "the vault token went upstream"
    );
    assert_eq!(u.session.as_ref().unwrap().0.protocol, Some("byok-vault"));
    // Nothing is recorded until the session ends.
    assert!(w.used().is_empty());
    w.end_session(
        u,
        |t| {
            t.up_text(r#"{"text":" ","voice_settings":{"stability":0.5}}"#);
            t.up_text(r#"{"text":"Hello there. "}"#);
            t.down_binary(4096);
            t.down_text(r#"{"audio":"AAAA","isFinal":null}"#);
            t.up_text(r#"{"text":""}"#);
        },
        "provider",
        1000,
    );
    let used = w.used();
    assert_eq!(used.len(), 1, "{used:?}");
    let e = &used[0];
    assert_eq!(
        (&e["outcome"], &e["credential_id"]),
        (&json!("success"), &json!(id))
    );
    let d = &e["detail"];
    assert_eq!(d["operation"], "realtime_session");
    assert_eq!(d["path"], "/v1/text-to-speech/{}/stream-input");
    assert_eq!(
        (
            d["duration_ms"].as_u64(),
            d["closed_by"].as_str(),
            d["close_code"].as_u64()
        ),
        (Some(1500), Some("provider"), Some(1000))
    );
    assert_eq!(
        d["bytes_out"],
        4096 + r#"{"audio":"AAAA","isFinal":null}"#.len()
    );
    assert_eq!(d["usage"]["characters"], 12, "{d}");
    // The usage is kept: one request, the characters spoken.
    let rows = w.usage.rows.borrow();
    let row = rows.values().next().expect("a usage row");
    assert_eq!((row.requests, row.characters), (1, 12));
}

#[test]
fn a_key_the_provider_refuses_at_the_upgrade_is_marked_and_the_next_key_takes_over() {
    let w = world(&[]);
    let first = w.added();
    let (s, b, _) = w.add_key("u_a", KEY2, valid());
    assert_eq!(s, 201, "{b}");
    let second = b["credential"]["id"].as_str().unwrap().to_owned();
    let stt = "/v1/realtime/elevenlabs/ws/v1/speech-to-text/realtime?model_id=scribe_v2_realtime";
    let u = w.upgrade(
        stt,
        offered(&token("u_a")),
        vec![respond(401, INVALID), respond(101, "")],
    );
    assert_eq!(u.status, 101, "{}", u.body);
    assert_eq!(u.sent.len(), 2);
    let key_of = |i: usize| {
        let s = (u.sent[i].0.clone(), u.sent[i].1.clone(), 0);
        header(&s, "xi-api-key").map(str::to_owned)
    };
    // Whichever was tried first was refused and is marked; the other serves.
    let (tried, then) = (key_of(0).unwrap(), key_of(1).unwrap());
    assert_ne!(tried, then);
    let id_of = |key: &str| {
        if key == KEY {
            first.clone()
        } else {
            second.clone()
        }
    };
    let (refused, serving) = (id_of(&tried), id_of(&then));
    let rows = w.store.rows.borrow().clone();
    let status = |id: &str| rows.iter().find(|c| c.id.as_str() == id).unwrap().status;
    assert_eq!(
        status(&refused),
        crate::domain::CredentialStatus::InvalidKey
    );
    assert_eq!(status(&serving), crate::domain::CredentialStatus::Valid);
    w.end_session(u, |_| {}, "client", 1000);
    let used = w.used();
    let outcomes: Vec<(Value, Value)> = used
        .iter()
        .map(|e| (e["credential_id"].clone(), e["outcome"].clone()))
        .collect();
    assert!(
        outcomes.contains(&(json!(refused), json!("failure"))),
        "{outcomes:?}"
    );
    // Only the session's own event tells of the session.
    let refused_event = used
        .iter()
        .find(|e| e["credential_id"] == json!(refused))
        .unwrap();
    assert_eq!(
        refused_event["detail"]["bytes_in"],
        Value::Null,
        "{refused_event}"
    );
    assert_eq!(refused_event["detail"]["status"], 401, "{refused_event}");
    assert!(
        outcomes.contains(&(json!(serving), json!("success"))),
        "{outcomes:?}"
    );
}

#[test]
fn a_refusal_on_the_open_socket_marks_the_key_and_the_event_says_so() {
    let w = world(&[]);
    let id = w.added();
    let stt = "/v1/realtime/elevenlabs/ws/v1/speech-to-text/realtime";
    let u = w.upgrade(stt, offered(&token("u_a")), open());
    assert_eq!(u.status, 101, "{}", u.body);
    w.end_session(
        u,
        |t| {
            t.down_text(&format!(
                r#"{{"message_type":"auth_error","error":"You must be authenticated (key {KEY})"}}"#
            ));
            t.provider_closed(1000, "");
        },
        "provider",
        1000,
    );
    assert_eq!(
        w.stored().status,
        crate::domain::CredentialStatus::InvalidKey
    );
    let used = w.used();
    assert_eq!(
        (
            &used[0]["credential_id"],
            &used[0]["outcome"],
            &used[0]["reason"]
        ),
        (&json!(id), &json!("failure"), &json!("credential_invalid"))
    );
    let trail = w
        .call("GET", "/v1/audit?limit=200", Some("u_a"), None, vec![])
        .1;
    assert!(!trail.to_string().contains(KEY), "{trail}");
}

#[test]
fn a_session_on_the_system_key_counts_against_its_limits_and_budgets_before_the_provider() {
    let mut vars = systems();
    vars.push((
        "SYSTEM_KEY_BUDGETS",
        r#"{"*":{"period":"day","requests":1}}"#,
    ));
    let w = world(&vars);
    let listen = "/v1/realtime/deepgram/ws/v1/listen?encoding=linear16&sample_rate=16000";
    // A parameter that may carry a credential is never forwarded.
    let u = w.upgrade(
        &format!("{listen}&token=abc&Key=def"),
        offered(&token("u_a")),
        open(),
    );
    assert_eq!(u.status, 101, "{}", u.body);
    let sent = (u.sent[0].0.clone(), u.sent[0].1.clone(), 0);
    assert_eq!(
        sent.0,
        "https://api.deepgram.com/v1/listen?encoding=linear16&sample_rate=16000"
    );
    assert_eq!(
        header(&sent, "authorization"),
        Some(format!("Token {SYSTEM}").as_str())
    );
    w.end_session(
        u,
        |t| {
            t.down_text(r#"{"type":"Results","is_final":true,"duration":1.5,"channel":{}}"#);
            t.down_text(
                r#"{"type":"Metadata","duration":2.25,"model_info":{"x":{"name":"nova-3"}}}"#,
            );
        },
        "client",
        1000,
    );
    let e = &w.used()[0];
    assert_eq!(
        (&e["source"], &e["detail"]["fallback_reason"]),
        (&json!("system"), &json!("no_user_credential")),
        "{e}"
    );
    assert_eq!(e["detail"]["usage"]["audio_seconds"], 2.25);
    // The budget's one request is spent: the next session is refused before any socket.
    let u = w.upgrade(listen, offered(&token("u_a")), vec![]);
    assert_eq!(
        (u.status, u.body["code"].as_str(), u.sent.len()),
        (429, Some("budget_exceeded"), 0),
        "{}",
        u.body
    );
    // The caller may refuse the system key.
    let u = w.upgrade(
        &format!("{listen}&allow_fallback=false"),
        offered(&token("u_a")),
        vec![],
    );
    assert_eq!(
        (u.status, u.body["code"].as_str()),
        (404, Some("no_credential")),
        "{}",
        u.body
    );
    // And past the user's limit on system-key use, no socket either.
    let mut w = world(&systems());
    w.limiter = CountingLimiter::new(1);
    assert_eq!(
        w.upgrade(listen, offered(&token("u_a")), open()).status,
        101
    );
    let u = w.upgrade(listen, offered(&token("u_a")), vec![]);
    assert_eq!(
        (u.status, u.body["code"].as_str(), u.sent.len()),
        (429, Some("rate_limited"), 0),
        "{}",
        u.body
    );
}

#[test]
fn an_sdks_own_websocket_through_the_proxy_base_url_is_the_same_session() {
    let w = world(&systems());
    // The OpenAI SDK: `wss://…/v1/proxy/openai/v1/realtime?model=…` with its key header.
    let u = w.upgrade(
        "/v1/proxy/openai/v1/realtime?model=gpt-realtime",
        vec![("authorization".into(), format!("Bearer {}", token("u_a")))],
        open(),
    );
    assert_eq!(u.status, 101, "{}", u.body);
    let sent = (u.sent[0].0.clone(), u.sent[0].1.clone(), 0);
    assert_eq!(
        sent.0,
        "https://api.openai.com/v1/realtime?model=gpt-realtime"
    );
    assert_eq!(
        header(&sent, "authorization"),
        Some(format!("Bearer {SYSTEM}").as_str())
    );
    assert_eq!(u.session.as_ref().unwrap().0.protocol, None);
    w.end_session(
        u,
        |t| {
            t.down_text(r#"{"type":"session.created","session":{"model":"gpt-realtime"}}"#);
            t.down_text(r#"{"type":"response.done","response":{"usage":{"input_tokens":10,"output_tokens":32,"total_tokens":42}}}"#);
            t.down_text(r#"{"type":"response.done","response":{"usage":{"input_tokens":5,"output_tokens":1}}}"#);
        },
        "client",
        1000,
    );
    let d = &w.used()[0]["detail"];
    assert_eq!(
        (
            d["usage"]["input_tokens"].as_u64(),
            d["usage"]["output_tokens"].as_u64()
        ),
        (Some(15), Some(33)),
        "{d}"
    );
    // Deepgram's SDK: `Authorization: Token <token>` on `/v1/proxy/deepgram/v1/listen`.
    let u = w.upgrade(
        "/v1/proxy/deepgram/v1/listen",
        vec![("authorization".into(), format!("Token {}", token("u_a")))],
        open(),
    );
    assert_eq!(u.status, 101, "{}", u.body);
    // A path the socket proxy does not open is refused, as on the realtime route.
    let u = w.upgrade(
        "/v1/proxy/deepgram/v1/projects",
        vec![("authorization".into(), format!("Token {}", token("u_a")))],
        vec![],
    );
    assert_eq!(u.status, 400, "{}", u.body);
}
