//! The user's default credential and model per capability.

use serde_json::json;

use super::Credentials;
use crate::audit::{Caller, Facts};
use crate::domain::{Capability, CredentialId, Preference, UserId};
use crate::error::{clip, Error, FieldError};
use crate::providers;

impl Credentials<'_> {
    pub async fn preferences(&self, user: &UserId) -> Result<Vec<Preference>, Error> {
        Ok(self.store.preferences(user).await?)
    }

    /// Makes the caller's credential `id` (and `model`, when given) the default for
    /// `capability`: the credential must be the caller's and offer the capability, and the
    /// model must be one it lists for that capability when the list is known.
    pub async fn choose(
        &self,
        caller: &Caller<'_>,
        capability: Capability,
        id: CredentialId,
        model: Option<String>,
        facts: &mut Facts,
    ) -> Result<Preference, Error> {
        facts.about(&id, None);
        let credential = self
            .store
            .get(caller.user, &id)
            .await?
            .ok_or(Error::NotFound(Some("No such credential.")))?;
        facts.provider = Some(credential.provider);
        let info = providers::find(credential.provider.as_str())
            .ok_or_else(|| Error::internal(format!("unknown provider {}", credential.provider)))?
            .info();
        if !info.capabilities.contains(&capability) {
            return Err(Error::Invalid(vec![FieldError::new(
                "credential_id",
                format!("{} does not offer {}", info.name, capability.as_str()),
            )]));
        }
        if let (Some(m), Some(models)) = (&model, &credential.models) {
            let known = models.iter().find(|x| &x.id == m);
            let fits = known
                .is_some_and(|x| x.capabilities.is_empty() || x.capabilities.contains(&capability));
            if !fits {
                return Err(Error::Invalid(vec![FieldError::new(
                    "model",
                    format!(
                        "{} offers no {} model '{}' to this key",
                        info.name,
                        capability.as_str(),
                        clip(m, 60)
                    ),
                )]));
            }
        }
        let preference = Preference {
            capability,
            credential_id: id,
            provider: credential.provider,
            model,
        };
        facts.detail = Some(json!({"capability": capability.as_str(), "model": preference.model}));
        let event = facts.event(caller.origin, caller.user, self.clock.now(), None);
        if !self
            .store
            .set_preference(caller.user, &preference, &event)
            .await?
        {
            // Deleted by a concurrent request since it was read.
            return Err(Error::NotFound(Some("No such credential.")));
        }
        facts.committed = Some(event.id);
        Ok(preference)
    }
}
