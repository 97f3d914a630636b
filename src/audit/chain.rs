//! Linking events into a user's chain (checking a stored one is `verify`).

use sha2::{Digest, Sha256};

use super::AuditEvent;
use crate::domain::hex_bytes;

/// The `prev_hash` of a chain's first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Where a chain currently ends (or, for a checkpoint, where it now starts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: String,
}

impl ChainHead {
    pub fn genesis() -> Self {
        Self {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChainedEvent {
    pub event: AuditEvent,
    pub seq: u64,
    pub prev_hash: String,
    pub hash: String,
}

/// `hex(SHA-256(prev_hash ‖ canonical event))`: what links an event to the one before.
pub(super) fn link_hash(prev_hash: &str, event: &AuditEvent, seq: u64) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(event.canonical(seq).as_bytes());
    hex_bytes(&h.finalize())
}

/// The link that follows `prev`: `seq` one more, `hash` over `prev`'s hash and the event.
pub fn link(prev: &ChainHead, event: AuditEvent) -> ChainedEvent {
    let seq = prev.seq + 1;
    let hash = link_hash(&prev.hash, &event, seq);
    ChainedEvent {
        event,
        seq,
        prev_hash: prev.hash.clone(),
        hash,
    }
}

/// Appends `events` (all of one user) after `head`, in the order given.
pub fn chain(head: &ChainHead, events: Vec<AuditEvent>) -> Vec<ChainedEvent> {
    let mut prev = head.clone();
    events
        .into_iter()
        .map(|event| {
            let linked = link(&prev, event);
            prev = linked.head();
            linked
        })
        .collect()
}

impl ChainedEvent {
    /// The chain's end once this event is on it.
    pub fn head(&self) -> ChainHead {
        ChainHead {
            seq: self.seq,
            hash: self.hash.clone(),
        }
    }
}
