//! Infisical as a source of system keys. A machine identity (Universal Auth) lists the
//! secrets of one project, environment and path; each isolate keeps the `SYSTEM_KEY_*`
//! ones for `cache_ttl_ms`, so a request normally makes no call and a rotated secret is
//! picked up within the TTL. The access token is reused until shortly before it expires.
//!
//! Failures come in two kinds (Doppler's rule, not the SDKs'):
//! - an outage (5xx, 429, no answer, an unreadable answer): the last good set keeps
//!   serving, as tier `Cache`, until `max_stale_ms` after it was read, and Infisical is
//!   not asked again for `MIN_RETRY_MS` (or a 429's longer `retry-after`);
//! - a refusal (401, 403 other than an expired token, 404, 400, 422): the set and the token
//!   are dropped at once, since the identity may no longer read them, and Infisical is not
//!   asked again for the TTL (three failed logins in 30 s lock the identity for 5 min).
//!   An expired token (403 `TokenError`) gets one new login and one more list first.
//!
//! When nothing may serve, the Worker's secrets do. Each change of tier is logged once.
//! Requests of one isolate that arrive while a fetch is under way wait for it instead of
//! starting their own: one login and one list, however many requests a cold isolate gets.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use serde::{Deserialize, Serialize};
use url::Url;
use zeroize::Zeroizing;

use super::Tier;
use crate::crypto::SecretKey;
use crate::domain::Clock;
use crate::domain::Timestamp;
use crate::domain::{Environment, Vars};
use crate::http::{HttpClient, HttpRequest, HttpResponse, Method};
use crate::redact::{is_hidden, ProviderText};

const DEFAULT_HOST: &str = "https://app.infisical.com";
const FETCH_TIMEOUT_MS: u64 = 3_000;
/// After an outage Infisical is not asked again for this long.
const MIN_RETRY_MS: u64 = 10_000;
/// After a refusal, the wait before asking again: Infisical locks an identity for 300 s
/// after 3 failed logins within 30 s, so one isolate never makes more than one in 30 s.
const REFUSED_RETRY_MS: u64 = 30_000;
/// The longest a `retry-after` may keep Infisical from being asked.
const MAX_RETRY_MS: u64 = 600_000;
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
const MAX_LOGIN_RESPONSE_BYTES: usize = 64 * 1024;
/// A longer value is no API key.
const MAX_VALUE_CHARS: usize = 1024;
const MAX_PROBLEM_CHARS: usize = 200;
/// A token is renewed this long (at most a tenth of its lifetime) before it expires.
const TOKEN_MARGIN_MS: u64 = 60_000;
/// Only secrets of this prefix are kept (see `super::secret_name`).
const NAME_PREFIX: &str = "SYSTEM_KEY_";

/// Secret name → value.
pub type Secrets = BTreeMap<String, Zeroizing<String>>;

/// Where and as whom to read the secrets.
pub struct InfisicalSettings {
    /// Without a trailing slash.
    pub host: String,
    pub client_id: String,
    pub client_secret: Zeroizing<String>,
    pub project_id: String,
    pub environment: String,
    pub secret_path: String,
    pub cache_ttl_ms: u64,
    pub max_stale_ms: u64,
}

impl InfisicalSettings {
    /// The settings of `SYSTEM_KEYS_SOURCE = "infisical"`, or `None` with every problem
    /// noted in `vars` (each names its variable, never its value).
    pub fn parse(vars: &mut Vars, environment: Environment) -> Option<InfisicalSettings> {
        let before = vars.problems();
        let get = |vars: &Vars, name: &str| vars.get(name).map(|v| v.trim().to_owned());
        let required = |vars: &mut Vars, var: &'static str| {
            let v = get(vars, var);
            if v.is_none() {
                vars.problem(var, "is required when SYSTEM_KEYS_SOURCE is infisical");
            }
            v.unwrap_or_default()
        };

        let host = get(vars, "INFISICAL_HOST").unwrap_or_else(|| DEFAULT_HOST.into());
        let host = host.trim_end_matches('/').to_owned();
        let host_ok = Url::parse(&host).is_ok_and(|u| {
            (u.scheme() == "https"
                || (u.scheme() == "http" && environment == Environment::Development))
                && u.host().is_some()
                && u.query().is_none()
                && u.fragment().is_none()
                && u.username().is_empty()
                && u.password().is_none()
        });
        if !host_ok {
            vars.problem(
                "INFISICAL_HOST",
                "must be an https URL (http only in development)",
            );
        }
        let client_id = required(vars, "INFISICAL_CLIENT_ID");
        let client_secret = Zeroizing::new(required(vars, "INFISICAL_CLIENT_SECRET"));
        let project_id = required(vars, "INFISICAL_PROJECT_ID");

        let (deployment, expected) = match environment {
            Environment::Development => ("development", "dev"),
            Environment::Staging => ("staging", "staging"),
            Environment::Production => ("production", "prod"),
        };
        let slug = required(vars, "INFISICAL_ENVIRONMENT");
        if !slug.is_empty() && slug != expected {
            let text = if ["dev", "staging", "prod"].contains(&slug.as_str()) {
                format!(
                    "is {slug} but ENVIRONMENT is {deployment}: a {expected} identity must not read {slug} secrets"
                )
            } else {
                format!(
                    "must be {expected} (the Infisical environment of ENVIRONMENT {deployment})"
                )
            };
            vars.problem("INFISICAL_ENVIRONMENT", text);
        }

        let secret_path = get(vars, "INFISICAL_SECRET_PATH").unwrap_or_else(|| "/".into());
        if !secret_path.starts_with('/') || secret_path.chars().any(is_hidden) {
            vars.problem(
                "INFISICAL_SECRET_PATH",
                "must be a folder path starting with /",
            );
        }

        let cache_ttl_ms = vars.number("INFISICAL_CACHE_TTL_SECONDS", 60, 1, 3600) * 1000;
        let max_stale_ms = vars.number("INFISICAL_MAX_STALE_SECONDS", 3600, 0, 86_400) * 1000;

        (vars.problems() == before).then(|| InfisicalSettings {
            host,
            client_id,
            client_secret,
            project_id,
            environment: slug,
            secret_path,
            cache_ttl_ms,
            max_stale_ms,
        })
    }
}

/// What the cache serves now.
pub struct Served {
    /// Secret name → value; `None` when nothing may be served (then the env tier serves).
    pub secrets: Option<Rc<Secrets>>,
    /// `Infisical` (fresh), `Cache` (the last good set, through an outage) or `Env` (none).
    pub tier: Tier,
    /// The last problem, in words without any value.
    pub problem: Option<String>,
}

struct Token {
    value: Zeroizing<String>,
    renew_at: Timestamp,
}

struct Good {
    secrets: Rc<Secrets>,
    fetched_at: Timestamp,
}

struct State {
    token: Option<Token>,
    good: Option<Good>,
    /// Infisical is not asked before this (after a failure).
    quiet_until: Option<Timestamp>,
    problem: Option<String>,
    /// The tier the last call served, so each change is logged once.
    serving: Tier,
}

enum Failure {
    /// Infisical is down or busy: the last good set may serve; ask again after `wait_ms`.
    Outage { problem: String, wait_ms: u64 },
    /// Infisical refused: nothing it served before may serve.
    Refused(String),
    /// The access token expired (403 `TokenError`): worth one new login.
    TokenExpired(String),
}

/// At most one fetch at a time; the others wait for it to land.
#[derive(Default)]
struct Flight {
    busy: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

/// Held by the fetching request; lands the flight even if that request is dropped (its
/// waiters then serve what the cache holds).
struct Landing<'a>(&'a Flight);

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        self.0.busy.set(false);
        for waker in self.0.waiters.take() {
            waker.wake();
        }
    }
}

impl Flight {
    fn take_off(&self) -> Option<Landing<'_>> {
        // Lazily: a `Landing` made and dropped would land the flight under way.
        (!self.busy.replace(true)).then(|| Landing(self))
    }

    async fn landed(&self) {
        poll_fn(|cx| {
            if self.busy.get() {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Login<'a> {
    client_id: &'a str,
    client_secret: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LoginAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: f64,
}

#[derive(Deserialize)]
struct RawList {
    secrets: Vec<RawSecret>,
    #[serde(default)]
    imports: Vec<RawImport>,
}

#[derive(Deserialize)]
struct RawImport {
    #[serde(default)]
    secrets: Vec<RawSecret>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSecret {
    secret_key: String,
    #[serde(default)]
    secret_value: String,
    #[serde(default)]
    secret_value_hidden: bool,
}

/// The usable `SYSTEM_KEY_*` secrets of a list: direct secrets first, then imports, the
/// last import first (as Infisical's CLI merges them). A name whose first entry is hidden,
/// empty or too long is left out, not served from a lower one.
fn collect(list: RawList) -> Secrets {
    let imported = list.imports.into_iter().rev().flat_map(|i| i.secrets);
    let mut seen: BTreeMap<String, Option<Zeroizing<String>>> = BTreeMap::new();
    for s in list.secrets.into_iter().chain(imported) {
        let raw = Zeroizing::new(s.secret_value);
        if !s.secret_key.starts_with(NAME_PREFIX) || seen.contains_key(&s.secret_key) {
            continue;
        }
        let value = Zeroizing::new(raw.trim().to_owned());
        let usable = !s.secret_value_hidden
            && !value.is_empty()
            && value.chars().count() <= MAX_VALUE_CHARS
            && !value.chars().any(is_hidden);
        seen.insert(s.secret_key, usable.then_some(value));
    }
    // Inserted one by one: collecting into a BTreeMap sorts first, with a sort of its own
    // in the wasm.
    let mut secrets = Secrets::new();
    for (k, v) in seen {
        if let Some(v) = v {
            secrets.insert(k, v);
        }
    }
    secrets
}

/// How long a failed answer asks not to be asked again: its `retry-after` (seconds),
/// within `MIN_RETRY_MS..=MAX_RETRY_MS`.
fn wait_ms(r: &HttpResponse) -> u64 {
    r.header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(0, |s| s.saturating_mul(1000))
        .clamp(MIN_RETRY_MS, MAX_RETRY_MS)
}

#[derive(Clone, Copy)]
enum Call {
    Login,
    List,
}

/// The per-isolate cache of Infisical's secrets.
pub struct InfisicalCache {
    settings: InfisicalSettings,
    state: RefCell<State>,
    flight: Flight,
}

impl InfisicalCache {
    pub fn new(settings: InfisicalSettings) -> Self {
        Self {
            settings,
            state: RefCell::new(State {
                token: None,
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
                    let outcome = self.fetch(http, clock).await;
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
            .is_some_and(|g| g.fetched_at.millis_until(now) < self.settings.cache_ttl_ms);
        !fresh && st.quiet_until.is_none_or(|t| now >= t)
    }

    async fn fetch(&self, http: &dyn HttpClient, clock: &dyn Clock) -> Result<Secrets, Failure> {
        let mut relogged = false;
        loop {
            let now = clock.now();
            let kept = self
                .state
                .borrow()
                .token
                .as_ref()
                .filter(|t| now < t.renew_at)
                .map(|t| t.value.clone());
            let token = match kept {
                Some(t) => t,
                None => self.login(http, clock).await?,
            };
            match self.list(http, &token).await {
                Err(Failure::TokenExpired(_)) if !relogged => {
                    self.state.borrow_mut().token = None;
                    relogged = true;
                }
                Err(Failure::TokenExpired(detail)) => {
                    return Err(Failure::Refused(format!(
                        "Infisical refused a new access token ({detail})"
                    )))
                }
                other => return other,
            }
        }
    }

    async fn login(
        &self,
        http: &dyn HttpClient,
        clock: &dyn Clock,
    ) -> Result<Zeroizing<String>, Failure> {
        let s = &self.settings;
        let body = serde_json::to_vec(&Login {
            client_id: &s.client_id,
            client_secret: &s.client_secret,
        })
        .unwrap_or_default();
        let request = HttpRequest {
            method: Method::Post,
            body: Some(body),
            max_response_bytes: MAX_LOGIN_RESPONSE_BYTES,
            ..HttpRequest::get(format!("{}/api/v1/auth/universal-auth/login", s.host))
        }
        .header("content-type", "application/json")
        .header("accept", "application/json");
        let started = clock.now();
        let r = self.send(http, request, Call::Login).await?;
        if r.status != 200 {
            return Err(self.failure(Call::Login, &r, None));
        }
        let body = Zeroizing::new(r.body);
        let answer = serde_json::from_slice::<LoginAnswer>(&body)
            .ok()
            .filter(|a| !a.access_token.is_empty())
            .ok_or(Failure::Outage {
                problem: "Infisical's login answered without an access token".into(),
                wait_ms: MIN_RETRY_MS,
            })?;
        let value = Zeroizing::new(answer.access_token);
        let lifetime = (answer.expires_in.max(0.0) * 1000.0) as u64;
        let renew_at =
            started.plus_millis(lifetime.saturating_sub((lifetime / 10).min(TOKEN_MARGIN_MS)));
        self.state.borrow_mut().token = Some(Token {
            value: value.clone(),
            renew_at,
        });
        Ok(value)
    }

    async fn list(&self, http: &dyn HttpClient, token: &str) -> Result<Secrets, Failure> {
        let s = &self.settings;
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("workspaceId", &s.project_id)
            .append_pair("environment", &s.environment)
            .append_pair("secretPath", &s.secret_path)
            .append_pair("include_imports", "true")
            .finish();
        let request = HttpRequest {
            max_response_bytes: MAX_RESPONSE_BYTES,
            ..HttpRequest::get(format!("{}/api/v3/secrets/raw?{query}", s.host))
        }
        .header("authorization", &Zeroizing::new(format!("Bearer {token}")))
        .header("accept", "application/json");
        let r = self.send(http, request, Call::List).await?;
        if r.status != 200 {
            return Err(self.failure(Call::List, &r, Some(token)));
        }
        let body = Zeroizing::new(r.body);
        serde_json::from_slice::<RawList>(&body)
            .map(collect)
            .map_err(|_| Failure::Outage {
                problem: "Infisical's list of secrets was not readable".into(),
                wait_ms: MIN_RETRY_MS,
            })
    }

    async fn send(
        &self,
        http: &dyn HttpClient,
        request: HttpRequest,
        call: Call,
    ) -> Result<HttpResponse, Failure> {
        http.send(request, FETCH_TIMEOUT_MS)
            .await
            .map_err(|e| Failure::Outage {
                problem: format!(
                    "{} ({})",
                    match call {
                        Call::Login => "Infisical's login failed",
                        Call::List => "Infisical did not list the secrets",
                    },
                    self.clean(&e.to_string(), None)
                ),
                wait_ms: MIN_RETRY_MS,
            })
    }

    /// What a non-200 answer means, in words: its status and Infisical's message.
    fn failure(&self, call: Call, r: &HttpResponse, token: Option<&str>) -> Failure {
        let body = r.json();
        let field = |name: &str| {
            body.as_ref()
                .and_then(|b| b.get(name))
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .filter(|v| !v.is_empty())
        };
        let error = field("error");
        let message = self.clean(
            &field("message").or(error.clone()).unwrap_or_default(),
            token,
        );
        let detail = format!("{} {message}", r.status).trim_end().to_owned();
        if r.status == 408 || r.status == 429 || r.status >= 500 {
            return Failure::Outage {
                problem: match call {
                    Call::Login => format!("Infisical's login failed ({detail})"),
                    Call::List => format!("Infisical did not list the secrets ({detail})"),
                },
                wait_ms: wait_ms(r),
            };
        }
        match (call, r.status) {
            (Call::List, 403) if error.as_deref() == Some("TokenError") => {
                Failure::TokenExpired(detail)
            }
            (Call::Login, _) => Failure::Refused(format!(
                "Infisical refused the machine identity's login ({detail})"
            )),
            (Call::List, 404) => Failure::Refused(format!(
                "Infisical has no such environment or secret path ({detail})"
            )),
            (Call::List, 400 | 422) => Failure::Refused(format!(
                "Infisical refused the list request as malformed ({detail})"
            )),
            (Call::List, _) => Failure::Refused(format!(
                "Infisical refused to list the secrets to the machine identity ({detail})"
            )),
        }
    }

    /// Infisical's text made safe to log and show: cut short, without hidden characters,
    /// the client secret or the access token.
    fn clean(&self, text: &str, token: Option<&str>) -> String {
        let secret = SecretKey::new(self.settings.client_secret.to_string());
        let mut out = ProviderText::new(&secret).clean(text, MAX_PROBLEM_CHARS);
        if let Some(token) = token {
            out =
                ProviderText::new(&SecretKey::new(token.to_owned())).clean(&out, MAX_PROBLEM_CHARS);
        }
        out
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
            Err(Failure::Outage { problem, wait_ms }) => {
                st.problem = Some(problem);
                st.quiet_until = Some(now.plus_millis(wait_ms));
            }
            Err(Failure::Refused(problem) | Failure::TokenExpired(problem)) => {
                st.good = None;
                st.token = None;
                st.problem = Some(problem);
                let wait = self.settings.cache_ttl_ms.max(REFUSED_RETRY_MS);
                st.quiet_until = Some(now.plus_millis(wait));
            }
        }
    }

    fn serve(&self, now: Timestamp, log: &dyn Fn(&str)) -> Served {
        let s = &self.settings;
        let (served, note) = {
            let mut st = self.state.borrow_mut();
            let age = st.good.as_ref().map(|g| g.fetched_at.millis_until(now));
            let tier = match age {
                Some(a) if a < s.cache_ttl_ms => Tier::Infisical,
                Some(a) if a < s.max_stale_ms => Tier::Cache,
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
    use std::collections::HashMap;

    use futures::executor::block_on;
    use serde_json::{json, Value};

    use super::*;
    use crate::domain::{read_vars, ConfigError};
    use crate::http::HttpError;
    use crate::testing::FakeClock;

    const HOST: &str = "https://infisical.test";
    const CLIENT_ID: &str = "9a1c2e4f-ua-client";
    const CLIENT_SECRET: &str = "ua_secret_5f0e7c9b1d3a2468ace0";
    const PROJECT: &str = "6d1f0a3e-77b2-4c1e-9f00-project";
    const KEY_A: &str = "sk_eleven_0a1b2c3d4e5f6a7b8c9d";
    const KEY_B: &str = "sk-proj-openai-9z8y7x6w5v4u3t2s";
    const ELEVEN: &str = "SYSTEM_KEY_ELEVENLABS";
    const OPENAI: &str = "SYSTEM_KEY_OPENAI";
    const MIN: u64 = 60_000;

    /// How the fake fails, for every request or only for lists.
    #[derive(Clone)]
    enum Down {
        Status(u16, &'static str, String),
        Network,
    }

    /// Infisical, in memory, answering with the real shapes (shared/reference/providers.md):
    /// it checks the client id and secret, the bearer token it issued and the list's
    /// parameters, like the server does.
    struct Fake<'c> {
        clock: &'c FakeClock,
        secrets: RefCell<Vec<Value>>,
        imports: RefCell<Vec<Value>>,
        /// Issued tokens and when each expires.
        tokens: RefCell<Vec<(String, u64)>>,
        expires_in: Cell<u64>,
        down: RefCell<Option<(Down, bool)>>,
        retry_after: Cell<u64>,
        logins: Cell<u32>,
        lists: Cell<u32>,
        sent: RefCell<Vec<(HttpRequest, u64)>>,
        /// Every answer waits for the other requests to run first.
        slow: Cell<bool>,
    }

    fn secret(key: &str, value: &str) -> Value {
        json!({"id": format!("id-{key}"), "_id": format!("id-{key}"), "workspace": PROJECT,
            "environment": "dev", "version": 1, "type": "shared", "secretKey": key,
            "secretValue": value, "secretComment": "", "secretValueHidden": false,
            "secretReminderNote": null, "tags": []})
    }

    fn answer(status: u16, headers: Vec<(String, String)>, body: Value) -> HttpResponse {
        HttpResponse {
            status,
            headers,
            body: body.to_string().into_bytes(),
        }
    }

    fn error(status: u16, error: &str, message: &str) -> HttpResponse {
        answer(
            status,
            vec![],
            json!({"reqId": "req-7Gx2", "statusCode": status, "message": message, "error": error}),
        )
    }

    async fn yield_now() {
        let mut yielded = false;
        poll_fn(|cx| {
            if yielded {
                Poll::Ready(())
            } else {
                yielded = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
        .await;
    }

    impl<'c> Fake<'c> {
        fn new(clock: &'c FakeClock) -> Self {
            Self {
                clock,
                secrets: RefCell::new(vec![secret(ELEVEN, KEY_A), secret(OPENAI, KEY_B)]),
                imports: RefCell::new(vec![]),
                tokens: RefCell::new(vec![]),
                expires_in: Cell::new(2_592_000),
                down: RefCell::new(None),
                retry_after: Cell::new(60),
                logins: Cell::new(0),
                lists: Cell::new(0),
                sent: RefCell::new(vec![]),
                slow: Cell::new(false),
            }
        }

        fn counts(&self) -> (u32, u32) {
            (self.logins.get(), self.lists.get())
        }

        fn set_secret(&self, key: &str, value: &str) {
            let mut secrets = self.secrets.borrow_mut();
            secrets.retain(|s| s["secretKey"] != key);
            secrets.push(secret(key, value));
        }

        fn go_down(&self, how: Down, lists_only: bool) {
            *self.down.borrow_mut() = Some((how, lists_only));
        }

        fn recover(&self) {
            *self.down.borrow_mut() = None;
        }

        fn expire_tokens(&self) {
            self.tokens.borrow_mut().clear();
        }

        fn last_token(&self) -> String {
            self.tokens.borrow().last().unwrap().0.clone()
        }

        fn answer(&self, req: &HttpRequest) -> Result<HttpResponse, HttpError> {
            let url = Url::parse(&req.url).unwrap();
            let login = url.path() == "/api/v1/auth/universal-auth/login";
            let counter = if login { &self.logins } else { &self.lists };
            counter.set(counter.get() + 1);
            let down = self.down.borrow().clone();
            match down {
                Some((_, true)) if login => {}
                Some((Down::Network, _)) => {
                    return Err(HttpError::Network("connection refused".into()))
                }
                Some((Down::Status(429, e, m), _)) => {
                    let mut r = error(429, e, &m);
                    let secs = self.retry_after.get().to_string();
                    r.headers = vec![
                        ("retry-after".into(), secs.clone()),
                        ("x-ratelimit-limit".into(), "60".into()),
                        ("x-ratelimit-remaining".into(), "0".into()),
                        ("x-ratelimit-reset".into(), secs),
                    ];
                    return Ok(r);
                }
                Some((Down::Status(s, e, m), _)) => return Ok(error(s, e, &m)),
                None => {}
            }
            let now = self.clock.now().as_millis();
            if login {
                assert_eq!(req.method, Method::Post);
                let body: Value = serde_json::from_slice(req.body.as_deref().unwrap()).unwrap();
                if body["clientId"] != CLIENT_ID || body["clientSecret"] != CLIENT_SECRET {
                    return Ok(error(401, "UnauthorizedError", "Invalid credentials"));
                }
                let token = format!("eyJhbGciOi.fake-access-token-{}", self.logins.get());
                let ttl = self.expires_in.get();
                self.tokens
                    .borrow_mut()
                    .push((token.clone(), now + ttl * 1000));
                return Ok(answer(
                    200,
                    vec![],
                    json!({"accessToken": token, "expiresIn": ttl, "accessTokenMaxTTL": 2_592_000, "tokenType": "Bearer"}),
                ));
            }
            assert_eq!(url.path(), "/api/v3/secrets/raw");
            let header = |n: &str| {
                req.headers
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.clone())
            };
            let Some(bearer) = header("authorization") else {
                return Ok(error(401, "UnauthorizedError", "Token missing"));
            };
            let live = self
                .tokens
                .borrow()
                .iter()
                .any(|(t, exp)| bearer == format!("Bearer {t}") && now < *exp);
            if !live {
                return Ok(error(
                    403,
                    "TokenError",
                    "Your token has expired. Please re-authenticate.",
                ));
            }
            let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
            let (Some(project), Some(env)) = (q.get("workspaceId"), q.get("environment")) else {
                return Ok(error(
                    400,
                    "BadRequest",
                    "Missing project id or environment",
                ));
            };
            assert_eq!(q.get("include_imports").map(String::as_str), Some("true"));
            let path = q.get("secretPath").cloned().unwrap_or_else(|| "/".into());
            if project != PROJECT || env != "dev" || path != "/" {
                return Ok(error(
                    404,
                    "SecretPathNotFound",
                    &format!(
                        "Folder with path '{path}' in environment with slug '{env}' not found"
                    ),
                ));
            }
            Ok(answer(
                200,
                vec![],
                json!({"secrets": *self.secrets.borrow(), "imports": *self.imports.borrow()}),
            ))
        }
    }

    #[async_trait::async_trait(?Send)]
    impl HttpClient for Fake<'_> {
        async fn send(&self, req: HttpRequest, timeout_ms: u64) -> Result<HttpResponse, HttpError> {
            if self.slow.get() {
                yield_now().await;
            }
            let r = self.answer(&req);
            self.sent.borrow_mut().push((req, timeout_ms));
            r
        }
    }

    fn settings() -> InfisicalSettings {
        InfisicalSettings {
            host: HOST.into(),
            client_id: CLIENT_ID.into(),
            client_secret: Zeroizing::new(CLIENT_SECRET.into()),
            project_id: PROJECT.into(),
            environment: "dev".into(),
            secret_path: "/".into(),
            cache_ttl_ms: MIN,
            max_stale_ms: 3_600_000,
        }
    }

    /// One isolate: the cache, the fake, a clock and the log.
    struct Isolate<'c> {
        cache: InfisicalCache,
        fake: Fake<'c>,
        clock: &'c FakeClock,
        logs: RefCell<Vec<String>>,
    }

    impl<'c> Isolate<'c> {
        fn new(clock: &'c FakeClock, settings: InfisicalSettings) -> Self {
            Self {
                cache: InfisicalCache::new(settings),
                fake: Fake::new(clock),
                clock,
                logs: RefCell::new(vec![]),
            }
        }

        fn current(&self) -> Served {
            let log = |l: &str| self.logs.borrow_mut().push(l.to_owned());
            block_on(self.cache.current(&self.fake, self.clock, &log))
        }
    }

    fn value(served: &Served, name: &str) -> Option<String> {
        Some(served.secrets.as_ref()?.get(name)?.to_string())
    }

    fn clock() -> FakeClock {
        FakeClock::at(1_800_000_000_000)
    }

    #[test]
    fn fresh_secrets_are_served_then_reused_for_the_ttl_without_a_request() {
        let clock = clock();
        let i = Isolate::new(&clock, settings());
        i.fake
            .set_secret("DATABASE_URL", "postgres://not-a-system-key");
        let s = i.current();
        assert_eq!(s.tier, Tier::Infisical);
        assert_eq!(value(&s, ELEVEN).as_deref(), Some(KEY_A));
        assert_eq!(value(&s, OPENAI).as_deref(), Some(KEY_B));
        // Only system keys are kept.
        assert_eq!(s.secrets.as_ref().unwrap().len(), 2);
        assert!(s.problem.is_none());
        assert_eq!(i.fake.counts(), (1, 1));

        let sent = i.fake.sent.borrow();
        let (login, list) = (&sent[0].0, &sent[1].0);
        assert_eq!(
            login.url,
            format!("{HOST}/api/v1/auth/universal-auth/login")
        );
        let body: Value = serde_json::from_slice(login.body.as_deref().unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET})
        );
        assert!(login
            .headers
            .contains(&("content-type".into(), "application/json".into())));
        assert_eq!(
            list.url,
            format!("{HOST}/api/v3/secrets/raw?workspaceId={PROJECT}&environment=dev&secretPath=%2F&include_imports=true")
        );
        let bearer = format!("Bearer {}", i.fake.last_token());
        assert!(list.headers.contains(&("authorization".into(), bearer)));
        assert_eq!(list.max_response_bytes, MAX_RESPONSE_BYTES);
        assert!(sent.iter().all(|(_, timeout)| *timeout == FETCH_TIMEOUT_MS));
        drop(sent);

        clock.advance(MIN - 1_000);
        let s = i.current();
        assert_eq!(
            (s.tier, value(&s, ELEVEN).as_deref()),
            (Tier::Infisical, Some(KEY_A))
        );
        assert_eq!(i.fake.counts(), (1, 1));
        assert!(i.logs.borrow().is_empty());
    }

    #[test]
    fn a_rotated_secret_is_picked_up_after_the_ttl_and_the_token_is_reused_until_it_expires() {
        let clock = clock();
        let i = Isolate::new(&clock, settings());
        i.fake.expires_in.set(600);
        i.current();
        i.fake.set_secret(ELEVEN, "sk_eleven_rotated_1234567890");
        clock.advance(30_000);
        assert_eq!(value(&i.current(), ELEVEN).as_deref(), Some(KEY_A));
        clock.advance(31_000);
        let s = i.current();
        assert_eq!(
            value(&s, ELEVEN).as_deref(),
            Some("sk_eleven_rotated_1234567890")
        );
        assert_eq!(s.tier, Tier::Infisical);
        // One login served both lists.
        assert_eq!(i.fake.counts(), (1, 2));
        // The token (600 s) is renewed a minute before it expires, not after.
        clock.advance(540_000 - 61_000 - 1);
        i.current();
        assert_eq!(i.fake.counts(), (1, 3));
        clock.advance(MIN);
        i.current();
        assert_eq!(i.fake.counts(), (2, 4));
    }

    #[test]
    fn an_expired_token_gets_one_new_login_and_then_fails() {
        let clock = clock();
        let i = Isolate::new(&clock, settings());
        i.current();
        clock.advance(MIN);
        i.fake.expire_tokens();
        let s = i.current();
        assert_eq!(
            (s.tier, value(&s, ELEVEN).as_deref()),
            (Tier::Infisical, Some(KEY_A))
        );
        assert_eq!(i.fake.counts(), (2, 3));

        clock.advance(MIN);
        i.fake.go_down(
            Down::Status(
                403,
                "TokenError",
                "Your token has expired. Please re-authenticate.".into(),
            ),
            true,
        );
        let s = i.current();
        assert!(s.secrets.is_none());
        assert_eq!(i.fake.counts(), (3, 5));
        assert_eq!(
            s.problem.as_deref(),
            Some("Infisical refused a new access token (403 Your token has expired. Please re-authenticate.)")
        );
    }

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
    fn a_wrong_client_secret_or_path_is_named_and_serves_nothing() {
        let clock = clock();
        let wrong = InfisicalSettings {
            client_secret: Zeroizing::new("ua_secret_wrong_000000000000".into()),
            ..settings()
        };
        let i = Isolate::new(&clock, wrong);
        let s = i.current();
        assert_eq!((s.tier, s.secrets.is_none()), (Tier::Env, true));
        assert_eq!(
            s.problem.as_deref(),
            Some("Infisical refused the machine identity's login (401 Invalid credentials)")
        );
        assert_eq!(i.fake.counts(), (1, 0));
        // Failed logins are not repeated within the TTL (Infisical locks the identity).
        clock.advance(MIN - 1);
        i.current();
        assert_eq!(i.fake.counts(), (1, 0));

        let i = Isolate::new(
            &clock,
            InfisicalSettings {
                secret_path: "/vault keys".into(),
                ..settings()
            },
        );
        let s = i.current();
        assert!(s.secrets.is_none());
        assert_eq!(
            s.problem.as_deref(),
            Some("Infisical has no such environment or secret path (404 Folder with path '/vault keys' in environment with slug 'dev' not found)")
        );
        assert!(i.fake.sent.borrow()[1]
            .0
            .url
            .contains("secretPath=%2Fvault+keys"));
    }

    #[test]
    fn hidden_empty_and_oversized_values_are_skipped_and_imports_rank_below_direct_secrets() {
        let clock = clock();
        let i = Isolate::new(&clock, settings());
        let hidden = |k: &str| {
            let mut s = secret(k, "<hidden-by-infisical>");
            s["secretValueHidden"] = json!(true);
            s
        };
        *i.fake.secrets.borrow_mut() = vec![
            secret("SYSTEM_KEY_A", "direct-a-value"),
            hidden("SYSTEM_KEY_HIDDEN"),
            secret("SYSTEM_KEY_EMPTY", ""),
            secret("SYSTEM_KEY_LONG", &"x".repeat(MAX_VALUE_CHARS + 1)),
            secret("SYSTEM_KEY_PADDED", "  padded-value\n"),
        ];
        *i.fake.imports.borrow_mut() = vec![
            json!({"secretPath": "/shared", "environment": "dev", "secrets": [
                secret("SYSTEM_KEY_A", "imported-a"), secret("SYSTEM_KEY_B", "first-import-b"),
                secret("SYSTEM_KEY_C", "first-import-c")]}),
            json!({"secretPath": "/more", "environment": "dev", "secrets": [
                secret("SYSTEM_KEY_C", "last-import-c"), secret("SYSTEM_KEY_HIDDEN", "visible-elsewhere"),
                hidden("SYSTEM_KEY_D")]}),
        ];
        let s = i.current();
        let got: Vec<(String, String)> = s
            .secrets
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        let want = [
            ("SYSTEM_KEY_A", "direct-a-value"),
            ("SYSTEM_KEY_B", "first-import-b"),
            ("SYSTEM_KEY_C", "last-import-c"),
            ("SYSTEM_KEY_PADDED", "padded-value"),
        ];
        assert_eq!(got, want.map(|(k, v)| (k.to_owned(), v.to_owned())));
    }

    #[test]
    fn problems_never_hold_the_client_secret_the_token_or_a_value() {
        let clock = clock();
        let i = Isolate::new(&clock, settings());
        i.current();
        let token = i.fake.last_token();
        clock.advance(MIN);
        let echo = format!(
            "failed for {CLIENT_SECRET} with token {token}\u{202e} {}",
            "and much more ".repeat(40)
        );
        i.fake
            .go_down(Down::Status(500, "InternalServerError", echo), true);
        let s = i.current();
        let problem = s.problem.unwrap();
        assert!(!problem.contains(CLIENT_SECRET) && !problem.contains(&token));
        assert!(!problem.contains('\u{202e}'));
        assert!(problem.contains("[redacted]"));
        assert!(
            problem.chars().count() < MAX_PROBLEM_CHARS + 60,
            "{problem}"
        );
        for line in i.logs.borrow().iter().chain([&problem]) {
            for secret in [CLIENT_SECRET, &token, KEY_A, KEY_B] {
                assert!(!line.contains(secret), "{line}");
            }
        }
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

    fn parse(
        pairs: &[(&str, &str)],
        env: Environment,
    ) -> (Option<InfisicalSettings>, Vec<ConfigError>) {
        read_vars(pairs, |v| InfisicalSettings::parse(v, env))
    }

    const REQUIRED: [(&str, &str); 4] = [
        ("INFISICAL_CLIENT_ID", CLIENT_ID),
        ("INFISICAL_CLIENT_SECRET", CLIENT_SECRET),
        ("INFISICAL_PROJECT_ID", PROJECT),
        ("INFISICAL_ENVIRONMENT", "prod"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = REQUIRED
            .iter()
            .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
            .copied()
            .collect();
        v.extend_from_slice(extra);
        v
    }

    #[test]
    fn settings_have_safe_defaults() {
        let (s, errors) = parse(&REQUIRED, Environment::Production);
        assert!(errors.is_empty(), "{errors:?}");
        let s = s.unwrap();
        assert_eq!(s.host, "https://app.infisical.com");
        assert_eq!(
            (s.client_id.as_str(), s.client_secret.as_str()),
            (CLIENT_ID, CLIENT_SECRET)
        );
        assert_eq!(
            (s.project_id.as_str(), s.environment.as_str()),
            (PROJECT, "prod")
        );
        assert_eq!(s.secret_path, "/");
        assert_eq!((s.cache_ttl_ms, s.max_stale_ms), (60_000, 3_600_000));

        let (s, errors) = parse(
            &with(&[
                ("INFISICAL_HOST", "http://127.0.0.1:8080/"),
                ("INFISICAL_ENVIRONMENT", "dev"),
                ("INFISICAL_SECRET_PATH", "/vault"),
                ("INFISICAL_CACHE_TTL_SECONDS", "5"),
                ("INFISICAL_MAX_STALE_SECONDS", "0"),
            ]),
            Environment::Development,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let s = s.unwrap();
        assert_eq!(
            (s.host.as_str(), s.secret_path.as_str()),
            ("http://127.0.0.1:8080", "/vault")
        );
        assert_eq!((s.cache_ttl_ms, s.max_stale_ms), (5_000, 0));
        let (s, errors) = parse(
            &with(&[("INFISICAL_ENVIRONMENT", "staging")]),
            Environment::Staging,
        );
        assert!(s.is_some() && errors.is_empty());
    }

    #[test]
    fn the_infisical_environment_must_be_the_deployments_own() {
        let (s, errors) = parse(&REQUIRED, Environment::Development);
        assert!(s.is_none());
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].var, "INFISICAL_ENVIRONMENT");
        assert_eq!(
            errors[0].problem,
            "is prod but ENVIRONMENT is development: a dev identity must not read prod secrets"
        );
        let (_, errors) = parse(
            &with(&[("INFISICAL_ENVIRONMENT", "dev")]),
            Environment::Production,
        );
        assert_eq!(
            errors[0].problem,
            "is dev but ENVIRONMENT is production: a prod identity must not read dev secrets"
        );
        let (_, errors) = parse(
            &with(&[("INFISICAL_ENVIRONMENT", "production")]),
            Environment::Production,
        );
        assert_eq!(
            errors[0].problem,
            "must be prod (the Infisical environment of ENVIRONMENT production)"
        );
    }

    #[test]
    fn every_bad_setting_is_named_without_its_value() {
        let (s, errors) = parse(&[], Environment::Production);
        assert!(s.is_none());
        let vars: Vec<_> = errors.iter().map(|e| e.var).collect();
        assert_eq!(
            vars,
            [
                "INFISICAL_CLIENT_ID",
                "INFISICAL_CLIENT_SECRET",
                "INFISICAL_PROJECT_ID",
                "INFISICAL_ENVIRONMENT"
            ]
        );
        let (s, errors) = parse(
            &with(&[
                ("INFISICAL_HOST", "http://infisical.internal.example"),
                ("INFISICAL_SECRET_PATH", "vault"),
                ("INFISICAL_CACHE_TTL_SECONDS", "0"),
                ("INFISICAL_MAX_STALE_SECONDS", "86401"),
            ]),
            Environment::Production,
        );
        assert!(s.is_none());
        let vars: Vec<_> = errors.iter().map(|e| e.var).collect();
        assert_eq!(
            vars,
            [
                "INFISICAL_HOST",
                "INFISICAL_SECRET_PATH",
                "INFISICAL_CACHE_TTL_SECONDS",
                "INFISICAL_MAX_STALE_SECONDS"
            ]
        );
        for e in &errors {
            let text = e.to_string();
            for value in [
                "infisical.internal",
                "vault",
                "86401",
                CLIENT_SECRET,
                CLIENT_ID,
            ] {
                assert!(!text.contains(value), "{text}");
            }
        }
        // Blank is unset.
        let (_, errors) = parse(
            &with(&[("INFISICAL_CLIENT_SECRET", "  ")]),
            Environment::Production,
        );
        assert_eq!(errors[0].var, "INFISICAL_CLIENT_SECRET");
    }
}
