//! The OpenAI error and model-list shapes, shared by OpenAI and the providers that copy
//! its API (Groq, Mistral).

use serde_json::Value;

use super::{bearer, json_str, Accepted, Target};
use crate::crypto::SecretKey;
use crate::domain::{Capability, Model};
use crate::http::{HttpRequest, HttpResponse};
use crate::probe::{classify_status, Failure, Prober, Verdict};

/// `{"error":{"message"}}` (OpenAI, Groq), `{"message"}` or `{"detail"}` (Mistral).
pub(super) fn error_message(body: &Value) -> Option<&str> {
    json_str(body, &["error", "message"])
        .or_else(|| json_str(body, &["message"]))
        .or_else(|| json_str(body, &["detail"]))
        .or_else(|| json_str(body, &["error"]))
}

/// A real key restricted so that it may not list models ("Missing scopes: api.model.read").
pub(super) fn missing_scope(r: &HttpResponse) -> bool {
    r.status == 401
        && r.json()
            .as_ref()
            .and_then(error_message)
            .is_some_and(|m| m.contains("Missing scopes") || m.contains("insufficient permissions"))
}

pub(super) fn classify(name: &str, r: &HttpResponse) -> Verdict {
    let body = r.json().unwrap_or(Value::Null);
    let message = error_message(&body).unwrap_or("no reason given");
    let code = json_str(&body, &["error", "code"]).or_else(|| json_str(&body, &["error", "type"]));
    let says = || format!("{name} says: {message}");
    match r.status {
        200..=299 => Verdict::Accept,
        401 if missing_scope(r) => Verdict::Accept,
        401 => Verdict::Reject(Failure::InvalidKey(says())),
        403 => Verdict::Reject(Failure::InsufficientScope(says())),
        429 if code == Some("insufficient_quota") => {
            Verdict::Reject(Failure::QuotaExhausted(says()))
        }
        status => classify_status(status, name, message),
    }
}

/// `{"object":"list","data":[{"id":…}]}`.
pub(super) fn model_ids(r: &HttpResponse) -> Vec<String> {
    let body = r.json().unwrap_or(Value::Null);
    body.get("data")
        .and_then(Value::as_array)
        .map(|data| {
            data.iter()
                .filter_map(|m| m.get("id")?.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Validates with `GET <path>` (the model list) and a bearer key.
pub(super) async fn validate(
    name: &str,
    path: &str,
    capabilities_of: fn(&str) -> Vec<Capability>,
    prober: &Prober<'_>,
    target: &Target<'_>,
    key: &SecretKey,
) -> Result<Accepted, Failure> {
    let url = target.url(path);
    let auth = bearer(key);
    let request = || HttpRequest::get(url.clone()).header("authorization", &auth);
    let response = prober.call(name, request, |r| classify(name, r)).await?;
    if missing_scope(&response) {
        return Ok(Accepted {
            warnings: vec![format!(
                "This key may not list models (it lacks the models read scope), so no model list is shown."
            )],
            ..Accepted::default()
        });
    }
    let models = model_ids(&response)
        .into_iter()
        .map(|id| Model {
            name: id.clone(),
            capabilities: capabilities_of(&id),
            id,
        })
        .collect();
    Ok(Accepted {
        models: Some(models),
        ..Accepted::default()
    })
}
