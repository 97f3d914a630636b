//! The import's repository over D1: what an import finds in the way (held keys, full
//! quotas), its rows written in bulk with their events, and the rollback of a batch.

use async_trait::async_trait;
use serde_json::Value;

use crate::audit::AuditEvent;
use crate::credentials::Occupancy;
use crate::domain::StoreError;
use crate::domain::{BatchId, CredentialId, Timestamp, UserId};
use crate::import::{BatchRow, BatchRows, ImportRow, ImportStore};
use crate::providers;

use super::db::{json_rows, millis, num, rows_of, text, Db};
use super::rows::{mutable_values, MUTABLE};
use crate::edge::runtime::now_ms;

pub(in crate::edge) struct D1Imports<'a> {
    db: &'a Db,
}

impl<'a> D1Imports<'a> {
    pub(in crate::edge) fn new(db: &'a Db) -> Self {
        Self { db }
    }
}

/// Whether credential `c` is the default of its user for some capability.
const IS_DEFAULT: &str =
    "EXISTS (SELECT 1 FROM preferences p WHERE p.user_id = c.user_id AND p.credential_id = c.id)";

#[async_trait(?Send)]
impl ImportStore for D1Imports<'_> {
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
            &[events.clone(), batch_id.clone(), num(now_ms())],
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
                &[json_rows(list), num(now_ms())],
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
                    &[list.clone(), batch_id.clone(), num(now_ms())],
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
