//! Linking events into a user's chain, and checking a stored chain.

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

fn link_hash(prev_hash: &str, event: &AuditEvent, seq: u64) -> String {
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

/// The result of checking a chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    pub ok: bool,
    pub checked: u64,
    /// The first `seq` where the chain does not hold.
    pub broken_seq: Option<u64>,
}

/// Checks a stored chain page by page, in `seq` order.
pub struct Verifier {
    prev: ChainHead,
    checked: u64,
    broken: Option<u64>,
}

impl Verifier {
    /// Starts after `start`: genesis, or the retention checkpoint.
    pub fn new(start: ChainHead) -> Self {
        Self {
            prev: start,
            checked: 0,
            broken: None,
        }
    }

    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// Where the checked part of the chain ends so far.
    pub fn position(&self) -> ChainHead {
        self.prev.clone()
    }

    /// Checks the next stored event; after the first break, nothing more is checked.
    pub fn push(&mut self, e: &ChainedEvent) {
        if self.broken.is_some() {
            return;
        }
        let expected_seq = self.prev.seq + 1;
        if e.seq != expected_seq {
            // A missing row: the chain breaks where it should have been.
            self.broken = Some(expected_seq.min(e.seq));
            return;
        }
        if e.prev_hash != self.prev.hash || link_hash(&self.prev.hash, &e.event, e.seq) != e.hash {
            self.broken = Some(e.seq);
            return;
        }
        self.checked += 1;
        self.prev = ChainHead {
            seq: e.seq,
            hash: e.hash.clone(),
        };
    }

    /// Ends the check. `head` is where the chain is recorded to end: rows missing at the
    /// end are a break too.
    pub fn finish(mut self, head: Option<&ChainHead>) -> Verification {
        if self.broken.is_none() {
            if let Some(h) = head {
                if h.seq != self.prev.seq || h.hash != self.prev.hash {
                    self.broken = Some(self.prev.seq + 1);
                }
            }
        }
        Verification {
            ok: self.broken.is_none(),
            checked: self.checked,
            broken_seq: self.broken,
        }
    }
}
