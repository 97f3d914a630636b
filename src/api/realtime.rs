//! `POST /v1/realtime/{provider}/sessions`: the provider's own short-lived browser
//! credential, minted with the key the resolution rule picks (as on the proxy: the same
//! limits on system keys, budgets, and judging of a key the provider refuses), so a
//! browser talks to the provider directly and the long-lived key never leaves the vault.
//! What is minted, for how long and where the browser connects: `crate::realtime`.

use serde_json::json;

use super::commands::json_body;
use super::context::{Ctx, Outcome};
use super::problem::ApiError;
use super::proxy::{judge, DROPPED_QUERY};
use super::Response;
use crate::audit::{Action, Facts};
use crate::budgets::Amounts;
use crate::domain::CredentialId;
use crate::error::FieldError;
use crate::http::{Connected, HttpRequest, HttpResponse};
use crate::probe::{Failure, Verdict as Judged, MAX_MESSAGE_CHARS};
use crate::providers::realtime::SocketEndpoint;
use crate::providers::realtime::{Realtime, RealtimeKind};
use crate::providers::{self, ProviderInfo, Target};
use crate::realtime::socket::{Refusal, Tally};
use crate::realtime::{Ask as SessionAsk, Mint};
use crate::redact::ProviderText;
use crate::usage::{key_verdict, record, Ask, KeyInUse, Verdict};

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
    let mut attempt = 1;
    loop {
        // One request, which `admit` counts itself: nothing more is known in advance.
        let admitted = key_use
            .admit_first(&ctx.user, &mut key, &Amounts::default(), facts)
            .await?;
        if info.has_field("region") && key.params.region.is_none() {
            release(ctx, admitted.as_ref()).await;
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
        after_refusal(ctx, info, &mut key, &answer, &mut attempt, facts, earlier).await?;
    }
}

/// What follows a provider's refusal (`answer`, not a 2xx) of `key` in use, on every path
/// that asks a provider with a key on a caller's behalf and can still try another (a
/// minting, a socket being opened): a refused or spent user's key is marked and the user's
/// next key takes over (`Ok`: `key`, `attempt` and `facts` have moved on to it, `earlier`
/// holds the refused attempt's event); a rate-limited user's key cools down; otherwise the
/// provider's refusal as the caller's error.
async fn after_refusal(
    ctx: &Ctx<'_>,
    info: &'static ProviderInfo,
    key: &mut KeyInUse,
    answer: &HttpResponse,
    attempt: &mut u32,
    facts: &mut Facts,
    earlier: &mut Vec<Facts>,
) -> Result<(), ApiError> {
    let key_use = ctx.key_use();
    let text = ProviderText::new(&key.key);
    if let Some((verdict, message)) = key_verdict(info, answer) {
        let message = text.clean(&message, MAX_MESSAGE_CHARS);
        let error = judge(ctx, info, key, verdict, &message).await;
        if key.credential.is_some() && *attempt < ctx.config.proxy_max_attempts {
            let mut next_facts = Facts::new(Action::CredentialUsed);
            next_facts.provider = Some(info.id);
            if let Some(next) = key_use.next_key(key, &mut next_facts)? {
                facts.failure = Some(match verdict {
                    Verdict::Refused => "credential_invalid",
                    Verdict::QuotaExhausted => "quota_exhausted",
                });
                earlier.push(std::mem::replace(facts, next_facts));
                *key = next;
                *attempt += 1;
                return Ok(());
            }
        }
        return Err(error);
    }
    let hint = crate::probe::header_hint_ms(answer, ctx.app.clock.now());
    // A user's key the provider rate-limited cools down, as on the proxy.
    if let (429, Some(credential)) = (answer.status, &key.credential) {
        if let Err(e) = key_use.cool_down(credential, hint).await {
            (ctx.app.log)(&format!(
                "realtime: credential {} could not be cooled down: {e}",
                credential.id
            ));
        }
    }
    let failure = match (info.classify)(answer) {
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
    Err(ApiError::from_failure(info.id, failure.cleaned(&text)))
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

/// The socket the Worker pipes for a session: the provider's, already open with the key;
/// what the core needs once it ends rides along in [`Session`].
#[derive(Debug)]
pub struct Upgrade {
    pub socket: crate::http::Socket,
    /// The subprotocol the caller is answered with.
    pub protocol: Option<&'static str>,
    /// The session ends after this long (`REALTIME_MAX_SECONDS`).
    pub max_seconds: u64,
    pub session: Session,
}

/// A session in progress: its tally, fed by the Worker's pipe, and what [`ended`] records.
pub struct Session {
    pub tally: Tally,
    info: &'static ProviderInfo,
    call: crate::metering::Call,
    admitted: Option<crate::usage::Admitted>,
    /// The user's credential in use (a refusal on the socket marks it).
    credential: Option<crate::domain::Credential>,
    origin: crate::audit::Origin,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("provider", &self.info.id)
            .finish_non_exhaustive()
    }
}

/// How a session ended, as the Worker's pipe saw it.
pub struct End {
    pub duration_ms: u64,
    /// `client`, `provider`, `timeout` (`REALTIME_MAX_SECONDS`) or `error`.
    pub closed_by: &'static str,
    pub code: u16,
}

/// The subprotocol a browser offers beside its token, and the one the vault answers with.
pub const WS_PROTOCOL: &str = "byok-vault";
/// How long a provider has to answer the upgrade.
const CONNECT_TIMEOUT_MS: u64 = 15_000;
/// The most of a provider's refusal of the upgrade read to judge it.
const MAX_REFUSAL_BYTES: usize = 16 * 1024;
/// Request headers passed on to the provider's socket as the caller sent them.
const FORWARDED: &[&str] = &["openai-beta"];

/// The socket path asked for: after `/ws` on `/v1/realtime/{provider}/ws/…`, after the
/// provider on `/v1/proxy/{provider}/…` (an SDK's own WebSocket through its base URL).
fn socket_path(path: &str) -> String {
    let skip = if path.starts_with("/v1/realtime/") {
        4
    } else {
        3
    };
    let rest: Vec<&str> = path.split('/').skip(1 + skip).collect();
    format!("/{}", rest.join("/"))
}

/// `GET /v1/realtime/{provider}/ws/{path…}` (and a WebSocket upgrade on the proxy's
/// `/v1/proxy/{provider}/{path…}`): the caller is authenticated already (the router reads
/// the token from the subprotocol `byok-vault.token.<token>` too); the key is picked as on
/// the proxy (the system key where policy allows, counted against its limits), the
/// session is admitted against the key's budget, and the provider's socket is opened here,
/// so a key it refuses is judged as on the proxy and the user's next key takes over. Its
/// `credential.used` event (operation `realtime_session`) is completed by [`ended`].
pub(super) async fn ws(ctx: &Ctx<'_>) -> Outcome {
    let refused = |e: ApiError| Outcome::unaudited(Err(e));
    let Some(info) = providers::find(ctx.param(0)).map(|p| p.info()) else {
        return refused(ApiError::unknown_provider(ctx.param(0)));
    };
    let rest = socket_path(ctx.request.url.path());
    let sockets = info.realtime.map(|r| r.sockets).unwrap_or_default();
    let Some(endpoint) = sockets.iter().find(|e| e.matches(&rest)) else {
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
    let allow_fallback = match ctx
        .request
        .header("x-byok-allow-fallback")
        .or(ctx.request.query("allow_fallback").as_deref())
        .map(str::trim)
    {
        None | Some("true") => true,
        Some("false") => false,
        Some(_) => {
            return refused(ApiError::invalid_request(vec![FieldError::new(
                "allow_fallback",
                "must be true or false",
            )]))
        }
    };
    let ask = Ask {
        capability: endpoint.kind.capability(),
        provider: Some(info.id),
        credential_id: credential_id.as_ref(),
        allow_fallback,
    };
    let mut facts = Facts::new(Action::CredentialUsed);
    facts.provider = Some(info.id);
    let mut earlier = Vec::new();
    let result = open(ctx, info, endpoint, &rest, &ask, &mut facts, &mut earlier).await;
    let mut outcome = Outcome::audited(result, facts);
    outcome.earlier = earlier;
    outcome
}

/// Opens the provider's socket with the key for `ask`, as [`mint`] mints: a key at its
/// budget gives way to the user's next; a key the provider refuses is marked and the next
/// takes over.
async fn open(
    ctx: &Ctx<'_>,
    info: &'static ProviderInfo,
    endpoint: &'static SocketEndpoint,
    rest: &str,
    ask: &Ask<'_>,
    facts: &mut Facts,
    earlier: &mut Vec<Facts>,
) -> Result<Response, ApiError> {
    let key_use = ctx.key_use();
    let mut key = key_use
        .key_for(&ctx.user, ctx.caller().network, ask, facts)
        .await?;
    let mut attempt = 1;
    loop {
        // One request, which `admit` counts itself: nothing more is known in advance.
        let admitted = key_use
            .admit_first(&ctx.user, &mut key, &Amounts::default(), facts)
            .await?;
        let target = Target {
            bases: ctx.config.endpoints(info.id),
            params: &key.params,
        };
        let url = match upstream_url(&target, rest, &ctx.request.url) {
            Ok(u) => u,
            Err(e) => {
                release(ctx, admitted.as_ref()).await;
                return Err(e);
            }
        };
        let mut request = HttpRequest::get(url);
        request.max_response_bytes = MAX_REFUSAL_BYTES;
        if let Some((name, value)) = info.auth.header(&key.key) {
            request.headers.push((name.to_owned(), value));
        }
        for name in FORWARDED {
            if let Some(v) = ctx.request.header(name) {
                request = request.header(name, v);
            }
        }
        let connected = ctx.app.upstream.connect(request, CONNECT_TIMEOUT_MS).await;
        let status = match &connected {
            Ok(Connected::Open(_)) => 101,
            Ok(Connected::Answered(a)) => a.status,
            Err(_) => 0,
        };
        record::opened(facts, &key, endpoint.path, status, attempt);
        match connected {
            Ok(Connected::Open(socket)) => {
                let offered = ctx
                    .request
                    .header("sec-websocket-protocol")
                    .is_some_and(|p| p.split(',').any(|p| p.trim() == WS_PROTOCOL));
                let mut response = Response::empty(101);
                response.upgrade = Some(Box::new(Upgrade {
                    socket,
                    protocol: offered.then_some(WS_PROTOCOL),
                    max_seconds: ctx.config.realtime_max_seconds,
                    session: Session {
                        tally: Tally::new(endpoint.dialect, ProviderText::new(&key.key))
                            .audio_format(ctx.request.query("audio_format").as_deref()),
                        info,
                        call: crate::metering::Call {
                            user: ctx.user.clone(),
                            at: ctx.app.clock.now(),
                            provider: info.id,
                            source: key.source,
                            credential_id: key.credential.as_ref().map(|c| c.id.clone()),
                            model: key.model.clone().or_else(|| {
                                ctx.request
                                    .query("model")
                                    .filter(|m| m.len() <= MAX_MODEL && safe_id(m, true))
                            }),
                            capability: endpoint.kind.capability(),
                            characters: None,
                            usage_in_answer: true,
                        },
                        admitted,
                        credential: key.credential.clone(),
                        origin: ctx.origin().clone(),
                    },
                }));
                return Ok(response);
            }
            Err(e) => {
                release(ctx, admitted.as_ref()).await;
                return Err(ApiError::provider_unreachable(
                    info.id,
                    format!("{} could not be reached: {e}.", info.name),
                )
                .caused_by(format!("realtime socket to {}: {e}", info.id)));
            }
            Ok(Connected::Answered(answer)) => {
                release(ctx, admitted.as_ref()).await;
                after_refusal(ctx, info, &mut key, &answer, &mut attempt, facts, earlier).await?;
            }
        }
    }
}

/// The provider's socket URL: its base URL (`http(s)`, which the runtime upgrades) with
/// `rest`, and the caller's query minus the vault's own parameters and any that may carry a
/// credential (as on the proxy).
fn upstream_url(target: &Target<'_>, rest: &str, asked: &url::Url) -> Result<String, ApiError> {
    let mut url = url::Url::parse(&target.url(rest)).map_err(|_| ApiError::internal())?;
    let kept: Vec<(String, String)> = asked
        .query_pairs()
        .filter(|(k, _)| {
            let k = k.to_ascii_lowercase();
            k != "credential_id" && k != "allow_fallback" && !DROPPED_QUERY.contains(&k.as_str())
        })
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok(url.to_string())
}

/// Records a session that has ended: its `credential.used` event completed with the
/// duration, bytes and usage the provider reported; that usage kept and settled against
/// the budget the session was admitted on; a key the provider refused on the socket
/// marked as on the proxy. Called by the Worker after the pipe closes.
pub async fn ended(
    app: &crate::api::App<'_>,
    mut uses: Vec<crate::audit::AuditEvent>,
    session: Session,
    end: End,
) {
    let tally = &session.tally;
    let text = tally.refused.as_ref();
    let mut usage = tally.usage();
    // The session's own event is the last; those before it are keys refused at the upgrade.
    if let Some(e) = uses.last_mut() {
        if let Some(d) = e.detail.as_mut() {
            d["duration_ms"] = end.duration_ms.into();
            d["bytes_in"] = tally.bytes_up.into();
            d["bytes_out"] = tally.bytes_down.into();
            d["closed_by"] = end.closed_by.into();
            d["close_code"] = end.code.into();
            if tally.metered {
                d["usage"] = usage_json(&usage);
            }
        }
        if text.is_some() {
            e.outcome = crate::audit::Outcome::Failure;
            e.reason = Some(if text.is_some_and(|r| r.quota) {
                "quota_exhausted".into()
            } else {
                "credential_invalid".into()
            });
        }
    }
    if let (Some(refusal), Ok(config)) = (text, app.config) {
        judge_on_socket(app, config, &session, refusal).await;
    }
    super::finish(app, uses, None).await;
    if !tally.metered {
        // Bytes and time alone: what the provider bills is not known.
        usage.incomplete = true;
    }
    super::record_usage(app, &session.call, &usage).await;
    if let (Some(admitted), Ok(config)) = (&session.admitted, app.config) {
        super::settle_budget(app, config, &session.call, admitted, &usage).await;
    }
}

/// A session's usage as its event shows it.
fn usage_json(u: &crate::metering::Usage) -> serde_json::Value {
    json!({
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "characters": u.characters,
        "audio_seconds": u.audio_seconds,
        "model": u.model,
    })
}

/// Marks the user's key the provider refused on the socket (a system key: the operators
/// are told in the log).
async fn judge_on_socket(
    app: &crate::api::App<'_>,
    config: &crate::config::Config,
    session: &Session,
    refusal: &Refusal,
) {
    let info = session.info;
    let verdict = if refusal.quota {
        Verdict::QuotaExhausted
    } else {
        Verdict::Refused
    };
    let Some(credential) = &session.credential else {
        (app.log)(&format!(
            "realtime: the system key for {} was refused on its socket ({verdict:?}); an operator must replace it",
            info.id
        ));
        return;
    };
    let note = |line: &str| (app.log)(line);
    let key_use = super::context::key_use(app, config, &note);
    let message = session
        .tally
        .provider_text()
        .clean(&refusal.message, MAX_MESSAGE_CHARS);
    match key_use
        .mark_in_use(credential, verdict, &message, &session.origin)
        .await
    {
        Ok(Some(event)) => app.audit.nudge(&event).await,
        Ok(None) => {}
        Err(e) => (app.log)(&format!(
            "realtime: credential {} could not be marked: {e}",
            credential.id
        )),
    }
}

/// The close code a refusal before the upstream opens is given (the contract's), from
/// its problem's status and code.
pub fn close_code(status: u16, code: &str) -> u16 {
    match (status, code) {
        (401, _) => 4401,
        (403, _) => 4403,
        (404, _) | (_, "no_credential") => 4404,
        (429, _) => 4429,
        // The provider refused the key (and no other key of the user's took over).
        (424, _) => 4424,
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
