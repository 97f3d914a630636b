//! AES-256-GCM envelope for stored keys.
//!
//! Data key = HKDF-SHA256(master[v], info = "credential|" + user_id): each user's keys
//! are sealed under a key of their own. AAD = "byok-vault/v1|user|credential|provider",
//! so a ciphertext copied to another row, user or provider does not open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{random_bytes, MasterKeys, RandomError, SecretKey};

/// Why a key could not be sealed. Neither happens in practice; both are still reported.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Random(#[from] RandomError),
    #[error("the active master key is missing from the key ring")]
    NoActiveKey,
    #[error("AES-GCM refused the plaintext")]
    Cipher,
}
use crate::domain::{hex_bytes, Credential, CredentialId, KeyVersion, ProviderId, Sealed, UserId};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("master key version {0} is not configured")]
    UnknownKeyVersion(u32),
    #[error("the stored key could not be decrypted")]
    Failed,
}

fn data_key(master: &[u8; 32], user: &UserId) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    let info = format!("credential|{}", user.as_str());
    // 32 bytes is far below HKDF-SHA256's 8160-byte output limit: this cannot fail.
    let _ = Hkdf::<Sha256>::new(None, master).expand(info.as_bytes(), out.as_mut());
    out
}

/// What a ciphertext is bound to: the user, the credential row and the provider. It is
/// the AES-GCM additional data (`byok-vault/v1|user|credential|provider`), so a
/// ciphertext copied to another row, user or provider does not decrypt.
#[derive(Clone, Copy, Debug)]
pub struct Binding<'a> {
    pub user: &'a UserId,
    pub credential: &'a CredentialId,
    pub provider: ProviderId,
}

impl<'a> Binding<'a> {
    pub fn new(user: &'a UserId, credential: &'a CredentialId, provider: ProviderId) -> Self {
        Self {
            user,
            credential,
            provider,
        }
    }

    /// What `credential`'s ciphertext is bound to.
    pub fn of(credential: &'a Credential) -> Self {
        Self::new(&credential.user_id, &credential.id, credential.provider)
    }

    fn aad(&self) -> String {
        format!(
            "byok-vault/v1|{}|{}|{}",
            self.user.as_str(),
            self.credential.as_str(),
            self.provider.as_str()
        )
    }
}

fn cipher(keys: &MasterKeys, v: KeyVersion, user: &UserId) -> Option<Aes256Gcm> {
    let master = keys.key(v)?;
    let dk = data_key(master, user);
    Some(Aes256Gcm::new((&*dk).into()))
}

/// Encrypts `secret` for the row `binding` names, under the active master key.
pub fn seal(
    keys: &MasterKeys,
    binding: &Binding<'_>,
    secret: &SecretKey,
) -> Result<Sealed, SealError> {
    let v = keys.active();
    let nonce: [u8; 12] = random_bytes()?;
    let cipher = cipher(keys, v, binding.user).ok_or(SealError::NoActiveKey)?;
    let aad = binding.aad();
    let payload = Payload {
        msg: secret.expose().as_bytes(),
        aad: aad.as_bytes(),
    };
    let ciphertext = cipher
        .encrypt(Nonce::from_slice(&nonce), payload)
        .map_err(|_| SealError::Cipher)?;
    Ok(Sealed {
        key_version: v,
        nonce,
        ciphertext,
    })
}

/// Decrypts a sealed key; fails if anything about it or its row binding changed.
pub fn open(
    keys: &MasterKeys,
    binding: &Binding<'_>,
    sealed: &Sealed,
) -> Result<SecretKey, OpenError> {
    let v = sealed.key_version;
    let cipher = cipher(keys, v, binding.user).ok_or(OpenError::UnknownKeyVersion(v.get()))?;
    let aad = binding.aad();
    let payload = Payload {
        msg: &sealed.ciphertext,
        aad: aad.as_bytes(),
    };
    let plain = Zeroizing::new(
        cipher
            .decrypt(Nonce::from_slice(&sealed.nonce), payload)
            .map_err(|_| OpenError::Failed)?,
    );
    let text = std::str::from_utf8(&plain).map_err(|_| OpenError::Failed)?;
    Ok(SecretKey::new(text.to_owned()))
}

/// HMAC-SHA256 of (user, provider, key) under a key derived from master key `v`: finds a
/// key stored twice without storing anything that reveals it. `None` if `v` is unknown.
pub fn fingerprint(
    keys: &MasterKeys,
    v: KeyVersion,
    user: &UserId,
    provider: ProviderId,
    secret: &SecretKey,
) -> Option<String> {
    let master = keys.key(v)?;
    let mut fk = Zeroizing::new([0u8; 32]);
    let _ = Hkdf::<Sha256>::new(None, master).expand(b"fingerprint", fk.as_mut());
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(fk.as_ref()).ok()?;
    // Length-prefixed fields, so no two different triples hash the same input.
    for part in [user.as_str(), provider.as_str(), secret.expose()] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part.as_bytes());
    }
    Some(format!(
        "v{}:{}",
        v.get(),
        hex_bytes(&mac.finalize().into_bytes())
    ))
}

/// The MAC under which the vault signs what it hands out and takes back (a page cursor):
/// HMAC-SHA256 under a key derived from the active master key for `purpose`, over
/// length-prefixed `parts`.
fn tag_mac(keys: &MasterKeys, purpose: &str, parts: &[&str]) -> Option<Hmac<Sha256>> {
    let master = keys.key(keys.active())?;
    let mut tk = Zeroizing::new([0u8; 32]);
    let info = format!("tag|{purpose}");
    let _ = Hkdf::<Sha256>::new(None, master).expand(info.as_bytes(), tk.as_mut());
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(tk.as_ref()).ok()?;
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part.as_bytes());
    }
    Some(mac)
}

/// A 128-bit tag (hex) over `parts`, for `purpose`; see [`verify_tag`].
pub fn tag(keys: &MasterKeys, purpose: &str, parts: &[&str]) -> Option<String> {
    let mac = tag_mac(keys, purpose, parts)?;
    Some(hex_bytes(&mac.finalize().into_bytes()[..16]))
}

/// Whether `tag_hex` is the tag [`tag`] makes of `parts` (compared in constant time).
pub fn verify_tag(keys: &MasterKeys, purpose: &str, parts: &[&str], tag_hex: &str) -> bool {
    let Some(given) = decode_hex(tag_hex).filter(|t| t.len() == 16) else {
        return false;
    };
    tag_mac(keys, purpose, parts).is_some_and(|mac| mac.verify_truncated_left(&given).is_ok())
}

pub(super) fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ELEVEN: ProviderId = ProviderId::new("elevenlabs");

    #[test]
    fn tags_verify_only_for_their_parts_purpose_and_key() {
        let k = keys();
        let t = tag(&k, "cursor", &["u_1", "v1:5000:ab"]).unwrap();
        assert_eq!(t.len(), 32);
        assert!(verify_tag(&k, "cursor", &["u_1", "v1:5000:ab"], &t));
        assert!(!verify_tag(&k, "cursor", &["u_2", "v1:5000:ab"], &t));
        assert!(!verify_tag(&k, "cursor", &["u_1", "v1:5001:ab"], &t));
        assert!(!verify_tag(&k, "other", &["u_1", "v1:5000:ab"], &t));
        let other = MasterKeys::for_tests(&[(1, [8u8; 32])], 1);
        assert!(!verify_tag(&other, "cursor", &["u_1", "v1:5000:ab"], &t));
        for bad in ["", "zz", &t[..30], "é"] {
            assert!(!verify_tag(&k, "cursor", &["u_1", "v1:5000:ab"], bad));
        }
    }
    const OPENAI: ProviderId = ProviderId::new("openai");

    fn keys() -> MasterKeys {
        MasterKeys::for_tests(&[(1, [7u8; 32]), (2, [9u8; 32])], 1)
    }
    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }
    fn cred(b: u8) -> CredentialId {
        CredentialId::from_random([b; 16])
    }
    fn secret() -> SecretKey {
        SecretKey::new("sk_0123456789abcdef0123456789abcdef0123456789abcdef".into())
    }

    #[test]
    fn round_trip() {
        let (k, u, c) = (keys(), user("u_1"), cred(1));
        let sealed = seal(&k, &Binding::new(&u, &c, ELEVEN), &secret()).unwrap();
        assert_eq!(sealed.key_version.get(), 1);
        let opened = open(&k, &Binding::new(&u, &c, ELEVEN), &sealed).unwrap();
        assert_eq!(opened.expose(), secret().expose());
    }

    #[test]
    fn ciphertext_does_not_contain_the_key() {
        let sealed = seal(
            &keys(),
            &Binding::new(&user("u_1"), &cred(1), ELEVEN),
            &secret(),
        )
        .unwrap();
        let key = secret();
        let needle = &key.expose().as_bytes()[..8];
        assert!(!sealed.ciphertext.windows(8).any(|w| w == needle));
        assert_eq!(sealed.ciphertext.len(), secret().expose().len() + 16);
    }

    #[test]
    fn any_flipped_bit_of_nonce_ciphertext_or_tag_fails() {
        let (k, u, c) = (keys(), user("u_1"), cred(1));
        let sealed = seal(&k, &Binding::new(&u, &c, ELEVEN), &secret()).unwrap();
        for bit in 0..sealed.nonce.len() * 8 {
            let mut s = sealed.clone();
            s.nonce[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                open(&k, &Binding::new(&u, &c, ELEVEN), &s).err(),
                Some(OpenError::Failed)
            );
        }
        // The last 16 bytes are the tag; this covers ciphertext and tag alike.
        for bit in 0..sealed.ciphertext.len() * 8 {
            let mut s = sealed.clone();
            s.ciphertext[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                open(&k, &Binding::new(&u, &c, ELEVEN), &s).err(),
                Some(OpenError::Failed),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn ciphertext_moved_to_another_user_row_or_provider_fails() {
        let (k, u, c) = (keys(), user("u_1"), cred(1));
        let sealed = seal(&k, &Binding::new(&u, &c, ELEVEN), &secret()).unwrap();
        assert_eq!(
            open(&k, &Binding::new(&user("u_2"), &c, ELEVEN), &sealed).err(),
            Some(OpenError::Failed)
        );
        assert_eq!(
            open(&k, &Binding::new(&u, &cred(2), ELEVEN), &sealed).err(),
            Some(OpenError::Failed)
        );
        assert_eq!(
            open(&k, &Binding::new(&u, &c, OPENAI), &sealed).err(),
            Some(OpenError::Failed)
        );
    }

    #[test]
    fn a_different_key_version_fails_cleanly() {
        let (k, u, c) = (keys(), user("u_1"), cred(1));
        let mut sealed = seal(&k, &Binding::new(&u, &c, ELEVEN), &secret()).unwrap();
        sealed.key_version = KeyVersion::new(2).unwrap();
        assert_eq!(
            open(&k, &Binding::new(&u, &c, ELEVEN), &sealed).err(),
            Some(OpenError::Failed)
        );
        sealed.key_version = KeyVersion::new(3).unwrap();
        assert_eq!(
            open(&k, &Binding::new(&u, &c, ELEVEN), &sealed).err(),
            Some(OpenError::UnknownKeyVersion(3))
        );
    }

    #[test]
    fn a_ring_without_the_old_version_cannot_open_its_rows() {
        let (u, c) = (user("u_1"), cred(1));
        let sealed = seal(&keys(), &Binding::new(&u, &c, ELEVEN), &secret()).unwrap();
        let rotated = MasterKeys::for_tests(&[(2, [9u8; 32])], 2);
        assert_eq!(
            open(&rotated, &Binding::new(&u, &c, ELEVEN), &sealed).err(),
            Some(OpenError::UnknownKeyVersion(1))
        );
    }

    #[test]
    fn two_encryptions_of_the_same_key_differ() {
        let (k, u, c) = (keys(), user("u_1"), cred(1));
        let a = seal(&k, &Binding::new(&u, &c, ELEVEN), &secret()).unwrap();
        let b = seal(&k, &Binding::new(&u, &c, ELEVEN), &secret()).unwrap();
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
    }

    #[test]
    fn stored_columns_round_trip() {
        let sealed = seal(
            &keys(),
            &Binding::new(&user("u_1"), &cred(1), ELEVEN),
            &secret(),
        )
        .unwrap();
        let back = Sealed::from_stored(1, &sealed.nonce_b64(), &sealed.ciphertext_b64()).unwrap();
        assert_eq!(back, sealed);
        assert!(Sealed::from_stored(1, "AAAA", &sealed.ciphertext_b64()).is_none());
        assert!(Sealed::from_stored(0, &sealed.nonce_b64(), &sealed.ciphertext_b64()).is_none());
        assert_eq!(format!("{sealed:?}"), "Sealed(v1)");
    }

    #[test]
    fn fingerprints_identify_a_key_per_user_and_provider() {
        let k = keys();
        let v1 = KeyVersion::new(1).unwrap();
        let a = fingerprint(&k, v1, &user("u_1"), ELEVEN, &secret()).unwrap();
        assert_eq!(
            a,
            fingerprint(&k, v1, &user("u_1"), ELEVEN, &secret()).unwrap()
        );
        assert_ne!(
            a,
            fingerprint(&k, v1, &user("u_2"), ELEVEN, &secret()).unwrap()
        );
        assert_ne!(
            a,
            fingerprint(&k, v1, &user("u_1"), OPENAI, &secret()).unwrap()
        );
        assert!(!a.contains(&secret().expose()[3..10]));
        assert!(a.starts_with("v1:"));
    }
}
