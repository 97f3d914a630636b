//! A key as it is stored: sealed under a master key version (the sealing itself is
//! `crypto`'s); plain data that never shows what it holds.

use std::fmt;

use base64::{engine::general_purpose::STANDARD, Engine as _};

/// The version of a master key; stored next to every ciphertext.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyVersion(u32);

impl KeyVersion {
    /// The version a single `MASTER_KEY` is.
    pub const FIRST: Self = Self(1);

    pub fn new(v: u32) -> Option<Self> {
        (v > 0).then_some(Self(v))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// A sealed key as stored: master key version, nonce, and ciphertext with its tag.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_version: KeyVersion,
    pub nonce: [u8; 12],
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    // Even ciphertext stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed(v{})", self.key_version.get())
    }
}

impl Sealed {
    pub fn nonce_b64(&self) -> String {
        STANDARD.encode(self.nonce)
    }

    pub fn ciphertext_b64(&self) -> String {
        STANDARD.encode(&self.ciphertext)
    }

    /// Rebuilds a sealed value from its stored columns; `None` if they are not well formed.
    pub fn from_stored(key_version: u32, nonce_b64: &str, ciphertext_b64: &str) -> Option<Self> {
        let nonce = STANDARD.decode(nonce_b64).ok()?.try_into().ok()?;
        let ciphertext = STANDARD.decode(ciphertext_b64).ok()?;
        Some(Self {
            key_version: KeyVersion::new(key_version)?,
            nonce,
            ciphertext,
        })
    }
}
