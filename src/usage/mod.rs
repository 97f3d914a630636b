//! Using a key: which one a call gets (the user's, or the system's as a receipted
//! fallback, decided by the one rule in [`choice`]), in the clear for that call only, and
//! what a provider's refusal of a user's key in use does to the credential ([`refused`]).
//! Shared by `/v1/resolve` and the proxy.

mod budget;
pub mod choice;
pub mod record;
mod refused;

pub use budget::{Admitted, Crossed};
pub use choice::{Ask, FallbackReason};
pub use refused::{key_verdict, Verdict};

use crate::audit::{Facts, Source};
use crate::config::Config;
use crate::credentials::keys::{master_keys, open_stored};
use crate::credentials::CredentialStore;
use crate::crypto::SecretKey;
use crate::domain::{Clock, Credential, CredentialParams, CredentialStatus, ProviderId, UserId};
use crate::error::{Error, FieldError, NoCredential};
use crate::http::HttpClient;
use crate::limits::{LimitScope, Limits, RateLimiter};
use crate::providers;
use crate::system_keys::{InfisicalCache, SystemKeys, Tier};
use choice::{decide, Decision, Default, Missing};

/// Using keys: what picking and handing out a key needs (the settings, the store, the
/// system keys' sources, the limits on system-key use, the time, a log).
pub struct KeyUse<'a> {
    pub config: &'a Config,
    pub store: &'a dyn CredentialStore,
    /// For Infisical, when system keys come from there.
    pub http: &'a dyn HttpClient,
    pub clock: &'a dyn Clock,
    pub limiter: &'a dyn RateLimiter,
    /// Where notes go that are not errors (a key that no longer decrypts). Never a secret.
    pub log: &'a dyn Fn(&str),
    /// Infisical's per-isolate cache, when system keys come from there.
    pub infisical: Option<&'a InfisicalCache>,
    /// Budgets' counters, and the operators' per-user budgets.
    pub budgets: &'a dyn crate::budgets::BudgetStore,
}

/// The key a call uses, and the receipt that says whose it is and why.
pub struct KeyInUse {
    pub source: Source,
    pub provider: ProviderId,
    pub model: Option<String>,
    /// The user's credential (`source` user): where it lives and the row version read.
    pub credential: Option<Credential>,
    /// Why the system key was used (`source` system).
    pub fallback_reason: Option<FallbackReason>,
    /// Which tier served the system key.
    pub tier: Option<Tier>,
    pub key: SecretKey,
    /// Where the key is used: the credential's region and base URL, or the system key's
    /// (`SYSTEM_KEY_<PROVIDER>_REGION`, `…_BASE_URL`).
    pub params: CredentialParams,
    /// The user's other keys for the provider that may take over, in the order they are
    /// tried, when the provider refuses this one (already read: no further D1 read).
    pub then: Vec<Credential>,
    /// The user's keys passed over because they are cooling down while this one serves.
    pub skipped: Vec<Credential>,
}

impl KeyUse<'_> {
    fn system_keys(&self) -> SystemKeys<'_> {
        SystemKeys {
            env: &self.config.system_keys_env,
            infisical: self.infisical,
            http: self.http,
            clock: self.clock,
            log: self.log,
        }
    }

    /// The key for `ask`, on behalf of `user` calling from `network`, with `facts` (a
    /// `credential.used` event) filled in as it is decided. One D1 read when a user key
    /// serves. A system key is counted against the user's and the network's limits on
    /// system-key use first, and refused (429) past them: the operator's keys are no
    /// open tap.
    pub async fn key_for(
        &self,
        user: &UserId,
        network: &str,
        ask: &Ask<'_>,
        facts: &mut Facts,
    ) -> Result<KeyInUse, Error> {
        record::asked(facts, ask);
        let serving: Vec<ProviderId> = providers::all()
            .map(|p| p.info())
            .filter(|i| i.capabilities.contains(&ask.capability))
            .map(|i| i.id)
            .collect();
        let (mut held, default) = self.store.holdings(user, ask.capability, &serving).await?;
        let default = default.map(|p| Default {
            credential_id: p.credential_id,
            model: p.model,
        });
        // A key that no longer decrypts is as dead as a refused one: decide again without it.
        for _ in 0..=held.len() {
            let now = self.clock.now();
            let decided = decide(
                now,
                self.config.fallback_policy,
                ask,
                &held,
                default.as_ref(),
            );
            let dead = match decided {
                Decision::Mismatch(why) => {
                    return Err(Error::Invalid(vec![FieldError::new("credential_id", why)]))
                }
                Decision::Nothing(missing) => return Err(no_credential(ask, &missing)),
                // Not the user's (or gone): as for any other object, indistinguishable.
                Decision::Unknown => {
                    return Err(Error::NotFound(Some("The user has no such credential.")))
                }
                Decision::System {
                    provider,
                    model,
                    reason,
                    missing,
                } => {
                    let Some((provider, found)) = self.system_key(provider, ask).await else {
                        return Err(no_credential(ask, &missing));
                    };
                    record::system_key(facts, ask, provider, reason, found.tier, &model);
                    Limits {
                        limiter: self.limiter,
                        on: self.config.rate_limits,
                    }
                    .count([
                        (LimitScope::SystemKeyAddress, network),
                        (LimitScope::SystemKeyUser, user.as_str()),
                    ])
                    .await?;
                    return Ok(KeyInUse {
                        source: Source::System,
                        provider,
                        model,
                        credential: None,
                        fallback_reason: Some(reason),
                        tier: Some(found.tier),
                        key: found.key,
                        then: Vec::new(),
                        skipped: Vec::new(),
                        params: self
                            .config
                            .system_key_params
                            .get(&provider)
                            .cloned()
                            .unwrap_or_default(),
                    });
                }
                Decision::User {
                    credential,
                    model,
                    then,
                    skipped,
                } => {
                    record::user_credential(facts, credential);
                    match self.open(credential, model, facts)? {
                        Some(mut key) => {
                            key.then = then.into_iter().cloned().collect();
                            key.skipped = skipped.into_iter().cloned().collect();
                            return Ok(key);
                        }
                        None => credential.id.clone(),
                    }
                }
            };
            if let Some(c) = held.iter_mut().find(|c| c.id == dead) {
                c.status = CredentialStatus::NeedsReconfiguration;
            }
        }
        Err(Error::internal("resolution did not settle"))
    }

    /// The key of the user's `credential`, to serve with `model`; `None` when it no longer
    /// decrypts (the note says so, never the key).
    fn open(
        &self,
        credential: &Credential,
        model: Option<String>,
        facts: &mut Facts,
    ) -> Result<Option<KeyInUse>, Error> {
        let Some(key) = open_stored(master_keys(self.config)?, credential, self.log) else {
            return Ok(None);
        };
        record::user_key(facts, &model);
        Ok(Some(KeyInUse {
            source: Source::User,
            provider: credential.provider,
            model,
            credential: Some(credential.clone()),
            fallback_reason: None,
            tier: None,
            key,
            params: credential.params.clone(),
            then: Vec::new(),
            skipped: Vec::new(),
        }))
    }

    /// The next of the user's keys to take over from `key`, which the provider refused
    /// before any byte of its answer was passed on: the first of `key.then` that opens,
    /// with the rest still to come after it. `facts` is the new attempt's event.
    pub fn next_key(
        &self,
        key: &mut KeyInUse,
        facts: &mut Facts,
    ) -> Result<Option<KeyInUse>, Error> {
        while !key.then.is_empty() {
            let credential = key.then.remove(0);
            record::user_credential(facts, &credential);
            let model = credential.model.clone();
            if let Some(mut next) = self.open(&credential, model, facts)? {
                next.then = std::mem::take(&mut key.then);
                // The cooling keys passed over still were.
                next.skipped = std::mem::take(&mut key.skipped);
                return Ok(Some(next));
            }
        }
        Ok(None)
    }

    /// The system key of `provider`, or of the first provider offering the capability that
    /// has one.
    async fn system_key(
        &self,
        provider: Option<ProviderId>,
        ask: &Ask<'_>,
    ) -> Option<(ProviderId, crate::system_keys::SystemKey)> {
        let keys = self.system_keys();
        match provider {
            Some(p) => keys.key(p).await.map(|k| (p, k)),
            None => {
                for p in providers::all().map(|p| p.info()) {
                    if p.capabilities.contains(&ask.capability) {
                        if let Some(k) = keys.key(p.id).await {
                            return Some((p.id, k));
                        }
                    }
                }
                None
            }
        }
    }
}

/// `no_credential`, naming the provider, why, and what to do.
fn no_credential(ask: &Ask<'_>, missing: &Missing<'_>) -> Error {
    let what = match missing.provider {
        Some(p) => format!("{p} key"),
        None => format!("key for {}", ask.capability),
    };
    let why = if !missing.skipped.is_empty() {
        let statuses: Vec<&str> = missing.skipped.iter().map(|c| c.status.as_str()).collect();
        format!("your stored key cannot be used ({})", statuses.join(", "))
    } else {
        "you have not added one".to_owned()
    };
    let system = if missing.system_allowed {
        "no system key is configured for it"
    } else {
        "a system key may not be used for this call"
    };
    Error::NoCredential(Box::new(NoCredential {
        provider: missing.provider,
        capability: ask.capability,
        skipped: missing
            .skipped
            .iter()
            .map(|c| (c.id.clone(), c.status))
            .collect(),
        detail: format!("No usable {what}: {why}, and {system}. Add a {what} in your settings."),
        cause: format!("no_credential ({why}; {system})"),
    }))
}
