//! What a route's handler gets (the request, its caller, the way to the operations) and
//! what it gives back (its answer and its audit event): the handlers' side of the router.

use super::problem::ApiError;
use super::{App, Request, Response};
use crate::audit::{Caller, Facts, Origin, Trail};
use crate::checks::LiveChecks;
use crate::config::Config;
use crate::credentials::Credentials;
use crate::domain::UserId;
use crate::import::Imports;
use crate::usage::KeyUse;

/// What a handler did: its answer, and (for an audited operation) what its audit event
/// says, as one value.
pub(crate) struct Outcome {
    pub result: Result<Response, ApiError>,
    pub audit: Option<Facts>,
    /// Whose trail the event belongs to when that is not the caller's (a service acting
    /// for a user).
    pub user: Option<UserId>,
    /// The uses of keys the provider refused before `audit`'s took over (a failover), in
    /// order, each with its failure.
    pub earlier: Vec<Facts>,
    /// The answer's metering, to finish once it has been passed on.
    pub metering: Option<crate::api::Metering>,
}

impl Outcome {
    /// An answer with no audit event (catalog, preferences and audit reads).
    pub(super) fn unaudited(result: Result<Response, ApiError>) -> Self {
        Self {
            result,
            audit: None,
            user: None,
            earlier: Vec::new(),
            metering: None,
        }
    }

    pub(super) fn audited(result: Result<Response, ApiError>, facts: Facts) -> Self {
        Self {
            result,
            audit: Some(facts),
            user: None,
            earlier: Vec::new(),
            metering: None,
        }
    }

    /// The same outcome, its event filed under `user`.
    pub(super) fn for_user(mut self, user: UserId) -> Self {
        self.user = Some(user);
        self
    }
}

/// What a `Service` handler gets: the request and the authenticated service.
pub(crate) struct ServiceCtx<'r> {
    pub app: &'r App<'r>,
    pub config: &'r Config,
    pub request: &'r Request,
    /// The `{…}` segments of the path, in order.
    pub params: Vec<&'r str>,
    pub origin: Origin,
    /// What the per-address live-check limit counts (see [`Ctx`]).
    pub network: String,
    pub(super) note: &'r dyn Fn(&str),
}

impl<'r> ServiceCtx<'r> {
    /// The path parameter at `i` (the route's pattern guarantees it is there).
    pub(super) fn param(&self, i: usize) -> &'r str {
        self.params.get(i).copied().unwrap_or_default()
    }

    /// Using keys: resolve hands one to a service.
    pub(super) fn key_use(&self) -> KeyUse<'r> {
        key_use(self.app, self.config, self.note)
    }

    /// Importing keys and taking an import back.
    pub(super) fn imports(&self) -> Imports<'r> {
        Imports {
            config: self.config,
            store: self.app.imports,
            checks: live_checks(self.app, self.config),
        }
    }
}

/// The operations, each built from the request's seams with only what it needs.
fn live_checks<'r>(app: &'r App<'r>, config: &'r Config) -> LiveChecks<'r> {
    LiveChecks {
        config,
        http: app.http,
        clock: app.clock,
        jitter: app.jitter,
        limiter: app.limiter,
    }
}

pub(super) fn key_use<'r>(
    app: &'r App<'r>,
    config: &'r Config,
    note: &'r dyn Fn(&str),
) -> KeyUse<'r> {
    KeyUse {
        config,
        store: app.store,
        http: app.http,
        clock: app.clock,
        limiter: app.limiter,
        log: note,
        infisical: app.infisical,
        budgets: app.budgets,
    }
}

/// What a `User` handler gets: the request, its path parameters, the authenticated user,
/// and the way to the operations.
pub(crate) struct Ctx<'r> {
    pub app: &'r App<'r>,
    pub config: &'r Config,
    pub request: &'r Request,
    /// The `{…}` segments of the path, in order.
    pub params: Vec<&'r str>,
    pub user: UserId,
    /// What the per-address live-check limit counts for this caller.
    pub(super) network: String,
    pub(super) origin: Origin,
    /// Notes that are not errors (a key that no longer decrypts), tagged with the request.
    pub(super) note: &'r dyn Fn(&str),
}

impl<'r> Ctx<'r> {
    /// The path parameter at `i` (the route's pattern guarantees it is there).
    pub(super) fn param(&self, i: usize) -> &'r str {
        self.params.get(i).copied().unwrap_or_default()
    }

    /// The operations on the caller's credentials and defaults.
    pub(super) fn credentials(&self) -> Credentials<'r> {
        Credentials {
            config: self.config,
            store: self.app.store,
            checks: live_checks(self.app, self.config),
            clock: self.app.clock,
            log: self.note,
        }
    }

    /// The caller's audit trail, to read and to check.
    pub(super) fn trail(&self) -> Trail<'r> {
        Trail {
            store: self.app.audit_log,
            clock: self.app.clock,
        }
    }

    /// Using keys: the proxy's call gets one.
    pub(super) fn key_use(&self) -> KeyUse<'r> {
        key_use(self.app, self.config, self.note)
    }

    pub(super) fn origin(&self) -> &Origin {
        &self.origin
    }

    pub(super) fn caller(&self) -> Caller<'_> {
        Caller {
            user: &self.user,
            network: &self.network,
            origin: &self.origin,
        }
    }
}

/// What the per-address limit counts for a caller: the address Cloudflare's edge reports
/// (`CF-Connecting-IP`, which a client cannot set: the edge overwrites it), an IPv6 one cut
/// to its /64, since whoever holds one address of a /64 holds them all.
pub(super) fn client_network(header: Option<&str>) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_is_counted_by_address_and_an_ipv6_one_by_its_64() {
        assert_eq!(client_network(Some("203.0.113.7")), "203.0.113.7");
        assert_eq!(client_network(Some(" ::ffff:203.0.113.7 ")), "203.0.113.7");
        assert_eq!(
            client_network(Some("2001:db8:1:2:dead:beef::1")),
            "2001:db8:1:2::/64"
        );
        assert_eq!(client_network(Some("not an address")), "unknown");
        assert_eq!(client_network(None), "unknown");
    }
}
