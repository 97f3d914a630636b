//! The operations on a user's credentials: load an owned one, list, add, change or rotate,
//! re-check, delete, and the defaults per capability. Every write is conditional on the
//! row version it read and carries its audit event into the same transaction.

mod commands;
pub(crate) mod keys;
mod preferences;
pub(crate) mod rows;
mod store;

pub use commands::{CredentialPatch, NewCredential};
pub use store::{CredentialStore, Inserted, Occupancy, Written};

use serde_json::json;

use crate::audit::{Action, AuditEvent, Caller, Facts, Outcome};
use crate::checks::LiveChecks;
use crate::config::Config;
use crate::domain::{Clock, Credential, CredentialId, ProviderId, StoreError};
use crate::error::Error;
use keys::{master_keys, open_stored, AcceptedKey, Candidate, Purpose};
use rows::{
    apply_accepted, check_model, fresh_id, new_row, provider_of, same_key, status_change, Checked,
};

/// How often a conditional write is tried again after a concurrent change it may safely
/// build on (a re-check's status, a label) before the operation gives up with 409.
const WRITE_ATTEMPTS: usize = 3;

/// A user's credentials: what an operation on them needs (the settings, the store, live
/// checks, the time, a log for notes that are not errors).
pub struct Credentials<'a> {
    pub config: &'a Config,
    pub store: &'a dyn CredentialStore,
    pub checks: LiveChecks<'a>,
    pub clock: &'a dyn Clock,
    /// Where notes go that are not errors (a key that no longer decrypts). Never a secret.
    pub log: &'a dyn Fn(&str),
}

impl Credentials<'_> {
    fn new_event(&self, caller: &Caller<'_>, facts: &Facts) -> AuditEvent {
        facts.event(caller.origin, caller.user, self.clock.now(), None)
    }

    /// The caller's credential `raw_id`; another user's is as missing as one that never
    /// was (404).
    pub async fn owned(
        &self,
        caller: &Caller<'_>,
        raw_id: &str,
        facts: &mut Facts,
    ) -> Result<Credential, Error> {
        let id = CredentialId::parse(raw_id).ok_or(Error::NotFound(None))?;
        facts.about(&id, None);
        let credential = self
            .store
            .get(caller.user, &id)
            .await?
            .ok_or(Error::NotFound(None))?;
        facts.provider = Some(credential.provider);
        Ok(credential)
    }

    /// The row as it is now, after a conditional write found it changed; 404 if it is gone.
    async fn reload(&self, c: &Credential) -> Result<Credential, Error> {
        self.store
            .get(&c.user_id, &c.id)
            .await?
            .ok_or(Error::NotFound(None))
    }

    /// The caller's credential `raw_id` for showing it: [`owned`](Self::owned), with the
    /// viewing's event (a success, or a `not_found` failure) written in the same round
    /// trip as the read.
    pub async fn view(
        &self,
        caller: &Caller<'_>,
        raw_id: &str,
        facts: &mut Facts,
    ) -> Result<Credential, Error> {
        let id = CredentialId::parse(raw_id).ok_or(Error::NotFound(None))?;
        facts.about(&id, None);
        let seen = self.new_event(caller, facts);
        // The same event (one id: only one of the two is written), as the miss it may be.
        let mut missing = seen.clone();
        missing.outcome = Outcome::Failure;
        missing.reason = Some(Error::NotFound(None).code().to_owned());
        let found = self.store.view(caller.user, &id, &seen, &missing).await;
        let found = committed_read(found, facts, seen.id)?;
        let credential = found.ok_or(Error::NotFound(None))?;
        facts.provider = Some(credential.provider);
        Ok(credential)
    }

    /// The caller's credentials, newest first (without their model lists), the listing's
    /// event written in the same round trip.
    pub async fn list(
        &self,
        caller: &Caller<'_>,
        provider: Option<ProviderId>,
        facts: &mut Facts,
    ) -> Result<Vec<Credential>, Error> {
        facts.provider = provider.or(facts.provider);
        let seen = self.new_event(caller, facts);
        let rows = self.store.list(caller.user, provider, &seen).await;
        committed_read(rows, facts, seen.id)
    }

    /// Adds a key: checked live with its provider before anything is stored, sealed for its
    /// row, stored with its event unless a parallel request stored the same key (or the
    /// last free slot) first.
    pub async fn add(
        &self,
        caller: &Caller<'_>,
        new: NewCredential,
        facts: &mut Facts,
    ) -> Result<Credential, Error> {
        let info = new.provider.info();
        facts.provider = Some(info.id);
        let limit = self.config.max_credentials_per_user;
        let id = fresh_id()?;
        let AcceptedKey {
            sealed,
            prints,
            accepted,
        } = self
            .accept_key(
                caller,
                Candidate {
                    provider: new.provider,
                    id: &id,
                    params: &new.params,
                    key: &new.api_key,
                },
                Purpose::Add { limit },
                facts,
            )
            .await?;
        if let Some(m) = &new.model {
            check_model(new.provider, m, accepted.models.as_deref())?;
        }
        let now = self.clock.now();
        let mut credential = new_row(id, caller.user, &new, sealed, now);
        apply_accepted(&mut credential, accepted, now);
        facts.about(&credential.id, None);
        let event = self.new_event(caller, facts);
        match self
            .store
            .insert(&credential, &prints, limit, &event)
            .await?
        {
            Inserted::Done => {
                facts.committed = Some(event.id);
                Ok(credential)
            }
            Inserted::Duplicate(existing) => {
                facts.about(&existing, None);
                Err(Error::Duplicate(existing))
            }
            Inserted::LimitReached => Err(Error::LimitReached(limit)),
        }
    }

    /// Changes `read` (the caller's credential as loaded) by `patch`. A new key or
    /// destination is checked first: if it fails, nothing changes. The write is
    /// conditional on the version read: a change that landed meanwhile is built on when
    /// it only touched the status or the label; another key is never overwritten (409).
    pub async fn change(
        &self,
        caller: &Caller<'_>,
        read: Credential,
        patch: CredentialPatch,
        facts: &mut Facts,
    ) -> Result<Credential, Error> {
        let provider = provider_of(&read)?;
        let mut params = read.params.clone();
        let moved = (patch.region.is_some() && patch.region != params.region)
            || (patch.base_url.is_some() && patch.base_url != params.base_url);
        if patch.region.is_some() {
            params.region = patch.region;
        }
        if patch.base_url.is_some() {
            params.base_url = patch.base_url;
        }
        // The stored key is never sent to a destination the user has just typed in.
        if moved && patch.api_key.is_none() && read.secret.is_some() {
            return Err(Error::SecretRequired);
        }

        let mut changed = Vec::new();
        let rekey = if patch.api_key.is_some() || moved {
            let key = patch
                .api_key
                .unwrap_or_else(|| crate::crypto::SecretKey::new(String::new()));
            let accepted = self
                .accept_key(
                    caller,
                    Candidate {
                        provider,
                        id: &read.id,
                        params: &params,
                        key: &key,
                    },
                    Purpose::Replace,
                    facts,
                )
                .await?;
            if accepted.sealed.secret.is_some() {
                changed.push("api_key");
            }
            if moved {
                changed.push(if provider.info().has_field("region") {
                    "region"
                } else {
                    "base_url"
                });
            }
            Some((accepted, params))
        } else {
            None
        };
        if patch.label.is_some() {
            changed.push("label");
        }
        if patch.model.is_some() {
            changed.push("model");
        }
        if patch.priority.is_some() {
            changed.push("priority");
        }
        if patch.budget.is_some() {
            changed.push("budget");
        }
        // What changed names the event: a rotation, a model chosen, or an update.
        let action = if changed.contains(&"api_key") {
            Action::CredentialRotated
        } else if changed == ["model"] {
            Action::ModelSelected
        } else {
            Action::CredentialUpdated
        };
        // The event says what changed only once it has: a change that fails is audited as
        // a failed update.
        let mut done = facts.clone();
        done.action = action;
        done.detail = Some(json!({ "changed": changed }));

        let now = self.clock.now();
        let mut current = read.clone();
        for _ in 0..WRITE_ATTEMPTS {
            let mut next = current.clone();
            if let Some((r, params)) = &rekey {
                if let Some(secret) = &r.sealed.secret {
                    next.secret = Some(secret.clone());
                    next.key_hint = r.sealed.key_hint.clone();
                }
                next.fingerprint = r.sealed.fingerprint.clone();
                next.params = params.clone();
                apply_accepted(&mut next, r.accepted.clone(), now);
            }
            if let Some(label) = &patch.label {
                next.label = label.clone();
            }
            if let Some(priority) = patch.priority {
                next.priority = priority;
            }
            if let Some(budget) = &patch.budget {
                next.budget = budget.clone();
            }
            if let Some(model) = &patch.model {
                if let Some(m) = model {
                    check_model(provider, m, next.models.as_deref())?;
                }
                next.model = model.clone();
            }
            next.updated_at = now;
            // Its user's change takes it out of the import batch that created it: a
            // rollback of the batch no longer removes it.
            next.import_batch = None;
            // Its user has touched it: the sweep checks it on the usual schedule again.
            next.dead_checks = 0;
            // A new key can change the status (a dead key replaced): the event says so,
            // and the key-health webhook follows from it.
            let mut detail = json!({ "changed": changed });
            if next.status != current.status {
                if let Some(change) = status_change(&current, &next).as_object() {
                    detail
                        .as_object_mut()
                        .into_iter()
                        .for_each(|d| d.extend(change.clone()));
                }
            }
            done.detail = Some(detail);
            let event = self.new_event(caller, &done);
            match self.store.update(&next, &event).await {
                Ok(Written::Done) => {
                    done.committed = Some(event.id);
                    *facts = done;
                    next.version += 1;
                    return Ok(next);
                }
                Ok(Written::Missing) => return Err(Error::NotFound(None)),
                Ok(Written::Conflict) => {
                    current = self.reload(&read).await?;
                    if rekey.is_some() && !same_key(&read, &current) {
                        return Err(Error::conflict(
                            "The key was changed by another request meanwhile; this change was not made.",
                        ));
                    }
                }
                // The unique index: a parallel request stored this key elsewhere meanwhile.
                Err(StoreError::Conflict(cause)) if rekey.is_some() => {
                    let prints: Vec<String> = next.fingerprint.iter().cloned().collect();
                    let holder = self.store.occupancy(caller.user, &prints).await?.duplicate;
                    return Err(match holder.filter(|e| *e != read.id) {
                        Some(existing) => Error::Duplicate(existing),
                        None => Error::Conflict {
                            detail: "A concurrent change got there first.",
                            cause: Some(cause),
                        },
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::conflict(
            "The credential kept changing while this request tried to save; try again.",
        ))
    }

    /// Re-checks `read`'s stored key now and records what the provider says, in the check
    /// columns only: the key is never written back. A dead key is a result, not an error:
    /// the row's status says so (and the event is a failure). If the key was rotated (or
    /// moved) while the check ran, the result is about a key that is no longer stored: it
    /// is not written, and the answer is 409.
    pub async fn recheck(
        &self,
        caller: &Caller<'_>,
        read: Credential,
        facts: &mut Facts,
    ) -> Result<Credential, Error> {
        let provider = provider_of(&read)?;
        let keys = master_keys(self.config)?;
        let outcome = match open_stored(keys, &read, self.log) {
            Some(key) => match self
                .checks
                .check(caller, provider, &read.params, &key)
                .await?
            {
                Ok(accepted) => Checked::Passed(accepted),
                Err(f) => Checked::refused(&f),
            },
            None => Checked::undecryptable(),
        };
        if let Some(reason) = outcome.failure() {
            facts.failure = Some(reason);
        }
        let now = self.clock.now();
        let mut current = read.clone();
        for _ in 0..WRITE_ATTEMPTS {
            let mut next = current.clone();
            outcome.apply(&mut next, now);
            // Its user asked: a dead key is checked on the usual schedule again.
            next.dead_checks = 0;
            facts.detail = Some(status_change(&current, &next));
            let event = self.new_event(caller, facts);
            match self.store.record_check(&next, Some(&event)).await? {
                Written::Done => {
                    facts.committed = Some(event.id);
                    next.version += 1;
                    return Ok(next);
                }
                Written::Missing => return Err(Error::NotFound(None)),
                Written::Conflict => {
                    current = self.reload(&read).await?;
                    if !same_key(&read, &current) {
                        return Err(Error::conflict(
                            "The key was replaced while it was being checked; the new key was checked when it was saved.",
                        ));
                    }
                }
            }
        }
        Err(Error::conflict(
            "The credential kept changing while it was being checked; try again.",
        ))
    }

    /// Removes the caller's credential `raw_id`, its ciphertext and the preferences that
    /// pointed at it, with its event.
    pub async fn delete(
        &self,
        caller: &Caller<'_>,
        raw_id: &str,
        facts: &mut Facts,
    ) -> Result<(), Error> {
        let id = CredentialId::parse(raw_id).ok_or(Error::NotFound(None))?;
        facts.about(&id, None);
        let event = self.new_event(caller, facts);
        let provider = self
            .store
            .delete(caller.user, &id, &event)
            .await?
            .ok_or(Error::NotFound(None))?;
        facts.provider = Some(provider);
        facts.committed = Some(event.id);
        Ok(())
    }
}

/// A read that writes its own event (list, view): the event is written whenever the read's
/// transaction ran, which a row that could not be read (`Corrupt`) does not undo, so the
/// router must not record a second one.
fn committed_read<T>(
    read: Result<T, StoreError>,
    facts: &mut Facts,
    event_id: String,
) -> Result<T, Error> {
    match read {
        Ok(v) => {
            facts.committed = Some(event_id);
            Ok(v)
        }
        Err(e @ StoreError::Corrupt(_)) => {
            facts.committed = Some(event_id);
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod committed_read_tests {
    use super::*;

    #[test]
    fn a_read_whose_transaction_ran_keeps_its_event_even_when_a_row_is_unreadable() {
        let mut facts = Facts::new(Action::CredentialViewed);
        let corrupt: Result<(), _> = Err(StoreError::Corrupt("credential c_1: provider".into()));
        assert!(committed_read(corrupt, &mut facts, "ev_1".into()).is_err());
        assert_eq!(facts.committed.as_deref(), Some("ev_1"), "no second event");

        let mut facts = Facts::new(Action::CredentialViewed);
        let down: Result<(), _> = Err(StoreError::Unavailable("D1 down".into()));
        assert!(committed_read(down, &mut facts, "ev_2".into()).is_err());
        assert_eq!(
            facts.committed, None,
            "nothing was written: the router records it"
        );

        let mut facts = Facts::new(Action::CredentialViewed);
        assert!(committed_read(Ok(()), &mut facts, "ev_3".into()).is_ok());
        assert_eq!(facts.committed.as_deref(), Some("ev_3"));
    }
}
