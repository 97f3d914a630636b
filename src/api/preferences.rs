//! `GET /v1/preferences` and `PUT /v1/preferences/{capability}`: the user's default
//! credential and model per capability.

use serde_json::{json, Value};

use super::credentials::owned;
use super::input::{is_json, JsonObject};
use super::{Ctx, Response};
use crate::audit::Action;
use crate::domain::{Capability, CredentialId, Preference, UserId};
use crate::error::{clip, ApiError, FieldError};
use crate::providers;

fn view(p: &Preference) -> Value {
    json!({"credential_id": p.credential_id, "provider": p.provider, "model": p.model})
}

pub(super) async fn get(ctx: &Ctx<'_, '_>, user: &UserId) -> Result<Response, ApiError> {
    let prefs = ctx.app.store.preferences(user).await.map_err(|e| {
        ctx.log(&format!("database error: {e}"));
        ApiError::from(e)
    })?;
    let mut body = json!({"tts": null, "stt": null, "llm": null});
    for p in &prefs {
        body[p.capability.as_str()] = view(p);
    }
    Ok(Response::json(200, &body))
}

pub(super) async fn put(
    ctx: &Ctx<'_, '_>,
    user: &UserId,
    capability: &str,
) -> Result<Response, ApiError> {
    let capability = Capability::parse(capability)
        .ok_or_else(|| ApiError::not_found().detail("Preferences exist for tts, stt and llm."))?;
    if !is_json(ctx.request.header("content-type")) {
        return Err(ApiError::unsupported_media_type());
    }
    let mut body = JsonObject::parse(&ctx.request.body)?;
    let raw_id = body.string("credential_id", true, 64);
    let model = body.string("model", false, 200);
    let id = match raw_id.as_deref().map(CredentialId::parse) {
        Some(None) => {
            body.errors
                .push(FieldError::new("credential_id", "is not a credential id"));
            None
        }
        Some(Some(id)) => Some(id),
        None => None,
    };
    body.finish().map_err(ApiError::invalid_request)?;
    let id = id.ok_or_else(ApiError::internal)?;
    ctx.note_credential(&id, None);

    let credential = owned(ctx, user, &id).await?;
    ctx.note_provider(credential.provider);
    let info = providers::find(credential.provider.as_str())
        .ok_or_else(ApiError::internal)?
        .info();
    if !info.capabilities.contains(&capability) {
        return Err(ApiError::invalid_request(vec![FieldError::new(
            "credential_id",
            format!("{} does not offer {}", info.name, capability.as_str()),
        )]));
    }
    if let (Some(m), Some(models)) = (&model, &credential.models) {
        let known = models.iter().find(|x| &x.id == m);
        let fits = known
            .is_some_and(|x| x.capabilities.is_empty() || x.capabilities.contains(&capability));
        if !fits {
            return Err(ApiError::invalid_request(vec![FieldError::new(
                "model",
                format!(
                    "{} offers no {} model '{}' to this key",
                    info.name,
                    capability.as_str(),
                    clip(m, 60)
                ),
            )]));
        }
    }
    let preference = Preference {
        capability,
        credential_id: id,
        provider: credential.provider,
        model,
    };
    ctx.note_detail(json!({"capability": capability.as_str(), "model": preference.model}));
    let event = ctx.event(Action::PreferenceUpdated, user);
    let set = ctx
        .app
        .store
        .set_preference(user, &preference, &event)
        .await
        .map_err(|e| {
            ctx.log(&format!("database error: {e}"));
            ApiError::from(e)
        })?;
    if !set {
        // Deleted by a concurrent request since it was read.
        return Err(ApiError::not_found().detail("No such credential."));
    }
    ctx.committed(&event);
    let mut out = view(&preference);
    out["capability"] = json!(capability.as_str());
    Ok(Response::json(200, &out))
}
