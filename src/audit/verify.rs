//! Checking a stored chain: where the audit chain is verified.

use super::chain::{link_hash, ChainHead, ChainedEvent};
use super::{AnchorKind, SealCheck};

/// Why a chain does not verify: the answer's `broken_reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Break {
    /// An event does not link to the one before (edited, removed, reordered).
    Link,
    /// The stored chain ends before its head: events are missing at the end.
    EventsMissing,
    /// The stored chain goes on past its head, or ends elsewhere than the head says.
    HeadMismatch,
    /// Events or a checkpoint exist, but no head.
    HeadMissing,
    /// The user holds credentials, each written with its event, but has no chain at all.
    ChainMissing,
    /// An anchor has no seal, and no longer may.
    Unsealed(AnchorKind),
    /// An anchor's seal does not verify (forged, moved, recomputed, or following one that
    /// did not).
    Invalid(AnchorKind),
    /// An anchor is sealed under a master key version that is not configured.
    UnknownVersion(AnchorKind),
}

impl Break {
    pub fn code(self) -> &'static str {
        use AnchorKind::{Checkpoint, Head};
        match self {
            Break::Link => "link",
            Break::EventsMissing => "events_missing",
            Break::HeadMismatch => "head_mismatch",
            Break::HeadMissing => "head_missing",
            Break::ChainMissing => "chain_missing",
            Break::Unsealed(Head) => "head_unsealed",
            Break::Unsealed(Checkpoint) => "checkpoint_unsealed",
            Break::Invalid(Head) => "head_invalid",
            Break::Invalid(Checkpoint) => "checkpoint_invalid",
            Break::UnknownVersion(Head) => "head_key_version_unknown",
            Break::UnknownVersion(Checkpoint) => "checkpoint_key_version_unknown",
        }
    }
}

/// Whether verification may start or end at an anchor whose seal says `check`:
/// `Ok(true)` sealed, `Ok(false)` unsealed but admitted (a legacy anchor while
/// `legacy_accepted`), otherwise the break.
pub fn judge_anchor(
    check: SealCheck,
    kind: AnchorKind,
    legacy_accepted: bool,
) -> Result<bool, Break> {
    match check {
        SealCheck::Sealed { .. } => Ok(true),
        SealCheck::Unsealed if legacy_accepted => Ok(false),
        SealCheck::Unsealed => Err(Break::Unsealed(kind)),
        SealCheck::Broken => Err(Break::Invalid(kind)),
        SealCheck::UnknownVersion(_) => Err(Break::UnknownVersion(kind)),
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

    /// Why the checked part does not end at `head`, if it does not: events missing at the
    /// end, or a chain that goes on past (or differs at) its head.
    pub fn end_break(&self, head: &ChainHead) -> Option<Break> {
        if self.prev == *head {
            None
        } else if self.prev.seq < head.seq {
            Some(Break::EventsMissing)
        } else {
            Some(Break::HeadMismatch)
        }
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
