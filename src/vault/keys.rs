//! Keys: accepting a new one (fingerprint → duplicate → live check → seal → hint, the one
//! sequence both adding and rotating use), checking one live, opening a stored one.

use super::{Caller, Vault};
use crate::audit::Facts;
use crate::crypto::{fingerprint, open, seal, Binding, MasterKeys, SecretKey};
use crate::domain::Sealed;
use crate::domain::{key_hint, Credential, CredentialId, CredentialParams, CredentialStatus};
use crate::domain::{ProviderId, UserId};
use crate::endpoint_guard::check_base_url;
use crate::error::Error;
use crate::limits::{LimitScope, Limits};
use crate::probe::{Failure, Prober};
use crate::providers::{self, Accepted, Provider, Target};

/// What a new key is being accepted for.
pub(super) enum Purpose {
    /// A new credential: the user may hold at most `limit`.
    Add { limit: u32 },
    /// A new key (or destination) for the stored credential `id`.
    Replace,
}

/// A key offered for a row: which provider, which row (the seal binds it), where it is
/// used.
pub(super) struct Candidate<'k> {
    pub provider: &'static dyn Provider,
    pub id: &'k CredentialId,
    pub params: &'k CredentialParams,
    pub key: &'k SecretKey,
}

/// A key that passed every check, sealed for its row and ready to be written.
pub(super) struct AcceptedKey {
    /// What the row stores of the key.
    pub sealed: SealedKey,
    /// Under every master key version: what a duplicate is found by.
    pub prints: Vec<String>,
    /// What the provider said.
    pub accepted: Accepted,
}

/// What a duplicate is recognised by: the key, or for a keyless endpoint its URL.
fn fingerprint_material(key: &SecretKey, params: &CredentialParams) -> SecretKey {
    if key.is_empty() {
        SecretKey::new(format!(
            "keyless:{}",
            params.base_url.as_deref().unwrap_or_default()
        ))
    } else {
        SecretKey::new(key.expose().to_owned())
    }
}

fn fingerprints(
    keys: &MasterKeys,
    user: &UserId,
    provider: ProviderId,
    material: &SecretKey,
) -> Vec<String> {
    keys.versions()
        .filter_map(|v| fingerprint(keys, v, user, provider, material))
        .collect()
}

/// The fingerprints of `key` (at `params`) for `user` under every master key version:
/// what its duplicates are found by.
pub(super) fn key_prints(
    keys: &MasterKeys,
    user: &UserId,
    provider: ProviderId,
    key: &SecretKey,
    params: &CredentialParams,
) -> Vec<String> {
    fingerprints(keys, user, provider, &fingerprint_material(key, params))
}

/// What a row stores of its key.
pub(super) struct SealedKey {
    /// `None` for a keyless endpoint.
    pub secret: Option<Sealed>,
    pub key_hint: Option<String>,
    /// Under the active master key version.
    pub fingerprint: Option<String>,
}

/// Seals `key` for the row `binding` names, under the active master key version.
pub(super) fn seal_for_row(
    keys: &MasterKeys,
    binding: &Binding<'_>,
    key: &SecretKey,
    params: &CredentialParams,
) -> Result<SealedKey, Error> {
    let secret = if key.is_empty() {
        None
    } else {
        Some(seal(keys, binding, key).map_err(|e| Error::internal(format!("sealing: {e}")))?)
    };
    Ok(SealedKey {
        key_hint: secret.as_ref().map(|_| key_hint(key.expose())),
        secret,
        fingerprint: fingerprint(
            keys,
            keys.active(),
            binding.user,
            binding.provider,
            &fingerprint_material(key, params),
        ),
    })
}

/// How a probe's refusal is recorded on a row.
pub(super) fn status_of(f: &Failure) -> CredentialStatus {
    match f {
        Failure::InvalidKey(_) => CredentialStatus::InvalidKey,
        Failure::InsufficientScope(_) => CredentialStatus::InsufficientScope,
        Failure::QuotaExhausted(_) => CredentialStatus::QuotaExhausted,
        Failure::RateLimited { .. } => CredentialStatus::RateLimited,
        Failure::Unreachable(_) => CredentialStatus::Unreachable,
        Failure::ProviderError(_) => CredentialStatus::ProviderError,
    }
}

impl Vault<'_> {
    pub(super) fn master_keys(&self) -> Result<&MasterKeys, Error> {
        self.config
            .master_keys
            .as_ref()
            .map_err(|e| Error::not_configured(e.to_string()))
    }

    /// Accepts a candidate key: refused as a duplicate (or past
    /// the user's limit) before the provider is asked, then checked live, then sealed
    /// for its row. Nothing is written here.
    pub(super) async fn accept_key(
        &self,
        caller: &Caller<'_>,
        candidate: Candidate<'_>,
        purpose: Purpose,
        facts: &mut Facts,
    ) -> Result<AcceptedKey, Error> {
        let Candidate {
            provider,
            id,
            params,
            key,
        } = candidate;
        let info = provider.info();
        let keys = self.master_keys()?;
        let prints = key_prints(keys, caller.user, info.id, key, params);
        // Checked again, atomically, when the row is written.
        let occupied = self.store.occupancy(caller.user, &prints).await?;
        match purpose {
            Purpose::Add { limit } => {
                if let Some(existing) = occupied.duplicate {
                    facts.about(&existing, None);
                    return Err(Error::Duplicate(existing));
                }
                if occupied.count >= limit {
                    return Err(Error::LimitReached(limit));
                }
            }
            Purpose::Replace => {
                if let Some(existing) = occupied.duplicate.filter(|e| e != id) {
                    return Err(Error::Duplicate(existing));
                }
            }
        }
        let accepted = self
            .live_check(caller, provider, params, key)
            .await?
            .map_err(|failure| Error::Refused {
                provider: info.id,
                failure,
            })?;
        Ok(AcceptedKey {
            sealed: seal_for_row(keys, &Binding::new(caller.user, id, info.id), key, params)?,
            prints,
            accepted,
        })
    }

    /// One live check of `key` at `params`: the endpoint guard, then the vault's rate
    /// limits (refused with 429 before any provider is contacted), then the provider,
    /// whose every word comes back cleaned (`providers::check`). The outer error is a
    /// refusal by the vault; the inner one is the provider's answer.
    pub(super) async fn live_check(
        &self,
        caller: &Caller<'_>,
        provider: &'static dyn Provider,
        params: &CredentialParams,
        key: &SecretKey,
    ) -> Result<Result<Accepted, Failure>, Error> {
        if let Some(url) = &params.base_url {
            if let Err(e) = check_base_url(url, self.config.allow_private_base_urls) {
                return Ok(Err(Failure::Unreachable(format!(
                    "The base_url is not allowed: it {e}"
                ))));
            }
        }
        self.limit_live_check(caller).await?;
        Ok(self.check_with(&self.prober(), provider, params, key).await)
    }

    /// A prober with the configured validation deadline and per-attempt timeout.
    pub(super) fn prober(&self) -> Prober<'_> {
        Prober::new(
            self.http,
            self.clock,
            self.jitter,
            self.config.validation_deadline_ms,
            self.config.probe_attempt_timeout_ms,
        )
    }

    /// The provider's word on `key` at `params` through `prober`, after the endpoint
    /// guard; counted against no caller (the scheduled sweep's checks).
    pub(super) async fn check_with(
        &self,
        prober: &Prober<'_>,
        provider: &'static dyn Provider,
        params: &CredentialParams,
        key: &SecretKey,
    ) -> Result<Accepted, Failure> {
        if let Some(url) = &params.base_url {
            if let Err(e) = check_base_url(url, self.config.allow_private_base_urls) {
                return Err(Failure::Unreachable(format!(
                    "The base_url is not allowed: it {e}"
                )));
            }
        }
        let target = Target {
            bases: self.config.endpoints(provider.info().id),
            params,
        };
        providers::check(provider, prober, &target, key).await
    }

    /// The vault's limits, as this deployment has them.
    pub(super) fn limits(&self) -> Limits<'_> {
        Limits {
            limiter: self.limiter,
            on: self.config.rate_limits,
        }
    }

    /// Counts one live provider check against the caller's network and user, and refuses
    /// it when either is over its limit.
    pub(super) async fn limit_live_check(&self, caller: &Caller<'_>) -> Result<(), Error> {
        Ok(self
            .limits()
            .count([
                (LimitScope::ClientAddress, caller.network),
                (LimitScope::User, caller.user.as_str()),
            ])
            .await?)
    }

    /// The stored key in the clear; `None` when it no longer decrypts (a master key
    /// version removed, a tampered row). A keyless credential has the empty key.
    pub(super) fn open_key(&self, c: &Credential) -> Result<Option<SecretKey>, Error> {
        let keys = self.master_keys()?;
        let Some(sealed) = &c.secret else {
            // No envelope: a keyless endpoint, or columns that no longer make one (shown
            // as needing reconfiguration when the row was read).
            return Ok((c.status != CredentialStatus::NeedsReconfiguration)
                .then(|| SecretKey::new(String::new())));
        };
        match open(keys, &Binding::of(c), sealed) {
            Ok(key) => Ok(Some(key)),
            Err(e) => {
                (self.log)(&format!("credential {} cannot be decrypted: {e}", c.id));
                Ok(None)
            }
        }
    }
}

/// What a master-key rewrap did to one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rewrap {
    /// Sealed again under the active version (with its `master_key.rotated` event).
    Done,
    /// The row no longer decrypts under any configured version: left as it is.
    Unreadable,
    /// Changed or gone since it was read (a rotation by its user seals under the active
    /// version anyway), or keyless: nothing to do.
    Moved,
    /// Already under the active version (another step of the job, or its user, sealed it
    /// meanwhile): left alone, with no event.
    Current,
}

impl Vault<'_> {
    /// Seals `read`'s key again under the active master key version, with a fresh
    /// fingerprint, through the version-conditional write; what is written is opened back
    /// first, so a row is never left under a key that cannot open it.
    pub async fn rewrap(
        &self,
        read: &Credential,
        origin: &crate::audit::Origin,
    ) -> Result<Rewrap, Error> {
        let keys = self.master_keys()?;
        let Some(sealed) = &read.secret else {
            return Ok(Rewrap::Moved);
        };
        if sealed.key_version == keys.active() {
            return Ok(Rewrap::Current);
        }
        let binding = Binding::of(read);
        let Ok(key) = open(keys, &binding, sealed) else {
            return Ok(Rewrap::Unreadable);
        };
        let fresh =
            seal(keys, &binding, &key).map_err(|e| Error::internal(format!("sealing: {e}")))?;
        if !open(keys, &binding, &fresh).is_ok_and(|back| back.expose() == key.expose()) {
            return Err(Error::internal("a rewrapped key did not open back"));
        }
        let (from, to) = (sealed.key_version.get(), fresh.key_version.get());
        let mut next = read.clone();
        next.fingerprint = fingerprint(
            keys,
            keys.active(),
            &read.user_id,
            read.provider,
            &fingerprint_material(&key, &read.params),
        );
        next.secret = Some(fresh);
        next.updated_at = self.clock.now();
        let mut facts = Facts::new(crate::audit::Action::MasterKeyRotated);
        facts.about(&read.id, Some(read.provider));
        facts.detail = Some(serde_json::json!({"from_version": from, "to_version": to}));
        let event = facts.event(origin, &read.user_id, next.updated_at, None);
        Ok(match self.store.update(&next, &event).await? {
            crate::vault::Written::Done => Rewrap::Done,
            _ => Rewrap::Moved,
        })
    }
}
