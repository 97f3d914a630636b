//! `GET /v1/audit` (the caller's own events, newest first) and `GET /v1/audit/verify`.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use serde_json::{json, Value};

use super::context::{Ctx, Outcome};
use super::problem::ApiError;
use super::Response;
use crate::audit::AuditQuery;
use crate::audit::{
    judge_anchor, Action, Anchor, AnchorKind, Break, ChainHead, ChainedEvent, Sealer, Verifier,
};
use crate::crypto::{tag, verify_tag, MasterKeys};
use crate::domain::{CredentialId, Timestamp, UserId};
use crate::error::FieldError;

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;
/// Events read per D1 query while verifying.
const VERIFY_PAGE: u32 = 1000;
/// Events one verify request checks at most (five queries): a longer chain is verified in
/// pages, each answer naming where the next one starts.
const VERIFY_PER_REQUEST: u64 = 5 * VERIFY_PAGE as u64;

fn view(e: &ChainedEvent) -> Value {
    let ev = &e.event;
    json!({
        "id": ev.id,
        "at": Timestamp::from_millis(ev.at).to_rfc3339_millis(),
        "action": ev.action,
        "actor": ev.actor,
        "credential_id": ev.credential_id,
        "provider": ev.provider,
        "outcome": ev.outcome,
        "reason": ev.reason,
        "source": ev.source,
        "request_id": ev.request_id,
        "detail": ev.detail,
        "seq": e.seq,
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    })
}

/// A page's cursor: the position in the user's chain where the next page starts. Any
/// such number is a valid position (the chain is the user's own), so it needs no
/// disguise; the description gives its pattern.
fn encode_cursor(seq: u64) -> String {
    seq.to_string()
}

fn decode_cursor(raw: &str) -> Option<u64> {
    if raw.is_empty() || raw.len() > 18 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok()
}

fn parse_query(ctx: &Ctx<'_>) -> Result<AuditQuery, ApiError> {
    let mut errors = Vec::new();
    let mut q = AuditQuery {
        limit: DEFAULT_LIMIT,
        ..Default::default()
    };
    for (name, value) in ctx.request.url.query_pairs() {
        match name.as_ref() {
            "action" => match Action::parse(&value) {
                Some(a) => q.action = Some(a),
                None => errors.push(FieldError::new("action", "is not a known audit action")),
            },
            "credential_id" => match CredentialId::parse(&value) {
                Some(c) => q.credential_id = Some(c),
                None => errors.push(FieldError::new("credential_id", "is not a credential id")),
            },
            "cursor" => match decode_cursor(&value) {
                Some(seq) => q.before_seq = Some(seq),
                None => errors.push(FieldError::new(
                    "cursor",
                    "is not a cursor this API returned",
                )),
            },
            "limit" => match value.parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => q.limit = n,
                _ => errors.push(FieldError::new(
                    "limit",
                    format!("must be an integer from 1 to {MAX_LIMIT}"),
                )),
            },
            other => errors.push(FieldError::new(other, "is not a known query parameter")),
        }
    }
    if errors.is_empty() {
        Ok(q)
    } else {
        Err(ApiError::invalid_request(errors))
    }
}

pub(super) async fn list(ctx: &Ctx<'_>) -> Outcome {
    Outcome::unaudited(list_events(ctx, &ctx.user).await)
}

async fn list_events(ctx: &Ctx<'_>, user: &UserId) -> Result<Response, ApiError> {
    let mut query = parse_query(ctx)?;
    let limit = query.limit;
    // One more than asked shows whether there is a next page.
    query.limit = limit + 1;
    let mut rows = ctx.app.audit_log.list(user, &query).await?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| encode_cursor(r.seq))
    } else {
        None
    };
    let events: Vec<Value> = rows.iter().map(view).collect();
    Ok(Response::json(
        200,
        &json!({ "events": events, "next_cursor": next_cursor }),
    ))
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

/// `GET /v1/audit/verify`: recomputes the caller's chain. Bounded per request: at most
/// `VERIFY_PER_REQUEST` events are checked, and when more remain the answer carries
/// `next_cursor` (pass it back as `?cursor=`); `checked` counts from the chain's start.
/// The chain's start (the retention checkpoint) and its end (the head) are trusted only
/// with a seal that verifies under the master key; the last page says so (`sealed`) and
/// gives the head (`head`), which a client may keep to notice a later rollback.
pub(super) async fn verify(ctx: &Ctx<'_>) -> Outcome {
    Outcome::unaudited(verify_chain(ctx, &ctx.user).await)
}

/// The answer for a checkpoint that cannot be trusted: nothing after it can be.
fn broken(checked: u64, seq: u64, why: Break, checkpoint: &Anchor) -> Value {
    json!({
        "ok": false, "checked": checked, "broken_seq": seq, "broken_reason": why.code(),
        "sealed": false, "starts_after_seq": checkpoint.seq,
    })
}

async fn verify_chain(ctx: &Ctx<'_>, user: &UserId) -> Result<Response, ApiError> {
    // The anchors are sealed, and cursors signed, under the master key: without one
    // nothing can be verified.
    let keys = ctx.config.master_keys.as_ref().map_err(|_| {
        ApiError::not_configured(
            "Verifying the audit chain needs the master key, which seals its ends.",
        )
    })?;
    let mut cursor = None;
    for (name, value) in ctx.request.url.query_pairs() {
        match name.as_ref() {
            "cursor" => match VerifyCursor::decode(&value, keys, user) {
                Some(c) => cursor = Some(c),
                None => {
                    return Err(ApiError::invalid_request(vec![FieldError::new(
                        "cursor",
                        "is not a cursor this API returned",
                    )]))
                }
            },
            other => {
                return Err(ApiError::invalid_request(vec![FieldError::new(
                    other,
                    "is not a known query parameter",
                )]))
            }
        }
    }
    let log = ctx.app.audit_log;
    let sealer = Sealer::new(keys, ctx.app.clock.now());
    let configured: Vec<u32> = keys.versions().map(|v| v.get()).collect();
    let anchors = log.anchors(user, &configured).await?;
    let before = cursor.as_ref().map_or(0, |c| c.checked);
    // Every page checks the start: a checkpoint whose seal fails trusts nothing after it.
    let mut sealed = true;
    if let Some(cp) = &anchors.checkpoint {
        let check = sealer.check(AnchorKind::Checkpoint, user.as_str(), cp);
        match judge_anchor(check, AnchorKind::Checkpoint, anchors.legacy_admitted()) {
            Ok(s) => sealed &= s,
            Err(why) => return Ok(Response::json(200, &broken(before, cp.seq + 1, why, cp))),
        }
    }
    let start = match &cursor {
        Some(c) => ChainHead {
            seq: c.seq,
            hash: c.hash.clone(),
        },
        None => anchors
            .checkpoint
            .as_ref()
            .map_or_else(ChainHead::genesis, Anchor::point),
    };
    let mut verifier = Verifier::new(start.clone());
    let mut after = start.seq;
    let mut read = 0u64;
    let mut more = false;
    loop {
        let page = log.chain_page(user, after, VERIFY_PAGE).await?;
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
    let checkpoint = anchors.checkpoint.as_ref();
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
            ApiError::not_configured(
                "Verifying a chain this long needs the master key, which signs the page cursor.",
            )
        })?;
        let mut body = json!({ "ok": true, "checked": next.checked, "next_cursor": signed });
        if let Some(cp) = checkpoint {
            body["starts_after_seq"] = json!(cp.seq);
        }
        return Ok(Response::json(200, &body));
    }
    // The last page: where the chain ends. A break in the links comes first, being the
    // earliest; then an end that is not sealed, or not where the chain ends.
    let chain_start = checkpoint.map_or(0, |cp| cp.seq) + 1;
    let mut why = None;
    let mut shown = None;
    match &anchors.head {
        Some(h) => {
            let check = sealer.check(AnchorKind::Head, user.as_str(), h);
            match judge_anchor(check, AnchorKind::Head, anchors.legacy_admitted()) {
                Ok(s) => {
                    sealed &= s;
                    shown = Some((h, s));
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
    let mut body = json!({
        "ok": why.is_none(), "checked": before + v.checked, "sealed": sealed && why.is_none(),
    });
    if let Some((seq, why)) = why {
        body["broken_seq"] = json!(seq);
        body["broken_reason"] = json!(why.code());
    }
    if let Some((h, s)) = shown {
        body["head"] = json!({
            "seq": h.seq,
            "hash": h.hash,
            "sealed_at": s.then(|| Timestamp::from_millis(h.at).to_rfc3339_millis()),
            "key_version": h.mac_version.filter(|_| s),
        });
    }
    if let Some(cp) = checkpoint {
        body["starts_after_seq"] = json!(cp.seq);
    }
    Ok(Response::json(200, &body))
}
