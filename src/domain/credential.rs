//! A stored credential as the vault knows it, and the pieces the API shows of it.

use serde::{Deserialize, Deserializer, Serialize};

use super::Sealed;
use super::{BatchId, Capability, CredentialId, ProviderId, Timestamp, UserId};
use crate::json_read;

crate::wire_enum! {
    /// Where a credential stands after its last check.
    pub enum CredentialStatus {
        Valid = "valid",
        InvalidKey = "invalid_key",
        InsufficientScope = "insufficient_scope",
        QuotaExhausted = "quota_exhausted",
        RateLimited = "rate_limited",
        Unreachable = "unreachable",
        ProviderError = "provider_error",
        /// The stored ciphertext cannot be decrypted (e.g. its master key version is gone).
        NeedsReconfiguration = "needs_reconfiguration",
        /// Not yet checked: stored by an operator's import without a live check. Never
        /// preferred over a key its user added or confirmed, and never called at an
        /// endpoint the importer chose (`base_url`), until a check succeeds.
        Unverified = "unverified",
    }
}

/// Usage against a limit, normalised across providers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quota {
    pub used: Option<f64>,
    pub limit: Option<f64>,
    /// What is left, where the provider reports a balance rather than usage.
    #[serde(default)]
    pub remaining: Option<f64>,
    pub unit: String,
    pub resets_at: Option<String>,
}

/// One model (or voice) a provider offers to this key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub id: String,
    pub name: String,
    #[serde(deserialize_with = "known_capabilities")]
    pub capabilities: Vec<Capability>,
}

fn known_capabilities<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Capability>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    Ok(raw.iter().filter_map(|c| Capability::parse(c)).collect())
}

// The stored columns are read back by these, not by the derived `Deserialize` (kept for
// the tests' and the API's other uses): the same rules (json_read), without a serde
// deserializer per type in the wasm. Tests below hold them to the derive.

impl Quota {
    /// A stored `quota` column, as the derived `Deserialize` reads it.
    pub fn from_json(body: &[u8]) -> Option<Self> {
        let o = json_read::object(body)?;
        Some(Self {
            used: json_read::opt_number(&o, "used")?,
            limit: json_read::opt_number(&o, "limit")?,
            remaining: json_read::opt_number(&o, "remaining")?,
            unit: json_read::text(&o, "unit")?,
            resets_at: json_read::opt_text(&o, "resets_at")?,
        })
    }
}

impl Model {
    /// A stored `models` column (a list), as the derived `Deserialize` reads it: every
    /// capability a string, the ones this vault does not know left out.
    pub fn list_from_json(body: &[u8]) -> Option<Vec<Self>> {
        json_read::items(&json_read::array(body)?, |m| {
            let capabilities = json_read::list(m, "capabilities")?
                .iter()
                .map(serde_json::Value::as_str)
                .collect::<Option<Vec<_>>>()?;
            Some(Self {
                id: json_read::text(m, "id")?,
                name: json_read::text(m, "name")?,
                capabilities: capabilities
                    .into_iter()
                    .filter_map(Capability::parse)
                    .collect(),
            })
        })
    }
}

impl CredentialParams {
    /// A stored `params` column, as the derived `Deserialize` reads it.
    pub fn from_json(body: &[u8]) -> Option<Self> {
        let o = json_read::object(body)?;
        Some(Self {
            region: json_read::opt_text(&o, "region")?,
            base_url: json_read::opt_text(&o, "base_url")?,
        })
    }
}

/// A stored list of strings (the `warnings` column).
pub fn texts_from_json(body: &[u8]) -> Option<Vec<String>> {
    json_read::array(body)?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// Non-secret connection parameters some providers need.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CredentialParams {
    pub region: Option<String>,
    pub base_url: Option<String>,
}

crate::wire_enum! {
    /// Why a key is cooling down.
    pub enum CooldownReason {
        /// The provider answered 429: the key waits out its `Retry-After` (bounded).
        RateLimited = "rate_limited",
        /// The provider said the key's quota is spent: it waits for the quota to reset.
        QuotaExhausted = "quota_exhausted",
    }
}

/// A key the provider refused for a while: until `until` it is tried only after its
/// user's other keys, then as before, without anyone touching it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cooldown {
    pub until: Timestamp,
    pub reason: CooldownReason,
}

impl Cooldown {
    /// Whether it still holds at `now`.
    pub fn holds(&self, now: Timestamp) -> bool {
        now < self.until
    }
}

/// A credential row: everything the vault stores about one key.
#[derive(Clone, Debug)]
pub struct Credential {
    pub id: CredentialId,
    pub user_id: UserId,
    pub provider: ProviderId,
    pub label: Option<String>,
    pub key_hint: Option<String>,
    pub secret: Option<Sealed>,
    pub fingerprint: Option<String>,
    pub params: CredentialParams,
    pub model: Option<String>,
    pub status: CredentialStatus,
    pub status_detail: Option<String>,
    pub warnings: Vec<String>,
    pub quota: Option<Quota>,
    pub models: Option<Vec<Model>>,
    pub models_fetched_at: Option<Timestamp>,
    pub consecutive_failures: u32,
    /// Scheduled checks in a row that found the key dead (`invalid_key`,
    /// `needs_reconfiguration`): the sweep spaces its re-checks out by it and stops after
    /// `jobs::DEAD_CHECKS_MAX`. Any success, and any act of its user (a re-check, a
    /// rotation, any change), sets it back to 0.
    pub dead_checks: u32,
    pub last_validated_at: Option<Timestamp>,
    /// Its place among its user's keys for one provider (lower first), after the
    /// capability's default.
    pub priority: i64,
    /// Set while the provider refuses it for a while (rate, quota).
    pub cooldown: Option<Cooldown>,
    /// Its user's cap on what it may spend in a period.
    pub budget: Option<super::Budget>,
    /// When the key was last used (resolve, proxy); set by the audit chainer.
    pub last_used_at: Option<Timestamp>,
    /// When a revalidation sweep last claimed it: the claim its queued check must carry.
    pub revalidation_queued_at: Option<Timestamp>,
    /// The import batch that created it, while no user has changed it: a rollback of the
    /// batch removes it. Any change by its user takes it out of the batch.
    pub import_batch: Option<BatchId>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The row version: every write moves it on by one, and is conditional on the version
    /// it read, so a write never overwrites a change it did not see.
    pub version: u64,
}

/// What a row's key columns (`key_version`, `nonce`, `ciphertext`) hold.
#[derive(Clone, Debug, PartialEq)]
pub enum KeyColumns {
    /// None of them: a keyless endpoint (a local Ollama).
    Keyless,
    Sealed(Sealed),
    /// Something that is no longer an envelope (a tampered or half-written row).
    Unreadable,
}

impl KeyColumns {
    pub fn read(key_version: Option<u32>, nonce: Option<&str>, ciphertext: Option<&str>) -> Self {
        match (key_version, nonce, ciphertext) {
            (None, None, None) => Self::Keyless,
            (Some(v), Some(n), Some(c)) => {
                Sealed::from_stored(v, n, c).map_or(Self::Unreadable, Self::Sealed)
            }
            _ => Self::Unreadable,
        }
    }

    /// The status a row shows: one whose key can no longer be read needs reconfiguration,
    /// whatever its last check said (listing it still works).
    pub fn shown_status(&self, stored: CredentialStatus) -> CredentialStatus {
        match self {
            Self::Unreadable => CredentialStatus::NeedsReconfiguration,
            _ => stored,
        }
    }

    pub fn into_sealed(self) -> Option<Sealed> {
        match self {
            Self::Sealed(s) => Some(s),
            _ => None,
        }
    }
}

/// The user's default credential (and model) for one capability.
#[derive(Clone, Debug, PartialEq)]
pub struct Preference {
    pub capability: Capability,
    pub credential_id: CredentialId,
    pub provider: ProviderId,
    pub model: Option<String>,
}

/// The only part of a key the API ever shows: `…` and its last 4 characters.
///
/// Prefixes (`sk-`, `AIza`, `sk_`) are shared by every key of a provider and tell the user
/// nothing; more than 4 characters would start to reveal the key. A key shorter than 12
/// characters shows no characters at all, since 4 of them would be a third of it.
pub fn key_hint(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 12 {
        return "…".to_owned();
    }
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn stored_columns_are_read_as_the_derive_reads_them() {
        let quotas = [
            r#"{"used":1,"limit":10.5,"remaining":null,"unit":"usd","resets_at":"2026-01-01T00:00:00Z"}"#,
            r#"{"used":null,"limit":null,"unit":"characters","resets_at":null}"#,
            r#"{"unit":"usd"}"#,
            r#"{"used":"1","unit":"usd"}"#,
            r#"{"used":1}"#,
            r#"{"unit":"usd","resets_at":5}"#,
            r#"[]"#,
            r#"not json"#,
        ];
        for q in quotas {
            let derived = serde_json::from_str::<super::Quota>(q).ok();
            assert_eq!(super::Quota::from_json(q.as_bytes()), derived, "{q}");
        }
        let models = [
            r#"[{"id":"a","name":"A","capabilities":["llm","tts"]}]"#,
            r#"[{"id":"a","name":"A","capabilities":["llm","telepathy"]},{"id":"b","name":"B","capabilities":[]}]"#,
            r#"[{"id":"a","name":"A"}]"#,
            r#"[{"id":"a","name":"A","capabilities":null}]"#,
            r#"[{"id":"a","name":"A","capabilities":["llm",3]}]"#,
            r#"[{"id":"a","capabilities":[]}]"#,
            r#"[{"id":"a","name":"A","capabilities":[]},7]"#,
            r#"[]"#,
            r#"{}"#,
        ];
        for m in models {
            let derived = serde_json::from_str::<Vec<super::Model>>(m).ok();
            assert_eq!(super::Model::list_from_json(m.as_bytes()), derived, "{m}");
        }
        let params = [
            r#"{"region":"eastus","base_url":null}"#,
            r#"{}"#,
            r#"{"region":1}"#,
            r#"{"base_url":"https://x.example","other":true}"#,
            r#"null"#,
        ];
        for p in params {
            let derived = serde_json::from_str::<super::CredentialParams>(p).ok();
            assert_eq!(
                super::CredentialParams::from_json(p.as_bytes()),
                derived,
                "{p}"
            );
        }
        for w in [r#"["a","b"]"#, r#"[]"#, r#"["a",1]"#, r#"{}"#, r#"null"#] {
            let derived = serde_json::from_str::<Vec<String>>(w).ok();
            assert_eq!(super::texts_from_json(w.as_bytes()), derived, "{w}");
        }
    }

    use super::*;

    #[test]
    fn key_hint_shows_only_the_last_four_characters() {
        assert_eq!(key_hint("sk_0123456789abcdef9f2a"), "…9f2a");
        assert_eq!(key_hint("AIzaSyA-0123456789abcdefghijklmnopqrstu"), "…rstu");
    }

    #[test]
    fn short_keys_show_nothing() {
        assert_eq!(key_hint("abcdefghijk"), "…");
        assert_eq!(key_hint(""), "…");
    }

    #[test]
    fn statuses_round_trip_through_their_wire_names() {
        for s in CredentialStatus::ALL {
            assert_eq!(CredentialStatus::parse(s.as_str()), Some(*s));
        }
        assert_eq!(CredentialStatus::parse("VALID"), None);
    }

    #[test]
    fn key_columns_that_no_longer_make_an_envelope_need_reconfiguration() {
        use base64::{engine::general_purpose::STANDARD, Engine as _};
        let nonce = STANDARD.encode([1u8; 12]);
        let ct = STANDARD.encode([2u8; 40]);
        let valid = CredentialStatus::Valid;
        let sealed = KeyColumns::read(Some(1), Some(&nonce), Some(&ct));
        assert!(matches!(sealed, KeyColumns::Sealed(_)));
        assert_eq!(sealed.shown_status(valid), valid);
        assert_eq!(KeyColumns::read(None, None, None), KeyColumns::Keyless);
        assert_eq!(KeyColumns::Keyless.shown_status(valid), valid);
        for broken in [
            KeyColumns::read(Some(1), Some("not base64!"), Some(&ct)),
            KeyColumns::read(Some(1), Some(&STANDARD.encode([1u8; 11])), Some(&ct)),
            KeyColumns::read(Some(0), Some(&nonce), Some(&ct)),
            KeyColumns::read(None, None, Some(&ct)),
            KeyColumns::read(Some(1), None, None),
        ] {
            assert_eq!(broken, KeyColumns::Unreadable);
            assert_eq!(
                broken.shown_status(valid),
                CredentialStatus::NeedsReconfiguration
            );
        }
    }

    #[test]
    fn cached_models_drop_capabilities_this_build_does_not_know() {
        let m: Model =
            serde_json::from_str(r#"{"id":"x","name":"X","capabilities":["tts","video"]}"#)
                .unwrap();
        assert_eq!(m.capabilities, vec![Capability::Tts]);
    }
}
