//! Infisical in memory, answering with the real shapes, and one isolate's cache in front
//! of it: what the cache's, the client's and the settings' tests share.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::task::Poll;

use futures::executor::block_on;
use serde_json::{json, Value};
use url::Url;
use zeroize::Zeroizing;

use super::{InfisicalCache, InfisicalSettings, Served};
use crate::domain::Clock;
use crate::http::{HttpClient, HttpError, HttpRequest, HttpResponse, Method};
use crate::testing::FakeClock;

pub(super) const HOST: &str = "https://infisical.test";
pub(super) const CLIENT_ID: &str = "9a1c2e4f-ua-client";
pub(super) const CLIENT_SECRET: &str = "ua_secret_5f0e7c9b1d3a2468ace0";
pub(super) const PROJECT: &str = "6d1f0a3e-77b2-4c1e-9f00-project";
pub(super) const KEY_A: &str = "sk_eleven_0a1b2c3d4e5f6a7b8c9d";
pub(super) const KEY_B: &str = "sk-proj-openai-9z8y7x6w5v4u3t2s";
pub(super) const ELEVEN: &str = "SYSTEM_KEY_ELEVENLABS";
pub(super) const OPENAI: &str = "SYSTEM_KEY_OPENAI";
pub(super) const MIN: u64 = 60_000;

/// How the fake fails, for every request or only for lists.
#[derive(Clone)]
pub(super) enum Down {
    Status(u16, &'static str, String),
    Network,
}

/// Infisical, in memory, answering with the real shapes (shared/reference/providers.md):
/// it checks the client id and secret, the bearer token it issued and the list's
/// parameters, like the server does.
pub(super) struct Fake<'c> {
    pub(super) clock: &'c FakeClock,
    pub(super) secrets: RefCell<Vec<Value>>,
    pub(super) imports: RefCell<Vec<Value>>,
    /// Issued tokens and when each expires.
    pub(super) tokens: RefCell<Vec<(String, u64)>>,
    pub(super) expires_in: Cell<u64>,
    pub(super) down: RefCell<Option<(Down, bool)>>,
    pub(super) retry_after: Cell<u64>,
    pub(super) logins: Cell<u32>,
    pub(super) lists: Cell<u32>,
    pub(super) sent: RefCell<Vec<(HttpRequest, u64)>>,
    /// Every answer waits for the other requests to run first.
    pub(super) slow: Cell<bool>,
}

pub(super) fn secret(key: &str, value: &str) -> Value {
    json!({"id": format!("id-{key}"), "_id": format!("id-{key}"), "workspace": PROJECT,
        "environment": "dev", "version": 1, "type": "shared", "secretKey": key,
        "secretValue": value, "secretComment": "", "secretValueHidden": false,
        "secretReminderNote": null, "tags": []})
}

pub(super) fn answer(status: u16, headers: Vec<(String, String)>, body: Value) -> HttpResponse {
    HttpResponse {
        status,
        headers,
        body: body.to_string().into_bytes(),
    }
}

pub(super) fn error(status: u16, error: &str, message: &str) -> HttpResponse {
    answer(
        status,
        vec![],
        json!({"reqId": "req-7Gx2", "statusCode": status, "message": message, "error": error}),
    )
}

pub(super) async fn yield_now() {
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
    pub(super) fn new(clock: &'c FakeClock) -> Self {
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

    pub(super) fn counts(&self) -> (u32, u32) {
        (self.logins.get(), self.lists.get())
    }

    pub(super) fn set_secret(&self, key: &str, value: &str) {
        let mut secrets = self.secrets.borrow_mut();
        secrets.retain(|s| s["secretKey"] != key);
        secrets.push(secret(key, value));
    }

    pub(super) fn go_down(&self, how: Down, lists_only: bool) {
        *self.down.borrow_mut() = Some((how, lists_only));
    }

    pub(super) fn recover(&self) {
        *self.down.borrow_mut() = None;
    }

    pub(super) fn expire_tokens(&self) {
        self.tokens.borrow_mut().clear();
    }

    pub(super) fn last_token(&self) -> String {
        self.tokens.borrow().last().unwrap().0.clone()
    }

    pub(super) fn answer(&self, req: &HttpRequest) -> Result<HttpResponse, HttpError> {
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
                &format!("Folder with path '{path}' in environment with slug '{env}' not found"),
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

pub(super) fn settings() -> InfisicalSettings {
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
pub(super) struct Isolate<'c> {
    pub(super) cache: InfisicalCache,
    pub(super) fake: Fake<'c>,
    pub(super) clock: &'c FakeClock,
    pub(super) logs: RefCell<Vec<String>>,
}

impl<'c> Isolate<'c> {
    pub(super) fn new(clock: &'c FakeClock, settings: InfisicalSettings) -> Self {
        Self {
            cache: InfisicalCache::new(settings),
            fake: Fake::new(clock),
            clock,
            logs: RefCell::new(vec![]),
        }
    }

    pub(super) fn current(&self) -> Served {
        let log = |l: &str| self.logs.borrow_mut().push(l.to_owned());
        block_on(self.cache.current(&self.fake, self.clock, &log))
    }
}

pub(super) fn value(served: &Served, name: &str) -> Option<String> {
    Some(served.secrets.as_ref()?.get(name)?.to_string())
}

pub(super) fn clock() -> FakeClock {
    FakeClock::at(1_800_000_000_000)
}
