//! The credential and preference repository over D1: the only place that knows their SQL.
//! Every write is one D1 batch (a transaction) that also writes the operation's audit
//! event into the outbox, under the same condition as the change itself.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use worker::wasm_bindgen::JsValue;
use worker::D1PreparedStatement;

use crate::audit::AuditEvent;
use crate::credentials::{CredentialStore, Inserted, Occupancy, Written};
use crate::domain::StoreError;
use crate::domain::{
    BatchId, Capability, Credential, CredentialId, CredentialParams, CredentialStatus, KeyColumns,
    Preference, ProviderId, Timestamp, UserId,
};
use crate::import::{BatchRow, BatchRows, ImportRow, ImportStore};
use crate::jobs::{JobRecord, JobStore};
use crate::providers;

use super::audit_store::outbox_insert;
use super::db::{changes, json, millis, num, opt_text, rows_of, text, Db, Row as D1Row};

pub(super) struct D1Store<'a> {
    db: &'a Db,
}

impl<'a> D1Store<'a> {
    pub(super) fn new(db: &'a Db) -> Self {
        Self { db }
    }
}

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

/// The columns a re-check owns: the last 10 of [`MUTABLE`].
const CHECK_COLUMNS: usize = 10;

/// The columns a credential's life changes, in the order of [`mutable_values`].
const MUTABLE: [&str; 19] = [
    "label",
    "key_hint",
    "key_version",
    "nonce",
    "ciphertext",
    "fingerprint",
    "params",
    "model",
    "import_batch_id",
    "status",
    "status_detail",
    "warnings",
    "quota",
    "models",
    "models_fetched_at",
    "consecutive_failures",
    "dead_checks",
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
fn mutable_values(c: &Credential) -> [Value; 19] {
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
        opt(c.import_batch.as_ref().map(|b| b.as_str().to_owned())),
        Value::from(c.status.as_str()),
        opt(c.status_detail.clone()),
        json_text(&c.warnings),
        c.quota.as_ref().map_or(Value::Null, json_text),
        c.models.as_ref().map_or(Value::Null, json_text),
        opt(c.models_fetched_at.map(Timestamp::as_millis)),
        Value::from(c.consecutive_failures),
        Value::from(c.dead_checks),
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

fn bound_all(values: &[Value]) -> Vec<JsValue> {
    values.iter().map(bound).collect()
}

const COLUMNS: &str = "id, user_id, provider, label, key_hint, key_version, nonce, ciphertext, \
    fingerprint, params, model, status, status_detail, warnings, quota, models, models_fetched_at, \
    consecutive_failures, last_validated_at, created_at, updated_at, version, last_used_at, \
    revalidation_queued_at, import_batch_id, dead_checks";

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
    dead_checks: Option<f64>,
    last_validated_at: Option<f64>,
    created_at: f64,
    updated_at: f64,
    version: Option<f64>,
    last_used_at: Option<f64>,
    revalidation_queued_at: Option<f64>,
    import_batch_id: Option<String>,
    /// Only in `holdings`: the user's default for the capability, as JSON.
    preference: Option<String>,
}

fn parse_json<T: serde::de::DeserializeOwned>(s: &Option<String>) -> Option<T> {
    s.as_deref()
        .and_then(|s| serde_json::from_slice(s.as_bytes()).ok())
}

impl Row {
    fn read(r: &D1Row) -> Result<Self, StoreError> {
        Ok(Self {
            id: r.text("id")?,
            user_id: r.text("user_id")?,
            provider: r.text("provider")?,
            label: r.opt_text("label")?,
            key_hint: r.opt_text("key_hint")?,
            key_version: r.opt_num("key_version")?,
            nonce: r.opt_text("nonce")?,
            ciphertext: r.opt_text("ciphertext")?,
            fingerprint: r.opt_text("fingerprint")?,
            params: r.opt_text("params")?,
            model: r.opt_text("model")?,
            status: r.text("status")?,
            status_detail: r.opt_text("status_detail")?,
            warnings: r.opt_text("warnings")?,
            quota: r.opt_text("quota")?,
            models: r.opt_text("models")?,
            models_fetched_at: r.opt_num("models_fetched_at")?,
            consecutive_failures: r.opt_num("consecutive_failures")?,
            dead_checks: r.opt_num("dead_checks")?,
            last_validated_at: r.opt_num("last_validated_at")?,
            created_at: r.num("created_at")?,
            updated_at: r.num("updated_at")?,
            version: r.opt_num("version")?,
            last_used_at: r.opt_num("last_used_at")?,
            revalidation_queued_at: r.opt_num("revalidation_queued_at")?,
            import_batch_id: r.opt_text("import_batch_id")?,
            preference: r.opt_text("preference")?,
        })
    }

    fn into_credential(self) -> Result<Credential, StoreError> {
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
            params: parse_json(&self.params).unwrap_or_else(CredentialParams::default),
            model: self.model.clone(),
            status_detail: self.status_detail.clone(),
            warnings: parse_json(&self.warnings).unwrap_or_default(),
            quota: parse_json(&self.quota),
            models: parse_json(&self.models),
            models_fetched_at: self.models_fetched_at.map(ms),
            consecutive_failures: self.consecutive_failures.unwrap_or(0.0) as u32,
            dead_checks: self.dead_checks.unwrap_or(0.0) as u32,
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

/// `fingerprints` as one bound JSON array, for `IN (SELECT value FROM json_each(?))`.
fn json_list(items: &[String]) -> JsValue {
    json(&items)
}

/// Whether the user holds one of the fingerprints in `?{list}`, for `user_id = ?{user}`.
fn holds_sql(user: usize, list: usize) -> String {
    format!(
        "EXISTS (SELECT 1 FROM credentials WHERE user_id = ?{user} \
         AND fingerprint IN (SELECT value FROM json_each(?{list})))"
    )
}

impl D1Store<'_> {
    /// The statement that puts `event` about credential `id` into the outbox with its
    /// provider read from the row, written only if the user holds that row (a view, a
    /// delete: the event names what it found, never another user's credential).
    fn event_of_row(
        &self,
        user: &UserId,
        id: &CredentialId,
        event: &AuditEvent,
    ) -> Result<D1PreparedStatement, StoreError> {
        let body = serde_json::to_string(event).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.db.prepare(
            "INSERT INTO audit_outbox (id, user_id, event, created_at) \
             SELECT ?3, ?1, json_set(?4, '$.provider', provider), ?5 \
             FROM credentials WHERE user_id = ?1 AND id = ?2",
            &[
                text(user.as_str()),
                text(id.as_str()),
                text(&event.id),
                text(&body),
                num(super::runtime::now_ms()),
            ],
        )
    }

    /// The statements of a conditional write: the event into the outbox if the row is
    /// still at `c.version`, then `UPDATE … SET <columns>, version = version + 1` under the
    /// same condition, then the row's version as it stands afterwards.
    async fn write_if_current(
        &self,
        c: &Credential,
        columns: &[&str],
        values: Vec<JsValue>,
        event: Option<&AuditEvent>,
    ) -> Result<Written, StoreError> {
        let (user, id, version) = (
            text(c.user_id.as_str()),
            text(c.id.as_str()),
            num(c.version),
        );
        let current =
            "EXISTS (SELECT 1 FROM credentials WHERE user_id = ?5 AND id = ?6 AND version = ?7)";
        let sets: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, col)| format!("{col} = ?{}", i + 4))
            .collect();
        let update = format!(
            "UPDATE credentials SET {}, version = version + 1 \
             WHERE user_id = ?1 AND id = ?2 AND version = ?3",
            sets.join(", ")
        );
        let mut args = vec![user.clone(), id.clone(), version.clone()];
        args.extend(values);
        let mut statements: Vec<D1PreparedStatement> = Vec::with_capacity(3);
        if let Some(event) = event {
            statements.push(outbox_insert(
                self.db,
                event,
                current,
                vec![user.clone(), id.clone(), version],
            )?);
        }
        let at = statements.len();
        statements.push(self.db.prepare(&update, &args)?);
        statements.push(self.db.prepare(
            "SELECT version FROM credentials WHERE user_id = ?1 AND id = ?2",
            &[user, id],
        )?);
        let results = self.db.batch(statements).await?;
        let changed = changes(&results, at);
        if changed > 0 {
            return Ok(Written::Done);
        }
        let still_there = rows_of(&results, at + 1)?.read(|r| r.num("version"))?;
        Ok(if still_there.is_empty() {
            Written::Missing
        } else {
            Written::Conflict
        })
    }
}

#[async_trait(?Send)]
impl CredentialStore for D1Store<'_> {
    async fn insert(
        &self,
        c: &Credential,
        fingerprints: &[String],
        limit: u32,
        event: &AuditEvent,
    ) -> Result<Inserted, StoreError> {
        let n = 4 + MUTABLE.len();
        let marks: Vec<String> = (1..=n).map(|i| format!("?{i}")).collect();
        // The same condition guards the outbox row and the insert, in one transaction: a
        // parallel request that stored the key (or the last free slot) first wins.
        let room = |user: usize, list: usize, max: usize| {
            format!(
                "NOT {} AND (SELECT COUNT(*) FROM credentials WHERE user_id = ?{user}) < ?{max}",
                holds_sql(user, list)
            )
        };
        let sql = format!(
            "INSERT INTO credentials (id, user_id, provider, created_at, {}) SELECT {} WHERE {}",
            MUTABLE.join(", "),
            marks.join(", "),
            room(2, n + 1, n + 2)
        );
        let mut args = vec![
            text(c.id.as_str()),
            text(c.user_id.as_str()),
            text(c.provider.as_str()),
            millis(c.created_at),
        ];
        args.extend(bound_all(&mutable_values(c)));
        args.push(json_list(fingerprints));
        args.push(num(u64::from(limit)));
        let results = self
            .db
            .batch(vec![
                outbox_insert(
                    self.db,
                    event,
                    &room(5, 6, 7),
                    vec![
                        text(c.user_id.as_str()),
                        json_list(fingerprints),
                        num(u64::from(limit)),
                    ],
                )?,
                self.db.prepare(&sql, &args)?,
            ])
            .await?;
        let inserted = changes(&results, 1);
        if inserted > 0 {
            return Ok(Inserted::Done);
        }
        let occupancy = self.occupancy(&c.user_id, fingerprints).await?;
        match occupancy.duplicate {
            Some(existing) => Ok(Inserted::Duplicate(existing)),
            None if occupancy.count >= limit => Ok(Inserted::LimitReached),
            None => Err(StoreError::Conflict(
                "the insert's condition changed under it".into(),
            )),
        }
    }

    async fn get(
        &self,
        user: &UserId,
        id: &CredentialId,
    ) -> Result<Option<Credential>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM credentials WHERE user_id = ?1 AND id = ?2");
        let args = [text(user.as_str()), text(id.as_str())];
        let row = self.db.first(&sql, &args).await?;
        row.as_ref()
            .map(Row::read)
            .transpose()?
            .map(Row::into_credential)
            .transpose()
    }

    async fn view(
        &self,
        user: &UserId,
        id: &CredentialId,
        seen: &AuditEvent,
        missing: &AuditEvent,
    ) -> Result<Option<Credential>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM credentials WHERE user_id = ?1 AND id = ?2");
        let args = [text(user.as_str()), text(id.as_str())];
        // Before the batch nothing is written: a failure here is no Corrupt (see the port).
        let unwritten = |e: StoreError| StoreError::Unavailable(e.to_string());
        let held = "EXISTS (SELECT 1 FROM credentials WHERE user_id = ?5 AND id = ?6)";
        // One transaction: the row, and the event that says whether it was there.
        let results = self
            .db
            .batch(vec![
                self.db.prepare(&sql, &args)?,
                self.event_of_row(user, id, seen).map_err(unwritten)?,
                outbox_insert(self.db, missing, &format!("NOT {held}"), args.to_vec())
                    .map_err(unwritten)?,
            ])
            .await?;
        let rows = rows_of(&results, 0)?.read(Row::read)?;
        rows.into_iter()
            .next()
            .map(Row::into_credential)
            .transpose()
    }

    async fn list(
        &self,
        user: &UserId,
        provider: Option<ProviderId>,
        seen: &AuditEvent,
    ) -> Result<Vec<Credential>, StoreError> {
        // A listing shows no models: their column (up to a few hundred KB a row) stays
        // unread.
        let columns = COLUMNS.replace(" models,", " NULL AS models,");
        let sql = format!(
            "SELECT {columns} FROM credentials WHERE user_id = ?1 AND (?2 IS NULL OR provider = ?2) \
             ORDER BY created_at DESC, id"
        );
        let args = [text(user.as_str()), opt_text(provider.map(|p| p.as_str()))];
        // The listing's event rides in the same transaction: one round trip.
        let results = self
            .db
            .batch(vec![
                self.db.prepare(&sql, &args)?,
                // Before the batch nothing is written: a failure here is no Corrupt.
                outbox_insert(self.db, seen, "", Vec::new())
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?,
            ])
            .await?;
        let rows = rows_of(&results, 0)?.read(Row::read)?;
        rows.into_iter().map(Row::into_credential).collect()
    }

    async fn holdings(
        &self,
        user: &UserId,
        capability: Capability,
        providers: &[ProviderId],
    ) -> Result<(Vec<Credential>, Option<Preference>), StoreError> {
        #[derive(Deserialize)]
        struct Default {
            credential_id: String,
            model: Option<String>,
        }
        // One statement: the rows, each carrying the user's default for the capability.
        let columns = COLUMNS.replace(" models,", " NULL AS models,");
        let sql = format!(
            "SELECT {columns}, (SELECT json_object('credential_id', p.credential_id, 'model', p.model) \
               FROM preferences p WHERE p.user_id = ?1 AND p.capability = ?2) AS preference \
             FROM credentials WHERE user_id = ?1 AND provider IN (SELECT value FROM json_each(?3)) \
             ORDER BY created_at DESC, id"
        );
        let names: Vec<&str> = providers.iter().map(|p| p.as_str()).collect();
        let args = [text(user.as_str()), text(capability.as_str()), json(&names)];
        let rows = self.db.all(&sql, &args).await?.read(Row::read)?;
        let default: Option<Default> = rows.first().and_then(|r| parse_json(&r.preference));
        let held = rows
            .into_iter()
            .map(Row::into_credential)
            .collect::<Result<Vec<_>, _>>()?;
        let default = default.and_then(|d| {
            let c = held.iter().find(|c| c.id.as_str() == d.credential_id)?;
            Some(Preference {
                capability,
                credential_id: c.id.clone(),
                provider: c.provider,
                model: d.model,
            })
        });
        Ok((held, default))
    }

    async fn claim_due(
        &self,
        cutoffs: &[Timestamp],
        requeue_before: Timestamp,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<(UserId, CredentialId, ProviderId)>, StoreError> {
        // One statement: select the oldest due rows (by the last-validation index) and mark
        // them claimed, returning what was claimed. The version does not move. A row's
        // cutoff is the one at its `dead_checks` (past the list: not due); the first is
        // the latest of them, which bounds the index range.
        let Some(first) = cutoffs.first() else {
            return Ok(Vec::new());
        };
        let list: Vec<u64> = cutoffs.iter().map(|c| c.as_millis()).collect();
        let rows = self
            .db
            .all(
                "UPDATE credentials SET revalidation_queued_at = ?3 WHERE id IN ( \
                   SELECT id FROM credentials \
                   WHERE (last_validated_at IS NULL OR (last_validated_at <= ?1 \
                       AND last_validated_at <= json_extract(?5, '$[' || dead_checks || ']'))) \
                     AND (revalidation_queued_at IS NULL OR revalidation_queued_at < ?2) \
                   ORDER BY MAX(COALESCE(last_validated_at, 0), COALESCE(revalidation_queued_at, 0)) \
                   LIMIT ?4) \
                 RETURNING id, user_id, provider",
                &[
                    millis(*first),
                    millis(requeue_before),
                    millis(now),
                    num(u64::from(limit)),
                    json(&list),
                ],
            )
            .await?
            .read(|r| Ok((r.text("id")?, r.text("user_id")?, r.text("provider")?)))?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, user_id, provider)| {
                Some((
                    UserId::parse(&user_id)?,
                    CredentialId::parse(&id)?,
                    providers::find(&provider)?.info().id,
                ))
            })
            .collect())
    }

    async fn occupancy(
        &self,
        user: &UserId,
        fingerprints: &[String],
    ) -> Result<Occupancy, StoreError> {
        let found = self
            .occupancies(&[(user.clone(), fingerprints.to_vec())])
            .await?;
        Ok(found.into_iter().next().unwrap_or_default())
    }

    async fn update(&self, c: &Credential, event: &AuditEvent) -> Result<Written, StoreError> {
        self.write_if_current(c, &MUTABLE, bound_all(&mutable_values(c)), Some(event))
            .await
    }

    async fn record_check(
        &self,
        c: &Credential,
        event: Option<&AuditEvent>,
    ) -> Result<Written, StoreError> {
        let from = MUTABLE.len() - CHECK_COLUMNS;
        let values = bound_all(&mutable_values(c)[from..]);
        self.write_if_current(c, &MUTABLE[from..], values, event)
            .await
    }

    async fn delete(
        &self,
        user: &UserId,
        id: &CredentialId,
        event: &AuditEvent,
    ) -> Result<Option<ProviderId>, StoreError> {
        let args = [text(user.as_str()), text(id.as_str())];
        // One transaction: the event, the preferences that pointed at the row, its
        // key-health notices not yet delivered, and the row.
        let results = self
            .db
            .batch(vec![
                self.event_of_row(user, id, event)?,
                self.db.prepare(
                    "DELETE FROM preferences WHERE user_id = ?1 AND credential_id = ?2",
                    &args,
                )?,
                self.db.prepare(
                    "DELETE FROM notifications WHERE user_id = ?1 AND credential_id = ?2",
                    &args,
                )?,
                self.db.prepare(
                    "DELETE FROM credentials WHERE user_id = ?1 AND id = ?2 RETURNING provider",
                    &args,
                )?,
            ])
            .await?;
        let deleted = rows_of(&results, 3)?.read(|r| r.text("provider"))?;
        Ok(deleted
            .first()
            .and_then(|provider| providers::find(provider))
            .map(|p| p.info().id))
    }

    async fn ping(&self, configured: &[u32]) -> Result<Option<u32>, StoreError> {
        // Constant cost, whatever the tables' size: the distinct versions in use (by the
        // credentials and by the audit chains' anchors) are walked by seeking each
        // version index from one to the next (a loose index scan), so the work is one seek
        // per version, not one step per row. (Asking for a row whose version is not
        // configured scans every row when there is none: 14 ms at 100 000 rows, measured
        // by the benchmark.)
        let versions: Vec<u32> = configured.to_vec();
        let found = self
            .db
            .first_num(
                "WITH RECURSIVE used(v) AS ( \
                   SELECT MIN(key_version) FROM credentials WHERE key_version IS NOT NULL \
                   UNION ALL \
                   SELECT (SELECT MIN(key_version) FROM credentials WHERE key_version > used.v) \
                   FROM used WHERE used.v IS NOT NULL), \
                 heads(v) AS ( \
                   SELECT MIN(mac_version) FROM audit_heads WHERE mac_version IS NOT NULL \
                   UNION ALL \
                   SELECT (SELECT MIN(mac_version) FROM audit_heads WHERE mac_version > heads.v) \
                   FROM heads WHERE heads.v IS NOT NULL), \
                 checkpoints(v) AS ( \
                   SELECT MIN(mac_version) FROM audit_checkpoints WHERE mac_version IS NOT NULL \
                   UNION ALL \
                   SELECT (SELECT MIN(mac_version) FROM audit_checkpoints WHERE mac_version > checkpoints.v) \
                   FROM checkpoints WHERE checkpoints.v IS NOT NULL) \
                 SELECT v FROM (SELECT v FROM used UNION ALL SELECT v FROM heads \
                   UNION ALL SELECT v FROM checkpoints) WHERE v IS NOT NULL \
                   AND v NOT IN (SELECT value FROM json_each(?1)) LIMIT 1",
                &[json(&versions)],
                "v",
            )
            .await?;
        Ok(found.map(|v| v as u32))
    }

    async fn stale_keys(
        &self,
        active: u32,
        after: Option<&CredentialId>,
        limit: u32,
    ) -> Result<Vec<Credential>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM credentials WHERE key_version IS NOT NULL AND key_version != ?1 \
             AND (?2 IS NULL OR id > ?2) ORDER BY id LIMIT ?3"
        );
        let args = [
            num(u64::from(active)),
            opt_text(after.map(CredentialId::as_str)),
            num(u64::from(limit)),
        ];
        let rows = self.db.all(&sql, &args).await?.read(Row::read)?;
        rows.into_iter().map(Row::into_credential).collect()
    }

    async fn count_stale(&self, active: u32) -> Result<u64, StoreError> {
        let n = self
            .db
            .first_num(
                "SELECT COUNT(*) AS n FROM credentials WHERE key_version IS NOT NULL AND key_version != ?1",
                &[num(u64::from(active))],
                "n",
            )
            .await?;
        Ok(n.unwrap_or(0.0) as u64)
    }

    async fn preferences(&self, user: &UserId) -> Result<Vec<Preference>, StoreError> {
        struct Row {
            capability: String,
            credential_id: String,
            provider: String,
            model: Option<String>,
        }
        let sql = "SELECT p.capability, p.credential_id, c.provider, p.model FROM preferences p \
                   JOIN credentials c ON c.id = p.credential_id AND c.user_id = p.user_id \
                   WHERE p.user_id = ?1 ORDER BY p.capability";
        let rows = self.db.all(sql, &[text(user.as_str())]).await?.read(|r| {
            Ok(Row {
                capability: r.text("capability")?,
                credential_id: r.text("credential_id")?,
                provider: r.text("provider")?,
                model: r.opt_text("model")?,
            })
        })?;
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

    async fn set_preference(
        &self,
        user: &UserId,
        p: &Preference,
        event: &AuditEvent,
    ) -> Result<bool, StoreError> {
        // Both statements hold only while the user holds the credential: a delete that won
        // the race leaves no preference pointing at nothing (and no foreign-key error).
        let held = "EXISTS (SELECT 1 FROM credentials WHERE user_id = ?5 AND id = ?6)";
        let sql = "INSERT INTO preferences (user_id, capability, credential_id, model, updated_at) \
                   SELECT ?1, ?2, ?3, ?4, ?5 \
                   WHERE EXISTS (SELECT 1 FROM credentials WHERE user_id = ?1 AND id = ?3) \
                   ON CONFLICT (user_id, capability) DO UPDATE SET \
                   credential_id = excluded.credential_id, model = excluded.model, updated_at = excluded.updated_at";
        let args = [
            text(user.as_str()),
            text(p.capability.as_str()),
            text(p.credential_id.as_str()),
            opt_text(p.model.as_deref()),
            num(super::runtime::now_ms()),
        ];
        let results = self
            .db
            .batch(vec![
                outbox_insert(
                    self.db,
                    event,
                    held,
                    vec![text(user.as_str()), text(p.credential_id.as_str())],
                )?,
                self.db.prepare(sql, &args)?,
            ])
            .await?;
        Ok(changes(&results, 1) > 0)
    }
}

/// The JSON text of `rows`, bound as one parameter and read with `json_each`: a statement
/// over hundreds of rows binds one value (D1 allows 100 per statement).
fn json_rows(rows: Vec<Value>) -> JsValue {
    text(&Value::Array(rows).to_string())
}

/// Whether credential `c` is the default of its user for some capability.
const IS_DEFAULT: &str =
    "EXISTS (SELECT 1 FROM preferences p WHERE p.user_id = c.user_id AND p.credential_id = c.id)";

#[async_trait(?Send)]
impl ImportStore for D1Store<'_> {
    async fn occupancies(
        &self,
        wanted: &[(UserId, Vec<String>)],
    ) -> Result<Vec<Occupancy>, StoreError> {
        struct Found {
            i: f64,
            duplicate: Option<String>,
            count: f64,
        }
        let list = wanted
            .iter()
            .map(|(user, prints)| serde_json::json!({"u": user.as_str(), "p": prints}))
            .collect();
        let found = self
            .db
            .all(
                "SELECT j.key AS i, \
                   (SELECT id FROM credentials WHERE user_id = json_extract(j.value, '$.u') \
                     AND fingerprint IN (SELECT value FROM json_each(j.value, '$.p')) LIMIT 1) AS duplicate, \
                   (SELECT COUNT(*) FROM credentials WHERE user_id = json_extract(j.value, '$.u')) AS count \
                 FROM json_each(?1) AS j",
                &[json_rows(list)],
            )
            .await?
            .read(|r| {
                Ok(Found {
                    i: r.num("i")?,
                    duplicate: r.opt_text("duplicate")?,
                    count: r.num("count")?,
                })
            })?;
        let mut out = vec![Occupancy::default(); wanted.len()];
        for f in found {
            if let Some(o) = out.get_mut(f.i as usize) {
                *o = Occupancy {
                    duplicate: f.duplicate.as_deref().and_then(CredentialId::parse),
                    count: f.count as u32,
                };
            }
        }
        Ok(out)
    }

    async fn insert_batch(
        &self,
        batch: &BatchId,
        rows: &[ImportRow],
        refused: &[AuditEvent],
        limit: u32,
        now: Timestamp,
    ) -> Result<Vec<CredentialId>, StoreError> {
        let columns: Vec<&str> = ["id", "user_id", "provider", "created_at"]
            .into_iter()
            .chain(MUTABLE)
            .collect();
        let picks: Vec<String> = (0..columns.len())
            .map(|i| format!("json_extract(j.value, '$.r[{i}]')"))
            .collect();
        // Rows go in as JSON texts of at most STATEMENT_BYTES (a validated row carries its
        // model list; D1 takes a value of at most 2 MB), one INSERT each, in one
        // transaction. Each row carries its values, its fingerprints and its rank among the
        // rows of its user before it in the same statement: a statement judges its rows
        // against the table as it stood before the statement (earlier statements' rows
        // included), so the rank stands for the rows it adds ahead of this one.
        const STATEMENT_BYTES: usize = 900_000;
        let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
        // Each statement's rows, as the JSON text of each (written once), and their length.
        let mut groups: Vec<(Vec<String>, usize)> = vec![(Vec::new(), 0)];
        let mut ranks: Vec<(&str, u32)> = Vec::new();
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            let c = &row.credential;
            let mut values = vec![
                Value::from(c.id.as_str()),
                Value::from(c.user_id.as_str()),
                Value::from(c.provider.as_str()),
                Value::from(c.created_at.as_millis()),
            ];
            values.extend(mutable_values(c));
            let fields = format!(
                "\"r\":{},\"p\":{}",
                serde_json::to_string(&values).map_err(corrupt)?,
                serde_json::to_string(&row.prints).map_err(corrupt)?
            );
            if groups.last().is_some_and(|(g, bytes)| {
                !g.is_empty() && bytes + fields.len() + 16 > STATEMENT_BYTES
            }) {
                groups.push((Vec::new(), 0));
                ranks.clear();
            }
            let i = ranks
                .iter()
                .position(|(u, _)| *u == c.user_id.as_str())
                .unwrap_or_else(|| {
                    ranks.push((c.user_id.as_str(), 0));
                    ranks.len() - 1
                });
            let rank = ranks[i].1;
            ranks[i].1 += 1;
            if let Some((group, bytes)) = groups.last_mut() {
                let text = format!("{{{fields},\"k\":{rank}}}");
                *bytes += text.len() + 1;
                group.push(text);
            }
            let body = serde_json::to_string(&row.event).map_err(corrupt)?;
            events.push(serde_json::json!({
                "i": row.event.id, "c": c.id.as_str(), "u": c.user_id.as_str(), "e": body,
            }));
        }
        // No OR IGNORE: the WHERE clause is the guard, and a constraint that still fires
        // (a race the clause cannot see) fails the whole transaction as a conflict.
        let insert = format!(
            "INSERT INTO credentials ({}) SELECT {} FROM json_each(?1) AS j \
             WHERE NOT EXISTS (SELECT 1 FROM credentials c WHERE c.user_id = json_extract(j.value, '$.r[1]') \
                 AND c.fingerprint IN (SELECT value FROM json_each(j.value, '$.p'))) \
               AND (SELECT COUNT(*) FROM credentials c WHERE c.user_id = json_extract(j.value, '$.r[1]')) \
                 + json_extract(j.value, '$.k') < ?2 \
             ORDER BY j.key RETURNING id",
            columns.join(", "),
            picks.join(", ")
        );
        let stored_here =
            "EXISTS (SELECT 1 FROM credentials c WHERE c.id = json_extract(j.value, '$.c') \
             AND c.user_id = json_extract(j.value, '$.u') AND c.import_batch_id = ?2)";
        let (batch_id, at, events) = (text(batch.as_str()), millis(now), json_rows(events));
        let mut statements = vec![self.db.prepare(
            "INSERT INTO jobs (id, kind, state, total, done, failed, created_at, updated_at) \
             VALUES (?1, 'import', 'done', 0, 0, 0, ?2, ?2) ON CONFLICT (id) DO NOTHING",
            &[batch_id.clone(), at.clone()],
        )?];
        let inserts = 1..1 + groups.len();
        for (group, _) in groups {
            let list = text(&format!("[{}]", group.join(",")));
            statements.push(self.db.prepare(&insert, &[list, num(u64::from(limit))])?);
        }
        // The events of the rows stored, in the order sent; none for a row left out.
        statements.push(self.db.prepare(
            &format!(
                "INSERT INTO audit_outbox (id, user_id, event, created_at) \
                 SELECT json_extract(j.value, '$.i'), json_extract(j.value, '$.u'), \
                   json_extract(j.value, '$.e'), ?3 \
                 FROM json_each(?1) AS j WHERE {stored_here} ORDER BY j.key"
            ),
            &[
                events.clone(),
                batch_id.clone(),
                num(super::runtime::now_ms()),
            ],
        )?);
        statements.push(self.db.prepare(
            &format!(
                "UPDATE jobs SET total = total + (SELECT COUNT(*) FROM json_each(?1) AS j WHERE {stored_here}), \
                   done = done + (SELECT COUNT(*) FROM json_each(?1) AS j WHERE {stored_here}), \
                   updated_at = ?3 WHERE id = ?2"
            ),
            &[events, batch_id, at],
        )?);
        if !refused.is_empty() {
            // Entries refused because their user holds the key: each user's chain says an
            // import tried it, and which of their credentials holds it.
            let mut list = Vec::with_capacity(refused.len());
            for event in refused {
                list.push(serde_json::json!({
                    "i": event.id, "u": event.user_id.as_str(),
                    "e": serde_json::to_string(event).map_err(corrupt)?,
                }));
            }
            statements.push(self.db.prepare(
                "INSERT INTO audit_outbox (id, user_id, event, created_at) \
                 SELECT json_extract(j.value, '$.i'), json_extract(j.value, '$.u'), \
                   json_extract(j.value, '$.e'), ?2 \
                 FROM json_each(?1) AS j WHERE true ORDER BY j.key \
                 ON CONFLICT (id) DO NOTHING",
                &[json_rows(list), num(super::runtime::now_ms())],
            )?);
        }
        let results = self.db.batch(statements).await?;
        let mut ids = Vec::new();
        for i in inserts {
            let stored = rows_of(&results, i)?.read(|r| r.text("id"))?;
            ids.extend(stored.iter().filter_map(|id| CredentialId::parse(id)));
        }
        Ok(ids)
    }

    async fn batch_rows(&self, batch: &BatchId, limit: u32) -> Result<BatchRows, StoreError> {
        struct Found {
            id: String,
            user_id: String,
            provider: String,
            is_default: f64,
        }
        let found = self
            .db
            .all(
                &format!(
                    "SELECT * FROM (SELECT id, user_id, provider, 0 AS is_default FROM credentials c \
                       WHERE import_batch_id = ?1 AND NOT {IS_DEFAULT} ORDER BY id LIMIT ?2) \
                     UNION ALL \
                     SELECT * FROM (SELECT id, user_id, provider, 1 AS is_default FROM credentials c \
                       WHERE import_batch_id = ?1 AND {IS_DEFAULT} ORDER BY id LIMIT ?2)"
                ),
                &[text(batch.as_str()), num(u64::from(limit))],
            )
            .await?
            .read(|r| {
                Ok(Found {
                    id: r.text("id")?,
                    user_id: r.text("user_id")?,
                    provider: r.text("provider")?,
                    is_default: r.num("is_default")?,
                })
            })?;
        let mut out = BatchRows::default();
        for f in found {
            let (Some(user), Some(id), Some(p)) = (
                UserId::parse(&f.user_id),
                CredentialId::parse(&f.id),
                providers::find(&f.provider),
            ) else {
                continue;
            };
            let row = BatchRow {
                user,
                id,
                provider: p.info().id,
            };
            if f.is_default > 0.0 {
                out.defaults.push(row);
            } else {
                out.removable.push(row);
            }
        }
        Ok(out)
    }

    async fn remove_batch_rows(
        &self,
        batch: &BatchId,
        rows: &[(CredentialId, AuditEvent)],
    ) -> Result<Vec<CredentialId>, StoreError> {
        let mut list = Vec::with_capacity(rows.len());
        for (id, event) in rows {
            let body =
                serde_json::to_string(event).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            list.push(serde_json::json!({
                "c": id.as_str(), "i": event.id, "u": event.user_id.as_str(), "e": body,
            }));
        }
        let (list, batch_id) = (json_rows(list), text(batch.as_str()));
        // One transaction: the event of each row still in the batch and nobody's default,
        // then those rows.
        let results = self
            .db
            .batch(vec![
                self.db.prepare(
                    &format!(
                        "INSERT INTO audit_outbox (id, user_id, event, created_at) \
                         SELECT json_extract(j.value, '$.i'), json_extract(j.value, '$.u'), \
                           json_extract(j.value, '$.e'), ?3 \
                         FROM json_each(?1) AS j WHERE EXISTS (SELECT 1 FROM credentials c \
                           WHERE c.id = json_extract(j.value, '$.c') AND c.user_id = json_extract(j.value, '$.u') \
                           AND c.import_batch_id = ?2 AND NOT {IS_DEFAULT}) \
                         ORDER BY j.key"
                    ),
                    &[list.clone(), batch_id.clone(), num(super::runtime::now_ms())],
                )?,
                self.db.prepare(
                    &format!(
                        "DELETE FROM credentials AS c WHERE import_batch_id = ?2 \
                           AND id IN (SELECT json_extract(value, '$.c') FROM json_each(?1)) \
                           AND NOT {IS_DEFAULT} RETURNING id"
                    ),
                    &[list.clone(), batch_id],
                )?,
                // The notices of the rows just removed (a row kept still exists).
                self.db.prepare(
                    "DELETE FROM notifications WHERE credential_id IN \
                       (SELECT json_extract(value, '$.c') FROM json_each(?1)) \
                     AND NOT EXISTS (SELECT 1 FROM credentials c WHERE c.id = notifications.credential_id)",
                    &[list],
                )?,
            ])
            .await?;
        let removed = rows_of(&results, 1)?.read(|r| r.text("id"))?;
        Ok(removed
            .iter()
            .filter_map(|id| CredentialId::parse(id))
            .collect())
    }
}

struct JobRow {
    id: String,
    kind: String,
    state: String,
    total: f64,
    done: f64,
    failed: f64,
    cursor: Option<String>,
    created_at: f64,
    updated_at: f64,
}

#[async_trait(?Send)]
impl JobStore for D1Store<'_> {
    async fn create_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        self.db
            .run(
                "INSERT INTO jobs (id, kind, state, total, done, failed, cursor, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                &[
                    text(&job.id),
                    text(&job.kind),
                    text(&job.state),
                    num(job.total),
                    num(job.done),
                    num(job.failed),
                    opt_text(job.cursor.as_deref()),
                    millis(job.created_at),
                    millis(job.updated_at),
                ],
            )
            .await
            .map(|_| ())
    }

    async fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let row = self
            .db
            .first(
                "SELECT id, kind, state, total, done, failed, cursor, created_at, updated_at \
                 FROM jobs WHERE id = ?1",
                &[text(id)],
            )
            .await?;
        let row = row
            .map(|r| -> Result<JobRow, StoreError> {
                Ok(JobRow {
                    id: r.text("id")?,
                    kind: r.text("kind")?,
                    state: r.text("state")?,
                    total: r.num("total")?,
                    done: r.num("done")?,
                    failed: r.num("failed")?,
                    cursor: r.opt_text("cursor")?,
                    created_at: r.num("created_at")?,
                    updated_at: r.num("updated_at")?,
                })
            })
            .transpose()?;
        Ok(row.map(|r| JobRecord {
            id: r.id,
            kind: r.kind,
            state: r.state,
            total: r.total as u64,
            done: r.done as u64,
            failed: r.failed as u64,
            cursor: r.cursor,
            created_at: Timestamp::from_millis(r.created_at as u64),
            updated_at: Timestamp::from_millis(r.updated_at as u64),
        }))
    }

    async fn advance_job(
        &self,
        id: &str,
        from: Option<&str>,
        done: u64,
        failed: u64,
        cursor: Option<&str>,
        state: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        // One transaction: the step's own rows always count; the cursor, the failures and
        // the state move only from where the step started.
        let results = self
            .db
            .batch(vec![
                self.db.prepare(
                    "UPDATE jobs SET failed = failed + ?2, cursor = COALESCE(?3, cursor), \
                     state = ?4, updated_at = ?5 WHERE id = ?1 AND state = 'running' AND cursor IS ?6",
                    &[
                        text(id),
                        num(failed),
                        opt_text(cursor),
                        text(state),
                        millis(now),
                        opt_text(from),
                    ],
                )?,
                self.db.prepare(
                    "UPDATE jobs SET done = done + ?2 WHERE id = ?1",
                    &[text(id), num(done)],
                )?,
            ])
            .await?;
        Ok(changes(&results, 0) > 0)
    }

    async fn stalled_jobs(&self, before: Timestamp, limit: u32) -> Result<Vec<String>, StoreError> {
        self.db
            .all(
                "SELECT id FROM jobs WHERE state = 'running' AND updated_at < ?1 LIMIT ?2",
                &[millis(before), num(u64::from(limit))],
            )
            .await?
            .read(|r| r.text("id"))
    }
}
