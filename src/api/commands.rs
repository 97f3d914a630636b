//! Request bodies parsed into the operations' commands, once, with one parser per field:
//! every problem reported at once as a field error, unknown fields refused.

use super::input::{is_json, JsonObject};
use super::problem::ApiError;
use super::Request;
use crate::config::Config;
use crate::credentials::{CredentialPatch, NewCredential};
use crate::crypto::SecretKey;
use crate::domain::{BatchId, Credential, CredentialParams, UserId};
use crate::endpoint_guard::check_base_url;
use crate::error::{Error, FieldError};
use crate::import::{ImportCommand, ImportEntry, MAX_IMPORT_ENTRIES, MAX_VALIDATED_ENTRIES};
use crate::providers::{self, Provider};
use serde_json::Value;

const MAX_API_KEY: usize = 1024;
const MAX_LABEL: usize = 100;
const MAX_MODEL: usize = 200;
const MAX_REGION: usize = 64;
const MAX_BASE_URL: usize = 2048;

/// The body as a JSON object: 415 unless it says JSON, 400 unless it is an object.
pub(super) fn json_body(request: &Request) -> Result<JsonObject, ApiError> {
    if !is_json(request.header("content-type")) {
        return Err(ApiError::unsupported_media_type());
    }
    JsonObject::parse(request.body())
}

/// A key's text: no whitespace inside (the JSON reader already refused hidden characters
/// and trimmed the ends).
fn api_key_text(body: &mut JsonObject, key: Option<String>) -> Option<String> {
    match key {
        Some(k) if k.chars().any(char::is_whitespace) => {
            body.errors
                .push(FieldError::new("api_key", "must not contain whitespace"));
            None
        }
        other => other,
    }
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

/// A region names a host label, so it may only hold what a label may.
fn valid_region(r: &str) -> bool {
    (2..=40).contains(&r.len())
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Region and base_url, checked against what the provider takes; returned normalised.
/// With `require`, the ones the provider takes must be there.
fn destination(
    config: &Config,
    body: &mut JsonObject,
    provider: &'static dyn Provider,
    (region, base_url): (Option<String>, Option<String>),
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
            Some(v) => match check_base_url(&v, config.allow_private_base_urls) {
                Ok(url) => params.base_url = Some(url),
                Err(e) => body.errors.push(FieldError::new(field, e.to_string())),
            },
        }
    }
    params
}

/// `POST /v1/credentials`: `{"provider","api_key","label"?,"region"?,"base_url"?,"model"?}`.
pub(super) fn new_credential(
    config: &Config,
    mut body: JsonObject,
) -> Result<NewCredential, ApiError> {
    let provider_name = body.string("provider", true, 64);
    let provider = provider_name.as_deref().and_then(providers::find);
    let key_required = provider.is_none_or(|p| {
        p.info()
            .fields
            .iter()
            .any(|f| f.name == "api_key" && f.required)
    });
    let api_key = body.string("api_key", key_required, MAX_API_KEY);
    let api_key = api_key_text(&mut body, api_key);
    let label = body.string("label", false, MAX_LABEL);
    let region = body.string("region", false, MAX_REGION);
    let base_url = body.string("base_url", false, MAX_BASE_URL);
    let model = body.string("model", false, MAX_MODEL);
    let params = match provider {
        Some(p) => destination(config, &mut body, p, (region, base_url), true),
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
    Ok(NewCredential {
        provider,
        api_key: SecretKey::new(api_key.unwrap_or_default()),
        label,
        params,
        model,
    })
}

/// The places a key may take among its user's keys (lower is tried first).
const PRIORITIES: std::ops::RangeInclusive<i64> = -1_000_000..=1_000_000;

/// `PATCH /v1/credentials/{id}`: any of `api_key`, `label`, `model`, `region`,
/// `base_url`, `priority`, read against the stored `credential` (its provider says which fields it
/// takes; its hint, which `api_key` is only the current one echoed back).
pub(super) fn credential_patch(
    config: &Config,
    mut body: JsonObject,
    credential: &Credential,
) -> Result<CredentialPatch, ApiError> {
    let provider = providers::find(credential.provider.as_str()).ok_or_else(ApiError::internal)?;
    // api_key is read raw: "" and the echoed hint mean "keep the key", never an error.
    let raw_key = body.raw_string("api_key", MAX_API_KEY);
    let new_key = raw_key.filter(|k| is_new_key(k, credential.key_hint.as_deref()));
    let api_key = api_key_text(&mut body, new_key);
    let label = body
        .has("label")
        .then(|| body.string("label", false, MAX_LABEL));
    let model = body
        .has("model")
        .then(|| body.string("model", false, MAX_MODEL));
    let priority = body.integer("priority", PRIORITIES);
    let budget = body.value("budget").map(|v| match v {
        Value::Null => Ok(None),
        v => crate::budgets::parse_budget(&v, "budget").map(Some),
    });
    let budget = match budget {
        Some(Ok(b)) => Some(b),
        Some(Err(errors)) => {
            body.errors.extend(errors);
            None
        }
        None => None,
    };
    let region = body.string("region", false, MAX_REGION);
    let base_url = body.string("base_url", false, MAX_BASE_URL);
    let wanted = destination(config, &mut body, provider, (region, base_url), false);
    if body.errors.is_empty()
        && ![
            "api_key", "label", "model", "region", "base_url", "priority", "budget",
        ]
        .iter()
        .any(|f| body.has(f))
    {
        body.errors.push(FieldError::new(
            "body",
            "must name at least one of api_key, label, model, region, base_url, priority, budget",
        ));
    }
    body.finish().map_err(ApiError::invalid_request)?;
    Ok(CredentialPatch {
        api_key: api_key.map(SecretKey::new),
        label,
        model,
        region: wanted.region,
        base_url: wanted.base_url,
        priority,
        budget,
    })
}

/// One import entry: `{"user_id","provider","api_key"?,"label"?,"params"?:{"region"?,
/// "base_url"?},"model"?}`, read as adding the key would read it (the same fields, limits
/// and checks), for the user it names.
pub(super) fn import_entry(config: &Config, value: Value) -> Result<ImportEntry, ApiError> {
    let Value::Object(map) = value else {
        return Err(ApiError::invalid_request(vec![FieldError::new(
            "entry",
            "must be a JSON object",
        )]));
    };
    let mut body = JsonObject::from_map(map);
    if let Some(params) = body.take_object("params") {
        for (name, value) in params {
            let field = format!("params.{name}");
            if !["region", "base_url"].contains(&name.as_str()) {
                body.errors
                    .push(FieldError::new(&field, "is not a known field"));
            } else if !body.insert(name, value) {
                body.errors.push(FieldError::new(&field, "is given twice"));
            }
        }
    }
    let user = body.string("user_id", true, UserId::MAX_LEN);
    let user = user.and_then(|u| {
        UserId::parse(&u).or_else(|| {
            body.errors
                .push(FieldError::new("user_id", "is not a user id"));
            None
        })
    });
    let credential = new_credential(config, body).map_err(|mut e| {
        for f in &mut e.errors {
            if f.field == "region" || f.field == "base_url" {
                f.field = format!("params.{}", f.field);
            }
        }
        // An export with its columns shifted puts a key where the provider should be: the
        // report never quotes what was there.
        for f in e.errors.iter_mut().filter(|f| f.field == "provider") {
            f.message = "is not a provider this vault knows (GET /v1/providers lists them)".into();
        }
        e
    })?;
    let user = user.ok_or_else(ApiError::internal)?;
    Ok(ImportEntry { user, credential })
}

/// Why an import entry was refused, as the import reports it: the fields' problems (or
/// the unknown provider) the entry's parse found.
fn entry_refusal(e: ApiError) -> Error {
    match e.code {
        "unknown_provider" => Error::UnknownProvider(e.errors.clone()),
        "invalid_request" => Error::Invalid(e.errors.clone()),
        _ => Error::internal(e.cause.clone().unwrap_or_else(|| e.code.to_owned())),
    }
}

/// `POST /v1/admin/import`: `{"entries":[…],"dry_run"?,"validate"?,"batch_id"?}`. The
/// envelope must be right (400 otherwise); each entry is read on its own, and one that is
/// wrong is reported as rejected while the others go ahead. An import is real only when
/// `dry_run` is `false`: left out, it is a dry run.
pub(super) fn import_command(
    config: &Config,
    mut body: JsonObject,
) -> Result<ImportCommand, ApiError> {
    let dry_run = body.bool("dry_run").unwrap_or(true);
    let validate = body.bool("validate").unwrap_or(false);
    let batch = body.string("batch_id", false, 64).and_then(|b| {
        BatchId::parse(&b).or_else(|| {
            body.errors
                .push(FieldError::new("batch_id", "is not an import batch id"));
            None
        })
    });
    let entries = body.take_array("entries", true);
    if let Some(entries) = &entries {
        let most = if validate {
            MAX_VALIDATED_ENTRIES
        } else {
            MAX_IMPORT_ENTRIES
        };
        if entries.is_empty() {
            body.errors
                .push(FieldError::new("entries", "must hold at least one entry"));
        } else if entries.len() > most {
            body.errors.push(FieldError::new(
                "entries",
                format!(
                    "holds {} entries; one request takes at most {most}{} (send the rest in further requests with the same batch_id)",
                    entries.len(),
                    if validate { " when they are validated" } else { "" },
                ),
            ));
        }
    }
    body.finish().map_err(ApiError::invalid_request)?;
    Ok(ImportCommand {
        dry_run,
        validate,
        batch,
        entries: entries
            .unwrap_or_default()
            .into_iter()
            .map(|v| import_entry(config, v).map_err(entry_refusal))
            .collect(),
    })
}
