//! The system-keys section of the configuration: when the operator's keys serve
//! (`FALLBACK_POLICY`), where they are read (`SYSTEM_KEYS_SOURCE`: the Worker's
//! `SYSTEM_KEY_<PROVIDER>` secrets, or Infisical and its `INFISICAL_*` settings), and where
//! a provider that needs a region or a base URL is reached with them
//! (`SYSTEM_KEY_<PROVIDER>_REGION`, `SYSTEM_KEY_<PROVIDER>_BASE_URL`).

use std::collections::BTreeMap;

use super::infisical::InfisicalSettings;
use super::secret_name;
use crate::crypto::SecretKey;
use crate::domain::{CredentialParams, Environment, ProviderId, Vars};
use crate::providers;

/// Whose key serves a call: the user's, the operator's (a system key), or the user's first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FallbackPolicy {
    UserThenSystem,
    UserOnly,
    SystemOnly,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SystemKeysSource {
    Env,
    Infisical,
}

pub struct SystemKeySettings {
    pub fallback_policy: FallbackPolicy,
    pub source: SystemKeysSource,
    /// System keys from the Worker's secrets (`SYSTEM_KEY_<PROVIDER>`).
    pub env: BTreeMap<ProviderId, SecretKey>,
    /// Where a provider's system key is used, for providers that need a region or a base
    /// URL, whichever source serves the key.
    pub params: BTreeMap<ProviderId, CredentialParams>,
    /// Where Infisical's secrets are read (`SYSTEM_KEYS_SOURCE = "infisical"`).
    pub infisical: Option<InfisicalSettings>,
}

impl SystemKeySettings {
    pub fn parse(vars: &mut Vars, environment: Environment) -> SystemKeySettings {
        let fallback_policy = {
            use FallbackPolicy::*;
            vars.choice(
                "FALLBACK_POLICY",
                &[
                    ("user_then_system", UserThenSystem),
                    ("user_only", UserOnly),
                    ("system_only", SystemOnly),
                ],
                "must be user_then_system, user_only or system_only",
            )
        };
        let source = vars.choice(
            "SYSTEM_KEYS_SOURCE",
            &[
                ("env", SystemKeysSource::Env),
                ("infisical", SystemKeysSource::Infisical),
            ],
            "must be env or infisical",
        );

        let mut env = BTreeMap::new();
        let mut params = BTreeMap::new();
        for p in providers::all() {
            let id = p.info().id;
            let name = secret_name(id);
            if let Some(key) = vars.get(&name) {
                env.insert(id, SecretKey::new(key.trim().to_owned()));
            }
            let region = vars
                .get(&format!("{name}_REGION"))
                .map(|r| r.trim().to_owned());
            let base_url = vars
                .get(&format!("{name}_BASE_URL"))
                .map(|b| b.trim().to_owned());
            if region.as_deref().is_some_and(|r| {
                r.is_empty()
                    || !r
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            }) {
                vars.problem(
                    "SYSTEM_KEY_<PROVIDER>_REGION",
                    "must be a region name of a-z, 0-9 and -",
                );
            }
            if region.is_some() || base_url.is_some() {
                params.insert(id, CredentialParams { region, base_url });
            }
        }

        let infisical = match source {
            SystemKeysSource::Env => None,
            SystemKeysSource::Infisical => InfisicalSettings::parse(vars, environment),
        };
        SystemKeySettings {
            fallback_policy,
            source,
            env,
            params,
            infisical,
        }
    }
}
