//! Domain vocabulary: identifiers, capabilities, credential records and their statuses.
//! Everything here is plain data that is valid by construction.

mod budget;
pub mod credential;
pub mod ids;
mod sealed;
mod settings;
mod store;
pub mod time;
pub mod wire;

pub use budget::{amount_json, Amounts, Budget, Period, Unit, UNITS};

pub use credential::{
    key_hint, texts_from_json, Cooldown, CooldownReason, Credential, CredentialParams,
    CredentialStatus, KeyColumns, Model, Preference, Quota,
};
pub use ids::{hex_bytes, BatchId, Capability, CredentialId, ProviderId, RequestId, UserId};
pub use sealed::{KeyVersion, Sealed};
#[cfg(test)]
pub(crate) use settings::read_vars;
pub use settings::{ConfigError, Environment, Vars};
pub use store::StoreError;
pub use time::{Clock, Timestamp};
