//! The budgets seam (`budgets::BudgetStore`) in memory: each scope's counters per period,
//! judged by the same rule as the D1 statement (`budgets::first_exceeded`).

use std::cell::RefCell;
use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::budgets::{first_exceeded, Amounts, BudgetStore, Claim, Reserved, Scope, SystemBudgets};
use crate::domain::{StoreError, UserId};

/// The counters (scope key, period) → (used, thresholds told), and the operators' overrides.
#[derive(Default)]
pub(crate) struct MemoryBudgets {
    pub counters: RefCell<BTreeMap<(String, String), (Amounts, u8)>>,
    pub overrides: RefCell<BTreeMap<String, SystemBudgets>>,
    /// The audit outbox the `budget.updated` events go to, with the overrides.
    pub outbox: std::rc::Rc<super::MemoryOutbox>,
    /// The threshold notices told.
    pub told: RefCell<Vec<crate::notify::Notice>>,
}

#[async_trait(?Send)]
impl BudgetStore for MemoryBudgets {
    async fn reserve(&self, claim: &Claim) -> Result<Reserved, StoreError> {
        let mut counters = self.counters.borrow_mut();
        let entry = counters
            .entry((claim.scope.key(), claim.period.clone()))
            .or_default();
        if let Some(unit) = first_exceeded(&claim.budget, &entry.0, &claim.reserve) {
            return Ok(Reserved::Exceeded {
                unit,
                used: entry.0,
            });
        }
        for (u, r) in entry.0 .0.iter_mut().zip(claim.reserve.0) {
            *u += r;
        }
        Ok(Reserved::Granted(entry.0))
    }

    async fn settle(
        &self,
        scope: &Scope,
        period: &str,
        delta: &Amounts,
    ) -> Result<Amounts, StoreError> {
        let mut counters = self.counters.borrow_mut();
        let Some(entry) = counters.get_mut(&(scope.key(), period.to_owned())) else {
            return Ok(Amounts::default());
        };
        for (u, d) in entry.0 .0.iter_mut().zip(delta.0) {
            *u = (*u + d).max(0.0);
        }
        Ok(entry.0)
    }

    async fn mark_told(
        &self,
        scope: &Scope,
        period: &str,
        percent: u8,
    ) -> Result<bool, StoreError> {
        let flag = if percent >= 100 { 2 } else { 1 };
        let mut counters = self.counters.borrow_mut();
        let entry = counters
            .entry((scope.key(), period.to_owned()))
            .or_default();
        if entry.1 & flag != 0 {
            return Ok(false);
        }
        entry.1 |= flag;
        Ok(true)
    }

    async fn tell(
        &self,
        notice: &crate::notify::Notice,
        _now: crate::domain::Timestamp,
    ) -> Result<(), StoreError> {
        self.told.borrow_mut().push(notice.clone());
        Ok(())
    }

    async fn used(&self, scopes: &[(Scope, String)]) -> Result<Vec<Amounts>, StoreError> {
        let counters = self.counters.borrow();
        Ok(scopes
            .iter()
            .map(|(s, p)| {
                counters
                    .get(&(s.key(), p.clone()))
                    .map(|e| e.0)
                    .unwrap_or_default()
            })
            .collect())
    }

    async fn overrides(&self, user: &UserId) -> Result<Option<SystemBudgets>, StoreError> {
        Ok(self.overrides.borrow().get(user.as_str()).cloned())
    }

    async fn set_overrides(
        &self,
        user: &UserId,
        budgets: Option<&SystemBudgets>,
        event: &crate::audit::AuditEvent,
    ) -> Result<(), StoreError> {
        match budgets {
            Some(b) => self
                .overrides
                .borrow_mut()
                .insert(user.as_str().to_owned(), b.clone()),
            None => self.overrides.borrow_mut().remove(user.as_str()),
        };
        self.outbox.push(event);
        Ok(())
    }
}
