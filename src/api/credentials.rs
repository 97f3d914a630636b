//! `/v1/providers` and `/v1/credentials`: the HTTP side only (parse the request into a
//! command, call the operation, render the answer). The operations are in `crate::credentials`.

use serde_json::json;

use super::commands::{credential_patch, json_body, new_credential};
use super::context::{Ctx, Outcome};
use super::problem::ApiError;
use super::{views, Response};
use crate::audit::{Action, Facts};
use crate::domain::ProviderId;
use crate::error::FieldError;
use crate::providers;

pub(super) async fn providers(_: &Ctx<'_>) -> Outcome {
    let list: Vec<_> = providers::all().map(|p| p.info()).collect();
    Outcome::unaudited(Ok(Response::json(200, &json!({ "providers": list }))))
}

pub(super) async fn create(ctx: &Ctx<'_>) -> Outcome {
    let mut facts = Facts::new(Action::CredentialCreated);
    let result = async {
        let command = new_credential(ctx.config, json_body(ctx.request)?)?;
        let credential = ctx
            .credentials()
            .add(&ctx.caller(), command, &mut facts)
            .await?;
        let body = json!({
            "credential": shown(ctx, std::slice::from_ref(&credential)).await[0],
            "models": views::models(credential.models.as_deref()),
        });
        Ok(Response::json(201, &body)
            .with_header("location", format!("/v1/credentials/{}", credential.id)))
    }
    .await;
    Outcome::audited(result, facts)
}

pub(super) async fn list(ctx: &Ctx<'_>) -> Outcome {
    let mut facts = Facts::new(Action::CredentialViewed);
    let result = async {
        let provider: Option<ProviderId> = match ctx.request.query("provider") {
            None => None,
            Some(name) => Some(
                providers::find(&name)
                    .ok_or_else(|| ApiError::unknown_provider(&name))?
                    .info()
                    .id,
            ),
        };
        let rows = ctx
            .credentials()
            .list(&ctx.caller(), provider, &mut facts)
            .await?;
        let list = shown(ctx, &rows).await;
        Ok(Response::json(200, &json!({ "credentials": list })))
    }
    .await;
    Outcome::audited(result, facts)
}

pub(super) async fn get(ctx: &Ctx<'_>) -> Outcome {
    let mut facts = Facts::new(Action::CredentialViewed);
    let result = async {
        let credential = ctx
            .credentials()
            .view(&ctx.caller(), ctx.param(0), &mut facts)
            .await?;
        let shown = shown(ctx, std::slice::from_ref(&credential)).await;
        Ok(Response::json(200, &shown[0]))
    }
    .await;
    Outcome::audited(result, facts)
}

pub(super) async fn update(ctx: &Ctx<'_>) -> Outcome {
    // The action is the operation's to say (rotated, model selected, updated) once it
    // knows what changed.
    let mut facts = Facts::new(Action::CredentialUpdated);
    let result = async {
        let body = json_body(ctx.request)?;
        let credentials = ctx.credentials();
        let caller = ctx.caller();
        let read = credentials.owned(&caller, ctx.param(0), &mut facts).await?;
        let patch = credential_patch(ctx.config, body, &read)?;
        let credential = credentials.change(&caller, read, patch, &mut facts).await?;
        let shown = shown(ctx, std::slice::from_ref(&credential)).await;
        Ok(Response::json(200, &shown[0]))
    }
    .await;
    Outcome::audited(result, facts)
}

pub(super) async fn validate(ctx: &Ctx<'_>) -> Outcome {
    let mut facts = Facts::new(Action::CredentialValidated);
    let result = async {
        let credentials = ctx.credentials();
        let caller = ctx.caller();
        let read = credentials.owned(&caller, ctx.param(0), &mut facts).await?;
        let credential = credentials.recheck(&caller, read, &mut facts).await?;
        let shown = shown(ctx, std::slice::from_ref(&credential)).await;
        Ok(Response::json(200, &shown[0]))
    }
    .await;
    Outcome::audited(result, facts)
}

/// `GET …/models`: the list cached from the last check, or a fresh one with
/// `?refresh=true` (or when none was ever fetched), which is a re-check and audited as one.
pub(super) async fn models(ctx: &Ctx<'_>) -> Outcome {
    let mut facts = Facts::new(Action::CredentialViewed);
    let result = async {
        let refresh = match ctx.request.query("refresh").as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => {
                return Err(ApiError::invalid_request(vec![FieldError::new(
                    "refresh",
                    "must be true or false",
                )]));
            }
        };
        let credentials = ctx.credentials();
        let caller = ctx.caller();
        let mut credential = credentials.owned(&caller, ctx.param(0), &mut facts).await?;
        let supported = providers::find(credential.provider.as_str())
            .is_some_and(|p| p.info().supports_model_listing);
        if supported && (refresh || credential.models_fetched_at.is_none()) {
            // A re-check that happened is audited as one; one refused before it could
            // happen stays a view that failed.
            facts.action = Action::CredentialValidated;
            credential = match credentials.recheck(&caller, credential, &mut facts).await {
                Ok(c) => c,
                Err(e) => {
                    facts.action = Action::CredentialViewed;
                    return Err(e.into());
                }
            };
        }
        let body = json!({
            "models": views::models(credential.models.as_deref()),
            "fetched_at": credential.models_fetched_at.map(|t| t.to_rfc3339()),
        });
        Ok(Response::json(200, &body))
    }
    .await;
    Outcome::audited(result, facts)
}

pub(super) async fn delete(ctx: &Ctx<'_>) -> Outcome {
    let mut facts = Facts::new(Action::CredentialDeleted);
    let result = async {
        ctx.credentials()
            .delete(&ctx.caller(), ctx.param(0), &mut facts)
            .await?;
        Ok(Response::empty(204))
    }
    .await;
    Outcome::audited(result, facts)
}

/// Credentials as shown (a cooldown that has passed shows as none), each with what this
/// period has used of its budget
/// (`usage_this_period`, null without a budget): one read of the budgets' counters, only
/// when a key has a budget. Counters that cannot be read show as null, never as zero.
async fn shown(ctx: &Ctx<'_>, rows: &[crate::domain::Credential]) -> Vec<serde_json::Value> {
    use crate::budgets::Scope;
    let now = ctx.app.clock.now();
    let scopes: Vec<(Scope, String)> = rows
        .iter()
        .filter_map(|c| {
            c.budget.as_ref().map(|b| {
                (
                    Scope::Credential {
                        user: c.user_id.clone(),
                        id: c.id.clone(),
                    },
                    b.period.key(now),
                )
            })
        })
        .collect();
    let used = if scopes.is_empty() {
        Vec::new()
    } else {
        ctx.app.budgets.used(&scopes).await.unwrap_or_default()
    };
    let mut used = used.into_iter();
    rows.iter()
        .map(|c| {
            let mut v = views::credential(c);
            let this = c
                .budget
                .as_ref()
                .and_then(|_| used.next())
                .map(|a| a.to_json());
            v["usage_this_period"] = json!(this);
            // A cooldown that has passed is over: the key is tried as any other.
            if c.cooldown.is_some_and(|d| !d.holds(now)) {
                v["cooldown_until"] = json!(null);
                v["cooldown_reason"] = json!(null);
            }
            v
        })
        .collect()
}
