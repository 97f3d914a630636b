//! The master key ring, from the `MASTER_KEYS`/`MASTER_KEY_ACTIVE` (or `MASTER_KEY`) secrets:
//! the keys section of the configuration. Kept apart from the other sections' problems:
//! without it the service still answers health and listings.

use std::collections::BTreeMap;

use base64::{engine::general_purpose::STANDARD, Engine as _};
use zeroize::Zeroizing;

use crate::domain::{KeyVersion, Vars};
use crate::json_read;

/// Why the master keys cannot be used. Messages name variables, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MasterKeyError {
    #[error("no master key is configured (set MASTER_KEYS and MASTER_KEY_ACTIVE, or MASTER_KEY)")]
    Missing,
    #[error("MASTER_KEYS must be a JSON object mapping positive integer versions to base64 keys")]
    MalformedKeyRing,
    #[error("master key version {0} is not 32 bytes of standard base64")]
    BadKey(String),
    #[error("MASTER_KEY_ACTIVE must name a version present in MASTER_KEYS")]
    BadActive,
}

/// All configured master keys and the version used for new writes.
pub struct MasterKeys {
    keys: BTreeMap<KeyVersion, Zeroizing<[u8; 32]>>,
    active: KeyVersion,
}

impl MasterKeys {
    /// The ring the Worker's secrets configure.
    pub fn from_vars(vars: &Vars) -> Result<Self, MasterKeyError> {
        Self::from_config(
            vars.get("MASTER_KEYS").as_deref(),
            vars.get("MASTER_KEY_ACTIVE").as_deref(),
            vars.get("MASTER_KEY").as_deref(),
        )
    }

    /// `keys_json` is `MASTER_KEYS`, `active` is `MASTER_KEY_ACTIVE`, `single` is
    /// `MASTER_KEY` (accepted as version 1 when `MASTER_KEYS` is absent).
    pub fn from_config(
        keys_json: Option<&str>,
        active: Option<&str>,
        single: Option<&str>,
    ) -> Result<Self, MasterKeyError> {
        fn blank(v: Option<&str>) -> Option<&str> {
            v.map(str::trim).filter(|v| !v.is_empty())
        }
        match (blank(keys_json), blank(single)) {
            (Some(json), _) => Self::from_ring(json, blank(active)),
            (None, Some(one)) => {
                let v1 = KeyVersion::FIRST;
                let key = decode_key(one).ok_or_else(|| MasterKeyError::BadKey("1".into()))?;
                if blank(active).is_some_and(|a| a != "1") {
                    return Err(MasterKeyError::BadActive);
                }
                Ok(Self {
                    keys: BTreeMap::from([(v1, key)]),
                    active: v1,
                })
            }
            (None, None) => Err(MasterKeyError::Missing),
        }
    }

    fn from_ring(json: &str, active: Option<&str>) -> Result<Self, MasterKeyError> {
        // An object of strings, all checked before any is used (read as a map of strings
        // would be: the last of a repeated member counts).
        let ring = json_read::object(json.as_bytes()).ok_or(MasterKeyError::MalformedKeyRing)?;
        let raw = ring
            .iter()
            .map(|(version, b64)| Some((version, b64.as_str()?)))
            .collect::<Option<Vec<_>>>()
            .ok_or(MasterKeyError::MalformedKeyRing)?;
        let mut keys = BTreeMap::new();
        for (version, b64) in raw {
            let v = version
                .parse::<u32>()
                .ok()
                .and_then(KeyVersion::new)
                .ok_or(MasterKeyError::MalformedKeyRing)?;
            let key = decode_key(b64).ok_or_else(|| MasterKeyError::BadKey(v.get().to_string()))?;
            keys.insert(v, key);
        }
        let active = match active {
            Some(a) => a.parse::<u32>().ok().and_then(KeyVersion::new),
            // With a single version in the ring there is nothing to choose.
            None if keys.len() == 1 => keys.keys().next().copied(),
            None => None,
        }
        .filter(|v| keys.contains_key(v))
        .ok_or(MasterKeyError::BadActive)?;
        Ok(Self { keys, active })
    }

    pub fn active(&self) -> KeyVersion {
        self.active
    }

    pub fn versions(&self) -> impl Iterator<Item = KeyVersion> + '_ {
        self.keys.keys().copied()
    }

    pub(super) fn key(&self, v: KeyVersion) -> Option<&[u8; 32]> {
        self.keys.get(&v).map(|k| &**k)
    }

    #[cfg(test)]
    pub fn for_tests(pairs: &[(u32, [u8; 32])], active: u32) -> Self {
        let keys = pairs
            .iter()
            .map(|(v, k)| {
                (
                    KeyVersion::new(*v).expect("a test version"),
                    Zeroizing::new(*k),
                )
            })
            .collect();
        Self {
            keys,
            active: KeyVersion::new(active).expect("a test version"),
        }
    }
}

fn decode_key(b64: &str) -> Option<Zeroizing<[u8; 32]>> {
    let bytes = Zeroizing::new(STANDARD.decode(b64.trim()).ok()?);
    let arr: [u8; 32] = bytes.as_slice().try_into().ok()?;
    Some(Zeroizing::new(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const K2: &str = "Hx4dHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=";

    #[test]
    fn single_master_key_is_version_one() {
        let keys = MasterKeys::from_config(None, None, Some(K1)).unwrap();
        assert_eq!(keys.active().get(), 1);
    }

    #[test]
    fn key_ring_with_active_version() {
        let json = format!(r#"{{"1":"{K1}","2":"{K2}"}}"#);
        let keys = MasterKeys::from_config(Some(&json), Some("2"), None).unwrap();
        assert_eq!(keys.active().get(), 2);
        assert_eq!(keys.versions().count(), 2);
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn bad_configurations_are_errors_that_name_no_value() {
        let two = format!(r#"{{"1":"{K1}","2":"{K2}"}}"#);
        let cases: [(Option<&str>, Option<&str>, Option<&str>, MasterKeyError); 9] = [
            (None, None, None, MasterKeyError::Missing),
            (Some("[]"), None, None, MasterKeyError::MalformedKeyRing),
            (
                Some(r#"{"1":5}"#),
                None,
                None,
                MasterKeyError::MalformedKeyRing,
            ),
            // A member that is not a string makes the ring malformed, before any key is read.
            (
                Some(r#"{"1":"c2hvcnQ=","2":null}"#),
                None,
                None,
                MasterKeyError::MalformedKeyRing,
            ),
            (Some(" "), None, Some(""), MasterKeyError::Missing),
            (
                Some("not json"),
                None,
                None,
                MasterKeyError::MalformedKeyRing,
            ),
            (
                Some(r#"{"0":"x"}"#),
                None,
                None,
                MasterKeyError::MalformedKeyRing,
            ),
            (
                None,
                None,
                Some("c2hvcnQ="),
                MasterKeyError::BadKey("1".into()),
            ),
            (Some(&two), None, None, MasterKeyError::BadActive),
        ];
        for (ring, active, single, want) in cases {
            let err = MasterKeys::from_config(ring, active, single).err().unwrap();
            assert_eq!(err, want);
            assert!(!err.to_string().contains(K1));
        }
        assert_eq!(
            MasterKeys::from_config(Some(&two), Some("3"), None).err(),
            Some(MasterKeyError::BadActive)
        );
    }
}
