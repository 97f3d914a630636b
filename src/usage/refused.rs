//! What happens when a provider refuses a user's key in use (a proxied call, a minting):
//! what its answer says of the key ([`key_verdict`]), and the credential taking that
//! verdict, unless it changed since it was read.

use serde_json::json;

use super::KeyUse;
use crate::audit::{Action, Facts, Origin};
use crate::credentials::Written;
use crate::domain::{Cooldown, CooldownReason, Credential, CredentialStatus, Timestamp};
use crate::error::Error;
use crate::http::HttpResponse;
use crate::probe::{Failure, Verdict as Judged};
use crate::providers::ProviderInfo;

/// How a call's provider answered a key in use, as far as the key's health goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The key was refused (401/403): it is dead.
    Refused,
    /// The key has no quota left: it cools down until the quota resets (or an hour).
    QuotaExhausted,
}

/// How long a key the provider rate-limited waits at most, whatever its `Retry-After`
/// says, and at least (a 429 without one).
const RATE_COOLDOWN_MAX_MS: u64 = 15 * 60 * 1000;
const RATE_COOLDOWN_MIN_MS: u64 = 1000;
/// How long a spent key waits when the provider does not say when its quota resets.
const QUOTA_COOLDOWN_MS: u64 = 60 * 60 * 1000;
/// The furthest reset a spent key's cooldown believes (a month and a day).
const QUOTA_COOLDOWN_MAX_MS: u64 = 32 * 24 * 60 * 60 * 1000;

impl KeyUse<'_> {
    /// A provider refused the user's key in use (or said it ran out): the credential
    /// takes that status, with its `credential.validated` failure event, unless the row
    /// changed since it was read (a rotation that landed meanwhile is not undone). Returns
    /// the id of the event written with the change, for the chainer to be told.
    pub async fn mark_in_use(
        &self,
        credential: &Credential,
        verdict: Verdict,
        detail: &str,
        origin: &Origin,
    ) -> Result<Option<String>, Error> {
        let (status, code) = match verdict {
            Verdict::Refused => (CredentialStatus::InvalidKey, "credential_invalid"),
            Verdict::QuotaExhausted => (CredentialStatus::QuotaExhausted, "quota_exhausted"),
        };
        let now = self.clock.now();
        // The row whole (the use read it without its model list), unless it changed since.
        let Some(mut c) = self.store.get(&credential.user_id, &credential.id).await? else {
            return Ok(None);
        };
        if c.version != credential.version {
            return Ok(None);
        }
        let from = c.status;
        c.status = status;
        c.status_detail = Some(detail.to_owned());
        c.consecutive_failures = c.consecutive_failures.saturating_add(1);
        c.last_validated_at = Some(now);
        c.updated_at = now;
        if verdict == Verdict::QuotaExhausted {
            // Until the quota resets, as far as the provider said when; else an hour.
            let reset = c
                .quota
                .as_ref()
                .and_then(|q| q.resets_at.as_deref())
                .and_then(Timestamp::parse_rfc3339)
                .filter(|at| *at > now && now.millis_until(*at) <= QUOTA_COOLDOWN_MAX_MS);
            c.cooldown = Some(Cooldown {
                until: reset.unwrap_or(now.plus_millis(QUOTA_COOLDOWN_MS)),
                reason: CooldownReason::QuotaExhausted,
            });
        }
        let mut facts = Facts::new(Action::CredentialValidated);
        facts.about(&c.id, Some(c.provider));
        facts.detail = Some(json!({"previous_status": from, "new_status": status, "in_use": true}));
        let event = facts.event(origin, &c.user_id, now, Some(code));
        match self.store.record_check(&c, Some(&event)).await? {
            Written::Done => Ok(Some(event.id)),
            // Changed or gone meanwhile: whatever landed is newer than this verdict.
            Written::Conflict | Written::Missing => Ok(None),
        }
    }

    /// The provider rate-limited the user's key in use: it cools down for `wait_ms`
    /// (bounded), tried after its user's other keys until then. Its status stays: a 429
    /// says nothing against the key. Not written if the row changed since it was read.
    pub async fn cool_down(
        &self,
        credential: &Credential,
        wait_ms: Option<u64>,
    ) -> Result<(), Error> {
        let wait = wait_ms
            .unwrap_or(RATE_COOLDOWN_MIN_MS)
            .clamp(RATE_COOLDOWN_MIN_MS, RATE_COOLDOWN_MAX_MS);
        let cooldown = Cooldown {
            until: self.clock.now().plus_millis(wait),
            reason: CooldownReason::RateLimited,
        };
        // One statement, conditional on the version read: a rotation meanwhile wins.
        self.store.set_cooldown(credential, &cooldown).await?;
        Ok(())
    }
}

/// What an error answer says of the key itself, if anything: refused (only a 401 or 403,
/// or Google's 400 that names `API_KEY_INVALID` as its reason; never a 404 or a message
/// the request could have echoed) or out of quota (the provider's own quota signals).
pub fn key_verdict(info: &ProviderInfo, answer: &HttpResponse) -> Option<(Verdict, String)> {
    match (info.classify)(answer) {
        Judged::Reject(Failure::InvalidKey(m))
            if matches!(answer.status, 401 | 403) || names_invalid_key(answer) =>
        {
            Some((Verdict::Refused, m))
        }
        Judged::Reject(Failure::QuotaExhausted(m))
        | Judged::Retry {
            failure: Failure::QuotaExhausted(m),
            ..
        } => Some((Verdict::QuotaExhausted, m)),
        _ => None,
    }
}

/// Google's structured reason for a bad key (`error.details[].reason`), which a request
/// cannot put there.
fn names_invalid_key(answer: &HttpResponse) -> bool {
    answer.status == 400
        && answer
            .json()
            .as_ref()
            .and_then(|b| b.pointer("/error/details"))
            .and_then(|d| d.as_array())
            .is_some_and(|d| {
                d.iter()
                    .any(|x| x.get("reason").and_then(|r| r.as_str()) == Some("API_KEY_INVALID"))
            })
}
