//! The configuration's shared vocabulary, on the ground floor so that every owner of a
//! section of the settings (auth, keys, providers, jobs, notify, system keys) speaks it
//! without reaching up to `config`, which gathers the sections.

/// Which deployment this is: production refuses what development allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Environment {
    Development,
    Staging,
    Production,
}

/// One problem with one variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}
