//! The scheduled sweep's check of one stored credential: the provider is asked once (a
//! wait it asks for is the queue's to honour, never slept through here), the result is
//! written through the same conditional write as a user's re-check (a sweep never undoes
//! a rotation), and only a change of status is audited.
//!
//! A check of an imported row (one no check has confirmed, or one still in its import
//! batch) counts against the live-check limits like a user's: per the row's user, and all
//! such checks together as one client address ([`SWEEP_LIMIT_KEY`]). Otherwise an import
//! followed by a sweep would test keys faster than adding them could. A check the limits
//! refuse waits (the message comes back later); nothing is written.

use serde_json::json;

use crate::audit::{Action, Caller, Facts, Origin};
use crate::checks::LiveChecks;
use crate::config::Config;
use crate::credentials::keys::{master_keys, open_stored};
use crate::credentials::rows::{status_change, Checked};
use crate::credentials::{CredentialStore, Written};
use crate::domain::{Credential, CredentialId, CredentialStatus, Timestamp, UserId};
use crate::error::Error;
use crate::limits::RATE_LIMIT_PERIOD_SECONDS;
use crate::probe::Failure;
use crate::providers;

/// What the sweep did with one credential.
#[derive(Clone, Debug, PartialEq)]
pub enum Revalidated {
    /// Checked; the status is the same as before (no event).
    Unchanged(CredentialStatus),
    /// Checked; the status changed, with its `credential.validated` event.
    Changed {
        from: CredentialStatus,
        to: CredentialStatus,
    },
    /// The provider could not give an answer now (rate limited, unreachable, failing):
    /// nothing written; ask again in this many seconds.
    Deferred { retry_after_seconds: u64 },
    /// The vault's own limits on live checks refused the check of an imported row now:
    /// nothing asked, nothing written; ask again in this many seconds.
    Limited { retry_after_seconds: u64 },
    /// Nothing to do: the credential is gone, was checked after it was queued, or changed
    /// while it was checked (the change's own check stands).
    Skipped(&'static str),
}

/// What the sweep's checks of imported rows are counted under in the per-address limit:
/// all of them together, as one client address (no address reads like this).
const SWEEP_LIMIT_KEY: &str = "sweep";

/// Whether the sweep's check of `c` counts against the live-check limits: a row no check
/// has confirmed, or one an import created that its user has not touched since.
fn counted(c: &Credential) -> bool {
    c.status == CredentialStatus::Unverified || c.import_batch.is_some()
}

/// How long a transient failure waits before the message is tried again.
const TRANSIENT_RETRY_SECONDS: u64 = 60;
/// The least a provider's back-off waits (a 429 without a hint is not retried at once).
const MIN_BACK_OFF_SECONDS: u64 = 2;

/// The sweep's checks: what re-checking a stored key on schedule needs.
pub struct Revalidation<'a> {
    pub config: &'a Config,
    pub store: &'a dyn CredentialStore,
    pub checks: LiveChecks<'a>,
    /// Where notes go that are not errors (a check that waits). Never a secret.
    pub log: &'a dyn Fn(&str),
}

impl Revalidation<'_> {
    /// Re-checks `user`'s credential `id`, queued at `queued_at`, for the sweep.
    pub async fn revalidate(
        &self,
        user: &UserId,
        id: &CredentialId,
        queued_at: Timestamp,
        origin: &Origin,
    ) -> Result<Revalidated, Error> {
        let Some(read) = self.store.get(user, id).await? else {
            return Ok(Revalidated::Skipped("gone"));
        };
        // Redelivered, or re-checked by its user since it was queued: checked already.
        if read.last_validated_at.is_some_and(|at| at >= queued_at) {
            return Ok(Revalidated::Skipped("checked since it was queued"));
        }
        // A later sweep claimed it again (this message waited past the claim's hour): the
        // newer message checks it, this one does nothing.
        if read
            .revalidation_queued_at
            .is_some_and(|at| at != queued_at)
        {
            return Ok(Revalidated::Skipped("superseded by a newer claim"));
        }
        // A row sealed under a version that is not configured (an operator's mistake, or
        // a rotation under way) says nothing about the key: leave it alone.
        let keys = master_keys(self.config)?;
        if read
            .secret
            .as_ref()
            .is_some_and(|s| !keys.versions().any(|v| v == s.key_version))
        {
            return Ok(Revalidated::Skipped(
                "its master key version is not configured",
            ));
        }
        let provider = providers::find(read.provider.as_str())
            .ok_or_else(|| Error::internal("unknown provider in a stored row"))?;
        let outcome = match open_stored(keys, &read, self.log) {
            Some(key) => {
                if counted(&read) {
                    let caller = Caller {
                        user,
                        network: SWEEP_LIMIT_KEY,
                        origin,
                    };
                    // Refused (or the limiter is out of reach): not checked now, not marked.
                    if let Err(e) = self.checks.count(&caller).await {
                        (self.log)(&format!("revalidation: {id} waits ({e})"));
                        return Ok(Revalidated::Limited {
                            retry_after_seconds: RATE_LIMIT_PERIOD_SECONDS,
                        });
                    }
                }
                let prober = self.checks.prober().once();
                match self
                    .checks
                    .check_with(&prober, provider, &read.params, &key)
                    .await
                {
                    Ok(accepted) => Checked::Passed(accepted),
                    Err(Failure::RateLimited { retry_after_ms, .. }) => {
                        return Ok(Revalidated::Deferred {
                            retry_after_seconds: retry_after_ms
                                .div_ceil(1000)
                                .max(MIN_BACK_OFF_SECONDS),
                        })
                    }
                    // An outage says nothing about the key: ask again later.
                    Err(Failure::Unreachable(_) | Failure::ProviderError(_)) => {
                        return Ok(Revalidated::Deferred {
                            retry_after_seconds: TRANSIENT_RETRY_SECONDS,
                        })
                    }
                    Err(f) => Checked::refused(&f),
                }
            }
            None => Checked::undecryptable(),
        };
        let now = self.checks.clock.now();
        let mut next = read.clone();
        let mut facts = Facts::new(Action::CredentialValidated);
        facts.about(&read.id, Some(read.provider));
        outcome.apply(&mut next, now);
        facts.failure = outcome.failure();
        // One more scheduled check that found it dead (the sweep waits longer next time,
        // and stops after `jobs::DEAD_CHECKS_MAX`); anything else starts over.
        next.dead_checks = match next.status {
            CredentialStatus::InvalidKey | CredentialStatus::NeedsReconfiguration => {
                read.dead_checks.saturating_add(1)
            }
            _ => 0,
        };
        let (from, to) = (read.status, next.status);
        let event = (from != to).then(|| {
            let mut detail = status_change(&read, &next);
            detail["scheduled"] = json!(true);
            facts.detail = Some(detail);
            facts.event(origin, user, now, None)
        });
        match self.store.record_check(&next, event.as_ref()).await? {
            Written::Done if from == to => Ok(Revalidated::Unchanged(to)),
            Written::Done => Ok(Revalidated::Changed { from, to }),
            Written::Conflict => Ok(Revalidated::Skipped("changed while it was checked")),
            Written::Missing => Ok(Revalidated::Skipped("gone")),
        }
    }
}
