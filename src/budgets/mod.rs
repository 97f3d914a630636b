//! Budgets: how much a user may spend in a period (a UTC day or month), in requests,
//! tokens, characters or seconds of audio. The operator limits each user's use of system
//! keys (`SYSTEM_KEY_BUDGETS`, per provider or `*`, overridable per user); a user may cap
//! their own key (`budget` on the credential). A call is admitted against its budget
//! before the provider is contacted, atomically ([`BudgetStore::reserve`]): parallel calls
//! cannot all slip past a limit. What a call reserves (one request; its `max_tokens`; the
//! characters it asks to be spoken) is settled against what it used once its answer has
//! gone on.

mod settings;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::Value;

pub use crate::domain::{Amounts, Budget, Period, Unit, UNITS};
use crate::domain::{CredentialId, ProviderId, StoreError, Timestamp, UserId};
use crate::error::FieldError;

pub use settings::BudgetSettings;

/// Reads one budget (see [`Budget::parse`]), its problems as field errors.
pub fn parse_budget(value: &Value, field: &str) -> Result<Budget, Vec<FieldError>> {
    Budget::parse(value, field)
        .map_err(|e| e.into_iter().map(|(f, m)| FieldError::new(&f, m)).collect())
}

/// Budgets on system-key use by provider (`*` for any provider without its own).
pub type SystemBudgets = BTreeMap<String, Budget>;

/// Reads the `SYSTEM_KEY_BUDGETS` shape: `{"<provider>"|"*": budget, …}`.
pub fn parse_system_budgets(value: &Value, field: &str) -> Result<SystemBudgets, Vec<FieldError>> {
    let Some(map) = value.as_object() else {
        return Err(vec![FieldError::new(field, "must be a JSON object")]);
    };
    let mut errors = Vec::new();
    let mut out = BTreeMap::new();
    for (name, v) in map {
        let at = if field.is_empty() {
            name.clone()
        } else {
            format!("{field}.{name}")
        };
        if name != "*" && crate::providers::find(name).is_none() {
            errors.push(FieldError::new(&at, "is not a provider (or \"*\")"));
            continue;
        }
        match parse_budget(v, &at) {
            Ok(b) => {
                out.insert(name.clone(), b);
            }
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The `SYSTEM_KEY_BUDGETS` shape of `budgets`.
pub fn system_budgets_json(budgets: &SystemBudgets) -> Value {
    // Inserted one by one: collecting into the map (a BTreeMap) sorts first, with std's
    // stable sort compiled in for it; the entries come in key order anyway.
    let mut out = serde_json::Map::new();
    for (k, b) in budgets {
        out.insert(k.clone(), b.to_json());
    }
    Value::Object(out)
}

/// The budget on a user's system-key use of `provider`: the provider's own, else `*`'s.
pub fn system_budget_for(budgets: &SystemBudgets, provider: ProviderId) -> Option<(&str, &Budget)> {
    budgets
        .get_key_value(provider.as_str())
        .or_else(|| budgets.get_key_value("*"))
        .map(|(k, b)| (k.as_str(), b))
}

/// Whose budget a call counts against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The operator's limit on `user`'s use of system keys, under `entry` (a provider, or
    /// `*`) of the budgets that apply to them.
    System { user: UserId, entry: String },
    /// The user's own cap on their credential.
    Credential { user: UserId, id: CredentialId },
}

impl Scope {
    /// The key its counters are kept under.
    pub fn key(&self) -> String {
        match self {
            Scope::System { user, entry } => format!("system:{}:{entry}", user.as_str()),
            Scope::Credential { id, .. } => format!("credential:{}", id.as_str()),
        }
    }

    pub fn user(&self) -> &UserId {
        match self {
            Scope::System { user, .. } | Scope::Credential { user, .. } => user,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Scope::System { .. } => "system",
            Scope::Credential { .. } => "credential",
        }
    }
}

/// One call's claim on a budget: counted in `period`'s counters under `scope`, refused if
/// it would start past any limit.
#[derive(Clone, Debug)]
pub struct Claim {
    pub scope: Scope,
    pub budget: Budget,
    pub period: String,
    pub reserve: Amounts,
}

/// What a claim came to.
#[derive(Clone, Debug, PartialEq)]
pub enum Reserved {
    /// Counted: the period's use with this call's reservation in it.
    Granted(Amounts),
    /// Refused, counting nothing: the unit that ran out, and the period's use so far.
    Exceeded { unit: Unit, used: Amounts },
}

/// Where budgets' counters live (D1 in `edge/d1/budgets.rs`, memory in tests). Each
/// method is one atomic step: parallel claims are judged one after another.
#[async_trait(?Send)]
pub trait BudgetStore {
    /// Adds `claim.reserve` to its period's counters if, with it, no limit is passed (for
    /// requests: `used + 1 ≤ limit`; for the rest: `used < limit` and `used + reserve ≤
    /// limit`); else counts nothing.
    async fn reserve(&self, claim: &Claim) -> Result<Reserved, StoreError>;
    /// Adds `delta` (what was used minus what was reserved; never below 0 in all) to the
    /// counters of `scope` in `period`; the counters after.
    async fn settle(
        &self,
        scope: &Scope,
        period: &str,
        delta: &Amounts,
    ) -> Result<Amounts, StoreError>;
    /// Marks `percent` (80 or 100) of `scope`'s budget in `period` as told, if it was not:
    /// whether this call is the one that marked it (and so tells).
    async fn mark_told(&self, scope: &Scope, period: &str, percent: u8)
        -> Result<bool, StoreError>;
    /// Puts a threshold's webhook notice in the key-health webhooks' queue (delivered,
    /// signed and retried like theirs).
    async fn tell(&self, notice: &crate::notify::Notice, now: Timestamp) -> Result<(), StoreError>;
    /// The counters of each of `scopes` in its period (zeros where nothing was counted).
    async fn used(&self, scopes: &[(Scope, String)]) -> Result<Vec<Amounts>, StoreError>;
    /// The operator's budgets for `user`'s system-key use, overriding the default.
    async fn overrides(&self, user: &UserId) -> Result<Option<SystemBudgets>, StoreError>;
    /// Sets (or, `None`, removes) `user`'s budgets on system-key use, with `event` (its
    /// `budget.updated`) in the audit outbox in the same transaction.
    async fn set_overrides(
        &self,
        user: &UserId,
        budgets: Option<&SystemBudgets>,
        event: &crate::audit::AuditEvent,
    ) -> Result<(), StoreError>;
}

/// The first unit whose limit the claim would pass, given `used` so far (the rule
/// [`BudgetStore::reserve`] applies; shared by the stores).
pub fn first_exceeded(budget: &Budget, used: &Amounts, reserve: &Amounts) -> Option<Unit> {
    UNITS.into_iter().find(|&unit| {
        let Some(limit) = budget.limit(unit) else {
            return false;
        };
        let (u, r) = (used.get(unit), reserve.get(unit));
        match unit {
            Unit::Requests => u + r.max(1.0) > limit,
            _ => u >= limit || u + r > limit,
        }
    })
}

/// The thresholds (80, 100) of `budget` that `after` has reached in some unit.
pub fn thresholds_reached(budget: &Budget, after: &Amounts) -> Vec<u8> {
    let mut out = Vec::new();
    for pct in [80u8, 100] {
        let reached = UNITS.into_iter().any(|unit| {
            budget
                .limit(unit)
                .is_some_and(|l| l > 0.0 && after.get(unit) >= l * f64::from(pct) / 100.0)
        });
        if reached {
            out.push(pct);
        }
    }
    out
}

/// The unit a threshold notice names: the one most used relative to its limit.
pub fn most_used(budget: &Budget, after: &Amounts) -> Option<(Unit, f64, f64)> {
    UNITS
        .into_iter()
        .filter_map(|u| {
            budget
                .limit(u)
                .filter(|l| *l > 0.0)
                .map(|l| (u, l, after.get(u)))
        })
        .max_by(|a, b| (a.2 / a.1).total_cmp(&(b.2 / b.1)))
}

#[cfg(test)]
mod tests;
