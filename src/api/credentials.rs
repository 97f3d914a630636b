//! `/v1/providers` and `/v1/credentials`: add (validated live first), list, show, delete.

use serde_json::json;

use super::input::{is_json, JsonObject};
use super::{views, Ctx, Response};
use crate::crypto::{fingerprint, random_bytes, seal, SecretKey};
use crate::domain::{
    key_hint, Credential, CredentialId, CredentialParams, CredentialStatus, ProviderId, UserId,
};
use crate::error::{clip, ApiError, FieldError};
use crate::providers::{self, Provider, Target};
use crate::validation::Prober;

pub(super) fn providers() -> Response {
    let list: Vec<_> = providers::all().map(|p| p.info()).collect();
    Response::json(200, &json!({ "providers": list }))
}

/// A checked `POST /v1/credentials` body.
struct NewCredential {
    provider: &'static dyn Provider,
    api_key: SecretKey,
    label: Option<String>,
    params: CredentialParams,
    model: Option<String>,
}

const MAX_API_KEY: usize = 1024;
const MAX_LABEL: usize = 100;
const MAX_MODEL: usize = 200;
const MAX_PARAM: usize = 2048;

fn parse_new(ctx: &Ctx<'_, '_>) -> Result<NewCredential, ApiError> {
    if !is_json(ctx.request.header("content-type")) {
        return Err(ApiError::unsupported_media_type());
    }
    let mut body = JsonObject::parse(&ctx.request.body)?;
    let provider_name = body.string("provider", true, 64);
    let api_key = body.string("api_key", true, MAX_API_KEY);
    let label = body.string("label", false, MAX_LABEL);
    let region = body.string("region", false, 64);
    let base_url = body.string("base_url", false, MAX_PARAM);
    let model = body.string("model", false, MAX_MODEL);

    if api_key
        .as_deref()
        .is_some_and(|k| k.chars().any(char::is_whitespace))
    {
        body.errors
            .push(FieldError::new("api_key", "must not contain whitespace"));
    }
    let provider = provider_name.as_deref().and_then(providers::find);
    if let Some(p) = provider {
        let info = p.info();
        for (field, present) in [
            ("region", region.is_some()),
            ("base_url", base_url.is_some()),
        ] {
            if present && !info.has_field(field) {
                body.errors.push(FieldError::new(
                    field,
                    format!("{} takes no {field}", info.name),
                ));
            }
        }
    }
    let errors = body.finish().err().unwrap_or_default();
    match (provider, provider_name) {
        (None, Some(name)) => {
            let mut e = ApiError::unknown_provider(&name);
            e.errors.extend(errors);
            Err(e)
        }
        (Some(provider), _) if errors.is_empty() => Ok(NewCredential {
            provider,
            // `errors` is empty, so the required key is there.
            api_key: SecretKey::new(api_key.unwrap_or_default()),
            label,
            params: CredentialParams { region, base_url },
            model,
        }),
        _ => Err(ApiError::invalid_request(errors)),
    }
}

pub(super) async fn create(ctx: &Ctx<'_, '_>, user: &UserId) -> Result<Response, ApiError> {
    let new = parse_new(ctx)?;
    // Without a master key nothing can be stored: say so before bothering the provider.
    let info = new.provider.info();
    ctx.note_provider(info.id);
    let keys = ctx
        .config
        .master_keys
        .as_ref()
        .map_err(|e| ApiError::not_configured(e.to_string()))?;

    let fingerprints: Vec<String> = keys
        .versions()
        .filter_map(|v| fingerprint(keys, v, user, info.id, &new.api_key))
        .collect();
    if let Some(existing) = ctx
        .app
        .store
        .find_by_fingerprint(user, &fingerprints)
        .await?
    {
        ctx.note_credential(&existing, None);
        return Err(ApiError::duplicate(existing));
    }

    let base_url = ctx
        .config
        .base_url(info.id)
        .ok_or_else(ApiError::internal)?;
    let target = Target {
        base_url,
        params: &new.params,
    };
    let app = ctx.app;
    let prober = Prober::new(
        app.http,
        app.clock,
        app.jitter,
        ctx.config.validation_deadline_ms,
        ctx.config.probe_attempt_timeout_ms,
    );
    let accepted = new
        .provider
        .validate(&prober, &target, &new.api_key)
        .await
        .map_err(|f| {
            let f = f.redacted(&new.api_key);
            ctx.log(&format!(
                "validation of a new {} key failed: {}",
                info.id,
                f.kind()
            ));
            ApiError::from_failure(info.id, f)
        })?;

    if let (Some(model), Some(models)) = (&new.model, &accepted.models) {
        if !models.iter().any(|m| &m.id == model) {
            return Err(ApiError::invalid_request(vec![FieldError::new(
                "model",
                format!(
                    "{} does not offer '{}' to this key",
                    info.name,
                    clip(model, 60)
                ),
            )]));
        }
    }

    let id = CredentialId::from_random(random_bytes().map_err(|_| ApiError::internal())?);
    let sealed = seal(keys, user, &id, info.id, &new.api_key).map_err(|e| {
        ctx.log(&format!("sealing failed: {e}"));
        ApiError::internal()
    })?;
    let now = app.clock.now();
    let credential = Credential {
        id,
        user_id: user.clone(),
        provider: info.id,
        label: new.label,
        key_hint: Some(key_hint(new.api_key.expose())),
        secret: Some(sealed),
        fingerprint: fingerprint(keys, keys.active(), user, info.id, &new.api_key),
        params: new.params,
        model: new.model,
        status: CredentialStatus::Valid,
        status_detail: None,
        warnings: accepted.warnings,
        quota: accepted.quota,
        models_fetched_at: accepted.models.as_ref().map(|_| now),
        models: accepted.models,
        consecutive_failures: 0,
        last_validated_at: Some(now),
        created_at: now,
        updated_at: now,
    };
    ctx.note_credential(&credential.id, None);
    app.store.insert(&credential).await.map_err(|e| {
        ctx.log(&format!("storing a credential failed: {e}"));
        ApiError::from(e)
    })?;
    let body = json!({
        "credential": views::credential(&credential),
        "models": views::models(credential.models.as_deref()),
    });
    Ok(Response::json(201, &body)
        .with_header("location", format!("/v1/credentials/{}", credential.id)))
}

pub(super) async fn list(ctx: &Ctx<'_, '_>, user: &UserId) -> Result<Response, ApiError> {
    let provider: Option<ProviderId> = match ctx.request.query("provider") {
        None => None,
        Some(name) => Some(
            providers::find(&name)
                .ok_or_else(|| ApiError::unknown_provider(&name))?
                .info()
                .id,
        ),
    };
    if let Some(p) = provider {
        ctx.note_provider(p);
    }
    let rows = ctx
        .app
        .store
        .list(user, provider)
        .await
        .map_err(|e| log_store(ctx, e))?;
    let list: Vec<_> = rows.iter().map(views::credential).collect();
    Ok(Response::json(200, &json!({ "credentials": list })))
}

pub(super) async fn get(ctx: &Ctx<'_, '_>, user: &UserId, id: &str) -> Result<Response, ApiError> {
    let id = CredentialId::parse(id).ok_or_else(ApiError::not_found)?;
    ctx.note_credential(&id, None);
    let credential = ctx
        .app
        .store
        .get(user, &id)
        .await
        .map_err(|e| log_store(ctx, e))?;
    let credential = credential.ok_or_else(ApiError::not_found)?;
    ctx.note_provider(credential.provider);
    Ok(Response::json(200, &views::credential(&credential)))
}

pub(super) async fn delete(
    ctx: &Ctx<'_, '_>,
    user: &UserId,
    id: &str,
) -> Result<Response, ApiError> {
    let id = CredentialId::parse(id).ok_or_else(ApiError::not_found)?;
    ctx.note_credential(&id, None);
    let deleted = ctx
        .app
        .store
        .delete(user, &id)
        .await
        .map_err(|e| log_store(ctx, e))?;
    let provider = deleted.ok_or_else(ApiError::not_found)?;
    ctx.note_provider(provider);
    Ok(Response::empty(204))
}

fn log_store(ctx: &Ctx<'_, '_>, e: crate::ports::StoreError) -> ApiError {
    ctx.log(&format!("database error: {e}"));
    ApiError::from(e)
}
