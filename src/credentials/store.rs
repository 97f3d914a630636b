//! Where credentials live: the seam the credential operations read and write through (D1 in
//! `edge/credential_store.rs`, memory in the tests).

use async_trait::async_trait;

use crate::audit::AuditEvent;
use crate::domain::{
    Capability, Credential, CredentialId, Preference, ProviderId, StoreError, Timestamp, UserId,
};

/// What a conditional write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Written, with its audit event; the row's version moved on by one.
    Done,
    /// The row changed since it was read (its version moved on): nothing was written.
    Conflict,
    /// The user has no such row (any more): nothing was written.
    Missing,
}

/// What stands between a user and one more stored key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// The user's credential that already holds this key, if any.
    pub duplicate: Option<CredentialId>,
    /// How many credentials the user holds.
    pub count: u32,
}

/// What an insert did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// Stored, with its audit event.
    Done,
    /// The user already holds this key (perhaps stored a moment ago by a parallel request).
    Duplicate(CredentialId),
    /// The user holds as many credentials as they may.
    LimitReached,
}

/// Where credentials live. Every method is scoped to one user: another user's row is
/// never returned, changed or deleted. Every write carries the audit event of the
/// operation and stores it in the same transaction (the outbox): an event exists exactly
/// when its write happened.
#[async_trait(?Send)]
pub trait CredentialStore {
    /// Inserts `credential` and `event` together, unless the user already holds a key with
    /// one of `fingerprints` or holds `limit` credentials (checked in the same transaction,
    /// so parallel inserts cannot both pass).
    async fn insert(
        &self,
        credential: &Credential,
        fingerprints: &[String],
        limit: u32,
        event: &AuditEvent,
    ) -> Result<Inserted, StoreError>;
    async fn get(&self, user: &UserId, id: &CredentialId)
        -> Result<Option<Credential>, StoreError>;
    /// The user's credentials, newest first, without their model lists (`models` is
    /// `None`: a listing does not show them), with `seen` (the listing's event) put into
    /// the audit outbox in the same transaction: a read is one round trip. A
    /// [`StoreError::Corrupt`] from this or [`view`](Self::view) means the transaction ran
    /// (the event is written) and a row could not be read; any other error, that nothing
    /// was written.
    async fn list(
        &self,
        user: &UserId,
        provider: Option<ProviderId>,
        seen: &AuditEvent,
    ) -> Result<Vec<Credential>, StoreError>;
    /// The user's credential `id` (as [`get`](Self::get)), its viewing put into the audit
    /// outbox in the same transaction: `seen`, with the row's provider, when the row is
    /// there; `missing` when it is not.
    async fn view(
        &self,
        user: &UserId,
        id: &CredentialId,
        seen: &AuditEvent,
        missing: &AuditEvent,
    ) -> Result<Option<Credential>, StoreError>;
    /// Which of the user's credentials holds one of `fingerprints`, and how many they hold.
    async fn occupancy(
        &self,
        user: &UserId,
        fingerprints: &[String],
    ) -> Result<Occupancy, StoreError>;
    /// Writes what the user may change (label, model, the key and where it is used) and
    /// the result of the check that came with it, if the row is still at
    /// `credential.version`.
    async fn update(
        &self,
        credential: &Credential,
        event: &AuditEvent,
    ) -> Result<Written, StoreError>;
    /// Sets the cooldown of `credential` (the provider rate-limited it), if the row is still
    /// at `credential.version`, in one statement. The version does not move: a cooldown is
    /// the vault's note, not a change of the credential, and a user's change made since is
    /// never undone (the write then does not happen).
    async fn set_cooldown(
        &self,
        credential: &Credential,
        cooldown: &crate::domain::Cooldown,
    ) -> Result<Written, StoreError>;
    /// Writes a re-check's result (status, detail, warnings, quota, models, failure count,
    /// times) and nothing else, if the row is still at `credential.version`. Never
    /// touches the key. A scheduled check that changed no status writes no event.
    async fn record_check(
        &self,
        credential: &Credential,
        event: Option<&AuditEvent>,
    ) -> Result<Written, StoreError>;
    /// Removes the row (and its ciphertext) and the preferences that pointed at it, with
    /// `event` (its provider filled in from the row), and returns its provider; `None` if
    /// the user has no such credential (then nothing is written).
    async fn delete(
        &self,
        user: &UserId,
        id: &CredentialId,
        event: &AuditEvent,
    ) -> Result<Option<ProviderId>, StoreError>;
    /// What decides which key a call for `capability` uses, in ONE read (the path of
    /// every use): the user's credentials of `providers` (newest first, without model
    /// lists) and the user's default for the capability, if it points at one of them.
    async fn holdings(
        &self,
        user: &UserId,
        capability: Capability,
        providers: &[ProviderId],
    ) -> Result<(Vec<Credential>, Option<Preference>), StoreError>;
    /// Claims for the revalidation sweep, in one statement, the credentials never
    /// validated or last validated at or before `cutoffs[n]`, where `n` is the row's
    /// `dead_checks` (a row past the list is not due), oldest first, at most `limit`,
    /// leaving out those claimed after `requeue_before`; marks them claimed at `now`
    /// (without moving their version). `cutoffs[0]` is the latest of them.
    async fn claim_due(
        &self,
        cutoffs: &[Timestamp],
        requeue_before: Timestamp,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<(UserId, CredentialId, ProviderId)>, StoreError>;
    /// Proves the database answers, at constant cost (one indexed row at most): returns a
    /// master key version some row is sealed under that is not in `configured`, if any.
    async fn ping(&self, configured: &[u32]) -> Result<Option<u32>, StoreError>;
    /// Credentials sealed under a version other than `active`, whole (model lists
    /// included), in id order after `after`, at most `limit`: a rewrap's next chunk.
    async fn stale_keys(
        &self,
        active: u32,
        after: Option<&CredentialId>,
        limit: u32,
    ) -> Result<Vec<Credential>, StoreError>;
    /// How many credentials are sealed under a version other than `active`.
    async fn count_stale(&self, active: u32) -> Result<u64, StoreError>;
    async fn preferences(&self, user: &UserId) -> Result<Vec<Preference>, StoreError>;
    /// Sets the preference with its event, if the user still holds the credential it names;
    /// `false` (and nothing written) if that credential is gone.
    async fn set_preference(
        &self,
        user: &UserId,
        preference: &Preference,
        event: &AuditEvent,
    ) -> Result<bool, StoreError>;
}
