//! `GET /v1/audit` (the caller's own events, newest first) and `GET /v1/audit/verify`.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use serde_json::{json, Value};

use super::{Ctx, Response};
use crate::audit::{Action, ChainHead, ChainedEvent, Verifier};
use crate::domain::{CredentialId, Timestamp, UserId};
use crate::error::{ApiError, FieldError};
use crate::ports::AuditQuery;

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;
const VERIFY_PAGE: u32 = 500;

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

fn encode_cursor(seq: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("seq:{seq}"))
}

fn decode_cursor(raw: &str) -> Option<u64> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(raw).ok()?).ok()?;
    text.strip_prefix("seq:")?.parse().ok()
}

fn parse_query(ctx: &Ctx<'_, '_>) -> Result<AuditQuery, ApiError> {
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

pub(super) async fn list(ctx: &Ctx<'_, '_>, user: &UserId) -> Result<Response, ApiError> {
    let mut query = parse_query(ctx)?;
    let limit = query.limit;
    // One more than asked shows whether there is a next page.
    query.limit = limit + 1;
    let mut rows = ctx.app.audit_log.list(user, &query).await.map_err(|e| {
        ctx.log(&format!("audit read failed: {e}"));
        ApiError::from(e)
    })?;
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

pub(super) async fn verify(ctx: &Ctx<'_, '_>, user: &UserId) -> Result<Response, ApiError> {
    let log = ctx.app.audit_log;
    let fail = |e| {
        ctx.log(&format!("audit verification could not read the log: {e}"));
        ApiError::from(e)
    };
    let (checkpoint, head) = log.anchors(user).await.map_err(fail)?;
    let start = checkpoint.clone().unwrap_or_else(ChainHead::genesis);
    let mut verifier = Verifier::new(start.clone());
    let mut after = start.seq;
    loop {
        let page = log
            .chain_page(user, after, VERIFY_PAGE)
            .await
            .map_err(fail)?;
        for row in &page {
            verifier.push(row);
        }
        match page.last() {
            Some(last) if page.len() == VERIFY_PAGE as usize && !verifier.is_broken() => {
                after = last.seq
            }
            _ => break,
        }
    }
    let v = verifier.finish(head.as_ref());
    let mut body = json!({ "ok": v.ok, "checked": v.checked });
    if let Some(seq) = v.broken_seq {
        body["broken_seq"] = json!(seq);
    }
    if let Some(cp) = checkpoint {
        body["starts_after_seq"] = json!(cp.seq);
    }
    Ok(Response::json(200, &body))
}
