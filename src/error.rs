//! What can stop an operation, in the operations' own words. The HTTP layer turns each into
//! problem+json in exactly one place (`api/problem.rs`); jobs match on it.

use std::fmt;

use crate::domain::{
    Capability, CredentialId, CredentialStatus, Period, ProviderId, StoreError, Timestamp, Unit,
};
use crate::limits::{LimitScope, Refusal};
use crate::probe::Failure;

/// One field's problem in a request body or query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// Why an operation did not happen (nothing was written, unless a variant says otherwise).
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// No such object of the caller's: another user's is as missing as one that never was.
    NotFound(Option<&'static str>),
    /// What was asked for does not hold, field by field.
    Invalid(Vec<FieldError>),
    /// The provider named is not one this vault knows (with any other field's problem).
    UnknownProvider(Vec<FieldError>),
    /// The user already holds this key, as this credential.
    Duplicate(CredentialId),
    /// The user holds as many keys as they may.
    LimitReached(u32),
    /// A concurrent change got there first and must not be overwritten.
    Conflict {
        detail: &'static str,
        cause: Option<String>,
    },
    /// Moving a key to another destination needs the key in the same request.
    SecretRequired,
    /// The vault's own rate limit in `scope` refused it, before any provider was asked.
    RateLimited(LimitScope),
    /// An import entry left unchecked: its request spent its share of provider calls.
    NotChecked,
    /// The provider did not accept the key (its answer, cleaned).
    Refused {
        provider: ProviderId,
        failure: Failure,
    },
    /// Nothing may serve this call: the user must add a key.
    NoCredential(Box<NoCredential>),
    /// The call would start past a budget (nothing was counted, no provider was asked).
    BudgetExceeded(Box<BudgetExceeded>),
    /// The deployment lacks what this needs (a master key, a limiter binding, a setting).
    NotConfigured {
        detail: String,
        cause: Option<String>,
    },
    /// The store failed.
    Store(StoreError),
    /// A fault of the vault's own; `cause` is for the log only.
    Internal(String),
}

/// The budget a call would have passed: whose, over which period, in which unit, and when
/// it is whole again.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetExceeded {
    /// `system` (the operator's limit on system-key use) or `credential` (the user's own
    /// cap on a key).
    pub scope: &'static str,
    pub provider: ProviderId,
    pub credential_id: Option<CredentialId>,
    pub period: Period,
    pub unit: Unit,
    pub limit: f64,
    pub used: f64,
    pub resets_at: Timestamp,
    /// Seconds until `resets_at` (at least 1).
    pub retry_after_seconds: u64,
}

/// Why no key may serve a call: for whom, what was skipped, in words for the user.
#[derive(Debug, Clone, PartialEq)]
pub struct NoCredential {
    pub provider: Option<ProviderId>,
    pub capability: Capability,
    /// The user's credentials that could not be used, and why.
    pub skipped: Vec<(CredentialId, CredentialStatus)>,
    pub detail: String,
    /// For the log: which rule said no.
    pub cause: String,
}

impl Error {
    pub fn not_configured(detail: impl Into<String>) -> Self {
        Self::NotConfigured {
            detail: detail.into(),
            cause: None,
        }
    }

    pub fn conflict(detail: &'static str) -> Self {
        Self::Conflict {
            detail,
            cause: None,
        }
    }

    pub fn internal(cause: impl fmt::Display) -> Self {
        Self::Internal(cause.to_string())
    }

    /// The stable code the contract names this by (an audit event's `reason` too).
    pub fn code(&self) -> &'static str {
        match self {
            Error::NotFound(_) => "not_found",
            Error::Invalid(_) => "invalid_request",
            Error::UnknownProvider(_) => "unknown_provider",
            Error::Duplicate(_) => "duplicate_credential",
            Error::LimitReached(_) => "credential_limit_reached",
            Error::Conflict { .. } | Error::Store(StoreError::Conflict(_)) => "conflict",
            Error::SecretRequired => "secret_required",
            Error::RateLimited(_) => "rate_limited",
            Error::NotChecked => "not_checked",
            Error::Refused { failure, .. } => failure.code(),
            Error::NoCredential(_) => "no_credential",
            Error::BudgetExceeded(_) => "budget_exceeded",
            Error::NotConfigured { .. } => "not_configured",
            Error::Store(_) | Error::Internal(_) => "internal",
        }
    }
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Over(scope) => Error::RateLimited(scope),
            Refusal::Unavailable(scope, e) => {
                let what = if scope.is_system_key_use() {
                    "system-key uses"
                } else {
                    "live checks"
                };
                Error::NotConfigured {
                    detail: format!("The rate limiter for {what} is not available."),
                    cause: Some(e.to_string()),
                }
            }
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Store(e)
    }
}

/// What went wrong underneath, for a log line: never shown to a caller, never a secret
/// (store and platform messages, failure kinds, ids).
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::RateLimited(scope) => {
                let what = if scope.is_system_key_use() {
                    "system-key uses"
                } else {
                    "live checks"
                };
                write!(f, "the {} limit on {what} is reached", scope.as_str())
            }
            Error::Refused { provider, failure } => {
                write!(f, "{provider} check: {}", failure.kind())
            }
            Error::NoCredential(n) => f.write_str(&n.cause),
            Error::Conflict {
                cause: Some(cause), ..
            }
            | Error::NotConfigured {
                cause: Some(cause), ..
            }
            | Error::Internal(cause) => f.write_str(cause),
            Error::Conflict { detail, .. } => f.write_str(detail),
            Error::NotConfigured { detail, .. } => f.write_str(detail),
            Error::Store(e) => write!(f, "{e}"),
            other => f.write_str(other.code()),
        }
    }
}

/// At most `max` characters of user input echoed back in a message, without the
/// characters that would make it read as something else.
pub(crate) fn clip(s: &str, max: usize) -> String {
    s.chars()
        .filter(|c| !crate::redact::is_hidden(*c))
        .take(max)
        .collect()
}
