//! Mistral (LLM, STT, embeddings), OpenAI-compatible: `GET /v1/models` with a bearer key.
//! Added by following docs/adding-a-provider.md.

use async_trait::async_trait;

use super::{
    openai_compat, Accepted, Auth, Endpoint, Operation, Provider, ProviderInfo, Target, API_KEY,
};
use crate::crypto::SecretKey;
use crate::domain::{Capability, ProviderId};

use crate::probe::{Failure, Prober};

pub(super) struct Mistral;

static INFO: ProviderInfo = ProviderInfo {
    id: ProviderId::new("mistral"),
    name: "Mistral",
    capabilities: &[Capability::Llm, Capability::Stt, Capability::Embedding],
    fields: &[API_KEY],
    supports_model_listing: true,
    supports_quota: false,
    check_calls: 1,
    auth: Auth::Bearer,
    classify: |r| openai_compat::classify("Mistral", r),
    call_headers: &[],
    realtime: None,
    sdk_key: &[],
    #[rustfmt::skip]
    operations: &[
        Operation::post("/v1/chat/completions", Capability::Llm),
        Operation::post("/v1/fim/completions", Capability::Llm),
        Operation::post("/v1/embeddings", Capability::Embedding),
        Operation::post("/v1/audio/transcriptions", Capability::Stt),
        Operation::get("/v1/models", Capability::Llm),
        Operation::get("/v1/models/{}", Capability::Llm),
    ],
    endpoints: &[Endpoint {
        var: "MISTRAL_BASE_URL",
        default: "https://api.mistral.ai",
    }],
};

fn capabilities(id: &str) -> Vec<Capability> {
    if id.contains("embed") {
        vec![Capability::Embedding]
    } else if id.contains("moderation") {
        vec![]
    } else if id.contains("voxtral") && id.contains("transcribe") {
        vec![Capability::Stt]
    } else {
        vec![Capability::Llm]
    }
}

#[async_trait(?Send)]
impl Provider for Mistral {
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

    const MODELS: &str = r#"{"object":"list","data":[{"id":"mistral-large-latest","object":"model","created":1732000000,"owned_by":"mistralai","capabilities":{"completion_chat":true}},{"id":"mistral-embed","object":"model","created":1,"owned_by":"mistralai"},{"id":"voxtral-mini-transcribe-2507","object":"model","created":1,"owned_by":"mistralai"}]}"#;

    #[test]
    fn a_valid_key_lists_models_with_capabilities() {
        let Run { out, requests } = run(&Mistral, vec![respond(200, MODELS)]);
        let caps: Vec<_> = out
            .unwrap()
            .models
            .unwrap()
            .into_iter()
            .map(|m| m.capabilities)
            .collect();
        assert_eq!(
            caps,
            [
                vec![Capability::Llm],
                vec![Capability::Embedding],
                vec![Capability::Stt]
            ]
        );
        assert_eq!(requests[0].0, "https://api.mistral.ai/v1/models");
    }

    #[test]
    fn refusals_and_rate_limits() {
        let invalid = r#"{"message":"Unauthorized","request_id":"0d1f2f4b"}"#;
        assert_eq!(
            run(&Mistral, vec![respond(401, invalid)]).out,
            Err(Failure::InvalidKey("Mistral says: Unauthorized".into()))
        );
        let limited = r#"{"message":"Requests rate limit exceeded"}"#;
        let Run { out, requests } = run(
            &Mistral,
            vec![
                respond_with(429, &[("retry-after", "1")], limited),
                respond(200, MODELS),
            ],
        );
        assert!(out.is_ok());
        assert_eq!(requests.len(), 2);
    }
}
