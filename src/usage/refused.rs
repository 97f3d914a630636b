//! What happens when a provider refuses a user's key in use (a call through the proxy):
//! the credential takes the provider's verdict, unless it changed since it was read.

use serde_json::json;

use super::KeyUse;
use crate::audit::{Action, Facts, Origin};
use crate::credentials::Written;
use crate::domain::{Credential, CredentialStatus};
use crate::error::Error;

/// How a call's provider answered a key in use, as far as the key's health goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The key was refused (401/403): it is dead.
    Refused,
    /// The key has no quota left.
    QuotaExhausted,
}

impl KeyUse<'_> {
    /// A provider refused the user's key in use (or said it ran out): the credential
    /// takes that status, with its `credential.validated` failure event, unless the row
    /// changed since it was read (a rotation that landed meanwhile is not undone). Returns
    /// the id of the event written with the change, for the chainer to be told.
    pub async fn mark_in_use(
        &self,
        credential: &Credential,
        verdict: Verdict,
        detail: &str,
        origin: &Origin,
    ) -> Result<Option<String>, Error> {
        let (status, code) = match verdict {
            Verdict::Refused => (CredentialStatus::InvalidKey, "credential_invalid"),
            Verdict::QuotaExhausted => (CredentialStatus::QuotaExhausted, "quota_exhausted"),
        };
        let now = self.clock.now();
        // The row whole (the use read it without its model list), unless it changed since.
        let Some(mut c) = self.store.get(&credential.user_id, &credential.id).await? else {
            return Ok(None);
        };
        if c.version != credential.version {
            return Ok(None);
        }
        let from = c.status;
        c.status = status;
        c.status_detail = Some(detail.to_owned());
        c.consecutive_failures = c.consecutive_failures.saturating_add(1);
        c.last_validated_at = Some(now);
        c.updated_at = now;
        let mut facts = Facts::new(Action::CredentialValidated);
        facts.about(&c.id, Some(c.provider));
        facts.detail = Some(json!({"previous_status": from, "new_status": status, "in_use": true}));
        let event = facts.event(origin, &c.user_id, now, Some(code));
        match self.store.record_check(&c, Some(&event)).await? {
            Written::Done => Ok(Some(event.id)),
            // Changed or gone meanwhile: whatever landed is newer than this verdict.
            Written::Conflict | Written::Missing => Ok(None),
        }
    }
}
