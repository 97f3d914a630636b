//! The validation engine: runs a provider's probe under an overall deadline, retrying
//! what is worth retrying and honouring the provider's back-off hints.

mod retry;

pub use retry::{
    google_retry_delay_ms, header_hint_ms, message_retry_delay_ms, Backoff, Jitter, SystemJitter,
};

use crate::domain::Clock;
use crate::domain::Timestamp;
use crate::http::{HttpClient, HttpError, HttpRequest, HttpResponse};

/// Why a key was not accepted (or a call did not get through). Messages are for people
/// and may quote the provider: `providers::check` cleans them before anyone sees them.
#[derive(Clone, Debug, PartialEq)]
pub enum Failure {
    InvalidKey(String),
    InsufficientScope(String),
    QuotaExhausted(String),
    RateLimited {
        retry_after_ms: u64,
        message: String,
    },
    Unreachable(String),
    ProviderError(String),
}

impl Failure {
    pub fn message(&self) -> &str {
        match self {
            Failure::InvalidKey(m)
            | Failure::InsufficientScope(m)
            | Failure::QuotaExhausted(m)
            | Failure::Unreachable(m)
            | Failure::ProviderError(m)
            | Failure::RateLimited { message: m, .. } => m,
        }
    }

    /// The outcome class, for logs and statuses.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::InvalidKey(_) => "invalid_key",
            Failure::InsufficientScope(_) => "insufficient_scope",
            Failure::QuotaExhausted(_) => "quota_exhausted",
            Failure::RateLimited { .. } => "rate_limited",
            Failure::Unreachable(_) => "unreachable",
            Failure::ProviderError(_) => "provider_error",
        }
    }

    /// The contract's code for a check that ended so (an audit event's `reason`, a
    /// problem's `code`).
    pub fn code(&self) -> &'static str {
        match self {
            Failure::InvalidKey(_) => "invalid_api_key",
            Failure::InsufficientScope(_) => "insufficient_scope",
            Failure::QuotaExhausted(_) => "quota_exhausted",
            Failure::RateLimited { .. } => "provider_rate_limited",
            Failure::Unreachable(_) => "provider_unreachable",
            Failure::ProviderError(_) => "provider_error",
        }
    }

    fn with_message(self, f: impl FnOnce(&str) -> String) -> Self {
        match self {
            Failure::InvalidKey(m) => Failure::InvalidKey(f(&m)),
            Failure::InsufficientScope(m) => Failure::InsufficientScope(f(&m)),
            Failure::QuotaExhausted(m) => Failure::QuotaExhausted(f(&m)),
            Failure::Unreachable(m) => Failure::Unreachable(f(&m)),
            Failure::ProviderError(m) => Failure::ProviderError(f(&m)),
            Failure::RateLimited {
                retry_after_ms,
                message,
            } => Failure::RateLimited {
                retry_after_ms,
                message: f(&message),
            },
        }
    }

    /// The same failure with its message made safe to store, log and show.
    pub fn cleaned(self, text: &crate::redact::ProviderText) -> Self {
        self.with_message(|m| text.clean(m, MAX_MESSAGE_CHARS))
    }
}

/// The longest failure message (or warning) kept from a provider.
pub const MAX_MESSAGE_CHARS: usize = 300;

/// How a provider module judges one response.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// A final answer the provider module reads itself (usually a 2xx).
    Accept,
    /// A final refusal: retrying cannot change it.
    Reject(Failure),
    /// A transient refusal. `hint_ms` is a wait found in the body (headers are read by
    /// the engine); `failure` is reported if the deadline leaves no room to retry.
    Retry {
        hint_ms: Option<u64>,
        failure: Failure,
    },
}

/// The classification every provider starts from for statuses it has nothing special
/// to say about: retry 408/429/500/502/503/504/529, refuse the rest.
pub fn classify_status(status: u16, provider: &str, message: &str) -> Verdict {
    let says = || format!("{provider} says: {message}");
    match status {
        200..=299 => Verdict::Accept,
        401 | 403 => Verdict::Reject(Failure::InvalidKey(says())),
        429 => Verdict::Retry {
            hint_ms: None,
            failure: Failure::RateLimited {
                retry_after_ms: 0,
                message: says(),
            },
        },
        408 | 500 | 502 | 503 | 504 | 529 => Verdict::Retry {
            hint_ms: None,
            failure: Failure::ProviderError(says()),
        },
        _ => Verdict::Reject(Failure::ProviderError(format!(
            "{provider} answered with unexpected status {status}: {message}"
        ))),
    }
}

/// Runs provider calls for one validation, all within one deadline.
pub struct Prober<'a> {
    http: &'a dyn HttpClient,
    clock: &'a dyn Clock,
    jitter: &'a dyn Jitter,
    deadline: Timestamp,
    attempt_timeout_ms: u64,
    backoff: Backoff,
    max_attempts: u32,
}

/// Attempts a call may take at most; bounds subrequests per invocation whatever the deadline.
const MAX_ATTEMPTS: u32 = 5;
/// Below this much time left, another attempt cannot get an answer back.
const MIN_ATTEMPT_MS: u64 = 50;

impl<'a> Prober<'a> {
    pub fn new(
        http: &'a dyn HttpClient,
        clock: &'a dyn Clock,
        jitter: &'a dyn Jitter,
        deadline_ms: u64,
        attempt_timeout_ms: u64,
    ) -> Self {
        let deadline = clock.now().plus_millis(deadline_ms);
        Self {
            http,
            clock,
            jitter,
            deadline,
            attempt_timeout_ms,
            backoff: Backoff::default(),
            max_attempts: MAX_ATTEMPTS,
        }
    }

    /// The same prober making one attempt per call: a refusal to retry comes back at once
    /// with its wait (`Failure::RateLimited::retry_after_ms`), for a caller that retries
    /// later itself (a queued job) rather than sleeping.
    pub fn once(mut self) -> Self {
        self.max_attempts = 1;
        self
    }

    /// Sends the request `build` makes until `classify` accepts or rejects a response, or
    /// the deadline leaves no room for another attempt.
    pub async fn call(
        &self,
        provider: &str,
        build: impl Fn() -> HttpRequest,
        classify: impl Fn(&HttpResponse) -> Verdict,
    ) -> Result<HttpResponse, Failure> {
        self.call_dyn(provider, &build, &classify).await
    }

    /// [`Prober::call`]'s loop, compiled once rather than once per caller's closures.
    async fn call_dyn(
        &self,
        provider: &str,
        build: &dyn Fn() -> HttpRequest,
        classify: &dyn Fn(&HttpResponse) -> Verdict,
    ) -> Result<HttpResponse, Failure> {
        let mut attempt = 0;
        loop {
            let now = self.clock.now();
            let left = now.millis_until(self.deadline);
            let timeout = self.attempt_timeout_ms.min(left);
            let (failure, hint_ms) = match self.http.send(build(), timeout).await {
                // Redirects are never followed (see `HttpClient`): a provider that answers
                // with one is not answering.
                Ok(response) if (300..400).contains(&response.status) => {
                    return Err(Failure::ProviderError(format!(
                        "{provider} answered with a redirect (HTTP {}), which the vault does not follow",
                        response.status
                    )))
                }
                Ok(response) => match classify(&response) {
                    Verdict::Accept => return Ok(response),
                    Verdict::Reject(failure) => return Err(failure),
                    Verdict::Retry { hint_ms, failure } => {
                        let header = header_hint_ms(&response, self.clock.now());
                        (failure, header.or(hint_ms))
                    }
                },
                Err(HttpError::Timeout(ms)) => (
                    Failure::Unreachable(format!("{provider} did not answer within {ms} ms")),
                    None,
                ),
                Err(HttpError::TooLarge(limit)) => {
                    return Err(Failure::ProviderError(format!(
                        "{provider} sent an answer larger than {limit} bytes"
                    )))
                }
                // (A probe forwards no caller's body, so it never meets a body limit.)
                Err(e @ (HttpError::Network(_) | HttpError::RequestTooLarge(_))) => (
                    Failure::Unreachable(format!("{provider} could not be reached: {e}")),
                    None,
                ),
            };
            attempt += 1;
            let wait = hint_ms.unwrap_or_else(|| self.backoff.delay_ms(attempt - 1, self.jitter));
            let now = self.clock.now();
            let left = now.millis_until(self.deadline);
            let no_room =
                attempt >= self.max_attempts || wait.saturating_add(MIN_ATTEMPT_MS) > left;
            if no_room {
                return Err(match failure {
                    // Tell the caller when to come back instead of sleeping past the deadline.
                    Failure::RateLimited { message, .. } => Failure::RateLimited {
                        retry_after_ms: wait.max(1000),
                        message,
                    },
                    other => other,
                });
            }
            self.clock.sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests;
