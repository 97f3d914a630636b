//! MACs under versioned keys derived from the master keys, for what the vault writes into
//! D1 and must later recognise as its own (the audit chain's anchors). Each master key
//! version gives its own MAC key (HKDF-SHA256, info `mac|<purpose>`), derived once when
//! the ring is built; a tag names the version it was made under, so a tag made under an
//! old version verifies for as long as that version is configured.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::envelope::decode_hex;
use super::MasterKeys;
use crate::domain::hex_bytes;
use crate::domain::KeyVersion;

/// The MAC keys of one purpose, one per configured master key version.
pub struct MacKeys {
    keys: Vec<(KeyVersion, Zeroizing<[u8; 32]>)>,
    active: KeyVersion,
}

/// What checking a tag found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacCheck {
    Valid,
    /// Not the tag of these parts under that version (or not a tag at all).
    Invalid,
    /// The version it names is not configured: it cannot be checked.
    UnknownVersion,
}

impl MacKeys {
    pub fn derive(master: &MasterKeys, purpose: &str) -> Self {
        let info = format!("mac|{purpose}");
        let keys = master
            .versions()
            .filter_map(|v| {
                let mut k = Zeroizing::new([0u8; 32]);
                // 32 bytes is far below HKDF-SHA256's output limit: this cannot fail.
                Hkdf::<Sha256>::new(None, master.key(v)?)
                    .expand(info.as_bytes(), k.as_mut())
                    .ok()?;
                Some((v, k))
            })
            .collect();
        Self {
            keys,
            active: master.active(),
        }
    }

    /// The version new tags are made under.
    pub fn active(&self) -> KeyVersion {
        self.active
    }

    /// Every version tags can be checked under.
    pub fn versions(&self) -> impl Iterator<Item = KeyVersion> + '_ {
        self.keys.iter().map(|(v, _)| *v)
    }

    fn mac(&self, v: KeyVersion, parts: &[&str]) -> Option<Hmac<Sha256>> {
        let (_, key) = self.keys.iter().find(|(k, _)| *k == v)?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_ref()).ok()?;
        // Length-prefixed, so no two different lists of parts give the same input.
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        Some(mac)
    }

    /// A 128-bit tag (hex) over `parts` under the active version.
    pub fn tag(&self, parts: &[&str]) -> Option<String> {
        let mac = self.mac(self.active, parts)?;
        Some(hex_bytes(&mac.finalize().into_bytes()[..16]))
    }

    /// Whether `tag_hex` is the tag of `parts` under version `v` (in constant time).
    pub fn check(&self, v: KeyVersion, parts: &[&str], tag_hex: &str) -> MacCheck {
        let Some(mac) = self.mac(v, parts) else {
            return MacCheck::UnknownVersion;
        };
        match decode_hex(tag_hex).filter(|t| t.len() == 16) {
            Some(given) if mac.verify_truncated_left(&given).is_ok() => MacCheck::Valid,
            _ => MacCheck::Invalid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(pairs: &[(u32, [u8; 32])], active: u32) -> MasterKeys {
        MasterKeys::for_tests(pairs, active)
    }

    #[test]
    fn a_tag_verifies_under_its_version_for_its_parts_and_purpose_only() {
        let one = ring(&[(1, [1; 32])], 1);
        let keys = MacKeys::derive(&one, "anchor");
        let v1 = KeyVersion::new(1).unwrap();
        let t = keys.tag(&["head", "u_1", "5"]).unwrap();
        assert_eq!(t.len(), 32);
        assert_eq!(keys.check(v1, &["head", "u_1", "5"], &t), MacCheck::Valid);
        assert_eq!(keys.check(v1, &["head", "u_2", "5"], &t), MacCheck::Invalid);
        // Length prefixes: moving a character between parts is another input.
        assert_eq!(keys.check(v1, &["head", "u_15", ""], &t), MacCheck::Invalid);
        let other = MacKeys::derive(&one, "cursor");
        assert_eq!(
            other.check(v1, &["head", "u_1", "5"], &t),
            MacCheck::Invalid
        );
        for bad in ["", "zz", &t[..30], "é"] {
            assert_eq!(
                keys.check(v1, &["head", "u_1", "5"], bad),
                MacCheck::Invalid
            );
        }
    }

    #[test]
    fn an_old_version_verifies_while_configured_and_is_unknown_once_removed() {
        let v1 = KeyVersion::new(1).unwrap();
        let before = MacKeys::derive(&ring(&[(1, [1; 32])], 1), "anchor");
        let t = before.tag(&["x"]).unwrap();
        let rotated = MacKeys::derive(&ring(&[(1, [1; 32]), (2, [2; 32])], 2), "anchor");
        assert_eq!(rotated.active().get(), 2);
        assert_eq!(rotated.check(v1, &["x"], &t), MacCheck::Valid);
        assert_ne!(rotated.tag(&["x"]).unwrap(), t);
        let removed = MacKeys::derive(&ring(&[(2, [2; 32])], 2), "anchor");
        assert_eq!(removed.check(v1, &["x"], &t), MacCheck::UnknownVersion);
        // Another key under the same version number is simply another key.
        let replaced = MacKeys::derive(&ring(&[(1, [9; 32])], 1), "anchor");
        assert_eq!(replaced.check(v1, &["x"], &t), MacCheck::Invalid);
    }
}
