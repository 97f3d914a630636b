//! The vault's own limits: the rate limits, what they count (live checks with providers,
//! uses of the operator's system keys), against whom, and the seam that counts them (the
//! Workers Rate Limiting bindings in `edge/limits.rs`); and the limits section of the
//! configuration (`RATE_LIMITS`, `MAX_CREDENTIALS_PER_USER`, `PROXY_MAX_BODY_BYTES`,
//! `PROXY_MAX_ATTEMPTS`).

use async_trait::async_trait;

use crate::domain::{Environment, Vars};

/// The most any proxied request body may be, whatever `PROXY_MAX_BODY_BYTES` says (the
/// Worker reads it into memory).
pub const MAX_PROXY_BODY_BYTES: usize = 32 << 20;

/// How much one caller may do.
pub struct LimitSettings {
    /// Whether live provider checks and system-key uses are rate limited (`RATE_LIMITS`;
    /// off only outside production).
    pub rate_limits: bool,
    /// The most credentials one user may hold (`MAX_CREDENTIALS_PER_USER`).
    pub max_credentials_per_user: u32,
    /// The largest request body the proxy forwards (`PROXY_MAX_BODY_BYTES`).
    pub proxy_max_body_bytes: usize,
    /// How many of a user's keys one proxied call may try (`PROXY_MAX_ATTEMPTS`).
    pub proxy_max_attempts: u32,
}

impl LimitSettings {
    pub fn parse(vars: &mut Vars, environment: Environment) -> LimitSettings {
        let max_credentials_per_user =
            vars.number("MAX_CREDENTIALS_PER_USER", 100, 1, 10_000) as u32;
        let proxy_max_body_bytes = vars.number(
            "PROXY_MAX_BODY_BYTES",
            25 << 20,
            1024,
            MAX_PROXY_BODY_BYTES as u64,
        ) as usize;
        let proxy_max_attempts = vars.number("PROXY_MAX_ATTEMPTS", 3, 1, 10) as u32;
        let rate_limits = vars.switch("RATE_LIMITS", true);
        if !rate_limits && environment == Environment::Production {
            vars.problem("RATE_LIMITS", "may not be off in production");
        }
        LimitSettings {
            rate_limits,
            max_credentials_per_user,
            proxy_max_body_bytes,
            proxy_max_attempts,
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{read_vars, ConfigError};

    /// The limits section of a deployment whose ENVIRONMENT is in `pairs` (production if
    /// not).
    fn parse(pairs: &[(&str, &str)]) -> Result<LimitSettings, Vec<ConfigError>> {
        let (limits, errors) = read_vars(pairs, |v| {
            let environment = Environment::parse(v);
            LimitSettings::parse(v, environment)
        });
        if errors.is_empty() {
            Ok(limits)
        } else {
            Err(errors)
        }
    }

    #[test]
    fn rate_limits_may_be_off_only_outside_production() {
        let errors = parse(&[("RATE_LIMITS", "off")]).err().unwrap();
        assert_eq!(errors[0].var, "RATE_LIMITS");
        let dev = parse(&[("RATE_LIMITS", "off"), ("ENVIRONMENT", "development")]).unwrap();
        assert!(!dev.rate_limits);
        let bad = parse(&[("RATE_LIMITS", "maybe")]).err().unwrap();
        assert_eq!(bad[0].var, "RATE_LIMITS");
        let limit = parse(&[("MAX_CREDENTIALS_PER_USER", "3")]).unwrap();
        assert_eq!(limit.max_credentials_per_user, 3);
    }
}
