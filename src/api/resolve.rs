//! `POST /v1/resolve` (service scope `resolve`): the key a backend service uses for one
//! user's call, with the receipt that says whose it is and why. The one endpoint that
//! hands out a key in the clear, and only to services.

use serde_json::json;

use super::commands::json_body;
use super::context::{Outcome, ServiceCtx};
use super::problem::ApiError;
use super::Response;
use crate::audit::{Action, Facts};
use crate::domain::{Capability, CredentialId, UserId};
use crate::error::FieldError;
use crate::providers;
use crate::usage::Ask;

pub(super) async fn resolve(ctx: &ServiceCtx<'_>) -> Outcome {
    let mut facts = Facts::new(Action::CredentialUsed);
    let mut body = match json_body(ctx.request) {
        Ok(b) => b,
        Err(e) => return Outcome::unaudited(Err(e)),
    };
    let user = body.string("user_id", true, 256);
    let capability = body.string("capability", true, 16);
    let provider = body.string("provider", false, 64);
    let credential_id = body.string("credential_id", false, 64);
    let allow_fallback = body.bool("allow_fallback").unwrap_or(true);
    let user = user.and_then(|u| {
        UserId::parse(&u).or_else(|| {
            body.errors
                .push(FieldError::new("user_id", "is not a user id"));
            None
        })
    });
    let capability = capability.and_then(|c| {
        Capability::parse(&c).or_else(|| {
            body.errors.push(FieldError::new(
                "capability",
                "must be tts, stt, llm or embedding",
            ));
            None
        })
    });
    let credential_id = credential_id.and_then(|c| {
        CredentialId::parse(&c).or_else(|| {
            body.errors
                .push(FieldError::new("credential_id", "is not a credential id"));
            None
        })
    });
    let mut unknown = None;
    let provider = provider.and_then(|p| match providers::find(&p) {
        Some(found) => Some(found.info()),
        None => {
            unknown = Some(p);
            None
        }
    });
    if let Err(errors) = body.finish() {
        return Outcome::unaudited(Err(ApiError::invalid_request(errors)));
    }
    if let Some(p) = unknown {
        return Outcome::unaudited(Err(ApiError::unknown_provider(&p)));
    }
    let (Some(user), Some(capability)) = (user, capability) else {
        return Outcome::unaudited(Err(ApiError::internal()));
    };
    if let Some(p) = provider.filter(|p| !p.capabilities.contains(&capability)) {
        return Outcome::unaudited(Err(ApiError::invalid_request(vec![FieldError::new(
            "provider",
            format!("{} does not offer {capability}", p.id),
        )])));
    }
    let ask = Ask {
        capability,
        provider: provider.map(|p| p.id),
        credential_id: credential_id.as_ref(),
        allow_fallback,
    };
    let result = async {
        // The service's own address is what the per-address limit on system keys counts.
        let key_use = ctx.key_use();
        let mut key = key_use
            .key_for(&user, &ctx.network, &ask, &mut facts)
            .await?;
        // The call counts one request against the key's budget; a key at its budget gives
        // way to the user's next one, as on the proxy.
        let mut one = crate::budgets::Amounts::default();
        one.set(crate::budgets::Unit::Requests, 1.0);
        key_use
            .admit_first(&user, &mut key, &one, &mut facts)
            .await?;
        Ok(Response::json(
            200,
            &json!({
                "source": key.source,
                "fallback_reason": key.fallback_reason,
                "provider": key.provider,
                "model": key.model,
                "credential_id": key.credential.as_ref().map(|c| &c.id),
                "api_key": key.key.expose(),
                "params": {"region": key.params.region, "base_url": key.params.base_url},
                "system_key_tier": key.tier,
                // The user's keys passed over because they are cooling down.
                "skipped": key.skipped.iter().map(|c| json!({
                    "credential_id": c.id,
                    "reason": c.cooldown.map(|d| d.reason.as_str()),
                    "until": c.cooldown.map(|d| d.until.to_rfc3339()),
                })).collect::<Vec<_>>(),
            }),
        ))
    }
    .await;
    Outcome::audited(result, facts).for_user(user)
}
