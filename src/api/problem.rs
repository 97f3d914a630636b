//! The HTTP layer's error: RFC 9457 problem+json with stable `code`s. The operations'
//! own errors ([`Error`]) become problems in exactly one place, [`From<Error>`] below.

use serde_json::{json, Map, Value};

use crate::auth::AuthError;
use crate::domain::StoreError;
use crate::domain::{CredentialId, ProviderId};
use crate::error::{clip, Error, FieldError};
use crate::probe::Failure;

/// An API error: boxed, so `Result<T, ApiError>` stays one pointer wide on the happy path.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError(Box<Problem>);

/// The members of a problem details body.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub status: u16,
    pub code: &'static str,
    pub title: &'static str,
    pub detail: Option<String>,
    pub provider: Option<ProviderId>,
    pub errors: Vec<FieldError>,
    pub retry_after_seconds: Option<u64>,
    pub credential_id: Option<CredentialId>,
    /// Further members for this problem type (e.g. the health checks).
    pub extra: Map<String, Value>,
    /// Headers the answer carries besides the problem's own (a proxy call's receipts).
    pub headers: Vec<(&'static str, String)>,
    /// What went wrong underneath, for the request's log line; never part of the body.
    /// Holds no secret: store and platform messages, failure kinds, ids.
    pub cause: Option<String>,
}

impl std::ops::Deref for ApiError {
    type Target = Problem;
    fn deref(&self) -> &Problem {
        &self.0
    }
}

impl std::ops::DerefMut for ApiError {
    fn deref_mut(&mut self) -> &mut Problem {
        &mut self.0
    }
}

impl ApiError {
    /// The same error, with `headers` added (the proxy's receipts).
    pub fn with_headers(mut self, headers: Vec<(&'static str, String)>) -> Self {
        self.headers.extend(headers);
        self
    }

    fn new(status: u16, code: &'static str, title: &'static str) -> Self {
        Self(Box::new(Problem {
            status,
            code,
            title,
            detail: None,
            provider: None,
            errors: Vec::new(),
            retry_after_seconds: None,
            credential_id: None,
            extra: Map::new(),
            headers: Vec::new(),
            cause: None,
        }))
    }

    /// The same error, remembering what caused it (logged once, never shown).
    pub fn caused_by(mut self, cause: impl std::fmt::Display) -> Self {
        self.cause = Some(cause.to_string());
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn provider(mut self, provider: ProviderId) -> Self {
        self.provider = Some(provider);
        self
    }

    pub fn unauthorized(reason: AuthError) -> Self {
        Self::new(401, "unauthorized", "Authentication required").detail(reason.to_string())
    }

    pub fn not_found() -> Self {
        Self::new(404, "not_found", "Not found")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(405, "method_not_allowed", "Method not allowed")
    }

    pub fn invalid_request(errors: Vec<FieldError>) -> Self {
        let mut e = Self::new(400, "invalid_request", "The request is not valid");
        e.errors = errors;
        e
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            415,
            "unsupported_media_type",
            "Send the body as application/json",
        )
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(413, "payload_too_large", "The request body is too large")
            .detail(format!("Bodies may be at most {limit} bytes."))
    }

    pub fn unknown_provider(name: &str) -> Self {
        Self::unknown_provider_fields(vec![FieldError::new(
            "provider",
            format!("'{}' is not a supported provider", clip(name, 40)),
        )])
    }

    /// `unknown_provider`, its field errors given.
    pub fn unknown_provider_fields(errors: Vec<FieldError>) -> Self {
        let mut e = Self::new(400, "unknown_provider", "Unknown provider")
            .detail("See GET /v1/providers for the providers this service supports.");
        e.errors = errors;
        e
    }

    pub fn duplicate(existing: CredentialId) -> Self {
        let mut e = Self::new(409, "duplicate_credential", "This key is already stored")
            .detail("You already stored this key for this provider.");
        e.credential_id = Some(existing);
        e
    }

    /// The vault's own limit on live provider checks (not the provider's).
    pub fn rate_limited(scope: crate::limits::LimitScope, retry_after_seconds: u64) -> Self {
        let mut e = if scope.is_system_key_use() {
            Self::new(429, "rate_limited", "Too many calls on the service's own keys").detail(
                format!(
                    "Without a key of your own, calls use the service's keys at a limited rate per {}; try again in {retry_after_seconds} s, or add your own key.",
                    scope.as_str()
                ),
            )
        } else {
            Self::new(429, "rate_limited", "Too many live checks").detail(format!(
                "Keys are checked with their provider at a limited rate per {}; try again in {retry_after_seconds} s.",
                scope.as_str()
            ))
        };
        e.retry_after_seconds = Some(retry_after_seconds);
        e
    }

    /// A call that would start past a budget: which one, and when it is whole again.
    pub fn budget_exceeded(b: &crate::error::BudgetExceeded) -> Self {
        let whose = match b.scope {
            "system" => "your allowance on the service's keys",
            _ => "the budget you set on this key",
        };
        let mut e = Self::new(429, "budget_exceeded", "Budget used up").detail(format!(
            "This call would go past {whose} ({} {} per {}); it is whole again at {}.",
            crate::domain::amount_json(b.limit),
            b.unit.as_str().replace('_', " "),
            b.period.as_str(),
            b.resets_at.to_rfc3339()
        ));
        e.retry_after_seconds = Some(b.retry_after_seconds);
        e.credential_id = b.credential_id.clone();
        e.provider(b.provider).with(
            "budget",
            json!({
                "scope": b.scope,
                "provider": b.provider,
                "credential_id": b.credential_id,
                "period": b.period.as_str(),
                "unit": b.unit.as_str(),
                "limit": crate::domain::amount_json(b.limit),
                "used": crate::domain::amount_json(b.used),
                "resets_at": b.resets_at.to_rfc3339(),
            }),
        )
    }

    /// An import entry left unchecked: its request spent its share of provider calls.
    pub fn not_checked() -> Self {
        let mut e = Self::new(429, "not_checked", "Not checked in this request")
            .detail("This request has used its share of provider calls; send this entry again.");
        e.retry_after_seconds = Some(1);
        e
    }

    pub fn credential_limit_reached(limit: u32) -> Self {
        Self::new(409, "credential_limit_reached", "Too many stored keys").detail(format!(
            "You hold {limit} keys, the most one user may store; delete one to add another."
        ))
    }

    /// A conditional write lost to a concurrent change it must not overwrite.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(409, "conflict", "The credential changed meanwhile").detail(detail)
    }

    pub fn secret_required() -> Self {
        let mut e = Self::new(400, "secret_required", "The key is required for this change")
            .detail("Changing where the key is used (region or base_url) needs the key in the same request.");
        e.errors = vec![FieldError::new(
            "api_key",
            "is required when region or base_url changes",
        )];
        e
    }

    pub fn not_configured(detail: impl Into<String>) -> Self {
        Self::new(503, "not_configured", "The service is not configured").detail(detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(503, "unavailable", "The service is unavailable").detail(detail)
    }

    pub fn with(mut self, name: &str, value: Value) -> Self {
        self.extra.insert(name.to_owned(), value);
        self
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(403, "forbidden", "Not allowed").detail(detail)
    }

    /// Nothing the vault may use for this call: the user must add a key.
    pub fn no_credential(detail: impl Into<String>) -> Self {
        Self::new(404, "no_credential", "No usable key for this call").detail(detail)
    }

    /// The user's stored key was refused by its provider in use: it must be replaced.
    pub fn credential_invalid(provider: ProviderId, id: CredentialId) -> Self {
        let mut e = Self::new(424, "credential_invalid", "The stored key stopped working")
            .detail(format!(
                "{provider} refused the stored key; add a new one (its status is now invalid_key)."
            ))
            .provider(provider);
        e.credential_id = Some(id);
        e
    }

    /// The key in use has run out of quota.
    pub fn quota_exhausted(provider: ProviderId, detail: impl Into<String>) -> Self {
        Self::new(402, "quota_exhausted", "The key has no quota left")
            .detail(detail)
            .provider(provider)
    }

    pub fn provider_error(provider: ProviderId, detail: impl Into<String>) -> Self {
        Self::new(502, "provider_error", "The provider failed to answer")
            .detail(detail)
            .provider(provider)
    }

    pub fn provider_unreachable(provider: ProviderId, detail: impl Into<String>) -> Self {
        Self::new(
            504,
            "provider_unreachable",
            "The provider could not be reached",
        )
        .detail(detail)
        .provider(provider)
    }

    pub fn internal() -> Self {
        Self::new(500, "internal", "Internal error")
    }

    /// A provider check that did not accept the key, as the contract maps it.
    pub fn from_failure(provider: ProviderId, failure: Failure) -> Self {
        let code = failure.code();
        let e = match &failure {
            Failure::InvalidKey(_) => Self::new(422, code, "The provider rejected this API key"),
            Failure::InsufficientScope(_) => {
                Self::new(422, code, "The key lacks a permission this service needs")
            }
            Failure::QuotaExhausted(_) => Self::new(422, code, "The key has no quota left"),
            Failure::RateLimited { retry_after_ms, .. } => {
                let mut e = Self::new(429, code, "The provider is rate limiting this key");
                e.retry_after_seconds = Some(retry_after_ms.div_ceil(1000).max(1));
                e
            }
            Failure::Unreachable(_) => Self::new(504, code, "The provider could not be reached"),
            Failure::ProviderError(_) => Self::new(502, code, "The provider failed to answer"),
        };
        e.detail(failure.message())
            .provider(provider)
            .caused_by(format!("{provider} check: {}", failure.kind()))
    }

    pub fn type_uri(&self) -> String {
        format!(
            "https://byok-vault.dev/problems/{}",
            self.code.replace('_', "-")
        )
    }

    pub fn body(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), json!(self.type_uri()));
        m.insert("title".into(), json!(self.title));
        m.insert("status".into(), json!(self.status));
        m.insert("code".into(), json!(self.code));
        if let Some(d) = &self.detail {
            m.insert("detail".into(), json!(d));
        }
        if let Some(p) = self.provider {
            m.insert("provider".into(), json!(p));
        }
        if !self.errors.is_empty() {
            let errors: Vec<Value> = self
                .errors
                .iter()
                .map(|e| json!({"field": e.field, "message": e.message}))
                .collect();
            m.insert("errors".into(), Value::Array(errors));
        }
        if let Some(s) = self.retry_after_seconds {
            m.insert("retry_after_seconds".into(), json!(s));
        }
        if let Some(id) = &self.credential_id {
            m.insert("credential_id".into(), json!(id));
        }
        for (k, v) in &self.extra {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        // The caller learns nothing of the internals; the cause goes to the log line.
        let error = match e {
            // A uniqueness rule refused a write: another request got there first.
            StoreError::Conflict(_) => ApiError::conflict(
                "Another request changed the same thing at the same moment; try again.",
            ),
            StoreError::Unavailable(_) | StoreError::Corrupt(_) => ApiError::internal(),
        };
        error.caused_by(e)
    }
}

/// The one place an operation's error becomes the contract's problem.
impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let cause = e.to_string();
        match e {
            Error::NotFound(None) => ApiError::not_found(),
            Error::NotFound(Some(detail)) => ApiError::not_found().detail(detail),
            Error::Invalid(errors) => ApiError::invalid_request(errors),
            Error::UnknownProvider(errors) => ApiError::unknown_provider_fields(errors),
            Error::Duplicate(existing) => ApiError::duplicate(existing),
            Error::LimitReached(limit) => ApiError::credential_limit_reached(limit),
            Error::Conflict { detail, cause: c } => {
                let e = ApiError::conflict(detail);
                match c {
                    Some(c) => e.caused_by(c),
                    None => e,
                }
            }
            Error::SecretRequired => ApiError::secret_required(),
            Error::RateLimited(scope) => {
                ApiError::rate_limited(scope, crate::limits::RATE_LIMIT_PERIOD_SECONDS)
                    .caused_by(cause)
            }
            Error::NotChecked => ApiError::not_checked(),
            Error::Refused { provider, failure } => ApiError::from_failure(provider, failure),
            Error::NoCredential(n) => {
                let skipped: Vec<Value> = n
                    .skipped
                    .iter()
                    .map(|(id, status)| json!({"credential_id": id, "status": status}))
                    .collect();
                let mut e = ApiError::no_credential(n.detail);
                if let Some(p) = n.provider {
                    e = e.provider(p);
                }
                e.with("capability", json!(n.capability))
                    .with("skipped", json!(skipped))
                    .caused_by(n.cause)
            }
            Error::BudgetExceeded(b) => ApiError::budget_exceeded(&b),
            Error::NotConfigured { detail, cause: c } => {
                let e = ApiError::not_configured(detail);
                match c {
                    Some(c) => e.caused_by(c),
                    None => e,
                }
            }
            Error::Store(s) => ApiError::from(s),
            Error::Internal(_) => ApiError::internal().caused_by(cause),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_bodies_have_the_contract_shape() {
        let p = ProviderId::new("elevenlabs");
        let e = ApiError::from_failure(
            p,
            Failure::InvalidKey("ElevenLabs says: Invalid API key".into()),
        );
        assert_eq!(
            e.body(),
            json!({"type":"https://byok-vault.dev/problems/invalid-api-key","title":"The provider rejected this API key",
                   "status":422,"code":"invalid_api_key","detail":"ElevenLabs says: Invalid API key","provider":"elevenlabs"})
        );
    }

    #[test]
    fn a_cause_is_kept_for_the_log_and_never_shown() {
        let e = ApiError::from(StoreError::Unavailable("D1_ERROR: disk I/O".into()));
        assert_eq!(e.code, "internal");
        assert_eq!(
            e.cause.as_deref(),
            Some("the database is unavailable: D1_ERROR: disk I/O")
        );
        assert!(!e.body().to_string().contains("D1_ERROR"));
    }

    #[test]
    fn failures_map_to_the_contract_statuses() {
        let p = ProviderId::new("elevenlabs");
        let m = || "m".to_string();
        let cases = [
            (Failure::InvalidKey(m()), 422, "invalid_api_key"),
            (Failure::InsufficientScope(m()), 422, "insufficient_scope"),
            (Failure::QuotaExhausted(m()), 422, "quota_exhausted"),
            (
                Failure::RateLimited {
                    retry_after_ms: 1500,
                    message: m(),
                },
                429,
                "provider_rate_limited",
            ),
            (Failure::Unreachable(m()), 504, "provider_unreachable"),
            (Failure::ProviderError(m()), 502, "provider_error"),
        ];
        for (f, status, code) in cases {
            let e = ApiError::from_failure(p, f);
            assert_eq!((e.status, e.code), (status, code));
        }
        let rl = ApiError::from_failure(
            p,
            Failure::RateLimited {
                retry_after_ms: 1500,
                message: m(),
            },
        );
        assert_eq!(rl.retry_after_seconds, Some(2));
    }
}
