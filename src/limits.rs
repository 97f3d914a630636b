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

/// How long a caller refused by the vault's own limits is told to wait: the period of the
/// rate-limit bindings in wrangler.toml.
pub const RATE_LIMIT_PERIOD_SECONDS: u64 = 60;

/// Why a count was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Over the limit in this scope.
    Over(LimitScope),
    /// The limiter could not be asked for this scope: the limits fail closed.
    Unavailable(LimitScope, LimiterError),
}

/// The vault's limits as an operation counts against them: the limiter, and whether they
/// are on (`RATE_LIMITS`).
#[derive(Clone, Copy)]
pub struct Limits<'a> {
    pub limiter: &'a dyn RateLimiter,
    pub on: bool,
}

impl Limits<'_> {
    /// Counts one against each of `limits` in turn, and refuses when one is over: the
    /// network comes first, so a refused network spends nothing of the user's allowance.
    pub async fn count(&self, limits: [(LimitScope, &str); 2]) -> Result<(), Refusal> {
        if !self.on {
            return Ok(());
        }
        for (scope, key) in limits {
            match self.limiter.allow(scope, key).await {
                Ok(true) => {}
                Ok(false) => return Err(Refusal::Over(scope)),
                Err(e) => return Err(Refusal::Unavailable(scope, e)),
            }
        }
        Ok(())
    }
}
