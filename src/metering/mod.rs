//! Metering: what each call a key serves uses, read from the provider's answer as it
//! streams past (never holding it back), in the units budgets count: requests, input and
//! output tokens, characters spoken, seconds of audio transcribed.

mod read;
mod sse;

pub use read::{spoken_characters, Dialect, Reader, MAX_JSON_BYTES};

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
