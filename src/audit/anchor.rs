//! The anchors of each user's chain, sealed: the head (where the chain ends) and the
//! retention checkpoint (where its stored part starts). Verification trusts them as its
//! end and its start, so each carries a MAC under a key derived from the master key
//! (HMAC-SHA256, 128 bits, the version stored with it) over its kind, its user, its `seq`,
//! `hash` and the time it was written. Whoever can write D1 but holds no master key can
//! then neither recompute a chain (the head no longer matches), nor cut its end or start
//! (the anchor no longer matches), nor move an anchor to another user or pass a head off
//! as a checkpoint.
//!
//! A seal is stored as `s:<tag>` or `t:<tag>` with its key version, `NULL` (unsealed) or
//! `broken`:
//! - `s` (strict): sealed while the vault knew of no unsealed anchor of its own, or
//!   following such an anchor. Its existence proves the legacy window below was closed.
//! - `t` (trusted on first use): sealed while anchors written before sealing existed
//!   ([`LegacyWindow`]), or following such an anchor.
//! - unsealed: written before this version of the vault (the migration cannot compute a
//!   MAC). Accepted only while the legacy window is open and no strict seal exists; the
//!   cron seals them as they are ([`settle`]), then closes the window.
//! - `broken`: follows an anchor whose seal did not verify; it never verifies, so a break
//!   stays visible after the chain moves on, and can never pass for unsealed.
//!
//! Rotation: a seal made under version N verifies while N is configured; whoever moves an
//! anchor seals the new one under the active version, and [`settle`] (the rewrap job and
//! the cron) re-seals the others, so version N can be removed once health stops naming it.

use super::ChainHead;
use crate::audit::AuditStore;
use crate::crypto::{MacCheck, MacKeys, MasterKeys};
use crate::domain::KeyVersion;
use crate::domain::StoreError;
use crate::domain::Timestamp;

/// The HKDF purpose of the anchors' MAC key.
const PURPOSE: &str = "audit-anchor";
/// The first part of every sealed input: a MAC made for anything else never matches.
const DOMAIN: &str = "byok-vault/audit-anchor/v1";
/// The stored seal of an anchor that follows one whose seal did not verify.
pub const BROKEN_SEAL: &str = "broken";

crate::wire_enum! {
    /// Which end of a chain an anchor holds.
    pub enum AnchorKind {
        /// Where the chain ends.
        Head = "head",
        /// Where the stored chain starts after retention.
        Checkpoint = "checkpoint",
    }
}

/// How long the window stays `Closing` at least: longer than any chainer can take
/// between reading a head and writing the next (an invocation's wall time is bounded far
/// below), so no head read unsealed before the last one was sealed is written after.
pub const CLOSING_MS: u64 = 30 * 60 * 1000;

crate::wire_enum! {
    /// Whether anchors written before anchors were sealed may still exist (the
    /// `audit_legacy` row; no row is `Closed`). Written `Open` by the migration that
    /// introduced seals, only when there were anchors then; `Closing` once a cron pass
    /// found none left unsealed, `Closed` once a pass at least [`CLOSING_MS`] later found
    /// none either.
    pub enum LegacyWindow {
        Open = "open",
        Closing = "closing",
        Closed = "closed",
    }
}

/// An anchor as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    pub seq: u64,
    pub hash: String,
    /// When it was written (Unix ms); sealed with it.
    pub at: u64,
    /// The stored seal (see the module's documentation); `None`: unsealed.
    pub mac: Option<String>,
    /// The master key version of the seal.
    pub mac_version: Option<u32>,
}

impl Anchor {
    /// The point of the chain it names.
    pub fn point(&self) -> ChainHead {
        ChainHead {
            seq: self.seq,
            hash: self.hash.clone(),
        }
    }

    fn unsealed(point: &ChainHead, at: u64) -> Self {
        Self {
            seq: point.seq,
            hash: point.hash.clone(),
            at,
            mac: None,
            mac_version: None,
        }
    }

    fn broken(point: &ChainHead, at: u64) -> Self {
        Self {
            mac: Some(BROKEN_SEAL.to_owned()),
            ..Self::unsealed(point, at)
        }
    }
}

/// What an anchor's seal says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealCheck {
    Sealed {
        strict: bool,
        version: u32,
    },
    /// No seal at all.
    Unsealed,
    /// A seal that does not verify (wrong, moved, malformed, or `broken`).
    Broken,
    /// Sealed under a master key version that is not configured: it cannot be checked.
    UnknownVersion(u32),
}

/// Where a user's chain ends, as the chainer reads it for a round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Heads {
    pub heads: Vec<(String, Anchor)>,
    pub window: LegacyWindow,
}

impl Default for LegacyWindow {
    /// No `audit_legacy` row: no anchor was ever written unsealed.
    fn default() -> Self {
        LegacyWindow::Closed
    }
}

impl Anchors {
    /// Whether an unsealed anchor is still admitted as one written before seals existed.
    pub fn legacy_admitted(&self) -> bool {
        self.window != LegacyWindow::Closed && !self.strict_seal
    }
}

impl Heads {
    /// The chain points alone, as [`super::plan`] links after them.
    pub fn points(&self) -> Vec<(String, ChainHead)> {
        self.heads
            .iter()
            .map(|(u, a)| (u.clone(), a.point()))
            .collect()
    }
}

/// What verification reads about one user in one query: both anchors, the legacy window,
/// and what else shows that a chain must exist.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Anchors {
    pub checkpoint: Option<Anchor>,
    pub head: Option<Anchor>,
    pub window: LegacyWindow,
    /// A strict seal exists: the window was closed, whatever its row says (the vault
    /// writes one only then; its MAC is not checked, a forged one only makes
    /// verification stricter).
    pub strict_seal: bool,
    /// The user holds a credential: every credential was written with an event, so a
    /// chain (a head) must exist once the outbox is chained.
    pub holds_credentials: bool,
    /// Events of the user wait in the outbox.
    pub pending: bool,
}

/// Seals anchors under the active master key version, and checks them under any
/// configured one.
pub struct Sealer {
    keys: MacKeys,
    now: u64,
}

impl Sealer {
    /// A sealer whose new anchors are written at `now`.
    pub fn new(master: &MasterKeys, now: Timestamp) -> Self {
        Self {
            keys: MacKeys::derive(master, PURPOSE),
            now: now.as_millis(),
        }
    }

    /// The version new seals are made under.
    pub fn active(&self) -> u32 {
        self.keys.active().get()
    }

    /// Every version seals can be checked under.
    pub fn configured(&self) -> Vec<u32> {
        self.keys.versions().map(KeyVersion::get).collect()
    }

    /// When the anchors it writes are written (Unix ms).
    pub fn now(&self) -> u64 {
        self.now
    }

    fn tag(
        &self,
        marker: &str,
        kind: AnchorKind,
        user: &str,
        seq: u64,
        hash: &str,
        at: u64,
    ) -> Option<String> {
        self.keys.tag(&[
            DOMAIN,
            marker,
            kind.as_str(),
            user,
            &seq.to_string(),
            hash,
            &at.to_string(),
        ])
    }

    /// `point`, written at `at`, sealed for `user` as an anchor of `kind`.
    fn seal(
        &self,
        kind: AnchorKind,
        user: &str,
        point: &ChainHead,
        at: u64,
        strict: bool,
    ) -> Anchor {
        let marker = if strict { "s" } else { "t" };
        match self.tag(marker, kind, user, point.seq, &point.hash, at) {
            Some(tag) => Anchor {
                seq: point.seq,
                hash: point.hash.clone(),
                at,
                mac: Some(format!("{marker}:{tag}")),
                mac_version: Some(self.active()),
            },
            // The active version is always in the ring; should it not be, nothing is
            // written that could later pass for a seal.
            None => Anchor::broken(point, at),
        }
    }

    /// What `anchor`'s seal says, for `user` and `kind`.
    pub fn check(&self, kind: AnchorKind, user: &str, anchor: &Anchor) -> SealCheck {
        let Some(mac) = anchor.mac.as_deref() else {
            return match anchor.mac_version {
                None => SealCheck::Unsealed,
                Some(_) => SealCheck::Broken,
            };
        };
        let (marker, tag) = match mac.split_once(':') {
            Some((m @ ("s" | "t"), tag)) => (m, tag),
            _ => return SealCheck::Broken,
        };
        let Some(version) = anchor.mac_version.and_then(KeyVersion::new) else {
            return SealCheck::Broken;
        };
        let parts = [
            DOMAIN,
            marker,
            kind.as_str(),
            user,
            &anchor.seq.to_string(),
            &anchor.hash,
            &anchor.at.to_string(),
        ];
        match self.keys.check(version, &parts, tag) {
            MacCheck::Valid => SealCheck::Sealed {
                strict: marker == "s",
                version: version.get(),
            },
            MacCheck::Invalid => SealCheck::Broken,
            MacCheck::UnknownVersion => SealCheck::UnknownVersion(version.get()),
        }
    }

    /// The anchor of `kind` that replaces `prev` (none: the chain has none yet) when it
    /// moves to `next`, written now. It is sealed when `prev` verifies (strict if `prev`
    /// was, or the legacy window is closed); it stays unsealed when `prev` is a legacy
    /// anchor the window still admits (the cron seals it); otherwise it is `broken`, so
    /// moving on never launders a forged or stripped anchor. `Err(version)`: `prev` is
    /// sealed under a version that is not configured, and nothing should be written
    /// until it is back.
    pub fn successor(
        &self,
        kind: AnchorKind,
        user: &str,
        prev: Option<&Anchor>,
        next: &ChainHead,
        window: LegacyWindow,
    ) -> Result<Anchor, u32> {
        let closed = window == LegacyWindow::Closed;
        Ok(match prev.map(|p| self.check(kind, user, p)) {
            None => self.seal(kind, user, next, self.now, closed),
            Some(SealCheck::Sealed { strict, .. }) => {
                self.seal(kind, user, next, self.now, strict || closed)
            }
            Some(SealCheck::Unsealed) if !closed => Anchor::unsealed(next, self.now),
            Some(SealCheck::UnknownVersion(v)) => return Err(v),
            Some(SealCheck::Unsealed | SealCheck::Broken) => Anchor::broken(next, self.now),
        })
    }

    /// `anchor` as it is (same point, same time), sealed afresh under the active version.
    fn reseal(&self, kind: AnchorKind, user: &str, anchor: &Anchor, strict: bool) -> Anchor {
        self.seal(kind, user, &anchor.point(), anchor.at, strict)
    }
}

/// What [`settle`] reads in one query.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Unsettled {
    /// The legacy window as stored, and since when (Unix ms).
    pub window: LegacyWindow,
    pub since: u64,
    /// A strict seal exists (see [`Anchors::strict_seal`]).
    pub strict_seal: bool,
    /// Some anchor is unsealed.
    pub unsealed_left: bool,
    /// Anchors that may need sealing: (kind, user, anchor).
    pub anchors: Vec<(AnchorKind, String, Anchor)>,
}

/// A re-sealed anchor: written only if the stored one is still `from`.
#[derive(Clone, Debug, PartialEq)]
pub struct Resealed {
    pub kind: AnchorKind,
    pub user: String,
    pub from: Anchor,
    pub to: Anchor,
}

/// What one [`settle`] pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// Anchors sealed or re-sealed under the active version.
    pub resealed: usize,
    /// Anchors whose seal did not verify, now marked `broken`.
    pub broken: usize,
    /// It stopped at its bound: more may wait.
    pub more: bool,
}

/// One bounded pass over the anchors that are not yet as they should end up: legacy
/// anchors sealed as they are (trust on first use) while the legacy window is open;
/// anchors sealed under another configured version, or trusted on first use once the
/// window is closed, re-sealed (strict) under the active version after their seal is
/// verified. A seal that does not verify is marked `broken`, never re-sealed. Anchors
/// under a version that is not configured are left for health to name. With
/// `move_window` (the cron's pass) the window moves on: `Closing` when it leaves none
/// unsealed, `Closed` when a pass finds none, [`CLOSING_MS`] after the last that found one. Two D1 queries at most
/// (what to do, one batch of writes).
pub async fn settle(
    store: &dyn AuditStore,
    sealer: &Sealer,
    limit: u32,
    move_window: bool,
) -> Result<Settled, StoreError> {
    let found = store
        .unsettled(sealer.active(), &sealer.configured(), limit)
        .await?;
    let stored = found.window;
    // A strict seal exists only once the window was closed: the row was changed since.
    let window = if found.strict_seal {
        LegacyWindow::Closed
    } else {
        stored
    };
    let open = window != LegacyWindow::Closed;
    let todo = found.anchors;
    // Unsealed anchors were found, and some may be left after this pass (it could not
    // read them all).
    let found_unsealed = found.unsealed_left;
    let legacy_left = found_unsealed && todo.len() >= limit as usize;
    let mut out = Settled {
        more: todo.len() >= limit as usize,
        ..Settled::default()
    };
    let mut writes = Vec::with_capacity(todo.len());
    for (kind, user, anchor) in todo {
        let to = match sealer.check(kind, &user, &anchor) {
            SealCheck::Unsealed if open => sealer.reseal(kind, &user, &anchor, false),
            SealCheck::Sealed { strict, version } => {
                // Already under the active version, and strict unless the window is open.
                if version == sealer.active() && (strict || open) {
                    continue;
                }
                sealer.reseal(kind, &user, &anchor, strict || !open)
            }
            SealCheck::Broken if anchor.mac.as_deref() != Some(BROKEN_SEAL) => {
                out.broken += 1;
                Anchor::broken(&anchor.point(), anchor.at)
            }
            _ => continue,
        };
        if to.mac_version.is_some() {
            out.resealed += 1;
        }
        writes.push(Resealed {
            kind,
            user,
            from: anchor,
            to,
        });
    }
    let settled_for = sealer.now.saturating_sub(found.since);
    let next = match window {
        // Put right when a strict seal contradicts the row.
        LegacyWindow::Closed => (stored != LegacyWindow::Closed).then_some(LegacyWindow::Closed),
        _ if !move_window => None,
        LegacyWindow::Open if legacy_left => None,
        LegacyWindow::Open => Some(LegacyWindow::Closing),
        LegacyWindow::Closing if legacy_left => Some(LegacyWindow::Open),
        // Written again: the wait starts over after any unsealed anchor (a chainer that
        // read one before this pass may still write its unsealed successor).
        LegacyWindow::Closing if found_unsealed => Some(LegacyWindow::Closing),
        LegacyWindow::Closing if settled_for >= CLOSING_MS => Some(LegacyWindow::Closed),
        LegacyWindow::Closing => None,
    };
    if !writes.is_empty() || next.is_some() {
        store.settle(&writes, next).await?;
    }
    Ok(out)
}
