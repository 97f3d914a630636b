//! Ollama (LLM, embeddings), self-hosted or ollama.com. The user supplies `base_url`
//! (checked by the endpoint guard before every call); the key is optional (local servers
//! need none).
//! Probe and models: `GET /api/tags`.

use async_trait::async_trait;
use serde_json::Value;

use super::{bearer, json_str, Accepted, Auth, Field, Operation, Provider, ProviderInfo, Target};
use crate::crypto::SecretKey;
use crate::domain::{Capability, Model, ProviderId};
use crate::http::{HttpRequest, HttpResponse};
use crate::json_read;
use crate::probe::{classify_status, Failure, Prober, Verdict};

pub(super) struct Ollama;

static INFO: ProviderInfo = ProviderInfo {
    id: ProviderId::new("ollama"),
    name: "Ollama",
    capabilities: &[Capability::Llm, Capability::Embedding],
    fields: &[
        Field {
            name: "base_url",
            required: true,
            secret: false,
        },
        Field {
            name: "api_key",
            required: false,
            secret: true,
        },
    ],
    supports_model_listing: true,
    supports_quota: false,
    check_calls: 1,
    auth: Auth::Bearer,
    classify,
    call_headers: &[],
    realtime: None,
    sdk_key: &[],
    #[rustfmt::skip]
    operations: &[
        Operation::post("/api/chat", Capability::Llm),
        Operation::post("/api/generate", Capability::Llm),
        Operation::post("/api/embed", Capability::Embedding),
        Operation::post("/api/embeddings", Capability::Embedding),
        Operation::get("/api/tags", Capability::Llm),
        // Ollama's OpenAI-compatible API, for the OpenAI SDKs.
        Operation::post("/v1/chat/completions", Capability::Llm),
        Operation::post("/v1/embeddings", Capability::Embedding),
        Operation::get("/v1/models", Capability::Llm),
    ],
    endpoints: &[],
};

const NAME: &str = "Ollama";

fn classify(r: &HttpResponse) -> Verdict {
    let body = r.json().unwrap_or(Value::Null);
    let message = json_str(&body, &["error"]).unwrap_or("no reason given");
    match r.status {
        200..=299 => Verdict::Accept,
        401 | 403 => Verdict::Reject(Failure::InvalidKey(format!("{NAME} says: {message}"))),
        404 => Verdict::Reject(Failure::ProviderError(format!(
            "{NAME} was not found at this base_url (GET /api/tags answered 404)"
        ))),
        status => classify_status(status, NAME, message),
    }
}

struct Tag {
    name: String,
}

/// The `models` of `GET /api/tags` (absent: none).
fn tags(body: &[u8]) -> Option<Vec<Tag>> {
    let o = json_read::object(body)?;
    json_read::items(json_read::list_or_empty(&o, "models")?, |t| {
        Some(Tag {
            name: json_read::text(t, "name")?,
        })
    })
}

#[async_trait(?Send)]
impl Provider for Ollama {
    fn info(&self) -> &'static ProviderInfo {
        &INFO
    }

    async fn validate(
        &self,
        prober: &Prober<'_>,
        target: &Target<'_>,
        key: &SecretKey,
    ) -> Result<Accepted, Failure> {
        let url = target.user_url("/api/tags");
        let auth = (!key.is_empty()).then(|| bearer(key));
        let request = || {
            let r = HttpRequest::get(url.clone());
            match &auth {
                Some(a) => r.header("authorization", a),
                None => r,
            }
        };
        let response = prober.call(NAME, request, classify).await?;
        let tags = tags(&response.body).ok_or_else(|| {
            Failure::ProviderError(format!(
                "{NAME}: GET /api/tags did not answer with a model list"
            ))
        })?;
        let models = tags
            .into_iter()
            .map(|t| Model {
                // The tags say nothing of what a model does; embedding models say so in
                // their names (nomic-embed-text, mxbai-embed-large, …).
                capabilities: vec![if t.name.contains("embed") {
                    Capability::Embedding
                } else {
                    Capability::Llm
                }],
                id: t.name.clone(),
                name: t.name,
            })
            .collect();
        Ok(Accepted {
            models: Some(models),
            ..Accepted::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::{run, run_keyless, Run};
    use crate::testing::respond;

    const TAGS: &str = r#"{"models":[{"name":"llama3.2:latest","model":"llama3.2:latest","modified_at":"2025-01-01T00:00:00Z","size":2019393189,"digest":"a80c4f17acd5","details":{"parent_model":"","format":"gguf","family":"llama","families":["llama"],"parameter_size":"3.2B","quantization_level":"Q4_K_M"}},{"name":"nomic-embed-text:latest","model":"nomic-embed-text:latest","size":274302450,"digest":"0a109f422b47","details":{"format":"gguf","family":"nomic-bert","parameter_size":"137M","quantization_level":"F16"}}]}"#;

    #[test]
    fn a_local_server_needs_no_key() {
        let Run { out, requests } = run_keyless(&Ollama, vec![respond(200, TAGS)]);
        let models = out.unwrap().models.unwrap();
        let got: Vec<_> = models
            .iter()
            .map(|m| (m.id.as_str(), m.capabilities.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("llama3.2:latest", vec![Capability::Llm]),
                ("nomic-embed-text:latest", vec![Capability::Embedding])
            ]
        );
        assert_eq!(requests[0].0, "https://ollama.example.com/api/tags");
        assert!(requests[0].1.is_empty());
    }

    #[test]
    fn a_cloud_key_is_sent_as_bearer_and_refusals_are_invalid() {
        let Run { out, requests } = run(&Ollama, vec![respond(401, r#"{"error":"unauthorized"}"#)]);
        assert_eq!(
            out,
            Err(Failure::InvalidKey("Ollama says: unauthorized".into()))
        );
        assert!(requests[0]
            .1
            .contains(&("authorization".into(), "Bearer sk-test-key".into())));
    }

    #[test]
    fn something_else_at_the_url_is_a_provider_error() {
        assert!(matches!(
            run_keyless(&Ollama, vec![respond(200, "<html>")]).out,
            Err(Failure::ProviderError(_))
        ));
        assert!(matches!(
            run_keyless(&Ollama, vec![respond(404, "404 page not found")]).out,
            Err(Failure::ProviderError(_))
        ));
    }
}
