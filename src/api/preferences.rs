//! `GET /v1/preferences` and `PUT /v1/preferences/{capability}`: the user's default
//! credential and model per capability.

use serde_json::{json, Value};

use super::commands::json_body;
use super::context::{Ctx, Outcome};
use super::problem::ApiError;
use super::Response;
use crate::audit::{Action, Facts};
use crate::domain::{Capability, CredentialId, Preference};
use crate::error::FieldError;

fn view(p: &Preference) -> Value {
    json!({"credential_id": p.credential_id, "provider": p.provider, "model": p.model})
}

pub(super) async fn get(ctx: &Ctx<'_>) -> Outcome {
    let result = async {
        let prefs = ctx.credentials().preferences(&ctx.user).await?;
        // Every capability is a member, null until the user picks a default for it.
        // Inserted one by one: collecting into the map sorts first, with a sort of its own.
        let mut members = serde_json::Map::new();
        for c in Capability::ALL {
            members.insert(c.as_str().to_owned(), Value::Null);
        }
        let mut body = Value::Object(members);
        for p in &prefs {
            body[p.capability.as_str()] = view(p);
        }
        Ok(Response::json(200, &body))
    }
    .await;
    Outcome::unaudited(result)
}

pub(super) async fn put(ctx: &Ctx<'_>) -> Outcome {
    let mut facts = Facts::new(Action::PreferenceUpdated);
    let result = async {
        let capability = Capability::parse(ctx.param(0)).ok_or_else(|| {
            ApiError::not_found().detail("Preferences exist for tts, stt, llm and embedding.")
        })?;
        let mut body = json_body(ctx.request)?;
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
        let preference = ctx
            .credentials()
            .choose(&ctx.caller(), capability, id, model, &mut facts)
            .await?;
        let mut out = view(&preference);
        out["capability"] = json!(capability.as_str());
        Ok(Response::json(200, &out))
    }
    .await;
    Outcome::audited(result, facts)
}
