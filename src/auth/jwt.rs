//! JWT verification for end-user tokens: HS256 with `AUTH_JWT_SECRET`, RS256 and ES256
//! against the keys at `AUTH_JWKS_URL`.
//!
//! The header's `alg` must be one this verifier is configured for; `none` and anything
//! else are refused before any claim is read. `exp` is required, `nbf`, `iss` and `aud`
//! are checked when present or configured, with 60 s of clock skew; `sub` is the user.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::token::{Algorithm, AuthError, JwtSettings};
use super::JwksCache;
use crate::auth::SignatureVerifier;
use crate::domain::{Timestamp, UserId};
use crate::http::HttpClient;
use crate::json_read;

const SKEW_SECS: u64 = 60;
const MAX_TOKEN_LEN: usize = 8 * 1024;

pub struct JwtVerifier<'a> {
    settings: &'a JwtSettings,
    jwks: Option<(&'a JwksCache, &'a dyn HttpClient, &'a dyn SignatureVerifier)>,
}

struct Header {
    alg: String,
    kid: Option<String>,
}

impl<'a> JwtVerifier<'a> {
    pub fn new(settings: &'a JwtSettings) -> Self {
        Self {
            settings,
            jwks: None,
        }
    }

    /// With the issuer's key-set cache (there is one when `AUTH_JWKS_URL` is set), a
    /// client to fetch it and a signature verifier, RS256 and ES256 are accepted too.
    pub fn with_jwks(
        mut self,
        cache: &'a JwksCache,
        http: &'a dyn HttpClient,
        verifier: &'a dyn SignatureVerifier,
    ) -> Self {
        self.jwks = Some((cache, http, verifier));
        self
    }

    pub async fn verify(&self, token: &str, now: Timestamp) -> Result<UserId, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let header = decode_header(h)?;
        let signature = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| AuthError::Malformed)?;
        let signing_input = &token[..h.len() + 1 + p.len()];
        let alg = Algorithm::parse(&header.alg).ok_or(AuthError::UnsupportedAlgorithm)?;
        match (alg, self.jwks) {
            (Algorithm::Hs256, _) => self.verify_hs256(signing_input.as_bytes(), &signature)?,
            (Algorithm::Rs256 | Algorithm::Es256, Some((cache, http, verifier))) => {
                let signed = super::jwks::Signed {
                    alg,
                    kid: header.kid.as_deref(),
                    input: signing_input.as_bytes(),
                    signature: &signature,
                };
                cache.verify(&signed, http, verifier, now).await?
            }
            _ => return Err(AuthError::UnsupportedAlgorithm),
        }
        let claims: Value = decode_json(p)?;
        self.check_claims(&claims, now)
    }

    fn verify_hs256(&self, input: &[u8], signature: &[u8]) -> Result<(), AuthError> {
        let secret = self
            .settings
            .hs256_secret
            .as_ref()
            .ok_or(AuthError::UnsupportedAlgorithm)?;
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(secret).map_err(|_| AuthError::BadSignature)?;
        mac.update(input);
        // Constant-time comparison.
        mac.verify_slice(signature)
            .map_err(|_| AuthError::BadSignature)
    }

    fn check_claims(&self, claims: &Value, now: Timestamp) -> Result<UserId, AuthError> {
        let now = now.as_unix_seconds();
        let exp = numeric_date(claims, "exp")?.ok_or(AuthError::MissingExpiry)?;
        if now > exp.saturating_add(SKEW_SECS) {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = numeric_date(claims, "nbf")? {
            if now.saturating_add(SKEW_SECS) < nbf {
                return Err(AuthError::NotYetValid);
            }
        }
        if let Some(want) = &self.settings.issuer {
            if claims.get("iss").and_then(Value::as_str) != Some(want.as_str()) {
                return Err(AuthError::WrongIssuer);
            }
        }
        if let Some(want) = &self.settings.audience {
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => a == want,
                Some(Value::Array(all)) => all.iter().any(|a| a.as_str() == Some(want)),
                _ => false,
            };
            if !ok {
                return Err(AuthError::WrongAudience);
            }
        }
        claims
            .get("sub")
            .and_then(Value::as_str)
            .and_then(UserId::parse)
            .ok_or(AuthError::MissingSubject)
    }
}

fn decode_json(segment: &str) -> Result<Value, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)
}

/// The header: an object with a string `alg` and an optional string `kid`.
fn decode_header(segment: &str) -> Result<Header, AuthError> {
    let Value::Object(h) = decode_json(segment)? else {
        return Err(AuthError::Malformed);
    };
    (|| {
        Some(Header {
            alg: json_read::text(&h, "alg")?,
            kid: json_read::opt_text(&h, "kid")?,
        })
    })()
    .ok_or(AuthError::Malformed)
}

/// A NumericDate claim: absent is `None`, present but not a non-negative number is malformed.
fn numeric_date(claims: &Value, name: &str) -> Result<Option<u64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(n) if n.is_finite() && n >= 0.0 => Ok(Some(n as u64)),
            _ => Err(AuthError::Malformed),
        },
    }
}

#[cfg(test)]
pub(crate) fn sign_hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    let p = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap();
    mac.update(format!("{h}.{p}").as_bytes());
    format!(
        "{h}.{p}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use zeroize::Zeroizing;

    use super::*;

    const SECRET: &[u8] = b"test-secret-at-least-32-bytes-long!!";
    const NOW: u64 = 1_800_000_000;

    fn settings() -> JwtSettings {
        JwtSettings {
            hs256_secret: Some(Zeroizing::new(SECRET.to_vec())),
            ..Default::default()
        }
    }

    fn verify_with(s: &JwtSettings, token: &str) -> Result<UserId, AuthError> {
        futures::executor::block_on(
            JwtVerifier::new(s).verify(token, Timestamp::from_unix_seconds(NOW)),
        )
    }

    fn token(claims: Value) -> String {
        sign_hs256(&json!({"alg":"HS256","typ":"JWT"}), &claims, SECRET)
    }

    #[test]
    fn a_valid_token_yields_its_subject() {
        let t = token(json!({"sub":"u_1","exp":NOW + 300}));
        assert_eq!(verify_with(&settings(), &t).unwrap().as_str(), "u_1");
    }

    #[test]
    fn expiry_is_required_and_enforced_with_sixty_seconds_of_skew() {
        let s = settings();
        assert_eq!(
            verify_with(&s, &token(json!({"sub":"u"}))),
            Err(AuthError::MissingExpiry)
        );
        assert!(verify_with(&s, &token(json!({"sub":"u","exp":NOW - 60}))).is_ok());
        assert_eq!(
            verify_with(&s, &token(json!({"sub":"u","exp":NOW - 61}))),
            Err(AuthError::Expired)
        );
        assert_eq!(
            verify_with(&s, &token(json!({"sub":"u","exp":"soon"}))),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn not_before_is_enforced_with_skew() {
        let s = settings();
        assert!(verify_with(
            &s,
            &token(json!({"sub":"u","exp":NOW + 600,"nbf":NOW + 60}))
        )
        .is_ok());
        assert_eq!(
            verify_with(
                &s,
                &token(json!({"sub":"u","exp":NOW + 600,"nbf":NOW + 61}))
            ),
            Err(AuthError::NotYetValid)
        );
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let s = settings();
        let claims = json!({"sub":"u","exp":NOW + 300});
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        for alg in ["none", "None", "HS512", "RS256"] {
            let h = URL_SAFE_NO_PAD.encode(json!({"alg":alg}).to_string());
            assert_eq!(
                verify_with(&s, &format!("{h}.{body}.")),
                Err(AuthError::UnsupportedAlgorithm),
                "{alg}"
            );
        }
    }

    #[test]
    fn a_bad_signature_is_refused() {
        let good = token(json!({"sub":"u","exp":NOW + 300}));
        let forged = sign_hs256(
            &json!({"alg":"HS256"}),
            &json!({"sub":"u","exp":NOW + 300}),
            b"other-secret",
        );
        assert_eq!(
            verify_with(&settings(), &forged),
            Err(AuthError::BadSignature)
        );
        // The payload of one token with the signature of another.
        let other = token(json!({"sub":"admin","exp":NOW + 300}));
        let spliced = format!(
            "{}.{}",
            other.rsplit_once('.').unwrap().0,
            good.rsplit_once('.').unwrap().1
        );
        assert_eq!(
            verify_with(&settings(), &spliced),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn hs256_is_refused_when_no_secret_is_configured() {
        let t = token(json!({"sub":"u","exp":NOW + 300}));
        assert_eq!(
            verify_with(&JwtSettings::default(), &t),
            Err(AuthError::UnsupportedAlgorithm)
        );
    }

    #[test]
    fn subject_is_required() {
        let s = settings();
        assert_eq!(
            verify_with(&s, &token(json!({"exp":NOW + 300}))),
            Err(AuthError::MissingSubject)
        );
        assert_eq!(
            verify_with(&s, &token(json!({"sub":"","exp":NOW + 300}))),
            Err(AuthError::MissingSubject)
        );
        assert_eq!(
            verify_with(&s, &token(json!({"sub":42,"exp":NOW + 300}))),
            Err(AuthError::MissingSubject)
        );
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let s = JwtSettings {
            issuer: Some("https://app".into()),
            audience: Some("byok".into()),
            ..settings()
        };
        let ok = token(json!({"sub":"u","exp":NOW + 300,"iss":"https://app","aud":["x","byok"]}));
        assert!(verify_with(&s, &ok).is_ok());
        let bad_iss = token(json!({"sub":"u","exp":NOW + 300,"iss":"https://evil","aud":"byok"}));
        assert_eq!(verify_with(&s, &bad_iss), Err(AuthError::WrongIssuer));
        let bad_aud = token(json!({"sub":"u","exp":NOW + 300,"iss":"https://app","aud":"other"}));
        assert_eq!(verify_with(&s, &bad_aud), Err(AuthError::WrongAudience));
    }

    #[test]
    fn garbage_is_malformed() {
        for t in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.!!.!!",
            &"a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(verify_with(&settings(), t).is_err(), "{t}");
        }
    }
}
