//! The audit log over D1: the outbox, the chained log, heads, checkpoints (with their
//! seals and the legacy window) and dead letters. The only audit SQL.

use async_trait::async_trait;
use serde_json::{json, Value};
use worker::wasm_bindgen::JsValue;
use worker::D1PreparedStatement;

use super::db::{changes, json as json_arg, num, opt_text as opt, text, Db, Row as D1Row};
use crate::audit::{
    Anchor, AnchorKind, Anchors, AuditEvent, ChainPlan, ChainedEvent, Heads, LegacyWindow,
    PendingEvent, Resealed, Sealer, Unsettled,
};
use crate::audit::{AuditQuery, AuditStore};
use crate::domain::StoreError;
use crate::domain::{Timestamp, UserId};
use crate::edge::runtime::now_ms;

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
pub(in crate::edge) fn outbox_insert(
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

pub(in crate::edge) struct D1AuditStore<'a> {
    db: &'a Db,
    /// Whether a commit also writes the key-health notices its events make
    /// (`NOTIFY_WEBHOOK_URL` is set).
    notify: bool,
    /// How many notices this store's commits wrote (the caller then wakes the deliverer).
    notices_written: std::cell::Cell<usize>,
}

/// An anchor from a row with `seq, hash, updated_at, mac, mac_version`.
fn read_anchor(r: &D1Row) -> Result<Anchor, StoreError> {
    Ok(Anchor {
        seq: r.num("seq")? as u64,
        hash: r.text("hash")?,
        at: r.num("updated_at")? as u64,
        mac: r.opt_text("mac")?,
        mac_version: r.opt_num("mac_version")?.map(|v| v as u32),
    })
}

/// The legacy window a stored `state` names (no row, or one this build does not know:
/// closed, the strict reading).
fn window_of(state: Option<String>) -> LegacyWindow {
    state
        .as_deref()
        .and_then(LegacyWindow::parse)
        .unwrap_or(LegacyWindow::Closed)
}

/// The legacy window, as stored, for the SQL below.
macro_rules! window {
    () => {
        "(SELECT state FROM audit_legacy WHERE id = 1)"
    };
}

/// Whether any anchor carries a strict seal under a version of the JSON array `$list`:
/// per version, a range of a seal index.
macro_rules! strict_seal {
    ($list:literal) => {
        concat!(
            "(EXISTS (SELECT 1 FROM audit_heads WHERE mac_version IN (SELECT value FROM json_each(",
            $list,
            ")) AND mac >= 's:' AND mac < 's;') OR EXISTS (SELECT 1 FROM audit_checkpoints \
             WHERE mac_version IN (SELECT value FROM json_each(",
            $list,
            ")) AND mac >= 's:' AND mac < 's;'))"
        )
    };
}

/// Re-seals the anchors of `$table` that `?1` (a JSON array) names, each only if it is
/// still as it was read.
macro_rules! reseal {
    ($table:literal) => {
        concat!(
            "UPDATE ", $table, " SET mac = x.mac, mac_version = x.v FROM \
               (SELECT json_extract(value, '$.u') AS u, json_extract(value, '$.seq') AS seq, \
                       json_extract(value, '$.hash') AS hash, json_extract(value, '$.at') AS at, \
                       json_extract(value, '$.old') AS old, json_extract(value, '$.oldv') AS oldv, \
                       json_extract(value, '$.mac') AS mac, json_extract(value, '$.v') AS v \
                FROM json_each(?1)) AS x \
             WHERE ", $table, ".user_id = x.u AND ", $table, ".seq = x.seq AND ", $table, ".hash = x.hash \
               AND ", $table, ".updated_at = x.at AND ", $table, ".mac IS x.old AND ", $table, ".mac_version IS x.oldv"
        )
    };
}
const RESEAL_HEADS: &str = reseal!("audit_heads");
const RESEAL_CHECKPOINTS: &str = reseal!("audit_checkpoints");

/// The legacy window, as a scalar subquery.
const WINDOW: &str = window!();

/// Whether a strict seal exists under a version of the JSON array ?2.
const STRICT: &str = strict_seal!("?2");

/// One part of [`UNSETTLED`], for one table: the anchors the stored window still admits
/// unsealed, those under another configured version, and, once the window is closed, those
/// trusted on first use; each condition a range of the seal index.
macro_rules! unsettled {
    ($kind:literal, $table:literal) => {
        concat!(
            " UNION ALL SELECT * FROM (SELECT '",
            $kind,
            "' AS kind, user_id, seq, hash, \
             updated_at, mac, mac_version FROM ",
            $table,
            " WHERE (mac_version IS NULL AND mac IS NULL \
             AND ",
            window!(),
            " IN ('open', 'closing')) \
             OR mac_version IN (SELECT value FROM json_each(?2)) \
             OR (mac_version = ?1 AND mac >= 't:' AND mac < 't;' \
             AND COALESCE(",
            window!(),
            ", 'closed') = 'closed') LIMIT ?3)"
        )
    };
}

/// What `settle` reads (?1 the active version, ?2 the other configured ones, ?3 the limit,
/// ?4 every configured one): a row of facts (the window, since when, whether a strict seal
/// exists, whether an unsealed anchor is left), then the anchors to seal or re-seal.
/// (D1 allows few terms in a compound SELECT: one per table.)
const UNSETTLED: &str = concat!(
    "SELECT 'facts' AS kind, ", window!(), " AS user_id, \
     (SELECT updated_at FROM audit_legacy WHERE id = 1) AS seq, \
     (EXISTS (SELECT 1 FROM audit_heads WHERE mac_version IS NULL AND mac IS NULL) \
      OR EXISTS (SELECT 1 FROM audit_checkpoints WHERE mac_version IS NULL AND mac IS NULL)) AS hash, ",
    strict_seal!("?4"),
    " AS updated_at, NULL AS mac, NULL AS mac_version",
    unsettled!("head", "audit_heads"),
    unsettled!("checkpoint", "audit_checkpoints"),
    " LIMIT ?3 + 1"
);

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
        let mut c = r.columns();
        let row = Self {
            id: c.text("id"),
            user_id: c.text("user_id"),
            seq: c.num("seq"),
            at: c.num("at"),
            action: c.text("action"),
            actor_type: c.text("actor_type"),
            actor_id: c.text("actor_id"),
            credential_id: c.opt_text("credential_id"),
            provider: c.opt_text("provider"),
            outcome: c.text("outcome"),
            reason: c.opt_text("reason"),
            source: c.opt_text("source"),
            request_id: c.opt_text("request_id"),
            detail: c.opt_text("detail"),
            prev_hash: c.text("prev_hash"),
            hash: c.text("hash"),
        };
        c.finish(row)
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
    pub(in crate::edge) fn new(db: &'a Db) -> Self {
        Self {
            db,
            notify: false,
            notices_written: std::cell::Cell::new(0),
        }
    }

    /// The same store, writing key-health notices with its commits when `notify`.
    pub(in crate::edge) fn notifying(mut self, notify: bool) -> Self {
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

    async fn heads(&self, users: &[String]) -> Result<Heads, StoreError> {
        // The heads and, in the same query, the legacy window (a row of its own).
        let rows = self
            .db
            .all(
                &format!(
                    "SELECT user_id, seq, hash, updated_at, mac, mac_version, NULL AS legacy \
                     FROM audit_heads WHERE user_id IN (SELECT value FROM json_each(?1)) \
                     UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, NULL, {WINDOW}"
                ),
                &[json_arg(&users)],
            )
            .await?;
        let mut out = Heads::default();
        for (user, legacy, anchor) in rows.read(|r| {
            Ok(match r.opt_text("user_id")? {
                Some(user) => (Some(user), None, Some(read_anchor(r)?)),
                None => (None, r.opt_text("legacy")?, None),
            })
        })? {
            match (user, anchor) {
                (Some(user), Some(anchor)) => out.heads.push((user, anchor)),
                _ => out.window = window_of(legacy),
            }
        }
        Ok(out)
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
            // The heads, sealed (the time they are written is sealed with them).
            let heads: Vec<Value> = plan
                .anchors
                .iter()
                .map(|(u, a)| {
                    json!({"user_id": u, "seq": a.seq, "hash": a.hash, "at": a.at,
                           "mac": a.mac, "v": a.mac_version})
                })
                .collect();
            statements.push(self.db.prepare(
                "INSERT INTO audit_heads (user_id, seq, hash, updated_at, mac, mac_version) \
                 SELECT json_extract(value, '$.user_id'), json_extract(value, '$.seq'), \
                        json_extract(value, '$.hash'), json_extract(value, '$.at'), \
                        json_extract(value, '$.mac'), json_extract(value, '$.v') \
                 FROM json_each(?1) WHERE true \
                 ON CONFLICT (user_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, \
                 updated_at = excluded.updated_at, mac = excluded.mac, mac_version = excluded.mac_version",
                &[json_arg(&heads)],
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

    async fn anchors(&self, user: &UserId, configured: &[u32]) -> Result<Anchors, StoreError> {
        // Both anchors and, as a row of their own, the facts: whether the user holds a
        // credential or waits on the outbox, and the legacy window.
        let rows = self
            .db
            .all(
                &format!(
                    "SELECT 'head' AS kind, seq, hash, updated_at, mac, mac_version FROM audit_heads \
                       WHERE user_id = ?1 \
                     UNION ALL SELECT 'checkpoint', seq, hash, updated_at, mac, mac_version \
                       FROM audit_checkpoints WHERE user_id = ?1 \
                     UNION ALL SELECT 'facts', EXISTS (SELECT 1 FROM credentials WHERE user_id = ?1), \
                       EXISTS (SELECT 1 FROM audit_outbox WHERE user_id = ?1), \
                       CASE WHEN {WINDOW} IN ('open', 'closing') THEN {STRICT} ELSE 0 END, {WINDOW}, NULL"
                ),
                &[text(user.as_str()), json_arg(&configured.to_vec())],
            )
            .await?;
        enum Part {
            Anchor(AnchorKind, Anchor),
            Facts {
                holds: bool,
                pending: bool,
                strict: bool,
                legacy: Option<String>,
            },
        }
        let parts = rows.read(|r| {
            Ok(match r.text("kind")?.as_str() {
                "head" => Part::Anchor(AnchorKind::Head, read_anchor(r)?),
                "checkpoint" => Part::Anchor(AnchorKind::Checkpoint, read_anchor(r)?),
                _ => Part::Facts {
                    holds: r.num("seq")? > 0.0,
                    pending: r.num("hash")? > 0.0,
                    strict: r.num("updated_at")? > 0.0,
                    legacy: r.opt_text("mac")?,
                },
            })
        })?;
        let mut out = Anchors::default();
        for part in parts {
            match part {
                Part::Anchor(AnchorKind::Head, a) => out.head = Some(a),
                Part::Anchor(AnchorKind::Checkpoint, a) => out.checkpoint = Some(a),
                Part::Facts {
                    holds,
                    pending,
                    strict,
                    legacy,
                } => {
                    out.holds_credentials = holds;
                    out.pending = pending;
                    out.strict_seal = strict;
                    out.window = window_of(legacy);
                }
            }
        }
        Ok(out)
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

    async fn apply_retention(&self, cutoff: Timestamp, sealer: &Sealer) -> Result<u64, StoreError> {
        struct Old {
            user_id: String,
            seq: f64,
            hash: String,
            checkpoint: Option<Anchor>,
            legacy: Option<String>,
        }
        // The newest old event of each user becomes that user's checkpoint, sealed after
        // the checkpoint it replaces.
        let old = self
            .db
            .all(
                &format!(
                    "SELECT e.user_id, e.seq, e.hash, c.seq AS cp_seq, c.hash AS cp_hash, \
                       c.updated_at AS cp_at, c.mac AS cp_mac, c.mac_version AS cp_version, \
                       {WINDOW} AS legacy \
                     FROM audit_events e JOIN \
                     (SELECT user_id, MAX(seq) AS seq FROM audit_events WHERE at < ?1 GROUP BY user_id LIMIT ?2) o \
                     ON e.user_id = o.user_id AND e.seq = o.seq \
                     LEFT JOIN audit_checkpoints c ON c.user_id = e.user_id"
                ),
                &[num(cutoff.as_millis()), num(u64::from(RETENTION_USERS_PER_RUN))],
            )
            .await?
            .read(|r| {
                let checkpoint = match r.opt_num("cp_seq")? {
                    Some(seq) => Some(Anchor {
                        seq: seq as u64,
                        hash: r.text("cp_hash")?,
                        at: r.num("cp_at")? as u64,
                        mac: r.opt_text("cp_mac")?,
                        mac_version: r.opt_num("cp_version")?.map(|v| v as u32),
                    }),
                    None => None,
                };
                Ok(Old {
                    user_id: r.text("user_id")?,
                    seq: r.num("seq")?,
                    hash: r.text("hash")?,
                    checkpoint,
                    legacy: r.opt_text("legacy")?,
                })
            })?;
        let mut removed = 0;
        for o in old {
            let point = crate::audit::ChainHead {
                seq: o.seq as u64,
                hash: o.hash.clone(),
            };
            let window = window_of(o.legacy);
            // A checkpoint sealed under a version no longer configured stays where it is
            // (health names the version) rather than being replaced by a broken one.
            let Ok(cp) = sealer.successor(
                AnchorKind::Checkpoint,
                &o.user_id,
                o.checkpoint.as_ref(),
                &point,
                window,
            ) else {
                continue;
            };
            let results = self
                .db
                .batch(vec![
                    self.db.prepare(
                        "INSERT INTO audit_checkpoints (user_id, seq, hash, updated_at, mac, mac_version) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                         ON CONFLICT (user_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, \
                         updated_at = excluded.updated_at, mac = excluded.mac, mac_version = excluded.mac_version",
                        &[
                            text(o.user_id.as_str()),
                            num(cp.seq),
                            text(cp.hash.as_str()),
                            num(cp.at),
                            opt(cp.mac.as_deref()),
                            cp.mac_version.map(|v| num(u64::from(v))).unwrap_or(JsValue::NULL),
                        ],
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

    async fn unsettled(
        &self,
        active: u32,
        configured: &[u32],
        limit: u32,
    ) -> Result<Unsettled, StoreError> {
        let others: Vec<u32> = configured
            .iter()
            .copied()
            .filter(|v| *v != active)
            .collect();
        let rows = self
            .db
            .all(
                UNSETTLED,
                &[
                    num(u64::from(active)),
                    json_arg(&others),
                    num(u64::from(limit)),
                    json_arg(&configured.to_vec()),
                ],
            )
            .await?;
        let mut out = Unsettled::default();
        for row in rows.read(|r| {
            Ok(match r.text("kind")?.as_str() {
                // The facts: the window (as user_id), since when (seq), a strict seal
                // (updated_at).
                "facts" => Err((
                    r.opt_text("user_id")?,
                    r.opt_num("seq")?,
                    r.num("updated_at")?,
                    r.num("hash")?,
                )),
                kind => Ok((
                    if kind == "checkpoint" {
                        AnchorKind::Checkpoint
                    } else {
                        AnchorKind::Head
                    },
                    r.text("user_id")?,
                    read_anchor(r)?,
                )),
            })
        })? {
            match row {
                Ok(anchor) => out.anchors.push(anchor),
                Err((state, since, strict, unsealed)) => {
                    out.window = window_of(state);
                    out.since = since.unwrap_or(0.0) as u64;
                    out.strict_seal = strict > 0.0;
                    out.unsealed_left = unsealed > 0.0;
                }
            }
        }
        Ok(out)
    }

    async fn settle(
        &self,
        resealed: &[Resealed],
        window: Option<LegacyWindow>,
    ) -> Result<(), StoreError> {
        let mut statements = Vec::with_capacity(3);
        for kind in AnchorKind::ALL {
            let rows: Vec<Value> = resealed
                .iter()
                .filter(|r| r.kind == *kind)
                .map(|r| {
                    json!({"u": r.user, "seq": r.from.seq, "hash": r.from.hash, "at": r.from.at,
                           "old": r.from.mac, "oldv": r.from.mac_version,
                           "mac": r.to.mac, "v": r.to.mac_version})
                })
                .collect();
            if rows.is_empty() {
                continue;
            }
            let sql = match kind {
                AnchorKind::Head => RESEAL_HEADS,
                AnchorKind::Checkpoint => RESEAL_CHECKPOINTS,
            };
            // Only where the anchor is still as it was read: one moved meanwhile (by a
            // chainer, by retention) was sealed by whoever moved it.
            statements.push(self.db.prepare(sql, &[json_arg(&rows)])?);
        }
        if let Some(w) = window {
            statements.push(self.db.prepare(
                "INSERT INTO audit_legacy (id, state, updated_at) VALUES (1, ?1, ?2) \
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                &[text(w.as_str()), num(now_ms())],
            )?);
        }
        if !statements.is_empty() {
            self.db.batch(statements).await?;
        }
        Ok(())
    }

    fn notices_written(&self) -> usize {
        self.notices_written.get()
    }
}
