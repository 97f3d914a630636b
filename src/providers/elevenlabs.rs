//! ElevenLabs (TTS, STT). Probe: `GET /v1/user/subscription` with `xi-api-key`, which
//! proves the key and returns the character quota in one call; models: `GET /v1/models`.

use async_trait::async_trait;
use serde_json::Value;

use super::realtime::{
    json_field, query_value, ws_url, Connect, MintCall, Realtime, RealtimeKind, SocketDialect,
    SocketEndpoint, Token,
};
use super::{
    json_str, Accepted, Auth, Endpoint, KeyCarrier, Operation, Provider, ProviderInfo, Target,
    API_KEY,
};
use crate::crypto::SecretKey;
use crate::domain::{Capability, Model, ProviderId, Quota, Timestamp};
use crate::http::{HttpRequest, HttpResponse};
use crate::json_read;
use crate::probe::{classify_status, Failure, Prober, Verdict};

pub(super) struct ElevenLabs;

/// Realtime: single-use tokens (`POST /v1/single-use-token/{realtime_scribe|tts_websocket}`),
/// 15 minutes, consumed on use; the browser puts it in the WebSocket URL's query.
static REALTIME: Realtime = Realtime {
    kinds: &[RealtimeKind::Stt, RealtimeKind::Tts],
    min_seconds: 900,
    max_seconds: 900,
    fixed: true,
    needs_voice: &[RealtimeKind::Tts],
    mint: |m| MintCall {
        endpoint: 0,
        path: match m.kind {
            RealtimeKind::Tts => "/v1/single-use-token/tts_websocket",
            _ => "/v1/single-use-token/realtime_scribe",
        }
        .into(),
        body: None,
    },
    read: |r| {
        Some(Token {
            value: json_field(r, "token")?,
            expires_at_unix: None,
            expires_in: None,
        })
    },
    connect: |m, token| {
        let token = query_value(token);
        match m.kind {
            RealtimeKind::Tts => {
                let voice = m.voice_id.unwrap_or_default();
                let path = format!("/v1/text-to-speech/{voice}/stream-input");
                let model = m
                    .model
                    .map(|x| format!("model_id={}&", query_value(x)))
                    .unwrap_or_default();
                Connect {
                    query_parameter: Some("single_use_token"),
                    ..Connect::url(format!(
                        "{}?{model}single_use_token={token}",
                        ws_url(m.target, 0, &path)
                    ))
                }
            }
            _ => {
                let model = query_value(m.model.unwrap_or("scribe_v2_realtime"));
                Connect {
                    query_parameter: Some("token"),
                    ..Connect::url(format!(
                        "{}?model_id={model}&token={token}",
                        ws_url(m.target, 0, "/v1/speech-to-text/realtime")
                    ))
                }
            }
        }
    },
    sockets: &[
        SocketEndpoint {
            path: "/v1/speech-to-text/realtime",
            kind: RealtimeKind::Stt,
            dialect: SocketDialect::ElevenLabsStt,
        },
        SocketEndpoint {
            path: "/v1/text-to-speech/{}/stream-input",
            kind: RealtimeKind::Tts,
            dialect: SocketDialect::ElevenLabsTts,
        },
        SocketEndpoint {
            path: "/v1/text-to-speech/{}/multi-stream-input",
            kind: RealtimeKind::Tts,
            dialect: SocketDialect::ElevenLabsTts,
        },
    ],
};

static INFO: ProviderInfo = ProviderInfo {
    id: ProviderId::new("elevenlabs"),
    name: "ElevenLabs",
    capabilities: &[Capability::Tts, Capability::Stt],
    fields: &[API_KEY],
    supports_model_listing: true,
    supports_quota: true,
    check_calls: 2,
    auth: Auth::Header("xi-api-key"),
    classify,
    call_headers: &[],
    realtime: Some(&REALTIME),
    sdk_key: &[KeyCarrier::Header("xi-api-key")],
    #[rustfmt::skip]
    operations: &[
        // The voice is the `{}`; `?output_format=` and the like are kept.
        Operation::post("/v1/text-to-speech/{}", Capability::Tts),
        Operation::post("/v1/text-to-speech/{}/stream", Capability::Tts),
        Operation::post("/v1/text-to-speech/{}/with-timestamps", Capability::Tts),
        Operation::post("/v1/text-to-speech/{}/stream/with-timestamps", Capability::Tts),
        Operation::post("/v1/speech-to-text", Capability::Stt),
        Operation::get("/v1/models", Capability::Tts),
        Operation::get("/v1/voices", Capability::Tts),
        Operation::get("/v1/voices/{}", Capability::Tts),
        Operation::get("/v2/voices", Capability::Tts),
    ],
    endpoints: &[Endpoint {
        var: "ELEVENLABS_BASE_URL",
        default: "https://api.elevenlabs.io",
    }],
};

const NAME: &str = "ElevenLabs";

#[async_trait(?Send)]
impl Provider for ElevenLabs {
    fn info(&self) -> &'static ProviderInfo {
        &INFO
    }

    async fn validate(
        &self,
        prober: &Prober<'_>,
        target: &Target<'_>,
        key: &SecretKey,
    ) -> Result<Accepted, Failure> {
        let get = |path: &str| {
            let url = target.url(path);
            move || HttpRequest::get(url.clone()).header("xi-api-key", key.expose())
        };
        let mut accepted = Accepted::default();

        let subscription = prober
            .call(NAME, get("/v1/user/subscription"), classify)
            .await?;
        if is_missing_permission(&subscription) {
            // Only a genuine key is told it lacks a permission: accept it without quota.
            accepted.warnings.push(
                "This key lacks the user_read permission, so its quota cannot be shown.".into(),
            );
        } else {
            accepted.quota = parse_quota(&subscription);
        }

        match prober.call(NAME, get("/v1/models"), classify).await {
            Ok(r) if is_missing_permission(&r) => accepted.warnings.push(
                "This key lacks the models_read permission, so its models cannot be listed.".into(),
            ),
            Ok(r) => accepted.models = Some(parse_models(&r)),
            // The key itself is proven; a model list that cannot be had now is not fatal.
            Err(f) => accepted.unavailable("model list", &f),
        }
        Ok(accepted)
    }
}

/// `{"detail":{"status":"…","message":"…"}}`; `detail` is sometimes a bare string.
fn detail(body: &Value) -> (Option<&str>, Option<&str>) {
    let status = json_str(body, &["detail", "status"]);
    let message = json_str(body, &["detail", "message"]).or_else(|| json_str(body, &["detail"]));
    (status, message)
}

fn is_missing_permission(r: &HttpResponse) -> bool {
    r.status == 401
        && r.json()
            .is_some_and(|b| detail(&b).0 == Some("missing_permissions"))
}

fn classify(r: &HttpResponse) -> Verdict {
    let body = r.json().unwrap_or(Value::Null);
    let (status, message) = detail(&body);
    let message = message.unwrap_or("no reason given");
    let says = || format!("{NAME} says: {message}");
    match (r.status, status) {
        (200..=299, _) => Verdict::Accept,
        (401, Some("missing_permissions")) => Verdict::Accept,
        (_, Some("quota_exceeded")) => Verdict::Reject(Failure::QuotaExhausted(says())),
        (401, _) => Verdict::Reject(Failure::InvalidKey(says())),
        // Endpoint or IP allow-list restriction: the key is real but cannot be used from here.
        (403, _) => Verdict::Reject(Failure::InsufficientScope(says())),
        (status, _) => classify_status(status, NAME, message),
    }
}

struct Subscription {
    character_count: f64,
    character_limit: Option<f64>,
    next_character_count_reset_unix: Option<u64>,
}

fn parse_quota(r: &HttpResponse) -> Option<Quota> {
    let o = json_read::object(&r.body)?;
    let s = Subscription {
        character_count: json_read::number(&o, "character_count")?,
        character_limit: json_read::opt_number(&o, "character_limit")?,
        next_character_count_reset_unix: json_read::opt_u64(&o, "next_character_count_reset_unix")?,
    };
    Some(Quota {
        used: Some(s.character_count),
        limit: s.character_limit,
        remaining: s.character_limit.map(|l| (l - s.character_count).max(0.0)),
        unit: "characters".into(),
        resets_at: s
            .next_character_count_reset_unix
            .map(|t| Timestamp::from_unix_seconds(t).to_rfc3339()),
    })
}

struct ApiModel {
    model_id: String,
    name: Option<String>,
    can_do_text_to_speech: bool,
}

fn parse_models(r: &HttpResponse) -> Vec<Model> {
    let read = |m: &json_read::Members| {
        Some(ApiModel {
            model_id: json_read::text(m, "model_id")?,
            name: json_read::opt_text(m, "name")?,
            can_do_text_to_speech: json_read::flag_or_false(m, "can_do_text_to_speech")?,
        })
    };
    let models = json_read::array(&r.body)
        .and_then(|a| json_read::items(&a, read))
        .unwrap_or_default();
    models
        .into_iter()
        .map(|m| Model {
            name: m.name.unwrap_or_else(|| m.model_id.clone()),
            capabilities: if m.can_do_text_to_speech {
                vec![Capability::Tts]
            } else {
                vec![]
            },
            id: m.model_id,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;

    use super::*;
    use crate::domain::CredentialParams;
    use crate::testing::{respond, FakeClock, FakeHttp, FixedJitter, Scripted};

    const SUBSCRIPTION: &str = r#"{"tier":"creator","status":"active","character_count":1200,"character_limit":10000,"next_character_count_reset_unix":1796083200,"voice_slots_used":1,"voice_limit":30}"#;
    const MODELS: &str = r#"[{"model_id":"eleven_multilingual_v2","name":"Eleven Multilingual v2","can_do_text_to_speech":true,"can_do_voice_conversion":false,"languages":[{"language_id":"en","name":"English"}]},{"model_id":"eleven_english_sts_v2","name":"Eleven English v2","can_do_text_to_speech":false}]"#;
    const INVALID: &str = r#"{"detail":{"status":"invalid_api_key","message":"Invalid API key"}}"#;
    const MISSING: &str = r#"{"detail":{"status":"missing_permissions","message":"The API key you used is missing the permission user_read to execute this operation."}}"#;

    fn validate(script: Vec<Scripted>) -> (Result<Accepted, Failure>, Vec<String>) {
        let clock = FakeClock::at(1_800_000_000_000);
        let http = FakeHttp::new(&clock, script);
        let prober = Prober::new(&http, &clock, &FixedJitter(0.5), 10_000, 4_000);
        let bases = ["https://api.elevenlabs.io".to_owned()];
        let params = CredentialParams::default();
        let target = Target {
            bases: &bases,
            params: &params,
        };
        let key = SecretKey::new("sk_test".into());
        let out = block_on(ElevenLabs.validate(&prober, &target, &key));
        let urls = http.sent.borrow().iter().map(|s| s.0.clone()).collect();
        // The key goes in the xi-api-key header and nowhere else.
        for (url, headers, _) in http.sent.borrow().iter() {
            assert!(!url.contains("sk_test"));
            assert!(headers.contains(&("xi-api-key".into(), "sk_test".into())));
        }
        (out, urls)
    }

    #[test]
    fn a_valid_key_yields_quota_and_models() {
        let (out, urls) = validate(vec![respond(200, SUBSCRIPTION), respond(200, MODELS)]);
        let a = out.unwrap();
        assert_eq!(
            a.quota,
            Some(Quota {
                used: Some(1200.0),
                limit: Some(10000.0),
                remaining: Some(8800.0),
                unit: "characters".into(),
                resets_at: Some("2026-12-01T00:00:00Z".into())
            })
        );
        let models = a.models.unwrap();
        assert_eq!(models[0].id, "eleven_multilingual_v2");
        assert_eq!(models[0].capabilities, vec![Capability::Tts]);
        assert!(models[1].capabilities.is_empty());
        assert!(a.warnings.is_empty());
        assert_eq!(
            urls,
            [
                "https://api.elevenlabs.io/v1/user/subscription",
                "https://api.elevenlabs.io/v1/models"
            ]
        );
    }

    #[test]
    fn an_invalid_key_is_rejected_with_the_providers_reason() {
        let (out, urls) = validate(vec![respond(401, INVALID)]);
        assert_eq!(
            out,
            Err(Failure::InvalidKey(
                "ElevenLabs says: Invalid API key".into()
            ))
        );
        assert_eq!(urls.len(), 1);
    }

    #[test]
    fn a_key_without_user_read_is_accepted_with_a_warning() {
        let (out, _) = validate(vec![respond(401, MISSING), respond(200, MODELS)]);
        let a = out.unwrap();
        assert_eq!(a.quota, None);
        assert!(a.models.is_some());
        assert_eq!(a.warnings.len(), 1);
        assert!(a.warnings[0].contains("user_read"));
    }

    #[test]
    fn an_ip_restricted_key_lacks_scope() {
        let body = r#"{"detail":{"status":"ip_not_allowed","message":"This IP is not allowed"}}"#;
        let (out, _) = validate(vec![respond(403, body)]);
        assert!(
            matches!(out, Err(Failure::InsufficientScope(m)) if m.contains("IP is not allowed"))
        );
    }

    #[test]
    fn exhausted_credits_are_not_retried() {
        let body =
            r#"{"detail":{"status":"quota_exceeded","message":"This request exceeds your quota"}}"#;
        let (out, urls) = validate(vec![respond(429, body)]);
        assert!(matches!(out, Err(Failure::QuotaExhausted(_))));
        assert_eq!(urls.len(), 1);
    }

    #[test]
    fn concurrency_limits_are_retried() {
        let busy = r#"{"detail":{"status":"too_many_concurrent_requests","message":"Too many concurrent requests"}}"#;
        let (out, urls) = validate(vec![
            respond(429, busy),
            respond(200, SUBSCRIPTION),
            respond(200, MODELS),
        ]);
        assert!(out.is_ok());
        assert_eq!(urls.len(), 3);
    }

    #[test]
    fn a_failing_model_list_does_not_fail_a_proven_key() {
        let (out, _) = validate(vec![respond(200, SUBSCRIPTION), respond(404, "{}")]);
        let a = out.unwrap();
        assert!(a.quota.is_some());
        assert_eq!(a.models, None);
        assert!(a.warnings[0].starts_with("The model list is unavailable"));
    }
}
