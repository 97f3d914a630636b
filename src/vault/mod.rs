//! The application layer: every operation on credentials and preferences, written once
//! for each path that needs it (the HTTP handlers today; resolve, the proxy, the job
//! consumers and the import next). Pure: it reaches the platform only through the ports.
//! Operations take typed commands (parsed once, at the edge of the API), fill in the
//! [`Facts`] of their audit event as they go, write that event with their change, and
//! answer in the operations' own [`Error`](crate::error::Error)s, which keep their cause for
//! the request's log line.
//!
//! [`Facts`]: crate::audit::Facts

mod commands;
mod credentials;
mod import;
mod import_store;
mod keys;
mod preferences;
pub mod resolution;
mod revalidation;
mod store;
mod usage;

pub use commands::{CredentialPatch, ImportCommand, ImportEntry, NewCredential};
pub use import::{
    EntryOutcome, EntryReport, ImportReport, RollbackReport, IMPORT_CALL_BUDGET,
    MAX_IMPORT_ENTRIES, MAX_VALIDATED_ENTRIES, ROLLBACK_CHUNK, UNCHECKED_WARNING,
};
pub use import_store::{BatchRow, BatchRows, ImportRow, ImportStore};
pub use keys::Rewrap;
pub use revalidation::Revalidated;
pub use store::{CredentialStore, Inserted, Occupancy, Written};
pub use usage::{KeyInUse, Verdict};

use crate::audit::Origin;
use crate::config::Config;
use crate::domain::Clock;
use crate::domain::UserId;
use crate::http::HttpClient;
use crate::limits::RateLimiter;
use crate::probe::Jitter;
use crate::system_keys::InfisicalCache;

/// Everything an operation may use: configuration and the platform behind the seams.
pub struct Vault<'a> {
    pub config: &'a Config,
    pub store: &'a dyn CredentialStore,
    pub http: &'a dyn HttpClient,
    pub clock: &'a dyn Clock,
    pub jitter: &'a dyn Jitter,
    /// Counts live provider checks per user and per client network.
    pub limiter: &'a dyn RateLimiter,
    /// Where notes go that are not errors (a key that no longer decrypts). Never a secret.
    pub log: &'a dyn Fn(&str),
    /// Infisical's per-isolate cache, when system keys come from there.
    pub infisical: Option<&'a InfisicalCache>,
}

/// Who an operation acts for, and where the request came from.
pub struct Caller<'a> {
    pub user: &'a UserId,
    /// What the per-address live-check limit counts: the client's address, an IPv6 one
    /// cut to its /64.
    pub network: &'a str,
    /// The actor and request every event of this request carries.
    pub origin: &'a Origin,
}
