//! Infisical as a source of system keys. A machine identity (Universal Auth) lists the
//! secrets of one project, environment and path; each isolate keeps the `SYSTEM_KEY_*`
//! ones for `cache_ttl_ms`, so a request normally makes no call and a rotated secret is
//! picked up within the TTL. The access token is reused until shortly before it expires.
//!
//! Failures come in two kinds (Doppler's rule, not the SDKs'):
//! - an outage (5xx, 429, no answer, an unreadable answer): the last good set keeps
//!   serving, as tier `Cache`, until `max_stale_ms` after it was read, and Infisical is
//!   not asked again for `MIN_RETRY_MS` (or a 429's longer `retry-after`);
//! - a refusal (401, 403 other than an expired token, 404, 400, 422): the set and the token
//!   are dropped at once, since the identity may no longer read them, and Infisical is not
//!   asked again for the TTL (three failed logins in 30 s lock the identity for 5 min).
//!   An expired token (403 `TokenError`) gets one new login and one more list first.
//!
//! When nothing may serve, the Worker's secrets do. Each change of tier is logged once.
//! Requests of one isolate that arrive while a fetch is under way wait for it instead of
//! starting their own: one login and one list, however many requests a cold isolate gets.
//!
//! One file per idea: `settings.rs` (the `INFISICAL_*` variables), `client.rs` (the wire:
//! login, the list of secrets, what a failed answer means), `cache.rs` (the policy: when
//! to ask, what may serve, each change of tier logged once) and `single_flight.rs` (one
//! fetch at a time, the other requests waiting for it).

mod cache;
mod client;
mod settings;
mod single_flight;
#[cfg(test)]
mod testing;

pub use cache::{InfisicalCache, Served};
pub use client::Secrets;
pub use settings::InfisicalSettings;
