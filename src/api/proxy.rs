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
use crate::domain::CredentialId;
use crate::endpoint_guard::check_base_url;
use crate::http::{HttpError, HttpRequest, HttpResponse, Method};
use crate::probe::{Failure, Verdict as Judged};
use crate::providers::{self, ProviderInfo, Target};
use crate::redact::ProviderText;
use crate::usage::{record, Ask, KeyInUse, Verdict};

/// How long the provider has to start answering (a long completion streams its head
/// early; a non-streamed one may think for a while).
const HEAD_TIMEOUT_MS: u64 = 120_000;
/// The most of an error answer that is read (to judge the key by it and pass it on).
const ERROR_BODY_BYTES: usize = 64 * 1024;
/// How long an error answer's body (at most 64 KiB) has to arrive once its head is in: a
/// provider that sends a head and then trickles (or stalls) cannot hold the request open.
const ERROR_BODY_TIMEOUT_MS: u64 = 5_000;

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
const DROPPED_QUERY: &[&str] = &[
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
    let result = forward(ctx, info, operation, path, &ask, &mut facts).await;
    Outcome::audited(result, facts)
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
) -> Result<Response, ApiError> {
    let key = ctx
        .key_use()
        .key_for(&ctx.user, ctx.caller().network, ask, facts)
        .await?;
    let receipts = receipts(&key);
    let with_receipts = |mut e: ApiError| {
        e.headers.extend(receipts.iter().cloned());
        e
    };
    let url = upstream_url(ctx, info, operation, path, &key).map_err(with_receipts)?;
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
    let request = HttpRequest {
        method: operation.method,
        url,
        headers,
        body: None,
        max_response_bytes: ERROR_BODY_BYTES,
    };
    // The caller's body flows into the call as it arrives, never held here.
    let body = if operation.method == Method::Post {
        ctx.request.forward_body(ctx.config.proxy_max_body_bytes)
    } else {
        None
    };
    let upstream = ctx.app.upstream;
    let answer = upstream
        .open(request, body, HEAD_TIMEOUT_MS)
        .await
        .map_err(|e| with_receipts(unreachable(info, &e)))?;
    record::proxied(facts, &key, operation, answer.status);
    if (300..400).contains(&answer.status) {
        return Err(with_receipts(ApiError::provider_error(
            info.id,
            format!(
                "{} answered with a redirect, which the vault does not follow.",
                info.name
            ),
        )));
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
        return Ok(Response {
            status: answer.status,
            headers: pass_headers(&answer.headers),
            body: Vec::new(),
            stream: Some(answer.body),
        });
    }

    // An error: read it (bounded) and judge the key by it.
    let status = answer.status;
    let body = upstream
        .read(answer.body, ERROR_BODY_BYTES, ERROR_BODY_TIMEOUT_MS)
        .await
        .map_err(|e| with_receipts(unreachable(info, &e)))?;
    let judged = HttpResponse {
        status,
        headers: answer.headers,
        body,
    };
    let text = ProviderText::new(&key.key);
    let verdict = key_verdict(info, &judged);
    if let Some((verdict, message)) = verdict {
        let message = text.clean(&message, crate::probe::MAX_MESSAGE_CHARS);
        return Err(with_receipts(
            judge(ctx, info, &key, verdict, &message).await,
        ));
    }
    facts.failure = Some(if status == 429 {
        "provider_rate_limited"
    } else {
        "provider_error"
    });
    // Passed on as it came (a 429 with its Retry-After), unless it quotes the key: a
    // system key must never reach a user, nor a key reach a log through an error page.
    if text.quotes_key(&String::from_utf8_lossy(&judged.body)) {
        (ctx.app.log)(&format!(
            "proxy: {}'s {status} answer quoted the key and was withheld",
            info.id
        ));
        return Err(with_receipts(ApiError::provider_error(
            info.id,
            format!(
                "{} answered {status}; its answer was withheld because it quoted the key.",
                info.name
            ),
        )));
    }
    Ok(Response {
        status,
        headers: pass_headers(&judged.headers),
        body: judged.body,
        stream: None,
    })
}

/// What a refused or spent key does: a user's credential takes the status (with its
/// `credential.validated` event) and the caller is told to replace it.
async fn judge(
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

/// What an error answer says of the key itself, if anything: refused (only a 401 or 403,
/// or Google's 400 that names `API_KEY_INVALID` as its reason; never a 404 or a message
/// the request could have echoed) or out of quota (the provider's own quota signals).
fn key_verdict(info: &ProviderInfo, answer: &HttpResponse) -> Option<(Verdict, String)> {
    match (info.classify)(answer) {
        Judged::Reject(Failure::InvalidKey(m))
            if matches!(answer.status, 401 | 403) || names_invalid_key(answer) =>
        {
            Some((Verdict::Refused, m))
        }
        Judged::Reject(Failure::QuotaExhausted(m))
        | Judged::Retry {
            failure: Failure::QuotaExhausted(m),
            ..
        } => Some((Verdict::QuotaExhausted, m)),
        _ => None,
    }
}

/// Google's structured reason for a bad key (`error.details[].reason`), which a request
/// cannot put there.
fn names_invalid_key(answer: &HttpResponse) -> bool {
    answer.status == 400
        && answer
            .json()
            .as_ref()
            .and_then(|b| b.pointer("/error/details"))
            .and_then(|d| d.as_array())
            .is_some_and(|d| {
                d.iter()
                    .any(|x| x.get("reason").and_then(|r| r.as_str()) == Some("API_KEY_INVALID"))
            })
}

/// The headers that say whose key served the call, and why.
fn receipts(key: &KeyInUse) -> Vec<(&'static str, String)> {
    let mut out = vec![("x-byok-source", key.source.as_str().to_owned())];
    if let Some(c) = &key.credential {
        out.push(("x-byok-credential-id", c.id.as_str().to_owned()));
    }
    if let Some(r) = key.fallback_reason {
        out.push(("x-byok-fallback-reason", r.as_str().to_owned()));
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
