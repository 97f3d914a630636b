//! Realtime voice: minting a provider's own short-lived browser credential from a key in
//! use, so a browser talks to the provider directly and the long-lived key never leaves
//! the vault. This module owns the lifetime rule (the shortest that works: asked for,
//! capped by the provider's limit and `REALTIME_TOKEN_MAX_SECONDS`), the minting request
//! as it goes out, and the reading of the answer into a credential, its expiry and where
//! the browser connects; each provider's facts are in `providers::realtime` and its own
//! module. Which key, budgets and judging a refused key are the caller's, as on the proxy.
//! A session the vault proxies itself is tallied in [`socket`].

pub mod socket;

use serde_json::Value;

use crate::crypto::SecretKey;
use crate::domain::{Timestamp, Vars};
use crate::http::{HttpRequest, HttpResponse, Method};
use crate::providers::realtime::{Connect, Minting, Realtime, RealtimeKind};
use crate::providers::{ProviderInfo, Target};
use crate::redact::ProviderText;

/// `REALTIME_MAX_SECONDS`'s default: an hour.
pub const DEFAULT_SESSION_MAX_SECONDS: u64 = 3600;
/// `REALTIME_TOKEN_MAX_SECONDS`'s default: ten minutes.
pub const DEFAULT_TOKEN_MAX_SECONDS: u64 = 600;
/// The longest credential any provider minted here grants when asked (OpenAI's two hours);
/// the setting may not ask for more.
const TOKEN_MAX_SECONDS_LIMIT: u64 = 7200;
/// The longest credential text taken from a provider (a JWT is well under this).
pub const MAX_TOKEN_CHARS: usize = 8192;

/// The realtime section of the configuration.
pub struct RealtimeSettings {
    /// The longest lifetime the vault asks a provider for (`REALTIME_TOKEN_MAX_SECONDS`).
    pub token_max_seconds: u64,
    /// The longest a proxied session lasts (`REALTIME_MAX_SECONDS`).
    pub session_max_seconds: u64,
}

impl RealtimeSettings {
    pub fn parse(vars: &mut Vars) -> RealtimeSettings {
        RealtimeSettings {
            token_max_seconds: vars.number(
                "REALTIME_TOKEN_MAX_SECONDS",
                DEFAULT_TOKEN_MAX_SECONDS,
                10,
                TOKEN_MAX_SECONDS_LIMIT,
            ),
            session_max_seconds: vars.number(
                "REALTIME_MAX_SECONDS",
                DEFAULT_SESSION_MAX_SECONDS,
                1,
                86_400,
            ),
        }
    }
}

/// The lifetime asked of the provider: what the caller asked for (else the vault's
/// longest), never past the vault's setting nor the provider's limit, never under the
/// provider's shortest. A provider that fixes its own lifetime gets its own.
pub fn ttl_seconds(realtime: &Realtime, asked: Option<u64>, vault_max: u64) -> u64 {
    if realtime.fixed {
        return realtime.max_seconds;
    }
    asked
        .unwrap_or(vault_max)
        .min(vault_max)
        .min(realtime.max_seconds)
        .max(realtime.min_seconds)
}

/// What a session is asked for (already checked against the provider's kinds).
pub struct Ask<'a> {
    pub kind: RealtimeKind,
    pub model: Option<&'a str>,
    pub voice_id: Option<&'a str>,
    pub ttl_seconds: Option<u64>,
}

/// One minting of `info`'s credential with `key`, where `target` says.
pub struct Mint<'a> {
    pub info: &'static ProviderInfo,
    pub realtime: &'static Realtime,
    pub minting: Minting<'a>,
}

impl<'a> Mint<'a> {
    pub fn new(
        info: &'static ProviderInfo,
        realtime: &'static Realtime,
        ask: &Ask<'a>,
        vault_max: u64,
        target: &'a Target<'a>,
        now: Timestamp,
    ) -> Self {
        Self {
            info,
            realtime,
            minting: Minting {
                kind: ask.kind,
                model: ask.model,
                voice_id: ask.voice_id,
                ttl_seconds: ttl_seconds(realtime, ask.ttl_seconds, vault_max),
                now,
                target,
            },
        }
    }

    /// The provider's minting call, with `key` where its operations carry it.
    pub fn request(&self, key: &SecretKey) -> HttpRequest {
        let call = (self.realtime.mint)(&self.minting);
        let mut headers = Vec::new();
        if let Some((name, value)) = self.info.auth.header(key) {
            headers.push((name.to_owned(), value));
        }
        let body = match call.body {
            Some(v) => {
                headers.push(("content-type".into(), "application/json".into()));
                v.to_string().into_bytes()
            }
            None => Vec::new(),
        };
        HttpRequest {
            method: Method::Post,
            url: self.minting.target.url_at(call.endpoint, &call.path),
            headers,
            body: Some(body),
            max_response_bytes: 64 * 1024,
        }
    }

    /// The credential in a 2xx answer, when it is one the browser can carry (printable
    /// ASCII, no spaces, bounded) and does not quote the key it was minted with.
    pub fn read(&self, answer: &HttpResponse, key: &SecretKey) -> Option<Minted> {
        let token = (self.realtime.read)(answer)?;
        let value = token.value;
        let carriable = !value.is_empty()
            && value.len() <= MAX_TOKEN_CHARS
            && value.bytes().all(|b| b.is_ascii_graphic());
        if !carriable || ProviderText::new(key).quotes_key(&value) {
            return None;
        }
        let now = self.minting.now;
        let ttl = self.minting.ttl_seconds;
        let expires_at = match (token.expires_at_unix, token.expires_in) {
            (Some(at), _) => Timestamp::from_unix_seconds(at),
            (None, Some(secs)) => now.plus_millis(secs.saturating_mul(1000)),
            (None, None) => now.plus_millis(ttl * 1000),
        };
        let connect = (self.realtime.connect)(&self.minting, &value);
        Some(Minted {
            token: SecretKey::new(value),
            expires_at,
            connect,
        })
    }

    /// What the audit event says of the minting: never the credential.
    pub fn detail(&self) -> Value {
        serde_json::json!({
            "operation": "realtime_token",
            "kind": self.minting.kind,
            "model": self.minting.model,
            "ttl_seconds": self.minting.ttl_seconds,
        })
    }
}

/// A minted credential, where the browser uses it, and until when.
pub struct Minted {
    /// Held like a key: never printed, zeroed when dropped.
    pub token: SecretKey,
    pub expires_at: Timestamp,
    pub connect: Connect,
}
