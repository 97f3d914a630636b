//! The one type a plaintext API key may live in.

use zeroize::Zeroizing;

/// A plaintext API key. It has no `Debug`, `Display`, `Clone` or `Serialize`, so it
/// cannot end up in a log line, an error or a JSON body by accident, and its memory is
/// wiped when it is dropped.
pub struct SecretKey(Zeroizing<String>);

impl SecretKey {
    pub fn new(key: String) -> Self {
        Self(Zeroizing::new(key))
    }

    /// The key itself, for the few places that must send it to a provider or encrypt it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
