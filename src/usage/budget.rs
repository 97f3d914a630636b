//! A key's use against its budget: before the provider is contacted, a call on the user's
//! credential claims its share of the user's own cap on that key, and a call on a system key
//! its share of the operator's limit on that user's system-key use (`SYSTEM_KEY_BUDGETS`,
//! or the user's override). The claim is one atomic step in the store; what the call used
//! is settled after its answer, and crossing 80 % and 100 % of a budget is told once.

use super::{KeyInUse, KeyUse};
use crate::audit::Source;
use crate::budgets::{
    most_used, system_budget_for, thresholds_reached, Amounts, Budget, Claim, Reserved, Scope, Unit,
};
use crate::domain::{Timestamp, UserId};
use crate::error::{BudgetExceeded, Error};
use crate::notify::Notice;
use serde_json::json;

/// A call admitted against a budget: what it claimed, to settle after its answer.
#[derive(Clone, Debug)]
pub struct Admitted {
    pub claim: Claim,
    /// The budget's counters with this claim in them.
    pub after: Amounts,
}

/// A threshold of a budget a call crossed: what the `usage.threshold` webhook tells.
#[derive(Clone, Debug, PartialEq)]
pub struct Crossed {
    pub user: UserId,
    pub scope: &'static str,
    pub credential_id: Option<crate::domain::CredentialId>,
    pub provider: crate::domain::ProviderId,
    pub unit: Unit,
    pub limit: f64,
    pub used: f64,
    pub percent: u8,
    pub resets_at: Timestamp,
    pub period: String,
}

impl KeyUse<'_> {
    /// The budget that applies to a call on `key` by `user`, and whose it is.
    async fn budget_of(
        &self,
        user: &UserId,
        key: &KeyInUse,
    ) -> Result<Option<(Scope, Budget)>, Error> {
        match (&key.credential, key.source) {
            (Some(c), _) => Ok(c.budget.clone().map(|b| {
                (
                    Scope::Credential {
                        user: user.clone(),
                        id: c.id.clone(),
                    },
                    b,
                )
            })),
            (None, Source::System) => {
                let overrides = self.budgets.overrides(user).await?;
                let budgets = overrides
                    .as_ref()
                    .unwrap_or(&self.config.system_key_budgets);
                Ok(system_budget_for(budgets, key.provider).map(|(entry, b)| {
                    (
                        Scope::System {
                            user: user.clone(),
                            entry: entry.to_owned(),
                        },
                        b.clone(),
                    )
                }))
            }
            (None, Source::User) => Ok(None),
        }
    }

    /// Admits one call on `key` that will use about `reserve` (one request at least)
    /// against the budget that applies to it, before the provider is contacted: `None`
    /// when no budget applies; [`Error::BudgetExceeded`] when the call would start past it
    /// (nothing is counted).
    pub async fn admit(
        &self,
        user: &UserId,
        key: &KeyInUse,
        reserve: &Amounts,
    ) -> Result<Option<Admitted>, Error> {
        let Some((scope, budget)) = self.budget_of(user, key).await? else {
            return Ok(None);
        };
        let now = self.clock.now();
        let mut reserve = *reserve;
        reserve.set(Unit::Requests, 1.0);
        let claim = Claim {
            period: budget.period.key(now),
            scope,
            budget,
            reserve,
        };
        match self.budgets.reserve(&claim).await? {
            Reserved::Granted(after) => Ok(Some(Admitted { claim, after })),
            Reserved::Exceeded { unit, used } => {
                let resets_at = claim.budget.period.resets_at(now);
                Err(Error::BudgetExceeded(Box::new(BudgetExceeded {
                    scope: claim.scope.name(),
                    provider: key.provider,
                    credential_id: key.credential.as_ref().map(|c| c.id.clone()),
                    period: claim.budget.period,
                    unit,
                    limit: claim.budget.limit(unit).unwrap_or_default(),
                    used: used.get(unit),
                    resets_at,
                    retry_after_seconds: now.millis_until(resets_at).div_ceil(1000).max(1),
                })))
            }
        }
    }

    /// Admits one call on `key` as [`admit`](Self::admit) does, and when that key is at its
    /// budget, on the first of the user's next keys that is not (`key` and `facts` move on
    /// to it, as a failover does); [`Error::BudgetExceeded`] when none is left. Shared by
    /// resolve and realtime minting.
    pub async fn admit_first(
        &self,
        user: &UserId,
        key: &mut KeyInUse,
        reserve: &Amounts,
        facts: &mut crate::audit::Facts,
    ) -> Result<Option<Admitted>, Error> {
        loop {
            match self.admit(user, key, reserve).await {
                Err(Error::BudgetExceeded(b)) => {
                    let mut next_facts = facts.clone();
                    match self.next_key(key, &mut next_facts)? {
                        Some(next) => {
                            *key = next;
                            *facts = next_facts;
                        }
                        None => return Err(Error::BudgetExceeded(b)),
                    }
                }
                other => return other,
            }
        }
    }

    /// Settles an admitted call with what it `used` (the reservation given back, the use
    /// counted), and says which thresholds of its budget it was the first to cross.
    pub async fn settle(
        &self,
        admitted: &Admitted,
        used: &Amounts,
        provider: crate::domain::ProviderId,
    ) -> Result<Vec<Crossed>, Error> {
        let claim = &admitted.claim;
        let mut delta = used.minus(&claim.reserve);
        // The request itself was counted when it was admitted.
        delta.set(Unit::Requests, 0.0);
        let after = if delta.0.iter().all(|d| *d == 0.0) {
            admitted.after
        } else {
            self.budgets
                .settle(&claim.scope, &claim.period, &delta)
                .await?
        };
        let mut crossed = Vec::new();
        for percent in thresholds_reached(&claim.budget, &after) {
            if !self
                .budgets
                .mark_told(&claim.scope, &claim.period, percent)
                .await?
            {
                continue;
            }
            let Some((unit, limit, used)) = most_used(&claim.budget, &after) else {
                continue;
            };
            let c = Crossed {
                user: claim.scope.user().clone(),
                scope: claim.scope.name(),
                credential_id: match &claim.scope {
                    Scope::Credential { id, .. } => Some(id.clone()),
                    Scope::System { .. } => None,
                },
                provider,
                unit,
                limit,
                used,
                percent,
                resets_at: claim.budget.period.resets_at(self.clock.now()),
                period: claim.period.clone(),
            };
            let now = self.clock.now();
            self.budgets.tell(&c.notice(&claim.scope, now), now).await?;
            crossed.push(c);
        }
        Ok(crossed)
    }

    /// Gives back all an admitted call claimed (the provider refused it: nothing was used).
    pub async fn release(&self, admitted: &Admitted) -> Result<(), Error> {
        let mut back = Amounts::default();
        back = back.minus(&admitted.claim.reserve);
        self.budgets
            .settle(&admitted.claim.scope, &admitted.claim.period, &back)
            .await?;
        Ok(())
    }
}

impl Crossed {
    /// The signed webhook's notice: `usage.threshold`, once per budget, threshold and
    /// period (its id is made of those, so a repeat is the same notice).
    pub fn notice(&self, scope: &Scope, now: Timestamp) -> Notice {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(format!("{}|{}|{}", scope.key(), self.period, self.percent));
        let id = format!("ut_{}", &crate::domain::hex_bytes(&digest)[..32]);
        let mut body = json!({
            "type": "usage.threshold",
            "id": id,
            "at": now.to_rfc3339(),
            "user_id": self.user.as_str(),
            "provider": self.provider,
            "scope": self.scope,
            "unit": self.unit.as_str(),
            "limit": crate::domain::amount_json(self.limit),
            "used": crate::domain::amount_json(self.used),
            "percent": self.percent,
            "resets_at": self.resets_at.to_rfc3339(),
        });
        if let Some(c) = &self.credential_id {
            body["credential_id"] = json!(c);
        }
        Notice {
            id,
            user_id: self.user.as_str().to_owned(),
            credential_id: self.credential_id.as_ref().map(|c| c.as_str().to_owned()),
            body: body.to_string(),
        }
    }
}
