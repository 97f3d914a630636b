//! What user tokens are checked against and why one is refused: the vocabulary that the
//! HS256 verifier (`jwt`) and the issuer's key set (`jwks`) share.

use zeroize::Zeroizing;

/// Why a token was refused. Shown to nobody in detail beyond its message; never holds
/// any part of the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a bearer token is required")]
    Missing,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's signing algorithm is not accepted")]
    UnsupportedAlgorithm,
    #[error("the token's signature is not valid")]
    BadSignature,
    #[error("the token has no exp claim")]
    MissingExpiry,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token has no usable sub claim")]
    MissingSubject,
    #[error("the token was issued by someone else")]
    WrongIssuer,
    #[error("the token is meant for another audience")]
    WrongAudience,
    #[error("the token's signing key is not one the issuer publishes")]
    UnknownKey,
    #[error("the issuer's signing keys could not be fetched")]
    KeysUnavailable,
    #[error("this endpoint takes a service token, and this is not one")]
    NotAService,
}

/// What the configuration says about user tokens.
#[derive(Default)]
pub struct JwtSettings {
    pub hs256_secret: Option<Zeroizing<Vec<u8>>>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Where RS256/ES256 keys are published; without it only HS256 is accepted.
    pub jwks_url: Option<String>,
    pub jwks_ttl_ms: u64,
    /// How long past its TTL the last good key set is still used while the issuer cannot
    /// be reached.
    pub jwks_max_stale_ms: u64,
}

crate::wire_enum! {
    /// The signing algorithms this verifier knows (a token header's `alg`); `none` and
    /// everything else are refused before any claim is read.
    pub enum Algorithm {
        /// HMAC-SHA256 with `AUTH_JWT_SECRET`.
        Hs256 = "HS256",
        /// RSASSA-PKCS1-v1_5 with SHA-256, against the issuer's JWKS.
        Rs256 = "RS256",
        /// ECDSA P-256 with SHA-256 (signature r‖s), against the issuer's JWKS.
        Es256 = "ES256",
    }
}
