//! The audit log's seams: where a request's events go (the sink: outbox and queue) and the
//! stored log the chainer, the reader and the verifier use (D1 in `edge/d1/audit.rs`).

use async_trait::async_trait;

use super::{
    Action, Anchors, AuditEvent, ChainPlan, ChainedEvent, Heads, LegacyWindow, PendingEvent,
    Resealed, Sealer, Unsettled,
};
use crate::domain::{CredentialId, StoreError, Timestamp, UserId};

/// Where a request's audit events go. It never fails the request.
#[async_trait(?Send)]
pub trait AuditSink {
    /// Keeps the event of an operation that wrote nothing else (a view, a refusal) as an
    /// outbox row of its own, so every event enters the chain in the order it happened,
    /// and nudges the chainer. If the outbox cannot be written, the whole event travels on
    /// the queue (the consumer files it into the outbox, by id); if even that fails, an
    /// error log line keeps it (events hold no secret).
    async fn record(&self, event: &AuditEvent);
    /// Tells the chainer that `event_id`, written with its operation's change, waits in
    /// the outbox. If nobody can be told (the queue is missing or failing), chains what
    /// waits now; the cron sweeps whatever is left.
    async fn nudge(&self, event_id: &str);
    /// Sends an event that goes with no change of its own (a key's use) whole on the
    /// queue, so the request path writes nothing to D1; the consumer files it into the
    /// outbox by id, in arrival order. Records it when the queue is out of reach.
    async fn send(&self, event: &AuditEvent);
}

/// Which of a user's events to list, newest first.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub action: Option<Action>,
    pub credential_id: Option<CredentialId>,
    /// Only events with a smaller `seq` (the cursor).
    pub before_seq: Option<u64>,
    pub limit: u32,
}

/// The stored audit log: the outbox of pending events and the chained log.
#[async_trait(?Send)]
pub trait AuditStore {
    /// Puts events that arrived some other way (a queue message carrying a whole event)
    /// into the outbox, skipping any whose id is already pending or chained.
    async fn enqueue(&self, events: &[AuditEvent]) -> Result<(), StoreError>;
    /// The oldest pending events, at most `limit`, in outbox order.
    async fn pending(&self, limit: u32) -> Result<Vec<PendingEvent>, StoreError>;
    /// Where each of `users`' chains ends now, sealed as stored (users without events are
    /// left out), and the legacy window, in one query.
    async fn heads(&self, users: &[String]) -> Result<Heads, StoreError>;
    /// Carries out a chaining plan in one transaction: the chained rows, the moved heads,
    /// the dead letters, and the outbox rows they came from removed. Fails whole, with
    /// [`StoreError::Conflict`], when another chainer got there first.
    async fn commit(&self, plan: &ChainPlan) -> Result<(), StoreError>;
    async fn list(
        &self,
        user: &UserId,
        query: &AuditQuery,
    ) -> Result<Vec<ChainedEvent>, StoreError>;
    /// Events with `seq > after`, in `seq` order, at most `limit`.
    async fn chain_page(
        &self,
        user: &UserId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<ChainedEvent>, StoreError>;
    /// The retention checkpoint (where the stored chain starts) and the recorded head, as
    /// stored, with the legacy window (and, when it is not closed, whether a strict seal
    /// exists under one of `configured`) and what shows that a chain must exist, in one
    /// query.
    async fn anchors(&self, user: &UserId, configured: &[u32]) -> Result<Anchors, StoreError>;
    /// Keeps messages that could not be processed, as received: (body, reason), in one
    /// statement.
    async fn store_dead_letters(&self, letters: &[(String, String)]) -> Result<(), StoreError>;
    /// Removes events older than `cutoff`, moving each affected user's checkpoint to the
    /// last removed event, sealed by `sealer` after the checkpoint it replaces (a user
    /// whose checkpoint is sealed under a version not configured is left as it is).
    /// Returns how many events were removed.
    async fn apply_retention(&self, cutoff: Timestamp, sealer: &Sealer) -> Result<u64, StoreError>;
    /// In one query, what [`crate::audit::settle`] needs: the legacy window, since when,
    /// whether a strict seal exists (under one of `configured`), and the anchors that may
    /// need sealing, at most `limit`, in this order: unsealed ones while the stored window
    /// is not closed, those sealed under a `configured` version other than `active`, and
    /// those trusted on first use (under `active`) once it is closed.
    async fn unsettled(
        &self,
        active: u32,
        configured: &[u32],
        limit: u32,
    ) -> Result<Unsettled, StoreError>;
    /// Writes re-sealed anchors, each only if the stored one is still as it was read, and
    /// the legacy window (as of now) when `window` is given, in one transaction.
    async fn settle(
        &self,
        resealed: &[Resealed],
        window: Option<LegacyWindow>,
    ) -> Result<(), StoreError>;
    /// How many key-health notices this store's commits wrote so far (none while webhooks
    /// are off): after a chaining that wrote any, the deliverer is woken.
    fn notices_written(&self) -> usize;
}
