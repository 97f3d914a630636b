//! `GET /v1/usage` (the caller's metered use) and `GET /v1/admin/usage` (every user's, for
//! operators): the usage table read over a range of UTC days, summed as asked.
//!
//! The answer lists rows of `day`, `provider`, `credential_id`, `source`, `model` and their
//! counters (`requests`, `input_tokens`, `output_tokens`, `characters`, `audio_seconds`, and
//! `incomplete`: how many of those calls had usage that did not arrive whole). `group_by`
//! sums over the keys it does not keep, which are then null: `day` keeps the day;
//! `credential` the key (credential, provider, source; a system key's row has a null
//! `credential_id` and source `system`); `provider` the provider; `model` the provider and
//! model. An operator's rows also name their `user_id`, and are never summed across users.
//! At most [`MAX_ROWS`] rows; `truncated` says when there were more.

use serde_json::{json, Value};

use super::context::{Ctx, Outcome, ServiceCtx};
use super::problem::ApiError;
use super::{Request, Response};
use crate::audit::Source;
use crate::domain::{Timestamp, UserId};
use crate::error::FieldError;
use crate::metering::{GroupBy, UsageQuery, UsageRow, UsageStore};

/// The most rows one answer lists.
pub(super) const MAX_ROWS: u32 = 1000;
/// Days listed when the range is not given: this many, ending today.
const DEFAULT_DAYS: u64 = 30;
/// The longest range one request may ask for, in days.
const MAX_DAYS: u64 = 366;
const DAY_MS: u64 = 86_400_000;

/// Reads the query: `from`, `to` and `group_by` for anyone, `user_id` and `source` for
/// operators. Any other parameter, a malformed value or a range that is backwards or
/// longer than [`MAX_DAYS`] is refused, every problem named.
fn parse_query(
    request: &Request,
    today: Timestamp,
    operator: bool,
) -> Result<UsageQuery, ApiError> {
    let mut errors = Vec::new();
    let (mut from, mut to, mut group_by, mut user, mut source) = (None, None, None, None, None);
    let day = |field: &'static str, raw: &str, errors: &mut Vec<FieldError>| {
        let day = Timestamp::parse_utc_day(raw);
        if day.is_none() {
            errors.push(FieldError::new(
                field,
                "must be a day written YYYY-MM-DD (UTC)",
            ));
        }
        day
    };
    for (name, value) in request.url.query_pairs() {
        match name.as_ref() {
            "from" => from = day("from", &value, &mut errors),
            "to" => to = day("to", &value, &mut errors),
            "group_by" => match GroupBy::parse(&value) {
                Some(g) => group_by = Some(g),
                None => errors.push(FieldError::new(
                    "group_by",
                    "must be one of day, credential, provider, model",
                )),
            },
            "user_id" if operator => match UserId::parse(&value) {
                Some(u) => user = Some(u),
                None => errors.push(FieldError::new("user_id", "is not a user id")),
            },
            "source" if operator => match Source::parse(&value) {
                Some(s) => source = Some(s),
                None => errors.push(FieldError::new("source", "must be user or system")),
            },
            other => errors.push(FieldError::new(other, "is not a known query parameter")),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_request(errors));
    }
    let today = Timestamp::parse_utc_day(&today.utc_day()).unwrap_or(today);
    let to = to.unwrap_or(today);
    let from = from.unwrap_or(Timestamp::from_millis(
        to.as_millis().saturating_sub((DEFAULT_DAYS - 1) * DAY_MS),
    ));
    if to < from {
        return Err(ApiError::invalid_request(vec![FieldError::new(
            "to",
            "must not be before from (to is today when not given)",
        )]));
    }
    if from.millis_until(to) / DAY_MS + 1 > MAX_DAYS {
        return Err(ApiError::invalid_request(vec![FieldError::new(
            "from",
            format!("the range may span at most {MAX_DAYS} days"),
        )]));
    }
    Ok(UsageQuery {
        user,
        source,
        from: from.utc_day(),
        to: to.utc_day(),
        group_by,
        limit: MAX_ROWS + 1,
    })
}

fn view(row: &UsageRow, operator: bool) -> Value {
    let mut v = json!({
        "day": row.day,
        "provider": row.provider,
        "credential_id": row.credential_id,
        "source": row.source,
        "model": row.model,
        "requests": row.requests,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "characters": row.characters,
        "audio_seconds": row.audio_seconds,
        "incomplete": row.incomplete,
    });
    if operator {
        v["user_id"] = json!(row.user_id);
    }
    v
}

/// The rows `query` asks for, as the answer lists them.
async fn answer(
    store: &dyn UsageStore,
    query: UsageQuery,
    operator: bool,
) -> Result<Response, ApiError> {
    let mut rows = store.list(&query).await?;
    let truncated = rows.len() > MAX_ROWS as usize;
    rows.truncate(MAX_ROWS as usize);
    let usage: Vec<Value> = rows.iter().map(|r| view(r, operator)).collect();
    Ok(Response::json(
        200,
        &json!({
            "usage": usage,
            "from": query.from,
            "to": query.to,
            "group_by": query.group_by,
            "truncated": truncated,
        }),
    ))
}

/// `GET /v1/usage`: the caller's own rows, never another user's.
pub(super) async fn list(ctx: &Ctx<'_>) -> Outcome {
    let result = match parse_query(ctx.request, ctx.app.clock.now(), false) {
        Ok(query) => {
            let query = UsageQuery {
                user: Some(ctx.user.clone()),
                ..query
            };
            answer(ctx.app.usage, query, false).await
        }
        Err(e) => Err(e),
    };
    Outcome::unaudited(result)
}

/// `GET /v1/admin/usage`: every user's rows, or one user's (`user_id`), of one source or
/// both.
pub(super) async fn admin(ctx: &ServiceCtx<'_>) -> Outcome {
    let result = match parse_query(ctx.request, ctx.app.clock.now(), true) {
        Ok(query) => answer(ctx.app.usage, query, true).await,
        Err(e) => Err(e),
    };
    Outcome::unaudited(result)
}
