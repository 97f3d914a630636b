//! Where imports write and what their rollback removes: the seam of `import`.

use async_trait::async_trait;

use crate::audit::AuditEvent;
use crate::credentials::Occupancy;
use crate::domain::{BatchId, Credential, CredentialId, ProviderId, StoreError, Timestamp, UserId};

/// A credential an import creates: the row (its `import_batch` set), the fingerprints
/// (under every master key version) its duplicates are found by, and its event.
pub struct ImportRow {
    pub credential: Credential,
    pub prints: Vec<String>,
    pub event: AuditEvent,
}

/// A row an import batch created that no user has changed since.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchRow {
    pub user: UserId,
    pub id: CredentialId,
    pub provider: ProviderId,
}

/// What a rollback finds of a batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchRows {
    /// Rows still as the import made them, at most the limit asked for, in id order.
    pub removable: Vec<BatchRow>,
    /// Rows still as imported that their user has made a default since: kept.
    pub defaults: Vec<BatchRow>,
}

/// Where imports write (`POST /v1/admin/import`) and what their rollback removes. Each
/// method is one D1 statement or one transaction, whatever the number of rows: an import
/// of hundreds of keys costs a handful of queries.
#[async_trait(?Send)]
pub trait ImportStore {
    /// For each (user, fingerprints), in order: the user's credential that holds one of
    /// the fingerprints, and how many credentials the user holds. One read.
    async fn occupancies(
        &self,
        wanted: &[(UserId, Vec<String>)],
    ) -> Result<Vec<Occupancy>, StoreError>;
    /// Stores `rows` under `batch`, each with its event, in one transaction, leaving out
    /// any whose user meanwhile holds one of its fingerprints or would pass `limit`
    /// credentials (counted with the rows before it in `rows`); records the batch (as a
    /// `jobs` row of kind `import`, its total the rows stored). `refused` (the events of
    /// entries skipped because their user holds the key) go into the outbox in the same
    /// transaction. Returns the ids stored.
    async fn insert_batch(
        &self,
        batch: &BatchId,
        rows: &[ImportRow],
        refused: &[AuditEvent],
        limit: u32,
        now: Timestamp,
    ) -> Result<Vec<CredentialId>, StoreError>;
    /// The rows of `batch` that no user has changed since it was imported.
    async fn batch_rows(&self, batch: &BatchId, limit: u32) -> Result<BatchRows, StoreError>;
    /// Removes each of `rows` that is still in `batch` and still nobody's default, with
    /// its event, in one transaction. Returns the ids removed.
    async fn remove_batch_rows(
        &self,
        batch: &BatchId,
        rows: &[(CredentialId, AuditEvent)],
    ) -> Result<Vec<CredentialId>, StoreError>;
}
