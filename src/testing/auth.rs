//! Signature checks (`auth::SignatureVerifier`) with RustCrypto, standing in for WebCrypto.

use async_trait::async_trait;

/// RS256/ES256 checks with RustCrypto, standing in for the Worker's WebCrypto.
pub(crate) struct RustCryptoVerifier;

#[async_trait(?Send)]
impl crate::auth::SignatureVerifier for RustCryptoVerifier {
    async fn verify(
        &self,
        alg: crate::auth::Algorithm,
        key: &crate::auth::PublicJwk,
        input: &[u8],
        signature: &[u8],
    ) -> bool {
        use crate::auth::PublicJwk;
        use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
        let d = |s: &str| URL_SAFE_NO_PAD.decode(s).unwrap_or_default();
        match (alg, key) {
            (crate::auth::Algorithm::Rs256, PublicJwk::Rsa { n, e }) => {
                use rsa::signature::Verifier as _;
                let Ok(k) = rsa::RsaPublicKey::new(
                    rsa::BigUint::from_bytes_be(&d(n)),
                    rsa::BigUint::from_bytes_be(&d(e)),
                ) else {
                    return false;
                };
                let Ok(sig) = rsa::pkcs1v15::Signature::try_from(signature) else {
                    return false;
                };
                rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(k)
                    .verify(input, &sig)
                    .is_ok()
            }
            (crate::auth::Algorithm::Es256, PublicJwk::P256 { x, y }) => {
                use p256::ecdsa::signature::Verifier as _;
                let (x, y) = (d(x), d(y));
                let point = p256::EncodedPoint::from_affine_coordinates(
                    x.as_slice().into(),
                    y.as_slice().into(),
                    false,
                );
                let Ok(k) = p256::ecdsa::VerifyingKey::from_encoded_point(&point) else {
                    return false;
                };
                let Ok(sig) = p256::ecdsa::Signature::from_slice(signature) else {
                    return false;
                };
                k.verify(input, &sig).is_ok()
            }
            _ => false,
        }
    }
}
