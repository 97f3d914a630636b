//! The audit log over D1 and the producer over `AUDIT_QUEUE` (the only audit SQL).

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};
use worker::wasm_bindgen::JsValue;
use worker::Queue;

use super::db::{num, opt_text as opt, text, Db};
use super::runtime::now_ms;
use crate::audit::{chain, AuditEvent, ChainHead, ChainedEvent};
use crate::domain::{Timestamp, UserId};
use crate::ports::{AuditQuery, AuditSink, AuditStore, StoreError};

/// Attempts at appending one user's events when another writer moved the head meanwhile.
const APPEND_ATTEMPTS: usize = 3;
/// Users whose old events one retention run removes (bounds D1 queries per invocation).
const RETENTION_USERS_PER_RUN: u32 = 25;

pub struct D1AuditStore<'a> {
    db: &'a Db,
}

const COLUMNS: &str =
    "id, user_id, seq, at, action, actor_type, actor_id, credential_id, provider, \
    outcome, reason, source, request_id, detail, prev_hash, hash";

#[derive(Deserialize)]
struct Row {
    id: String,
    user_id: String,
    seq: f64,
    at: f64,
    action: String,
    actor_type: String,
    actor_id: String,
    credential_id: Option<String>,
    provider: Option<String>,
    outcome: String,
    reason: Option<String>,
    source: Option<String>,
    request_id: Option<String>,
    detail: Option<String>,
    prev_hash: String,
    hash: String,
}

impl Row {
    /// Rebuilds the event exactly as it was hashed; a row that no longer parses (e.g. an
    /// edited action) is returned with a blank event, so verification reports it broken.
    fn into_chained(self) -> ChainedEvent {
        let detail = self
            .detail
            .as_deref()
            .and_then(|d| serde_json::from_str::<Value>(d).ok());
        let value = json!({
            "id": self.id, "at": self.at as u64, "user_id": self.user_id, "action": self.action,
            "actor": {"type": self.actor_type, "id": self.actor_id},
            "credential_id": self.credential_id, "provider": self.provider, "outcome": self.outcome,
            "reason": self.reason, "source": self.source, "request_id": self.request_id, "detail": detail,
        });
        let event = serde_json::from_value(value)
            .unwrap_or_else(|_| AuditEvent::unreadable(&self.id, &self.user_id));
        ChainedEvent {
            event,
            seq: self.seq as u64,
            prev_hash: self.prev_hash,
            hash: self.hash,
        }
    }
}

impl<'a> D1AuditStore<'a> {
    pub fn new(db: &'a Db) -> Self {
        Self { db }
    }

    async fn rows(&self, sql: &str, args: &[JsValue]) -> Result<Vec<ChainedEvent>, StoreError> {
        let rows: Vec<Row> = self.db.all(sql, args).await?;
        Ok(rows.into_iter().map(Row::into_chained).collect())
    }

    async fn anchor(&self, table: &str, user: &str) -> Result<Option<ChainHead>, StoreError> {
        #[derive(Deserialize)]
        struct Anchor {
            seq: f64,
            hash: String,
        }
        let sql = format!("SELECT seq, hash FROM {table} WHERE user_id = ?1");
        let a: Option<Anchor> = self.db.first(&sql, &[text(user)], None).await?;
        Ok(a.map(|a| ChainHead {
            seq: a.seq as u64,
            hash: a.hash,
        }))
    }

    async fn stored_ids(&self, ids: &[&str]) -> Result<Vec<String>, StoreError> {
        #[derive(Deserialize)]
        struct Id {
            id: String,
        }
        let mut found = Vec::new();
        for chunk in ids.chunks(50) {
            let marks = (1..=chunk.len())
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!("SELECT id FROM audit_events WHERE id IN ({marks})");
            let args: Vec<JsValue> = chunk.iter().map(|id| text(id)).collect();
            let rows: Vec<Id> = self.db.all(&sql, &args).await?;
            found.extend(rows.into_iter().map(|r| r.id));
        }
        Ok(found)
    }

    /// Appends one user's new events in one D1 batch (a transaction): the rows and the
    /// moved head together, or nothing.
    async fn append_for_user(
        &self,
        user: &str,
        events: &[AuditEvent],
    ) -> Result<usize, StoreError> {
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        let stored = self.stored_ids(&ids).await?;
        let fresh: Vec<AuditEvent> = events
            .iter()
            .filter(|e| !stored.contains(&e.id))
            .cloned()
            .collect();
        if fresh.is_empty() {
            return Ok(0);
        }
        let head = self
            .anchor("audit_heads", user)
            .await?
            .unwrap_or_else(ChainHead::genesis);
        let linked = chain(&head, fresh);
        let insert = format!("INSERT INTO audit_events ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)");
        let mut statements = Vec::with_capacity(linked.len() + 1);
        for l in &linked {
            let e = &l.event;
            statements.push(self.db.prepare(
                &insert,
                &[
                    text(e.id.as_str()),
                    text(e.user_id.as_str()),
                    num(l.seq),
                    num(e.at),
                    text(e.action.as_str()),
                    text(e.actor.kind.as_str()),
                    text(e.actor.id.as_str()),
                    opt(e.credential_id.as_deref()),
                    opt(e.provider.as_deref()),
                    text(e.outcome.as_str()),
                    opt(e.reason.as_deref()),
                    opt(e.source.map(|s| s.as_str())),
                    opt(e.request_id.as_deref()),
                    opt(e.detail.as_ref().map(|d| d.to_string()).as_deref()),
                    text(l.prev_hash.as_str()),
                    text(l.hash.as_str()),
                ],
            )?);
        }
        let last = linked
            .last()
            .map(|l| (l.seq, l.hash.clone()))
            .unwrap_or((head.seq, head.hash.clone()));
        statements.push(self.db.prepare(
            "INSERT INTO audit_heads (user_id, seq, hash, updated_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (user_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, updated_at = excluded.updated_at",
            &[text(user), num(last.0), text(last.1.as_str()), num(now_ms())],
        )?);
        // A concurrent writer that took the same seq makes the batch fail on UNIQUE
        // (user_id, seq) and roll back whole; the caller retries from the new head.
        self.db.batch(statements).await?;
        Ok(linked.len())
    }
}

#[async_trait(?Send)]
impl AuditStore for D1AuditStore<'_> {
    async fn append(&self, events: &[AuditEvent]) -> Result<usize, StoreError> {
        let mut by_user: BTreeMap<&str, Vec<AuditEvent>> = BTreeMap::new();
        for e in events {
            by_user
                .entry(e.user_id.as_str())
                .or_default()
                .push(e.clone());
        }
        let mut added = 0;
        for (user, group) in by_user {
            let mut attempt = 0;
            loop {
                attempt += 1;
                match self.append_for_user(user, &group).await {
                    Ok(n) => {
                        added += n;
                        break;
                    }
                    Err(e) if attempt >= APPEND_ATTEMPTS => return Err(e),
                    Err(_) => continue,
                }
            }
        }
        Ok(added)
    }

    async fn list(&self, user: &UserId, q: &AuditQuery) -> Result<Vec<ChainedEvent>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_events WHERE user_id = ?1 AND (?2 IS NULL OR action = ?2) \
             AND (?3 IS NULL OR credential_id = ?3) AND (?4 IS NULL OR seq < ?4) ORDER BY seq DESC LIMIT ?5"
        );
        let args = [
            text(user.as_str()),
            opt(q.action.map(|a| a.as_str())),
            opt(q.credential_id.as_ref().map(|c| c.as_str())),
            q.before_seq.map(num).unwrap_or(JsValue::NULL),
            num(u64::from(q.limit)),
        ];
        self.rows(&sql, &args).await
    }

    async fn chain_page(
        &self,
        user: &UserId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<ChainedEvent>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM audit_events WHERE user_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3");
        self.rows(
            &sql,
            &[text(user.as_str()), num(after), num(u64::from(limit))],
        )
        .await
    }

    async fn anchors(
        &self,
        user: &UserId,
    ) -> Result<(Option<ChainHead>, Option<ChainHead>), StoreError> {
        Ok((
            self.anchor("audit_checkpoints", user.as_str()).await?,
            self.anchor("audit_heads", user.as_str()).await?,
        ))
    }

    async fn store_dead_letter(&self, body: &str, reason: &str) -> Result<(), StoreError> {
        self.db
            .run(
                "INSERT INTO audit_dead_letters (body, reason, received_at) VALUES (?1, ?2, ?3)",
                &[text(body), text(reason), num(now_ms())],
            )
            .await?;
        Ok(())
    }

    async fn apply_retention(&self, cutoff: Timestamp) -> Result<u64, StoreError> {
        #[derive(Deserialize)]
        struct Old {
            user_id: String,
            seq: f64,
            hash: String,
        }
        // The newest old event of each user becomes that user's checkpoint.
        let old: Vec<Old> = self
            .db
            .all(
                "SELECT e.user_id, e.seq, e.hash FROM audit_events e JOIN \
                 (SELECT user_id, MAX(seq) AS seq FROM audit_events WHERE at < ?1 GROUP BY user_id LIMIT ?2) o \
                 ON e.user_id = o.user_id AND e.seq = o.seq",
                &[num(cutoff.as_millis()), num(u64::from(RETENTION_USERS_PER_RUN))],
            )
            .await?;
        let mut removed = 0;
        for o in old {
            let results = self
                .db
                .batch(vec![
                    self.db.prepare(
                        "INSERT INTO audit_checkpoints (user_id, seq, hash, updated_at) VALUES (?1, ?2, ?3, ?4) \
                         ON CONFLICT (user_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, updated_at = excluded.updated_at",
                        &[text(o.user_id.as_str()), num(o.seq as u64), text(o.hash.as_str()), num(now_ms())],
                    )?,
                    self.db.prepare(
                        "DELETE FROM audit_events WHERE user_id = ?1 AND seq <= ?2",
                        &[text(o.user_id.as_str()), num(o.seq as u64)],
                    )?,
                ])
                .await?;
            removed += results
                .get(1)
                .and_then(|r| r.meta().ok().flatten())
                .and_then(|m| m.changes)
                .unwrap_or(0) as u64;
        }
        Ok(removed)
    }
}

/// Sends events to `AUDIT_QUEUE`; if the binding is missing or the send fails, writes
/// them straight to D1 in the same request; if that fails too, logs the event itself
/// (it holds no secret) so it can still be recovered from the logs.
pub struct QueueAuditSink<'a> {
    pub queue: Option<Queue>,
    pub store: &'a D1AuditStore<'a>,
}

#[async_trait(?Send)]
impl AuditSink for QueueAuditSink<'_> {
    async fn record(&self, event: &AuditEvent) {
        let body = match serde_json::to_string(event) {
            Ok(b) => b,
            Err(e) => {
                worker::console_error!("audit: event {} could not be serialised: {e}", event.id);
                return;
            }
        };
        match &self.queue {
            Some(queue) => match queue.send(body.clone()).await {
                Ok(()) => return,
                Err(e) => worker::console_warn!(
                    "audit: queue send failed ({e}); writing event {} directly",
                    event.id
                ),
            },
            None => worker::console_warn!(
                "audit: AUDIT_QUEUE is not bound; writing event {} directly",
                event.id
            ),
        }
        if let Err(e) = self.store.append(std::slice::from_ref(event)).await {
            worker::console_error!("audit: event could not be stored ({e}): {body}");
        }
    }
}
