//! Anthropic (LLM). Probe and models: `GET /v1/models?limit=1000` with `x-api-key` and
//! `anthropic-version`, paged with `after_id`.

use async_trait::async_trait;
use serde_json::Value;

use super::{
    json_str, Accepted, Auth, Endpoint, KeyCarrier, Operation, Provider, ProviderInfo, Target,
    API_KEY, MAX_MODEL_PAGES,
};
use crate::crypto::SecretKey;
use crate::domain::{Capability, Model, ProviderId};
use crate::http::{HttpRequest, HttpResponse};
use crate::json_read;
use crate::probe::{classify_status, Failure, Prober, Verdict};

pub(super) struct Anthropic;

static INFO: ProviderInfo = ProviderInfo {
    id: ProviderId::new("anthropic"),
    name: "Anthropic",
    capabilities: &[Capability::Llm],
    fields: &[API_KEY],
    supports_model_listing: true,
    supports_quota: false,
    check_calls: MAX_MODEL_PAGES as u32,
    auth: Auth::Header("x-api-key"),
    classify,
    call_headers: &[("anthropic-version", VERSION)],
    realtime: None,
    sdk_key: &[KeyCarrier::Header("x-api-key")],
    #[rustfmt::skip]
    operations: &[
        // Streamed or not, a message is one path (`"stream": true` in the body).
        Operation::post("/v1/messages", Capability::Llm),
        Operation::post("/v1/messages/count_tokens", Capability::Llm),
        Operation::get("/v1/models", Capability::Llm),
        Operation::get("/v1/models/{}", Capability::Llm),
    ],
    endpoints: &[Endpoint {
        var: "ANTHROPIC_BASE_URL",
        default: "https://api.anthropic.com",
    }],
};

const NAME: &str = "Anthropic";
const VERSION: &str = "2023-06-01";

fn classify(r: &HttpResponse) -> Verdict {
    let body = r.json().unwrap_or(Value::Null);
    let kind = json_str(&body, &["error", "type"]);
    let message = json_str(&body, &["error", "message"]).unwrap_or("no reason given");
    let says = || format!("{NAME} says: {message}");
    match (r.status, kind) {
        (200..=299, _) => Verdict::Accept,
        (401, _) => Verdict::Reject(Failure::InvalidKey(says())),
        // A disabled key has been seen to answer 404 on the model list.
        (404, _) => Verdict::Reject(Failure::InvalidKey(format!(
            "{} (the key may be disabled)",
            says()
        ))),
        (403, _) => Verdict::Reject(Failure::InsufficientScope(says())),
        (status, _) => classify_status(status, NAME, message),
    }
}

struct Page {
    data: Vec<ApiModel>,
    has_more: bool,
    last_id: Option<String>,
}

struct ApiModel {
    id: String,
    display_name: Option<String>,
}

fn page(body: &[u8]) -> Option<Page> {
    let o = json_read::object(body)?;
    Some(Page {
        data: json_read::items(json_read::list(&o, "data")?, |m| {
            Some(ApiModel {
                id: json_read::text(m, "id")?,
                display_name: json_read::opt_text(m, "display_name")?,
            })
        })?,
        has_more: json_read::flag_or_false(&o, "has_more")?,
        last_id: json_read::opt_text(&o, "last_id")?,
    })
}

#[async_trait(?Send)]
impl Provider for Anthropic {
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
        let mut after: Option<String> = None;
        for _ in 0..MAX_MODEL_PAGES {
            let mut url = target.url("/v1/models?limit=1000");
            if let Some(a) = &after {
                url.push_str("&after_id=");
                url.push_str(
                    &url::form_urlencoded::byte_serialize(a.as_bytes()).collect::<String>(),
                );
            }
            let request = || {
                HttpRequest::get(url.clone())
                    .header("x-api-key", key.expose())
                    .header("anthropic-version", VERSION)
            };
            let response = prober.call(NAME, request, classify).await?;
            let Some(page) = page(&response.body) else {
                break;
            };
            models.extend(page.data.into_iter().map(|m| Model {
                name: m.display_name.unwrap_or_else(|| m.id.clone()),
                id: m.id,
                capabilities: vec![Capability::Llm],
            }));
            match (page.has_more, page.last_id) {
                (true, Some(last)) => after = Some(last),
                _ => break,
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
    use crate::testing::{respond, respond_with};

    #[test]
    fn all_pages_of_models_are_listed() {
        let p1 = r#"{"data":[{"type":"model","id":"claude-sonnet-4-5","display_name":"Claude Sonnet 4.5","created_at":"2025-09-29T00:00:00Z"}],"has_more":true,"first_id":"claude-sonnet-4-5","last_id":"claude-sonnet-4-5"}"#;
        let p2 = r#"{"data":[{"type":"model","id":"claude-haiku-4-5","display_name":"Claude Haiku 4.5","created_at":"2025-10-01T00:00:00Z"}],"has_more":false,"first_id":"claude-haiku-4-5","last_id":"claude-haiku-4-5"}"#;
        let Run { out, requests } = run(&Anthropic, vec![respond(200, p1), respond(200, p2)]);
        let ids: Vec<_> = out
            .unwrap()
            .models
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, ["claude-sonnet-4-5", "claude-haiku-4-5"]);
        assert_eq!(
            requests[1].0,
            "https://api.anthropic.com/v1/models?limit=1000&after_id=claude-sonnet-4-5"
        );
        assert!(requests[0]
            .1
            .contains(&("anthropic-version".into(), "2023-06-01".into())));
    }

    #[test]
    fn refusals_are_classified() {
        let invalid = r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}"#;
        assert_eq!(
            run(&Anthropic, vec![respond(401, invalid)]).out,
            Err(Failure::InvalidKey(
                "Anthropic says: invalid x-api-key".into()
            ))
        );
        let perm = r#"{"type":"error","error":{"type":"permission_error","message":"Your API key does not have permission to use the specified resource."}}"#;
        assert!(matches!(
            run(&Anthropic, vec![respond(403, perm)]).out,
            Err(Failure::InsufficientScope(_))
        ));
    }

    #[test]
    fn overload_and_rate_limits_are_retried() {
        let overloaded =
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let limited = r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#;
        let ok = r#"{"data":[],"has_more":false}"#;
        let Run { out, requests } = run(
            &Anthropic,
            vec![
                respond(529, overloaded),
                respond_with(429, &[("retry-after", "1")], limited),
                respond(200, ok),
            ],
        );
        assert!(out.is_ok());
        assert_eq!(requests.len(), 3);
    }
}
