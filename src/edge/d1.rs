//! The credential and preference repository over D1: the only place that knows their SQL.

use async_trait::async_trait;
use serde::Deserialize;
use worker::wasm_bindgen::JsValue;

use crate::crypto::Sealed;
use crate::domain::{
    Capability, Credential, CredentialId, CredentialParams, CredentialStatus, ProviderId,
    Timestamp, UserId,
};
use crate::ports::{CredentialStore, Preference, StoreError};
use crate::providers;

use super::db::{json, millis, num, opt_millis, opt_text, text, unavailable, Db};

pub struct D1Store<'a> {
    db: &'a Db,
}

impl<'a> D1Store<'a> {
    pub fn new(db: &'a Db) -> Self {
        Self { db }
    }
}

/// `key_version`, `nonce`, `ciphertext` of a row (all NULL for a keyless credential).
fn sealed_columns(c: &Credential) -> (JsValue, JsValue, JsValue) {
    match &c.secret {
        Some(s) => (
            JsValue::from(f64::from(s.key_version.get())),
            text(&s.nonce_b64()),
            text(&s.ciphertext_b64()),
        ),
        None => (JsValue::NULL, JsValue::NULL, JsValue::NULL),
    }
}

/// The columns a credential's life changes, in the order of [`mutable_values`].
const MUTABLE: [&str; 17] = [
    "label",
    "key_hint",
    "key_version",
    "nonce",
    "ciphertext",
    "fingerprint",
    "params",
    "model",
    "status",
    "status_detail",
    "warnings",
    "quota",
    "models",
    "models_fetched_at",
    "consecutive_failures",
    "last_validated_at",
    "updated_at",
];

fn mutable_values(c: &Credential) -> [JsValue; 17] {
    let (version, nonce, ciphertext) = sealed_columns(c);
    [
        opt_text(c.label.as_deref()),
        opt_text(c.key_hint.as_deref()),
        version,
        nonce,
        ciphertext,
        opt_text(c.fingerprint.as_deref()),
        json(&c.params),
        opt_text(c.model.as_deref()),
        text(c.status.as_str()),
        opt_text(c.status_detail.as_deref()),
        json(&c.warnings),
        c.quota.as_ref().map(json).unwrap_or(JsValue::NULL),
        c.models.as_ref().map(json).unwrap_or(JsValue::NULL),
        opt_millis(c.models_fetched_at),
        JsValue::from(f64::from(c.consecutive_failures)),
        opt_millis(c.last_validated_at),
        millis(c.updated_at),
    ]
}

const COLUMNS: &str = "id, user_id, provider, label, key_hint, key_version, nonce, ciphertext, \
    fingerprint, params, model, status, status_detail, warnings, quota, models, models_fetched_at, \
    consecutive_failures, last_validated_at, created_at, updated_at";

#[derive(Deserialize)]
struct Row {
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
    last_validated_at: Option<f64>,
    created_at: f64,
    updated_at: f64,
}

fn parse_json<T: serde::de::DeserializeOwned>(s: &Option<String>) -> Option<T> {
    s.as_deref().and_then(|s| serde_json::from_str(s).ok())
}

impl Row {
    fn into_credential(self) -> Result<Credential, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("credential {}: {what}", self.id));
        let id = CredentialId::parse(&self.id).ok_or_else(|| corrupt("id"))?;
        let user_id = UserId::parse(&self.user_id).ok_or_else(|| corrupt("user_id"))?;
        let provider: ProviderId = providers::find(&self.provider)
            .ok_or_else(|| corrupt("provider"))?
            .info()
            .id;
        let status = CredentialStatus::parse(&self.status).ok_or_else(|| corrupt("status"))?;
        let secret = match (self.key_version, &self.nonce, &self.ciphertext) {
            (Some(v), Some(n), Some(c)) => {
                // A malformed envelope is reported as undecryptable, not as a broken listing.
                Sealed::from_stored(v as u32, n, c)
            }
            _ => None,
        };
        let ms = |v: f64| Timestamp::from_millis(v as u64);
        Ok(Credential {
            id,
            user_id,
            provider,
            label: self.label.clone(),
            key_hint: self.key_hint.clone(),
            status: if secret.is_none() && self.ciphertext.is_some() {
                CredentialStatus::NeedsReconfiguration
            } else {
                status
            },
            secret,
            fingerprint: self.fingerprint.clone(),
            params: parse_json(&self.params).unwrap_or_else(CredentialParams::default),
            model: self.model.clone(),
            status_detail: self.status_detail.clone(),
            warnings: parse_json(&self.warnings).unwrap_or_default(),
            quota: parse_json(&self.quota),
            models: parse_json(&self.models),
            models_fetched_at: self.models_fetched_at.map(ms),
            consecutive_failures: self.consecutive_failures.unwrap_or(0.0) as u32,
            last_validated_at: self.last_validated_at.map(ms),
            created_at: ms(self.created_at),
            updated_at: ms(self.updated_at),
        })
    }
}

#[async_trait(?Send)]
impl CredentialStore for D1Store<'_> {
    async fn insert(&self, c: &Credential) -> Result<(), StoreError> {
        let marks: Vec<String> = (1..=4 + MUTABLE.len()).map(|i| format!("?{i}")).collect();
        let sql = format!(
            "INSERT INTO credentials (id, user_id, provider, created_at, {}) VALUES ({})",
            MUTABLE.join(", "),
            marks.join(", ")
        );
        let mut args = vec![
            text(c.id.as_str()),
            text(c.user_id.as_str()),
            text(c.provider.as_str()),
            millis(c.created_at),
        ];
        args.extend(mutable_values(c));
        self.db.run(&sql, &args).await?;
        Ok(())
    }

    async fn get(
        &self,
        user: &UserId,
        id: &CredentialId,
    ) -> Result<Option<Credential>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM credentials WHERE user_id = ?1 AND id = ?2");
        let args = [text(user.as_str()), text(id.as_str())];
        let row: Option<Row> = self.db.first(&sql, &args, None).await?;
        row.map(Row::into_credential).transpose()
    }

    async fn list(
        &self,
        user: &UserId,
        provider: Option<ProviderId>,
    ) -> Result<Vec<Credential>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM credentials WHERE user_id = ?1 AND (?2 IS NULL OR provider = ?2) \
             ORDER BY created_at DESC, id"
        );
        let args = [text(user.as_str()), opt_text(provider.map(|p| p.as_str()))];
        let rows: Vec<Row> = self.db.all(&sql, &args).await?;
        rows.into_iter().map(Row::into_credential).collect()
    }

    async fn update(&self, c: &Credential) -> Result<bool, StoreError> {
        let sets: Vec<String> = MUTABLE
            .iter()
            .enumerate()
            .map(|(i, col)| format!("{col} = ?{}", i + 3))
            .collect();
        let sql = format!(
            "UPDATE credentials SET {} WHERE user_id = ?1 AND id = ?2",
            sets.join(", ")
        );
        let mut args = vec![text(c.user_id.as_str()), text(c.id.as_str())];
        args.extend(mutable_values(c));
        Ok(self.db.run(&sql, &args).await? > 0)
    }

    async fn delete(
        &self,
        user: &UserId,
        id: &CredentialId,
    ) -> Result<Option<ProviderId>, StoreError> {
        let args = [text(user.as_str()), text(id.as_str())];
        // One transaction: the preferences that pointed at it go with the row.
        let results = self
            .db
            .batch(vec![
                self.db.prepare(
                    "DELETE FROM preferences WHERE user_id = ?1 AND credential_id = ?2",
                    &args,
                )?,
                self.db.prepare(
                    "DELETE FROM credentials WHERE user_id = ?1 AND id = ?2 RETURNING provider",
                    &args,
                )?,
            ])
            .await?;
        #[derive(Deserialize)]
        struct Deleted {
            provider: String,
        }
        let deleted: Vec<Deleted> = match results.get(1) {
            Some(r) => r.results().map_err(unavailable)?,
            None => Vec::new(),
        };
        Ok(deleted
            .first()
            .and_then(|d| providers::find(&d.provider))
            .map(|p| p.info().id))
    }

    async fn find_by_fingerprint(
        &self,
        user: &UserId,
        fingerprints: &[String],
    ) -> Result<Option<CredentialId>, StoreError> {
        let sql = "SELECT id FROM credentials WHERE user_id = ?1 AND fingerprint = ?2 LIMIT 1";
        for fp in fingerprints {
            let id: Option<String> = self
                .db
                .first(sql, &[text(user.as_str()), text(fp)], Some("id"))
                .await?;
            if let Some(id) = id.as_deref().and_then(CredentialId::parse) {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db
            .first::<f64>("SELECT COUNT(*) AS n FROM credentials", &[], Some("n"))
            .await?;
        Ok(())
    }

    async fn preferences(&self, user: &UserId) -> Result<Vec<Preference>, StoreError> {
        #[derive(Deserialize)]
        struct Row {
            capability: String,
            credential_id: String,
            provider: String,
            model: Option<String>,
        }
        let sql = "SELECT p.capability, p.credential_id, c.provider, p.model FROM preferences p \
                   JOIN credentials c ON c.id = p.credential_id AND c.user_id = p.user_id \
                   WHERE p.user_id = ?1 ORDER BY p.capability";
        let rows: Vec<Row> = self.db.all(sql, &[text(user.as_str())]).await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                Some(Preference {
                    capability: Capability::parse(&r.capability)?,
                    credential_id: CredentialId::parse(&r.credential_id)?,
                    provider: providers::find(&r.provider)?.info().id,
                    model: r.model,
                })
            })
            .collect())
    }

    async fn set_preference(&self, user: &UserId, p: &Preference) -> Result<(), StoreError> {
        let sql = "INSERT INTO preferences (user_id, capability, credential_id, model, updated_at) \
                   VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (user_id, capability) DO UPDATE SET \
                   credential_id = excluded.credential_id, model = excluded.model, updated_at = excluded.updated_at";
        let args = [
            text(user.as_str()),
            text(p.capability.as_str()),
            text(p.credential_id.as_str()),
            opt_text(p.model.as_deref()),
            num(super::runtime::now_ms()),
        ];
        self.db.run(sql, &args).await?;
        Ok(())
    }
}
