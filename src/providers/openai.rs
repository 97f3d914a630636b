//! OpenAI (LLM, TTS, STT, embeddings). Probe and models in one call: `GET /v1/models` with a bearer
//! key. A restricted key without `api.model.read` is real: accepted with a warning.

use async_trait::async_trait;

use super::realtime::{
    json_field, query_value, ws_url, Connect, MintCall, Realtime, RealtimeKind, SocketDialect,
    SocketEndpoint, Token,
};
use super::{
    openai_compat, Accepted, Auth, Endpoint, Operation, Provider, ProviderInfo, Target, API_KEY,
};
use crate::crypto::SecretKey;
use crate::domain::{Capability, ProviderId};

use crate::probe::{Failure, Prober};

pub(super) struct OpenAi;

/// Realtime: client secrets (`POST /v1/realtime/client_secrets`, `ek_…`), 10 s to 2 h; not
/// single use (any number of sessions until it expires). The browser connects with the
/// subprotocols `realtime` and `openai-insecure-api-key.<secret>`.
static REALTIME: Realtime = Realtime {
    kinds: &[RealtimeKind::Conversation, RealtimeKind::Stt],
    min_seconds: 10,
    max_seconds: 7200,
    fixed: false,
    needs_voice: &[],
    mint: |m| {
        let session = match (m.kind, m.model) {
            (RealtimeKind::Stt, Some(model)) => serde_json::json!({
                "type": "transcription",
                "audio": {"input": {"transcription": {"model": model}}},
            }),
            (RealtimeKind::Stt, None) => serde_json::json!({"type": "transcription"}),
            (_, Some(model)) => serde_json::json!({"type": "realtime", "model": model}),
            (_, None) => serde_json::json!({"type": "realtime"}),
        };
        MintCall {
            endpoint: 0,
            path: "/v1/realtime/client_secrets".into(),
            body: Some(serde_json::json!({
                "expires_after": {"anchor": "created_at", "seconds": m.ttl_seconds},
                "session": session,
            })),
        }
    },
    read: |r| {
        Some(Token {
            value: json_field(r, "value")?,
            expires_at_unix: r.json().and_then(|v| v.get("expires_at")?.as_u64()),
            expires_in: None,
        })
    },
    connect: |m, token| {
        let mut url = ws_url(m.target, 0, "/v1/realtime");
        if let (RealtimeKind::Conversation, Some(model)) = (m.kind, m.model) {
            url = format!("{url}?model={}", query_value(model));
        }
        Connect {
            protocols: Some(vec![
                "realtime".into(),
                format!("openai-insecure-api-key.{token}"),
            ]),
            ..Connect::url(url)
        }
    },
    sockets: &[SocketEndpoint {
        path: "/v1/realtime",
        kind: RealtimeKind::Conversation,
        dialect: SocketDialect::OpenAi,
    }],
};

static INFO: ProviderInfo = ProviderInfo {
    id: ProviderId::new("openai"),
    name: "OpenAI",
    capabilities: &[
        Capability::Llm,
        Capability::Tts,
        Capability::Stt,
        Capability::Embedding,
    ],
    fields: &[API_KEY],
    supports_model_listing: true,
    supports_quota: false,
    check_calls: 1,
    auth: Auth::Bearer,
    classify: |r| openai_compat::classify("OpenAI", r),
    call_headers: &[],
    realtime: Some(&REALTIME),
    sdk_key: &[],
    #[rustfmt::skip]
    operations: &[
        Operation::post("/v1/chat/completions", Capability::Llm),
        Operation::post("/v1/responses", Capability::Llm),
        Operation::post("/v1/responses/input_tokens", Capability::Llm),
        Operation::post("/v1/audio/speech", Capability::Tts),
        Operation::post("/v1/audio/transcriptions", Capability::Stt),
        Operation::post("/v1/audio/translations", Capability::Stt),
        Operation::post("/v1/embeddings", Capability::Embedding),
        Operation::get("/v1/models", Capability::Llm),
        Operation::get("/v1/models/{}", Capability::Llm),
    ],
    endpoints: &[Endpoint {
        var: "OPENAI_BASE_URL",
        default: "https://api.openai.com",
    }],
};

/// What a model id says it does (the list itself says nothing).
fn capabilities(id: &str) -> Vec<Capability> {
    if id.contains("tts") {
        vec![Capability::Tts]
    } else if id.contains("whisper") || id.contains("transcribe") {
        vec![Capability::Stt]
    } else if id.starts_with("text-embedding") {
        vec![Capability::Embedding]
    } else if ["gpt", "o1", "o3", "o4", "chatgpt"]
        .iter()
        .any(|p| id.starts_with(p))
    {
        vec![Capability::Llm]
    } else {
        vec![]
    }
}

#[async_trait(?Send)]
impl Provider for OpenAi {
    fn info(&self) -> &'static ProviderInfo {
        &INFO
    }

    async fn validate(
        &self,
        prober: &Prober<'_>,
        target: &Target<'_>,
        key: &SecretKey,
    ) -> Result<Accepted, Failure> {
        openai_compat::validate(INFO.name, "/v1/models", capabilities, prober, target, key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::{run, Run};
    use crate::testing::{respond, respond_with};

    const MODELS: &str = r#"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","created":1721172741,"owned_by":"system"},{"id":"gpt-4o-mini-tts","object":"model","created":1,"owned_by":"system"},{"id":"whisper-1","object":"model","created":1,"owned_by":"openai-internal"},{"id":"text-embedding-3-small","object":"model","created":1,"owned_by":"system"}]}"#;

    #[test]
    fn a_valid_key_lists_models_with_capabilities() {
        let Run { out, requests } = run(&OpenAi, vec![respond(200, MODELS)]);
        let models = out.unwrap().models.unwrap();
        let caps: Vec<_> = models
            .iter()
            .map(|m| (m.id.as_str(), m.capabilities.clone()))
            .collect();
        assert_eq!(
            caps,
            [
                ("gpt-4o-mini", vec![Capability::Llm]),
                ("gpt-4o-mini-tts", vec![Capability::Tts]),
                ("whisper-1", vec![Capability::Stt]),
                ("text-embedding-3-small", vec![Capability::Embedding]),
            ]
        );
        assert_eq!(requests[0].0, "https://api.openai.com/v1/models");
        assert!(requests[0]
            .1
            .contains(&("authorization".into(), "Bearer sk-test-key".into())));
    }

    #[test]
    fn an_invalid_key_is_rejected_with_the_providers_message() {
        let body = r#"{"error":{"message":"Incorrect API key provided: sk-test-key. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
        let Run { out, .. } = run(&OpenAi, vec![respond(401, body)]);
        assert!(
            matches!(out, Err(Failure::InvalidKey(m)) if m.starts_with("OpenAI says: Incorrect API key provided"))
        );
    }

    #[test]
    fn a_key_missing_the_model_scope_is_accepted_with_a_warning() {
        let body = r#"{"error":{"message":"You have insufficient permissions for this operation. Missing scopes: api.model.read. Check that you have the correct role in your organization (Reader, Writer, Owner) and project (Member, Owner), and if you're using a restricted API key, that it has the necessary scopes.","type":"invalid_request_error","param":null,"code":null}}"#;
        let Run { out, requests } = run(&OpenAi, vec![respond(401, body)]);
        let a = out.unwrap();
        assert_eq!(a.models, None);
        assert_eq!(a.warnings.len(), 1);
        assert_eq!(requests.len(), 1);
    }

    #[test]
    fn insufficient_quota_is_never_retried_but_rate_limits_are() {
        let quota = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        let Run { out, requests } = run(&OpenAi, vec![respond(429, quota)]);
        assert!(matches!(out, Err(Failure::QuotaExhausted(_))));
        assert_eq!(requests.len(), 1);
        let limited = r#"{"error":{"message":"Rate limit reached for requests","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        let Run { out, requests } = run(
            &OpenAi,
            vec![
                respond_with(429, &[("retry-after-ms", "300")], limited),
                respond(200, MODELS),
            ],
        );
        assert!(out.is_ok());
        assert_eq!(requests.len(), 2);
    }
}
