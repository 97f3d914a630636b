//! System-level keys: the operator's own key per provider, the fallback a user without a
//! usable key of their own gets (per `FALLBACK_POLICY`). One name per provider,
//! `SYSTEM_KEY_<PROVIDER>` (`SYSTEM_KEY_ELEVENLABS`), in both sources:
//! - `env`: the Worker's secrets of that name;
//! - `infisical`: the secrets of that name in one Infisical project, environment and path,
//!   served through three tiers: the Infisical API → the last good set (per isolate, after
//!   an outage, for a bounded time) → the Worker's secrets.

pub mod infisical;
mod settings;

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::crypto::SecretKey;
use crate::domain::Clock;
use crate::domain::ProviderId;
use crate::http::HttpClient;
pub use infisical::{InfisicalCache, InfisicalSettings, Served};
pub use settings::{FallbackPolicy, SystemKeySettings, SystemKeysSource};

crate::wire_enum! {
    /// Which tier served a system key.
    pub enum Tier {
        /// Infisical's API, within the cache TTL.
        Infisical = "infisical",
        /// The last set Infisical served, kept through an outage (bounded staleness).
        Cache = "cache",
        /// The Worker's own secrets.
        Env = "env",
    }
}

/// The name a provider's system key has in the Worker's secrets and in Infisical.
pub fn secret_name(provider: ProviderId) -> String {
    format!("SYSTEM_KEY_{}", provider.as_str().to_ascii_uppercase())
}

/// A system key and the tier that served it.
pub struct SystemKey {
    pub key: SecretKey,
    pub tier: Tier,
}

/// Where this request finds system keys: the Worker's secrets, and Infisical's per-isolate
/// cache when `SYSTEM_KEYS_SOURCE = "infisical"`.
pub struct SystemKeys<'a> {
    pub env: &'a BTreeMap<ProviderId, SecretKey>,
    pub infisical: Option<&'a InfisicalCache>,
    pub http: &'a dyn HttpClient,
    pub clock: &'a dyn Clock,
    /// Fallbacks are logged here (never a value).
    pub log: &'a dyn Fn(&str),
}

impl SystemKeys<'_> {
    /// The system key for `provider`, from the first tier that has one.
    pub async fn key(&self, provider: ProviderId) -> Option<SystemKey> {
        let name = secret_name(provider);
        if let Some(cache) = self.infisical {
            let served = cache.current(self.http, self.clock, self.log).await;
            if let Some(secrets) = &served.secrets {
                if let Some(value) = secrets.get(&name) {
                    return Some(SystemKey {
                        key: SecretKey::new(value.to_string()),
                        tier: served.tier,
                    });
                }
            }
            // The cache logs each change of tier itself, once.
        }
        self.env.get(&provider).map(|k| SystemKey {
            key: SecretKey::new(k.expose().to_owned()),
            tier: Tier::Env,
        })
    }

    /// What `/v1/health` (anonymous) says of system keys: the source, the tier serving now
    /// and the last problem; never a value, nor which providers have one.
    pub async fn health(&self) -> Value {
        let Some(cache) = self.infisical else {
            return json!({"source": "env", "tier": Tier::Env, "ok": true});
        };
        let served = cache.current(self.http, self.clock, self.log).await;
        let tier = if served.secrets.is_some() {
            served.tier
        } else {
            Tier::Env
        };
        json!({
            "source": "infisical",
            "tier": tier,
            "ok": served.problem.is_none(),
            "problem": served.problem,
        })
    }
}
