//! The audit trail: events, their canonical form, the per-user hash chain and its check.
//!
//! Each user's events form a chain: `seq` counts up from 1 and
//! `hash = hex(SHA-256(prev_hash ‖ canonical JSON of the event))`, where the first
//! `prev_hash` is 64 zeros (or a retention checkpoint). Editing, removing or reordering a
//! stored event breaks the chain at that `seq`.

mod canonical;
mod chain;
mod consumer;
mod outbox;
mod verify;

use std::cell::Cell;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use canonical::canonical_json;
pub use chain::{chain, link, ChainHead, ChainedEvent, GENESIS_HASH};
pub use consumer::{
    consume, consume_dead_letters, nudge_body, parse_message, Disposition, Message, CONSUMER_ROUNDS,
};
pub use outbox::{drain, plan, ChainPlan, PendingEvent, ROUND_SIZE};
pub use verify::{Verification, Verifier};

use crate::domain::{hex_bytes, Timestamp, UserId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    #[serde(rename = "credential.created")]
    CredentialCreated,
    #[serde(rename = "credential.viewed")]
    CredentialViewed,
    #[serde(rename = "credential.updated")]
    CredentialUpdated,
    #[serde(rename = "credential.rotated")]
    CredentialRotated,
    #[serde(rename = "credential.deleted")]
    CredentialDeleted,
    #[serde(rename = "credential.validated")]
    CredentialValidated,
    #[serde(rename = "credential.used")]
    CredentialUsed,
    #[serde(rename = "model.selected")]
    ModelSelected,
    #[serde(rename = "preference.updated")]
    PreferenceUpdated,
    #[serde(rename = "credential.imported")]
    CredentialImported,
    #[serde(rename = "master_key.rotated")]
    MasterKeyRotated,
}

impl Action {
    pub const ALL: [Action; 11] = [
        Action::CredentialCreated,
        Action::CredentialViewed,
        Action::CredentialUpdated,
        Action::CredentialRotated,
        Action::CredentialDeleted,
        Action::CredentialValidated,
        Action::CredentialUsed,
        Action::ModelSelected,
        Action::PreferenceUpdated,
        Action::CredentialImported,
        Action::MasterKeyRotated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::CredentialCreated => "credential.created",
            Action::CredentialViewed => "credential.viewed",
            Action::CredentialUpdated => "credential.updated",
            Action::CredentialRotated => "credential.rotated",
            Action::CredentialDeleted => "credential.deleted",
            Action::CredentialValidated => "credential.validated",
            Action::CredentialUsed => "credential.used",
            Action::ModelSelected => "model.selected",
            Action::PreferenceUpdated => "preference.updated",
            Action::CredentialImported => "credential.imported",
            Action::MasterKeyRotated => "master_key.rotated",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == raw)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorType {
    User,
    Service,
}

impl ActorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorType::User => "user",
            ActorType::Service => "service",
        }
    }
}

/// Who did it: a user (their `sub`) or a backend service (its token's name).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    #[serde(rename = "type")]
    pub kind: ActorType,
    pub id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        }
    }
}

/// Whose key was used (`credential.used` only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    User,
    System,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::User => "user",
            Source::System => "system",
        }
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
    pub user_id: String,
    pub action: Action,
    pub actor: Actor,
    pub credential_id: Option<String>,
    pub provider: Option<String>,
    pub outcome: Outcome,
    /// The error code when `outcome` is `failure`.
    pub reason: Option<String>,
    pub source: Option<Source>,
    pub request_id: Option<String>,
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
            user_id: user.as_str().to_owned(),
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

    /// Stands in for a stored row that no longer parses (say, an edited action): its hash
    /// cannot match the stored one, so verification reports that row as broken.
    pub fn unreadable(id: &str, user_id: &str) -> Self {
        Self {
            id: id.to_owned(),
            at: 0,
            user_id: user_id.to_owned(),
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
