//! `POST /v1/realtime/{provider}/sessions`: the provider's own short-lived browser
//! credential, minted with the key the resolution rule picks (as on the proxy: the same
//! limits on system keys, budgets, and judging of a key the provider refuses), so a
//! browser talks to the provider directly and the long-lived key never leaves the vault.
//! What is minted, for how long and where the browser connects: `crate::realtime`.

use serde_json::json;

use super::commands::json_body;
use super::context::{Ctx, Outcome};
use super::problem::ApiError;
use super::proxy::judge;
use super::Response;
use crate::audit::{Action, Facts};
use crate::budgets::{Amounts, Unit};
use crate::domain::CredentialId;
use crate::error::FieldError;
use crate::probe::{Failure, Verdict as Judged, MAX_MESSAGE_CHARS};
use crate::providers::realtime::{Realtime, RealtimeKind};
use crate::providers::{self, ProviderInfo, Target};
use crate::realtime::{Ask as SessionAsk, Mint};
use crate::redact::ProviderText;
use crate::usage::{key_verdict, record, Ask, Verdict};

/// How long the provider has to answer a minting.
const MINT_TIMEOUT_MS: u64 = 15_000;
const MAX_MODEL: usize = 200;
const MAX_VOICE_ID: usize = 100;

/// A model or voice id as it may go into a provider's URL or body: letters, digits and
/// `-._:` (and `/` in a model, for Google's `models/…`).
fn safe_id(s: &str, slash: bool) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b) || (slash && b == b'/'))
        && !s
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
}

/// The kinds `realtime` mints, in words.
fn kinds(realtime: &Realtime) -> String {
    let names: Vec<&str> = realtime.kinds.iter().map(|k| k.as_str()).collect();
    names.join(" or ")
}

pub(super) async fn sessions(ctx: &Ctx<'_>) -> Outcome {
    let refused = |e: ApiError| Outcome::unaudited(Err(e));
    let Some(info) = providers::find(ctx.param(0)).map(|p| p.info()) else {
        return refused(ApiError::unknown_provider(ctx.param(0)));
    };
    let mut body = match json_body(ctx.request) {
        Ok(b) => b,
        Err(e) => return refused(e),
    };
    let kind = body.string("kind", true, 16);
    let model = body.string("model", false, MAX_MODEL);
    let voice_id = body.string("voice_id", false, MAX_VOICE_ID);
    let ttl_seconds = body.integer("ttl_seconds", 1..=86_400);
    let credential_id = body.string("credential_id", false, 64);
    let allow_fallback = body.bool("allow_fallback").unwrap_or(true);
    let realtime = info.realtime;
    if realtime.is_none() {
        body.errors.push(FieldError::new(
            "provider",
            format!("{} has no realtime credential the vault mints", info.name),
        ));
    }
    let kind = match (kind, realtime) {
        (Some(k), Some(r)) => match RealtimeKind::parse(&k).filter(|k| r.kinds.contains(k)) {
            Some(k) => Some(k),
            None => {
                let why = format!("must be {} for {}", kinds(r), info.name);
                body.errors.push(FieldError::new("kind", why));
                None
            }
        },
        _ => None,
    };
    if model.as_deref().is_some_and(|m| !safe_id(m, true)) {
        body.errors.push(FieldError::new(
            "model",
            "may hold only letters, digits and -._:/",
        ));
    }
    if voice_id.as_deref().is_some_and(|v| !safe_id(v, false)) {
        body.errors.push(FieldError::new(
            "voice_id",
            "may hold only letters, digits and -._:",
        ));
    }
    if let (Some(k), Some(r), None) = (kind, realtime, &voice_id) {
        if r.needs_voice.contains(&k) {
            let why = format!("is required for {k} with {}", info.name);
            body.errors.push(FieldError::new("voice_id", why));
        }
    }
    let credential_id = credential_id.and_then(|c| {
        CredentialId::parse(&c).or_else(|| {
            body.errors
                .push(FieldError::new("credential_id", "is not a credential id"));
            None
        })
    });
    if let Err(errors) = body.finish() {
        return refused(ApiError::invalid_request(errors));
    }
    let (Some(kind), Some(realtime)) = (kind, realtime) else {
        return refused(ApiError::internal());
    };
    let ask = Ask {
        capability: kind.capability(),
        provider: Some(info.id),
        credential_id: credential_id.as_ref(),
        allow_fallback,
    };
    let session = SessionAsk {
        kind,
        model: model.as_deref(),
        voice_id: voice_id.as_deref(),
        ttl_seconds: ttl_seconds.and_then(|t| u64::try_from(t).ok()),
    };
    let mut facts = Facts::new(Action::CredentialUsed);
    facts.provider = Some(info.id);
    let mut earlier = Vec::new();
    let result = mint(
        ctx,
        info,
        realtime,
        &ask,
        &session,
        &mut facts,
        &mut earlier,
    )
    .await;
    let mut outcome = Outcome::audited(result, facts);
    outcome.earlier = earlier;
    outcome
}

/// Mints with the key for `ask`: a key at its budget gives way to the user's next, as on
/// resolve; a key the provider refuses (or says is spent) is marked, and the user's next
/// takes over, as on the proxy.
async fn mint(
    ctx: &Ctx<'_>,
    info: &'static ProviderInfo,
    realtime: &'static Realtime,
    ask: &Ask<'_>,
    session: &SessionAsk<'_>,
    facts: &mut Facts,
    earlier: &mut Vec<Facts>,
) -> Result<Response, ApiError> {
    let key_use = ctx.key_use();
    let mut key = key_use
        .key_for(&ctx.user, ctx.caller().network, ask, facts)
        .await?;
    let mut one = Amounts::default();
    one.set(Unit::Requests, 1.0);
    let mut attempt = 1;
    loop {
        let admitted = key_use
            .admit_first(&ctx.user, &mut key, &one, facts)
            .await?;
        if info.has_field("region") && key.params.region.is_none() {
            return Err(ApiError::not_configured(format!(
                "{} needs a region; the system key has none (SYSTEM_KEY_{}_REGION).",
                info.name,
                info.id.as_str().to_ascii_uppercase()
            )));
        }
        let target = Target {
            bases: ctx.config.endpoints(info.id),
            params: &key.params,
        };
        let now = ctx.app.clock.now();
        let max = ctx.config.realtime_token_max_seconds;
        let minting = Mint::new(info, realtime, session, max, &target, now);
        let answer = ctx
            .app
            .http
            .send(minting.request(&key.key), MINT_TIMEOUT_MS)
            .await;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                release(ctx, admitted.as_ref()).await;
                return Err(ApiError::provider_unreachable(
                    info.id,
                    format!("{} could not be reached: {e}.", info.name),
                )
                .caused_by(format!("realtime token from {}: {e}", info.id)));
            }
        };
        record::minted(facts, &key, minting.detail(), answer.status, attempt);
        if (200..300).contains(&answer.status) {
            let Some(minted) = minting.read(&answer, &key.key) else {
                (ctx.app.log)(&format!(
                    "realtime: {}'s {} answer held no usable credential",
                    info.id, answer.status
                ));
                return Err(ApiError::provider_error(
                    info.id,
                    format!("{} answered without a usable credential.", info.name),
                ));
            };
            let c = key.credential.as_ref();
            return Ok(Response::json(
                201,
                &json!({
                    "provider": info.id,
                    "kind": session.kind,
                    "token": minted.token.expose(),
                    "expires_at": minted.expires_at.to_rfc3339(),
                    "connect": minted.connect,
                    "source": key.source,
                    "credential_id": c.map(|c| &c.id),
                    "fallback_reason": key.fallback_reason,
                    "model": session.model,
                }),
            ));
        }
        // Refused: what it claimed of its budget is given back.
        release(ctx, admitted.as_ref()).await;
        let text = ProviderText::new(&key.key);
        if let Some((verdict, message)) = key_verdict(info, &answer) {
            let message = text.clean(&message, MAX_MESSAGE_CHARS);
            let error = judge(ctx, info, &key, verdict, &message).await;
            if key.credential.is_some() && attempt < ctx.config.proxy_max_attempts {
                let mut next_facts = Facts::new(Action::CredentialUsed);
                next_facts.provider = Some(info.id);
                if let Some(next) = key_use.next_key(&mut key, &mut next_facts)? {
                    facts.failure = Some(match verdict {
                        Verdict::Refused => "credential_invalid",
                        Verdict::QuotaExhausted => "quota_exhausted",
                    });
                    earlier.push(std::mem::replace(facts, next_facts));
                    key = next;
                    attempt += 1;
                    continue;
                }
            }
            return Err(error);
        }
        let hint = crate::probe::header_hint_ms(&answer, ctx.app.clock.now());
        // A user's key the provider rate-limited cools down, as on the proxy.
        if let (429, Some(credential)) = (answer.status, &key.credential) {
            if let Err(e) = key_use.cool_down(credential, hint).await {
                (ctx.app.log)(&format!(
                    "realtime: credential {} could not be cooled down: {e}",
                    credential.id
                ));
            }
        }
        let failure = match (info.classify)(&answer) {
            Judged::Reject(f) => f,
            Judged::Retry { hint_ms, failure } => match failure {
                Failure::RateLimited { message, .. } => Failure::RateLimited {
                    retry_after_ms: hint.or(hint_ms).unwrap_or(1000),
                    message,
                },
                other => other,
            },
            Judged::Accept => {
                Failure::ProviderError(format!("{} answered {}.", info.name, answer.status))
            }
        };
        return Err(ApiError::from_failure(info.id, failure.cleaned(&text)));
    }
}

/// Gives back a refused minting's claim on its budget.
async fn release(ctx: &Ctx<'_>, admitted: Option<&crate::usage::Admitted>) {
    if let Some(a) = admitted {
        if let Err(e) = ctx.key_use().release(a).await {
            (ctx.app.log)(&format!(
                "realtime: a budget claim could not be given back: {e}"
            ));
        }
    }
}

/// A realtime WebSocket endpoint the proxy opens: the provider, the path under its base URL
/// (the part after `/ws`), the capability whose key it takes, and where the key goes.
struct WsEndpoint {
    provider: &'static str,
    path: &'static str,
    kind: RealtimeKind,
    header: &'static str,
    scheme: &'static str,
}

/// The allow-list. Deepgram: live transcription and streamed speech, `Authorization: Token`.
const WS_ENDPOINTS: &[WsEndpoint] = &[
    WsEndpoint {
        provider: "deepgram",
        path: "/v1/listen",
        kind: RealtimeKind::Stt,
        header: "authorization",
        scheme: "Token ",
    },
    WsEndpoint {
        provider: "deepgram",
        path: "/v1/speak",
        kind: RealtimeKind::Tts,
        header: "authorization",
        scheme: "Token ",
    },
];

/// The socket the Worker opens upstream for a session, with the key in the provider's
/// header, and the subprotocol it answers the caller with. The key never reaches `Debug`.
pub struct Upgrade {
    /// The provider's `http(s)` URL (the runtime upgrades a `fetch` with `Upgrade: websocket`).
    pub url: String,
    pub header: &'static str,
    pub value: crate::crypto::SecretKey,
    pub protocol: Option<&'static str>,
}

impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrade")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The subprotocol a browser offers beside its token, and the one the vault answers with.
pub const WS_PROTOCOL: &str = "byok-vault";

/// `GET /v1/realtime/{provider}/ws/{path…}`: the caller is authenticated already (the
/// router reads the token from the subprotocol `byok-vault.token.<token>` too); the key is
/// picked as on the proxy and the session is handed to the Worker to open. Its
/// `credential.used` event (operation `realtime_session`) is completed with the session's
/// duration and bytes when it ends.
pub(super) async fn ws(ctx: &Ctx<'_>) -> Outcome {
    let refused = |e: ApiError| Outcome::unaudited(Err(e));
    let Some(info) = providers::find(ctx.param(0)).map(|p| p.info()) else {
        return refused(ApiError::unknown_provider(ctx.param(0)));
    };
    let full = ctx.request.url.path();
    let rest = full
        .split_once("/ws/")
        .map(|(_, r)| format!("/{r}"))
        .unwrap_or_default();
    let Some(endpoint) = WS_ENDPOINTS
        .iter()
        .find(|e| e.provider == info.id.as_str() && rest == e.path)
    else {
        return refused(ApiError::invalid_request(vec![FieldError::new(
            "path",
            format!(
                "{rest} is not a realtime WebSocket endpoint of {}",
                info.name
            ),
        )]));
    };
    let wants = ctx
        .request
        .header("upgrade")
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    if !wants {
        return refused(ApiError::invalid_request(vec![FieldError::new(
            "upgrade",
            "must be websocket: this route is a WebSocket",
        )]));
    }
    let given = ctx
        .request
        .header("x-byok-credential-id")
        .map(str::to_owned)
        .or_else(|| ctx.request.query("credential_id"));
    let credential_id = match given.map(|c| CredentialId::parse(&c)) {
        Some(None) => {
            return refused(ApiError::invalid_request(vec![FieldError::new(
                "credential_id",
                "is not a credential id",
            )]))
        }
        Some(Some(c)) => Some(c),
        None => None,
    };
    let ask = Ask {
        capability: endpoint.kind.capability(),
        provider: Some(info.id),
        credential_id: credential_id.as_ref(),
        // Never the system key until a session is counted against its limits and budgets.
        allow_fallback: false,
    };
    let mut facts = Facts::new(Action::CredentialUsed);
    facts.provider = Some(info.id);
    let key = match ctx
        .key_use()
        .key_for(&ctx.user, ctx.caller().network, &ask, &mut facts)
        .await
    {
        Ok(k) => k,
        Err(e) => return Outcome::audited(Err(e.into()), facts),
    };
    let target = Target {
        bases: ctx.config.endpoints(info.id),
        params: &key.params,
    };
    let Ok(mut url) = url::Url::parse(&target.url(endpoint.path)) else {
        return Outcome::audited(Err(ApiError::internal()), facts);
    };
    let kept: Vec<(String, String)> = ctx
        .request
        .url
        .query_pairs()
        .filter(|(k, _)| k != "credential_id")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
    let offered = ctx
        .request
        .header("sec-websocket-protocol")
        .is_some_and(|p| p.split(',').any(|p| p.trim() == WS_PROTOCOL));
    facts.detail = Some(json!({
        "operation": "realtime_session",
        "path": endpoint.path,
        "fallback_reason": key.fallback_reason,
        "tier": key.tier,
    }));
    let mut response = Response::empty(101);
    response.upgrade = Some(Box::new(Upgrade {
        url: url.to_string(),
        header: endpoint.header,
        value: crate::crypto::SecretKey::new(format!("{}{}", endpoint.scheme, key.key.expose())),
        protocol: offered.then_some(WS_PROTOCOL),
    }));
    Outcome::audited(Ok(response), facts)
}

/// The close code a refusal before the upstream opens is given (the contract's), from
/// its problem's status and code.
pub fn close_code(status: u16, code: &str) -> u16 {
    match (status, code) {
        (401, _) => 4401,
        (403, _) => 4403,
        (404, _) | (_, "no_credential") => 4404,
        (429, _) => 4429,
        (400..=499, _) => 4400,
        _ => 1011,
    }
}

/// The token a browser sends as the subprotocol `byok-vault.token.<token>`.
pub fn subprotocol_token(header: Option<&str>) -> Option<&str> {
    header?
        .split(',')
        .find_map(|p| p.trim().strip_prefix("byok-vault.token."))
        .filter(|t| !t.is_empty())
}
