//! The credential and preference repository over D1: the only place that knows their SQL.
//! Every write is one D1 batch (a transaction) that also writes the operation's audit
//! event into the outbox, under the same condition as the change itself.

use async_trait::async_trait;
use worker::wasm_bindgen::JsValue;
use worker::D1PreparedStatement;

use crate::audit::AuditEvent;
use crate::credentials::{CredentialStore, Inserted, Occupancy, Written};
use crate::domain::StoreError;
use crate::domain::{
    Capability, Credential, CredentialId, Preference, ProviderId, Timestamp, UserId,
};
use crate::import::ImportStore;
use crate::json_read;
use crate::providers;

use super::audit::outbox_insert;
use super::db::{changes, json, millis, num, opt_text, rows_of, text, Db};
use super::imports::D1Imports;
use super::rows::{bound_all, mutable_values, Row, CHECK_COLUMNS, COLUMNS, MUTABLE};
use crate::edge::runtime::now_ms;

pub(in crate::edge) struct D1Credentials<'a> {
    db: &'a Db,
}

impl<'a> D1Credentials<'a> {
    pub(in crate::edge) fn new(db: &'a Db) -> Self {
        Self { db }
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

impl D1Credentials<'_> {
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
                num(now_ms()),
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
impl CredentialStore for D1Credentials<'_> {
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
        // The default as `json_object` wrote it: its credential id, and its model or null.
        let default = rows
            .first()
            .and_then(|r| json_read::object(r.preference.as_deref()?.as_bytes()))
            .and_then(|d| {
                Some((
                    json_read::text(&d, "credential_id")?,
                    json_read::opt_text(&d, "model")?,
                ))
            });
        let held = rows
            .into_iter()
            .map(Row::into_credential)
            .collect::<Result<Vec<_>, _>>()?;
        let default = default.and_then(|(credential_id, model)| {
            let c = held.iter().find(|c| c.id.as_str() == credential_id)?;
            Some(Preference {
                capability,
                credential_id: c.id.clone(),
                provider: c.provider,
                model,
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
        // The import's question, for one user.
        let found = D1Imports::new(self.db)
            .occupancies(&[(user.clone(), fingerprints.to_vec())])
            .await?;
        Ok(found.into_iter().next().unwrap_or_default())
    }

    async fn update(&self, c: &Credential, event: &AuditEvent) -> Result<Written, StoreError> {
        self.write_if_current(c, &MUTABLE, bound_all(&mutable_values(c)), Some(event))
            .await
    }

    async fn set_cooldown(
        &self,
        c: &Credential,
        cooldown: &crate::domain::Cooldown,
    ) -> Result<Written, StoreError> {
        let changed = self
            .db
            .run(
                "UPDATE credentials SET cooldown_until = ?4, cooldown_reason = ?5 \
                 WHERE user_id = ?1 AND id = ?2 AND version = ?3",
                &[
                    text(c.user_id.as_str()),
                    text(c.id.as_str()),
                    num(c.version),
                    num(cooldown.until.as_millis()),
                    text(cooldown.reason.as_str()),
                ],
            )
            .await?;
        Ok(if changed == 1 {
            Written::Done
        } else {
            Written::Conflict
        })
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
            num(now_ms()),
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
