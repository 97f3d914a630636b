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
/// stands for one path segment (`{}:generateContent`, for one ending so), the capability
/// it serves, and which of the provider's endpoints it goes to.
#[derive(Debug)]
pub struct Operation {
    pub method: Method,
    pub path: &'static str,
    pub capability: Capability,
    pub endpoint: usize,
}

impl Operation {
    /// Whether `path` (already split into segments) is this operation's.
    fn matches(&self, segments: &[&str]) -> bool {
        let pattern: Vec<&str> = self.path.split('/').skip(1).collect();
        pattern.len() == segments.len()
            && pattern
                .iter()
                .zip(segments)
                .all(|(want, got)| match want.strip_prefix("{}") {
                    Some(suffix) => got
                        .strip_suffix(suffix)
                        .is_some_and(|head| !head.is_empty() && safe_segment(head)),
                    None => want == got,
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
