//! Groq (LLM, STT), OpenAI-compatible: `GET /openai/v1/models` with a bearer key.

use async_trait::async_trait;

use super::{
    openai_compat, Accepted, Auth, Endpoint, Operation, Provider, ProviderInfo, Target, API_KEY,
};
use crate::crypto::SecretKey;
use crate::domain::{Capability, ProviderId};

use crate::probe::{Failure, Prober};

pub(super) struct Groq;

static INFO: ProviderInfo = ProviderInfo {
    id: ProviderId::new("groq"),
    name: "Groq",
    capabilities: &[Capability::Llm, Capability::Stt, Capability::Tts],
    fields: &[API_KEY],
    supports_model_listing: true,
    supports_quota: false,
    check_calls: 1,
    auth: Auth::Bearer,
    classify: |r| openai_compat::classify("Groq", r),
    call_headers: &[],
    realtime: None,
    sdk_key: &[],
    #[rustfmt::skip]
    operations: &[
        Operation::post("/openai/v1/chat/completions", Capability::Llm),
        Operation::post("/openai/v1/responses", Capability::Llm),
        Operation::post("/openai/v1/audio/transcriptions", Capability::Stt),
        Operation::post("/openai/v1/audio/translations", Capability::Stt),
        Operation::post("/openai/v1/audio/speech", Capability::Tts),
        Operation::get("/openai/v1/models", Capability::Llm),
        Operation::get("/openai/v1/models/{}", Capability::Llm),
    ],
    endpoints: &[Endpoint {
        var: "GROQ_BASE_URL",
        default: "https://api.groq.com",
    }],
};

fn capabilities(id: &str) -> Vec<Capability> {
    if id.contains("whisper") {
        vec![Capability::Stt]
    } else if id.contains("tts") {
        vec![Capability::Tts]
    } else if id.contains("guard") {
        vec![]
    } else {
        vec![Capability::Llm]
    }
}

#[async_trait(?Send)]
impl Provider for Groq {
    fn info(&self) -> &'static ProviderInfo {
        &INFO
    }

    async fn validate(
        &self,
        prober: &Prober<'_>,
        target: &Target<'_>,
        key: &SecretKey,
    ) -> Result<Accepted, Failure> {
        openai_compat::validate(
            INFO.name,
            "/openai/v1/models",
            capabilities,
            prober,
            target,
            key,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::{run, Run};
    use crate::testing::respond;

    #[test]
    fn valid_and_invalid_keys() {
        let models = r#"{"object":"list","data":[{"id":"llama-3.3-70b-versatile","object":"model","created":1733447754,"owned_by":"Meta","active":true,"context_window":131072},{"id":"whisper-large-v3","object":"model","created":1,"owned_by":"OpenAI","active":true}]}"#;
        let Run { out, requests } = run(&Groq, vec![respond(200, models)]);
        let m = out.unwrap().models.unwrap();
        assert_eq!(
            (m[0].capabilities.clone(), m[1].capabilities.clone()),
            (vec![Capability::Llm], vec![Capability::Stt])
        );
        assert_eq!(requests[0].0, "https://api.groq.com/openai/v1/models");
        let invalid = r#"{"error":{"message":"Invalid API Key","type":"invalid_request_error","code":"invalid_api_key"}}"#;
        let Run { out, .. } = run(&Groq, vec![respond(401, invalid)]);
        assert_eq!(
            out,
            Err(Failure::InvalidKey("Groq says: Invalid API Key".into()))
        );
    }
}
