//! The HTTP API as pure functions: a [`Request`] in, a [`Response`] out. Routing (the
//! table in `router`), auth, parsing bodies into commands, CORS and the problem+json
//! mapping (`problem`) all live here, testable on the host; the operations themselves are
//! the core's services (`credentials`, `usage`, `import`, `audit::Trail`), built for each
//! request in `context`, and the Worker glue only converts to and from the platform's types.

mod admin;
mod audit;
mod budgets;
mod commands;
mod context;
mod credentials;
mod description;
mod health;
pub mod input;
mod preferences;
pub mod problem;
mod proxy;
pub mod realtime;
mod resolve;
mod router;
mod usage;
mod views;

pub use description::Assets;

use std::cell::{OnceCell, RefCell};

use async_trait::async_trait;
use serde_json::{json, Value};
use url::Url;

use crate::audit::{AuditSink, AuditStore};
use crate::auth::JwksCache;
use crate::auth::SignatureVerifier;
use crate::config::Config;
use crate::credentials::CredentialStore;
use crate::crypto::random_bytes;
use crate::domain::Clock;
use crate::domain::ConfigError;
use crate::domain::RequestId;
use crate::http::HttpClient;
use crate::limits::RateLimiter;
use crate::probe::Jitter;
use problem::ApiError;

/// An incoming request. Its body is not read until the route and the caller are known
/// (the router reads a JSON route's body after authentication; the proxy forwards its
/// body unread), so an anonymous caller never makes the Worker hold a byte of it.
pub struct Request {
    pub method: String,
    pub url: Url,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body as it arrives, until the router reads it or the proxy forwards it.
    incoming: RefCell<Option<Box<dyn IncomingBody>>>,
    /// The body the router read (a JSON route's, within its limit).
    body: OnceCell<Vec<u8>>,
}

impl Request {
    pub fn new(
        method: impl Into<String>,
        url: Url,
        headers: Vec<(String, String)>,
        body: Box<dyn IncomingBody>,
    ) -> Self {
        Self {
            method: method.into(),
            url,
            headers,
            incoming: RefCell::new(Some(body)),
            body: OnceCell::new(),
        }
    }

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

    /// The body the router read; empty for a route that takes none.
    pub fn body(&self) -> &[u8] {
        self.body.get().map(Vec::as_slice).unwrap_or_default()
    }

    /// The length the caller declared (`Content-Length`), if any.
    fn declared_length(&self) -> Option<u64> {
        self.header("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
    }

    /// Whether the caller declared a body longer than `limit`: refused before a byte of
    /// it is read.
    fn declared_over(&self, limit: usize) -> bool {
        self.declared_length()
            .is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX))
    }

    /// Reads the body, at most `limit` bytes: 413 as soon as more arrives, without
    /// waiting for the rest.
    async fn read_body(&self, limit: usize) -> Result<(), ApiError> {
        if self.declared_over(limit) {
            return Err(ApiError::payload_too_large(limit));
        }
        let incoming = self.incoming.borrow_mut().take();
        let bytes = match incoming {
            Some(body) => body.read(limit).await.map_err(|e| match e {
                BodyError::TooLarge(n) => ApiError::payload_too_large(n),
                BodyError::Broken(why) => {
                    ApiError::invalid_request(vec![crate::error::FieldError::new(
                        "body",
                        "could not be read",
                    )])
                    .caused_by(format!("request body: {why}"))
                }
            })?,
            None => Vec::new(),
        };
        let _ = self.body.set(bytes);
        Ok(())
    }

    /// The body, unread, to send on upstream (once): a call whose body passes `limit`
    /// bytes fails with [`HttpError::RequestTooLarge`](crate::http::HttpError).
    pub(crate) fn forward_body(&self, limit: usize) -> Option<crate::http::BodyStream> {
        let incoming = self.incoming.borrow_mut().take()?;
        Some(incoming.forward(limit))
    }
}

/// Why a request body could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the body is longer than {0} bytes")]
    TooLarge(usize),
    #[error("the body could not be read: {0}")]
    Broken(String),
}

/// A request's body as it arrives: the Worker's stream, or bytes in host tests.
#[async_trait(?Send)]
pub trait IncomingBody {
    /// The whole body; [`BodyError::TooLarge`] as soon as more than `limit` bytes have
    /// arrived, without waiting for the rest (which is never read).
    async fn read(self: Box<Self>, limit: usize) -> Result<Vec<u8>, BodyError>;
    /// The body for an upstream call, left unread: it flows into the call as it arrives,
    /// and a call whose body passes `limit` bytes fails with
    /// [`HttpError::RequestTooLarge`](crate::http::HttpError).
    fn forward(self: Box<Self>, limit: usize) -> crate::http::BodyStream;
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// A body to pipe through unread instead of `body` (a proxied answer).
    pub stream: Option<crate::http::BodyStream>,
    /// A WebSocket session the Worker opens upstream and pipes (`/v1/realtime/…/ws/…`).
    pub upgrade: Option<Box<realtime::Upgrade>>,
}

impl Response {
    pub fn json(status: u16, body: &Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
            stream: None,
            upgrade: None,
        }
    }

    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            stream: None,
            upgrade: None,
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
        // Every 429 of the vault's own says when to come back (an SDK's retry reads the
        // header): one without a wait of its own waits the limits' period.
        let mut e = e.clone();
        if e.status == 429 && e.retry_after_seconds.is_none() {
            e.retry_after_seconds = Some(crate::limits::RATE_LIMIT_PERIOD_SECONDS);
        }
        let mut r = Self {
            status: e.status,
            headers: vec![("content-type".into(), "application/problem+json".into())],
            body: e.body().to_string().into_bytes(),
            stream: None,
            upgrade: None,
        };
        if e.status == 401 {
            r = r.with_header("www-authenticate", "Bearer");
        }
        if let Some(s) = e.retry_after_seconds {
            r = r.with_header("retry-after", s.to_string());
        }
        for (name, value) in &e.headers {
            r = r.with_header(name, value.clone());
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
    /// The issuer's public keys for RS256/ES256 tokens, kept for the isolate's life (there
    /// is a cache when `AUTH_JWKS_URL` is set).
    pub jwks: Option<&'a JwksCache>,
    /// Checks RS256/ES256 signatures (WebCrypto in the Worker).
    pub signatures: &'a dyn SignatureVerifier,
    /// Counts live provider checks per user and per client address.
    pub limiter: &'a dyn RateLimiter,
    /// Where operational log lines go. Never given a secret.
    pub log: &'a dyn Fn(&str),
    /// Proxied calls, whose answers are piped back unread.
    pub upstream: &'a dyn crate::http::Upstream,
    /// Where background jobs go (`JOBS_QUEUE`).
    pub jobs: &'a dyn crate::jobs::JobQueue,
    /// Where background jobs' progress is kept.
    pub job_store: &'a dyn crate::jobs::JobStore,
    /// Where imports write and what their rollback removes.
    pub imports: &'a dyn crate::import::ImportStore,
    /// The metered usage (`GET /v1/usage`, `/v1/admin/usage`; a call's usage is recorded
    /// with [`crate::metering::record`]).
    pub usage: &'a dyn crate::metering::UsageStore,
    /// The static files deployed beside the Worker (the API description among them).
    pub assets: &'a dyn crate::api::Assets,
    /// Budgets' counters and the operators' per-user budgets.
    pub budgets: &'a dyn crate::budgets::BudgetStore,
    /// Infisical's per-isolate cache of system keys (`SYSTEM_KEYS_SOURCE = "infisical"`).
    pub infisical: Option<&'a crate::system_keys::InfisicalCache>,
}

/// An answer, and the uses of keys its request left to record after it.
pub struct Handled {
    pub response: Response,
    /// `credential.used` events: the Worker sends them under `waitUntil` once the answer is
    /// on its way ([`finish`]), so they add nothing to the time to the first byte and are
    /// not lost when the caller hangs up (the whole request runs under `waitUntil`).
    pub uses: Vec<crate::audit::AuditEvent>,
    /// A proxied answer's usage, read as it streams to the caller: recorded by [`finish`]
    /// once it has gone on whole or was cut.
    pub metering: Option<Metering>,
}

/// Answers one request. Never panics on input; every error becomes problem+json. Writes
/// one structured log line for the request (route, status, duration, request id, error
/// code and its cause; never a secret). The uses of keys to record come with it: [`finish`]
/// sends them.
pub async fn handle(app: &App<'_>, request: &Request) -> Handled {
    let started = app.clock.now();
    let request_id = RequestId::from_random(random_bytes().unwrap_or_default());
    let dispatched = router::dispatch(app, request, &request_id).await;
    let (mut response, error) = match dispatched.result {
        Ok(r) => (r, None),
        Err(e) => (Response::problem(&e), Some(e)),
    };
    if let Ok(config) = app.config {
        add_cors(config, request, &mut response);
    }
    let line = json!({
        "request_id": request_id.as_str(),
        "method": request.method,
        "route": dispatched.route.unwrap_or("-"),
        "status": response.status,
        "ms": started.millis_until(app.clock.now()),
        "code": error.as_ref().map(|e| e.code),
        "cause": error.as_ref().and_then(|e| e.cause.as_deref()),
        "failure": dispatched.failure,
    });
    (app.log)(&line.to_string());
    Handled {
        response: response
            .with_header("cache-control", "no-store")
            .with_header("x-request-id", request_id.as_str()),
        uses: dispatched.uses,
        metering: dispatched.metering,
    }
}

/// Records the uses a request left for after its answer, in order.
pub async fn finish(
    app: &App<'_>,
    uses: Vec<crate::audit::AuditEvent>,
    metering: Option<Metering>,
) {
    for event in uses {
        app.audit.send(&event).await;
    }
    if let Some(Metering { watch, admitted }) = metering {
        let (call, usage) = watch.finish().await;
        record_usage(app, &call, &usage).await;
        if let (Some(admitted), Ok(config)) = (&admitted, app.config) {
            settle_budget(app, config, &call, admitted, &usage).await;
        }
    }
}

/// A proxied answer's metering: its usage read as it streams past, and the budget claim
/// the call was admitted with, settled with that usage once the answer has gone on.
pub struct Metering {
    pub watch: crate::metering::Watch,
    pub admitted: Option<crate::usage::Admitted>,
}

/// Keeps one call's usage (a store that fails is logged, never a secret).
async fn record_usage(app: &App<'_>, call: &crate::metering::Call, usage: &crate::metering::Usage) {
    let metered = crate::metering::Metered {
        user_id: call.user.clone(),
        at: call.at,
        provider: call.provider,
        source: call.source,
        credential_id: call.credential_id.clone(),
        model: usage.model.clone(),
        usage: usage.clone(),
    };
    crate::metering::record(app.usage, &metered, app.log).await;
}

/// Settles a metered call's budget claim with what it used; a threshold it crossed wakes
/// the webhooks' deliverer.
async fn settle_budget(
    app: &App<'_>,
    config: &Config,
    call: &crate::metering::Call,
    admitted: &crate::usage::Admitted,
    usage: &crate::metering::Usage,
) {
    use crate::budgets::{Amounts, Unit};
    let mut used = Amounts::default();
    used.set(Unit::Requests, 1.0);
    used.set(Unit::InputTokens, usage.input_tokens as f64);
    used.set(Unit::OutputTokens, usage.output_tokens as f64);
    used.set(Unit::Characters, usage.characters as f64);
    used.set(Unit::AudioSeconds, usage.audio_seconds);
    // A call whose usage did not arrive whole keeps at least what it reserved: what it
    // really used is not known, and is never taken for less.
    if usage.incomplete {
        for unit in crate::budgets::UNITS {
            let reserved = admitted.claim.reserve.get(unit);
            if used.get(unit) < reserved {
                used.set(unit, reserved);
            }
        }
    }
    let note = |line: &str| (app.log)(line);
    let key_use = context::key_use(app, config, &note);
    match key_use.settle(admitted, &used, call.provider).await {
        Ok(crossed) if !crossed.is_empty() => {
            if let Err(e) = app.jobs.send(&[crate::jobs::Job::Notify]).await {
                (app.log)(&format!(
                    "budgets: the webhooks' deliverer could not be woken ({e})"
                ));
            }
        }
        Ok(_) => {}
        Err(e) => (app.log)(&format!("budgets: a claim could not be settled: {e}")),
    }
}

/// The request headers a preflight allows: the ones the page asks for, and those a
/// provider's own browser SDK sends through the proxy (its key header, which carries the
/// vault token, its version and telemetry headers). The origin is one of the configured
/// ones already, so what it asks for is allowed, as long as it names headers only.
fn allowed_headers(request: &Request) -> String {
    const OURS: &str = "Authorization, Content-Type, X-Byok-Credential-Id, X-Byok-Allow-Fallback";
    match request.header("access-control-request-headers") {
        Some(asked)
            if asked.len() <= 2048
                && asked
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_, ".contains(&b)) =>
        {
            format!("{OURS}, {asked}")
        }
        _ => OURS.to_owned(),
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
            "X-Request-Id, Retry-After, Location, X-Byok-Source, X-Byok-Credential-Id, X-Byok-Fallback-Reason, X-Byok-Upstream-Status, X-Byok-Attempts, X-Byok-Skipped, X-Upstream-Request-Id".to_owned(),
        ),
    ];
    if request.method == "OPTIONS" {
        headers.extend([
            (
                "access-control-allow-methods",
                "GET, POST, PATCH, PUT, DELETE, OPTIONS".to_owned(),
            ),
            ("access-control-allow-headers", allowed_headers(request)),
            ("access-control-max-age", "600".to_owned()),
        ]);
    }
    for (k, v) in headers {
        response.headers.push((k.to_owned(), v));
    }
}

#[cfg(test)]
mod tests;
