//! `/v1/providers` and `/v1/credentials`: add (validated live first), list, show, change
//! or rotate, re-check, models, delete.

use serde_json::json;

use super::input::{is_json, JsonObject};
use super::{views, Ctx, Response};
use crate::audit::Action;
use crate::crypto::{fingerprint, open, random_bytes, seal, MasterKeys, Sealed, SecretKey};
use crate::domain::{
    key_hint, Credential, CredentialId, CredentialParams, CredentialStatus, ProviderId, Timestamp,
    UserId,
};
use crate::endpoint_guard::check_base_url;
use crate::error::{clip, ApiError, FieldError};
use crate::ports::{Inserted, Occupancy, StoreError, Written};
use crate::probe::{Failure, Prober};
use crate::providers::{self, Accepted, Provider, Target};

/// How often a conditional write is tried again after a concurrent change it may safely
/// build on (a re-check's status, a label) before the request gives up with 409.
const WRITE_ATTEMPTS: usize = 3;

pub(super) fn providers() -> Response {
    let list: Vec<_> = providers::all().map(|p| p.info()).collect();
    Response::json(200, &json!({ "providers": list }))
}

const MAX_API_KEY: usize = 1024;
const MAX_LABEL: usize = 100;
const MAX_MODEL: usize = 200;
const MAX_BASE_URL: usize = 2048;

/// A region names a host label, so it may only hold what a label may.
fn valid_region(r: &str) -> bool {
    (2..=40).contains(&r.len())
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn require_json(ctx: &Ctx<'_, '_>) -> Result<JsonObject, ApiError> {
    if !is_json(ctx.request.header("content-type")) {
        return Err(ApiError::unsupported_media_type());
    }
    JsonObject::parse(&ctx.request.body)
}

/// Checks `api_key` text; records a field error and returns `None` when it is not usable.
fn check_key_text(body: &mut JsonObject, key: Option<String>) -> Option<String> {
    match key {
        Some(k) if k.chars().any(char::is_whitespace) => {
            body.errors
                .push(FieldError::new("api_key", "must not contain whitespace"));
            None
        }
        other => other,
    }
}

/// Checks region and base_url against what the provider takes; returns them normalised.
fn check_destination(
    ctx: &Ctx<'_, '_>,
    body: &mut JsonObject,
    provider: &'static dyn Provider,
    region: Option<String>,
    base_url: Option<String>,
    require: bool,
) -> CredentialParams {
    let info = provider.info();
    let mut params = CredentialParams::default();
    for (field, value) in [("region", region), ("base_url", base_url)] {
        let takes = info.has_field(field);
        match value {
            Some(_) if !takes => body.errors.push(FieldError::new(
                field,
                format!("{} takes no {field}", info.name),
            )),
            None if takes && require => body.errors.push(FieldError::new(
                field,
                format!("is required for {}", info.name),
            )),
            None => {}
            Some(v) if field == "region" => {
                let v = v.to_ascii_lowercase();
                if valid_region(&v) {
                    params.region = Some(v);
                } else {
                    body.errors.push(FieldError::new(
                        field,
                        "must be a region name such as eastus or westeurope",
                    ));
                }
            }
            Some(v) => match check_base_url(&v, ctx.config.allow_private_base_urls) {
                Ok(url) => params.base_url = Some(url),
                Err(e) => body.errors.push(FieldError::new(field, e.to_string())),
            },
        }
    }
    params
}

fn master_keys<'c>(ctx: &Ctx<'c, '_>) -> Result<&'c MasterKeys, ApiError> {
    ctx.config
        .master_keys
        .as_ref()
        .map_err(|e| ApiError::not_configured(e.to_string()))
}

/// What a duplicate is recognised by: the key, or for a keyless endpoint its URL.
fn fingerprint_material(key: &SecretKey, params: &CredentialParams) -> SecretKey {
    if key.is_empty() {
        SecretKey::new(format!(
            "keyless:{}",
            params.base_url.as_deref().unwrap_or_default()
        ))
    } else {
        SecretKey::new(key.expose().to_owned())
    }
}

fn fingerprints(
    keys: &MasterKeys,
    user: &UserId,
    provider: ProviderId,
    material: &SecretKey,
) -> Vec<String> {
    keys.versions()
        .filter_map(|v| fingerprint(keys, v, user, provider, material))
        .collect()
}

/// One live check of `key` at `params` for `user`: the endpoint guard, then the vault's
/// rate limits (refused with 429 before any provider is contacted), then the provider,
/// whose every word comes back cleaned (`providers::check`). The outer error is a refusal
/// by the vault; the inner one is the provider's answer.
async fn live_check(
    ctx: &Ctx<'_, '_>,
    user: &UserId,
    provider: &'static dyn Provider,
    params: &CredentialParams,
    key: &SecretKey,
) -> Result<Result<Accepted, Failure>, ApiError> {
    if let Some(url) = &params.base_url {
        if let Err(e) = check_base_url(url, ctx.config.allow_private_base_urls) {
            return Ok(Err(Failure::Unreachable(format!(
                "The base_url is not allowed: it {e}"
            ))));
        }
    }
    ctx.limit_live_check(user).await?;
    let app = ctx.app;
    let prober = Prober::new(
        app.http,
        app.clock,
        app.jitter,
        ctx.config.validation_deadline_ms,
        ctx.config.probe_attempt_timeout_ms,
    );
    let target = Target {
        bases: ctx.config.endpoints(provider.info().id),
        params,
    };
    let outcome = providers::check(provider, &prober, &target, key).await;
    if let Err(f) = &outcome {
        ctx.log(&format!(
            "validation of a {} key failed: {}",
            provider.info().id,
            f.kind()
        ));
    }
    Ok(outcome)
}

fn status_of(f: &Failure) -> CredentialStatus {
    match f {
        Failure::InvalidKey(_) => CredentialStatus::InvalidKey,
        Failure::InsufficientScope(_) => CredentialStatus::InsufficientScope,
        Failure::QuotaExhausted(_) => CredentialStatus::QuotaExhausted,
        Failure::RateLimited { .. } => CredentialStatus::RateLimited,
        Failure::Unreachable(_) => CredentialStatus::Unreachable,
        Failure::ProviderError(_) => CredentialStatus::ProviderError,
    }
}

/// Records a successful check on the row.
fn apply_accepted(c: &mut Credential, accepted: Accepted, now: Timestamp) {
    c.status = CredentialStatus::Valid;
    c.status_detail = None;
    c.warnings = accepted.warnings;
    c.quota = accepted.quota.or(c.quota.take());
    if let Some(models) = accepted.models {
        c.models = Some(models);
        c.models_fetched_at = Some(now);
    }
    c.consecutive_failures = 0;
    c.last_validated_at = Some(now);
    c.updated_at = now;
}

/// Records a check that did not pass on the row.
fn apply_refusal(c: &mut Credential, status: CredentialStatus, detail: &str, now: Timestamp) {
    c.status = status;
    c.status_detail = Some(detail.to_owned());
    c.consecutive_failures += 1;
    c.last_validated_at = Some(now);
    c.updated_at = now;
}

fn check_model(
    provider: &'static dyn Provider,
    model: &str,
    known: Option<&[crate::domain::Model]>,
) -> Result<(), ApiError> {
    match known {
        Some(models) if !models.iter().any(|m| m.id == model) => {
            Err(ApiError::invalid_request(vec![FieldError::new(
                "model",
                format!(
                    "{} does not offer '{}' to this key",
                    provider.info().name,
                    clip(model, 60)
                ),
            )]))
        }
        _ => Ok(()),
    }
}

fn log_store(ctx: &Ctx<'_, '_>, e: crate::ports::StoreError) -> ApiError {
    ctx.log(&format!("database error: {e}"));
    ApiError::from(e)
}

async fn load(ctx: &Ctx<'_, '_>, user: &UserId, raw_id: &str) -> Result<Credential, ApiError> {
    let id = CredentialId::parse(raw_id).ok_or_else(ApiError::not_found)?;
    ctx.note_credential(&id, None);
    let credential = ctx
        .app
        .store
        .get(user, &id)
        .await
        .map_err(|e| log_store(ctx, e))?;
    let credential = credential.ok_or_else(ApiError::not_found)?;
    ctx.note_provider(credential.provider);
    Ok(credential)
}

/// Which of the user's credentials holds one of `prints`, and how many they hold.
async fn occupancy(
    ctx: &Ctx<'_, '_>,
    user: &UserId,
    prints: &[String],
) -> Result<Occupancy, ApiError> {
    ctx.app
        .store
        .occupancy(user, prints)
        .await
        .map_err(|e| log_store(ctx, e))
}

/// The row as it is now, after a conditional write found it changed; 404 if it is gone.
async fn reload(ctx: &Ctx<'_, '_>, c: &Credential) -> Result<Credential, ApiError> {
    ctx.app
        .store
        .get(&c.user_id, &c.id)
        .await
        .map_err(|e| log_store(ctx, e))?
        .ok_or_else(ApiError::not_found)
}

/// Whether `now` still holds the key (and destination) that `then` held.
fn same_key(then: &Credential, now: &Credential) -> bool {
    then.fingerprint == now.fingerprint && then.params == now.params && then.secret == now.secret
}

/// The stored key in the clear; `None` when it no longer decrypts (a master key version
/// removed, a tampered row). A keyless credential has the empty key.
fn stored_key(ctx: &Ctx<'_, '_>, c: &Credential) -> Result<Option<SecretKey>, ApiError> {
    let keys = master_keys(ctx)?;
    let Some(sealed) = &c.secret else {
        // No envelope: a keyless endpoint, or columns that no longer make one (shown as
        // needing reconfiguration when the row was read).
        return Ok((c.status != CredentialStatus::NeedsReconfiguration)
            .then(|| SecretKey::new(String::new())));
    };
    match open(keys, &c.user_id, &c.id, c.provider, sealed) {
        Ok(key) => Ok(Some(key)),
        Err(e) => {
            ctx.log(&format!("credential {} cannot be decrypted: {e}", c.id));
            Ok(None)
        }
    }
}

pub(super) async fn create(ctx: &Ctx<'_, '_>, user: &UserId) -> Result<Response, ApiError> {
    let mut body = require_json(ctx)?;
    let provider_name = body.string("provider", true, 64);
    let provider = provider_name.as_deref().and_then(providers::find);
    let key_required = provider.is_none_or(|p| {
        p.info()
            .fields
            .iter()
            .any(|f| f.name == "api_key" && f.required)
    });
    let api_key = body.string("api_key", key_required, MAX_API_KEY);
    let api_key = check_key_text(&mut body, api_key);
    let label = body.string("label", false, MAX_LABEL);
    let region = body.string("region", false, 64);
    let base_url = body.string("base_url", false, MAX_BASE_URL);
    let model = body.string("model", false, MAX_MODEL);
    let params = match provider {
        Some(p) => check_destination(ctx, &mut body, p, region, base_url, true),
        None => CredentialParams::default(),
    };
    let errors = body.finish().err().unwrap_or_default();
    let provider = match (provider, provider_name) {
        (None, Some(name)) => {
            let mut e = ApiError::unknown_provider(&name);
            e.errors.extend(errors);
            return Err(e);
        }
        (Some(p), _) if errors.is_empty() => p,
        _ => return Err(ApiError::invalid_request(errors)),
    };
    let info = provider.info();
    ctx.note_provider(info.id);
    // Without a master key nothing can be stored: say so before bothering the provider.
    let keys = master_keys(ctx)?;
    let key = SecretKey::new(api_key.unwrap_or_default());

    let material = fingerprint_material(&key, &params);
    let prints = fingerprints(keys, user, info.id, &material);
    let limit = ctx.config.max_credentials_per_user;
    // Refused before the provider is bothered; checked again, atomically, by the insert.
    let occupied = occupancy(ctx, user, &prints).await?;
    if let Some(existing) = occupied.duplicate {
        ctx.note_credential(&existing, None);
        return Err(ApiError::duplicate(existing));
    }
    if occupied.count >= limit {
        return Err(ApiError::credential_limit_reached(limit));
    }

    let accepted = live_check(ctx, user, provider, &params, &key)
        .await?
        .map_err(|f| ApiError::from_failure(info.id, f))?;
    if let Some(m) = &model {
        check_model(provider, m, accepted.models.as_deref())?;
    }

    let id = CredentialId::from_random(random_bytes().map_err(|_| ApiError::internal())?);
    let secret = if key.is_empty() {
        None
    } else {
        Some(seal(keys, user, &id, info.id, &key).map_err(|e| {
            ctx.log(&format!("sealing failed: {e}"));
            ApiError::internal()
        })?)
    };
    let now = ctx.app.clock.now();
    let mut credential = Credential {
        id,
        user_id: user.clone(),
        provider: info.id,
        label,
        key_hint: (!key.is_empty()).then(|| key_hint(key.expose())),
        secret,
        fingerprint: fingerprint(keys, keys.active(), user, info.id, &material),
        params,
        model,
        status: CredentialStatus::Valid,
        status_detail: None,
        warnings: Vec::new(),
        quota: None,
        models: None,
        models_fetched_at: None,
        consecutive_failures: 0,
        last_validated_at: None,
        created_at: now,
        updated_at: now,
        version: 0,
    };
    apply_accepted(&mut credential, accepted, now);
    ctx.note_credential(&credential.id, None);
    let event = ctx.event(Action::CredentialCreated, user);
    let inserted = ctx
        .app
        .store
        .insert(&credential, &prints, limit, &event)
        .await
        .map_err(|e| log_store(ctx, e))?;
    match inserted {
        Inserted::Done => ctx.committed(&event),
        // A parallel request stored the same key (or the last free slot) meanwhile.
        Inserted::Duplicate(existing) => {
            ctx.note_credential(&existing, None);
            return Err(ApiError::duplicate(existing));
        }
        Inserted::LimitReached => return Err(ApiError::credential_limit_reached(limit)),
    }
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
    let credential = load(ctx, user, id).await?;
    Ok(Response::json(200, &views::credential(&credential)))
}

/// Whether `api_key` in a PATCH is a real new key, not a blank or the masked hint echoed
/// back by a form that shows the current value.
fn is_new_key(candidate: &str, current_hint: Option<&str>) -> bool {
    let c = candidate.trim();
    !(c.is_empty()
        || Some(c) == current_hint
        || c.contains('…')
        || c.contains('•')
        || c.contains("***"))
}

/// What a PATCH changed, which names its audit event.
pub(super) enum Change {
    Rotated,
    ModelOnly,
    Updated,
}

impl Change {
    pub(super) fn action(&self) -> Action {
        match self {
            Change::Rotated => Action::CredentialRotated,
            Change::ModelOnly => Action::ModelSelected,
            Change::Updated => Action::CredentialUpdated,
        }
    }
}

/// A new key (or destination) that passed its check, ready to be written.
struct Rekey {
    /// `None` for a keyless endpoint.
    secret: Option<Sealed>,
    key_hint: Option<String>,
    fingerprint: Option<String>,
    params: CredentialParams,
    accepted: Accepted,
}

pub(super) async fn update(
    ctx: &Ctx<'_, '_>,
    user: &UserId,
    id: &str,
) -> Result<(Response, Change), ApiError> {
    let mut body = require_json(ctx)?;
    let read = load(ctx, user, id).await?;
    let provider = providers::find(read.provider.as_str()).ok_or_else(ApiError::internal)?;

    // api_key is read raw: "" and the echoed hint mean "keep the key", never an error.
    let raw_key = body.raw_string("api_key", MAX_API_KEY);
    let new_key = raw_key.filter(|k| is_new_key(k, read.key_hint.as_deref()));
    let new_key = check_key_text(&mut body, new_key);
    let label = body
        .has("label")
        .then(|| body.string("label", false, MAX_LABEL));
    let model = body
        .has("model")
        .then(|| body.string("model", false, MAX_MODEL));
    let region = body.string("region", false, 64);
    let base_url = body.string("base_url", false, MAX_BASE_URL);
    let wanted = check_destination(ctx, &mut body, provider, region, base_url, false);
    if body.errors.is_empty()
        && !["api_key", "label", "model", "region", "base_url"]
            .iter()
            .any(|f| body.has(f))
    {
        body.errors.push(FieldError::new(
            "body",
            "must name at least one of api_key, label, model, region, base_url",
        ));
    }
    body.finish().map_err(ApiError::invalid_request)?;

    let mut params = read.params.clone();
    let moved = (wanted.region.is_some() && wanted.region != params.region)
        || (wanted.base_url.is_some() && wanted.base_url != params.base_url);
    if wanted.region.is_some() {
        params.region = wanted.region;
    }
    if wanted.base_url.is_some() {
        params.base_url = wanted.base_url;
    }
    // The stored key is never sent to a destination the user has just typed in.
    if moved && new_key.is_none() && read.secret.is_some() {
        return Err(ApiError::secret_required());
    }

    let mut changed = Vec::new();
    // A new key or destination is checked before anything changes: if it fails, the old
    // key stays.
    let rekey = if new_key.is_some() || moved {
        let keys = master_keys(ctx)?;
        let key = SecretKey::new(new_key.unwrap_or_default());
        let material = fingerprint_material(&key, &params);
        let prints = fingerprints(keys, user, read.provider, &material);
        if let Some(existing) = occupancy(ctx, user, &prints)
            .await?
            .duplicate
            .filter(|e| *e != read.id)
        {
            return Err(ApiError::duplicate(existing));
        }
        let accepted = live_check(ctx, user, provider, &params, &key)
            .await?
            .map_err(|f| ApiError::from_failure(read.provider, f))?;
        let secret = if key.is_empty() {
            None
        } else {
            changed.push("api_key");
            Some(
                seal(keys, user, &read.id, read.provider, &key).map_err(|e| {
                    ctx.log(&format!("sealing failed: {e}"));
                    ApiError::internal()
                })?,
            )
        };
        if moved {
            changed.push(if provider.info().has_field("region") {
                "region"
            } else {
                "base_url"
            });
        }
        Some(Rekey {
            key_hint: secret.as_ref().map(|_| key_hint(key.expose())),
            secret,
            fingerprint: fingerprint(keys, keys.active(), user, read.provider, &material),
            params,
            accepted,
        })
    } else {
        None
    };
    if label.is_some() {
        changed.push("label");
    }
    if model.is_some() {
        changed.push("model");
    }
    let change = if changed.contains(&"api_key") {
        Change::Rotated
    } else if changed == ["model"] {
        Change::ModelOnly
    } else {
        Change::Updated
    };
    ctx.note_detail(json!({ "changed": changed }));

    let now = ctx.app.clock.now();
    let mut current = read.clone();
    for _ in 0..WRITE_ATTEMPTS {
        let mut next = current.clone();
        if let Some(r) = &rekey {
            if let Some(secret) = &r.secret {
                next.secret = Some(secret.clone());
                next.key_hint = r.key_hint.clone();
            }
            next.fingerprint = r.fingerprint.clone();
            next.params = r.params.clone();
            apply_accepted(&mut next, r.accepted.clone(), now);
        }
        if let Some(label) = &label {
            next.label = label.clone();
        }
        if let Some(model) = &model {
            if let Some(m) = model {
                check_model(provider, m, next.models.as_deref())?;
            }
            next.model = model.clone();
        }
        next.updated_at = now;
        let event = ctx.event(change.action(), user);
        match ctx.app.store.update(&next, &event).await {
            Ok(Written::Done) => {
                ctx.committed(&event);
                next.version += 1;
                return Ok((Response::json(200, &views::credential(&next)), change));
            }
            Ok(Written::Missing) => return Err(ApiError::not_found()),
            Ok(Written::Conflict) => {
                current = reload(ctx, &read).await?;
                // A change that only moved the status (a re-check) or the label is built
                // on; another key or destination is not overwritten.
                if rekey.is_some() && !same_key(&read, &current) {
                    return Err(ApiError::conflict(
                        "The key was changed by another request meanwhile; this change was not made.",
                    ));
                }
            }
            // The unique index: a parallel request stored this key elsewhere meanwhile.
            Err(StoreError::Conflict(_)) if rekey.is_some() => {
                let prints: Vec<String> = next.fingerprint.iter().cloned().collect();
                let holder = occupancy(ctx, user, &prints).await?.duplicate;
                return Err(match holder.filter(|e| *e != read.id) {
                    Some(existing) => ApiError::duplicate(existing),
                    None => ApiError::conflict("A concurrent change got there first."),
                });
            }
            Err(e) => return Err(log_store(ctx, e)),
        }
    }
    Err(ApiError::conflict(
        "The credential kept changing while this request tried to save; try again.",
    ))
}

/// Re-checks a stored key now and records what the provider says, in the check columns
/// only: the key is never written back. A dead key is a result, not an error: the row's
/// status says so. If the key was rotated (or moved) while the check ran, the result is
/// about a key that is no longer stored: it is not written, and the answer is 409.
async fn revalidate(
    ctx: &Ctx<'_, '_>,
    user: &UserId,
    read: Credential,
) -> Result<Credential, ApiError> {
    let provider = providers::find(read.provider.as_str()).ok_or_else(ApiError::internal)?;
    // Err((status, detail, audit reason)) when the key did not pass.
    let outcome = match stored_key(ctx, &read)? {
        Some(key) => match live_check(ctx, user, provider, &read.params, &key).await? {
            Ok(accepted) => Ok(accepted),
            Err(f) => Err((
                status_of(&f),
                f.message().to_owned(),
                ApiError::from_failure(read.provider, f.clone()).code,
            )),
        },
        None => Err((
            CredentialStatus::NeedsReconfiguration,
            "The stored key cannot be decrypted; enter it again.".to_owned(),
            "decryption_failed",
        )),
    };
    if let Err((_, _, reason)) = &outcome {
        ctx.note_failure(reason);
    }
    let now = ctx.app.clock.now();
    let mut current = read.clone();
    for _ in 0..WRITE_ATTEMPTS {
        let mut next = current.clone();
        match &outcome {
            Ok(accepted) => apply_accepted(&mut next, accepted.clone(), now),
            Err((status, detail, _)) => apply_refusal(&mut next, *status, detail, now),
        }
        ctx.note_detail(json!({
            "previous_status": current.status.as_str(),
            "new_status": next.status.as_str(),
        }));
        let event = ctx.event(Action::CredentialValidated, user);
        match ctx
            .app
            .store
            .record_check(&next, &event)
            .await
            .map_err(|e| log_store(ctx, e))?
        {
            Written::Done => {
                ctx.committed(&event);
                next.version += 1;
                return Ok(next);
            }
            Written::Missing => return Err(ApiError::not_found()),
            Written::Conflict => {
                current = reload(ctx, &read).await?;
                if !same_key(&read, &current) {
                    return Err(ApiError::conflict(
                        "The key was replaced while it was being checked; the new key was checked when it was saved.",
                    ));
                }
            }
        }
    }
    Err(ApiError::conflict(
        "The credential kept changing while it was being checked; try again.",
    ))
}

pub(super) async fn validate(
    ctx: &Ctx<'_, '_>,
    user: &UserId,
    id: &str,
) -> Result<Response, ApiError> {
    let credential = load(ctx, user, id).await?;
    let credential = revalidate(ctx, user, credential).await?;
    Ok(Response::json(200, &views::credential(&credential)))
}

/// `GET …/models`: the list cached from the last check, or a fresh one with
/// `?refresh=true` (or when none was ever fetched). Returns whether it re-checked.
pub(super) async fn models(
    ctx: &Ctx<'_, '_>,
    user: &UserId,
    id: &str,
) -> Result<(Response, bool), ApiError> {
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
    let mut credential = load(ctx, user, id).await?;
    let supported = providers::find(credential.provider.as_str())
        .is_some_and(|p| p.info().supports_model_listing);
    let recheck = supported && (refresh || credential.models_fetched_at.is_none());
    if recheck {
        credential = revalidate(ctx, user, credential).await?;
    }
    let body = json!({
        "models": views::models(credential.models.as_deref()),
        "fetched_at": credential.models_fetched_at.map(|t| t.to_rfc3339()),
    });
    Ok((Response::json(200, &body), recheck))
}

pub(super) async fn delete(
    ctx: &Ctx<'_, '_>,
    user: &UserId,
    id: &str,
) -> Result<Response, ApiError> {
    let id = CredentialId::parse(id).ok_or_else(ApiError::not_found)?;
    ctx.note_credential(&id, None);
    let event = ctx.event(Action::CredentialDeleted, user);
    let deleted = ctx
        .app
        .store
        .delete(user, &id, &event)
        .await
        .map_err(|e| log_store(ctx, e))?;
    let provider = deleted.ok_or_else(ApiError::not_found)?;
    ctx.note_provider(provider);
    ctx.committed(&event);
    Ok(Response::empty(204))
}

/// Used by preferences: the user's credential, or 404.
pub(super) async fn owned(
    ctx: &Ctx<'_, '_>,
    user: &UserId,
    id: &CredentialId,
) -> Result<Credential, ApiError> {
    let credential = ctx
        .app
        .store
        .get(user, id)
        .await
        .map_err(|e| log_store(ctx, e))?;
    credential.ok_or_else(|| ApiError::not_found().detail("No such credential."))
}
