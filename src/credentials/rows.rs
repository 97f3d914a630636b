//! A credential row as the operations build and change it: a new row (the one full
//! `Credential` literal), what a check's result writes on it, and the re-check verdict
//! that a user's re-check and the scheduled sweep both record.

use serde_json::json;

use super::keys::SealedKey;
use super::NewCredential;
use crate::crypto::random_bytes;
use crate::domain::{Credential, CredentialId, CredentialStatus, Model, Timestamp, UserId};
use crate::error::{clip, Error, FieldError};
use crate::probe::Failure;
use crate::providers::{self, Accepted, Provider};

/// A new credential's id, from the CSPRNG.
pub(crate) fn fresh_id() -> Result<CredentialId, Error> {
    Ok(CredentialId::from_random(
        random_bytes().map_err(Error::internal)?,
    ))
}

/// A new row holding `user`'s key `new`, sealed for `id` as `sealed`: `valid`, with nothing
/// yet learned from the provider (a check's result goes on top with [`apply_accepted`]).
pub(crate) fn new_row(
    id: CredentialId,
    user: &UserId,
    new: &NewCredential,
    sealed: SealedKey,
    now: Timestamp,
) -> Credential {
    Credential {
        id,
        user_id: user.clone(),
        provider: new.provider.info().id,
        label: new.label.clone(),
        key_hint: sealed.key_hint,
        secret: sealed.secret,
        fingerprint: sealed.fingerprint,
        params: new.params.clone(),
        model: new.model.clone(),
        status: CredentialStatus::Valid,
        status_detail: None,
        warnings: Vec::new(),
        quota: None,
        models: None,
        models_fetched_at: None,
        consecutive_failures: 0,
        dead_checks: 0,
        last_validated_at: None,
        priority: 0,
        cooldown: None,
        budget: None,
        last_used_at: None,
        revalidation_queued_at: None,
        import_batch: None,
        created_at: now,
        updated_at: now,
        version: 0,
    }
}

/// Records a successful check on the row.
pub(crate) fn apply_accepted(c: &mut Credential, accepted: Accepted, now: Timestamp) {
    c.status = CredentialStatus::Valid;
    c.status_detail = None;
    c.warnings = accepted.warnings;
    c.quota = accepted.quota.or(c.quota.take());
    if let Some(models) = accepted.models {
        c.models = Some(models);
        c.models_fetched_at = Some(now);
    }
    c.consecutive_failures = 0;
    c.dead_checks = 0;
    // A key that works is no longer cooling down.
    c.cooldown = None;
    c.last_validated_at = Some(now);
    c.updated_at = now;
}

/// Records a check that did not pass on the row.
pub(crate) fn apply_refusal(
    c: &mut Credential,
    status: CredentialStatus,
    detail: &str,
    now: Timestamp,
) {
    c.status = status;
    c.status_detail = Some(detail.to_owned());
    c.consecutive_failures += 1;
    c.last_validated_at = Some(now);
    c.updated_at = now;
}

/// What a check's event says of the status: before, after and, for a spent key, when its
/// quota resets (where the provider says).
pub(crate) fn status_change(before: &Credential, after: &Credential) -> serde_json::Value {
    let mut detail = json!({
        "previous_status": before.status.as_str(),
        "new_status": after.status.as_str(),
    });
    if after.status == CredentialStatus::QuotaExhausted {
        if let Some(at) = after.quota.as_ref().and_then(|q| q.resets_at.clone()) {
            detail["resets_at"] = json!(at);
        }
    }
    detail
}

/// A chosen model must be one the provider lists for this key, when the list is known.
pub(crate) fn check_model(
    provider: &'static dyn Provider,
    model: &str,
    known: Option<&[Model]>,
) -> Result<(), Error> {
    match known {
        Some(models) if !models.iter().any(|m| m.id == model) => {
            Err(Error::Invalid(vec![FieldError::new(
                "model",
                format!(
                    "{} does not offer '{}' to this key",
                    provider.info().name,
                    clip(model, 60)
                ),
            )]))
        }
        _ => Ok(()),
    }
}

/// Whether `now` still holds the key (and destination) that `then` held.
pub(super) fn same_key(then: &Credential, now: &Credential) -> bool {
    then.fingerprint == now.fingerprint && then.params == now.params && then.secret == now.secret
}

pub(crate) fn provider_of(c: &Credential) -> Result<&'static dyn Provider, Error> {
    providers::find(c.provider.as_str())
        .ok_or_else(|| Error::internal(format!("unknown provider {}", c.provider)))
}

/// How a probe's refusal is recorded on a row.
pub(crate) fn status_of(f: &Failure) -> CredentialStatus {
    match f {
        Failure::InvalidKey(_) => CredentialStatus::InvalidKey,
        Failure::InsufficientScope(_) => CredentialStatus::InsufficientScope,
        Failure::QuotaExhausted(_) => CredentialStatus::QuotaExhausted,
        Failure::RateLimited { .. } => CredentialStatus::RateLimited,
        Failure::Unreachable(_) => CredentialStatus::Unreachable,
        Failure::ProviderError(_) => CredentialStatus::ProviderError,
    }
}

/// What a re-check of a stored key found, as a user's re-check and the sweep both record
/// it: the provider's acceptance, or the status, detail and audit reason of a key that
/// did not pass.
#[derive(Clone)]
pub(crate) enum Checked {
    Passed(Accepted),
    Failed {
        status: CredentialStatus,
        detail: String,
        reason: &'static str,
    },
}

impl Checked {
    /// The provider refused the key (or could not say).
    pub(crate) fn refused(f: &Failure) -> Self {
        Checked::Failed {
            status: status_of(f),
            detail: f.message().to_owned(),
            reason: f.code(),
        }
    }

    /// The stored key no longer decrypts.
    pub(crate) fn undecryptable() -> Self {
        Checked::Failed {
            status: CredentialStatus::NeedsReconfiguration,
            detail: "The stored key cannot be decrypted; enter it again.".to_owned(),
            reason: "decryption_failed",
        }
    }

    /// The audit reason of a key that did not pass.
    pub(crate) fn failure(&self) -> Option<&'static str> {
        match self {
            Checked::Passed(_) => None,
            Checked::Failed { reason, .. } => Some(reason),
        }
    }

    /// Writes the verdict on the row, at `now`.
    pub(crate) fn apply(&self, c: &mut Credential, now: Timestamp) {
        match self {
            Checked::Passed(accepted) => apply_accepted(c, accepted.clone(), now),
            Checked::Failed { status, detail, .. } => apply_refusal(c, *status, detail, now),
        }
    }
}
