//! The audit log over D1: the outbox, the chained log, heads, checkpoints and dead
//! letters. The only audit SQL.

use async_trait::async_trait;
use serde_json::{json, Value};
use worker::wasm_bindgen::JsValue;
use worker::D1PreparedStatement;

use super::db::{changes, json as json_arg, num, opt_text as opt, text, Db, Row as D1Row};
use super::runtime::now_ms;
use crate::audit::{AuditEvent, ChainHead, ChainPlan, ChainedEvent, PendingEvent};
use crate::domain::{Timestamp, UserId};
use crate::ports::{AuditQuery, AuditStore, NotificationStore, StoreError, StoredNotice};

/// Users whose old events one retention run removes (bounds D1 queries per invocation).
const RETENTION_USERS_PER_RUN: u32 = 20;

/// Dead letters from `?1`, a JSON array of `{body, reason}`, received at `?2`.
const DEAD_LETTERS_INSERT: &str = "INSERT INTO audit_dead_letters (body, reason, received_at) \
     SELECT json_extract(value, '$.body'), json_extract(value, '$.reason'), ?2 FROM json_each(?1)";

fn dead_letter_rows(letters: &[(String, String)]) -> JsValue {
    let rows: Vec<Value> = letters
        .iter()
        .map(|(body, reason)| json!({"body": body, "reason": reason}))
        .collect();
    json_arg(&rows)
}

/// The statement that puts `event` into the outbox. With a `condition` (SQL over
/// placeholders `?5` on, bound to `condition_args`), the row is written only when the
/// condition holds: the same condition that guards the change the event describes, in the
/// same batch.
pub(super) fn outbox_insert(
    db: &Db,
    event: &AuditEvent,
    condition: &str,
    condition_args: Vec<JsValue>,
) -> Result<D1PreparedStatement, StoreError> {
    let body = serde_json::to_string(event).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mut args = vec![
        text(&event.id),
        text(event.user_id.as_str()),
        text(&body),
        num(now_ms()),
    ];
    let sql = if condition.is_empty() {
        "INSERT INTO audit_outbox (id, user_id, event, created_at) VALUES (?1, ?2, ?3, ?4)"
            .to_owned()
    } else {
        args.extend(condition_args);
        format!(
            "INSERT INTO audit_outbox (id, user_id, event, created_at) \
             SELECT ?1, ?2, ?3, ?4 WHERE {condition}"
        )
    };
    db.prepare(&sql, &args)
}

pub(super) struct D1AuditStore<'a> {
    db: &'a Db,
    /// Whether a commit also writes the key-health notices its events make
    /// (`NOTIFY_WEBHOOK_URL` is set).
    notify: bool,
    /// How many notices this store's commits wrote (the caller then wakes the deliverer).
    pub notices_written: std::cell::Cell<usize>,
}

const COLUMNS: &str =
    "id, user_id, seq, at, action, actor_type, actor_id, credential_id, provider, \
    outcome, reason, source, request_id, detail, prev_hash, hash";

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
    fn read(r: &D1Row) -> Result<Self, StoreError> {
        Ok(Self {
            id: r.text("id")?,
            user_id: r.text("user_id")?,
            seq: r.num("seq")?,
            at: r.num("at")?,
            action: r.text("action")?,
            actor_type: r.text("actor_type")?,
            actor_id: r.text("actor_id")?,
            credential_id: r.opt_text("credential_id")?,
            provider: r.opt_text("provider")?,
            outcome: r.text("outcome")?,
            reason: r.opt_text("reason")?,
            source: r.opt_text("source")?,
            request_id: r.opt_text("request_id")?,
            detail: r.opt_text("detail")?,
            prev_hash: r.text("prev_hash")?,
            hash: r.text("hash")?,
        })
    }

    /// Rebuilds the event exactly as it was hashed; a row that no longer parses (e.g. an
    /// edited action) is returned with a blank event of `user` (whose rows these are), so
    /// verification reports it broken.
    fn into_chained(self, user: &UserId) -> ChainedEvent {
        let detail = self
            .detail
            .as_deref()
            .and_then(|d| serde_json::from_slice::<Value>(d.as_bytes()).ok());
        let value = json!({
            "id": self.id, "at": self.at as u64, "user_id": self.user_id, "action": self.action,
            "actor": {"type": self.actor_type, "id": self.actor_id},
            "credential_id": self.credential_id, "provider": self.provider, "outcome": self.outcome,
            "reason": self.reason, "source": self.source, "request_id": self.request_id, "detail": detail,
        });
        let event =
            AuditEvent::from_json(&value).unwrap_or_else(|| AuditEvent::unreadable(&self.id, user));
        ChainedEvent {
            event,
            seq: self.seq as u64,
            prev_hash: self.prev_hash,
            hash: self.hash,
        }
    }
}

impl<'a> D1AuditStore<'a> {
    pub(super) fn new(db: &'a Db) -> Self {
        Self {
            db,
            notify: false,
            notices_written: std::cell::Cell::new(0),
        }
    }

    /// The same store, writing key-health notices with its commits when `notify`.
    pub(super) fn notifying(mut self, notify: bool) -> Self {
        self.notify = notify;
        self
    }

    /// `user`'s chained events the query selects.
    async fn rows(
        &self,
        user: &UserId,
        sql: &str,
        args: &[JsValue],
    ) -> Result<Vec<ChainedEvent>, StoreError> {
        let rows = self.db.all(sql, args).await?.read(Row::read)?;
        Ok(rows.into_iter().map(|r| r.into_chained(user)).collect())
    }

    async fn anchor(&self, table: &str, user: &str) -> Result<Option<ChainHead>, StoreError> {
        let sql = format!("SELECT seq, hash FROM {table} WHERE user_id = ?1");
        let a = self.db.first(&sql, &[text(user)]).await?;
        a.map(|a| {
            Ok(ChainHead {
                seq: a.num("seq")? as u64,
                hash: a.text("hash")?,
            })
        })
        .transpose()
    }
}

#[async_trait(?Send)]
impl AuditStore for D1AuditStore<'_> {
    async fn enqueue(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        let rows: Vec<Value> = events
            .iter()
            .map(|e| {
                let body = serde_json::to_string(e).unwrap_or_default();
                json!({"id": e.id, "user_id": e.user_id, "event": body})
            })
            .collect();
        self.db
            .run(
                "INSERT OR IGNORE INTO audit_outbox (id, user_id, event, created_at) \
                 SELECT json_extract(value, '$.id'), json_extract(value, '$.user_id'), \
                        json_extract(value, '$.event'), ?2 \
                 FROM json_each(?1) \
                 WHERE NOT EXISTS (SELECT 1 FROM audit_events e WHERE e.id = json_extract(value, '$.id'))",
                &[json_arg(&rows), num(now_ms())],
            )
            .await?;
        Ok(())
    }

    async fn pending(&self, limit: u32) -> Result<Vec<PendingEvent>, StoreError> {
        self.db
            .all(
                "SELECT pos, user_id, event FROM audit_outbox ORDER BY pos LIMIT ?1",
                &[num(u64::from(limit))],
            )
            .await?
            .read(|r| {
                Ok(PendingEvent {
                    pos: r.num("pos")? as u64,
                    user_id: r.text("user_id")?,
                    body: r.text("event")?,
                })
            })
    }

    async fn heads(&self, users: &[String]) -> Result<Vec<(String, ChainHead)>, StoreError> {
        self.db
            .all(
                "SELECT user_id, seq, hash FROM audit_heads \
                 WHERE user_id IN (SELECT value FROM json_each(?1))",
                &[json_arg(&users)],
            )
            .await?
            .read(|h| {
                Ok((
                    h.text("user_id")?,
                    ChainHead {
                        seq: h.num("seq")? as u64,
                        hash: h.text("hash")?,
                    },
                ))
            })
    }

    async fn commit(&self, plan: &ChainPlan) -> Result<(), StoreError> {
        if plan.is_empty() {
            return Ok(());
        }
        let now = num(now_ms());
        let mut statements = Vec::with_capacity(4);
        if !plan.rows.is_empty() {
            let rows: Vec<Value> = plan
                .rows
                .iter()
                .map(|l| {
                    let e = &l.event;
                    json!({
                        "id": e.id, "user_id": e.user_id, "seq": l.seq, "at": e.at,
                        "action": e.action.as_str(), "actor_type": e.actor.kind.as_str(),
                        "actor_id": e.actor.id, "credential_id": e.credential_id,
                        "provider": e.provider, "outcome": e.outcome.as_str(), "reason": e.reason,
                        "source": e.source.map(|s| s.as_str()), "request_id": e.request_id,
                        "detail": e.detail.as_ref().map(|d| d.to_string()),
                        "prev_hash": l.prev_hash, "hash": l.hash,
                    })
                })
                .collect();
            let columns: Vec<String> = COLUMNS
                .split(", ")
                .map(|c| format!("json_extract(value, '$.{c}')"))
                .collect();
            // Plain INSERT: a chainer that lost the race hits UNIQUE (id) or
            // (user_id, seq), and the whole batch rolls back.
            statements.push(self.db.prepare(
                &format!(
                    "INSERT INTO audit_events ({COLUMNS}) SELECT {} FROM json_each(?1)",
                    columns.join(", ")
                ),
                &[json_arg(&rows)],
            )?);
            let heads: Vec<Value> = plan
                .heads
                .iter()
                .map(|(u, h)| json!({"user_id": u, "seq": h.seq, "hash": h.hash}))
                .collect();
            statements.push(self.db.prepare(
                "INSERT INTO audit_heads (user_id, seq, hash, updated_at) \
                 SELECT json_extract(value, '$.user_id'), json_extract(value, '$.seq'), \
                        json_extract(value, '$.hash'), ?2 FROM json_each(?1) WHERE true \
                 ON CONFLICT (user_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, \
                 updated_at = excluded.updated_at",
                &[json_arg(&heads), now.clone()],
            )?);
        }
        if !plan.used.is_empty() {
            // Last use, from credential.used events: never moved back, and the row version
            // untouched (a use is no change a user's write should conflict with).
            let used: Vec<Value> = plan
                .used
                .iter()
                .map(|(u, c, at)| json!({"u": u, "c": c, "at": at}))
                .collect();
            statements.push(self.db.prepare(
                "UPDATE credentials SET last_used_at = used.at FROM \
                   (SELECT json_extract(value, '$.u') AS u, json_extract(value, '$.c') AS c, \
                           max(json_extract(value, '$.at')) AS at \
                    FROM json_each(?1) GROUP BY 1, 2) AS used \
                 WHERE credentials.user_id = used.u AND credentials.id = used.c \
                   AND (credentials.last_used_at IS NULL OR credentials.last_used_at < used.at)",
                &[json_arg(&used)],
            )?);
        }
        let notices = if self.notify { plan.notices.len() } else { 0 };
        if notices > 0 {
            // One per change of status; its id is the event's, so a commit that is retried
            // (or a chainer that lost a race) writes none twice.
            // A notice of a credential deleted meanwhile is not written (its delete took
            // the ones already written with it).
            let rows: Vec<Value> = plan
                .notices
                .iter()
                .map(|n| json!({"id": n.id, "user_id": n.user_id, "c": n.credential_id, "body": n.body}))
                .collect();
            statements.push(self.db.prepare(
                "INSERT INTO notifications (id, user_id, credential_id, body, attempts, next_attempt_at, created_at) \
                 SELECT json_extract(value, '$.id'), json_extract(value, '$.user_id'), \
                        json_extract(value, '$.c'), json_extract(value, '$.body'), 0, ?2, ?2 \
                 FROM json_each(?1) WHERE json_extract(value, '$.c') IS NULL OR EXISTS ( \
                   SELECT 1 FROM credentials c WHERE c.id = json_extract(value, '$.c') \
                     AND c.user_id = json_extract(value, '$.user_id')) \
                 ON CONFLICT (id) DO NOTHING",
                &[json_arg(&rows), now.clone()],
            )?);
        }
        if !plan.dead.is_empty() {
            statements.push(
                self.db
                    .prepare(DEAD_LETTERS_INSERT, &[dead_letter_rows(&plan.dead), now])?,
            );
        }
        statements.push(self.db.prepare(
            "DELETE FROM audit_outbox WHERE pos IN (SELECT value FROM json_each(?1))",
            &[json_arg(&plan.done)],
        )?);
        self.db.batch(statements).await?;
        self.notices_written
            .set(self.notices_written.get() + notices);
        Ok(())
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
        self.rows(user, &sql, &args).await
    }

    async fn chain_page(
        &self,
        user: &UserId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<ChainedEvent>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM audit_events WHERE user_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3");
        self.rows(
            user,
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

    async fn store_dead_letters(&self, letters: &[(String, String)]) -> Result<(), StoreError> {
        if letters.is_empty() {
            return Ok(());
        }
        self.db
            .run(
                DEAD_LETTERS_INSERT,
                &[dead_letter_rows(letters), num(now_ms())],
            )
            .await?;
        Ok(())
    }

    async fn apply_retention(&self, cutoff: Timestamp) -> Result<u64, StoreError> {
        struct Old {
            user_id: String,
            seq: f64,
            hash: String,
        }
        // The newest old event of each user becomes that user's checkpoint.
        let old = self
            .db
            .all(
                "SELECT e.user_id, e.seq, e.hash FROM audit_events e JOIN \
                 (SELECT user_id, MAX(seq) AS seq FROM audit_events WHERE at < ?1 GROUP BY user_id LIMIT ?2) o \
                 ON e.user_id = o.user_id AND e.seq = o.seq",
                &[num(cutoff.as_millis()), num(u64::from(RETENTION_USERS_PER_RUN))],
            )
            .await?
            .read(|r| {
                Ok(Old {
                    user_id: r.text("user_id")?,
                    seq: r.num("seq")?,
                    hash: r.text("hash")?,
                })
            })?;
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
            removed += changes(&results, 1);
        }
        Ok(removed)
    }
}

#[async_trait(?Send)]
impl NotificationStore for D1AuditStore<'_> {
    async fn claim(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<StoredNotice>, StoreError> {
        self.db
            .all(
                "UPDATE notifications SET next_attempt_at = ?2 WHERE id IN ( \
                   SELECT id FROM notifications WHERE next_attempt_at <= ?1 \
                   ORDER BY next_attempt_at LIMIT ?3) \
                 RETURNING id, body, attempts",
                &[
                    num(now.as_millis()),
                    num(lease_until.as_millis()),
                    num(u64::from(limit)),
                ],
            )
            .await?
            .read(|r| {
                Ok(StoredNotice {
                    id: r.text("id")?,
                    body: r.text("body")?,
                    attempts: r.num("attempts")? as u32,
                })
            })
    }

    async fn delivered(&self, id: &str) -> Result<(), StoreError> {
        self.db
            .run("DELETE FROM notifications WHERE id = ?1", &[text(id)])
            .await
            .map(|_| ())
    }

    async fn failed(
        &self,
        id: &str,
        attempts: u32,
        next_at: Timestamp,
        problem: &str,
    ) -> Result<(), StoreError> {
        self.db
            .run(
                "UPDATE notifications SET attempts = ?2, next_attempt_at = ?3, last_error = ?4 \
                 WHERE id = ?1",
                &[
                    text(id),
                    num(u64::from(attempts)),
                    num(next_at.as_millis()),
                    text(problem),
                ],
            )
            .await
            .map(|_| ())
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let next = self
            .db
            .first("SELECT MIN(next_attempt_at) AS at FROM notifications", &[])
            .await?;
        let at = match next {
            Some(n) => n.opt_num("at")?,
            None => None,
        };
        Ok(at.map(|at| Timestamp::from_millis(at as u64)))
    }
}
