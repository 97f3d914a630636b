//! Key-health webhooks: when a credential's status changes (a sweep, a re-check, a use),
//! its owner's app is told at `NOTIFY_WEBHOOK_URL`, signed per the Standard Webhooks
//! convention. The notice is made from the chained `credential.validated` event, written
//! in the chainer's commit (so there is exactly one per change), and delivered from the
//! jobs queue with retries and back-off; its id is the event's, so a receiver can drop a
//! repeat. A notice never holds a key.

mod store;

pub use store::{NotificationStore, StoredNotice};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::audit::{Action, AuditEvent};
use crate::domain::Timestamp;
use crate::domain::Vars;
use crate::endpoint_guard::check_base_url;
use crate::http::{HttpClient, HttpRequest, Method};

/// A notice waiting to be delivered: its id (the event's), its owner, the credential it
/// is about (deleting that credential removes it) and its body.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    pub id: String,
    pub user_id: String,
    pub credential_id: Option<String>,
    pub body: String,
}

/// The notice a chained event makes, if it records a change of status.
pub fn notice_of(event: &AuditEvent) -> Option<Notice> {
    if !matches!(
        event.action,
        Action::CredentialValidated | Action::CredentialRotated | Action::CredentialUpdated
    ) {
        return None;
    }
    let detail = event.detail.as_ref()?;
    let from = detail.get("previous_status")?.as_str()?;
    let to = detail.get("new_status")?.as_str()?;
    if from == to {
        return None;
    }
    let mut body = json!({
        "type": "credential.status_changed",
        "id": event.id,
        "at": Timestamp::from_millis(event.at).to_rfc3339(),
        "user_id": event.user_id,
        "credential_id": event.credential_id,
        "provider": event.provider,
        "from": from,
        "to": to,
        "reason": event.reason,
    });
    if let Some(resets) = detail.get("resets_at").filter(|r| r.is_string()) {
        body["resets_at"] = resets.clone();
    }
    Some(Notice {
        id: event.id.clone(),
        user_id: event.user_id.as_str().to_owned(),
        credential_id: event.credential_id.as_ref().map(|c| c.as_str().to_owned()),
        body: body.to_string(),
    })
}

/// Where and how notices go (`NOTIFY_WEBHOOK_URL`, `NOTIFY_WEBHOOK_SECRET`).
pub struct WebhookSettings {
    pub url: String,
    secret: Zeroizing<Vec<u8>>,
    /// The first retry's wait; each further one doubles it (`NOTIFY_RETRY_BASE_SECONDS`).
    pub retry_base_ms: u64,
}

impl WebhookSettings {
    /// The settings, if `NOTIFY_WEBHOOK_URL` is set; problems are noted in `vars`.
    pub fn parse(vars: &mut Vars, allow_private: bool) -> Option<Self> {
        let url = vars.get("NOTIFY_WEBHOOK_URL")?;
        let url = match check_base_url(&url, allow_private) {
            // Sent to exactly as configured (a trailing slash can matter to a receiver).
            Ok(_) => Some(url.trim().to_owned()),
            Err(e) => {
                vars.problem("NOTIFY_WEBHOOK_URL", format!("is not allowed: it {e}"));
                None
            }
        };
        let secret = match vars.get("NOTIFY_WEBHOOK_SECRET") {
            None => {
                vars.problem(
                    "NOTIFY_WEBHOOK_SECRET",
                    "is required with NOTIFY_WEBHOOK_URL",
                );
                None
            }
            Some(raw) => {
                let raw = raw.trim();
                let bytes = match raw.strip_prefix("whsec_") {
                    Some(b64) => STANDARD.decode(b64).ok(),
                    None => Some(raw.as_bytes().to_vec()),
                };
                match bytes {
                    Some(b) if b.len() >= 24 => Some(Zeroizing::new(b)),
                    _ => {
                        vars.problem(
                            "NOTIFY_WEBHOOK_SECRET",
                            "must be at least 24 bytes (or whsec_ and their base64)",
                        );
                        None
                    }
                }
            }
        };
        let retry_base_ms = vars.number("NOTIFY_RETRY_BASE_SECONDS", 30, 1, 3600) * 1000;
        Some(Self {
            url: url?,
            secret: secret?,
            retry_base_ms,
        })
    }

    #[cfg(test)]
    pub(crate) fn for_tests(url: &str, secret: &[u8], retry_base_ms: u64) -> Self {
        Self {
            url: url.to_owned(),
            secret: Zeroizing::new(secret.to_vec()),
            retry_base_ms,
        }
    }

    /// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` (HMAC takes a key of any length).
    pub fn sign(&self, id: &str, timestamp: u64, body: &str) -> String {
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret) else {
            return String::new();
        };
        mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// Notices one delivery run sends at most (one subrequest each).
pub const DELIVERIES_PER_RUN: u32 = 10;
/// Attempts before a notice is given up: with the default base (30 s), doubling waits up
/// to the hourly cap (about an hour in all), then one an hour: about a day in all.
pub const MAX_ATTEMPTS: u32 = 30;
/// The most of a receiver's answer read: its status is what counts, and a 2xx is a
/// delivery whatever follows it.
pub const RECEIVER_READ_BYTES: usize = 4 * 1024;
/// How long a claimed notice is left to its deliverer before another may take it: twice
/// a run's worst case (every receiver call timing out).
const LEASE_MS: u64 = 2 * TIMEOUT_MS * DELIVERIES_PER_RUN as u64;
const TIMEOUT_MS: u64 = 3_000;

/// What one delivery run did.
#[derive(Debug, Default, PartialEq)]
pub struct Delivered {
    pub sent: usize,
    pub failed: usize,
    /// When the earliest notice still waiting is due, if any is.
    pub next_due: Option<Timestamp>,
}

/// Delivers the notices that are due (at most `DELIVERIES_PER_RUN`): a 2xx removes one
/// (whatever its body: at most `RECEIVER_READ_BYTES` of it are read);
/// anything else is tried again after `retry_base · 2^(attempts-1)` (at most an hour),
/// and given up (logged) after `MAX_ATTEMPTS`.
pub async fn deliver(
    store: &dyn NotificationStore,
    http: &dyn HttpClient,
    now: Timestamp,
    settings: &WebhookSettings,
    log: &dyn Fn(&str),
) -> Result<Delivered, crate::domain::StoreError> {
    let claimed = store
        .claim(now, now.plus_millis(LEASE_MS), DELIVERIES_PER_RUN)
        .await?;
    let mut out = Delivered::default();
    for StoredNotice { id, body, attempts } in claimed {
        let timestamp = now.as_unix_seconds();
        let request = HttpRequest {
            method: Method::Post,
            url: settings.url.clone(),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("webhook-id".into(), id.clone()),
                ("webhook-timestamp".into(), timestamp.to_string()),
                (
                    "webhook-signature".into(),
                    settings.sign(&id, timestamp, &body),
                ),
            ],
            body: Some(body.into_bytes()),
            // A receiver may answer with a page of any size; only its status counts.
            max_response_bytes: RECEIVER_READ_BYTES,
        };
        let problem = match http.send_for_status(request, TIMEOUT_MS).await {
            Ok(status) if (200..300).contains(&status) => None,
            Ok(status) => Some(format!("the receiver answered {status}")),
            Err(e) => Some(e.to_string()),
        };
        match problem {
            None => {
                store.delivered(&id).await?;
                out.sent += 1;
            }
            Some(problem) => {
                out.failed += 1;
                let attempts = attempts + 1;
                if attempts >= MAX_ATTEMPTS {
                    log(&format!(
                        "webhooks: notice {id} given up after {attempts} attempts ({problem})"
                    ));
                    store.delivered(&id).await?;
                    continue;
                }
                let wait = settings
                    .retry_base_ms
                    .saturating_mul(1 << (attempts - 1).min(20))
                    .min(3_600_000);
                log(&format!(
                    "webhooks: notice {id} not delivered ({problem}); attempt {} in {} s",
                    attempts + 1,
                    wait / 1000
                ));
                store
                    .failed(&id, attempts, now.plus_millis(wait), &problem)
                    .await?;
            }
        }
    }
    out.next_due = store.next_due().await?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use async_trait::async_trait;
    use futures::executor::block_on;

    use super::*;
    use crate::audit::{Actor, ActorType};
    use crate::domain::{read_vars, Clock, StoreError};
    use crate::domain::{CredentialId, UserId};
    use crate::testing::{respond, FakeClock, FakeHttp, Scripted};

    fn status_change(from: &str, to: &str) -> AuditEvent {
        let mut e = AuditEvent::new(
            "ev_1".into(),
            Timestamp::from_millis(1_800_000_000_000),
            &UserId::parse("u_1").unwrap(),
            Action::CredentialValidated,
            Actor {
                kind: ActorType::Service,
                id: "revalidation".into(),
            },
        );
        e.credential_id = CredentialId::parse("c_0123456789abcdef0123456789abcdef");
        e.provider = Some("elevenlabs".into());
        e.reason = Some("quota_exhausted".into());
        e.detail = Some(
            json!({"previous_status": from, "new_status": to, "resets_at": "2026-12-01T00:00:00Z"}),
        );
        e
    }

    #[test]
    fn only_a_change_of_status_makes_a_notice_and_it_carries_no_key() {
        let n = notice_of(&status_change("valid", "quota_exhausted")).unwrap();
        let body: serde_json::Value = serde_json::from_str(&n.body).unwrap();
        assert_eq!(
            body,
            json!({"type":"credential.status_changed","id":"ev_1","at":"2027-01-15T08:00:00Z",
                   "user_id":"u_1","credential_id":"c_0123456789abcdef0123456789abcdef",
                   "provider":"elevenlabs","from":"valid","to":"quota_exhausted",
                   "reason":"quota_exhausted","resets_at":"2026-12-01T00:00:00Z"})
        );
        assert_eq!((n.id.as_str(), n.user_id.as_str()), ("ev_1", "u_1"));
        // Which credential it is about: deleting that credential removes the notice.
        assert_eq!(
            n.credential_id.as_deref(),
            Some("c_0123456789abcdef0123456789abcdef")
        );
        assert!(notice_of(&status_change("valid", "valid")).is_none());
        let mut created = status_change("valid", "invalid_key");
        created.action = Action::CredentialCreated;
        assert!(notice_of(&created).is_none());
        // A dead key replaced by a good one is a change of status too.
        let mut rotated = status_change("invalid_key", "valid");
        rotated.action = Action::CredentialRotated;
        assert!(notice_of(&rotated).is_some());
    }

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The convention's own example: secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw.
        let (s, errors) = read_vars(
            &[
                ("NOTIFY_WEBHOOK_URL", "https://hooks.example/byok"),
                (
                    "NOTIFY_WEBHOOK_SECRET",
                    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                ),
            ],
            |v| WebhookSettings::parse(v, false),
        );
        let s = s.unwrap();
        assert!(errors.is_empty());
        assert_eq!(
            s.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                r#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_webhook_url_passes_the_address_guard_and_needs_a_secret() {
        for (url, secret, var) in [
            (
                "http://10.0.0.1/hook",
                Some("0123456789abcdef0123456789"),
                "NOTIFY_WEBHOOK_URL",
            ),
            (
                "https://169.254.169.254/latest",
                Some("0123456789abcdef0123456789"),
                "NOTIFY_WEBHOOK_URL",
            ),
            ("https://hooks.example/x", None, "NOTIFY_WEBHOOK_SECRET"),
            (
                "https://hooks.example/x",
                Some("short"),
                "NOTIFY_WEBHOOK_SECRET",
            ),
        ] {
            let mut pairs = vec![("NOTIFY_WEBHOOK_URL", url)];
            pairs.extend(secret.map(|s| ("NOTIFY_WEBHOOK_SECRET", s)));
            let (s, errors) = read_vars(&pairs, |v| WebhookSettings::parse(v, false));
            assert!(s.is_none());
            assert_eq!(errors[0].var, var, "{url}");
        }
        let (s, errors) = read_vars(&[], |v| WebhookSettings::parse(v, false));
        assert!(s.is_none());
        assert!(errors.is_empty(), "unset is off, not an error");
    }

    #[derive(Default)]
    struct Notices(RefCell<Vec<(StoredNotice, u64)>>);

    #[async_trait(?Send)]
    impl NotificationStore for Notices {
        async fn claim(
            &self,
            now: Timestamp,
            lease_until: Timestamp,
            limit: u32,
        ) -> Result<Vec<StoredNotice>, StoreError> {
            let mut rows = self.0.borrow_mut();
            let mut out = Vec::new();
            for (n, at) in rows.iter_mut() {
                if *at <= now.as_millis() && out.len() < limit as usize {
                    *at = lease_until.as_millis();
                    out.push(n.clone());
                }
            }
            Ok(out)
        }
        async fn delivered(&self, id: &str) -> Result<(), StoreError> {
            self.0.borrow_mut().retain(|(n, _)| n.id != id);
            Ok(())
        }
        async fn failed(
            &self,
            id: &str,
            attempts: u32,
            next_at: Timestamp,
            _problem: &str,
        ) -> Result<(), StoreError> {
            for (n, at) in self.0.borrow_mut().iter_mut().filter(|(n, _)| n.id == id) {
                n.attempts = attempts;
                *at = next_at.as_millis();
            }
            Ok(())
        }
        async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
            Ok(self
                .0
                .borrow()
                .iter()
                .map(|(_, at)| *at)
                .min()
                .map(Timestamp::from_millis))
        }
    }

    #[test]
    fn a_failing_receiver_gets_the_notice_once_it_recovers_signed_and_once() {
        let clock = FakeClock::at(1_800_000_000_000);
        let store = Notices::default();
        store.0.borrow_mut().push((
            StoredNotice {
                id: "ev_1".into(),
                body: r#"{"type":"credential.status_changed"}"#.into(),
                attempts: 0,
            },
            0,
        ));
        let settings = WebhookSettings::for_tests(
            "https://hooks.example/byok",
            b"0123456789abcdef01234567",
            1000,
        );
        let run = |script: Vec<Scripted>| {
            let http = FakeHttp::new(&clock, script);
            let d = block_on(deliver(
                &store,
                &http,
                clock.now(),
                &settings,
                &|_: &str| {},
            ))
            .unwrap();
            let sent = http.sent.borrow().clone();
            (d, sent)
        };
        let (d, _) = run(vec![respond(500, "down")]);
        assert_eq!((d.sent, d.failed), (0, 1));
        let first_retry = d.next_due.unwrap();
        assert_eq!(clock.now().millis_until(first_retry), 1000 - 20);
        // Not due yet: nothing is sent.
        let (d, sent) = run(vec![]);
        assert_eq!((d.sent, sent.len()), (0, 0));
        clock.advance(1000);
        let (d, _) = run(vec![Scripted::Refuse]);
        assert_eq!(d.failed, 1);
        assert_eq!(
            clock.now().millis_until(d.next_due.unwrap()),
            2000,
            "the wait doubles"
        );
        clock.advance(2000);
        let (d, sent) = run(vec![respond(204, "")]);
        assert_eq!((d.sent, d.next_due), (1, None));
        let (url, headers, _) = &sent[0];
        assert_eq!(url, "https://hooks.example/byok");
        let header = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(header("webhook-id"), "ev_1");
        let ts: u64 = header("webhook-timestamp").parse().unwrap();
        assert_eq!(ts, clock.now().as_unix_seconds());
        assert_eq!(
            header("webhook-signature"),
            settings.sign("ev_1", ts, r#"{"type":"credential.status_changed"}"#)
        );
    }

    #[test]
    fn a_2xx_with_a_large_body_is_a_delivery_and_is_not_sent_again() {
        let clock = FakeClock::at(1_800_000_000_000);
        let store = Notices::default();
        store.0.borrow_mut().push((
            StoredNotice {
                id: "ev_1".into(),
                body: r#"{"type":"credential.status_changed"}"#.into(),
                attempts: 0,
            },
            0,
        ));
        let settings = WebhookSettings::for_tests(
            "https://hooks.example/byok",
            b"0123456789abcdef01234567",
            1000,
        );
        // A receiver that answers 200 with a 5 MB page (a framework's debug page, say).
        let page = "x".repeat(5 * 1024 * 1024);
        let http = FakeHttp::new(&clock, vec![respond(200, &page)]);
        let lines = RefCell::new(Vec::new());
        let d = block_on(deliver(
            &store,
            &http,
            clock.now(),
            &settings,
            &|l: &str| lines.borrow_mut().push(l.to_owned()),
        ))
        .unwrap();
        assert_eq!((d.sent, d.failed, d.next_due), (1, 0, None), "{lines:?}");
        assert!(store.0.borrow().is_empty(), "the notice is still queued");
        // Nothing is due any more: a later run sends nothing (the fake has no answer left).
        clock.advance(3_600_000);
        let later = FakeHttp::new(&clock, vec![]);
        let d = block_on(deliver(
            &store,
            &later,
            clock.now(),
            &settings,
            &|_: &str| {},
        ))
        .unwrap();
        assert_eq!((d.sent, later.sent.borrow().len()), (0, 0));
    }
}
