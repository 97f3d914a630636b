//! What an operation's audit event says, gathered as the operation goes, and the event
//! made of it.

use serde_json::Value;

use super::{new_event_id, Action, Actor, AuditEvent, Outcome, Source};
use crate::crypto::random_bytes;
use crate::domain::{CredentialId, ProviderId, RequestId, Timestamp, UserId};

/// Who acts, and in which request: what every event of one request shares.
#[derive(Clone, Debug)]
pub struct Origin {
    pub actor: Actor,
    pub request_id: Option<RequestId>,
}

/// What an operation's audit event says. An operation fills it in as it learns (which
/// credential, which provider, what changed); the caller turns it into the event.
#[derive(Clone, Debug)]
pub struct Facts {
    pub action: Action,
    pub credential_id: Option<CredentialId>,
    pub provider: Option<ProviderId>,
    /// Small, action-specific facts (what changed, the previous and new status).
    pub detail: Option<Value>,
    /// An operation that answered 200 but whose point failed (a re-check of a dead key):
    /// the error code its event carries.
    pub failure: Option<&'static str>,
    /// The event was written with the operation's change, in one transaction: its id.
    pub committed: Option<String>,
    /// Whose key a use used (`credential.used`).
    pub source: Option<Source>,
}

impl Facts {
    pub fn new(action: Action) -> Self {
        Self {
            action,
            credential_id: None,
            provider: None,
            detail: None,
            failure: None,
            committed: None,
            source: None,
        }
    }

    /// Notes the credential the operation is about (and its provider, once known).
    pub fn about(&mut self, id: &CredentialId, provider: Option<ProviderId>) {
        self.credential_id = Some(id.clone());
        if provider.is_some() {
            self.provider = provider;
        }
    }

    /// The event these facts describe, for `user`, at `now`: a failure with `failure`'s
    /// code if one is given (or noted), else a success.
    pub fn event(
        &self,
        origin: &Origin,
        user: &UserId,
        now: Timestamp,
        failure: Option<&str>,
    ) -> AuditEvent {
        let id = new_event_id(now, random_bytes().unwrap_or_default());
        let mut event = AuditEvent::new(id, now, user, self.action, origin.actor.clone());
        event.credential_id = self.credential_id.clone();
        event.provider = self.provider.map(|p| p.as_str().to_owned());
        event.detail = self.detail.clone();
        event.request_id = origin.request_id.clone();
        event.source = self.source;
        if let Some(code) = failure.or(self.failure) {
            event.outcome = Outcome::Failure;
            event.reason = Some(code.to_owned());
        }
        event
    }
}

/// Who an operation acts for, and where the request came from.
pub struct Caller<'a> {
    pub user: &'a UserId,
    /// What the per-address live-check limit counts: the client's address, an IPv6 one
    /// cut to its /64.
    pub network: &'a str,
    /// The actor and request every event of this request carries.
    pub origin: &'a Origin,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::ActorType;

    #[test]
    fn facts_become_one_event_with_the_right_outcome() {
        let user = UserId::parse("u_1").unwrap();
        let origin = Origin {
            actor: Actor {
                kind: ActorType::User,
                id: "u_1".into(),
            },
            request_id: Some(RequestId::from_random([7; 16])),
        };
        let mut facts = Facts::new(Action::CredentialValidated);
        let id = CredentialId::from_random([1; 16]);
        facts.about(&id, Some(ProviderId::new("openai")));
        let now = Timestamp::from_millis(1_800_000_000_000);
        let ok = facts.event(&origin, &user, now, None);
        assert_eq!(ok.outcome, Outcome::Success);
        assert_eq!(ok.credential_id, Some(id));
        assert_eq!(ok.provider.as_deref(), Some("openai"));
        assert!(ok.request_id.unwrap().as_str().starts_with("req_"));
        facts.failure = Some("invalid_api_key");
        let dead = facts.event(&origin, &user, now, None);
        assert_eq!(
            (dead.outcome, dead.reason.as_deref()),
            (Outcome::Failure, Some("invalid_api_key"))
        );
        let refused = facts.event(&origin, &user, now, Some("rate_limited"));
        assert_eq!(refused.reason.as_deref(), Some("rate_limited"));
    }
}
