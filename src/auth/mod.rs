//! Who is calling: end users with a JWT from the app's own auth, and backend services
//! with a token from `SERVICE_TOKENS`.

mod jwks;
pub(crate) mod jwt;
mod service;
mod settings;
mod signature;
mod token;

pub use jwks::JwksCache;
pub use jwt::JwtVerifier;
pub use service::{find_service, Scope, ServiceToken};
pub use settings::AuthSettings;
pub use signature::{PublicJwk, SignatureVerifier};
pub use token::{Algorithm, AuthError, JwtSettings};

/// The token of an `Authorization: Bearer <token>` header, if that is what it holds.
pub fn bearer_token(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_bearer_tokens_only() {
        assert_eq!(bearer_token(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer_token(Some("Basic abc")), None);
        assert_eq!(bearer_token(Some("Bearer ")), None);
        assert_eq!(bearer_token(None), None);
    }
}
