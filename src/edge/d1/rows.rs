//! A credential and its `credentials` row: the columns, in the order the statements bind
//! them, and the reading of a row back into a [`Credential`]. Shared by the credential
//! store and the import store, which write the same columns.

use serde_json::Value;
use worker::wasm_bindgen::JsValue;

use crate::domain::StoreError;
use crate::domain::{
    texts_from_json, BatchId, Cooldown, CooldownReason, Credential, CredentialId, CredentialParams,
    CredentialStatus, KeyColumns, Model, ProviderId, Quota, Timestamp, UserId,
};
use crate::providers;

use super::db::{text, Row as D1Row};

/// `key_version`, `nonce`, `ciphertext` of a row (all NULL for a keyless credential).
fn sealed_columns(c: &Credential) -> [Value; 3] {
    match &c.secret {
        Some(s) => [
            Value::from(s.key_version.get()),
            Value::from(s.nonce_b64()),
            Value::from(s.ciphertext_b64()),
        ],
        None => [Value::Null, Value::Null, Value::Null],
    }
}

/// The columns a re-check (or a key's use) owns: the last 12 of [`MUTABLE`].
pub(super) const CHECK_COLUMNS: usize = 12;

/// The columns a credential's life changes, in the order of [`mutable_values`].
pub(super) const MUTABLE: [&str; 23] = [
    "label",
    "key_hint",
    "key_version",
    "nonce",
    "ciphertext",
    "fingerprint",
    "params",
    "model",
    "priority",
    "budget",
    "import_batch_id",
    "status",
    "status_detail",
    "warnings",
    "quota",
    "models",
    "models_fetched_at",
    "consecutive_failures",
    "dead_checks",
    "cooldown_until",
    "cooldown_reason",
    "last_validated_at",
    "updated_at",
];

/// A JSON column's text.
fn json_text<T: serde::Serialize>(v: &T) -> Value {
    Value::from(serde_json::to_string(v).unwrap_or_else(|_| "null".into()))
}

fn opt<T: Into<Value>>(v: Option<T>) -> Value {
    v.map_or(Value::Null, Into::into)
}

/// The values of [`MUTABLE`], as JSON: bound one by one to a statement, or carried many
/// rows at a time in one bound JSON text (an import).
pub(super) fn mutable_values(c: &Credential) -> [Value; 23] {
    let [version, nonce, ciphertext] = sealed_columns(c);
    [
        opt(c.label.clone()),
        opt(c.key_hint.clone()),
        version,
        nonce,
        ciphertext,
        opt(c.fingerprint.clone()),
        json_text(&c.params),
        opt(c.model.clone()),
        Value::from(c.priority),
        c.budget
            .as_ref()
            .map_or(Value::Null, |b| Value::from(b.to_json().to_string())),
        opt(c.import_batch.as_ref().map(|b| b.as_str().to_owned())),
        Value::from(c.status.as_str()),
        opt(c.status_detail.clone()),
        json_text(&c.warnings),
        c.quota.as_ref().map_or(Value::Null, json_text),
        c.models.as_ref().map_or(Value::Null, json_text),
        opt(c.models_fetched_at.map(Timestamp::as_millis)),
        Value::from(c.consecutive_failures),
        Value::from(c.dead_checks),
        opt(c.cooldown.map(|d| d.until.as_millis())),
        opt(c.cooldown.map(|d| d.reason.as_str())),
        opt(c.last_validated_at.map(Timestamp::as_millis)),
        Value::from(c.updated_at.as_millis()),
    ]
}

/// A JSON scalar as a bound parameter (integers as f64: D1 rejects BigInt).
fn bound(v: &Value) -> JsValue {
    match v {
        Value::Null => JsValue::NULL,
        Value::String(s) => text(s),
        Value::Number(n) => JsValue::from(n.as_f64().unwrap_or_default()),
        Value::Bool(b) => JsValue::from(*b),
        other => text(&other.to_string()),
    }
}

pub(super) fn bound_all(values: &[Value]) -> Vec<JsValue> {
    values.iter().map(bound).collect()
}

pub(super) const COLUMNS: &str =
    "id, user_id, provider, label, key_hint, key_version, nonce, ciphertext, \
    fingerprint, params, model, status, status_detail, warnings, quota, models, models_fetched_at, \
    consecutive_failures, last_validated_at, created_at, updated_at, version, last_used_at, \
    revalidation_queued_at, import_batch_id, dead_checks, priority, cooldown_until, cooldown_reason, budget";

pub(super) struct Row {
    id: String,
    user_id: String,
    provider: String,
    label: Option<String>,
    key_hint: Option<String>,
    key_version: Option<f64>,
    nonce: Option<String>,
    ciphertext: Option<String>,
    fingerprint: Option<String>,
    params: Option<String>,
    model: Option<String>,
    status: String,
    status_detail: Option<String>,
    warnings: Option<String>,
    quota: Option<String>,
    models: Option<String>,
    models_fetched_at: Option<f64>,
    consecutive_failures: Option<f64>,
    dead_checks: Option<f64>,
    priority: Option<f64>,
    cooldown_until: Option<f64>,
    cooldown_reason: Option<String>,
    budget: Option<String>,
    last_validated_at: Option<f64>,
    created_at: f64,
    updated_at: f64,
    version: Option<f64>,
    last_used_at: Option<f64>,
    revalidation_queued_at: Option<f64>,
    import_batch_id: Option<String>,
    /// Only in `holdings`: the user's default for the capability, as JSON.
    pub(super) preference: Option<String>,
}

/// A JSON column's text, as bytes for a reader.
fn bytes(s: &Option<String>) -> Option<&[u8]> {
    s.as_deref().map(str::as_bytes)
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(s: &Option<String>) -> Option<T> {
    s.as_deref()
        .and_then(|s| serde_json::from_slice(s.as_bytes()).ok())
}

impl Row {
    pub(super) fn read(r: &D1Row) -> Result<Self, StoreError> {
        let mut c = r.columns();
        let row = Self {
            id: c.text("id"),
            user_id: c.text("user_id"),
            provider: c.text("provider"),
            label: c.opt_text("label"),
            key_hint: c.opt_text("key_hint"),
            key_version: c.opt_num("key_version"),
            nonce: c.opt_text("nonce"),
            ciphertext: c.opt_text("ciphertext"),
            fingerprint: c.opt_text("fingerprint"),
            params: c.opt_text("params"),
            model: c.opt_text("model"),
            status: c.text("status"),
            status_detail: c.opt_text("status_detail"),
            warnings: c.opt_text("warnings"),
            quota: c.opt_text("quota"),
            models: c.opt_text("models"),
            models_fetched_at: c.opt_num("models_fetched_at"),
            consecutive_failures: c.opt_num("consecutive_failures"),
            dead_checks: c.opt_num("dead_checks"),
            priority: c.opt_num("priority"),
            cooldown_until: c.opt_num("cooldown_until"),
            cooldown_reason: c.opt_text("cooldown_reason"),
            budget: c.opt_text("budget"),
            last_validated_at: c.opt_num("last_validated_at"),
            created_at: c.num("created_at"),
            updated_at: c.num("updated_at"),
            version: c.opt_num("version"),
            last_used_at: c.opt_num("last_used_at"),
            revalidation_queued_at: c.opt_num("revalidation_queued_at"),
            import_batch_id: c.opt_text("import_batch_id"),
            preference: c.opt_text("preference"),
        };
        c.finish(row)
    }

    pub(super) fn into_credential(self) -> Result<Credential, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("credential {}: {what}", self.id));
        let id = CredentialId::parse(&self.id).ok_or_else(|| corrupt("id"))?;
        let user_id = UserId::parse(&self.user_id).ok_or_else(|| corrupt("user_id"))?;
        let provider: ProviderId = providers::find(&self.provider)
            .ok_or_else(|| corrupt("provider"))?
            .info()
            .id;
        let status = CredentialStatus::parse(&self.status).ok_or_else(|| corrupt("status"))?;
        // A malformed envelope is reported as undecryptable, not as a broken listing.
        let key = KeyColumns::read(
            self.key_version.map(|v| v as u32),
            self.nonce.as_deref(),
            self.ciphertext.as_deref(),
        );
        let ms = |v: f64| Timestamp::from_millis(v as u64);
        Ok(Credential {
            id,
            user_id,
            provider,
            label: self.label.clone(),
            key_hint: self.key_hint.clone(),
            status: key.shown_status(status),
            secret: key.into_sealed(),
            fingerprint: self.fingerprint.clone(),
            params: bytes(&self.params)
                .and_then(CredentialParams::from_json)
                .unwrap_or_default(),
            model: self.model.clone(),
            status_detail: self.status_detail.clone(),
            warnings: bytes(&self.warnings)
                .and_then(texts_from_json)
                .unwrap_or_default(),
            quota: bytes(&self.quota).and_then(Quota::from_json),
            models: bytes(&self.models).and_then(Model::list_from_json),
            models_fetched_at: self.models_fetched_at.map(ms),
            consecutive_failures: self.consecutive_failures.unwrap_or(0.0) as u32,
            dead_checks: self.dead_checks.unwrap_or(0.0) as u32,
            priority: self.priority.unwrap_or(0.0) as i64,
            cooldown: match (self.cooldown_until, self.cooldown_reason.as_deref()) {
                (Some(until), Some(reason)) => {
                    CooldownReason::parse(reason).map(|reason| Cooldown {
                        until: ms(until),
                        reason,
                    })
                }
                _ => None,
            },
            budget: parse_json::<serde_json::Value>(&self.budget)
                .and_then(|v| crate::domain::Budget::parse(&v, "budget").ok()),
            last_validated_at: self.last_validated_at.map(ms),
            last_used_at: self.last_used_at.map(ms),
            revalidation_queued_at: self.revalidation_queued_at.map(ms),
            import_batch: self.import_batch_id.as_deref().and_then(BatchId::parse),
            created_at: ms(self.created_at),
            updated_at: ms(self.updated_at),
            version: self.version.unwrap_or(0.0) as u64,
        })
    }
}
