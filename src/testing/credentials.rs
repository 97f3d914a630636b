//! The credential store (`credentials::CredentialStore`) in memory.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use async_trait::async_trait;

use crate::audit::{Anchor, AuditEvent, Sealer};
use crate::credentials::{CredentialStore, Inserted, Occupancy, Written};
use crate::domain::StoreError;
use crate::domain::{
    Capability, Credential, CredentialId, Preference, ProviderId, Timestamp, UserId,
};

use super::*;

/// A change another request lands between a read and a write.
pub(crate) type Race = Box<dyn FnOnce(&mut Vec<Credential>)>;

/// Credentials in a vector, with the same per-user scoping, versions and conditional
/// writes as the D1 store.
#[derive(Default)]
pub(crate) struct MemoryStore {
    pub rows: RefCell<Vec<Credential>>,
    pub prefs: RefCell<Vec<(UserId, Preference)>>,
    pub down: Cell<bool>,
    pub outbox: Rc<MemoryOutbox>,
    /// Runs once, just before the next conditional write reads the row: lets a test land
    /// a concurrent change in the window between a read and a write.
    pub before_write: RefCell<Option<Race>>,
    /// How many `holdings` reads were made (the path of every use must make one).
    pub reads: Cell<u32>,
    /// The sweep's claims: credential and when.
    pub claims: RefCell<Vec<(CredentialId, Timestamp)>>,
    /// Background jobs' progress.
    pub jobs: RefCell<Vec<crate::jobs::JobRecord>>,
    /// The audit log's heads and checkpoints, which health's check of master key versions
    /// reads with the credentials (as the D1 query reads both tables).
    pub anchors: [AnchorTable; 2],
    /// What the next `stale_keys` and `job` read instead of what is stored, once: a step
    /// that read them before another step wrote (a delayed message racing a resumed one).
    pub stale_read: RefCell<Option<Vec<Credential>>>,
    pub job_read: RefCell<Option<crate::jobs::JobRecord>>,
}

/// A table of audit anchors by user, shared by the two in-memory stores.
pub(crate) type AnchorTable = Rc<RefCell<std::collections::BTreeMap<String, Anchor>>>;

/// The master key ring the in-memory chainer seals with by default: the API tests' version 1.
pub(crate) fn test_ring() -> crate::crypto::MasterKeys {
    let key: [u8; 32] = std::array::from_fn(|i| i as u8);
    crate::crypto::MasterKeys::for_tests(&[(1, key)], 1)
}

/// A sealer over [`test_ring`], writing at the API tests' time.
pub(crate) fn test_sealer() -> Sealer {
    Sealer::new(&test_ring(), Timestamp::from_millis(1_800_000_000_000))
}

impl MemoryStore {
    /// The user's rows as a listing shows them: newest first, without model lists.
    pub(super) fn listing(
        &self,
        user: &UserId,
        provider: Option<ProviderId>,
    ) -> Result<Vec<Credential>, StoreError> {
        self.check()?;
        let mut out: Vec<_> = self
            .rows
            .borrow()
            .iter()
            .filter(|c| &c.user_id == user && provider.is_none_or(|p| c.provider == p))
            .map(|c| Credential {
                models: None,
                ..c.clone()
            })
            .collect();
        out.reverse();
        Ok(out)
    }

    pub(super) fn check(&self) -> Result<(), StoreError> {
        if self.down.get() {
            Err(StoreError::Unavailable("test database is down".into()))
        } else {
            Ok(())
        }
    }

    /// The conditional write both `update` and `record_check` are: `apply` runs on the
    /// stored row only if it is still at `c.version`.
    pub(super) fn write_if_current(
        &self,
        c: &Credential,
        event: Option<&AuditEvent>,
        apply: impl FnOnce(&mut Credential),
    ) -> Result<Written, StoreError> {
        self.check()?;
        let mut rows = self.rows.borrow_mut();
        if let Some(race) = self.before_write.borrow_mut().take() {
            race(&mut rows);
        }
        let Some(row) = rows
            .iter_mut()
            .find(|r| r.user_id == c.user_id && r.id == c.id)
        else {
            return Ok(Written::Missing);
        };
        if row.version != c.version {
            return Ok(Written::Conflict);
        }
        apply(row);
        row.version += 1;
        if let Some(event) = event {
            self.outbox.push(event);
        }
        Ok(Written::Done)
    }
}

#[async_trait(?Send)]
impl CredentialStore for MemoryStore {
    async fn insert(
        &self,
        credential: &Credential,
        fingerprints: &[String],
        limit: u32,
        event: &AuditEvent,
    ) -> Result<Inserted, StoreError> {
        if let Some(race) = self.before_write.borrow_mut().take() {
            race(&mut self.rows.borrow_mut());
        }
        let occupancy = self.occupancy(&credential.user_id, fingerprints).await?;
        if let Some(existing) = occupancy.duplicate {
            return Ok(Inserted::Duplicate(existing));
        }
        if occupancy.count >= limit {
            return Ok(Inserted::LimitReached);
        }
        self.rows.borrow_mut().push(credential.clone());
        self.outbox.push(event);
        Ok(Inserted::Done)
    }

    async fn get(
        &self,
        user: &UserId,
        id: &CredentialId,
    ) -> Result<Option<Credential>, StoreError> {
        self.check()?;
        let claim = self
            .claims
            .borrow()
            .iter()
            .find(|(c, _)| c == id)
            .map(|(_, at)| *at);
        Ok(self
            .rows
            .borrow()
            .iter()
            .find(|c| &c.user_id == user && &c.id == id)
            .cloned()
            .map(|c| Credential {
                revalidation_queued_at: claim,
                ..c
            }))
    }

    async fn view(
        &self,
        user: &UserId,
        id: &CredentialId,
        seen: &AuditEvent,
        missing: &AuditEvent,
    ) -> Result<Option<Credential>, StoreError> {
        let found = self.get(user, id).await?;
        match &found {
            Some(c) => {
                let mut event = seen.clone();
                event.provider = Some(c.provider.as_str().to_owned());
                self.outbox.push(&event);
            }
            None => self.outbox.push(missing),
        }
        Ok(found)
    }

    async fn list(
        &self,
        user: &UserId,
        provider: Option<ProviderId>,
        seen: &AuditEvent,
    ) -> Result<Vec<Credential>, StoreError> {
        let out = self.listing(user, provider)?;
        self.outbox.push(seen);
        Ok(out)
    }

    async fn holdings(
        &self,
        user: &UserId,
        capability: Capability,
        providers: &[ProviderId],
    ) -> Result<(Vec<Credential>, Option<Preference>), StoreError> {
        self.reads.set(self.reads.get() + 1);
        let mut held = self.listing(user, None)?;
        held.retain(|c| providers.contains(&c.provider));
        let default = self
            .prefs
            .borrow()
            .iter()
            .find(|(u, p)| u == user && p.capability == capability)
            .map(|(_, p)| p.clone())
            .filter(|p| held.iter().any(|c| c.id == p.credential_id));
        Ok((held, default))
    }

    async fn claim_due(
        &self,
        cutoffs: &[Timestamp],
        requeue_before: Timestamp,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<(UserId, CredentialId, ProviderId)>, StoreError> {
        self.check()?;
        let mut claims = self.claims.borrow_mut();
        let mut due: Vec<Credential> = self
            .rows
            .borrow()
            .iter()
            .filter(|c| match c.last_validated_at {
                None => true,
                Some(at) => cutoffs
                    .get(c.dead_checks as usize)
                    .is_some_and(|cutoff| at <= *cutoff),
            })
            .filter(|c| {
                claims
                    .iter()
                    .find(|(id, _)| *id == c.id)
                    .is_none_or(|(_, at)| *at < requeue_before)
            })
            .cloned()
            .collect();
        // The least recently attempted first: a check that keeps failing goes to the back.
        let attempted = |c: &Credential| {
            let queued = claims
                .iter()
                .find(|(id, _)| *id == c.id)
                .map_or(0, |(_, at)| at.as_millis());
            c.last_validated_at
                .map_or(0, Timestamp::as_millis)
                .max(queued)
        };
        due.sort_by_key(|c| attempted(c));
        due.truncate(limit as usize);
        claims.retain(|(id, _)| !due.iter().any(|c| &c.id == id));
        claims.extend(due.iter().map(|c| (c.id.clone(), now)));
        Ok(due
            .into_iter()
            .map(|c| (c.user_id, c.id, c.provider))
            .collect())
    }

    async fn occupancy(
        &self,
        user: &UserId,
        fingerprints: &[String],
    ) -> Result<Occupancy, StoreError> {
        self.check()?;
        let rows = self.rows.borrow();
        let mine = rows.iter().filter(|c| &c.user_id == user);
        Ok(Occupancy {
            duplicate: mine
                .clone()
                .find(|c| {
                    c.fingerprint
                        .as_ref()
                        .is_some_and(|f| fingerprints.contains(f))
                })
                .map(|c| c.id.clone()),
            count: mine.count() as u32,
        })
    }

    async fn update(
        &self,
        credential: &Credential,
        event: &AuditEvent,
    ) -> Result<Written, StoreError> {
        // The unique index on (user, fingerprint), as D1 enforces it.
        let clash = self.rows.borrow().iter().any(|r| {
            r.user_id == credential.user_id
                && r.id != credential.id
                && r.fingerprint.is_some()
                && r.fingerprint == credential.fingerprint
        });
        if clash {
            return Err(StoreError::Conflict("UNIQUE constraint failed".into()));
        }
        self.write_if_current(credential, Some(event), |row| *row = credential.clone())
    }

    async fn set_cooldown(
        &self,
        c: &Credential,
        cooldown: &crate::domain::Cooldown,
    ) -> Result<Written, StoreError> {
        self.check()?;
        let mut rows = self.rows.borrow_mut();
        match rows
            .iter_mut()
            .find(|r| r.user_id == c.user_id && r.id == c.id && r.version == c.version)
        {
            Some(row) => {
                row.cooldown = Some(*cooldown);
                Ok(Written::Done)
            }
            None => Ok(Written::Conflict),
        }
    }

    async fn record_check(
        &self,
        c: &Credential,
        event: Option<&AuditEvent>,
    ) -> Result<Written, StoreError> {
        self.write_if_current(c, event, |row| {
            row.status = c.status;
            row.status_detail = c.status_detail.clone();
            row.warnings = c.warnings.clone();
            row.quota = c.quota.clone();
            row.models = c.models.clone();
            row.models_fetched_at = c.models_fetched_at;
            row.consecutive_failures = c.consecutive_failures;
            row.dead_checks = c.dead_checks;
            row.cooldown = c.cooldown;
            row.last_validated_at = c.last_validated_at;
            row.updated_at = c.updated_at;
        })
    }

    async fn preferences(&self, user: &UserId) -> Result<Vec<Preference>, StoreError> {
        self.check()?;
        Ok(self
            .prefs
            .borrow()
            .iter()
            .filter(|(u, _)| u == user)
            .map(|(_, p)| p.clone())
            .collect())
    }

    async fn set_preference(
        &self,
        user: &UserId,
        preference: &Preference,
        event: &AuditEvent,
    ) -> Result<bool, StoreError> {
        self.check()?;
        if let Some(race) = self.before_write.borrow_mut().take() {
            race(&mut self.rows.borrow_mut());
        }
        let held = self
            .rows
            .borrow()
            .iter()
            .any(|c| &c.user_id == user && c.id == preference.credential_id);
        if !held {
            return Ok(false);
        }
        let mut prefs = self.prefs.borrow_mut();
        prefs.retain(|(u, p)| !(u == user && p.capability == preference.capability));
        prefs.push((user.clone(), preference.clone()));
        self.outbox.push(event);
        Ok(true)
    }

    async fn delete(
        &self,
        user: &UserId,
        id: &CredentialId,
        event: &AuditEvent,
    ) -> Result<Option<ProviderId>, StoreError> {
        self.check()?;
        let mut rows = self.rows.borrow_mut();
        let Some(i) = rows.iter().position(|c| &c.user_id == user && &c.id == id) else {
            return Ok(None);
        };
        self.prefs
            .borrow_mut()
            .retain(|(u, p)| !(u == user && &p.credential_id == id));
        let provider = rows.remove(i).provider;
        self.outbox.forget_notices(user, id);
        let mut event = event.clone();
        event.provider = Some(provider.as_str().to_owned());
        self.outbox.push(&event);
        Ok(Some(provider))
    }

    async fn ping(&self, configured: &[u32]) -> Result<Option<u32>, StoreError> {
        self.check()?;
        let anchors: Vec<u32> = self
            .anchors
            .iter()
            .flat_map(|t| {
                t.borrow()
                    .values()
                    .filter_map(|a| a.mac_version)
                    .collect::<Vec<_>>()
            })
            .collect();
        Ok(self
            .rows
            .borrow()
            .iter()
            .filter_map(|c| c.secret.as_ref().map(|s| s.key_version.get()))
            .chain(anchors)
            .find(|v| !configured.contains(v)))
    }

    async fn stale_keys(
        &self,
        active: u32,
        after: Option<&CredentialId>,
        limit: u32,
    ) -> Result<Vec<Credential>, StoreError> {
        self.check()?;
        if let Some(read_earlier) = self.stale_read.borrow_mut().take() {
            return Ok(read_earlier);
        }
        let mut rows: Vec<Credential> = self
            .rows
            .borrow()
            .iter()
            .filter(|c| {
                c.secret
                    .as_ref()
                    .is_some_and(|s| s.key_version.get() != active)
            })
            .filter(|c| after.is_none_or(|a| c.id.as_str() > a.as_str()))
            .cloned()
            .collect();
        rows.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        rows.truncate(limit as usize);
        Ok(rows)
    }

    async fn count_stale(&self, active: u32) -> Result<u64, StoreError> {
        Ok(self.stale_keys(active, None, u32::MAX).await?.len() as u64)
    }
}
