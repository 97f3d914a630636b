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

    /// Removes every occurrence of this key from text that came from elsewhere (a
    /// provider's error message may echo the key it was sent).
    pub fn redact(&self, text: &str) -> String {
        if self.0.len() < 4 {
            return text.to_owned();
        }
        text.replace(self.0.as_str(), "[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_the_key_from_foreign_text() {
        let k = SecretKey::new("sk-secret-1234".into());
        assert_eq!(
            k.redact("Incorrect API key provided: sk-secret-1234."),
            "Incorrect API key provided: [redacted]."
        );
    }
}
