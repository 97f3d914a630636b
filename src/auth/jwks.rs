//! RS256 and ES256 user tokens, verified against the keys published at `AUTH_JWKS_URL`.
//! The key set is cached per isolate; a token naming an unknown `kid` triggers one
//! refetch, at most one per `MIN_REFETCH_MS`, so forged kids cannot hammer the issuer.
//! After a failed fetch the issuer is not asked again for `MIN_REFETCH_MS` either, and
//! meanwhile (up to `max_stale_ms` past its TTL) the last good set serves: an outage does
//! not turn every request into a fetch, nor log every user out.

use std::cell::{Cell, RefCell};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};

use super::token::{Algorithm, AuthError, JwtSettings};
use crate::auth::{PublicJwk, SignatureVerifier};
use crate::domain::Timestamp;
use crate::http::{HttpClient, HttpRequest};
use crate::json_read;

const MIN_REFETCH_MS: u64 = 10_000;
const FETCH_TIMEOUT_MS: u64 = 3_000;
const MIN_RSA_BYTES: usize = 2048 / 8;

#[derive(Clone)]
struct Key {
    kid: Option<String>,
    key: PublicJwk,
}

struct RawKey {
    kty: String,
    kid: Option<String>,
    usage: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

fn b64(v: &Option<String>) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(v.as_deref()?.trim_end_matches('='))
        .ok()
}

fn b64_str(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl RawKey {
    /// The key, if it is a signing key of a kind this verifier accepts.
    fn parse(&self) -> Option<Key> {
        if self.usage.as_deref().is_some_and(|u| u != "sig") {
            return None;
        }
        // Checked here so the verifier only ever sees well-formed keys.
        let key = match self.kty.as_str() {
            "RSA" => {
                let n = b64(&self.n)?;
                let e = b64(&self.e)?;
                let significant = n.iter().skip_while(|b| **b == 0).count();
                if significant < MIN_RSA_BYTES || e.is_empty() || e.len() > 8 {
                    return None;
                }
                PublicJwk::Rsa {
                    n: b64_str(&n),
                    e: b64_str(&e),
                }
            }
            "EC" if self.crv.as_deref() == Some("P-256") => {
                let (x, y) = (b64(&self.x)?, b64(&self.y)?);
                if x.len() != 32 || y.len() != 32 {
                    return None;
                }
                PublicJwk::P256 {
                    x: b64_str(&x),
                    y: b64_str(&y),
                }
            }
            _ => return None,
        };
        Some(Key {
            kid: self.kid.clone(),
            key,
        })
    }
}

/// Parses a JWKS document, keeping the keys this verifier can use.
fn parse_set(body: &[u8]) -> Option<Vec<Key>> {
    let set = json_read::object(body)?;
    // Every key must be well formed, as a derived reader of the set would demand.
    let keys = json_read::items(json_read::list(&set, "keys")?, |k| {
        let opt = |name| json_read::opt_text(k, name);
        Some(RawKey {
            kty: json_read::text(k, "kty")?,
            kid: opt("kid")?,
            usage: opt("use")?,
            n: opt("n")?,
            e: opt("e")?,
            crv: opt("crv")?,
            x: opt("x")?,
            y: opt("y")?,
        })
    })?;
    Some(keys.iter().filter_map(RawKey::parse).collect())
}

struct Cached {
    keys: Vec<Key>,
    fetched_at: Timestamp,
}

/// How long a fetched key set is good for.
#[derive(Clone, Copy, Debug)]
struct Freshness {
    /// Refetched after this long.
    ttl_ms: u64,
    /// Still used this long past the TTL while refetching fails.
    max_stale_ms: u64,
}

/// The per-isolate cache of one issuer's key set: where it is published and how fresh it
/// must be are fixed when the cache is made; the client that fetches it and the verifier
/// that checks signatures are the request's.
pub struct JwksCache {
    url: String,
    freshness: Freshness,
    cached: RefCell<Option<Cached>>,
    /// When a fetch last failed (cleared by a successful one).
    last_failure: Cell<Option<Timestamp>>,
}

/// A signed token, taken apart: what is checked against the issuer's key.
pub(super) struct Signed<'t> {
    pub alg: Algorithm,
    pub kid: Option<&'t str>,
    pub input: &'t [u8],
    pub signature: &'t [u8],
}

impl JwksCache {
    pub fn new(url: String, ttl_ms: u64, max_stale_ms: u64) -> Self {
        Self {
            url,
            freshness: Freshness {
                ttl_ms,
                max_stale_ms,
            },
            cached: RefCell::new(None),
            last_failure: Cell::new(None),
        }
    }

    /// The cache the settings call for: one when `AUTH_JWKS_URL` is set.
    pub fn for_settings(settings: &JwtSettings) -> Option<Self> {
        let url = settings.jwks_url.clone()?;
        Some(Self::new(
            url,
            settings.jwks_ttl_ms,
            settings.jwks_max_stale_ms,
        ))
    }

    /// Fetches the set. A set without one usable key does not replace a cached one that
    /// has some: that is a broken answer, not a rotation to nothing.
    async fn fetch(&self, http: &dyn HttpClient, now: Timestamp) -> Result<(), AuthError> {
        let response = http
            .send(
                HttpRequest::get(self.url.clone()).header("accept", "application/json"),
                FETCH_TIMEOUT_MS,
            )
            .await
            .map_err(|_| AuthError::KeysUnavailable)?;
        if response.status != 200 {
            return Err(AuthError::KeysUnavailable);
        }
        let keys = parse_set(&response.body).ok_or(AuthError::KeysUnavailable)?;
        let had_keys = self
            .cached
            .borrow()
            .as_ref()
            .is_some_and(|c| !c.keys.is_empty());
        if keys.is_empty() && had_keys {
            return Err(AuthError::KeysUnavailable);
        }
        *self.cached.borrow_mut() = Some(Cached {
            keys,
            fetched_at: now,
        });
        Ok(())
    }

    fn find(&self, kid: Option<&str>, want_rsa: bool) -> Option<Key> {
        let cached = self.cached.borrow();
        let keys = &cached.as_ref()?.keys;
        let kind_ok = |k: &Key| {
            matches!(
                (&k.key, want_rsa),
                (PublicJwk::Rsa { .. }, true) | (PublicJwk::P256 { .. }, false)
            )
        };
        match kid {
            Some(kid) => keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid) && kind_ok(k))
                .cloned(),
            // Without a kid, only an unambiguous set will do.
            None => {
                let mut fitting = keys.iter().filter(|k| kind_ok(k));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Some(k.clone()),
                    _ => None,
                }
            }
        }
    }

    fn age(&self, now: Timestamp) -> Option<u64> {
        self.cached
            .borrow()
            .as_ref()
            .map(|c| c.fetched_at.millis_until(now))
    }

    /// Whether the issuer may be asked now: not within `MIN_REFETCH_MS` of a failure.
    fn may_fetch(&self, now: Timestamp) -> bool {
        self.last_failure
            .get()
            .is_none_or(|t| t.millis_until(now) >= MIN_REFETCH_MS)
    }

    async fn try_fetch(&self, http: &dyn HttpClient, now: Timestamp) -> bool {
        let ok = self.fetch(http, now).await.is_ok();
        self.last_failure.set((!ok).then_some(now));
        ok
    }

    /// The key for `kid`. The set is fetched when missing or past its TTL; if that fails,
    /// the last good set serves until `max_stale_ms` past its TTL. An unknown kid triggers
    /// one refetch, unless the set was fetched within `MIN_REFETCH_MS`.
    async fn key(
        &self,
        kid: Option<&str>,
        want_rsa: bool,
        http: &dyn HttpClient,
        now: Timestamp,
    ) -> Result<Key, AuthError> {
        let freshness = self.freshness;
        let fresh = self.age(now).is_some_and(|a| a < freshness.ttl_ms);
        if !fresh && self.may_fetch(now) {
            self.try_fetch(http, now).await;
        }
        let usable = self
            .age(now)
            .is_some_and(|a| a < freshness.ttl_ms.saturating_add(freshness.max_stale_ms));
        if !usable {
            return Err(AuthError::KeysUnavailable);
        }
        if let Some(k) = self.find(kid, want_rsa) {
            return Ok(k);
        }
        let settled = self.age(now).is_some_and(|a| a >= MIN_REFETCH_MS);
        if settled && self.may_fetch(now) && self.try_fetch(http, now).await {
            if let Some(k) = self.find(kid, want_rsa) {
                return Ok(k);
            }
        }
        Err(AuthError::UnknownKey)
    }

    /// Checks an RS256 or ES256 signature with the issuer's key.
    pub(super) async fn verify(
        &self,
        signed: &Signed<'_>,
        http: &dyn HttpClient,
        verifier: &dyn SignatureVerifier,
        now: Timestamp,
    ) -> Result<(), AuthError> {
        let want_rsa = signed.alg == Algorithm::Rs256;
        let key = self.key(signed.kid, want_rsa, http, now).await?;
        let ok = verifier
            .verify(signed.alg, &key.key, signed.input, signed.signature)
            .await;
        ok.then_some(()).ok_or(AuthError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;
    use p256::ecdsa::signature::Signer as _;
    use rsa::pkcs1v15;
    use rsa::rand_core::OsRng;
    use rsa::signature::SignatureEncoding as _;
    use rsa::traits::PublicKeyParts as _;
    use serde_json::{json, Value};

    use super::*;
    use crate::auth::{JwtSettings, JwtVerifier};
    use crate::testing::{respond, FakeClock, FakeHttp, RustCryptoVerifier, Scripted};

    const NOW: u64 = 1_800_000_000;
    const URL: &str = "https://issuer.example/.well-known/jwks.json";

    struct Keys {
        rsa: rsa::RsaPrivateKey,
        ec: p256::ecdsa::SigningKey,
    }

    fn keys() -> Keys {
        Keys {
            rsa: rsa::RsaPrivateKey::new(&mut OsRng, 2048).unwrap(),
            ec: p256::ecdsa::SigningKey::random(&mut OsRng),
        }
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn rsa_jwk(k: &rsa::RsaPrivateKey, kid: &str) -> Value {
        let p = k.to_public_key();
        json!({"kty":"RSA","kid":kid,"use":"sig","alg":"RS256","n":b64(&p.n().to_bytes_be()),"e":b64(&p.e().to_bytes_be())})
    }

    fn ec_jwk(k: &p256::ecdsa::SigningKey, kid: &str) -> Value {
        let point = k.verifying_key().to_encoded_point(false);
        json!({"kty":"EC","kid":kid,"use":"sig","crv":"P-256","x":b64(point.x().unwrap()),"y":b64(point.y().unwrap())})
    }

    fn set(keys: &[Value]) -> String {
        json!({ "keys": keys }).to_string()
    }

    fn token(alg: &str, kid: &str, keys: &Keys, sub: &str) -> String {
        let h = b64(json!({"alg":alg,"kid":kid,"typ":"JWT"})
            .to_string()
            .as_bytes());
        let p = b64(json!({"sub":sub,"exp":NOW + 300}).to_string().as_bytes());
        let input = format!("{h}.{p}");
        let sig = match alg {
            "RS256" => pkcs1v15::SigningKey::<sha2::Sha256>::new(keys.rsa.clone())
                .sign(input.as_bytes())
                .to_vec(),
            _ => {
                let s: p256::ecdsa::Signature = keys.ec.sign(input.as_bytes());
                s.to_bytes().to_vec()
            }
        };
        format!("{input}.{}", b64(&sig))
    }

    struct Issuer {
        settings: JwtSettings,
        cache: JwksCache,
        clock: FakeClock,
    }

    impl Issuer {
        fn new() -> Self {
            Self {
                settings: JwtSettings {
                    jwks_url: Some(URL.into()),
                    jwks_ttl_ms: 600_000,
                    jwks_max_stale_ms: 3_600_000,
                    ..Default::default()
                },
                cache: JwksCache::new(URL.into(), 600_000, 3_600_000),
                clock: FakeClock::at(NOW * 1000),
            }
        }

        fn verify(&self, token: &str, script: Vec<Scripted>) -> (Result<String, AuthError>, usize) {
            let http = FakeHttp::new(&self.clock, script);
            let v =
                JwtVerifier::new(&self.settings).with_jwks(&self.cache, &http, &RustCryptoVerifier);
            let out = block_on(v.verify(token, crate::domain::Clock::now(&self.clock)))
                .map(|u| u.as_str().to_owned());
            (out, http.calls())
        }
    }

    #[test]
    fn rs256_and_es256_tokens_verify_against_the_published_keys_which_are_cached() {
        let k = keys();
        let issuer = Issuer::new();
        let jwks = set(&[rsa_jwk(&k.rsa, "r1"), ec_jwk(&k.ec, "e1")]);
        assert_eq!(
            issuer.verify(
                &token("RS256", "r1", &k, "u_rsa"),
                vec![respond(200, &jwks)]
            ),
            (Ok("u_rsa".into()), 1)
        );
        assert_eq!(
            issuer.verify(&token("ES256", "e1", &k, "u_ec"), vec![]),
            (Ok("u_ec".into()), 0)
        );
    }

    #[test]
    fn an_unknown_kid_triggers_one_refetch_then_is_refused_without_more() {
        let (old, new) = (keys(), keys());
        let issuer = Issuer::new();
        let first = set(&[rsa_jwk(&old.rsa, "r1")]);
        assert!(issuer
            .verify(&token("RS256", "r1", &old, "u"), vec![respond(200, &first)])
            .0
            .is_ok());
        // The issuer rotated: the new kid is found after one refetch.
        issuer.clock.advance(MIN_REFETCH_MS);
        let rotated = set(&[rsa_jwk(&old.rsa, "r1"), rsa_jwk(&new.rsa, "r2")]);
        assert_eq!(
            issuer.verify(
                &token("RS256", "r2", &new, "u2"),
                vec![respond(200, &rotated)]
            ),
            (Ok("u2".into()), 1)
        );
        // A kid nobody publishes: one refetch, then no more for a while.
        issuer.clock.advance(MIN_REFETCH_MS);
        assert_eq!(
            issuer.verify(
                &token("RS256", "forged", &new, "x"),
                vec![respond(200, &rotated)]
            ),
            (Err(AuthError::UnknownKey), 1)
        );
        assert_eq!(
            issuer.verify(&token("RS256", "forged2", &new, "x"), vec![]),
            (Err(AuthError::UnknownKey), 0)
        );
    }

    #[test]
    fn a_token_signed_by_another_key_with_a_known_kid_is_refused() {
        let (real, forger) = (keys(), keys());
        let issuer = Issuer::new();
        let jwks = set(&[rsa_jwk(&real.rsa, "r1"), ec_jwk(&real.ec, "e1")]);
        assert_eq!(
            issuer
                .verify(
                    &token("RS256", "r1", &forger, "admin"),
                    vec![respond(200, &jwks)]
                )
                .0,
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            issuer
                .verify(&token("ES256", "e1", &forger, "admin"), vec![])
                .0,
            Err(AuthError::BadSignature)
        );
        // An RSA kid named in an ES256 token is not used for it.
        assert_eq!(
            issuer
                .verify(&token("ES256", "r1", &real, "u"), vec![respond(200, &jwks)])
                .0,
            Err(AuthError::UnknownKey)
        );
    }

    #[test]
    fn an_unreachable_key_set_is_reported_and_weak_keys_are_ignored() {
        let k = keys();
        let issuer = Issuer::new();
        assert_eq!(
            issuer
                .verify(&token("RS256", "r1", &k, "u"), vec![respond(503, "")])
                .0,
            Err(AuthError::KeysUnavailable)
        );
        // An issuer that is down is not asked again on every request.
        assert_eq!(
            issuer.verify(&token("RS256", "r1", &k, "u"), vec![]),
            (Err(AuthError::KeysUnavailable), 0)
        );
        issuer.clock.advance(MIN_REFETCH_MS);
        let weak = rsa::RsaPrivateKey::new(&mut OsRng, 1024).unwrap();
        let weak_keys = Keys {
            rsa: weak,
            ec: k.ec.clone(),
        };
        let jwks = set(&[rsa_jwk(&weak_keys.rsa, "weak")]);
        assert_eq!(
            issuer
                .verify(
                    &token("RS256", "weak", &weak_keys, "u"),
                    vec![respond(200, &jwks)]
                )
                .0,
            Err(AuthError::UnknownKey)
        );
    }

    #[test]
    fn while_the_issuer_is_down_the_last_good_set_serves_for_a_bounded_time() {
        let k = keys();
        let issuer = Issuer {
            cache: JwksCache::new(URL.into(), 20_000, 60_000),
            ..Issuer::new()
        };
        let jwks = set(&[rsa_jwk(&k.rsa, "r1")]);
        let t = || token("RS256", "r1", &k, "u");
        assert_eq!(
            issuer.verify(&t(), vec![respond(200, &jwks)]),
            (Ok("u".into()), 1)
        );
        // Past the TTL the set is refetched; the issuer fails, the cached set still serves.
        issuer.clock.advance(30_000);
        assert_eq!(
            issuer.verify(&t(), vec![respond(503, "")]),
            (Ok("u".into()), 1)
        );
        // ... without asking the failing issuer on every request.
        assert_eq!(issuer.verify(&t(), vec![]), (Ok("u".into()), 0));
        issuer.clock.advance(MIN_REFETCH_MS);
        assert_eq!(
            issuer.verify(&t(), vec![Scripted::Refuse]),
            (Ok("u".into()), 1)
        );
        // Beyond TTL + max staleness the old set is no longer trusted.
        issuer.clock.advance(50_000);
        assert_eq!(
            issuer.verify(&t(), vec![respond(503, "")]),
            (Err(AuthError::KeysUnavailable), 1)
        );
        // The issuer recovers: the next fetch serves again.
        issuer.clock.advance(MIN_REFETCH_MS);
        assert_eq!(
            issuer.verify(&t(), vec![respond(200, &jwks)]),
            (Ok("u".into()), 1)
        );
        // A broken answer with no usable key does not replace the good set.
        issuer.clock.advance(25_000);
        assert_eq!(
            issuer.verify(&t(), vec![respond(200, r#"{"keys":[]}"#)]),
            (Ok("u".into()), 1)
        );
    }

    /// An issuer whose first answer is slow enough for a second request to arrive while
    /// the first one's fetch is under way: it runs that request from inside the fetch.
    struct SlowFirstFetch<'a> {
        jwks: String,
        cache: &'a JwksCache,
        settings: &'a JwtSettings,
        second: String,
        second_result: RefCell<Option<Result<String, AuthError>>>,
        calls: Cell<usize>,
    }

    #[async_trait::async_trait(?Send)]
    impl crate::http::HttpClient for SlowFirstFetch<'_> {
        async fn send(
            &self,
            _: HttpRequest,
            _: u64,
        ) -> Result<crate::http::HttpResponse, crate::http::HttpError> {
            self.calls.set(self.calls.get() + 1);
            if self.calls.get() == 1 {
                let v = JwtVerifier::new(self.settings).with_jwks(
                    self.cache,
                    self,
                    &RustCryptoVerifier,
                );
                let now = Timestamp::from_unix_seconds(NOW);
                let r = v
                    .verify(&self.second, now)
                    .await
                    .map(|u| u.as_str().to_owned());
                *self.second_result.borrow_mut() = Some(r);
            }
            Ok(crate::http::HttpResponse {
                status: 200,
                headers: vec![],
                body: self.jwks.clone().into_bytes(),
            })
        }
    }

    #[test]
    fn a_request_arriving_while_a_cold_isolate_fetches_is_not_refused() {
        let k = keys();
        let issuer = Issuer::new();
        let http = SlowFirstFetch {
            jwks: set(&[rsa_jwk(&k.rsa, "r1")]),
            cache: &issuer.cache,
            settings: &issuer.settings,
            second: token("RS256", "r1", &k, "second"),
            second_result: RefCell::new(None),
            calls: Cell::new(0),
        };
        let v =
            JwtVerifier::new(&issuer.settings).with_jwks(&issuer.cache, &http, &RustCryptoVerifier);
        let now = Timestamp::from_unix_seconds(NOW);
        let first = block_on(v.verify(&token("RS256", "r1", &k, "first"), now));
        assert_eq!(first.map(|u| u.as_str().to_owned()), Ok("first".into()));
        assert_eq!(*http.second_result.borrow(), Some(Ok("second".into())));
    }

    #[test]
    fn without_a_jwks_url_only_hs256_is_accepted() {
        let k = keys();
        let mut issuer = Issuer::new();
        issuer.settings.jwks_url = None;
        // No URL, no cache: the verifier knows no key set.
        assert!(JwksCache::for_settings(&issuer.settings).is_none());
        let now = crate::domain::Clock::now(&issuer.clock);
        let out = block_on(
            JwtVerifier::new(&issuer.settings).verify(&token("RS256", "r1", &k, "u"), now),
        );
        assert_eq!(out, Err(AuthError::UnsupportedAlgorithm));
    }
}
