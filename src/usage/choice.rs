//! Which key a call uses: the one rule, pure, shared by `/v1/resolve` and the proxy.
//!
//! Precedence: the user's preference for the capability → the user's usable credential
//! for the asked provider (or the exact `credential_id` asked for) → the system key, as
//! `FALLBACK_POLICY` allows and the request may narrow (`allow_fallback: false`) → nothing
//! (`no_credential`). A credential in a dead state is skipped, and when that is why
//! nothing was found, the answer says so. A system key is never used silently: the
//! decision carries why.
//!
//! A row no check has confirmed (`unverified`: an operator's import without a live check)
//! is never preferred over a key its user added or confirmed, whatever its age; it serves
//! only when the user holds nothing else usable there (or chose it as their default), as
//! the operator's import for that user: its calls go to the provider's own endpoint, where
//! the system key would have taken them anyway. One whose calls would go to an endpoint
//! the row names (`base_url`: Ollama) is never used at all until a check succeeds there:
//! the endpoint is the importer's choice, not the user's.

use crate::domain::{
    Capability, Credential, CredentialId, CredentialStatus, ProviderId, Timestamp,
};
use crate::providers;
use crate::system_keys::FallbackPolicy;

crate::wire_enum! {
    /// Why a call went to the system key.
    pub enum FallbackReason {
        /// The user holds no key for the provider.
        NoUserCredential = "no_user_credential",
        /// The user's keys for the provider are all dead (invalid, out of quota, unreadable).
        UserCredentialInvalid = "user_credential_invalid",
        /// `FALLBACK_POLICY = system_only`: user keys are not used at all.
        PolicySystemOnly = "policy_system_only",
    }
}

/// What a call asks for.
#[derive(Clone, Copy, Debug)]
pub struct Ask<'a> {
    pub capability: Capability,
    pub provider: Option<ProviderId>,
    pub credential_id: Option<&'a CredentialId>,
    /// `false` narrows any policy to user keys only.
    pub allow_fallback: bool,
}

/// The user's default for the capability: the credential and the model chosen.
#[derive(Clone, Debug)]
pub struct Default {
    pub credential_id: CredentialId,
    pub model: Option<String>,
}

/// What a call may use, as far as the user's own keys decide it.
#[derive(Debug)]
pub enum Decision<'c> {
    /// The user's credential, with the model to use; `then`, the user's other keys for
    /// the same provider that may take over (in order) when the provider refuses it;
    /// `skipped`, the keys passed over because they are cooling down while another serves.
    User {
        credential: &'c Credential,
        model: Option<String>,
        then: Vec<&'c Credential>,
        skipped: Vec<&'c Credential>,
    },
    /// The system key of `provider` (of the first provider with one that offers the
    /// capability, when `None`), if there is one; else nothing, for `missing`.
    System {
        provider: Option<ProviderId>,
        model: Option<String>,
        reason: FallbackReason,
        missing: Missing<'c>,
    },
    /// Nothing may be used.
    Nothing(Missing<'c>),
    /// The request contradicts itself (a credential of another provider or capability).
    Mismatch(&'static str),
    /// The exact credential asked for is not the user's (or no longer exists).
    Unknown,
}

/// Why nothing was found: what `no_credential` tells the user.
#[derive(Debug, Clone)]
pub struct Missing<'c> {
    pub provider: Option<ProviderId>,
    /// The user's credentials skipped because they cannot serve (dead, or not yet
    /// checked at an endpoint of the importer's choosing).
    pub skipped: Vec<&'c Credential>,
    /// Whether a system key was allowed (and so found missing) or not allowed at all.
    pub system_allowed: bool,
}

/// A credential that cannot serve a call until the user acts.
pub fn is_dead(status: CredentialStatus) -> bool {
    matches!(
        status,
        CredentialStatus::InvalidKey
            | CredentialStatus::QuotaExhausted
            | CredentialStatus::NeedsReconfiguration
    )
}

/// Whether a credential's calls go to an endpoint its row names (`base_url`) rather than
/// to the provider's fixed one.
fn names_its_endpoint(c: &Credential) -> bool {
    c.params.base_url.is_some()
        || providers::find(c.provider.as_str()).is_some_and(|p| p.info().has_field("base_url"))
}

/// A credential that may serve a call at `now`: not dead, and not an unconfirmed row at an
/// endpoint its importer chose. A key whose quota ran out is dead until its cooldown (the
/// quota's reset) has passed, then tried again; one without a cooldown waits for a check.
pub fn is_usable(c: &Credential, now: Timestamp) -> bool {
    let unconfirmed_elsewhere = c.status == CredentialStatus::Unverified && names_its_endpoint(c);
    let dead = match c.status {
        CredentialStatus::QuotaExhausted => c.cooldown.is_none_or(|d| d.holds(now)),
        status => is_dead(status),
    };
    !dead && !unconfirmed_elsewhere
}

/// Whether a usable key is cooling down at `now` (the provider rate-limited it): it is
/// tried only after its user's other keys.
fn is_cooling(c: &Credential, now: Timestamp) -> bool {
    c.cooldown.is_some_and(|d| d.holds(now))
}

/// How a usable credential ranks (lower first): a key that works, then one its user added
/// or confirmed that is only held up for now, then one no check has confirmed.
fn rank(status: CredentialStatus) -> u8 {
    match status {
        CredentialStatus::Valid => 0,
        CredentialStatus::Unverified => 2,
        _ => 1,
    }
}

/// The keys that take over, in order: those not cooling down, then the cooling ones (a
/// cooling key is still the user's, tried after all their others rather than not at all).
fn then_with<'c>(mut then: Vec<&'c Credential>, cooling: &[&'c Credential]) -> Vec<&'c Credential> {
    then.extend_from_slice(cooling);
    then
}

fn serves(provider: ProviderId, capability: Capability) -> bool {
    providers::find(provider.as_str()).is_some_and(|p| p.info().capabilities.contains(&capability))
}

/// Decides which key a call uses at `now`, from the user's `credentials` and `default` for
/// the capability, and which of the user's keys take over, in order, if the provider refuses
/// it. A `System` decision still needs the system key looked up.
pub fn decide<'c>(
    now: Timestamp,
    policy: FallbackPolicy,
    ask: &Ask<'_>,
    credentials: &'c [Credential],
    default: Option<&Default>,
) -> Decision<'c> {
    let user_keys = policy != FallbackPolicy::SystemOnly;
    let system_keys = ask.allow_fallback && policy != FallbackPolicy::UserOnly;
    let fallback = |provider: Option<ProviderId>, model, reason, skipped: Vec<&'c Credential>| {
        let missing = Missing {
            provider,
            skipped,
            system_allowed: system_keys,
        };
        if system_keys {
            Decision::System {
                provider,
                model,
                reason,
                missing,
            }
        } else {
            Decision::Nothing(missing)
        }
    };
    let model_of = |c: &Credential| match default {
        Some(d) if d.credential_id == c.id => d.model.clone().or_else(|| c.model.clone()),
        _ => c.model.clone(),
    };

    // One exact credential.
    if let Some(id) = ask.credential_id {
        let Some(c) = credentials.iter().find(|c| &c.id == id) else {
            return Decision::Unknown;
        };
        if ask.provider.is_some_and(|p| p != c.provider) {
            return Decision::Mismatch("names a credential of another provider");
        }
        if !serves(c.provider, ask.capability) {
            return Decision::Mismatch("names a credential whose provider lacks the capability");
        }
        let model = model_of(c);
        return if !user_keys {
            fallback(
                Some(c.provider),
                model,
                FallbackReason::PolicySystemOnly,
                Vec::new(),
            )
        } else if !is_usable(c, now) {
            fallback(
                Some(c.provider),
                model,
                FallbackReason::UserCredentialInvalid,
                vec![c],
            )
        } else {
            Decision::User {
                credential: c,
                model,
                then: Vec::new(),
                skipped: Vec::new(),
            }
        };
    }

    // The user's default counts when it is for the provider asked (or none was asked).
    let default_credential = default
        .and_then(|d| credentials.iter().find(|c| c.id == d.credential_id))
        .filter(|c| ask.provider.is_none_or(|p| p == c.provider));
    let default_model = default_credential.and_then(model_of);
    if !user_keys {
        let provider = ask.provider.or(default_credential.map(|c| c.provider));
        return fallback(
            provider,
            default_model,
            FallbackReason::PolicySystemOnly,
            Vec::new(),
        );
    }
    // A dead default does not pin the provider: the user's other keys come first. An
    // unconfirmed one the user chose as default is theirs to choose (unless its endpoint
    // is the importer's).
    let live_default = default_credential.filter(|c| is_usable(c, now));
    let provider = ask.provider.or(live_default.map(|c| c.provider));
    let candidates: Vec<&Credential> = credentials
        .iter()
        .filter(|c| match provider {
            Some(p) => c.provider == p,
            None => serves(c.provider, ask.capability),
        })
        .collect();
    // The order keys are tried in: one not cooling down first; then the default; then,
    // by the user's `priority`, a valid key, any other usable one its user added or
    // confirmed, one no check has confirmed (never ahead of the user's own, whatever its
    // priority); newest first within each (the stable sort keeps the store's order).
    let is_default = |c: &Credential| live_default.is_some_and(|d| d.id == c.id);
    let mut pool: Vec<&Credential> = candidates
        .iter()
        .copied()
        .filter(|c| is_usable(c, now))
        .collect();
    let order = |c: &&Credential| {
        (
            is_cooling(c, now),
            !is_default(c),
            c.status == CredentialStatus::Unverified,
            c.priority,
            rank(c.status),
        )
    };
    crate::small_sort::sort_by(&mut pool, |a, b| order(a).cmp(&order(b)));
    // No provider asked: the dead default's provider still comes first, then any other.
    let chosen = pool
        .iter()
        .copied()
        .find(|c| default_credential.is_some_and(|d| d.provider == c.provider))
        .or_else(|| pool.first().copied());
    if let Some(c) = chosen {
        let (skipped, then) = pool
            .iter()
            .copied()
            .filter(|o| o.provider == c.provider && o.id != c.id)
            .partition(|o| is_cooling(o, now) && !is_cooling(c, now));
        return Decision::User {
            credential: c,
            model: model_of(c),
            then: then_with(then, &skipped),
            skipped,
        };
    }
    // Nothing of the user's can serve: the system key of the provider asked for (or of
    // the dead default's; else of the first provider with the capability that has one).
    let provider = provider.or(default_credential.map(|c| c.provider));
    let reason = if candidates.is_empty() {
        FallbackReason::NoUserCredential
    } else {
        FallbackReason::UserCredentialInvalid
    };
    fallback(provider, default_model, reason, candidates)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CredentialParams, UserId};

    fn t0() -> Timestamp {
        Timestamp::from_millis(1_800_000_000_000)
    }
    use FallbackPolicy::{SystemOnly, UserOnly, UserThenSystem};

    fn credential(n: u8, provider: &str, status: CredentialStatus) -> Credential {
        let now = Timestamp::from_millis(1_800_000_000_000);
        Credential {
            id: CredentialId::from_random([n; 16]),
            user_id: UserId::parse("u_1").unwrap(),
            provider: providers::find(provider).unwrap().info().id,
            label: None,
            key_hint: None,
            secret: None,
            fingerprint: None,
            params: CredentialParams::default(),
            model: Some(format!("model-{n}")),
            status,
            status_detail: None,
            warnings: Vec::new(),
            quota: None,
            models: None,
            models_fetched_at: None,
            consecutive_failures: 0,
            dead_checks: 0,
            last_validated_at: None,
            priority: 0,
            cooldown: None,
            budget: None,
            last_used_at: None,
            revalidation_queued_at: None,
            import_batch: None,
            created_at: now,
            updated_at: now,
            version: 1,
        }
    }

    fn id(p: &str) -> ProviderId {
        providers::find(p).unwrap().info().id
    }

    /// What the user holds in one row of the table.
    #[derive(Clone, Copy, Debug)]
    enum Holding {
        /// A default (credential 1, model "chosen") and a second usable key (2).
        Preference,
        /// One usable key (2), no default.
        UserKey,
        /// One dead key (3), and a default pointing at it.
        DeadUserKey,
        /// Nothing of the user's.
        Nothing,
    }

    /// The outcome a row expects: which credential, or the system key and why, or nothing.
    #[derive(Debug, PartialEq)]
    enum Got {
        User(u8, Option<String>),
        System(Option<&'static str>, FallbackReason),
        Nothing {
            skipped: usize,
            system_allowed: bool,
        },
    }

    fn run(policy: FallbackPolicy, holding: Holding, allow: bool, system: bool) -> Got {
        let statuses = [
            (1, CredentialStatus::Valid),
            (2, CredentialStatus::RateLimited),
            (3, CredentialStatus::InvalidKey),
        ];
        let (creds, default): (Vec<Credential>, Option<Default>) = match holding {
            Holding::Preference => (
                statuses[..2]
                    .iter()
                    .map(|(n, s)| credential(*n, "elevenlabs", *s))
                    .collect(),
                Some(Default {
                    credential_id: CredentialId::from_random([1; 16]),
                    model: Some("chosen".into()),
                }),
            ),
            Holding::UserKey => (vec![credential(2, "elevenlabs", statuses[1].1)], None),
            Holding::DeadUserKey => (
                vec![credential(3, "elevenlabs", statuses[2].1)],
                Some(Default {
                    credential_id: CredentialId::from_random([3; 16]),
                    model: None,
                }),
            ),
            Holding::Nothing => (Vec::new(), None),
        };
        let ask = Ask {
            capability: Capability::Tts,
            provider: Some(id("elevenlabs")),
            credential_id: None,
            allow_fallback: allow,
        };
        match decide(t0(), policy, &ask, &creds, default.as_ref()) {
            Decision::User {
                credential,
                model: m,
                ..
            } => {
                let n = (1..=3)
                    .find(|n| credential.id == CredentialId::from_random([*n; 16]))
                    .unwrap();
                Got::User(n, m)
            }
            Decision::System {
                provider,
                reason,
                missing,
                ..
            } => {
                assert_eq!(provider, Some(id("elevenlabs")));
                if system {
                    Got::System(provider.map(|p| p.as_str()), reason)
                } else {
                    Got::Nothing {
                        skipped: missing.skipped.len(),
                        system_allowed: missing.system_allowed,
                    }
                }
            }
            Decision::Nothing(m) => Got::Nothing {
                skipped: m.skipped.len(),
                system_allowed: m.system_allowed,
            },
            Decision::Mismatch(why) => panic!("mismatch: {why}"),
            Decision::Unknown => panic!("unknown credential"),
        }
    }

    #[test]
    fn every_policy_holding_and_fallback_choice_resolves_as_the_table_says() {
        use FallbackReason::*;
        use Holding::*;
        let chosen = || Got::User(1, Some("chosen".into()));
        let second = || Got::User(2, Some("model-2".into()));
        let sys = |r| Got::System(Some("elevenlabs"), r);
        let none = |skipped, system_allowed| Got::Nothing {
            skipped,
            system_allowed,
        };
        // (policy, holding, allow_fallback, system key exists, expected)
        let table = [
            (UserThenSystem, Preference, true, true, chosen()),
            (UserThenSystem, Preference, false, true, chosen()),
            (UserThenSystem, UserKey, true, true, second()),
            (UserThenSystem, UserKey, false, false, second()),
            (
                UserThenSystem,
                DeadUserKey,
                true,
                true,
                sys(UserCredentialInvalid),
            ),
            (UserThenSystem, DeadUserKey, true, false, none(1, true)),
            (UserThenSystem, DeadUserKey, false, true, none(1, false)),
            (UserThenSystem, Nothing, true, true, sys(NoUserCredential)),
            (UserThenSystem, Nothing, true, false, none(0, true)),
            (UserThenSystem, Nothing, false, true, none(0, false)),
            (UserOnly, Preference, true, true, chosen()),
            (UserOnly, UserKey, true, true, second()),
            (UserOnly, DeadUserKey, true, true, none(1, false)),
            (UserOnly, DeadUserKey, false, true, none(1, false)),
            (UserOnly, Nothing, true, true, none(0, false)),
            (UserOnly, Nothing, false, false, none(0, false)),
            (SystemOnly, Preference, true, true, sys(PolicySystemOnly)),
            (SystemOnly, Preference, false, true, none(0, false)),
            (SystemOnly, UserKey, true, true, sys(PolicySystemOnly)),
            (SystemOnly, UserKey, true, false, none(0, true)),
            (SystemOnly, DeadUserKey, true, true, sys(PolicySystemOnly)),
            (SystemOnly, DeadUserKey, false, true, none(0, false)),
            (SystemOnly, Nothing, true, true, sys(PolicySystemOnly)),
            (SystemOnly, Nothing, true, false, none(0, true)),
            (SystemOnly, Nothing, false, false, none(0, false)),
        ];
        for (policy, holding, allow, system, want) in table {
            assert_eq!(
                run(policy, holding, allow, system),
                want,
                "{policy:?} {holding:?} allow_fallback={allow} system={system}"
            );
        }
    }

    #[test]
    fn the_default_counts_only_for_its_own_provider_and_a_dead_default_gives_way() {
        let creds = vec![
            credential(1, "openai", CredentialStatus::Valid),
            credential(2, "anthropic", CredentialStatus::QuotaExhausted),
            credential(3, "anthropic", CredentialStatus::Unreachable),
        ];
        let default = Default {
            credential_id: creds[1].id.clone(),
            model: Some("claude-x".into()),
        };
        let mut ask = Ask {
            capability: Capability::Llm,
            provider: None,
            credential_id: None,
            allow_fallback: true,
        };
        // The default's provider is chosen; its dead key gives way to a usable one.
        let Decision::User { credential, .. } =
            decide(t0(), UserThenSystem, &ask, &creds, Some(&default))
        else {
            panic!()
        };
        assert_eq!(credential.id, creds[2].id);
        // Asked for another provider: the default does not count.
        ask.provider = Some(id("openai"));
        let Decision::User {
            credential, model, ..
        } = decide(t0(), UserThenSystem, &ask, &creds, Some(&default))
        else {
            panic!()
        };
        assert_eq!(
            (&credential.id, model.as_deref()),
            (&creds[0].id, Some("model-1"))
        );
        // A dead default does not pin its provider: with none of its own left, the
        // user's key of another provider serves.
        let dead_default = Default {
            credential_id: creds[1].id.clone(),
            model: None,
        };
        let some_live = [creds[0].clone(), creds[1].clone()];
        ask.provider = None;
        let Decision::User { credential, .. } =
            decide(t0(), UserThenSystem, &ask, &some_live, Some(&dead_default))
        else {
            panic!()
        };
        assert_eq!(credential.id, creds[0].id);
        // ... and when nothing of the user's lives, the default's provider falls back.
        let all_dead = [creds[1].clone()];
        assert!(matches!(
            decide(t0(), UserThenSystem, &ask, &all_dead, Some(&dead_default)),
            Decision::System { provider: Some(p), reason: FallbackReason::UserCredentialInvalid, .. }
                if p.as_str() == "anthropic"
        ));
        // No provider and no default: a valid key of any provider with the capability.
        ask.provider = None;
        let Decision::User { credential, .. } = decide(t0(), UserThenSystem, &ask, &creds, None)
        else {
            panic!()
        };
        assert_eq!(credential.id, creds[0].id);
    }

    #[test]
    fn an_exact_credential_is_used_skipped_or_refused() {
        let creds = vec![
            credential(1, "openai", CredentialStatus::Valid),
            credential(2, "openai", CredentialStatus::InvalidKey),
            credential(3, "elevenlabs", CredentialStatus::Valid),
        ];
        let ask = |id, provider: Option<&str>| Ask {
            capability: Capability::Llm,
            provider: provider.map(id_of),
            credential_id: Some(id),
            allow_fallback: true,
        };
        fn id_of(p: &str) -> ProviderId {
            providers::find(p).unwrap().info().id
        }
        assert!(matches!(
            decide(t0(), UserThenSystem, &ask(&creds[0].id, None), &creds, None),
            Decision::User { credential, .. } if credential.id == creds[0].id
        ));
        assert!(matches!(
            decide(t0(), UserThenSystem, &ask(&creds[1].id, None), &creds, None),
            Decision::System { reason: FallbackReason::UserCredentialInvalid, provider: Some(p), .. } if p.as_str() == "openai"
        ));
        assert!(matches!(
            decide(t0(), UserOnly, &ask(&creds[1].id, None), &creds, None),
            Decision::Nothing(Missing { ref skipped, .. }) if skipped.len() == 1
        ));
        assert!(matches!(
            decide(
                t0(),
                UserThenSystem,
                &ask(&creds[0].id, Some("anthropic")),
                &creds,
                None
            ),
            Decision::Mismatch(_)
        ));
        assert!(matches!(
            decide(t0(), UserThenSystem, &ask(&creds[2].id, None), &creds, None),
            Decision::Mismatch(_)
        ));
        // Another user's (or a deleted) credential is simply not there.
        let gone = CredentialId::from_random([9; 16]);
        assert!(matches!(
            decide(
                t0(),
                UserThenSystem,
                &ask(&gone, Some("openai")),
                &creds,
                None
            ),
            Decision::Unknown
        ));
    }

    /// One row of the unverified table: what the user holds (newest first, as the store
    /// lists them), their default, what is asked, and which credential serves (or none).
    struct Case {
        what: &'static str,
        held: Vec<(u8, &'static str, CredentialStatus)>,
        default: Option<u8>,
        provider: Option<&'static str>,
        exact: Option<u8>,
        capability: Capability,
        serves: Option<u8>,
    }

    #[test]
    fn an_unverified_row_never_outranks_its_users_own_key_and_never_calls_an_importers_endpoint() {
        use CredentialStatus::{InvalidKey, RateLimited, Unreachable, Unverified, Valid};
        let llm = Capability::Llm;
        let case = |what, held, default, provider, exact, serves| Case {
            what,
            held,
            default,
            provider,
            exact,
            capability: llm,
            serves,
        };
        let table = [
            // Rows 1 are imported (and newer); rows 2 the user's own.
            case(
                "newer import vs the user's valid key",
                vec![(1, "openai", Unverified), (2, "openai", Valid)],
                None,
                Some("openai"),
                None,
                Some(2),
            ),
            case(
                "newer import vs the user's key held up by the provider",
                vec![(1, "openai", Unverified), (2, "openai", RateLimited)],
                None,
                Some("openai"),
                None,
                Some(2),
            ),
            case(
                "newer import vs the user's unreachable key",
                vec![(1, "openai", Unverified), (2, "openai", Unreachable)],
                None,
                Some("openai"),
                None,
                Some(2),
            ),
            case(
                "no provider asked: the user's key of another provider first",
                vec![(1, "openai", Unverified), (2, "anthropic", Valid)],
                None,
                None,
                None,
                Some(2),
            ),
            case(
                "the only key, at the provider's own endpoint",
                vec![(1, "openai", Unverified)],
                None,
                Some("openai"),
                None,
                Some(1),
            ),
            case(
                "beside the user's dead key",
                vec![(1, "openai", Unverified), (2, "openai", InvalidKey)],
                None,
                Some("openai"),
                None,
                Some(1),
            ),
            case(
                "the user chose it as their default",
                vec![(1, "openai", Unverified), (2, "openai", Valid)],
                Some(1),
                None,
                None,
                Some(1),
            ),
            case(
                "asked for exactly",
                vec![(1, "openai", Unverified), (2, "openai", Valid)],
                None,
                None,
                Some(1),
                Some(1),
            ),
            // Ollama: the endpoint is the row's base_url, the importer's choice.
            case(
                "Ollama, the only key",
                vec![(1, "ollama", Unverified)],
                None,
                Some("ollama"),
                None,
                None,
            ),
            case(
                "Ollama, asked for exactly",
                vec![(1, "ollama", Unverified)],
                None,
                None,
                Some(1),
                None,
            ),
            case(
                "Ollama, the user's default",
                vec![(1, "ollama", Unverified)],
                Some(1),
                None,
                None,
                None,
            ),
            case(
                "Ollama, no provider asked",
                vec![(1, "ollama", Unverified), (2, "openai", RateLimited)],
                None,
                None,
                None,
                Some(2),
            ),
            case(
                "Ollama once checked",
                vec![(1, "ollama", Valid)],
                None,
                Some("ollama"),
                None,
                Some(1),
            ),
        ];
        for c in table {
            let mut held: Vec<Credential> = c
                .held
                .iter()
                .map(|(n, p, s)| credential(*n, p, *s))
                .collect();
            for h in held.iter_mut().filter(|h| h.provider.as_str() == "ollama") {
                h.params.base_url = Some("https://ollama.importer.example".into());
            }
            let id_of = |n: u8| CredentialId::from_random([n; 16]);
            let exact = c.exact.map(id_of);
            let ask = Ask {
                capability: c.capability,
                provider: c.provider.map(id),
                credential_id: exact.as_ref(),
                allow_fallback: true,
            };
            let default = c.default.map(|n| Default {
                credential_id: id_of(n),
                model: None,
            });
            let got = match decide(t0(), UserThenSystem, &ask, &held, default.as_ref()) {
                Decision::User { credential, .. } => Some(
                    c.held
                        .iter()
                        .find(|(n, ..)| credential.id == id_of(*n))
                        .unwrap()
                        .0,
                ),
                Decision::System {
                    reason, missing, ..
                } => {
                    // Not served: the answer names the row it could not use.
                    assert_eq!(reason, FallbackReason::UserCredentialInvalid, "{}", c.what);
                    assert!(!missing.skipped.is_empty(), "{}", c.what);
                    None
                }
                other => panic!("{}: {other:?}", c.what),
            };
            assert_eq!(got, c.serves, "{}", c.what);
        }
    }
}
