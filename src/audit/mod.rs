//! The audit trail: events, their canonical form, the per-user hash chain and its check.
//!
//! Each user's events form a chain: `seq` counts up from 1 and
//! `hash = hex(SHA-256(prev_hash ‖ canonical JSON of the event))`, where the first
//! `prev_hash` is 64 zeros (or a retention checkpoint). Editing, removing or reordering a
//! stored event breaks the chain at that `seq`; the head and the checkpoint that say where
//! the chain ends and starts are sealed under the master key (`anchor`), so a chain cannot
//! be recomputed, cut short or moved by whoever can only write the database.

mod anchor;
mod canonical;
mod chain;
mod consumer;
mod facts;
mod outbox;
mod store;
mod trail;
mod verify;

use std::cell::Cell;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use anchor::{
    settle, Anchor, AnchorKind, Anchors, Heads, LegacyWindow, Resealed, SealCheck, Sealer, Settled,
    Unsettled, BROKEN_SEAL, CLOSING_MS,
};
pub use canonical::canonical_json;
pub use chain::{chain, link, ChainHead, ChainedEvent, GENESIS_HASH};
pub use consumer::{
    consume, consume_dead_letters, nudge_body, parse_message, Consumed, Disposition, Message,
    CONSUMER_ROUNDS,
};
pub use facts::{Caller, Facts, Origin};
pub use outbox::{drain, drain_rounds, plan, ChainPlan, Drained, PendingEvent, ROUND_SIZE};
pub use store::{AuditQuery, AuditSink, AuditStore};
pub use trail::{Head, Page, Trail, Verified};
pub use verify::{judge_anchor, Break, Verification, Verifier};

use crate::domain::{hex_bytes, CredentialId, RequestId, Timestamp, UserId};

crate::wire_enum! {
    /// What was done.
    pub enum Action {
        CredentialCreated = "credential.created",
        CredentialViewed = "credential.viewed",
        CredentialUpdated = "credential.updated",
        CredentialRotated = "credential.rotated",
        CredentialDeleted = "credential.deleted",
        CredentialValidated = "credential.validated",
        CredentialUsed = "credential.used",
        ModelSelected = "model.selected",
        PreferenceUpdated = "preference.updated",
        CredentialImported = "credential.imported",
        MasterKeyRotated = "master_key.rotated",
        /// An operator changed a user's budgets on system-key use.
        BudgetUpdated = "budget.updated",
    }
}

crate::wire_enum! {
    /// Whether the acting party is a user or a backend service.
    pub enum ActorType {
        User = "user",
        Service = "service",
    }
}

/// Who did it: a user (their `sub`) or a backend service (its token's name).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    #[serde(rename = "type")]
    pub kind: ActorType,
    pub id: String,
}

crate::wire_enum! {
    pub enum Outcome {
        Success = "success",
        Failure = "failure",
    }
}

crate::wire_enum! {
    /// Whose key was used (`credential.used` only).
    pub enum Source {
        User = "user",
        System = "system",
    }
}

/// One audited operation, before it is chained. Holds no key, ciphertext, token or
/// master key: only ids, codes and statuses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: String,
    /// Unix milliseconds.
    pub at: u64,
    /// Whose chain the event belongs to.
    pub user_id: UserId,
    pub action: Action,
    pub actor: Actor,
    pub credential_id: Option<CredentialId>,
    /// A provider id, kept as text: an event must read back (and verify) in any build,
    /// also one that no longer, or not yet, knows that provider.
    pub provider: Option<String>,
    pub outcome: Outcome,
    /// The error code when `outcome` is `failure`.
    pub reason: Option<String>,
    pub source: Option<Source>,
    pub request_id: Option<RequestId>,
    /// Small, action-specific facts (e.g. the previous and new status of a validation).
    #[serde(default)]
    pub detail: Option<Value>,
}

thread_local! {
    // Orders events made in the same millisecond by the same isolate.
    static COUNTER: Cell<u16> = const { Cell::new(0) };
}

/// A new event id: `ev_` + 12 hex digits of milliseconds + a 4-digit per-isolate counter
/// + 96 random bits, so ids sort by time within an isolate and are never guessable.
pub fn new_event_id(at: Timestamp, random: [u8; 12]) -> String {
    let n = COUNTER.with(|c| {
        let n = c.get();
        c.set(n.wrapping_add(1));
        n
    });
    format!("ev_{:012x}{n:04x}{}", at.as_millis(), hex_bytes(&random))
}

impl AuditEvent {
    /// An event for `user` with every optional member empty.
    pub fn new(id: String, at: Timestamp, user: &UserId, action: Action, actor: Actor) -> Self {
        Self {
            id,
            at: at.as_millis(),
            user_id: user.clone(),
            action,
            actor,
            credential_id: None,
            provider: None,
            outcome: Outcome::Success,
            reason: None,
            source: None,
            request_id: None,
            detail: None,
        }
    }

    /// An event from the JSON object serde writes for it: members it does not know are
    /// ignored, an optional one may be null or missing, anything else out of shape makes
    /// it no event. Read by hand: serde's reader of a `Value` (several KB of the wasm)
    /// served only this type. The array form serde also took is never written, and is
    /// no event here.
    pub fn from_json(v: &Value) -> Option<AuditEvent> {
        /// An optional member: null or missing is `None`; anything else must `read`.
        fn opt<'v, T>(
            v: &'v Value,
            name: &str,
            read: impl Fn(&'v Value) -> Option<T>,
        ) -> Option<Option<T>> {
            match v.get(name) {
                None | Some(Value::Null) => Some(None),
                Some(x) => read(x).map(Some),
            }
        }
        let text = |name: &str| v.get(name)?.as_str();
        let actor = v.get("actor")?;
        Some(AuditEvent {
            id: text("id")?.to_owned(),
            at: v.get("at")?.as_u64()?,
            user_id: UserId::parse(text("user_id")?)?,
            action: Action::parse(text("action")?)?,
            actor: Actor {
                kind: ActorType::parse(actor.get("type")?.as_str()?)?,
                id: actor.get("id")?.as_str()?.to_owned(),
            },
            credential_id: opt(v, "credential_id", |x| CredentialId::parse(x.as_str()?))?,
            provider: opt(v, "provider", |x| x.as_str().map(str::to_owned))?,
            outcome: Outcome::parse(text("outcome")?)?,
            reason: opt(v, "reason", |x| x.as_str().map(str::to_owned))?,
            source: opt(v, "source", |x| Source::parse(x.as_str()?))?,
            request_id: opt(v, "request_id", |x| RequestId::parse(x.as_str()?))?,
            detail: opt(v, "detail", |x| Some(x.clone()))?,
        })
    }

    /// Stands in for a stored row that no longer parses (say, an edited action): its hash
    /// cannot match the stored one, so verification reports that row as broken.
    pub fn unreadable(id: &str, user: &UserId) -> Self {
        Self {
            id: id.to_owned(),
            at: 0,
            user_id: user.clone(),
            action: Action::CredentialViewed,
            actor: Actor {
                kind: ActorType::User,
                id: String::new(),
            },
            credential_id: None,
            provider: None,
            outcome: Outcome::Failure,
            reason: Some("unreadable stored row".into()),
            source: None,
            request_id: None,
            detail: None,
        }
    }

    /// The JSON this event is hashed as, given its place in the chain.
    pub fn canonical(&self, seq: u64) -> String {
        let mut v = json!(self);
        v["seq"] = json!(seq);
        canonical_json(&v)
    }
}

#[cfg(test)]
mod tests;
