//! The per-isolate cache of Infisical's secrets, and when Infisical is asked: a set read
//! serves for the TTL without a call; through an outage the last good set serves (tier
//! `Cache`) until `max_stale_ms` after it was read, and Infisical is not asked again for
//! `MIN_RETRY_MS` (or a 429's longer `retry-after`); after a refusal nothing it sent
//! serves, and it is not asked again for the TTL (at least `REFUSED_RETRY_MS`: failed
//! logins lock an identity). Each change of tier is logged once.

use std::cell::RefCell;
use std::rc::Rc;

use super::client::{Client, Failure, Secrets};
use super::settings::InfisicalSettings;
use super::single_flight::Flight;
use crate::domain::Clock;
use crate::domain::Timestamp;
use crate::http::HttpClient;
use crate::system_keys::Tier;

/// After an outage Infisical is not asked again for this long.
const MIN_RETRY_MS: u64 = 10_000;
/// After a refusal, the wait before asking again: Infisical locks an identity for 300 s
/// after 3 failed logins within 30 s, so one isolate never makes more than one in 30 s.
const REFUSED_RETRY_MS: u64 = 30_000;
/// The longest a `retry-after` may keep Infisical from being asked.
const MAX_RETRY_MS: u64 = 600_000;

/// What the cache serves now.
pub struct Served {
    /// Secret name → value; `None` when nothing may be served (then the env tier serves).
    pub secrets: Option<Rc<Secrets>>,
    /// `Infisical` (fresh), `Cache` (the last good set, through an outage) or `Env` (none).
    pub tier: Tier,
    /// The last problem, in words without any value.
    pub problem: Option<String>,
}

struct Good {
    secrets: Rc<Secrets>,
    fetched_at: Timestamp,
}

struct State {
    good: Option<Good>,
    /// Infisical is not asked before this (after a failure).
    quiet_until: Option<Timestamp>,
    problem: Option<String>,
    /// The tier the last call served, so each change is logged once.
    serving: Tier,
}

/// The per-isolate cache of Infisical's secrets.
pub struct InfisicalCache {
    client: Client,
    /// How long a set read serves as fresh (`INFISICAL_CACHE_TTL_SECONDS`).
    ttl_ms: u64,
    /// How long after it was read a set may serve through an outage
    /// (`INFISICAL_MAX_STALE_SECONDS`).
    max_stale_ms: u64,
    state: RefCell<State>,
    flight: Flight,
}

impl InfisicalCache {
    pub fn new(settings: InfisicalSettings) -> Self {
        Self {
            ttl_ms: settings.cache_ttl_ms,
            max_stale_ms: settings.max_stale_ms,
            client: Client::new(settings),
            state: RefCell::new(State {
                good: None,
                quiet_until: None,
                problem: None,
                serving: Tier::Infisical,
            }),
            flight: Flight::default(),
        }
    }

    /// The secrets to serve now: read from Infisical when the cached set is missing or past
    /// its TTL (and Infisical may be asked), else without any request.
    pub async fn current(
        &self,
        http: &dyn HttpClient,
        clock: &dyn Clock,
        log: &dyn Fn(&str),
    ) -> Served {
        if self.due(clock.now()) {
            match self.flight.take_off() {
                Some(_landing) => {
                    let started = clock.now();
                    let outcome = self.client.fetch(http, clock).await;
                    self.settle(outcome, started, clock.now());
                }
                None => self.flight.landed().await,
            }
        }
        self.serve(clock.now(), log)
    }

    fn due(&self, now: Timestamp) -> bool {
        let st = self.state.borrow();
        let fresh = st
            .good
            .as_ref()
            .is_some_and(|g| g.fetched_at.millis_until(now) < self.ttl_ms);
        !fresh && st.quiet_until.is_none_or(|t| now >= t)
    }

    fn settle(&self, outcome: Result<Secrets, Failure>, started: Timestamp, now: Timestamp) {
        let mut st = self.state.borrow_mut();
        match outcome {
            Ok(secrets) => {
                st.good = Some(Good {
                    secrets: Rc::new(secrets),
                    fetched_at: started,
                });
                st.problem = None;
                st.quiet_until = None;
            }
            Err(Failure::Outage {
                problem,
                retry_after_ms,
            }) => {
                st.problem = Some(problem);
                let wait = retry_after_ms.clamp(MIN_RETRY_MS, MAX_RETRY_MS);
                st.quiet_until = Some(now.plus_millis(wait));
            }
            Err(Failure::Refused(problem) | Failure::TokenExpired(problem)) => {
                st.good = None;
                self.client.forget_token();
                st.problem = Some(problem);
                let wait = self.ttl_ms.max(REFUSED_RETRY_MS);
                st.quiet_until = Some(now.plus_millis(wait));
            }
        }
    }

    fn serve(&self, now: Timestamp, log: &dyn Fn(&str)) -> Served {
        let (served, note) = {
            let mut st = self.state.borrow_mut();
            let age = st.good.as_ref().map(|g| g.fetched_at.millis_until(now));
            let tier = match age {
                Some(a) if a < self.ttl_ms => Tier::Infisical,
                Some(a) if a < self.max_stale_ms => Tier::Cache,
                _ => Tier::Env,
            };
            let problem = st.problem.clone();
            let why = problem.as_deref().unwrap_or("no answer yet");
            let note = (tier != st.serving).then(|| match tier {
                Tier::Infisical => "system keys: Infisical serves again".to_owned(),
                Tier::Cache => format!(
                    "system keys: serving the set Infisical sent {} s ago ({why})",
                    age.unwrap_or_default() / 1000
                ),
                Tier::Env => format!(
                    "system keys: nothing from Infisical may serve, the Worker's secrets do ({why})"
                ),
            });
            st.serving = tier;
            let secrets = match tier {
                Tier::Env => None,
                _ => st.good.as_ref().map(|g| g.secrets.clone()),
            };
            (
                Served {
                    secrets,
                    tier,
                    problem,
                },
                note,
            )
        };
        if let Some(note) = note {
            log(&note);
        }
        served
    }
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;

    use super::super::testing::*;
    use super::*;

    #[test]
    fn through_an_outage_the_last_good_set_serves_for_a_bounded_time() {
        let clock = clock();
        let i = Isolate::new(
            &clock,
            InfisicalSettings {
                max_stale_ms: 2 * MIN,
                ..settings()
            },
        );
        i.current();
        clock.advance(MIN + 1_000);
        i.fake.go_down(
            Down::Status(503, "InternalServerError", "Something went wrong".into()),
            false,
        );
        let s = i.current();
        assert_eq!(
            (s.tier, value(&s, ELEVEN).as_deref()),
            (Tier::Cache, Some(KEY_A))
        );
        assert_eq!(
            s.problem.as_deref(),
            Some("Infisical did not list the secrets (503 Something went wrong)")
        );
        assert_eq!(i.fake.counts(), (1, 2));
        // A failing Infisical is not asked on every request...
        assert_eq!(i.current().tier, Tier::Cache);
        assert_eq!(i.fake.counts(), (1, 2));
        // ... but again after the spacing.
        clock.advance(MIN_RETRY_MS);
        i.fake.go_down(Down::Network, false);
        let s = i.current();
        assert_eq!(s.tier, Tier::Cache);
        assert!(s.problem.unwrap().contains("could not connect"));
        assert_eq!(i.fake.counts(), (1, 3));
        // Too old: nothing from Infisical serves.
        clock.advance(2 * MIN - MIN - 1_000 - MIN_RETRY_MS);
        let s = i.current();
        assert_eq!((s.tier, s.secrets.is_none()), (Tier::Env, true));
        assert_eq!(i.fake.counts(), (1, 4));
        // Infisical is back.
        clock.advance(MIN_RETRY_MS);
        i.fake.recover();
        let s = i.current();
        assert_eq!((s.tier, s.problem), (Tier::Infisical, None));
        // Each change of tier was logged once, without a value.
        let logs = i.logs.borrow();
        assert_eq!(logs.len(), 3, "{logs:?}");
        assert!(logs[0].contains(
            "serving the set Infisical sent 61 s ago (Infisical did not list the secrets (503"
        ));
        assert!(logs[1].contains("the Worker's secrets do"));
        assert!(logs[2].contains("serves again"));
        assert!(logs
            .iter()
            .all(|l| !l.contains(KEY_A) && !l.contains(KEY_B)));
    }

    #[test]
    fn a_cold_isolate_in_an_outage_serves_nothing_and_a_rate_limit_spaces_the_retries() {
        let clock = clock();
        let i = Isolate::new(&clock, settings());
        i.fake.retry_after.set(30);
        i.fake.go_down(
            Down::Status(
                429,
                "RateLimitExceeded",
                "Rate limit exceeded. Please try again in 30 seconds".into(),
            ),
            false,
        );
        let s = i.current();
        assert_eq!((s.tier, s.secrets.is_none()), (Tier::Env, true));
        assert_eq!(
            s.problem.as_deref(),
            Some("Infisical's login failed (429 Rate limit exceeded. Please try again in 30 seconds)")
        );
        assert_eq!(i.fake.counts(), (1, 0));
        clock.advance(MIN_RETRY_MS);
        i.current();
        assert_eq!(i.fake.counts(), (1, 0));
        clock.advance(20_000);
        i.fake.recover();
        assert_eq!(i.current().tier, Tier::Infisical);
        assert_eq!(i.fake.counts(), (2, 1));
        assert_eq!(i.logs.borrow().len(), 2);
    }

    #[test]
    fn a_refusal_drops_the_cached_set_and_the_token() {
        let clock = clock();
        let i = Isolate::new(&clock, settings());
        i.current();
        clock.advance(MIN);
        i.fake.go_down(
            Down::Status(
                401,
                "UnauthorizedError",
                "Failed to authorize: token has been revoked".into(),
            ),
            true,
        );
        let s = i.current();
        assert_eq!((s.tier, s.secrets.is_none()), (Tier::Env, true));
        assert_eq!(
            s.problem.as_deref(),
            Some("Infisical refused to list the secrets to the machine identity (401 Failed to authorize: token has been revoked)")
        );
        // Not asked again within the TTL; then with a new login.
        i.fake.recover();
        clock.advance(MIN - 1);
        assert!(i.current().secrets.is_none());
        assert_eq!(i.fake.counts(), (1, 2));
        clock.advance(1);
        assert_eq!(i.current().tier, Tier::Infisical);
        assert_eq!(i.fake.counts(), (2, 3));

        clock.advance(MIN);
        i.fake.go_down(
            Down::Status(
                403,
                "PermissionDenied",
                "You are not allowed to readValue on secrets".into(),
            ),
            true,
        );
        let s = i.current();
        assert!(s.secrets.is_none());
        assert!(s
            .problem
            .unwrap()
            .contains("(403 You are not allowed to readValue on secrets)"));
    }

    #[test]
    fn concurrent_requests_of_a_cold_isolate_share_one_login_and_one_list() {
        let clock = clock();
        let i = Isolate::new(&clock, settings());
        i.fake.slow.set(true);
        let log = |_: &str| {};
        let call = || i.cache.current(&i.fake, &clock, &log);
        let (a, b, c) = block_on(async { futures::join!(call(), call(), call()) });
        for s in [a, b, c] {
            assert_eq!(
                (s.tier, value(&s, ELEVEN).as_deref()),
                (Tier::Infisical, Some(KEY_A))
            );
        }
        assert_eq!(i.fake.counts(), (1, 1));
    }
}
