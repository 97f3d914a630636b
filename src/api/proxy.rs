//! `ANY /v1/proxy/{provider}/{path…}`: one of the provider's real operations, called with
//! the key the resolution rule picks, so the key never leaves the vault.
//!
//! The core decides everything here (the caller, the allow-listed operation, the key, the
//! upstream request's head) and the Worker pipes the bodies: the upstream answer comes
//! back as a [`BodyStream`](crate::ports::BodyStream) the core never reads, except an
//! error answer, which it reads (bounded) to judge the key by it.

use serde_json::json;

use super::router::{Ctx, Outcome};
use super::Response;
use crate::audit::{Action, Facts, Source};
use crate::domain::CredentialId;
use crate::endpoint_guard::check_base_url;
use crate::error::ApiError;
use crate::ports::{HttpError, HttpRequest, HttpResponse, Method};
use crate::probe::{Failure, Verdict as Judged};
use crate::providers::{self, ProviderInfo, Target};
use crate::text::ProviderText;
use crate::vault::resolution::Ask;
use crate::vault::{KeyInUse, Verdict};

/// How long the provider has to start answering (a long completion streams its head
/// early; a non-streamed one may think for a while).
const HEAD_TIMEOUT_MS: u64 = 120_000;
/// The most of an error answer that is read (to judge the key by it and pass it on).
const ERROR_BODY_BYTES: usize = 64 * 1024;

/// Request headers that never reach the provider: the caller's credentials and cookies,
/// any key header, hop-by-hop and proxy headers, where the call came from, and the
/// vault's own options.
const DROPPED_REQUEST_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "accept-encoding",
    "origin",
    "referer",
    "forwarded",
    "x-real-ip",
    "true-client-ip",
    "x-api-key",
    "xi-api-key",
    "x-goog-api-key",
    "api-key",
    "ocp-apim-subscription-key",
];
const DROPPED_REQUEST_PREFIXES: &[&str] = &["cf-", "x-forwarded-", "proxy-", "x-byok-", "sec-"];

/// Answer headers that never reach the caller: cookies, hop-by-hop headers, framing the
/// Worker redoes, and the provider's own CORS (the vault's applies).
const DROPPED_RESPONSE_HEADERS: &[&str] = &[
    "set-cookie",
    "set-cookie2",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "trailer",
    "upgrade",
    "www-authenticate",
];
const DROPPED_RESPONSE_PREFIXES: &[&str] = &["access-control-", "cf-", "x-byok-"];

fn kept(name: &str, exact: &[&str], prefixes: &[&str]) -> bool {
    !exact.contains(&name) && !prefixes.iter().any(|p| name.starts_with(p))
}

pub(super) async fn proxy(ctx: &Ctx<'_>) -> Outcome {
    let mut facts = Facts::new(Action::CredentialUsed);
    match call(ctx, &mut facts).await {
        // Refused before any key was chosen: nothing was used, nothing to audit.
        Err(Early(e)) => Outcome::unaudited(Err(e)),
        Ok(result) => Outcome::audited(result, facts),
    }
}

/// A refusal before resolution (unknown provider, an operation not allowed).
struct Early(ApiError);

async fn call(ctx: &Ctx<'_>, facts: &mut Facts) -> Result<Result<Response, ApiError>, Early> {
    let info = providers::find(ctx.param(0))
        .ok_or_else(|| Early(ApiError::unknown_provider(ctx.param(0))))?
        .info();
    let path = ctx
        .request
        .url
        .path()
        .strip_prefix("/v1/proxy/")
        .and_then(|p| p.strip_prefix(info.id.as_str()))
        .unwrap_or_default();
    let Some(operation) = info.operation(&ctx.request.method, path) else {
        return Err(Early(
            ApiError::forbidden(format!(
                "{} {path} is not an operation the proxy forwards to {}.",
                ctx.request.method, info.name
            ))
            .provider(info.id),
        ));
    };
    let credential_id = match ctx.request.header("x-byok-credential-id") {
        None => None,
        Some(raw) => Some(CredentialId::parse(raw.trim()).ok_or_else(|| {
            Early(ApiError::invalid_request(vec![
                crate::error::FieldError::new("X-Byok-Credential-Id", "is not a credential id"),
            ]))
        })?),
    };
    let allow_fallback = !ctx
        .request
        .header("x-byok-allow-fallback")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"));
    let ask = Ask {
        capability: operation.capability,
        provider: Some(info.id),
        credential_id: credential_id.as_ref(),
        allow_fallback,
    };
    facts.provider = Some(info.id);
    Ok(forward(ctx, info, operation, &ask, facts).await)
}

async fn forward(
    ctx: &Ctx<'_>,
    info: &'static ProviderInfo,
    operation: &providers::Operation,
    ask: &Ask<'_>,
    facts: &mut Facts,
) -> Result<Response, ApiError> {
    let vault = ctx.vault();
    let key = vault.key_for(&ctx.user, ask, facts).await?;
    let receipts = receipts(&key);
    let with_receipts = |mut e: ApiError| {
        e.headers.extend(receipts.iter().cloned());
        e
    };
    let url = upstream_url(ctx, info, operation, &key).map_err(with_receipts)?;
    let mut headers: Vec<(String, String)> = ctx
        .request
        .headers
        .iter()
        .filter(|(n, _)| {
            kept(n, DROPPED_REQUEST_HEADERS, DROPPED_REQUEST_PREFIXES)
                && *n != info.auth.header_name()
        })
        .cloned()
        .collect();
    if let Some((name, value)) = info.auth.header(&key.key) {
        headers.push((name.to_owned(), value));
    }
    let request = HttpRequest {
        method: operation.method,
        url,
        headers,
        body: (operation.method == Method::Post).then(|| ctx.request.body.clone()),
        max_response_bytes: ERROR_BODY_BYTES,
    };
    let upstream = ctx.app.upstream;
    let answer = upstream
        .open(request, HEAD_TIMEOUT_MS)
        .await
        .map_err(|e| with_receipts(unreachable(info, &e)))?;
    facts.detail = Some(json!({
        "operation": format!("{} {}", operation.method.as_str(), operation.path),
        "status": answer.status,
        "model": key.model,
        "fallback_reason": key.fallback_reason,
        "tier": key.tier,
    }));
    if (300..400).contains(&answer.status) {
        return Err(with_receipts(ApiError::provider_error(
            info.id,
            format!(
                "{} answered with a redirect, which the vault does not follow.",
                info.name
            ),
        )));
    }
    let pass_headers = |headers: &[(String, String)]| -> Vec<(String, String)> {
        headers
            .iter()
            .filter(|(n, _)| kept(n, DROPPED_RESPONSE_HEADERS, DROPPED_RESPONSE_PREFIXES))
            .cloned()
            .chain(receipts.iter().map(|(n, v)| ((*n).to_owned(), v.clone())))
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
        .read(answer.body, ERROR_BODY_BYTES)
        .await
        .map_err(|e| with_receipts(unreachable(info, &e)))?;
    let judged = HttpResponse {
        status,
        headers: answer.headers,
        body,
    };
    let text = ProviderText::new(&key.key);
    let verdict = match (info.classify)(&judged) {
        Judged::Reject(Failure::InvalidKey(m)) => Some((Verdict::Refused, m)),
        Judged::Reject(Failure::QuotaExhausted(m))
        | Judged::Retry {
            failure: Failure::QuotaExhausted(m),
            ..
        } => Some((Verdict::QuotaExhausted, m)),
        _ => None,
    };
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
        .vault()
        .mark_in_use(credential, verdict, message, ctx.origin())
        .await
    {
        Ok(Some(event)) => ctx.app.audit.nudge(&event).await,
        Ok(None) => {}
        Err(e) => (ctx.app.log)(&format!(
            "proxy: credential {} could not be marked: {}",
            credential.id,
            e.cause.as_deref().unwrap_or(e.code)
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
    key: &KeyInUse,
) -> Result<String, ApiError> {
    let params = key
        .credential
        .as_ref()
        .map(|c| c.params.clone())
        .unwrap_or_default();
    let path = ctx
        .request
        .url
        .path()
        .strip_prefix("/v1/proxy/")
        .and_then(|p| p.strip_prefix(info.id.as_str()))
        .unwrap_or_default();
    let target = Target {
        bases: ctx.config.endpoints(info.id),
        params: &params,
    };
    let mut url = if info.endpoints.is_empty() {
        let Some(base) = &params.base_url else {
            return Err(ApiError::no_credential(format!(
                "{} needs the base_url of a credential; the system key has none.",
                info.name
            ))
            .provider(info.id));
        };
        check_base_url(base, ctx.config.allow_private_base_urls).map_err(|e| {
            ApiError::provider_unreachable(info.id, format!("The base_url is not allowed: it {e}"))
        })?;
        target.user_url(path)
    } else {
        target.url_at(operation.endpoint, path)
    };
    let query: Vec<(String, String)> = ctx
        .request
        .url
        .query_pairs()
        .filter(|(k, _)| {
            !matches!(
                k.to_ascii_lowercase().as_str(),
                "key" | "api_key" | "apikey" | "token" | "access_token"
            )
        })
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if !query.is_empty() {
        let encoded: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query)
            .finish();
        url = format!("{url}?{encoded}");
    }
    Ok(url)
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

fn unreachable(info: &ProviderInfo, e: &HttpError) -> ApiError {
    match e {
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
