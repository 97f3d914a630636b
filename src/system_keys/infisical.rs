//! Infisical as a source of system keys (placeholder: being written).

use std::collections::BTreeMap;
use std::rc::Rc;

use zeroize::Zeroizing;

use super::Tier;
use crate::ports::{Clock, HttpClient};

/// Where and as whom to read the secrets.
pub struct InfisicalSettings {
    pub host: String,
    pub client_id: String,
    pub client_secret: Zeroizing<String>,
    pub project_id: String,
    pub environment: String,
    pub secret_path: String,
    pub cache_ttl_ms: u64,
    pub max_stale_ms: u64,
}

/// What the cache serves now.
pub struct Served {
    /// Secret name → value; `None` when nothing may be served (then the env tier serves).
    pub secrets: Option<Rc<BTreeMap<String, Zeroizing<String>>>>,
    /// `Infisical` (fresh) or `Cache` (the last good set, through an outage).
    pub tier: Tier,
    /// The last problem, in words without any value.
    pub problem: Option<String>,
}

/// The per-isolate cache of Infisical's secrets.
pub struct InfisicalCache {
    #[allow(dead_code)]
    settings: InfisicalSettings,
}

impl InfisicalCache {
    pub fn new(settings: InfisicalSettings) -> Self {
        Self { settings }
    }

    pub async fn current(
        &self,
        _http: &dyn HttpClient,
        _clock: &dyn Clock,
        _log: &dyn Fn(&str),
    ) -> Served {
        Served {
            secrets: None,
            tier: Tier::Env,
            problem: Some("the Infisical source is not built yet".into()),
        }
    }
}
