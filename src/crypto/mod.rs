//! Where keys are encrypted: master keys, per-user data keys, the AES-256-GCM envelope,
//! duplicate fingerprints, the MACs that mark what the vault wrote, and the zeroizing type
//! that holds a plaintext key.

mod envelope;
mod mac;
mod master_keys;
mod secret;

pub use envelope::{fingerprint, open, seal, tag, verify_tag, Binding, OpenError, SealError};
pub use mac::{MacCheck, MacKeys};
pub use master_keys::{MasterKeyError, MasterKeys};
pub use secret::SecretKey;

/// Fills `buf` from the platform CSPRNG (the OS on the host, `crypto.getRandomValues` in
/// a Worker).
pub fn random_bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut buf = [0u8; N];
    getrandom::getrandom(&mut buf).map_err(|_| RandomError)?;
    Ok(buf)
}

#[derive(Debug, thiserror::Error)]
#[error("the platform random number generator failed")]
pub struct RandomError;
