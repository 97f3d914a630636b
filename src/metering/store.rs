//! Where metered usage is kept: the `usage` table's seam (D1 in `edge/d1/usage.rs`, memory
//! in the tests), what one call adds to it, the reads of it, and [`record`], the hand-off
//! the API makes after a call's answer.
//!
//! A row counts one user's calls on one UTC day with one key (a credential, or the
//! operator's key for the provider), one source and one model. Its credential id is only a
//! value: deleting the credential later leaves its usage in place.

use async_trait::async_trait;

use super::Usage;
use crate::audit::Source;
use crate::domain::{CredentialId, ProviderId, StoreError, Timestamp, UserId};

/// What one call a key served used, ready to be counted: one more request, and its usage
/// added to its row's counters (a call whose usage did not arrive whole counts as
/// `incomplete` too, its partial counts added all the same).
#[derive(Clone, Debug, PartialEq)]
pub struct Metered {
    pub user_id: UserId,
    /// When the call was made: its UTC day is the row's.
    pub at: Timestamp,
    pub provider: ProviderId,
    pub source: Source,
    /// The user's credential that served; `None` for a system key.
    pub credential_id: Option<CredentialId>,
    /// The model the call asked for or the provider said served, when known.
    pub model: Option<String>,
    pub usage: Usage,
}

impl Metered {
    /// The row's day, `YYYY-MM-DD` in UTC.
    pub fn day(&self) -> String {
        self.at.utc_day()
    }

    /// The row's credential column: the credential's id, or [`SYSTEM_KEY`].
    pub fn credential_column(&self) -> &str {
        self.credential_id
            .as_ref()
            .map_or(SYSTEM_KEY, CredentialId::as_str)
    }

    /// The row's model column: the model, or [`NO_MODEL`].
    pub fn model_column(&self) -> &str {
        self.model.as_deref().unwrap_or(NO_MODEL)
    }

    /// The seconds of audio to add: a value no count can be (negative, not a number) adds
    /// none.
    pub fn audio_seconds(&self) -> f64 {
        let s = self.usage.audio_seconds;
        if s.is_finite() && s > 0.0 {
            s
        } else {
            0.0
        }
    }

    /// What the call adds to `incomplete`.
    pub fn incomplete(&self) -> u64 {
        u64::from(self.usage.incomplete)
    }
}

/// The credential column of a system key's row (the key is part of the row's identity, so
/// it is never null).
pub const SYSTEM_KEY: &str = "";
/// The model column of a call whose model is not known.
pub const NO_MODEL: &str = "";

crate::wire_enum! {
    /// What a listing sums by: the rows' other keys are summed over (and left out).
    pub enum GroupBy {
        /// Per day.
        Day = "day",
        /// Per key: a credential (or a provider's system key), with its provider and source.
        Credential = "credential",
        /// Per provider.
        Provider = "provider",
        /// Per model, within its provider.
        Model = "model",
    }
}

/// The keys a listing keeps (besides the user, which it always keeps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kept {
    pub day: bool,
    pub provider: bool,
    pub credential: bool,
    pub source: bool,
    pub model: bool,
}

impl Kept {
    /// What `group_by` keeps; every key without one.
    pub fn by(group_by: Option<GroupBy>) -> Self {
        let only = |day, provider, credential, source, model| Self {
            day,
            provider,
            credential,
            source,
            model,
        };
        match group_by {
            None => only(true, true, true, true, true),
            Some(GroupBy::Day) => only(true, false, false, false, false),
            Some(GroupBy::Credential) => only(false, true, true, true, false),
            Some(GroupBy::Provider) => only(false, true, false, false, false),
            Some(GroupBy::Model) => only(false, true, false, false, true),
        }
    }
}

/// A read of the usage table: the rows of days `from` to `to` (inclusive, UTC,
/// `YYYY-MM-DD`), ordered by user, then day, provider, credential, source and model.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageQuery {
    /// One user's rows; every user's when `None` (operators only).
    pub user: Option<UserId>,
    pub source: Option<Source>,
    pub from: String,
    pub to: String,
    pub group_by: Option<GroupBy>,
    /// At most this many rows.
    pub limit: u32,
}

/// One row of a listing. A key the listing summed over is `None`; so is the credential of
/// a system key's row and the model of a call whose model is not known.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UsageRow {
    pub user_id: String,
    pub day: Option<String>,
    pub provider: Option<String>,
    pub credential_id: Option<String>,
    pub source: Option<Source>,
    pub model: Option<String>,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub characters: u64,
    pub audio_seconds: f64,
    /// How many of the calls counted had usage that did not arrive whole.
    pub incomplete: u64,
}

/// The usage table.
#[async_trait(?Send)]
pub trait UsageStore {
    /// Counts one call: its row (created at zero if new) gains one request and the call's
    /// usage, in one atomic statement, so concurrent calls never lose a count.
    async fn add(&self, call: &Metered) -> Result<(), StoreError>;
    /// The rows `query` asks for, summed as it groups them.
    async fn list(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError>;
}

/// Counts one call after its answer: a store that fails is logged (the provider and the
/// store's error, never a key), never passed on; the answer has gone already.
pub async fn record(store: &dyn UsageStore, call: &Metered, log: &dyn Fn(&str)) {
    if let Err(e) = store.add(call).await {
        log(&format!(
            "usage of a {} call not recorded: {e}",
            call.provider
        ));
    }
}
