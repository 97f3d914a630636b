//! Where key-health notices wait for delivery: the deliverer's seam.

use async_trait::async_trait;

use crate::domain::{StoreError, Timestamp};

/// A key-health notice as stored: its id (the webhook id), its body and how many
/// deliveries failed so far.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredNotice {
    pub id: String,
    pub body: String,
    pub attempts: u32,
}

/// Where key-health notices wait for delivery (written by the audit chainer).
#[async_trait(?Send)]
pub trait NotificationStore {
    /// The notices due at `now`, at most `limit`, each leased until `lease_until` (no other
    /// deliverer takes them meanwhile).
    async fn claim(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<StoredNotice>, StoreError>;
    /// Delivered (or given up): removed.
    async fn delivered(&self, id: &str) -> Result<(), StoreError>;
    /// Not delivered: tried again at `next_at`.
    async fn failed(
        &self,
        id: &str,
        attempts: u32,
        next_at: Timestamp,
        problem: &str,
    ) -> Result<(), StoreError>;
    /// When the earliest waiting notice is due.
    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError>;
}
