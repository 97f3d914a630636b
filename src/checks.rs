//! Checking a key live with its provider: the endpoint guard first, then the vault's own
//! limits on live checks (refused with 429 before any provider is contacted), then the
//! provider through the prober and its deadline, whose every word comes back cleaned.
//! Adding, rotating, re-checking, an import that validates and the sweep all check keys
//! here.

use crate::audit::Caller;
use crate::config::Config;
use crate::crypto::SecretKey;
use crate::domain::{Clock, CredentialParams};
use crate::endpoint_guard::check_base_url;
use crate::error::Error;
use crate::http::HttpClient;
use crate::limits::{LimitScope, Limits, RateLimiter};
use crate::probe::{Failure, Jitter, Prober};
use crate::providers::{self, Accepted, Provider, Target};

/// What a live check needs: the settings (deadlines, endpoints, the guard, the limits'
/// switch), the providers' HTTP, time, jitter and the limiter.
#[derive(Clone, Copy)]
pub struct LiveChecks<'a> {
    pub config: &'a Config,
    pub http: &'a dyn HttpClient,
    pub clock: &'a dyn Clock,
    pub jitter: &'a dyn Jitter,
    pub limiter: &'a dyn RateLimiter,
}

impl<'a> LiveChecks<'a> {
    /// The vault's limits, as this deployment has them.
    pub fn limits(&self) -> Limits<'a> {
        Limits {
            limiter: self.limiter,
            on: self.config.rate_limits,
        }
    }

    /// Counts one live provider check against the caller's network and user, and refuses
    /// it when either is over its limit.
    pub async fn count(&self, caller: &Caller<'_>) -> Result<(), Error> {
        Ok(self
            .limits()
            .count([
                (LimitScope::ClientAddress, caller.network),
                (LimitScope::User, caller.user.as_str()),
            ])
            .await?)
    }

    /// One live check of `key` at `params` for `caller`: the endpoint guard, the limits,
    /// then the provider. The outer error is a refusal by the vault; the inner one is the
    /// provider's answer.
    pub async fn check(
        &self,
        caller: &Caller<'_>,
        provider: &'static dyn Provider,
        params: &CredentialParams,
        key: &SecretKey,
    ) -> Result<Result<Accepted, Failure>, Error> {
        if let Err(refused) = self.guard(params) {
            return Ok(Err(refused));
        }
        self.count(caller).await?;
        Ok(self.check_with(&self.prober(), provider, params, key).await)
    }

    /// A prober with the configured validation deadline and per-attempt timeout.
    pub fn prober(&self) -> Prober<'a> {
        Prober::new(
            self.http,
            self.clock,
            self.jitter,
            self.config.validation_deadline_ms,
            self.config.probe_attempt_timeout_ms,
        )
    }

    /// The provider's word on `key` at `params` through `prober`, after the endpoint
    /// guard; counted against no caller (the sweep and an import count for themselves).
    pub async fn check_with(
        &self,
        prober: &Prober<'_>,
        provider: &'static dyn Provider,
        params: &CredentialParams,
        key: &SecretKey,
    ) -> Result<Accepted, Failure> {
        self.guard(params)?;
        let target = Target {
            bases: self.config.endpoints(provider.info().id),
            params,
        };
        providers::check(provider, prober, &target, key).await
    }

    /// A user's `base_url` must pass the endpoint guard before anything is sent there.
    fn guard(&self, params: &CredentialParams) -> Result<(), Failure> {
        match &params.base_url {
            Some(url) => check_base_url(url, self.config.allow_private_base_urls)
                .map(|_| ())
                .map_err(|e| Failure::Unreachable(format!("The base_url is not allowed: it {e}"))),
            None => Ok(()),
        }
    }
}
