//! Google Gemini (LLM, embeddings, with TTS models). Probe and models: `GET /v1beta/models` with
//! `x-goog-api-key` (never `?key=`, so keys stay out of URLs), paged with `nextPageToken`.

use async_trait::async_trait;
use serde_json::Value;

use super::realtime::{
    json_field, query_value, ws_url, Connect, MintCall, Realtime, RealtimeKind, Token,
};
use super::{
    json_str, Accepted, Auth, Endpoint, KeyCarrier, Operation, Provider, ProviderInfo, Target,
    API_KEY, MAX_MODEL_PAGES,
};
use crate::crypto::SecretKey;
use crate::domain::{Capability, Model, ProviderId};
use crate::http::{HttpRequest, HttpResponse};
use crate::json_read;
use crate::probe::{classify_status, google_retry_delay_ms, Failure, Prober, Verdict};

pub(super) struct Gemini;

/// Realtime: Live API auth tokens (`POST /v1alpha/auth_tokens`), one use, the model locked
/// when one is given; the name the answer gives is the token, which the browser puts in
/// the constrained Live endpoint's `access_token` parameter.
static REALTIME: Realtime = Realtime {
    kinds: &[RealtimeKind::Conversation],
    min_seconds: 1,
    // Google's limit on `expireTime` (20 hours).
    max_seconds: 20 * 3600,
    fixed: false,
    needs_voice: &[],
    mint: |m| {
        let until = m.now.plus_millis(m.ttl_seconds * 1000).to_rfc3339();
        let mut body = serde_json::json!({
            "uses": 1,
            "expireTime": until,
            "newSessionExpireTime": until,
        });
        if let Some(model) = m.model {
            let model = if model.starts_with("models/") {
                model.to_owned()
            } else {
                format!("models/{model}")
            };
            body["bidiGenerateContentSetup"] = serde_json::json!({"model": model});
        }
        MintCall {
            endpoint: 0,
            path: "/v1alpha/auth_tokens".into(),
            body: Some(body),
        }
    },
    read: |r| {
        Some(Token {
            value: json_field(r, "name")?,
            expires_at_unix: None,
            expires_in: None,
        })
    },
    connect: |m, token| {
        Connect {
        query_parameter: Some("access_token"),
        ..Connect::url(format!(
            "{}?access_token={}",
            ws_url(
                m.target,
                0,
                "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained"
            ),
            query_value(token)
        ))
    }
    },
    sockets: &[],
};

static INFO: ProviderInfo = ProviderInfo {
    id: ProviderId::new("gemini"),
    name: "Google Gemini",
    capabilities: &[
        Capability::Llm,
        Capability::Tts,
        Capability::Stt,
        Capability::Embedding,
    ],
    fields: &[API_KEY],
    supports_model_listing: true,
    supports_quota: false,
    check_calls: MAX_MODEL_PAGES as u32,
    auth: Auth::Header("x-goog-api-key"),
    classify,
    call_headers: &[],
    realtime: Some(&REALTIME),
    sdk_key: &[
        KeyCarrier::Header("x-goog-api-key"),
        KeyCarrier::Query("key"),
    ],
    #[rustfmt::skip]
    operations: &[
        // google-genai calls `v1beta` unless told otherwise; `v1` has the same calls.
        // Streaming is `:streamGenerateContent?alt=sse` (the query is kept).
        Operation::post("/v1beta/models/{name}:generateContent", Capability::Llm),
        Operation::post("/v1beta/models/{name}:streamGenerateContent", Capability::Llm),
        Operation::post("/v1beta/models/{name}:countTokens", Capability::Llm),
        Operation::post("/v1beta/models/{name}:embedContent", Capability::Embedding),
        Operation::post("/v1beta/models/{name}:batchEmbedContents", Capability::Embedding),
        Operation::get("/v1beta/models", Capability::Llm),
        Operation::get("/v1beta/models/{name}", Capability::Llm),
        Operation::post("/v1/models/{name}:generateContent", Capability::Llm),
        Operation::post("/v1/models/{name}:streamGenerateContent", Capability::Llm),
        Operation::post("/v1/models/{name}:countTokens", Capability::Llm),
        Operation::post("/v1/models/{name}:embedContent", Capability::Embedding),
        Operation::post("/v1/models/{name}:batchEmbedContents", Capability::Embedding),
        Operation::get("/v1/models", Capability::Llm),
        Operation::get("/v1/models/{name}", Capability::Llm),
    ],
    endpoints: &[Endpoint {
        var: "GEMINI_BASE_URL",
        default: "https://generativelanguage.googleapis.com",
    }],
};

const NAME: &str = "Google Gemini";

/// The `reason`s of the `google.rpc.ErrorInfo` details.
fn reasons(body: &Value) -> Vec<&str> {
    body.get("error")
        .and_then(|e| e.get("details"))
        .and_then(Value::as_array)
        .map(|d| d.iter().filter_map(|x| x.get("reason")?.as_str()).collect())
        .unwrap_or_default()
}

fn classify(r: &HttpResponse) -> Verdict {
    let body = r.json().unwrap_or(Value::Null);
    let message = json_str(&body, &["error", "message"]).unwrap_or("no reason given");
    let says = || format!("{NAME} says: {message}");
    let reasons = reasons(&body);
    match r.status {
        200..=299 => Verdict::Accept,
        // Google answers a bad key with 400 INVALID_ARGUMENT, not 401.
        400 if reasons.contains(&"API_KEY_INVALID") || message.contains("API key not valid") => {
            Verdict::Reject(Failure::InvalidKey(says()))
        }
        401 => Verdict::Reject(Failure::InvalidKey(says())),
        403 => Verdict::Reject(Failure::InsufficientScope(says())),
        // "limit: 0" means the project has no quota at all: waiting will not help.
        429 if message.contains("limit: 0") => Verdict::Reject(Failure::QuotaExhausted(says())),
        429 => Verdict::Retry {
            hint_ms: google_retry_delay_ms(&body),
            failure: Failure::RateLimited {
                retry_after_ms: 0,
                message: says(),
            },
        },
        status => classify_status(status, NAME, message),
    }
}

struct Page {
    models: Vec<ApiModel>,
    next_page_token: Option<String>,
}

struct ApiModel {
    name: String,
    display_name: Option<String>,
    supported_generation_methods: Vec<String>,
}

fn page(body: &[u8]) -> Option<Page> {
    let o = json_read::object(body)?;
    Some(Page {
        models: json_read::items(json_read::list_or_empty(&o, "models")?, |m| {
            Some(ApiModel {
                name: json_read::text(m, "name")?,
                display_name: json_read::opt_text(m, "displayName")?,
                supported_generation_methods: json_read::texts_or_empty(
                    m,
                    "supportedGenerationMethods",
                )?,
            })
        })?,
        next_page_token: json_read::opt_text(&o, "nextPageToken")?,
    })
}

fn capabilities(id: &str, methods: &[String]) -> Vec<Capability> {
    let offers = |m: &str| methods.iter().any(|x| x == m);
    if id.contains("-tts") {
        vec![Capability::Tts]
    } else if offers("generateContent") {
        vec![Capability::Llm]
    } else if offers("embedContent") {
        vec![Capability::Embedding]
    } else {
        vec![]
    }
}

#[async_trait(?Send)]
impl Provider for Gemini {
    fn info(&self) -> &'static ProviderInfo {
        &INFO
    }

    async fn validate(
        &self,
        prober: &Prober<'_>,
        target: &Target<'_>,
        key: &SecretKey,
    ) -> Result<Accepted, Failure> {
        let mut models = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_MODEL_PAGES {
            let mut url = target.url("/v1beta/models?pageSize=1000");
            if let Some(t) = &token {
                url.push_str("&pageToken=");
                url.push_str(
                    &url::form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>(),
                );
            }
            let request = || HttpRequest::get(url.clone()).header("x-goog-api-key", key.expose());
            let response = prober.call(NAME, request, classify).await?;
            let Some(page) = page(&response.body) else {
                break;
            };
            models.extend(page.models.into_iter().map(|m| {
                let id = m.name.strip_prefix("models/").unwrap_or(&m.name).to_owned();
                Model {
                    name: m.display_name.unwrap_or_else(|| id.clone()),
                    capabilities: capabilities(&id, &m.supported_generation_methods),
                    id,
                }
            }));
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        Ok(Accepted {
            models: Some(models),
            ..Accepted::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::{run, Run};
    use crate::testing::respond;

    const PAGE1: &str = r#"{"models":[{"name":"models/gemini-2.0-flash","version":"2.0","displayName":"Gemini 2.0 Flash","inputTokenLimit":1048576,"outputTokenLimit":8192,"supportedGenerationMethods":["generateContent","countTokens"]}],"nextPageToken":"Cg9tb2RlbHMvZ2VtaW5p"}"#;
    const PAGE2: &str = r#"{"models":[{"name":"models/gemini-2.5-flash-preview-tts","displayName":"Gemini 2.5 Flash Preview TTS","supportedGenerationMethods":["generateContent"]},{"name":"models/text-embedding-004","displayName":"Text Embedding 004","supportedGenerationMethods":["embedContent"]}]}"#;

    #[test]
    fn every_page_is_listed_and_the_key_stays_in_a_header() {
        let Run { out, requests } = run(&Gemini, vec![respond(200, PAGE1), respond(200, PAGE2)]);
        let models = out.unwrap().models.unwrap();
        let got: Vec<_> = models
            .iter()
            .map(|m| (m.id.as_str(), m.capabilities.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("gemini-2.0-flash", vec![Capability::Llm]),
                ("gemini-2.5-flash-preview-tts", vec![Capability::Tts]),
                ("text-embedding-004", vec![Capability::Embedding]),
            ]
        );
        assert_eq!(requests[1].0, "https://generativelanguage.googleapis.com/v1beta/models?pageSize=1000&pageToken=Cg9tb2RlbHMvZ2VtaW5p");
        assert!(requests.iter().all(|r| !r.0.contains("key=")));
    }

    #[test]
    fn an_invalid_key_is_a_400_from_google() {
        let body = r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com","metadata":{"service":"generativelanguage.googleapis.com"}}]}}"#;
        assert_eq!(
            run(&Gemini, vec![respond(400, body)]).out,
            Err(Failure::InvalidKey(
                "Google Gemini says: API key not valid. Please pass a valid API key.".into()
            ))
        );
    }

    #[test]
    fn a_disabled_service_lacks_scope() {
        let body = r#"{"error":{"code":403,"message":"Generative Language API has not been used in project 123 before or it is disabled.","status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"SERVICE_DISABLED","domain":"googleapis.com"}]}}"#;
        assert!(matches!(
            run(&Gemini, vec![respond(403, body)]).out,
            Err(Failure::InsufficientScope(_))
        ));
    }

    #[test]
    fn retry_info_in_the_body_is_honoured() {
        let body = r#"{"error":{"code":429,"message":"You exceeded your current quota.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"2s"}]}}"#;
        let Run { out, requests } = run(&Gemini, vec![respond(429, body), respond(200, PAGE2)]);
        assert!(out.is_ok());
        assert_eq!(requests.len(), 2);
        let long = body.replace("\"2s\"", "\"47s\"");
        match run(&Gemini, vec![respond(429, &long)]).out {
            Err(Failure::RateLimited { retry_after_ms, .. }) => assert_eq!(retry_after_ms, 47_000),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn limit_zero_is_exhausted_quota_not_a_rate_limit() {
        let body = r#"{"error":{"code":429,"message":"Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 0","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"3s"}]}}"#;
        let Run { out, requests } = run(&Gemini, vec![respond(429, body)]);
        assert!(matches!(out, Err(Failure::QuotaExhausted(_))));
        assert_eq!(requests.len(), 1);
    }
}
