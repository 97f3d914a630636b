//! Checking an issuer's JWS signatures: the seam `jwks` verifies RS256/ES256 tokens through
//! (WebCrypto in the Worker, RustCrypto in tests).

use async_trait::async_trait;

use super::Algorithm;

/// An issuer's public key from its JWKS, already checked for shape and size: RSA (at
/// least 2048 bits) or P-256, with base64url components as in the JWK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicJwk {
    Rsa { n: String, e: String },
    P256 { x: String, y: String },
}

/// Checks JWS signatures: RS256 (RSASSA-PKCS1-v1_5 with SHA-256) and ES256 (ECDSA P-256
/// with SHA-256, signature as r‖s). The Worker uses WebCrypto; host tests, RustCrypto.
#[async_trait(?Send)]
pub trait SignatureVerifier {
    async fn verify(&self, alg: Algorithm, key: &PublicJwk, input: &[u8], signature: &[u8])
        -> bool;
}
