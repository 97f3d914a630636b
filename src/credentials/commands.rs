//! The operations' inputs, already parsed and checked: a command that exists is valid
//! ("parse, don't validate"). The API parses them from request bodies (`api::commands`).

use crate::crypto::SecretKey;
use crate::domain::CredentialParams;
use crate::providers::Provider;

/// Add a key (`POST /v1/credentials`).
pub struct NewCredential {
    pub provider: &'static dyn Provider,
    /// Empty for a keyless endpoint (a local Ollama).
    pub api_key: SecretKey,
    pub label: Option<String>,
    /// The region (lower case, a host label) and base_url (through the endpoint guard)
    /// the provider takes, and only those.
    pub params: CredentialParams,
    pub model: Option<String>,
}

/// Change a stored credential (`PATCH /v1/credentials/{id}`). Every member that is
/// `None` stays as it is.
pub struct CredentialPatch {
    /// A new key: neither blank nor the masked hint echoed back.
    pub api_key: Option<SecretKey>,
    /// A new label (`Some(None)` removes it).
    pub label: Option<Option<String>>,
    /// A new model (`Some(None)` removes it).
    pub model: Option<Option<String>>,
    /// A new region or base_url, checked like [`NewCredential::params`].
    pub region: Option<String>,
    pub base_url: Option<String>,
    /// A new place among the user's keys for the provider (lower first).
    pub priority: Option<i64>,
    /// A new cap on what the key may spend (`Some(None)` removes it).
    pub budget: Option<Option<crate::domain::Budget>>,
}
