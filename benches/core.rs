//! Native micro-benchmarks of the core's hot paths: the HKDF data-key derivation, sealing
//! and opening a key (HKDF data key + AES-256-GCM), the duplicate fingerprint
//! (HMAC-SHA256), HS256 token verification, and linking an audit event into its user's hash chain. Not part of the test command:
//! `cargo bench --bench core` prints one line per path (median of 7 timed batches, each of
//! enough iterations to last about 50 ms, after a warm-up). Speeds here are the host's;
//! the Worker runs the same code compiled to wasm, a few times slower.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use byok_vault::audit::{link, Action, Actor, ActorType, AuditEvent, ChainHead};
use byok_vault::auth::{JwtSettings, JwtVerifier};
use byok_vault::crypto::{fingerprint, open, seal, Binding, MasterKeys, SecretKey};
use byok_vault::domain::{CredentialId, Timestamp, UserId};
use byok_vault::providers;

/// Times `f`: nanoseconds per call, the median of 7 batches.
fn measure(name: &str, mut f: impl FnMut()) {
    let start = Instant::now();
    let mut warm = 0u64;
    while start.elapsed() < Duration::from_millis(100) {
        f();
        warm += 1;
    }
    let per_batch = (warm / 2).max(1);
    let mut samples: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            t.elapsed().as_nanos() as f64 / per_batch as f64
        })
        .collect();
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (min, median, max) = (samples[0], samples[3], samples[6]);
    println!(
        "{name:<34} {median:>10.0} ns/op   (min {min:.0}, max {max:.0}, {per_batch} per batch)"
    );
}

fn hs256(claims: &str, secret: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims);
    let input = format!("{header}.{payload}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

fn main() {
    let keys = MasterKeys::from_config(
        None,
        None,
        Some("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="),
    )
    .unwrap();
    let user = UserId::parse("user_8f3k2b").unwrap();
    let id = CredentialId::from_random([7; 16]);
    let provider = providers::find("openai").unwrap().info().id;
    let key = SecretKey::new("sk-proj-0123456789abcdef0123456789abcdef0123456789".into());
    let binding = Binding::new(&user, &id, provider);
    let sealed = seal(&keys, &binding, &key).unwrap();

    println!("byok-vault core hot paths (native, release)");
    // The derivation every key operation starts with (envelope.rs `data_key`): the user's
    // data key from the master key.
    let master = [7u8; 32];
    let info = format!("credential|{}", user.as_str());
    measure("HKDF-SHA256 data-key derivation", || {
        let mut out = [0u8; 32];
        hkdf::Hkdf::<Sha256>::new(None, black_box(&master))
            .expand(black_box(info.as_bytes()), &mut out)
            .unwrap();
        black_box(out);
    });
    measure("seal (HKDF + AES-256-GCM)", || {
        black_box(seal(&keys, &binding, black_box(&key)).unwrap());
    });
    measure("open (HKDF + AES-256-GCM)", || {
        black_box(open(&keys, &binding, black_box(&sealed)).unwrap());
    });
    measure("fingerprint (HKDF + HMAC-SHA256)", || {
        black_box(fingerprint(
            &keys,
            keys.active(),
            &user,
            provider,
            black_box(&key),
        ));
    });

    let secret = b"0123456789abcdef0123456789abcdef";
    let settings = JwtSettings {
        hs256_secret: Some(Zeroizing::new(secret.to_vec())),
        issuer: None,
        audience: Some("https://app.example".into()),
        jwks_url: None,
        jwks_ttl_ms: 600_000,
        jwks_max_stale_ms: 3_600_000,
    };
    let verifier = JwtVerifier::new(&settings);
    let now = Timestamp::from_millis(1_800_000_000_000);
    let token = hs256(
        r#"{"sub":"user_8f3k2b","exp":1800000600,"aud":"https://app.example"}"#,
        secret,
    );
    measure("JWT HS256 verification", || {
        let user = futures::executor::block_on(verifier.verify(black_box(&token), now));
        black_box(user.unwrap());
    });

    let head = ChainHead::genesis();
    let actor = Actor {
        kind: ActorType::User,
        id: "user_8f3k2b".into(),
    };
    let mut event = AuditEvent::new("e_1".into(), now, &user, Action::CredentialCreated, actor);
    event.credential_id = Some(id.clone());
    event.provider = Some("openai".into());
    measure("audit event hashing (chain link)", || {
        black_box(link(&head, black_box(event.clone())));
    });
}
