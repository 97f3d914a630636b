//! Checking a stored chain: where the audit chain is verified.

use super::chain::{link_hash, ChainHead, ChainedEvent};

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
