//! The provider registry. One provider = one module here holding its catalog entry, its
//! probe, the classification of its responses and its model and quota parsing; adding a
//! provider means one new module and one line in [`REGISTRY`].

mod anthropic;
mod azure_speech;
mod deepgram;
mod elevenlabs;
mod gemini;
mod groq;
mod mistral;
mod ollama;
mod openai;
mod openai_compat;
mod openrouter;
pub mod realtime;
mod settings;
#[cfg(test)]
mod testing;

use async_trait::async_trait;
use serde::Serialize;

use crate::crypto::SecretKey;
use crate::domain::{Capability, CredentialParams, Model, ProviderId, Quota};
use crate::http::{HttpResponse, Method};
use crate::probe::{Failure, Prober, Verdict, MAX_MESSAGE_CHARS};
use crate::redact::ProviderText;
pub use settings::ProviderSettings;

static REGISTRY: &[&dyn Provider] = &[
    &elevenlabs::ElevenLabs,
    &azure_speech::AzureSpeech,
    &gemini::Gemini,
    &openai::OpenAi,
    &anthropic::Anthropic,
    &ollama::Ollama,
    &deepgram::Deepgram,
    &openrouter::OpenRouter,
    &groq::Groq,
    &mistral::Mistral,
];

pub fn all() -> impl Iterator<Item = &'static dyn Provider> {
    REGISTRY.iter().copied()
}

pub fn find(id: &str) -> Option<&'static dyn Provider> {
    all().find(|p| p.info().id.as_str() == id)
}

/// A field the user fills in for this provider.
#[derive(Debug, Serialize)]
pub struct Field {
    pub name: &'static str,
    pub required: bool,
    pub secret: bool,
}

pub const API_KEY: Field = Field {
    name: "api_key",
    required: true,
    secret: true,
};

/// A configurable base URL: the var that redirects it (tests point it at a fake server)
/// and its default. `{region}` in either is replaced by the credential's region.
#[derive(Debug)]
pub struct Endpoint {
    pub var: &'static str,
    pub default: &'static str,
}

/// The catalog entry (`GET /v1/providers`) plus where the provider lives.
#[derive(Debug, Serialize)]
pub struct ProviderInfo {
    pub id: ProviderId,
    pub name: &'static str,
    pub capabilities: &'static [Capability],
    pub fields: &'static [Field],
    pub supports_model_listing: bool,
    pub supports_quota: bool,
    /// The most provider calls one check of a key makes when each call is tried once
    /// (the probe, every page of a model list, the quota): what a caller with a budget
    /// of subrequests keeps free before it starts one.
    #[serde(skip)]
    pub check_calls: u32,
    /// Where the provider lives; empty when the user supplies `base_url` (Ollama).
    #[serde(skip)]
    pub endpoints: &'static [Endpoint],
    /// How a real operation carries the key.
    #[serde(skip)]
    pub auth: Auth,
    /// How the provider's answer to a call judges the key (the probe's own rules).
    #[serde(skip)]
    pub classify: fn(&HttpResponse) -> Verdict,
    /// Headers every real operation carries, set when the caller sends none (Anthropic's
    /// API version).
    #[serde(skip)]
    pub call_headers: &'static [(&'static str, &'static str)],
    /// The short-lived browser credential the provider mints for realtime sessions, if any.
    #[serde(skip)]
    pub realtime: Option<&'static realtime::Realtime>,
    /// Where the provider's official SDK puts its API key, besides `Authorization: Bearer`
    /// (which every provider's route takes): the user's vault token is accepted there too,
    /// so an unmodified SDK works with only its base URL changed.
    #[serde(skip)]
    pub sdk_key: &'static [KeyCarrier],
    /// The real operations the proxy forwards; nothing else reaches the provider.
    #[serde(skip)]
    pub operations: &'static [Operation],
}

/// Where a caller's SDK carries the key it was given (for the proxy: the vault token).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyCarrier {
    /// `Authorization: <scheme> <key>` with a scheme other than Bearer (Deepgram's `Token`).
    Authorization(&'static str),
    /// A header of its own (`x-api-key`).
    Header(&'static str),
    /// A query parameter (`?key=`).
    Query(&'static str),
}

/// How a provider's real operations carry the key.
#[derive(Clone, Copy, Debug)]
pub enum Auth {
    /// In a header of its own (`xi-api-key: <key>`).
    Header(&'static str),
    /// `Authorization: Bearer <key>` (none for a keyless endpoint).
    Bearer,
    /// `Authorization: Token <key>` (Deepgram).
    Token,
}

impl Auth {
    /// The header that carries `key`; `None` for an empty key (a keyless endpoint).
    pub fn header(self, key: &SecretKey) -> Option<(&'static str, String)> {
        if key.is_empty() {
            return None;
        }
        Some(match self {
            Auth::Header(name) => (name, key.expose().to_owned()),
            Auth::Bearer => ("authorization", bearer(key)),
            Auth::Token => ("authorization", format!("Token {}", key.expose())),
        })
    }
}

/// One real operation the proxy forwards: a method and a path pattern in which `{}`
/// stands for one path segment (`{}:generateContent`, for one ending so) and `{name}` for
/// one without a `:` (a Google resource name, where `:` starts a custom method, so that
/// `GET models/{name}` cannot be `GET models/x:embedContent`), the capability it serves,
/// and which of the provider's endpoints it goes to.
#[derive(Debug)]
pub struct Operation {
    pub method: Method,
    pub path: &'static str,
    pub capability: Capability,
    pub endpoint: usize,
}

impl Operation {
    /// `GET path` on the provider's first endpoint.
    pub const fn get(path: &'static str, capability: Capability) -> Self {
        Self {
            method: Method::Get,
            path,
            capability,
            endpoint: 0,
        }
    }

    /// `POST path` on the provider's first endpoint.
    pub const fn post(path: &'static str, capability: Capability) -> Self {
        Self {
            method: Method::Post,
            path,
            capability,
            endpoint: 0,
        }
    }

    /// The same operation on the provider's endpoint `index` (Azure's TTS and STT hosts).
    pub const fn at(self, endpoint: usize) -> Self {
        Self { endpoint, ..self }
    }

    /// Whether `path` (already split into segments) is this operation's.
    fn matches(&self, segments: &[&str]) -> bool {
        let pattern: Vec<&str> = self.path.split('/').skip(1).collect();
        pattern.len() == segments.len()
            && pattern.iter().zip(segments).all(|(want, got)| {
                let (suffix, colon) = match want.strip_prefix("{}") {
                    Some(suffix) => (suffix, true),
                    None => match want.strip_prefix("{name}") {
                        Some(suffix) => (suffix, false),
                        None => return want == got,
                    },
                };
                got.strip_suffix(suffix).is_some_and(|head| {
                    !head.is_empty() && safe_segment(head) && (colon || !head.contains(':'))
                })
            })
    }
}

/// A path segment a caller may put in an operation's `{}`: letters, digits and `-._~:`,
/// not `.` or `..`, no escapes (so nothing can climb out of the path or smuggle a slash).
fn safe_segment(s: &str) -> bool {
    s.len() <= 200
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:".contains(&b))
}

impl ProviderInfo {
    /// The allow-listed operation for `method` and `path` (which starts with `/`), if any.
    pub fn operation(&self, method: &str, path: &str) -> Option<&'static Operation> {
        let method = Method::parse(method)?;
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        if segments.iter().any(|s| s.is_empty()) {
            return None;
        }
        self.operations
            .iter()
            .find(|o| o.method == method && o.matches(&segments))
    }
}

impl ProviderInfo {
    pub fn has_field(&self, name: &str) -> bool {
        self.fields.iter().any(|f| f.name == name)
    }
}

/// Where to reach the provider for one credential.
pub struct Target<'a> {
    /// The configured base URLs, in the order of the provider's `endpoints`.
    pub bases: &'a [String],
    pub params: &'a CredentialParams,
}

impl Target<'_> {
    /// `path` (starting with `/`) under the provider's first endpoint.
    pub fn url(&self, path: &str) -> String {
        self.url_at(0, path)
    }

    /// `path` under endpoint `index`, with `{region}` filled in. Regions are checked at
    /// input (`[a-z0-9-]` only), so they cannot change which host is named.
    pub fn url_at(&self, index: usize, path: &str) -> String {
        let base = self
            .bases
            .get(index)
            .map(String::as_str)
            .unwrap_or_default();
        let base = base.replace(
            "{region}",
            self.params.region.as_deref().unwrap_or_default(),
        );
        format!("{}{path}", base.trim_end_matches('/'))
    }

    /// `path` under the user's own `base_url` (checked by the endpoint guard first).
    pub fn user_url(&self, path: &str) -> String {
        let base = self.params.base_url.as_deref().unwrap_or_default();
        format!("{}{path}", base.trim_end_matches('/'))
    }
}

/// What a successful validation learned on the way.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Accepted {
    pub quota: Option<Quota>,
    pub models: Option<Vec<Model>>,
    /// Things the user should know about a key that was accepted anyway.
    pub warnings: Vec<String>,
}

impl Accepted {
    /// Notes that `what` (a model list, a balance) could not be had after the key was
    /// proven: a warning, not a failure.
    pub(crate) fn unavailable(&mut self, what: &str, failure: &Failure) {
        self.warnings.push(format!(
            "The {what} is unavailable for now: {}",
            failure.message()
        ));
    }
}

/// The most models (or voices) kept of one provider's list.
pub const MAX_MODELS: usize = 1000;
/// The longest model id or name kept; a longer id is no model id at all.
pub const MAX_MODEL_CHARS: usize = 200;
/// The most text a model list keeps in ids and names together (a thousand entries of
/// plain names take a tenth of this).
pub const MAX_MODEL_LIST_BYTES: usize = 256 * 1024;
/// The most warnings kept of one check.
pub const MAX_WARNINGS: usize = 10;
const MAX_UNIT_CHARS: usize = 32;
const MAX_DATE_CHARS: usize = 40;

impl Accepted {
    /// The same findings with every string the provider sent made safe and bounded: model
    /// ids that needed cleaning are dropped (a changed id would name another model), names
    /// and units are cleaned, the list and the warnings are capped.
    fn cleaned(self, text: &ProviderText) -> Self {
        let models = self.models.map(|models| {
            let mut bytes = 0;
            models
                .into_iter()
                .filter(|m| {
                    !m.id.is_empty()
                        && m.id.chars().count() <= MAX_MODEL_CHARS
                        && text.clean(&m.id, MAX_MODEL_CHARS) == m.id
                })
                .take(MAX_MODELS)
                .map(|m| Model {
                    name: match text.clean(&m.name, MAX_MODEL_CHARS) {
                        n if n.is_empty() => m.id.clone(),
                        n => n,
                    },
                    ..m
                })
                .take_while(|m| {
                    bytes += m.id.len() + m.name.len();
                    bytes <= MAX_MODEL_LIST_BYTES
                })
                .collect()
        });
        let quota = self.quota.map(|q| Quota {
            unit: text.clean(&q.unit, MAX_UNIT_CHARS),
            resets_at: q.resets_at.map(|r| text.clean(&r, MAX_DATE_CHARS)),
            ..q
        });
        let warnings = self
            .warnings
            .iter()
            .take(MAX_WARNINGS)
            .map(|w| text.clean(w, MAX_MESSAGE_CHARS))
            .collect();
        Self {
            quota,
            models,
            warnings,
        }
    }
}

/// Runs `provider`'s check of `key`: the one way a key is checked with its provider, and
/// the one place provider text enters the vault. Whatever the provider said (warnings,
/// failure messages, model ids and names, quota units) comes back cleaned by
/// [`ProviderText`]: the key redacted, hidden characters removed, lengths capped.
pub async fn check(
    provider: &dyn Provider,
    prober: &Prober<'_>,
    target: &Target<'_>,
    key: &SecretKey,
) -> Result<Accepted, Failure> {
    let text = ProviderText::new(key);
    match provider.validate(prober, target, key).await {
        Ok(accepted) => Ok(accepted.cleaned(&text)),
        Err(failure) => Err(failure.cleaned(&text)),
    }
}

#[async_trait(?Send)]
pub trait Provider: Sync {
    fn info(&self) -> &'static ProviderInfo;

    /// Proves `key` works (cheaply) and gathers quota and models where that is cheap too.
    async fn validate(
        &self,
        prober: &Prober<'_>,
        target: &Target<'_>,
        key: &SecretKey,
    ) -> Result<Accepted, Failure>;
}

/// `Authorization: Bearer <key>`.
pub(crate) fn bearer(key: &SecretKey) -> String {
    format!("Bearer {}", key.expose())
}

/// How many pages of a model list are fetched at most (each page is a subrequest).
pub(crate) const MAX_MODEL_PAGES: usize = 10;

/// The text of a JSON string field at `path`, if there is one.
pub(crate) fn json_str<'v>(value: &'v serde_json::Value, path: &[&str]) -> Option<&'v str> {
    path.iter().try_fold(value, |v, key| v.get(key))?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Capability::{Embedding, Llm, Stt, Tts};

    fn allowed(provider: &str, method: &str, path: &str) -> Option<&'static Operation> {
        find(provider).unwrap().info().operation(method, path)
    }

    /// The paths the official SDKs' main calls build (openai-python/openai-node,
    /// anthropic-sdk-python, google-genai, elevenlabs-python, deepgram-sdk, mistralai), as
    /// they reach the proxy after `/v1/proxy/{provider}`.
    #[rustfmt::skip]
    const SDK_CALLS: &[(&str, &str, &str, Capability, usize)] = &[
        ("openai", "POST", "/v1/chat/completions", Llm, 0),
        ("openai", "POST", "/v1/responses", Llm, 0),
        ("openai", "POST", "/v1/responses/input_tokens", Llm, 0),
        ("openai", "POST", "/v1/audio/speech", Tts, 0),
        ("openai", "POST", "/v1/audio/transcriptions", Stt, 0),
        ("openai", "POST", "/v1/audio/translations", Stt, 0),
        ("openai", "POST", "/v1/embeddings", Embedding, 0),
        ("openai", "GET", "/v1/models", Llm, 0),
        ("openai", "GET", "/v1/models/gpt-4o-mini", Llm, 0),
        ("openai", "GET", "/v1/models/ft:gpt-4o-mini-2024-07-18:acme::9xYz", Llm, 0),
        ("anthropic", "POST", "/v1/messages", Llm, 0),
        ("anthropic", "POST", "/v1/messages/count_tokens", Llm, 0),
        ("anthropic", "GET", "/v1/models", Llm, 0),
        ("anthropic", "GET", "/v1/models/claude-sonnet-4-5", Llm, 0),
        ("gemini", "POST", "/v1beta/models/gemini-2.0-flash:generateContent", Llm, 0),
        ("gemini", "POST", "/v1beta/models/gemini-2.0-flash:streamGenerateContent", Llm, 0),
        ("gemini", "POST", "/v1beta/models/gemini-2.0-flash:countTokens", Llm, 0),
        ("gemini", "POST", "/v1beta/models/gemini-embedding-001:embedContent", Embedding, 0),
        ("gemini", "POST", "/v1beta/models/gemini-embedding-001:batchEmbedContents", Embedding, 0),
        ("gemini", "GET", "/v1beta/models", Llm, 0),
        ("gemini", "GET", "/v1beta/models/gemini-2.0-flash", Llm, 0),
        ("gemini", "POST", "/v1/models/gemini-2.0-flash:generateContent", Llm, 0),
        ("gemini", "POST", "/v1/models/gemini-2.0-flash:streamGenerateContent", Llm, 0),
        ("gemini", "POST", "/v1/models/gemini-2.0-flash:countTokens", Llm, 0),
        ("gemini", "POST", "/v1/models/text-embedding-004:embedContent", Embedding, 0),
        ("gemini", "POST", "/v1/models/text-embedding-004:batchEmbedContents", Embedding, 0),
        ("gemini", "GET", "/v1/models", Llm, 0),
        ("gemini", "GET", "/v1/models/gemini-2.0-flash", Llm, 0),
        ("elevenlabs", "POST", "/v1/text-to-speech/JBFqnCBsd6RMkjVDRZzb", Tts, 0),
        ("elevenlabs", "POST", "/v1/text-to-speech/JBFqnCBsd6RMkjVDRZzb/stream", Tts, 0),
        ("elevenlabs", "POST", "/v1/text-to-speech/JBFqnCBsd6RMkjVDRZzb/with-timestamps", Tts, 0),
        ("elevenlabs", "POST", "/v1/text-to-speech/JBFqnCBsd6RMkjVDRZzb/stream/with-timestamps", Tts, 0),
        ("elevenlabs", "POST", "/v1/speech-to-text", Stt, 0),
        ("elevenlabs", "GET", "/v1/models", Tts, 0),
        ("elevenlabs", "GET", "/v1/voices", Tts, 0),
        ("elevenlabs", "GET", "/v1/voices/JBFqnCBsd6RMkjVDRZzb", Tts, 0),
        ("elevenlabs", "GET", "/v2/voices", Tts, 0),
        ("deepgram", "POST", "/v1/listen", Stt, 0),
        ("deepgram", "POST", "/v1/speak", Tts, 0),
        ("deepgram", "GET", "/v1/models", Stt, 0),
        ("deepgram", "GET", "/v1/models/1dbdfb4d-85b2-4659-9831-16b3c76229aa", Stt, 0),
        ("azure_speech", "POST", "/cognitiveservices/v1", Tts, 1),
        ("azure_speech", "GET", "/cognitiveservices/voices/list", Tts, 1),
        ("azure_speech", "POST", "/speech/recognition/conversation/cognitiveservices/v1", Stt, 2),
        ("azure_speech", "POST", "/speech/recognition/interactive/cognitiveservices/v1", Stt, 2),
        ("azure_speech", "POST", "/speech/recognition/dictation/cognitiveservices/v1", Stt, 2),
        ("azure_speech", "POST", "/speechtotext/transcriptions:transcribe", Stt, 0),
        ("openrouter", "POST", "/api/v1/chat/completions", Llm, 0),
        ("openrouter", "POST", "/api/v1/responses", Llm, 0),
        ("openrouter", "POST", "/api/v1/embeddings", Embedding, 0),
        ("openrouter", "GET", "/api/v1/models", Llm, 0),
        ("openrouter", "GET", "/api/v1/embeddings/models", Embedding, 0),
        ("groq", "POST", "/openai/v1/chat/completions", Llm, 0),
        ("groq", "POST", "/openai/v1/responses", Llm, 0),
        ("groq", "POST", "/openai/v1/audio/transcriptions", Stt, 0),
        ("groq", "POST", "/openai/v1/audio/translations", Stt, 0),
        ("groq", "POST", "/openai/v1/audio/speech", Tts, 0),
        ("groq", "GET", "/openai/v1/models", Llm, 0),
        ("groq", "GET", "/openai/v1/models/llama-3.3-70b-versatile", Llm, 0),
        ("mistral", "POST", "/v1/chat/completions", Llm, 0),
        ("mistral", "POST", "/v1/fim/completions", Llm, 0),
        ("mistral", "POST", "/v1/embeddings", Embedding, 0),
        ("mistral", "POST", "/v1/audio/transcriptions", Stt, 0),
        ("mistral", "GET", "/v1/models", Llm, 0),
        ("mistral", "GET", "/v1/models/mistral-embed", Llm, 0),
        ("ollama", "POST", "/api/chat", Llm, 0),
        ("ollama", "POST", "/api/generate", Llm, 0),
        ("ollama", "POST", "/api/embed", Embedding, 0),
        ("ollama", "POST", "/api/embeddings", Embedding, 0),
        ("ollama", "GET", "/api/tags", Llm, 0),
        ("ollama", "POST", "/v1/chat/completions", Llm, 0),
        ("ollama", "POST", "/v1/embeddings", Embedding, 0),
        ("ollama", "GET", "/v1/models", Llm, 0),
    ];

    #[test]
    fn every_sdk_call_is_allow_listed_with_its_capability_and_endpoint() {
        for &(provider, method, path, capability, endpoint) in SDK_CALLS {
            let op = allowed(provider, method, path)
                .unwrap_or_else(|| panic!("{provider}: {method} {path} is refused"));
            assert_eq!(
                (op.capability, op.endpoint),
                (capability, endpoint),
                "{provider}: {method} {path}"
            );
        }
    }

    #[test]
    fn look_alikes_of_the_sdk_calls_are_refused() {
        #[rustfmt::skip]
        let refused: &[(&str, &str, &str)] = &[
            // The wrong method.
            ("openai", "GET", "/v1/embeddings"),
            ("openai", "POST", "/v1/models/gpt-4o-mini"),
            ("gemini", "GET", "/v1beta/models/gemini-2.0-flash:embedContent"),
            ("gemini", "POST", "/v1beta/models"),
            ("elevenlabs", "POST", "/v2/voices"),
            ("elevenlabs", "GET", "/v1/text-to-speech/voice/with-timestamps"),
            ("deepgram", "GET", "/v1/listen"),
            ("mistral", "GET", "/v1/embeddings"),
            // Another version, or none.
            ("gemini", "POST", "/v1alpha/models/gemini-2.0-flash:generateContent"),
            ("gemini", "POST", "/models/gemini-2.0-flash:generateContent"),
            ("openai", "POST", "/v2/embeddings"),
            ("elevenlabs", "GET", "/v3/voices"),
            // A method the pattern does not name, or none at all.
            ("gemini", "POST", "/v1beta/models/gemini-2.0-flash:embedContents"),
            ("gemini", "POST", "/v1beta/models/gemini-2.0-flash"),
            ("gemini", "POST", "/v1beta/models/:generateContent"),
            ("gemini", "POST", "/v1beta/models/a:b:generateContent"),
            ("gemini", "GET", "/v1/models/gemini-2.0-flash:countTokens"),
            ("gemini", "POST", "/v1beta/tunedModels/mine:generateContent"),
            // Empty, dot and escaped segments; extra or missing segments.
            ("openai", "GET", "/v1/models/"),
            ("openai", "GET", "/v1/models/."),
            ("openai", "GET", "/v1/models/.."),
            ("openai", "GET", "/v1/models/%2e%2e"),
            ("openai", "GET", "/v1/models/a%2Fb"),
            ("openai", "GET", "/v1/models/gpt-4o/extra"),
            ("openai", "POST", "/v1/embeddings/"),
            ("openai", "POST", "//v1/embeddings"),
            ("anthropic", "GET", "/v1/models/../messages"),
            ("gemini", "POST", "/v1beta/models/..:generateContent"),
            ("gemini", "POST", "/v1beta/models/.:embedContent"),
            ("gemini", "POST", "/v1beta/models/a%2F..%2Fb:batchEmbedContents"),
            ("gemini", "GET", "/v1beta/models//"),
            ("elevenlabs", "POST", "/v1/text-to-speech//with-timestamps"),
            ("elevenlabs", "GET", "/v1/voices/a/b"),
            ("deepgram", "GET", "/v1/models/"),
            // Paths of the provider that are no SDK's main call.
            ("openai", "GET", "/v1/responses/resp_123"),
            ("openai", "POST", "/v1/files"),
            ("anthropic", "POST", "/v1/messages/batches"),
            ("elevenlabs", "GET", "/v1/user"),
            ("elevenlabs", "GET", "/v1/speech-to-text/transcripts/abc"),
            ("deepgram", "GET", "/v1/projects"),
            ("deepgram", "POST", "/v1/auth/grant"),
            ("azure_speech", "POST", "/sts/v1.0/issueToken"),
            ("azure_speech", "POST", "/speech/recognition/other/cognitiveservices/v1"),
            ("openrouter", "GET", "/api/v1/key"),
            ("groq", "POST", "/openai/v1/embeddings"),
            ("groq", "POST", "/v1/chat/completions"),
            ("openrouter", "POST", "/v1/chat/completions"),
        ];
        for &(provider, method, path) in refused {
            assert!(
                allowed(provider, method, path).is_none(),
                "{provider}: {method} {path} is allowed"
            );
        }
    }

    #[test]
    fn every_operation_serves_a_capability_of_its_provider_on_one_of_its_endpoints() {
        for p in all() {
            let info = p.info();
            for op in info.operations {
                assert!(
                    info.capabilities.contains(&op.capability),
                    "{}: {} {}",
                    info.id,
                    op.method.as_str(),
                    op.path
                );
                assert!(op.endpoint < info.endpoints.len().max(1), "{}", op.path);
            }
            // A capability the catalog promises is one an operation serves.
            for c in info.capabilities {
                let served = info.operations.iter().any(|o| o.capability == *c)
                    // Gemini's speech comes out of generateContent (a TTS model, audio in).
                    || (info.id.as_str() == "gemini" && matches!(c, Tts | Stt));
                assert!(served, "{} offers {c} but forwards nothing for it", info.id);
            }
        }
    }

    #[test]
    fn embedding_is_offered_where_the_provider_has_embeddings() {
        let offering: Vec<&str> = all()
            .filter(|p| p.info().capabilities.contains(&Embedding))
            .map(|p| p.info().id.as_str())
            .collect();
        assert_eq!(
            offering,
            ["gemini", "openai", "ollama", "openrouter", "mistral"]
        );
    }
}
