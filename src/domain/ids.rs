//! Typed identifiers. A value of these types has already been checked.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The `sub` of a verified token: the user every credential belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    pub const MAX_LEN: usize = 255;

    /// A user id is any non-empty string of at most 255 characters without control
    /// characters (it is used in key derivation and AAD, so it must be stable text).
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = !raw.is_empty()
            && raw.chars().count() <= Self::MAX_LEN
            && !raw.chars().any(char::is_control);
        ok.then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An opaque random id: a prefix and 32 lowercase hex digits (128 bits). `parse` accepts
/// only the shape `from_random` makes, so a path segment can never smuggle SQL wildcards
/// or separators into lookups or AAD.
macro_rules! random_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn from_random(bytes: [u8; 16]) -> Self {
                Self(format!("{}{}", $prefix, hex_bytes(&bytes)))
            }

            pub fn parse(raw: &str) -> Option<Self> {
                let ok = raw.strip_prefix($prefix).is_some_and(|rest| {
                    rest.len() == 32 && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                });
                ok.then(|| Self(raw.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

random_id!(
    /// A credential's id: `c_` and 32 hex digits.
    CredentialId,
    "c_"
);
random_id!(
    /// An import batch's id: `imp_` and 32 hex digits.
    BatchId,
    "imp_"
);

/// Correlates a request's response, logs and audit events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    pub fn from_random(bytes: [u8; 16]) -> Self {
        Self(format!("req_{}", hex_bytes(&bytes)))
    }

    /// Any short text without control characters: a stored event (or one from another
    /// service) may carry a request id of its own making, and must still read back.
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = !raw.is_empty() && raw.len() <= 256 && !raw.chars().any(char::is_control);
        ok.then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The stable id of a provider in the registry (`elevenlabs`, `openai`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProviderId(&'static str);

impl ProviderId {
    /// Only the registry creates provider ids, from its own static table.
    pub(crate) const fn new(id: &'static str) -> Self {
        Self(id)
    }

    pub fn as_str(&self) -> &'static str {
        self.0
    }
}

impl fmt::Display for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl Serialize for ProviderId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

crate::wire_enum! {
    /// What a provider can do for the app.
    pub enum Capability {
        Tts = "tts",
        Stt = "stt",
        Llm = "llm",
        /// Vectors for text (and other content): an app commonly embeds with one provider
        /// and chats with another, so this is a capability of its own.
        Embedding = "embedding",
    }
}

/// Serde for ids that are strings on the wire and parsed on the way in.
macro_rules! string_id_serde {
    ($($name:ident),+) => {$(
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $name::parse(&raw).ok_or_else(|| {
                    serde::de::Error::custom(concat!("not a valid ", stringify!($name)))
                })
            }
        }
    )+};
}

string_id_serde!(UserId, CredentialId, BatchId, RequestId);

pub fn hex_bytes(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0x0f) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_ids_round_trip_and_reject_other_shapes() {
        let id = CredentialId::from_random([0xab; 16]);
        assert_eq!(id.as_str(), "c_abababababababababababababababab");
        assert_eq!(CredentialId::parse(id.as_str()), Some(id));
        for bad in [
            "",
            "c_",
            "c_ABABABABABABABABABABABABABABABAB",
            "x_abababababababababababababababab",
            "c_%",
            "c_abababababababababababababababab0",
        ] {
            assert_eq!(CredentialId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn user_ids_must_be_non_empty_printable_and_bounded() {
        assert!(UserId::parse("u_1").is_some());
        assert!(UserId::parse("").is_none());
        assert!(UserId::parse("a\nb").is_none());
        assert!(UserId::parse(&"x".repeat(256)).is_none());
    }

    #[test]
    fn capabilities_parse_their_wire_names_only() {
        assert_eq!(Capability::parse("tts"), Some(Capability::Tts));
        assert_eq!(Capability::parse("TTS"), None);
        assert_eq!(Capability::parse("embedding"), Some(Capability::Embedding));
        assert_eq!(Capability::Embedding.as_str(), "embedding");
    }
}
