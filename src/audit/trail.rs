//! A user's trail as they see it: their events, newest first, in pages; and the check of
//! their chain (`GET /v1/audit/verify`), bounded per request, trusting its start and its
//! end only with a seal that verifies under the master key.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};

use super::{
    judge_anchor, Anchor, AnchorKind, AuditQuery, AuditStore, Break, ChainHead, ChainedEvent,
    Sealer, Verifier,
};
use crate::crypto::{tag, verify_tag, MasterKeys};
use crate::domain::{Clock, UserId};
use crate::error::{Error, FieldError};

/// Events read per query while verifying.
const VERIFY_PAGE: u32 = 1000;
/// Events one verify request checks at most (five queries): a longer chain is verified in
/// pages, each answer naming where the next one starts.
const VERIFY_PER_REQUEST: u64 = 5 * VERIFY_PAGE as u64;

/// The audit trail's operations: what reading and checking a chain needs.
pub struct Trail<'a> {
    pub store: &'a dyn AuditStore,
    pub clock: &'a dyn Clock,
}

/// A page of the user's events, newest first, and the position the next page starts at.
pub struct Page {
    pub events: Vec<ChainedEvent>,
    pub next_before_seq: Option<u64>,
}

/// What checking a chain (or one bounded part of it) found.
#[derive(Debug, PartialEq)]
pub struct Verified {
    /// Events checked, from the chain's start.
    pub checked: u64,
    /// Where the chain breaks (the first `seq` that does not hold) and why.
    pub broken: Option<(u64, Break)>,
    /// The chain rests on sealed anchors only (false while a legacy anchor is admitted,
    /// and on a break).
    pub sealed: bool,
    /// Where the chain ends, when its seal verified: a client may keep it to notice a
    /// later rollback.
    pub head: Option<Head>,
    /// The retention checkpoint's position: the stored chain starts after it.
    pub starts_after_seq: Option<u64>,
    /// More of the chain remains: the signed cursor the next request goes on from.
    pub next_cursor: Option<String>,
}

/// A chain's end as verification shows it.
#[derive(Debug, PartialEq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
    /// When it was sealed (ms), if its seal is a strict one.
    pub sealed_at: Option<u64>,
    pub key_version: Option<u32>,
}

/// Where a paged verification goes on: after `seq`, whose hash is `hash`, with `checked`
/// events checked so far. Signed for its user (a tag under a key derived from the master
/// key), so an answer reached through cursors is the vault's own word: nobody can start a
/// verification midway, or claim a count, by writing a cursor.
struct VerifyCursor {
    seq: u64,
    hash: String,
    checked: u64,
}

const CURSOR_PURPOSE: &str = "audit-verify-cursor";

impl VerifyCursor {
    fn payload(&self) -> String {
        format!("v1:{}:{}:{}", self.seq, self.hash, self.checked)
    }

    fn encode(&self, keys: &MasterKeys, user: &UserId) -> Option<String> {
        let payload = self.payload();
        let tag = tag(keys, CURSOR_PURPOSE, &[user.as_str(), &payload])?;
        Some(format!("{}.{tag}", URL_SAFE_NO_PAD.encode(payload)))
    }

    fn decode(raw: &str, keys: &MasterKeys, user: &UserId) -> Option<Self> {
        let (payload, tag) = raw.split_once('.')?;
        let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        if !verify_tag(keys, CURSOR_PURPOSE, &[user.as_str(), &payload], tag) {
            return None;
        }
        let mut parts = payload.strip_prefix("v1:")?.split(':');
        let (seq, hash, checked) = (parts.next()?, parts.next()?, parts.next()?);
        parts.next().is_none().then_some(())?;
        Some(Self {
            seq: seq.parse().ok()?,
            hash: hash.to_owned(),
            checked: checked.parse().ok()?,
        })
    }
}

impl Trail<'_> {
    /// `user`'s events that `query` asks for, newest first, and where the next page starts.
    pub async fn list(&self, user: &UserId, mut query: AuditQuery) -> Result<Page, Error> {
        let limit = query.limit as usize;
        // One more than asked shows whether there is a next page.
        query.limit += 1;
        let mut events = self.store.list(user, &query).await?;
        let next_before_seq = if events.len() > limit {
            events.truncate(limit);
            events.last().map(|r| r.seq)
        } else {
            None
        };
        Ok(Page {
            events,
            next_before_seq,
        })
    }

    /// Recomputes `user`'s chain, from its start or from a `cursor` an earlier answer
    /// gave. At most [`VERIFY_PER_REQUEST`] events are checked; when more remain, the
    /// answer carries the next cursor. Without a master key nothing can be verified: the
    /// anchors are sealed, and cursors signed, under it.
    pub async fn verify(
        &self,
        keys: Option<&MasterKeys>,
        user: &UserId,
        cursor: Option<&str>,
    ) -> Result<Verified, Error> {
        let keys = keys.ok_or_else(|| {
            Error::not_configured(
                "Verifying the audit chain needs the master key, which seals its ends.",
            )
        })?;
        let cursor = match cursor {
            None => None,
            Some(raw) => Some(VerifyCursor::decode(raw, keys, user).ok_or_else(|| {
                Error::Invalid(vec![FieldError::new(
                    "cursor",
                    "is not a cursor this API returned",
                )])
            })?),
        };
        let sealer = Sealer::new(keys, self.clock.now());
        let configured: Vec<u32> = keys.versions().map(|v| v.get()).collect();
        let anchors = self.store.anchors(user, &configured).await?;
        let before = cursor.as_ref().map_or(0, |c| c.checked);
        let checkpoint = anchors.checkpoint.as_ref();
        let starts_after_seq = checkpoint.map(|cp| cp.seq);
        // Every page checks the start: a checkpoint whose seal fails trusts nothing after it.
        let mut sealed = true;
        if let Some(cp) = checkpoint {
            let check = sealer.check(AnchorKind::Checkpoint, user.as_str(), cp);
            match judge_anchor(check, AnchorKind::Checkpoint, anchors.legacy_admitted()) {
                Ok(s) => sealed &= s,
                Err(why) => {
                    return Ok(Verified {
                        checked: before,
                        broken: Some((cp.seq + 1, why)),
                        sealed: false,
                        head: None,
                        starts_after_seq,
                        next_cursor: None,
                    })
                }
            }
        }
        let start = match &cursor {
            Some(c) => ChainHead {
                seq: c.seq,
                hash: c.hash.clone(),
            },
            None => checkpoint.map_or_else(ChainHead::genesis, Anchor::point),
        };
        let mut verifier = Verifier::new(start.clone());
        let mut after = start.seq;
        let mut read = 0u64;
        let mut more = false;
        loop {
            let page = self.store.chain_page(user, after, VERIFY_PAGE).await?;
            for row in &page {
                verifier.push(row);
            }
            read += page.len() as u64;
            match page.last() {
                Some(last) if page.len() == VERIFY_PAGE as usize && !verifier.is_broken() => {
                    after = last.seq;
                    if read >= VERIFY_PER_REQUEST {
                        more = true;
                        break;
                    }
                }
                _ => break,
            }
        }
        if more {
            // Everything read so far holds: the next request goes on from here.
            let end = verifier.position();
            let v = verifier.finish(None);
            let next = VerifyCursor {
                seq: end.seq,
                hash: end.hash,
                checked: before + v.checked,
            };
            let signed = next.encode(keys, user).ok_or_else(|| {
                Error::not_configured(
                    "Verifying a chain this long needs the master key, which signs the page cursor.",
                )
            })?;
            return Ok(Verified {
                checked: next.checked,
                broken: None,
                sealed,
                head: None,
                starts_after_seq,
                next_cursor: Some(signed),
            });
        }
        // The last page: where the chain ends. A break in the links comes first, being the
        // earliest; then an end that is not sealed, or not where the chain ends.
        let chain_start = starts_after_seq.unwrap_or(0) + 1;
        let mut why = None;
        let mut head = None;
        match &anchors.head {
            Some(h) => {
                let check = sealer.check(AnchorKind::Head, user.as_str(), h);
                match judge_anchor(check, AnchorKind::Head, anchors.legacy_admitted()) {
                    Ok(s) => {
                        sealed &= s;
                        head = Some(Head {
                            seq: h.seq,
                            hash: h.hash.clone(),
                            sealed_at: s.then_some(h.at),
                            key_version: h.mac_version.filter(|_| s),
                        });
                        why = verifier
                            .end_break(&h.point())
                            .map(|b| (verifier.position().seq + 1, b));
                    }
                    Err(fault) => why = Some((chain_start, fault)),
                }
            }
            None if read > 0 || before > 0 || checkpoint.is_some() => {
                why = Some((chain_start, Break::HeadMissing));
            }
            None if anchors.holds_credentials && !anchors.pending => {
                why = Some((chain_start, Break::ChainMissing));
            }
            None => {}
        }
        let v = verifier.finish(None);
        if let Some(seq) = v.broken_seq {
            why = Some((seq, Break::Link));
        }
        Ok(Verified {
            checked: before + v.checked,
            sealed: sealed && why.is_none(),
            broken: why,
            head,
            starts_after_seq,
            next_cursor: None,
        })
    }
}
