//! OpenRouter (LLM, embeddings). Probe and quota in one call: `GET /api/v1/key` with a
//! bearer key; models: `GET /api/v1/models`.

use async_trait::async_trait;
use serde_json::Value;

use super::{
    bearer, openai_compat, Accepted, Auth, Endpoint, Operation, Provider, ProviderInfo, Target,
    API_KEY,
};
use crate::crypto::SecretKey;
use crate::domain::{Capability, Model, ProviderId, Quota};
use crate::http::{HttpRequest, HttpResponse};
use crate::json_read;
use crate::probe::{classify_status, Failure, Prober, Verdict};

pub(super) struct OpenRouter;

static INFO: ProviderInfo = ProviderInfo {
    id: ProviderId::new("openrouter"),
    name: "OpenRouter",
    capabilities: &[Capability::Llm, Capability::Embedding],
    fields: &[API_KEY],
    supports_model_listing: true,
    supports_quota: true,
    check_calls: 2,
    auth: Auth::Bearer,
    classify,
    call_headers: &[],
    realtime: None,
    sdk_key: &[],
    #[rustfmt::skip]
    operations: &[
        Operation::post("/api/v1/chat/completions", Capability::Llm),
        Operation::post("/api/v1/responses", Capability::Llm),
        Operation::post("/api/v1/embeddings", Capability::Embedding),
        Operation::get("/api/v1/models", Capability::Llm),
        Operation::get("/api/v1/embeddings/models", Capability::Embedding),
    ],
    endpoints: &[Endpoint {
        var: "OPENROUTER_BASE_URL",
        default: "https://openrouter.ai",
    }],
};

const NAME: &str = "OpenRouter";

fn classify(r: &HttpResponse) -> Verdict {
    let body = r.json().unwrap_or(Value::Null);
    let message = openai_compat::error_message(&body).unwrap_or("no reason given");
    let says = || format!("{NAME} says: {message}");
    match r.status {
        200..=299 => Verdict::Accept,
        401 => Verdict::Reject(Failure::InvalidKey(says())),
        402 => Verdict::Reject(Failure::QuotaExhausted(says())),
        403 => Verdict::Reject(Failure::InsufficientScope(says())),
        status => classify_status(status, NAME, message),
    }
}

struct KeyData {
    usage: f64,
    limit: Option<f64>,
    limit_remaining: Option<f64>,
}

/// `GET /api/v1/key`'s `data`.
fn key_data(body: &[u8]) -> Option<KeyData> {
    let o = json_read::object(body)?;
    let d = o.get("data")?.as_object()?;
    Some(KeyData {
        // Absent is 0 (null is not absent).
        usage: match d.get("usage") {
            None => 0.0,
            Some(v) => v.as_f64()?,
        },
        limit: json_read::opt_number(d, "limit")?,
        limit_remaining: json_read::opt_number(d, "limit_remaining")?,
    })
}

struct ApiModel {
    id: String,
    name: Option<String>,
}

/// `GET /api/v1/models`'s `data` (absent: none).
fn models(body: &[u8]) -> Option<Vec<ApiModel>> {
    let o = json_read::object(body)?;
    json_read::items(json_read::list_or_empty(&o, "data")?, |m| {
        Some(ApiModel {
            id: json_read::text(m, "id")?,
            name: json_read::opt_text(m, "name")?,
        })
    })
}

#[async_trait(?Send)]
impl Provider for OpenRouter {
    fn info(&self) -> &'static ProviderInfo {
        &INFO
    }

    async fn validate(
        &self,
        prober: &Prober<'_>,
        target: &Target<'_>,
        key: &SecretKey,
    ) -> Result<Accepted, Failure> {
        let auth = bearer(key);
        let get = |path: &str| {
            let url = target.url(path);
            let auth = auth.clone();
            move || HttpRequest::get(url.clone()).header("authorization", &auth)
        };
        let key_info = prober.call(NAME, get("/api/v1/key"), classify).await?;
        let mut accepted = Accepted::default();
        if let Some(k) = key_data(&key_info.body) {
            accepted.quota = Some(Quota {
                used: Some(k.usage),
                limit: k.limit,
                remaining: k.limit_remaining,
                unit: "usd".into(),
                resets_at: None,
            });
        }
        match prober.call(NAME, get("/api/v1/models"), classify).await {
            Ok(r) => {
                accepted.models = Some(
                    models(&r.body)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|m| Model {
                            name: m.name.unwrap_or_else(|| m.id.clone()),
                            id: m.id,
                            capabilities: vec![Capability::Llm],
                        })
                        .collect(),
                );
            }
            Err(f) => accepted.unavailable("model list", &f),
        }
        Ok(accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::{run, Run};
    use crate::testing::respond;

    #[test]
    fn a_valid_key_reports_usage_against_its_limit() {
        let key = r#"{"data":{"label":"sk-or-v1-au7...890","limit":100,"limit_remaining":74.5,"usage":25.5,"is_free_tier":false,"rate_limit":{"requests":10,"interval":"10s"}}}"#;
        let models = r#"{"data":[{"id":"openai/gpt-4o","name":"OpenAI: GPT-4o","context_length":128000,"architecture":{"input_modalities":["text","image"],"output_modalities":["text"]}}]}"#;
        let Run { out, requests } = run(&OpenRouter, vec![respond(200, key), respond(200, models)]);
        let a = out.unwrap();
        assert_eq!(
            a.quota,
            Some(Quota {
                used: Some(25.5),
                limit: Some(100.0),
                remaining: Some(74.5),
                unit: "usd".into(),
                resets_at: None
            })
        );
        assert_eq!(a.models.unwrap()[0].id, "openai/gpt-4o");
        assert_eq!(requests[0].0, "https://openrouter.ai/api/v1/key");
    }

    #[test]
    fn refusals_are_classified() {
        let invalid = r#"{"error":{"message":"No auth credentials found","code":401}}"#;
        assert_eq!(
            run(&OpenRouter, vec![respond(401, invalid)]).out,
            Err(Failure::InvalidKey(
                "OpenRouter says: No auth credentials found".into()
            ))
        );
        let broke = r#"{"error":{"message":"Insufficient credits","code":402}}"#;
        assert!(matches!(
            run(&OpenRouter, vec![respond(402, broke)]).out,
            Err(Failure::QuotaExhausted(_))
        ));
    }
}
