//! How a key is sealed for its row and found again: accepting a new one (fingerprint →
//! duplicate → live check → seal → hint, the one sequence both adding and rotating use),
//! the fingerprints duplicates are found by, and opening a stored one.

use super::Credentials;
use crate::audit::{Caller, Facts};
use crate::config::Config;
use crate::crypto::{fingerprint, open, seal, Binding, MasterKeys, SecretKey};
use crate::domain::Sealed;
use crate::domain::{key_hint, Credential, CredentialId, CredentialParams, CredentialStatus};
use crate::domain::{ProviderId, UserId};
use crate::error::Error;
use crate::providers::{Accepted, Provider};

/// What a new key is being accepted for.
pub(crate) enum Purpose {
    /// A new credential: the user may hold at most `limit`.
    Add { limit: u32 },
    /// A new key (or destination) for the stored credential `id`.
    Replace,
}

/// A key offered for a row: which provider, which row (the seal binds it), where it is
/// used.
pub(crate) struct Candidate<'k> {
    pub provider: &'static dyn Provider,
    pub id: &'k CredentialId,
    pub params: &'k CredentialParams,
    pub key: &'k SecretKey,
}

/// A key that passed every check, sealed for its row and ready to be written.
pub(crate) struct AcceptedKey {
    /// What the row stores of the key.
    pub sealed: SealedKey,
    /// Under every master key version: what a duplicate is found by.
    pub prints: Vec<String>,
    /// What the provider said.
    pub accepted: Accepted,
}

/// What a duplicate is recognised by: the key, or for a keyless endpoint its URL.
pub(crate) fn fingerprint_material(key: &SecretKey, params: &CredentialParams) -> SecretKey {
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
pub(crate) fn key_prints(
    keys: &MasterKeys,
    user: &UserId,
    provider: ProviderId,
    key: &SecretKey,
    params: &CredentialParams,
) -> Vec<String> {
    fingerprints(keys, user, provider, &fingerprint_material(key, params))
}

/// What a row stores of its key.
pub(crate) struct SealedKey {
    /// `None` for a keyless endpoint.
    pub secret: Option<Sealed>,
    pub key_hint: Option<String>,
    /// Under the active master key version.
    pub fingerprint: Option<String>,
}

/// Seals `key` for the row `binding` names, under the active master key version.
pub(crate) fn seal_for_row(
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

/// The master keys, or 503 `not_configured`: nothing may be sealed or opened without one.
pub(crate) fn master_keys(config: &Config) -> Result<&MasterKeys, Error> {
    config
        .master_keys
        .as_ref()
        .map_err(|e| Error::not_configured(e.to_string()))
}

/// The stored key in the clear; `None` when it no longer decrypts (a master key version
/// removed, a tampered row), which `log` notes. A keyless credential has the empty key.
pub(crate) fn open_stored(
    keys: &MasterKeys,
    c: &Credential,
    log: &dyn Fn(&str),
) -> Option<SecretKey> {
    let Some(sealed) = &c.secret else {
        // No envelope: a keyless endpoint, or columns that no longer make one (shown as
        // needing reconfiguration when the row was read).
        return (c.status != CredentialStatus::NeedsReconfiguration)
            .then(|| SecretKey::new(String::new()));
    };
    match open(keys, &Binding::of(c), sealed) {
        Ok(key) => Some(key),
        Err(e) => {
            log(&format!("credential {} cannot be decrypted: {e}", c.id));
            None
        }
    }
}

impl Credentials<'_> {
    /// Accepts a candidate key: refused as a duplicate (or past the user's limit) before
    /// the provider is asked, then checked live, then sealed for its row. Nothing is
    /// written here.
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
        let keys = master_keys(self.config)?;
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
            .checks
            .check(caller, provider, params, key)
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
}
