//! Budgets' counters and the operator's per-user overrides over D1 (`budget_use`,
//! `budget_overrides`): the only place that knows their SQL. A claim is judged and counted
//! by one conditional UPDATE inside one transaction, so parallel claims on one budget are
//! judged one after another: N first calls against a limit of one let exactly one through.

use async_trait::async_trait;
use worker::wasm_bindgen::JsValue;

use crate::budgets::{
    first_exceeded, parse_system_budgets, Amounts, BudgetStore, Claim, Reserved, Scope,
    SystemBudgets, UNITS,
};
use crate::domain::{StoreError, UserId};

use super::db::{rows_of, text, Db, Row};

pub(in crate::edge) struct D1Budgets<'a> {
    db: &'a Db,
}

impl<'a> D1Budgets<'a> {
    pub(in crate::edge) fn new(db: &'a Db) -> Self {
        Self { db }
    }
}

const COUNTERS: &str = "requests, input_tokens, output_tokens, characters, audio_seconds";

/// The period's row, made at zero if it is not there yet.
const OPEN: &str = "INSERT INTO budget_use (scope, period, user_id) VALUES (?1, ?2, ?3) \
     ON CONFLICT (scope, period) DO NOTHING";

/// The claim, counted only if every limit still holds with it (?3..?7 the reservation,
/// ?8..?12 the limits, null where none): for requests `used + 1 ≤ limit`; for the rest
/// `used < limit` and `used + reserve ≤ limit`.
const CLAIM: &str = "UPDATE budget_use SET \
     requests = requests + ?3, input_tokens = input_tokens + ?4, \
     output_tokens = output_tokens + ?5, characters = characters + ?6, \
     audio_seconds = audio_seconds + ?7 \
     WHERE scope = ?1 AND period = ?2 \
     AND (?8 IS NULL OR requests + ?3 <= ?8) \
     AND (?9 IS NULL OR (input_tokens < ?9 AND input_tokens + ?4 <= ?9)) \
     AND (?10 IS NULL OR (output_tokens < ?10 AND output_tokens + ?5 <= ?10)) \
     AND (?11 IS NULL OR (characters < ?11 AND characters + ?6 <= ?11)) \
     AND (?12 IS NULL OR (audio_seconds < ?12 AND audio_seconds + ?7 <= ?12)) \
     RETURNING requests, input_tokens, output_tokens, characters, audio_seconds";

fn amounts_of(r: &Row) -> Result<Amounts, StoreError> {
    let mut a = Amounts::default();
    for unit in UNITS {
        a.set(unit, r.num(unit.as_str())?);
    }
    Ok(a)
}

fn bound(a: &Amounts) -> Vec<JsValue> {
    UNITS.iter().map(|u| JsValue::from(a.get(*u))).collect()
}

#[async_trait(?Send)]
impl BudgetStore for D1Budgets<'_> {
    async fn reserve(&self, claim: &Claim) -> Result<Reserved, StoreError> {
        let scope = claim.scope.key();
        let key = [text(&scope), text(&claim.period)];
        let mut args = vec![
            key[0].clone(),
            key[1].clone(),
            text(claim.scope.user().as_str()),
        ];
        let open = self.db.prepare(OPEN, &args)?;
        args.pop();
        args.extend(bound(&claim.reserve));
        args.extend(
            UNITS
                .iter()
                .map(|u| claim.budget.limit(*u).map_or(JsValue::NULL, JsValue::from)),
        );
        let judge = self.db.prepare(CLAIM, &args)?;
        let after = self.db.prepare(
            &format!("SELECT {COUNTERS} FROM budget_use WHERE scope = ?1 AND period = ?2"),
            &key,
        )?;
        let results = self.db.batch(vec![open, judge, after]).await?;
        if let Some(granted) = rows_of(&results, 1)?.read(amounts_of)?.pop() {
            return Ok(Reserved::Granted(granted));
        }
        let used = rows_of(&results, 2)?
            .read(amounts_of)?
            .pop()
            .unwrap_or_default();
        let unit = first_exceeded(&claim.budget, &used, &claim.reserve)
            .unwrap_or(crate::budgets::Unit::Requests);
        Ok(Reserved::Exceeded { unit, used })
    }

    async fn settle(
        &self,
        scope: &Scope,
        period: &str,
        delta: &Amounts,
    ) -> Result<Amounts, StoreError> {
        let mut args = vec![text(&scope.key()), text(period)];
        args.extend(bound(delta));
        let row = self
            .db
            .first(
                "UPDATE budget_use SET \
                 requests = max(0, requests + ?3), input_tokens = max(0, input_tokens + ?4), \
                 output_tokens = max(0, output_tokens + ?5), characters = max(0, characters + ?6), \
                 audio_seconds = max(0, audio_seconds + ?7) \
                 WHERE scope = ?1 AND period = ?2 \
                 RETURNING requests, input_tokens, output_tokens, characters, audio_seconds",
                &args,
            )
            .await?;
        match row {
            Some(r) => amounts_of(&r),
            None => Ok(Amounts::default()),
        }
    }

    async fn mark_told(
        &self,
        scope: &Scope,
        period: &str,
        percent: u8,
    ) -> Result<bool, StoreError> {
        let flag = if percent >= 100 { 2.0 } else { 1.0 };
        let changed = self
            .db
            .run(
                "UPDATE budget_use SET told = told | ?3 \
                 WHERE scope = ?1 AND period = ?2 AND (told & ?3) = 0",
                &[text(&scope.key()), text(period), JsValue::from(flag)],
            )
            .await?;
        Ok(changed == 1)
    }

    async fn tell(
        &self,
        notice: &crate::notify::Notice,
        now: crate::domain::Timestamp,
    ) -> Result<(), StoreError> {
        self.db
            .run(
                "INSERT OR IGNORE INTO notifications (id, user_id, credential_id, body, attempts, next_attempt_at, created_at) \
                 VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5)",
                &[
                    text(&notice.id),
                    text(&notice.user_id),
                    notice.credential_id.as_deref().map_or(JsValue::NULL, text),
                    text(&notice.body),
                    super::db::num(now.as_millis()),
                ],
            )
            .await
            .map(|_| ())
    }

    async fn used(&self, scopes: &[(Scope, String)]) -> Result<Vec<Amounts>, StoreError> {
        if scopes.is_empty() {
            return Ok(Vec::new());
        }
        let wanted: Vec<serde_json::Value> = scopes
            .iter()
            .map(|(s, p)| serde_json::json!([s.key(), p]))
            .collect();
        let rows = self
            .db
            .all(
                &format!(
                    "SELECT scope, period, {COUNTERS} FROM budget_use \
                     WHERE (scope, period) IN \
                     (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?1))"
                ),
                &[text(&serde_json::Value::Array(wanted).to_string())],
            )
            .await?;
        let found = rows.read(|r| Ok((r.text("scope")?, r.text("period")?, amounts_of(r)?)))?;
        Ok(scopes
            .iter()
            .map(|(s, p)| {
                let key = s.key();
                found
                    .iter()
                    .find(|(k, q, _)| *k == key && q == p)
                    .map(|(_, _, a)| *a)
                    .unwrap_or_default()
            })
            .collect())
    }

    async fn set_overrides(
        &self,
        user: &UserId,
        budgets: Option<&SystemBudgets>,
        event: &crate::audit::AuditEvent,
    ) -> Result<(), StoreError> {
        let outbox = super::audit::outbox_insert(self.db, event, "", Vec::new())?;
        let write = match budgets {
            Some(b) => self.db.prepare(
                "INSERT INTO budget_overrides (user_id, budgets, updated_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (user_id) DO UPDATE SET budgets = excluded.budgets, updated_at = excluded.updated_at",
                &[
                    text(user.as_str()),
                    text(&crate::budgets::system_budgets_json(b).to_string()),
                    JsValue::from(event.at as f64),
                ],
            )?,
            None => self.db.prepare(
                "DELETE FROM budget_overrides WHERE user_id = ?1",
                &[text(user.as_str())],
            )?,
        };
        self.db.batch(vec![outbox, write]).await.map(|_| ())
    }

    async fn overrides(&self, user: &UserId) -> Result<Option<SystemBudgets>, StoreError> {
        let Some(row) = self
            .db
            .first(
                "SELECT budgets FROM budget_overrides WHERE user_id = ?1",
                &[text(user.as_str())],
            )
            .await?
        else {
            return Ok(None);
        };
        let raw = row.text("budgets")?;
        let value: serde_json::Value = serde_json::from_slice(raw.as_bytes())
            .map_err(|e| StoreError::Corrupt(format!("budget overrides: {e}")))?;
        parse_system_budgets(&value, "")
            .map(Some)
            .map_err(|_| StoreError::Corrupt("budget overrides".into()))
    }
}
