//! The HTTP API as pure functions: a [`Request`] in, a [`Response`] out. Routing, auth,
//! input checks, CORS and the problem+json mapping all live here, testable on the host;
//! the Worker glue only converts to and from the platform's types.

mod audit;
mod credentials;
mod health;
pub mod input;
mod preferences;
mod views;

use std::cell::RefCell;

use serde_json::Value;
use url::Url;

use crate::audit::{new_event_id, Action, Actor, ActorType, AuditEvent, Outcome};
use crate::auth::{bearer_token, AuthError, JwksCache, JwtVerifier};
use crate::config::{Config, ConfigError};
use crate::crypto::random_bytes;
use crate::domain::{CredentialId, ProviderId, RequestId, UserId};
use crate::error::ApiError;
use crate::ports::{
    AuditSink, AuditStore, Clock, CredentialStore, HttpClient, Jitter, LimitScope, RateLimiter,
    SignatureVerifier,
};

/// An incoming request, already read whole.
pub struct Request {
    pub method: String,
    pub url: Url,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn query(&self, name: &str) -> Option<String> {
        self.url
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, body: &Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }

    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn problem(e: &ApiError) -> Self {
        let mut r = Self {
            status: e.status,
            headers: vec![("content-type".into(), "application/problem+json".into())],
            body: e.body().to_string().into_bytes(),
        };
        if e.status == 401 {
            r = r.with_header("www-authenticate", "Bearer");
        }
        if let Some(s) = e.retry_after_seconds {
            r = r.with_header("retry-after", s.to_string());
        }
        r
    }
}

/// Everything a request may use: configuration and the platform behind the core's seams.
pub struct App<'a> {
    pub config: Result<&'a Config, &'a [ConfigError]>,
    pub store: &'a dyn CredentialStore,
    pub http: &'a dyn HttpClient,
    pub clock: &'a dyn Clock,
    pub jitter: &'a dyn Jitter,
    /// Where this request's audit events go (the queue, in production).
    pub audit: &'a dyn AuditSink,
    /// The stored audit log, for reading and verifying it.
    pub audit_log: &'a dyn AuditStore,
    /// The issuer's public keys for RS256/ES256 tokens, kept for the isolate's life.
    pub jwks: &'a JwksCache,
    /// Checks RS256/ES256 signatures (WebCrypto in the Worker).
    pub signatures: &'a dyn SignatureVerifier,
    /// Counts live provider checks per user and per client address.
    pub limiter: &'a dyn RateLimiter,
    /// Where operational log lines go. Never given a secret.
    pub log: &'a dyn Fn(&str),
}

/// The per-request context handlers receive.
pub(crate) struct Ctx<'a, 'r> {
    pub app: &'r App<'a>,
    pub config: &'a Config,
    pub request: &'r Request,
    pub request_id: &'r RequestId,
    /// What the handler learned that the operation's audit event should say.
    pub note: RefCell<AuditNote>,
}

/// Filled in by handlers as they go; read once when the operation's event is built.
#[derive(Default)]
pub(crate) struct AuditNote {
    pub credential_id: Option<CredentialId>,
    pub provider: Option<ProviderId>,
    pub detail: Option<Value>,
    /// An operation that answered 200 but whose point failed (a re-check of a dead key).
    pub failure: Option<&'static str>,
    /// The event was written with the operation's own change (the outbox): it must not be
    /// recorded again.
    pub committed: Option<String>,
}

/// How long a caller refused by the vault's own limits is told to wait: the period of the
/// rate-limit bindings in wrangler.toml.
pub const RATE_LIMIT_PERIOD_SECONDS: u64 = 60;

impl Ctx<'_, '_> {
    pub fn log(&self, line: &str) {
        (self.app.log)(&format!("{} {line}", self.request_id.as_str()));
    }

    pub fn note_credential(&self, id: &CredentialId, provider: Option<ProviderId>) {
        let mut note = self.note.borrow_mut();
        note.credential_id = Some(id.clone());
        if provider.is_some() {
            note.provider = provider;
        }
    }

    pub fn note_provider(&self, provider: ProviderId) {
        self.note.borrow_mut().provider = Some(provider);
    }

    pub fn note_detail(&self, detail: Value) {
        self.note.borrow_mut().detail = Some(detail);
    }

    pub fn note_failure(&self, code: &'static str) {
        self.note.borrow_mut().failure = Some(code);
    }

    /// The event `user`'s operation is recorded as, from what the handler noted so far:
    /// a success, unless the handler noted a failure.
    pub fn event(&self, action: Action, user: &UserId) -> AuditEvent {
        let note = self.note.borrow();
        self.event_from(action, user, &note, note.failure)
    }

    fn event_from(
        &self,
        action: Action,
        user: &UserId,
        note: &AuditNote,
        failure: Option<&str>,
    ) -> AuditEvent {
        let now = self.app.clock.now();
        let id = new_event_id(now, random_bytes().unwrap_or_default());
        let actor = Actor {
            kind: ActorType::User,
            id: user.as_str().to_owned(),
        };
        let mut event = AuditEvent::new(id, now, user, action, actor);
        event.credential_id = note.credential_id.as_ref().map(|c| c.as_str().to_owned());
        event.provider = note.provider.map(|p| p.as_str().to_owned());
        event.detail = note.detail.clone();
        event.request_id = Some(self.request_id.as_str().to_owned());
        if let Some(code) = failure {
            event.outcome = Outcome::Failure;
            event.reason = Some(code.to_owned());
        }
        event
    }

    /// Notes that `event` was stored with the operation's change, in one transaction.
    pub fn committed(&self, event: &AuditEvent) {
        self.note.borrow_mut().committed = Some(event.id.clone());
    }

    /// Makes sure `user`'s operation has exactly one event, whatever its outcome, and
    /// passes the result through unchanged: the audit path never changes what the caller
    /// gets. An operation that changed something stored its event with the change, and the
    /// chainer is nudged; any other outcome (a view, a refusal, a failure) is recorded
    /// (and nudged) here.
    async fn audited(
        &self,
        action: Action,
        user: &UserId,
        result: Result<Response, ApiError>,
    ) -> Result<Response, ApiError> {
        let note = self.note.take();
        match (&note.committed, &result) {
            (Some(id), Ok(_)) => self.app.audit.nudge(id).await,
            _ => {
                let failure = match &result {
                    Err(e) => Some(e.code),
                    Ok(_) => note.failure,
                };
                let event = self.event_from(action, user, &note, failure);
                self.app.audit.record(&event).await;
            }
        }
        result
    }

    /// Counts one live provider check against the caller's address and `user`, and
    /// refuses it (before any provider is contacted) when either is over its limit. The
    /// address is counted first: a refused address spends nothing of the user's allowance.
    pub async fn limit_live_check(&self, user: &UserId) -> Result<(), ApiError> {
        if !self.config.rate_limits {
            return Ok(());
        }
        let address = client_network(self.request.header("cf-connecting-ip"));
        for (scope, key) in [
            (LimitScope::ClientAddress, address.as_str()),
            (LimitScope::User, user.as_str()),
        ] {
            match self.app.limiter.allow(scope, key).await {
                Ok(true) => {}
                Ok(false) => {
                    self.log(&format!(
                        "live check refused: the {} limit is reached",
                        scope.as_str()
                    ));
                    return Err(ApiError::rate_limited(scope, RATE_LIMIT_PERIOD_SECONDS));
                }
                Err(e) => {
                    self.log(&format!("live check refused: {e}"));
                    return Err(ApiError::not_configured(
                        "The rate limiter for live checks is not available.",
                    ));
                }
            }
        }
        Ok(())
    }

    async fn user(&self) -> Result<UserId, ApiError> {
        let token = bearer_token(self.request.header("authorization"))
            .ok_or(ApiError::unauthorized(AuthError::Missing))?;
        JwtVerifier::new(&self.config.jwt)
            .with_jwks(self.app.jwks, self.app.http, self.app.signatures)
            .verify(token, self.app.clock.now())
            .await
            .map_err(ApiError::unauthorized)
    }
}

/// What the per-address limit counts for a caller: the address Cloudflare's edge reports
/// (`CF-Connecting-IP`, which a client cannot set: the edge overwrites it), an IPv6 one cut
/// to its /64, since whoever holds one address of a /64 holds them all.
fn client_network(header: Option<&str>) -> String {
    match header.map(str::trim).map(str::parse::<std::net::IpAddr>) {
        Some(Ok(std::net::IpAddr::V4(v4))) => v4.to_string(),
        Some(Ok(std::net::IpAddr::V6(v6))) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        _ => "unknown".to_owned(),
    }
}

/// Answers one request. Never panics on input; every error becomes problem+json.
pub async fn handle(app: &App<'_>, request: &Request) -> Response {
    let request_id = RequestId::from_random(random_bytes().unwrap_or_default());
    let mut response = match route(app, request, &request_id).await {
        Ok(r) => r,
        Err(e) => Response::problem(&e),
    };
    if let Ok(config) = app.config {
        add_cors(config, request, &mut response);
    }
    response
        .with_header("cache-control", "no-store")
        .with_header("x-request-id", request_id.as_str())
}

async fn route(
    app: &App<'_>,
    request: &Request,
    request_id: &RequestId,
) -> Result<Response, ApiError> {
    let segments: Vec<&str> = request
        .url
        .path()
        .trim_end_matches('/')
        .split('/')
        .skip(1)
        .collect();
    let method = request.method.as_str();

    if method == "OPTIONS" {
        return Ok(Response::empty(204));
    }
    if segments == ["v1", "health"] {
        return match method {
            "GET" | "HEAD" => Ok(health::health(app).await),
            _ => Err(ApiError::method_not_allowed()),
        };
    }
    let config = app.config.map_err(|errors| {
        let vars: Vec<&str> = errors.iter().map(|e| e.var).collect();
        ApiError::not_configured(format!(
            "The configuration has problems with: {}.",
            vars.join(", ")
        ))
    })?;
    if request.body.len() > input::MAX_BODY_BYTES {
        return Err(ApiError::payload_too_large(input::MAX_BODY_BYTES));
    }
    let ctx = Ctx {
        app,
        config,
        request,
        request_id,
        note: RefCell::default(),
    };

    match (method, segments.as_slice()) {
        ("GET", ["v1", "providers"]) => {
            ctx.user().await?;
            Ok(credentials::providers())
        }
        (_, ["v1", "providers"]) => Err(ApiError::method_not_allowed()),
        ("GET", ["v1", "credentials"]) => {
            let user = ctx.user().await?;
            ctx.audited(
                Action::CredentialViewed,
                &user,
                credentials::list(&ctx, &user).await,
            )
            .await
        }
        ("POST", ["v1", "credentials"]) => {
            let user = ctx.user().await?;
            ctx.audited(
                Action::CredentialCreated,
                &user,
                credentials::create(&ctx, &user).await,
            )
            .await
        }
        (_, ["v1", "credentials"]) => Err(ApiError::method_not_allowed()),
        ("GET", ["v1", "credentials", id]) => {
            let user = ctx.user().await?;
            ctx.audited(
                Action::CredentialViewed,
                &user,
                credentials::get(&ctx, &user, id).await,
            )
            .await
        }
        ("PATCH", ["v1", "credentials", id]) => {
            let user = ctx.user().await?;
            let (action, result) = match credentials::update(&ctx, &user, id).await {
                Ok((response, change)) => (change.action(), Ok(response)),
                Err(e) => (Action::CredentialUpdated, Err(e)),
            };
            ctx.audited(action, &user, result).await
        }
        ("POST", ["v1", "credentials", id, "validate"]) => {
            let user = ctx.user().await?;
            let result = credentials::validate(&ctx, &user, id).await;
            ctx.audited(Action::CredentialValidated, &user, result)
                .await
        }
        (_, ["v1", "credentials", _, "validate"]) => Err(ApiError::method_not_allowed()),
        ("GET", ["v1", "credentials", id, "models"]) => {
            let user = ctx.user().await?;
            let (action, result) = match credentials::models(&ctx, &user, id).await {
                Ok((response, true)) => (Action::CredentialValidated, Ok(response)),
                Ok((response, false)) => (Action::CredentialViewed, Ok(response)),
                Err(e) => (Action::CredentialViewed, Err(e)),
            };
            ctx.audited(action, &user, result).await
        }
        (_, ["v1", "credentials", _, "models"]) => Err(ApiError::method_not_allowed()),
        ("GET", ["v1", "preferences"]) => preferences::get(&ctx, &ctx.user().await?).await,
        (_, ["v1", "preferences"]) => Err(ApiError::method_not_allowed()),
        ("PUT", ["v1", "preferences", capability]) => {
            let user = ctx.user().await?;
            let result = preferences::put(&ctx, &user, capability).await;
            ctx.audited(Action::PreferenceUpdated, &user, result).await
        }
        (_, ["v1", "preferences", _]) => Err(ApiError::method_not_allowed()),
        ("DELETE", ["v1", "credentials", id]) => {
            let user = ctx.user().await?;
            ctx.audited(
                Action::CredentialDeleted,
                &user,
                credentials::delete(&ctx, &user, id).await,
            )
            .await
        }
        (_, ["v1", "credentials", _]) => Err(ApiError::method_not_allowed()),
        ("GET", ["v1", "audit"]) => audit::list(&ctx, &ctx.user().await?).await,
        ("GET", ["v1", "audit", "verify"]) => audit::verify(&ctx, &ctx.user().await?).await,
        (_, ["v1", "audit"] | ["v1", "audit", "verify"]) => Err(ApiError::method_not_allowed()),
        _ => Err(ApiError::not_found()),
    }
}

/// CORS for the configured origins only; anything else gets no CORS headers at all.
fn add_cors(config: &Config, request: &Request, response: &mut Response) {
    let Some(origin) = request.header("origin") else {
        return;
    };
    if !config.cors_allowed_origins.iter().any(|o| o == origin) {
        return;
    }
    let mut headers = vec![
        ("access-control-allow-origin", origin.to_owned()),
        ("vary", "Origin".to_owned()),
        (
            "access-control-expose-headers",
            "X-Request-Id, Retry-After, Location".to_owned(),
        ),
    ];
    if request.method == "OPTIONS" {
        headers.extend([
            (
                "access-control-allow-methods",
                "GET, POST, PATCH, PUT, DELETE, OPTIONS".to_owned(),
            ),
            (
                "access-control-allow-headers",
                "Authorization, Content-Type".to_owned(),
            ),
            ("access-control-max-age", "600".to_owned()),
        ]);
    }
    for (k, v) in headers {
        response.headers.push((k.to_owned(), v));
    }
}

#[cfg(test)]
mod tests;
