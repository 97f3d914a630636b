//! Where a use of a key is recorded: every resolve, proxied call and realtime minting leaves one
//! `credential.used` event, whatever its outcome, saying whose key served (a user's
//! credential, or the system's and why), with which model and, for the proxy, which
//! operation and what the provider answered. The event changes nothing, so it goes whole
//! onto the audit queue after the answer (`api::After::Send`); the chainer sets the
//! credential's `last_used_at` from it.

use serde_json::json;

use super::{Ask, FallbackReason, KeyInUse};
use crate::audit::{Facts, Source};
use crate::domain::{Credential, ProviderId};
use crate::providers::Operation;
use crate::system_keys::Tier;

/// What was asked for, before anything is decided (a refusal names it).
pub(super) fn asked(facts: &mut Facts, ask: &Ask<'_>) {
    if let Some(p) = ask.provider {
        facts.provider = Some(p);
    }
    if let Some(id) = ask.credential_id {
        facts.credential_id = Some(id.clone());
    }
}

/// A credential of the user's is about to serve (or turned out not to open).
pub(super) fn user_credential(facts: &mut Facts, credential: &Credential) {
    facts.about(&credential.id, Some(credential.provider));
}

/// The user's credential serves, with `model`.
pub(super) fn user_key(facts: &mut Facts, model: &Option<String>) {
    facts.source = Some(Source::User);
    facts.detail = Some(json!({ "model": model }));
}

/// The system key of `provider` serves, and why: the event names the system's key, not a
/// credential (one asked for, or one that would not open, is only mentioned).
pub(super) fn system_key(
    facts: &mut Facts,
    ask: &Ask<'_>,
    provider: ProviderId,
    reason: FallbackReason,
    tier: Tier,
    model: &Option<String>,
) {
    facts.provider = Some(provider);
    facts.source = Some(Source::System);
    facts.credential_id = None;
    facts.detail = Some(json!({
        "fallback_reason": reason, "tier": tier, "model": model,
        "requested_credential_id": ask.credential_id,
    }));
}

/// A proxied call reached the provider: which operation, the status it answered, and which
/// of the keys tried it was (1 unless a failover moved on from refused ones).
pub fn proxied(
    facts: &mut Facts,
    key: &KeyInUse,
    operation: &Operation,
    status: u16,
    attempt: u32,
) {
    facts.detail = Some(json!({
        "attempt": attempt,
        "operation": format!("{} {}", operation.method.as_str(), operation.path),
        "status": status,
        "model": key.model,
        "fallback_reason": key.fallback_reason,
        "tier": key.tier,
    }));
}

/// A realtime credential was asked of the provider: the minting's `detail` (operation
/// `realtime_token`, kind, model, lifetime; never the credential), the status it answered,
/// and which of the keys tried it was.
pub fn minted(
    facts: &mut Facts,
    key: &KeyInUse,
    mut detail: serde_json::Value,
    status: u16,
    attempt: u32,
) {
    detail["attempt"] = json!(attempt);
    detail["status"] = json!(status);
    detail["fallback_reason"] = json!(key.fallback_reason);
    detail["tier"] = json!(key.tier);
    facts.detail = Some(detail);
}

/// A realtime socket was asked of the provider: the session's `detail` (operation
/// `realtime_session`, the path; the socket's tally is added when it ends), the status the
/// upgrade was answered with (101: open), and which of the keys tried it was.
pub fn opened(facts: &mut Facts, key: &KeyInUse, path: &str, status: u16, attempt: u32) {
    facts.detail = Some(json!({
        "operation": "realtime_session",
        "path": path,
        "attempt": attempt,
        "status": status,
        "model": key.model,
        "fallback_reason": key.fallback_reason,
        "tier": key.tier,
    }));
}
