//! What the API shows of a credential: never the key, never the ciphertext.

use serde_json::{json, Value};

use crate::domain::{Credential, Model};

pub(super) fn credential(c: &Credential) -> Value {
    json!({
        "id": c.id,
        "provider": c.provider,
        "label": c.label,
        "key_hint": c.key_hint,
        "status": c.status.as_str(),
        "status_detail": c.status_detail,
        "warnings": c.warnings,
        "params": {"region": c.params.region, "base_url": c.params.base_url},
        "model": c.model,
        "quota": c.quota,
        "priority": c.priority,
        "cooldown_until": c.cooldown.map(|d| d.until.to_rfc3339()),
        "cooldown_reason": c.cooldown.map(|d| d.reason.as_str()),
        "budget": c.budget.as_ref().map(crate::domain::Budget::to_json),
        "last_validated_at": c.last_validated_at.map(|t| t.to_rfc3339()),
        "last_used_at": c.last_used_at.map(|t| t.to_rfc3339()),
        "created_at": c.created_at.to_rfc3339(),
        "updated_at": c.updated_at.to_rfc3339(),
    })
}

pub(super) fn models(models: Option<&[Model]>) -> Value {
    json!(models.unwrap_or_default())
}
