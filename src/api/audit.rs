//! `GET /v1/audit` (the caller's own events, newest first) and `GET /v1/audit/verify`.

use serde_json::{json, Value};

use super::context::{Ctx, Outcome};
use super::problem::ApiError;
use super::Response;
use crate::audit::{Action, AuditQuery, ChainedEvent};
use crate::domain::{CredentialId, Timestamp, UserId};
use crate::error::FieldError;

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;

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
    let query = parse_query(ctx)?;
    let page = ctx.trail().list(user, query).await?;
    let events: Vec<Value> = page.events.iter().map(view).collect();
    let next_cursor = page.next_before_seq.map(encode_cursor);
    Ok(Response::json(
        200,
        &json!({ "events": events, "next_cursor": next_cursor }),
    ))
}

/// `GET /v1/audit/verify`: recomputes the caller's chain. Bounded per request: at most
/// 5000 events are checked, and when more remain the answer carries
/// `next_cursor` (pass it back as `?cursor=`); `checked` counts from the chain's start.
/// The chain's start (the retention checkpoint) and its end (the head) are trusted only
/// with a seal that verifies under the master key; the last page says so (`sealed`) and
/// gives the head (`head`), which a client may keep to notice a later rollback.
pub(super) async fn verify(ctx: &Ctx<'_>) -> Outcome {
    Outcome::unaudited(verify_chain(ctx, &ctx.user).await)
}

async fn verify_chain(ctx: &Ctx<'_>, user: &UserId) -> Result<Response, ApiError> {
    let mut cursor = None;
    for (name, value) in ctx.request.url.query_pairs() {
        match name.as_ref() {
            "cursor" => cursor = Some(value.into_owned()),
            other => {
                return Err(ApiError::invalid_request(vec![FieldError::new(
                    other,
                    "is not a known query parameter",
                )]))
            }
        }
    }
    let keys = ctx.config.master_keys.as_ref().ok();
    let v = ctx.trail().verify(keys, user, cursor.as_deref()).await?;
    let mut body = match &v.next_cursor {
        // Everything read so far holds; the next request goes on from the cursor.
        Some(next) => json!({ "ok": true, "checked": v.checked, "next_cursor": next }),
        None => json!({ "ok": v.broken.is_none(), "checked": v.checked, "sealed": v.sealed }),
    };
    if let Some((seq, why)) = v.broken {
        body["broken_seq"] = json!(seq);
        body["broken_reason"] = json!(why.code());
    }
    if let Some(h) = &v.head {
        body["head"] = json!({
            "seq": h.seq,
            "hash": h.hash,
            "sealed_at": h.sealed_at.map(|at| Timestamp::from_millis(at).to_rfc3339_millis()),
            "key_version": h.key_version,
        });
    }
    if let Some(seq) = v.starts_after_seq {
        body["starts_after_seq"] = json!(seq);
    }
    Ok(Response::json(200, &body))
}
