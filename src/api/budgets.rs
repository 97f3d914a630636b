//! `/v1/admin/budgets/{user_id}` (service scope `admin`): an operator's limits on one
//! user's use of the system keys, overriding `SYSTEM_KEY_BUDGETS` for that user; each
//! change is audited on that user's trail as `budget.updated`.

use serde_json::{json, Value};

use super::context::{Outcome, ServiceCtx};
use super::input::is_json;
use super::problem::ApiError;
use super::Response;
use crate::audit::{Action, Facts};
use crate::budgets::{parse_system_budgets, system_budgets_json, Scope, SystemBudgets};
use crate::domain::UserId;
use crate::error::FieldError;

fn user_of(ctx: &ServiceCtx<'_>) -> Result<UserId, ApiError> {
    // As written in the path, percent-decoded (`auth0%7Cabc` is the user `auth0|abc`).
    let raw = ctx.param(0);
    let decoded: String =
        url::form_urlencoded::parse(format!("u={}", raw.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
    UserId::parse(&decoded).ok_or_else(|| {
        ApiError::invalid_request(vec![FieldError::new("user_id", "is not a user id")])
    })
}

/// The budgets that apply to `user` (theirs, or the default), with this period's use.
async fn view(ctx: &ServiceCtx<'_>, user: &UserId) -> Result<Value, ApiError> {
    let overrides = ctx.app.budgets.overrides(user).await?;
    let (budgets, source): (&SystemBudgets, &str) = match &overrides {
        Some(b) => (b, "user"),
        None => (&ctx.config.system_key_budgets, "default"),
    };
    let now = ctx.app.clock.now();
    let scopes: Vec<(Scope, String)> = budgets
        .iter()
        .map(|(entry, b)| {
            (
                Scope::System {
                    user: user.clone(),
                    entry: entry.clone(),
                },
                b.period.key(now),
            )
        })
        .collect();
    let used = ctx.app.budgets.used(&scopes).await?;
    // Inserted one by one: collecting into the map sorts first, with a sort of its own.
    let mut this_period = serde_json::Map::new();
    for ((entry, b), used) in budgets.iter().zip(used) {
        this_period.insert(
            entry.clone(),
            json!({
                "period": b.period.as_str(),
                "used": used.to_json(),
                "resets_at": b.period.resets_at(now).to_rfc3339(),
            }),
        );
    }
    Ok(json!({
        "user_id": user,
        "budgets": system_budgets_json(budgets),
        "source": source,
        "this_period": this_period,
    }))
}

/// `GET /v1/admin/budgets/{user_id}`: the budgets on that user's system-key use, and
/// what this period has used of each.
pub(super) async fn get(ctx: &ServiceCtx<'_>) -> Outcome {
    let result = async {
        let user = user_of(ctx)?;
        Ok(Response::json(200, &view(ctx, &user).await?))
    }
    .await;
    Outcome::unaudited(result)
}

/// `PUT /v1/admin/budgets/{user_id}`: the `SYSTEM_KEY_BUDGETS` shape, that user's limits
/// from now on (`{}`: none at all); `DELETE` goes back to the default.
pub(super) async fn put(ctx: &ServiceCtx<'_>) -> Outcome {
    change(ctx, true).await
}

pub(super) async fn delete(ctx: &ServiceCtx<'_>) -> Outcome {
    change(ctx, false).await
}

async fn change(ctx: &ServiceCtx<'_>, put: bool) -> Outcome {
    let mut facts = Facts::new(Action::BudgetUpdated);
    let user = match user_of(ctx) {
        Ok(u) => u,
        Err(e) => return Outcome::unaudited(Err(e)),
    };
    let result = async {
        let budgets = if put {
            if !is_json(ctx.request.header("content-type")) {
                return Err(ApiError::unsupported_media_type());
            }
            let value: Value = serde_json::from_slice(ctx.request.body()).map_err(|_| {
                ApiError::invalid_request(vec![FieldError::new("body", "is not JSON")])
            })?;
            Some(parse_system_budgets(&value, "").map_err(ApiError::invalid_request)?)
        } else {
            None
        };
        facts.detail = Some(json!({
            "budgets": budgets.as_ref().map(system_budgets_json),
        }));
        let event = facts.event(&ctx.origin, &user, ctx.app.clock.now(), None);
        ctx.app
            .budgets
            .set_overrides(&user, budgets.as_ref(), &event)
            .await?;
        facts.committed = Some(event.id);
        Ok(Response::json(200, &view(ctx, &user).await?))
    }
    .await;
    Outcome::audited(result, facts).for_user(user)
}
