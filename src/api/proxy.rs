//! `ANY /v1/proxy/{provider}/{path…}`: one of the provider's real operations, called with
//! the key the resolution rule picks, so the key never leaves the vault.
//!
//! The core decides everything here (the caller, the allow-listed operation, the key, the
//! upstream request's head) and the Worker pipes the bodies: the upstream answer comes
//! back as a [`BodyStream`](crate::http::BodyStream) the core never reads, except an
//! error answer, which it reads (bounded) to judge the key by it.

use super::context::{Ctx, Outcome};
use super::problem::ApiError;
use super::Response;
use crate::audit::{Action, Facts, Source};
use crate::budgets::{Amounts, Unit};
use crate::domain::{Capability, CredentialId};
use crate::endpoint_guard::check_base_url;
use crate::error::Error;
use crate::http::{HttpError, HttpRequest, HttpResponse, Method};
use crate::metering::{self, Watch};
use crate::providers::{self, ProviderInfo, Target};
use crate::redact::ProviderText;
use crate::usage::{key_verdict, record, Admitted, Ask, KeyInUse, Verdict};

/// How long the provider has to start answering (a long completion streams its head
/// early; a non-streamed one may think for a while).
const HEAD_TIMEOUT_MS: u64 = 120_000;
/// The most of an error answer that is read (to judge the key by it and pass it on).
const ERROR_BODY_BYTES: usize = 64 * 1024;
/// How long an error answer's body (at most 64 KiB) has to arrive once its head is in: a
/// provider that sends a head and then trickles (or stalls) cannot hold the request open.
const ERROR_BODY_TIMEOUT_MS: u64 = 5_000;
/// The largest caller's body kept to be sent again to the user's next key when the
/// provider refuses one; a larger body streams through and gets no failover.
const REPLAY_MAX_BYTES: usize = 1024 * 1024;

/// The caller's request headers that reach the provider (all others, the caller's
/// credentials and cookies, any key header, billing selectors such as
/// `OpenAI-Organization`, forwarding and hop-by-hop headers, never do).
const FORWARDED_REQUEST_HEADERS: &[&str] = &[
    "content-type",
    "accept",
    "accept-language",
    "anthropic-version",
    "anthropic-beta",
    "openai-beta",
    "x-microsoft-outputformat",
];

/// The provider's answer headers that reach the caller. Anything else (cookies, the
/// provider's CORS, HSTS and reporting policies that would bind the vault's own origin,
/// the operator's organisation ids) stays behind; the provider's request id comes as
/// `X-Upstream-Request-Id`, and its rate-limit headers only for the caller's own key.
const PASSED_RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "content-language",
    "content-disposition",
    "retry-after",
    "retry-after-ms",
];
const UPSTREAM_REQUEST_IDS: &[&str] = &["request-id", "x-request-id", "x-goog-request-id"];

/// The header that marks an answer as the provider's own, with its status.
const UPSTREAM_STATUS: &str = "x-byok-upstream-status";

/// Query parameters that carry credentials: never forwarded.
pub(super) const DROPPED_QUERY: &[&str] = &[
    "key",
    "api_key",
    "apikey",
    "api-key",
    "token",
    "access_token",
    "oauth_token",
    "subscription-key",
    "code",
];

/// A refusal before any key was chosen (an unknown provider, an operation not allowed, a
/// malformed option): nothing was used, so nothing is audited.
fn refused(e: ApiError) -> Outcome {
    Outcome::unaudited(Err(e))
}

pub(super) async fn proxy(ctx: &Ctx<'_>) -> Outcome {
    let Some(info) = providers::find(ctx.param(0)).map(|p| p.info()) else {
        return refused(ApiError::unknown_provider(ctx.param(0)));
    };
    let path = upstream_path(ctx, info);
    let Some(operation) = info.operation(&ctx.request.method, path) else {
        return refused(
            ApiError::forbidden(format!(
                "{} {path} is not an operation the proxy forwards to {}.",
                ctx.request.method, info.name
            ))
            .provider(info.id),
        );
    };
    let credential_id = match ctx.request.header("x-byok-credential-id") {
        None => None,
        Some(raw) => match CredentialId::parse(raw.trim()) {
            Some(id) => Some(id),
            None => {
                return refused(ApiError::invalid_request(vec![
                    crate::error::FieldError::new("X-Byok-Credential-Id", "is not a credential id"),
                ]))
            }
        },
    };
    let allow_fallback = match ctx.request.header("x-byok-allow-fallback").map(str::trim) {
        None | Some("true") => true,
        Some("false") => false,
        Some(_) => {
            return refused(ApiError::invalid_request(vec![
                crate::error::FieldError::new("X-Byok-Allow-Fallback", "must be true or false"),
            ]))
        }
    };
    let ask = Ask {
        capability: operation.capability,
        provider: Some(info.id),
        credential_id: credential_id.as_ref(),
        allow_fallback,
    };
    let mut facts = Facts::new(Action::CredentialUsed);
    facts.provider = Some(info.id);
    let mut after = After::default();
    let result = forward(ctx, info, operation, path, &ask, &mut facts, &mut after).await;
    let mut outcome = Outcome::audited(result, facts);
    outcome.earlier = after.earlier;
    outcome.metering = after.metering;
    outcome
}

/// What a proxied call leaves besides its answer: the uses of keys refused before the one
/// that answered, and the answer's metering.
#[derive(Default)]
struct After {
    earlier: Vec<Facts>,
    metering: Option<super::Metering>,
}

/// The provider's own path: what follows `/v1/proxy/{provider}`.
fn upstream_path<'r>(ctx: &Ctx<'r>, info: &ProviderInfo) -> &'r str {
    ctx.request
        .url
        .path()
        .strip_prefix("/v1/proxy/")
        .and_then(|p| p.strip_prefix(info.id.as_str()))
        .unwrap_or_default()
}

async fn forward(
    ctx: &Ctx<'_>,
    info: &'static ProviderInfo,
    operation: &providers::Operation,
    path: &str,
    ask: &Ask<'_>,
    facts: &mut Facts,
    after: &mut After,
) -> Result<Response, ApiError> {
    let key_use = ctx.key_use();
    let mut key = key_use
        .key_for(&ctx.user, ctx.caller().network, ask, facts)
        .await?;
    // A body small enough to be kept is read first, so that the next key can be sent it
    // again; a larger one (or one of unknown length) streams through, and gets one key.
    let held = if operation.method == Method::Post && replayable(ctx) {
        ctx.request
            .read_body(ctx.config.proxy_max_body_bytes)
            .await
            .map_err(|e| e.with_headers(receipts(&key, 1)))?;
        Some(ctx.request.body().to_vec())
    } else {
        None
    };
    // A streamed chat is asked for its usage, to meter it; the caller who did not ask for it
    // does not see it. Unmetered (`METERING=off`), the body goes as it came.
    let (held, strip) = match held {
        Some(body) if ctx.config.metering => {
            let (body, strip) = ask_for_usage(info, operation, body);
            (Some(body), strip)
        }
        held => (held, false),
    };
    let tries = if operation.method == Method::Get || held.is_some() {
        ctx.config.proxy_max_attempts
    } else {
        1
    };
    let reserve = reservation(info, operation, held.as_deref());
    let mut attempt = 1;
    loop {
        // The key's budget first: one at its budget gives way to the next like a cooling
        // one, before the provider is contacted (nothing of the body has gone yet).
        let admitted = match key_use.admit(&ctx.user, &key, &reserve).await {
            Ok(a) => a,
            Err(Error::BudgetExceeded(b)) => {
                let mut next_facts = Facts::new(Action::CredentialUsed);
                next_facts.provider = Some(info.id);
                if key.credential.is_some() {
                    if let Some(next) = key_use.next_key(&mut key, &mut next_facts)? {
                        facts.failure = Some("budget_exceeded");
                        after.earlier.push(std::mem::replace(facts, next_facts));
                        key = next;
                        continue;
                    }
                }
                let e: ApiError = Error::BudgetExceeded(b).into();
                return Err(e.with_headers(receipts(&key, attempt)));
            }
            Err(e) => return Err(ApiError::from(e).with_headers(receipts(&key, attempt))),
        };
        let body = match &held {
            Some(bytes) => Sent::Held(bytes.clone()),
            None if operation.method == Method::Post => Sent::Streamed,
            None => Sent::Nothing,
        };
        let step = call(ctx, info, operation, path, &key, body, attempt, facts).await;
        let refusal = match step {
            Step::Answer(Ok(mut response)) => {
                let mut admitted = admitted;
                match watch_usage(
                    ctx,
                    info,
                    operation,
                    &key,
                    (held.as_deref(), strip),
                    &mut response,
                    &mut admitted,
                ) {
                    Some(watch) => after.metering = Some(watch),
                    // Unmetered, a claim keeps what it reserved: the use is not known.
                    None if !ctx.config.metering => {
                        settle(ctx, admitted.as_ref(), &reserve, info).await
                    }
                    None => settle_unused(ctx, admitted.as_ref(), info).await,
                }
                return Ok(response);
            }
            Step::Answer(Err(e)) => {
                settle_unused(ctx, admitted.as_ref(), info).await;
                return Err(e);
            }
            Step::Refused(refusal) => refusal,
        };
        // The provider refused the key: what it claimed of its budget is given back.
        if let Some(a) = &admitted {
            if let Err(e) = key_use.release(a).await {
                (ctx.app.log)(&format!(
                    "proxy: a budget claim could not be given back: {e}"
                ));
            }
        }
        // Refused before any byte went to the caller: the user's next key takes over.
        if attempt < tries {
            let mut next_facts = Facts::new(Action::CredentialUsed);
            next_facts.provider = Some(info.id);
            if let Some(next) = key_use.next_key(&mut key, &mut next_facts)? {
                facts.failure = Some(refusal.code());
                after.earlier.push(std::mem::replace(facts, next_facts));
                key = next;
                attempt += 1;
                continue;
            }
        }
        return refusal.answer();
    }
}

/// A streamed OpenAI chat whose caller did not ask for its usage is asked for it
/// (`stream_options.include_usage`), so that the call can be metered: the new body, and
/// whether the usage chunk is to be left out of what the caller receives. Anything else
/// goes as it came.
fn ask_for_usage(
    info: &ProviderInfo,
    operation: &providers::Operation,
    body: Vec<u8>,
) -> (Vec<u8>, bool) {
    if info.id.as_str() != "openai" || operation.path != "/v1/chat/completions" {
        return (body, false);
    }
    let Ok(serde_json::Value::Object(mut v)) = serde_json::from_slice::<serde_json::Value>(&body)
    else {
        return (body, false);
    };
    if v.get("stream") != Some(&serde_json::Value::Bool(true)) {
        return (body, false);
    }
    let options = v
        .entry("stream_options")
        .or_insert_with(|| serde_json::json!({}));
    let Some(options) = options.as_object_mut() else {
        return (body, false);
    };
    if options.get("include_usage") == Some(&serde_json::Value::Bool(true)) {
        return (body, false);
    }
    options.insert("include_usage".into(), serde_json::Value::Bool(true));
    match serde_json::to_vec(&v) {
        Ok(asked) => (asked, true),
        Err(_) => (body, false),
    }
}

/// What a call claims of a budget before it starts: the characters a speech request asks
/// for, and the output tokens a completion may take (its `max_tokens`, where it says).
fn reservation(
    info: &ProviderInfo,
    operation: &providers::Operation,
    held: Option<&[u8]>,
) -> Amounts {
    let mut reserve = Amounts::default();
    reserve.set(Unit::Requests, 1.0);
    let Some(body) = held else {
        return reserve;
    };
    match operation.capability {
        Capability::Tts => {
            if let Some(n) = metering::spoken_characters(metering::dialect_of(info.id), body) {
                reserve.set(Unit::Characters, n as f64);
            }
        }
        Capability::Llm => {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
                let max = [
                    "/max_tokens",
                    "/max_completion_tokens",
                    "/max_output_tokens",
                    "/generationConfig/maxOutputTokens",
                ]
                .iter()
                .find_map(|p| v.pointer(p).and_then(serde_json::Value::as_f64))
                .filter(|n| n.is_finite() && *n >= 0.0);
                if let Some(n) = max {
                    reserve.set(Unit::OutputTokens, n);
                }
            }
        }
        _ => {}
    }
    reserve
}

/// An admitted call that used nothing the vault can read (an error answer): the request
/// stays counted, the rest of its claim is given back.
async fn settle_unused(ctx: &Ctx<'_>, admitted: Option<&Admitted>, info: &ProviderInfo) {
    let mut used = Amounts::default();
    used.set(Unit::Requests, 1.0);
    settle(ctx, admitted, &used, info).await;
}

/// Settles an admitted call's claim with what it `used`.
async fn settle(ctx: &Ctx<'_>, admitted: Option<&Admitted>, used: &Amounts, info: &ProviderInfo) {
    let Some(a) = admitted else {
        return;
    };
    if let Err(e) = ctx.key_use().settle(a, used, info.id).await {
        (ctx.app.log)(&format!("proxy: a budget claim could not be settled: {e}"));
    }
}

/// Whether the caller's body is kept to be sent again to the next key: framed by a length
/// within [`REPLAY_MAX_BYTES`] (and the proxy's own limit).
fn replayable(ctx: &Ctx<'_>) -> bool {
    ctx.request.declared_length().is_some_and(|n| {
        n <= REPLAY_MAX_BYTES as u64 && n <= ctx.config.proxy_max_body_bytes as u64
    })
}

/// The caller's body for one attempt.
enum Sent {
    Nothing,
    /// Kept, sent to each key in turn.
    Held(Vec<u8>),
    /// Streamed through, once.
    Streamed,
}

/// What one attempt came to.
enum Step {
    /// The answer (the provider's own, or the vault's refusal) for the caller.
    Answer(Result<Response, ApiError>),
    /// The provider refused the user's key before any byte of its answer went on: the
    /// next key may take over; if none does, this is the answer.
    Refused(Refusal),
}

struct Refusal {
    why: RefusedFor,
    answer: Result<Response, ApiError>,
}

#[derive(Clone, Copy)]
enum RefusedFor {
    BadKey,
    Spent,
    RateLimited,
}

impl Refusal {
    fn code(&self) -> &'static str {
        match self.why {
            RefusedFor::BadKey => "credential_invalid",
            RefusedFor::Spent => "quota_exhausted",
            RefusedFor::RateLimited => "provider_rate_limited",
        }
    }

    fn answer(self) -> Result<Response, ApiError> {
        self.answer
    }
}

/// One call of the provider with `key`, attempt number `attempt`.
#[allow(clippy::too_many_arguments)]
async fn call(
    ctx: &Ctx<'_>,
    info: &'static ProviderInfo,
    operation: &providers::Operation,
    path: &str,
    key: &KeyInUse,
    sent: Sent,
    attempt: u32,
    facts: &mut Facts,
) -> Step {
    let receipts = receipts(key, attempt);
    let with_receipts = |e: ApiError| e.with_headers(receipts.clone());
    let url = match upstream_url(ctx, info, operation, path, key) {
        Ok(u) => u,
        Err(e) => return Step::Answer(Err(with_receipts(e))),
    };
    let mut headers: Vec<(String, String)> = ctx
        .request
        .headers
        .iter()
        .filter(|(n, _)| FORWARDED_REQUEST_HEADERS.contains(&n.as_str()))
        .cloned()
        .collect();
    for (name, value) in info.call_headers {
        if ctx.request.header(name).is_none() {
            headers.push(((*name).to_owned(), (*value).to_owned()));
        }
    }
    if let Some((name, value)) = info.auth.header(&key.key) {
        headers.push((name.to_owned(), value));
    }
    let (body, stream) = match sent {
        Sent::Nothing => (None, None),
        Sent::Held(bytes) => (Some(bytes), None),
        // The caller's body flows into the call as it arrives, never held here.
        Sent::Streamed => (
            None,
            ctx.request.forward_body(ctx.config.proxy_max_body_bytes),
        ),
    };
    let request = HttpRequest {
        method: operation.method,
        url,
        headers,
        body,
        max_response_bytes: ERROR_BODY_BYTES,
    };
    let upstream = ctx.app.upstream;
    let answer = match upstream.open(request, stream, HEAD_TIMEOUT_MS).await {
        Ok(a) => a,
        Err(e) => return Step::Answer(Err(with_receipts(unreachable(info, &e)))),
    };
    record::proxied(facts, key, operation, answer.status, attempt);
    if (300..400).contains(&answer.status) {
        return Step::Answer(Err(with_receipts(ApiError::provider_error(
            info.id,
            format!(
                "{} answered with a redirect, which the vault does not follow.",
                info.name
            ),
        ))));
    }
    let own_key = key.credential.is_some();
    // An answer that is the provider's own says so (and with which status), so a client
    // can tell it from the vault's own refusals (problem+json, without this header).
    let upstream_status = (UPSTREAM_STATUS, answer.status.to_string());
    let pass_headers = |headers: &[(String, String)]| -> Vec<(String, String)> {
        headers
            .iter()
            .filter_map(|(n, v)| {
                let name = n.as_str();
                if PASSED_RESPONSE_HEADERS.contains(&name)
                    || (own_key && name.starts_with("x-ratelimit-"))
                {
                    Some((n.clone(), v.clone()))
                } else if UPSTREAM_REQUEST_IDS.contains(&name) {
                    Some(("x-upstream-request-id".to_owned(), v.clone()))
                } else {
                    None
                }
            })
            .chain(receipts.iter().map(|(n, v)| ((*n).to_owned(), v.clone())))
            .chain(std::iter::once((
                upstream_status.0.to_owned(),
                upstream_status.1.clone(),
            )))
            .collect()
    };
    if answer.status < 400 {
        return Step::Answer(Ok(Response {
            status: answer.status,
            headers: pass_headers(&answer.headers),
            body: Vec::new(),
            stream: Some(answer.body),
            upgrade: None,
        }));
    }

    // An error: read it (bounded) and judge the key by it.
    let status = answer.status;
    let body = match upstream
        .read(answer.body, ERROR_BODY_BYTES, ERROR_BODY_TIMEOUT_MS)
        .await
    {
        Ok(b) => b,
        Err(e) => return Step::Answer(Err(with_receipts(unreachable(info, &e)))),
    };
    let judged = HttpResponse {
        status,
        headers: answer.headers,
        body,
    };
    let text = ProviderText::new(&key.key);
    if let Some((verdict, message)) = key_verdict(info, &judged) {
        let message = text.clean(&message, crate::probe::MAX_MESSAGE_CHARS);
        let error = with_receipts(judge(ctx, info, key, verdict, &message).await);
        return match (&key.credential, verdict) {
            (Some(_), Verdict::Refused) => Step::Refused(Refusal {
                why: RefusedFor::BadKey,
                answer: Err(error),
            }),
            (Some(_), Verdict::QuotaExhausted) => Step::Refused(Refusal {
                why: RefusedFor::Spent,
                answer: Err(error),
            }),
            (None, _) => Step::Answer(Err(error)),
        };
    }
    facts.failure = Some(if status == 429 {
        "provider_rate_limited"
    } else {
        "provider_error"
    });
    // Passed on as it came (a 429 with its Retry-After), unless it quotes the key: a
    // system key must never reach a user, nor a key reach a log through an error page.
    let answer = if text.quotes_key(&String::from_utf8_lossy(&judged.body)) {
        (ctx.app.log)(&format!(
            "proxy: {}'s {status} answer quoted the key and was withheld",
            info.id
        ));
        Err(with_receipts(ApiError::provider_error(
            info.id,
            format!(
                "{} answered {status}; its answer was withheld because it quoted the key.",
                info.name
            ),
        )))
    } else {
        Ok(Response {
            status,
            headers: pass_headers(&judged.headers),
            body: judged.body.clone(),
            stream: None,
            upgrade: None,
        })
    };
    // A user's key the provider rate-limited cools down, and the next may take over.
    if let (429, Some(credential)) = (status, &key.credential) {
        let wait = crate::probe::header_hint_ms(&judged, ctx.app.clock.now());
        if let Err(e) = ctx.key_use().cool_down(credential, wait).await {
            (ctx.app.log)(&format!(
                "proxy: credential {} could not be cooled down: {e}",
                credential.id
            ));
        }
        return Step::Refused(Refusal {
            why: RefusedFor::RateLimited,
            answer,
        });
    }
    Step::Answer(answer)
}

/// Starts reading the usage of a call's answer as it streams to the caller (taking the
/// budget claim along, to be settled once it has gone on); `None` when the answer has no
/// body or metering is off (`METERING`), where it passes on untapped.
fn watch_usage(
    ctx: &Ctx<'_>,
    info: &ProviderInfo,
    operation: &providers::Operation,
    key: &KeyInUse,
    (held, strip): (Option<&[u8]>, bool),
    response: &mut Response,
    admitted: &mut Option<Admitted>,
) -> Option<super::Metering> {
    if !ctx.config.metering {
        return None;
    }
    let stream = response.stream.take()?;
    let admitted = admitted.take();
    let dialect = metering::dialect_of(info.id);
    let characters = match (operation.capability, held) {
        (Capability::Tts, Some(body)) => metering::spoken_characters(dialect, body),
        _ => None,
    };
    let call = metering::Call {
        user: ctx.user.clone(),
        at: ctx.app.clock.now(),
        provider: info.id,
        source: key.source,
        credential_id: key.credential.as_ref().map(|c| c.id.clone()),
        model: key.model.clone(),
        capability: operation.capability,
        characters,
        usage_in_answer: operation.method == Method::Post
            && operation.capability != Capability::Tts,
    };
    let content_type = response
        .headers
        .iter()
        .find(|(n, _)| n == "content-type")
        .map(|(_, v)| v.as_str());
    let (stream, watch) =
        Watch::start(ctx.app.upstream, stream, dialect, content_type, call, strip);
    response.stream = Some(stream);
    Some(super::Metering {
        watch: watch.redacting(ProviderText::new(&key.key)),
        admitted,
    })
}

/// What a refused or spent key does: a user's credential takes the status (with its
/// `credential.validated` event) and the caller is told to replace it.
pub(super) async fn judge(
    ctx: &Ctx<'_>,
    info: &ProviderInfo,
    key: &KeyInUse,
    verdict: Verdict,
    message: &str,
) -> ApiError {
    let Some(credential) = &key.credential else {
        (ctx.app.log)(&format!(
            "proxy: the system key for {} was refused ({verdict:?}); an operator must replace it",
            info.id
        ));
        return match verdict {
            Verdict::QuotaExhausted => ApiError::quota_exhausted(info.id, message),
            Verdict::Refused => ApiError::provider_error(
                info.id,
                format!(
                    "{} refused the service's own key; the operators have been told.",
                    info.name
                ),
            ),
        };
    };
    match ctx
        .key_use()
        .mark_in_use(credential, verdict, message, ctx.origin())
        .await
    {
        Ok(Some(event)) => ctx.app.audit.nudge(&event).await,
        Ok(None) => {}
        Err(e) => (ctx.app.log)(&format!(
            "proxy: credential {} could not be marked: {}",
            credential.id, e
        )),
    }
    match verdict {
        Verdict::Refused => ApiError::credential_invalid(info.id, credential.id.clone()),
        Verdict::QuotaExhausted => {
            let mut e = ApiError::quota_exhausted(info.id, message);
            e.credential_id = Some(credential.id.clone());
            e
        }
    }
}

/// Where the operation goes: the provider's configured endpoint (with the credential's
/// region), or the user's own `base_url`, which passes the endpoint guard again first;
/// the caller's query string is kept, minus any key parameter.
fn upstream_url(
    ctx: &Ctx<'_>,
    info: &ProviderInfo,
    operation: &providers::Operation,
    path: &str,
    key: &KeyInUse,
) -> Result<String, ApiError> {
    let params = &key.params;
    let target = Target {
        bases: ctx.config.endpoints(info.id),
        params,
    };
    if info.has_field("region") && params.region.is_none() {
        return Err(ApiError::not_configured(format!(
            "{} needs a region; the system key has none (SYSTEM_KEY_{}_REGION).",
            info.name,
            info.id.as_str().to_ascii_uppercase()
        )));
    }
    let mut url = if info.endpoints.is_empty() {
        let Some(base) = &params.base_url else {
            return Err(ApiError::not_configured(format!(
                "{} needs a base_url; the system key has none (SYSTEM_KEY_{}_BASE_URL).",
                info.name,
                info.id.as_str().to_ascii_uppercase()
            )));
        };
        check_base_url(base, ctx.config.allow_private_base_urls).map_err(|e| {
            ApiError::provider_unreachable(info.id, format!("The base_url is not allowed: it {e}"))
        })?;
        target.user_url(path)
    } else {
        target.url_at(operation.endpoint, path)
    };
    // The caller's query as it was written, minus any parameter that carries a credential.
    let kept: Vec<&str> = ctx
        .request
        .url
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            let name = url::form_urlencoded::parse(name.as_bytes())
                .next()
                .map(|(k, _)| k.to_ascii_lowercase())
                .unwrap_or_default();
            !name.is_empty() && !DROPPED_QUERY.contains(&name.as_str())
        })
        .collect();
    if !kept.is_empty() {
        url = format!("{url}?{}", kept.join("&"));
    }
    Ok(url)
}

/// The headers that say whose key served the call, why, and how many keys were tried.
fn receipts(key: &KeyInUse, attempts: u32) -> Vec<(&'static str, String)> {
    let mut out = vec![
        ("x-byok-source", key.source.as_str().to_owned()),
        ("x-byok-attempts", attempts.to_string()),
    ];
    if let Some(c) = &key.credential {
        out.push(("x-byok-credential-id", c.id.as_str().to_owned()));
    }
    if let Some(r) = key.fallback_reason {
        out.push(("x-byok-fallback-reason", r.as_str().to_owned()));
    }
    if !key.skipped.is_empty() {
        let ids: Vec<&str> = key.skipped.iter().map(|c| c.id.as_str()).collect();
        out.push(("x-byok-skipped", ids.join(", ")));
    }
    debug_assert!(key.source == Source::System || key.fallback_reason.is_none());
    out
}

/// What a failed upstream call answers: the provider's fault, or the caller's body.
fn unreachable(info: &ProviderInfo, e: &HttpError) -> ApiError {
    match e {
        // The caller's own body passed the limit while it was being forwarded.
        HttpError::RequestTooLarge(n) => ApiError::payload_too_large(*n),
        HttpError::TooLarge(n) => ApiError::provider_error(
            info.id,
            format!("{}'s error answer is larger than {n} bytes.", info.name),
        ),
        _ => ApiError::provider_unreachable(
            info.id,
            format!("{} could not be reached: {e}.", info.name),
        ),
    }
    .caused_by(format!("proxy to {}: {e}", info.id))
}
