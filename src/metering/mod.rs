//! Metering: what each call a key serves uses, read from the provider's answer as it
//! streams past (never holding it back), in the units budgets count: requests, input and
//! output tokens, characters spoken, seconds of audio transcribed; and where it is kept
//! (`store.rs`: the usage table's seam, and [`record`], a call's hand-off to it).

mod read;
mod sse;
mod store;

pub use read::{spoken_characters, Dialect, Reader, MAX_JSON_BYTES};
pub use store::{
    record, GroupBy, Kept, Metered, UsageQuery, UsageRow, UsageStore, NO_MODEL, SYSTEM_KEY,
};

/// What one call used. A count the answer did not state stays 0 with `incomplete` set: a
/// usage that never arrived is never taken for none.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub characters: u64,
    pub audio_seconds: f64,
    /// The model the provider says served, when it says.
    pub model: Option<String>,
    /// The answer ended (or was cut) before its usage was read whole.
    pub incomplete: bool,
}
