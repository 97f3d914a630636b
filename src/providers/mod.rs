//! The provider registry. One provider = one module here holding its catalog entry, its
//! probe, the classification of its responses and its model and quota parsing; adding a
//! provider means one new module and one line in [`REGISTRY`].

mod elevenlabs;

use async_trait::async_trait;
use serde::Serialize;
use url::Url;

use crate::crypto::SecretKey;
use crate::domain::{Capability, CredentialParams, Model, ProviderId, Quota};
use crate::validation::{Failure, Prober};

static REGISTRY: &[&dyn Provider] = &[&elevenlabs::ElevenLabs];

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

/// The catalog entry (`GET /v1/providers`) plus where the provider lives.
#[derive(Debug, Serialize)]
pub struct ProviderInfo {
    pub id: ProviderId,
    pub name: &'static str,
    pub capabilities: &'static [Capability],
    pub fields: &'static [Field],
    pub supports_model_listing: bool,
    pub supports_quota: bool,
    /// The var that redirects this provider (tests point it at a fake server).
    #[serde(skip)]
    pub base_url_var: &'static str,
    #[serde(skip)]
    pub default_base_url: &'static str,
}

impl ProviderInfo {
    pub fn has_field(&self, name: &str) -> bool {
        self.fields.iter().any(|f| f.name == name)
    }
}

/// Where to reach the provider for one credential.
pub struct Target<'a> {
    pub base_url: &'a Url,
    pub params: &'a CredentialParams,
}

impl Target<'_> {
    /// `path` (starting with `/`) under the base URL, keeping any path prefix it has.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url.as_str().trim_end_matches('/'))
    }
}

/// What a successful validation learned on the way.
#[derive(Debug, Default, PartialEq)]
pub struct Accepted {
    pub quota: Option<Quota>,
    pub models: Option<Vec<Model>>,
    /// Things the user should know about a key that was accepted anyway.
    pub warnings: Vec<String>,
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

/// The text of a JSON string field at `path`, if there is one.
pub(crate) fn json_str<'v>(value: &'v serde_json::Value, path: &[&str]) -> Option<&'v str> {
    path.iter().try_fold(value, |v, key| v.get(key))?.as_str()
}
