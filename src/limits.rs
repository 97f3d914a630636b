//! The vault's own rate limits: what they count (live checks with providers, uses of the
//! operator's system keys), against whom, and the seam that counts them (the Workers Rate
//! Limiting bindings in `edge/limits.rs`).

use async_trait::async_trait;

/// What the vault's own rate limits count, and against whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitScope {
    /// Live checks of keys with their provider, per user.
    User,
    /// Live checks, per client address.
    ClientAddress,
    /// Uses of the operator's system keys (proxy, resolve), per user.
    SystemKeyUser,
    /// Uses of the operator's system keys, per client address.
    SystemKeyAddress,
}

impl LimitScope {
    /// Whom the limit counts, for a message.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::User | LimitScope::SystemKeyUser => "user",
            LimitScope::ClientAddress | LimitScope::SystemKeyAddress => "client address",
        }
    }

    /// Whether the limit is on system-key use (not on live checks).
    pub fn is_system_key_use(self) -> bool {
        matches!(
            self,
            LimitScope::SystemKeyUser | LimitScope::SystemKeyAddress
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the rate limiter is unavailable: {0}")]
pub struct LimiterError(pub String);

/// Counts live provider checks and system-key uses (the Workers Rate Limiting bindings in
/// the Worker).
#[async_trait(?Send)]
pub trait RateLimiter {
    /// Counts one for `key` in `scope`; `false` when that is over the limit.
    async fn allow(&self, scope: LimitScope, key: &str) -> Result<bool, LimiterError>;
}
