//! The vault's own limits on live provider checks and on uses of the operator's system
//! keys, over the Workers Rate Limiting bindings declared in wrangler.toml
//! (`[[ratelimits]]`).

use async_trait::async_trait;
use worker::{Env, RateLimiter as Binding};

use crate::limits::{LimitScope, LimiterError, RateLimiter};

const PER_USER: &str = "LIVE_CHECKS_PER_USER";
const PER_ADDRESS: &str = "LIVE_CHECKS_PER_ADDRESS";
const SYSTEM_KEY_PER_USER: &str = "SYSTEM_KEY_USES_PER_USER";
const SYSTEM_KEY_PER_ADDRESS: &str = "SYSTEM_KEY_USES_PER_ADDRESS";

/// One binding per scope; a missing binding refuses every check in its scope (the core
/// answers 503 `not_configured`): limits that silently vanished would be worse.
pub(super) struct BindingLimiter {
    per_user: Option<Binding>,
    per_address: Option<Binding>,
    system_key_per_user: Option<Binding>,
    system_key_per_address: Option<Binding>,
}

impl BindingLimiter {
    pub(super) fn new(env: &Env) -> Self {
        Self {
            per_user: env.rate_limiter(PER_USER).ok(),
            per_address: env.rate_limiter(PER_ADDRESS).ok(),
            system_key_per_user: env.rate_limiter(SYSTEM_KEY_PER_USER).ok(),
            system_key_per_address: env.rate_limiter(SYSTEM_KEY_PER_ADDRESS).ok(),
        }
    }
}

#[async_trait(?Send)]
impl RateLimiter for BindingLimiter {
    async fn allow(&self, scope: LimitScope, key: &str) -> Result<bool, LimiterError> {
        let (name, binding) = match scope {
            LimitScope::User => (PER_USER, &self.per_user),
            LimitScope::ClientAddress => (PER_ADDRESS, &self.per_address),
            LimitScope::SystemKeyUser => (SYSTEM_KEY_PER_USER, &self.system_key_per_user),
            LimitScope::SystemKeyAddress => (SYSTEM_KEY_PER_ADDRESS, &self.system_key_per_address),
        };
        let binding = binding
            .as_ref()
            .ok_or_else(|| LimiterError(format!("binding {name} is missing")))?;
        binding
            .limit(key.to_owned())
            .await
            .map(|outcome| outcome.success)
            .map_err(|e| LimiterError(format!("{name}: {e}")))
    }
}
