//! Where routes are declared: one table, read in one screen, and the one wrapper every
//! route goes through (configuration, body size, method, authentication, the audit event).

use std::borrow::Cow;

use futures::future::LocalBoxFuture;

use super::context::{client_network, Ctx, Outcome, ServiceCtx};
use super::problem::ApiError;
use super::{
    admin, audit, budgets, credentials, description, health, input, preferences, proxy, realtime,
    resolve, usage, App, Request, Response,
};
use crate::audit::{Action, Actor, ActorType, AuditEvent, Origin};
use crate::auth::{bearer_token, find_service, AuthError, JwtVerifier, Scope, ServiceToken};
use crate::config::Config;
use crate::domain::{RequestId, UserId};
use crate::providers::{self, KeyCarrier};

/// A route's handler. `Open` ones answer without configuration or a caller (health);
/// `User` ones run for an authenticated user.
#[derive(Clone, Copy)]
pub(super) enum Handler {
    Open(for<'r> fn(&'r App<'r>) -> LocalBoxFuture<'r, Response>),
    User(for<'r> fn(&'r Ctx<'r>) -> LocalBoxFuture<'r, Outcome>),
    /// A user route whose body is forwarded, up to `PROXY_MAX_BODY_BYTES`.
    Proxy(for<'r> fn(&'r Ctx<'r>) -> LocalBoxFuture<'r, Outcome>),
    /// A user route on a provider's path (`/v1/realtime/{provider}/…`) with a JSON body: the
    /// token is taken where that provider's SDK puts its key too, as on the proxy.
    ProviderJson(for<'r> fn(&'r Ctx<'r>) -> LocalBoxFuture<'r, Outcome>),
    /// A backend service's route: its token must hold the scope.
    Service(
        Scope,
        for<'r> fn(&'r ServiceCtx<'r>) -> LocalBoxFuture<'r, Outcome>,
    ),
}

use Handler::{Open, ProviderJson, Proxy, Service, User};

pub(super) struct Route {
    /// `*` for any method (the proxy judges methods itself).
    pub method: &'static str,
    /// Segments in braces (`{id}`) match any one segment and reach the handler in order;
    /// a last `{*}` matches one or more segments (the handler reads them from the URL).
    pub path: &'static str,
    pub handler: Handler,
}

#[rustfmt::skip]
pub(super) static ROUTES: &[Route] = &[
    Route { method: "GET",    path: "/v1/health",                    handler: Open(|a| Box::pin(health::health(a))) },
    Route { method: "GET",    path: "/v1/openapi.json",              handler: Open(|a| Box::pin(description::openapi(a))) },
    Route { method: "GET",    path: "/v1/providers",                 handler: User(|c| Box::pin(credentials::providers(c))) },
    Route { method: "GET",    path: "/v1/credentials",               handler: User(|c| Box::pin(credentials::list(c))) },
    Route { method: "POST",   path: "/v1/credentials",               handler: User(|c| Box::pin(credentials::create(c))) },
    Route { method: "GET",    path: "/v1/credentials/{id}",          handler: User(|c| Box::pin(credentials::get(c))) },
    Route { method: "PATCH",  path: "/v1/credentials/{id}",          handler: User(|c| Box::pin(credentials::update(c))) },
    Route { method: "DELETE", path: "/v1/credentials/{id}",          handler: User(|c| Box::pin(credentials::delete(c))) },
    Route { method: "POST",   path: "/v1/credentials/{id}/validate", handler: User(|c| Box::pin(credentials::validate(c))) },
    Route { method: "GET",    path: "/v1/credentials/{id}/models",   handler: User(|c| Box::pin(credentials::models(c))) },
    Route { method: "GET",    path: "/v1/preferences",               handler: User(|c| Box::pin(preferences::get(c))) },
    Route { method: "PUT",    path: "/v1/preferences/{capability}",  handler: User(|c| Box::pin(preferences::put(c))) },
    Route { method: "GET",    path: "/v1/audit",                     handler: User(|c| Box::pin(audit::list(c))) },
    Route { method: "GET",    path: "/v1/audit/verify",              handler: User(|c| Box::pin(audit::verify(c))) },
    Route { method: "GET",    path: "/v1/usage",                     handler: User(|c| Box::pin(usage::list(c))) },
    Route { method: "POST",   path: "/v1/admin/import",              handler: Service(Scope::Admin, |c| Box::pin(admin::import(c))) },
    Route { method: "POST",   path: "/v1/admin/import/{id}/rollback", handler: Service(Scope::Admin, |c| Box::pin(admin::rollback(c))) },
    Route { method: "POST",   path: "/v1/admin/revalidate",          handler: Service(Scope::Admin, |c| Box::pin(admin::revalidate(c))) },
    Route { method: "POST",   path: "/v1/admin/master-key/rotate",   handler: Service(Scope::Admin, |c| Box::pin(admin::rotate(c))) },
    Route { method: "GET",    path: "/v1/admin/jobs/{id}",           handler: Service(Scope::Admin, |c| Box::pin(admin::job(c))) },
    Route { method: "GET",    path: "/v1/admin/usage",               handler: Service(Scope::Admin, |c| Box::pin(usage::admin(c))) },
    Route { method: "GET",    path: "/v1/admin/budgets/{id}",        handler: Service(Scope::Admin, |c| Box::pin(budgets::get(c))) },
    Route { method: "PUT",    path: "/v1/admin/budgets/{id}",        handler: Service(Scope::Admin, |c| Box::pin(budgets::put(c))) },
    Route { method: "DELETE", path: "/v1/admin/budgets/{id}",        handler: Service(Scope::Admin, |c| Box::pin(budgets::delete(c))) },
    Route { method: "POST",   path: "/v1/resolve",                   handler: Service(Scope::Resolve, |c| Box::pin(resolve::resolve(c))) },
    Route { method: "*",      path: "/v1/proxy/{provider}/{*}",      handler: Proxy(|c| Box::pin(proxy_or_socket(c))) },
    Route { method: "POST",   path: "/v1/realtime/{provider}/sessions", handler: ProviderJson(|c| Box::pin(realtime::sessions(c))) },
    Route { method: "GET",    path: "/v1/realtime/{provider}/ws/{*}", handler: ProviderJson(|c| Box::pin(realtime::ws(c))) },
];

/// The proxy's route: a call, or (a WebSocket upgrade) an SDK's own realtime socket through
/// its base URL, which is the socket proxy's session.
async fn proxy_or_socket(ctx: &Ctx<'_>) -> Outcome {
    let upgrade = ctx.request.header("upgrade");
    if upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        realtime::ws(ctx).await
    } else {
        proxy::proxy(ctx).await
    }
}

/// The path's parameters if `path` matches `pattern`.
fn matches<'p>(pattern: &str, path: &[&'p str]) -> Option<Vec<&'p str>> {
    let want: Vec<&str> = pattern.split('/').skip(1).collect();
    let mut params = Vec::new();
    if want.last() == Some(&"{*}") {
        let fixed = want.len() - 1;
        if path.len() <= fixed {
            return None;
        }
        return matches(&pattern[..pattern.len() - 4], &path[..fixed]);
    }
    if want.len() != path.len() {
        return None;
    }
    for (w, got) in want.iter().zip(path) {
        if w.starts_with('{') {
            params.push(*got);
        } else if w != got {
            return None;
        }
    }
    Some(params)
}

/// The user whose token `token` is: 401 without one, or for one that does not verify.
async fn authenticate(
    app: &App<'_>,
    config: &Config,
    token: Option<&str>,
) -> Result<UserId, ApiError> {
    let token = token.ok_or(ApiError::unauthorized(AuthError::Missing))?;
    let mut verifier = JwtVerifier::new(&config.jwt);
    if let Some(cache) = app.jwks {
        verifier = verifier.with_jwks(cache, app.http, app.signatures);
    }
    verifier
        .verify(token, app.clock.now())
        .await
        .map_err(ApiError::unauthorized)
}

/// The vault token on a provider's route: `Authorization: Bearer` (every provider), or
/// wherever that provider's official SDK puts its API key (`xi-api-key`, `x-goog-api-key`
/// or `?key=`, `Authorization: Token`, …), so an SDK works with only its base URL changed.
/// The first carrier present is the one read: whatever it holds must verify as a user
/// token (a provider key pasted there is a 401, never forwarded nor echoed). The proxy
/// forwards none of these carriers upstream.
fn provider_route_token<'r>(request: &'r Request, provider: Option<&str>) -> Option<Cow<'r, str>> {
    // A browser's WebSocket cannot send headers: its token comes as a subprotocol.
    if let Some(token) = realtime::subprotocol_token(request.header("sec-websocket-protocol")) {
        return Some(Cow::Borrowed(token));
    }
    let authorization = request.header("authorization");
    if let Some(token) = bearer_token(authorization) {
        return Some(Cow::Borrowed(token));
    }
    let carriers = providers::find(provider?)?.info().sdk_key;
    carriers.iter().find_map(|carrier| match *carrier {
        KeyCarrier::Authorization(scheme) => {
            let (given, token) = authorization?.trim().split_once(' ')?;
            let token = token.trim();
            (given.eq_ignore_ascii_case(scheme) && !token.is_empty())
                .then_some(Cow::Borrowed(token))
        }
        KeyCarrier::Header(name) => request
            .header(name)
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(Cow::Borrowed),
        KeyCarrier::Query(name) => request
            .query(name)
            .filter(|t| !t.is_empty())
            .map(Cow::Owned),
    })
}

/// What running a request came to, for the answer and its log line.
pub(super) struct Dispatched {
    /// The route's pattern, if one matched.
    pub route: Option<&'static str>,
    pub result: Result<Response, ApiError>,
    /// An operation that answered 200 but whose point failed (a re-check of a dead key):
    /// its code.
    pub failure: Option<&'static str>,
    /// The uses of keys to record after the answer (`credential.used` events).
    pub uses: Vec<AuditEvent>,
    /// The answer's metering, finished after it.
    pub metering: Option<crate::api::Metering>,
}

impl Dispatched {
    fn answer(route: Option<&'static str>, result: Result<Response, ApiError>) -> Self {
        Self {
            route,
            result,
            failure: None,
            uses: Vec::new(),
            metering: None,
        }
    }
}

/// Who a request's caller turned out to be.
enum Authenticated<'c> {
    Service(&'c ServiceToken),
    User(UserId),
}

/// Methods whose body a JSON route reads.
fn takes_body(method: &str) -> bool {
    matches!(method, "POST" | "PUT" | "PATCH")
}

/// Finds the request's route and runs it. Every route but the open ones authenticates its
/// caller before a byte of the body is read; an audited operation has exactly one event
/// whatever its outcome (written with its change, recorded here, or, for a use, sent after
/// the answer).
pub(super) async fn dispatch(
    app: &App<'_>,
    request: &Request,
    request_id: &RequestId,
) -> Dispatched {
    let path: Vec<&str> = request
        .url
        .path()
        .trim_end_matches('/')
        .split('/')
        .skip(1)
        .collect();
    let method = request.method.as_str();
    if method == "OPTIONS" {
        return Dispatched::answer(None, Ok(Response::empty(204)));
    }
    let candidates: Vec<(&Route, Vec<&str>)> = ROUTES
        .iter()
        .filter_map(|r| matches(r.path, &path).map(|p| (r, p)))
        .collect();
    let Some((route, params)) = candidates.iter().find(|(r, _)| {
        r.method == method
            || r.method == "*"
            || (method == "HEAD" && r.method == "GET" && matches!(r.handler, Open(_)))
    }) else {
        let route = candidates.first().map(|(r, _)| r.path);
        // Health answers its own 405; anywhere else the configuration and the declared body
        // size are checked first, as for a known route (no body is read for a refusal).
        if !candidates.iter().any(|(r, _)| matches!(r.handler, Open(_))) {
            if let Err(e) = configured(app) {
                return Dispatched::answer(route, Err(e));
            }
            if request.declared_over(input::MAX_BODY_BYTES) {
                let e = ApiError::payload_too_large(input::MAX_BODY_BYTES);
                return Dispatched::answer(route, Err(e));
            }
        }
        let error = match route {
            // RFC 9110: a 405 says which methods the resource takes.
            Some(_) => {
                let mut allowed: Vec<&str> = candidates.iter().map(|(r, _)| r.method).collect();
                // Open GET routes answer HEAD too (see the match above).
                if candidates
                    .iter()
                    .any(|(r, _)| r.method == "GET" && matches!(r.handler, Open(_)))
                {
                    allowed.push("HEAD");
                }
                allowed.push("OPTIONS");
                let mut e = ApiError::method_not_allowed();
                e.headers.push(("allow", allowed.join(", ")));
                e
            }
            None => ApiError::not_found(),
        };
        return Dispatched::answer(route, Err(error));
    };
    let at = Some(route.path);
    if let Open(open) = route.handler {
        return Dispatched::answer(at, Ok(open(app).await));
    }
    let config = match configured(app) {
        Ok(c) => c,
        Err(e) => return Dispatched::answer(at, Err(e)),
    };
    // Who is calling, before anything of the body is read.
    let caller = match route.handler {
        Service(scope, _) => {
            authenticate_service(config, request, scope).map(Authenticated::Service)
        }
        Proxy(_) | ProviderJson(_) => {
            let token = provider_route_token(request, params.first().copied());
            authenticate(app, config, token.as_deref())
                .await
                .map(Authenticated::User)
        }
        _ => authenticate(app, config, bearer_token(request.header("authorization")))
            .await
            .map(Authenticated::User),
    };
    let caller = match caller {
        Ok(c) => c,
        Err(e) => return Dispatched::answer(at, Err(e)),
    };
    // The body: the proxy forwards its own unread (only its declared size is judged here);
    // a JSON route's is read now, within 64 KiB.
    let body = match route.handler {
        Proxy(_) if request.declared_over(config.proxy_max_body_bytes) => {
            Err(ApiError::payload_too_large(config.proxy_max_body_bytes))
        }
        Proxy(_) => Ok(()),
        _ if takes_body(method) => request.read_body(input::MAX_BODY_BYTES).await,
        _ if request.declared_over(input::MAX_BODY_BYTES) => {
            Err(ApiError::payload_too_large(input::MAX_BODY_BYTES))
        }
        _ => Ok(()),
    };
    if let Err(e) = body {
        return Dispatched::answer(at, Err(e));
    }
    let note = |line: &str| (app.log)(&format!("{} {line}", request_id.as_str()));
    let network = client_network(request.header("cf-connecting-ip"));
    let (outcome, origin, user) = match (route.handler, caller) {
        (Service(_, handler), Authenticated::Service(service)) => {
            let ctx = ServiceCtx {
                app,
                config,
                request,
                params: params.clone(),
                origin: Origin {
                    actor: Actor {
                        kind: ActorType::Service,
                        id: service.name.clone(),
                    },
                    request_id: Some(request_id.clone()),
                },
                network,
                note: &note,
            };
            let outcome = handler(&ctx).await;
            let user = outcome.user.clone();
            (outcome, ctx.origin, user)
        }
        (User(handler) | Proxy(handler) | ProviderJson(handler), Authenticated::User(user)) => {
            let ctx = Ctx {
                app,
                config,
                request,
                params: params.clone(),
                network,
                origin: Origin {
                    actor: Actor {
                        kind: ActorType::User,
                        id: user.as_str().to_owned(),
                    },
                    request_id: Some(request_id.clone()),
                },
                user,
                note: &note,
            };
            let outcome = handler(&ctx).await;
            (outcome, ctx.origin, Some(ctx.user))
        }
        _ => unreachable_route(),
    };
    let mut uses = Vec::new();
    if let Some(user) = &user {
        // The keys a failover passed over, each its own use, before the one that answered.
        for facts in &outcome.earlier {
            uses.push(facts.event(&origin, user, app.clock.now(), None));
        }
    }
    if let (Some(facts), Some(user)) = (&outcome.audit, &user) {
        match (&facts.committed, &outcome.result) {
            // Written with the change (or the read) it describes, whatever its outcome:
            // the chainer only needs to know.
            (Some(id), _) => app.audit.nudge(id).await,
            _ => {
                let failure = outcome.result.as_ref().err().map(|e| e.code);
                let event = facts.event(&origin, user, app.clock.now(), failure);
                if facts.action == Action::CredentialUsed {
                    // A use changes nothing: no D1 write on its path, and it goes after
                    // the answer, off the time to its first byte.
                    uses.push(event);
                } else {
                    app.audit.record(&event).await;
                }
            }
        }
    }
    Dispatched {
        route: at,
        failure: outcome.audit.as_ref().and_then(|f| f.failure),
        result: outcome.result,
        uses,
        metering: outcome.metering,
    }
}

/// `Open` routes are answered before any caller is authenticated, and a route's handler
/// kind decides how its caller is authenticated.
fn unreachable_route() -> ! {
    unreachable!("open routes return before authentication; callers match their routes")
}

/// The service whose token the request carries, if it holds `scope`: 401 for no token or
/// an unknown one (a user's JWT included), 403 for a token without the scope.
fn authenticate_service<'c>(
    config: &'c Config,
    request: &Request,
    scope: Scope,
) -> Result<&'c ServiceToken, ApiError> {
    let token = bearer_token(request.header("authorization"))
        .ok_or(ApiError::unauthorized(AuthError::Missing))?;
    let service = find_service(&config.service_tokens, token)
        .ok_or(ApiError::unauthorized(AuthError::NotAService))?;
    if !service.scopes.contains(&scope) {
        return Err(ApiError::forbidden(format!(
            "This service token does not hold the {scope} scope."
        ))
        .caused_by(format!("service {} lacks scope {scope}", service.name)));
    }
    Ok(service)
}

/// The configuration, or 503 `not_configured` naming what is wrong with it.
fn configured<'a>(app: &App<'a>) -> Result<&'a Config, ApiError> {
    app.config.map_err(|errors| {
        let vars: Vec<&str> = errors.iter().map(|e| e.var).collect();
        ApiError::not_configured(format!(
            "The configuration has problems with: {}.",
            vars.join(", ")
        ))
    })
}

#[cfg(test)]
mod tests {
    /// The operations `docs/openapi.yaml` describes: (method, path) with every path
    /// parameter written `{}`. Read line by line: the file keeps one layout (paths at two
    /// spaces, operations at four).
    fn described() -> Vec<(String, String)> {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml"))
                .unwrap();
        let mut out = Vec::new();
        let mut path = None;
        for line in text.lines() {
            if let Some(p) = line.strip_prefix("  /").and_then(|p| p.strip_suffix(':')) {
                path = Some(normalised(&format!("/{p}")));
            } else if !line.starts_with("  ") && !line.is_empty() {
                path = None;
            } else if let (Some(p), Some(m)) = (&path, line.strip_prefix("    ")) {
                for method in ["get", "post", "put", "patch", "delete"] {
                    if m.starts_with(&format!("{method}:")) {
                        out.push((method.to_uppercase(), p.clone()));
                    }
                }
            }
        }
        out
    }

    fn normalised(path: &str) -> String {
        path.split('/')
            .map(|s| if s.starts_with('{') { "{}" } else { s })
            .collect::<Vec<_>>()
            .join("/")
    }

    #[test]
    fn every_route_is_described_and_every_described_operation_is_routed() {
        let described = described();
        assert!(described.len() > 20, "{described:?}");
        for route in ROUTES {
            let path = normalised(route.path);
            let found = described
                .iter()
                .any(|(m, p)| *p == path && (route.method == "*" || m == route.method));
            assert!(
                found,
                "{} {} is routed but not described",
                route.method, route.path
            );
        }
        for (method, path) in &described {
            let routed = ROUTES
                .iter()
                .any(|r| normalised(r.path) == *path && (r.method == "*" || r.method == method));
            assert!(routed, "{method} {path} is described but not routed");
        }
    }

    use super::*;

    #[test]
    fn patterns_match_whole_paths_and_hand_over_their_parameters() {
        fn path(p: &str) -> Vec<&str> {
            p.split('/').skip(1).collect()
        }
        assert_eq!(
            matches(
                "/v1/credentials/{id}/validate",
                &path("/v1/credentials/c_1/validate")
            ),
            Some(vec!["c_1"])
        );
        assert_eq!(
            matches("/v1/credentials/{id}", &path("/v1/credentials/c_1/x")),
            None
        );
        assert_eq!(matches("/v1/credentials", &path("/v1/credential")), None);
        assert_eq!(matches("/v1/health", &path("/v1/health")), Some(vec![]));
    }

    #[test]
    fn every_route_is_declared_once() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(
                    !(a.method == b.method && a.path == b.path),
                    "{} {}",
                    a.method,
                    a.path
                );
            }
        }
    }
}
