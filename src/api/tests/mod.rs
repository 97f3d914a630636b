//! The API end to end over in-memory seams: statuses, bodies and what is stored. Each
//! file is one feature; the world and its named request helpers are here.

use futures::executor::block_on;
use serde_json::{json, Value};

use super::*;
use crate::auth::jwt::sign_hs256;
use crate::domain::Credential;
use crate::testing::{
    respond, CountingLimiter, FakeClock, FakeHttp, FixedJitter, MemoryAudit, MemoryStore, Scripted,
};

const NOW_MS: u64 = 1_800_000_000_000;
const SECRET: &str = "0123456789abcdef0123456789abcdef";
const MASTER: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY: &str = "sk_3f9a0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d9f2a";
const SUBSCRIPTION: &str = r#"{"character_count":1200,"character_limit":10000,"next_character_count_reset_unix":1796083200}"#;
const MODELS: &str = r#"[{"model_id":"eleven_multilingual_v2","name":"Eleven Multilingual v2","can_do_text_to_speech":true}]"#;
const INVALID: &str = r#"{"detail":{"status":"invalid_api_key","message":"Invalid API key"}}"#;

const AUDIENCE: &str = "https://app.example";
static JITTER: FixedJitter = FixedJitter(0.5);

fn config(master: bool) -> Config {
    config_with(master, &[])
}

fn config_with(master: bool, extra: &[(&str, &str)]) -> Config {
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::parse(|k| match k {
        k if extra.iter().any(|(n, _)| n == k) => {
            extra.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        }
        "AUTH_JWT_SECRET" => Some(SECRET.into()),
        "AUTH_AUDIENCE" => Some(AUDIENCE.into()),
        "MASTER_KEY" if master => Some(MASTER.into()),
        "CORS_ALLOWED_ORIGINS" => Some("https://app.example".into()),
        _ => None,
    })
    .unwrap()
}

/// Answers `request` and carries out what it left for after its answer, as the Worker
/// does under `waitUntil`.
async fn handle_all(app: &App<'_>, request: &Request) -> Response {
    let handled = handle(app, request).await;
    finish(app, handled.uses, handled.metering).await;
    handled.response
}

fn token(sub: &str) -> String {
    sign_hs256(
        &json!({"alg":"HS256"}),
        &json!({"sub":sub,"exp":NOW_MS / 1000 + 600,"aud":AUDIENCE}),
        SECRET.as_bytes(),
    )
}

struct World {
    jwks: Option<crate::auth::JwksCache>,
    config: Config,
    store: MemoryStore,
    audit: MemoryAudit,
    clock: FakeClock,
    limiter: CountingLimiter,
    /// The caller's address, as the edge would report it.
    address: std::cell::RefCell<String>,
    /// Requests the fake providers received, over every call.
    provider_calls: std::cell::Cell<usize>,
    /// Every log line written.
    logs: std::cell::RefCell<Vec<String>>,
    /// What was sent to the jobs queue.
    jobs: crate::testing::MemoryJobs,
    /// The metered usage.
    usage: crate::testing::MemoryUsage,
    /// Budgets' counters.
    budgets: crate::testing::MemoryBudgets,
}

impl World {
    fn new() -> Self {
        let audit = MemoryAudit::default();
        let budgets = crate::testing::MemoryBudgets {
            outbox: audit.outbox.clone(),
            ..Default::default()
        };
        Self {
            jwks: None,
            config: config(true),
            store: MemoryStore {
                outbox: audit.outbox.clone(),
                anchors: [audit.heads.clone(), audit.checkpoints.clone()],
                ..Default::default()
            },
            audit,
            clock: FakeClock::at(NOW_MS),
            limiter: CountingLimiter::new(1000),
            address: std::cell::RefCell::new("203.0.113.7".into()),
            provider_calls: std::cell::Cell::new(0),
            logs: std::cell::RefCell::default(),
            jobs: crate::testing::MemoryJobs::default(),
            usage: crate::testing::MemoryUsage::default(),
            budgets,
        }
    }

    fn with_config(vars: &[(&str, &str)]) -> Self {
        Self {
            config: config_with(true, vars),
            ..Self::new()
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        user: Option<&str>,
        body: Option<Value>,
        script: Vec<Scripted>,
    ) -> (u16, Value, Response) {
        self.call_with_token(method, path, user.map(token), body, script)
    }

    /// `call` with any bearer token (or none).
    fn call_with_token(
        &self,
        method: &str,
        path: &str,
        bearer: Option<String>,
        body: Option<Value>,
        script: Vec<Scripted>,
    ) -> (u16, Value, Response) {
        let http = FakeHttp::new(&self.clock, script);
        self.seal_with_config();
        let log = |line: &str| {
            assert!(!line.contains(KEY), "key in log: {line}");
            self.logs.borrow_mut().push(line.to_owned());
        };
        let app = self.app(&http, &log);
        let mut headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            (
                "cf-connecting-ip".to_string(),
                self.address.borrow().clone(),
            ),
        ];
        if let Some(t) = bearer {
            headers.push(("authorization".into(), format!("Bearer {t}")));
        }
        let request = Request::new(
            method,
            Url::parse(&format!("https://vault.test{path}")).unwrap(),
            headers,
            Box::new(crate::testing::Bytes(
                body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
            )),
        );
        let response = block_on(handle_all(&app, &request));
        self.provider_calls
            .set(self.provider_calls.get() + http.calls());
        let text = String::from_utf8(response.body.clone()).unwrap();
        // Only resolve hands a key out (to services).
        assert!(
            path == "/v1/resolve" || !text.contains(KEY),
            "key in response: {text}"
        );
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (response.status, value, response)
    }

    /// The app over this world's seams, with `http` as the providers and `log` for lines.
    fn app<'a>(&'a self, http: &'a FakeHttp<'a>, log: &'a dyn Fn(&str)) -> App<'a> {
        App {
            config: Ok(&self.config),
            store: &self.store,
            http,
            upstream: http,
            jobs: &self.jobs,
            job_store: &self.store,
            imports: &self.store,
            usage: &self.usage,
            budgets: &self.budgets,
            assets: &crate::testing::NoAssets,
            clock: &self.clock,
            jitter: &JITTER,
            audit: &self.audit,
            audit_log: &self.audit,
            jwks: self.jwks.as_ref(),
            signatures: &crate::testing::RustCryptoVerifier,
            limiter: &self.limiter,
            log,
            infisical: None,
        }
    }

    /// Runs the job messages queued so far through the consumer, with `script` as the
    /// providers' answers, then chains the events they wrote: the outcomes and how many
    /// provider calls were made.
    fn run_queued_jobs(&self, script: Vec<Scripted>) -> (Vec<crate::jobs::JobOutcome>, usize) {
        let http = FakeHttp::new(&self.clock, script);
        let checks = crate::checks::LiveChecks {
            config: &self.config,
            http: &http,
            clock: &self.clock,
            jitter: &JITTER,
            limiter: &self.limiter,
        };
        let bodies: Vec<Value> = self
            .jobs
            .sent
            .borrow_mut()
            .drain(..)
            .map(|j| Value::String(serde_json::to_string(&j).unwrap()))
            .collect();
        let workers = crate::jobs::Workers {
            revalidation: crate::revalidation::Revalidation {
                config: &self.config,
                store: &self.store,
                checks,
                log: &|_: &str| {},
            },
            rewrap: crate::rewrap::Rewrap {
                config: &self.config,
                store: &self.store,
                clock: &self.clock,
            },
            notifier: None,
            progress: &self.store,
            queue: &self.jobs,
            audit: &self.audit,
        };
        let ran = block_on(crate::jobs::run(&workers, &bodies, &|_: &str| {}));
        self.chain(5);
        (ran.outcomes, http.calls())
    }

    /// The in-memory chainer seals with this world's master keys (as the Worker's does with
    /// its configuration's), at this world's time.
    fn seal_with_config(&self) {
        self.audit
            .use_master(self.config.master_keys.as_ref().ok(), self.clock.now());
        self.audit.clock.set(self.clock.now().as_millis());
    }

    /// Chains what waits in the outbox, `rounds` rounds at most, as the consumer would.
    fn chain(&self, rounds: usize) {
        self.seal_with_config();
        let sealer = self.audit.sealer.borrow();
        let sealer = sealer.as_ref().expect("the world has a master key");
        block_on(crate::audit::drain(&self.audit, sealer, rounds)).unwrap();
    }

    fn add(&self, user: &str) -> (u16, Value) {
        let (s, v, _) = self.call(
            "POST",
            "/v1/credentials",
            Some(user),
            Some(json!({"provider":"elevenlabs","api_key":KEY,"label":"Personal"})),
            vec![respond(200, SUBSCRIPTION), respond(200, MODELS)],
        );
        (s, v)
    }
}

/// A backend service's token with the `resolve` scope, and an operator's with `admin`.
const RESOLVER: &str = "svc-resolve-token-0123456789";
const ADMIN: &str = "svc-admin-token-0123456789";

/// `SERVICE_TOKENS` holding both, by their SHA-256.
fn service_tokens() -> String {
    let sha = |t: &str| -> String {
        use sha2::{Digest, Sha256};
        Sha256::digest(t.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    format!(
        r#"[{{"name":"tts-service","sha256":"{}","scopes":["resolve"]}},{{"name":"ops","sha256":"{}","scopes":["admin"]}}]"#,
        sha(RESOLVER),
        sha(ADMIN)
    )
}

impl World {
    /// A world where the services holding [`RESOLVER`] and [`ADMIN`] are known, with
    /// `extra` variables.
    fn with_services(extra: &[(&str, &str)]) -> Self {
        let tokens = service_tokens();
        let mut vars = vec![("SERVICE_TOKENS", tokens.as_str())];
        vars.extend_from_slice(extra);
        Self::with_config(&vars)
    }

    /// A call with the operator's token and no body.
    fn admin(&self, method: &str, path: &str) -> (u16, Value) {
        self.admin_with(method, path, None, vec![])
    }

    /// A call with the operator's token, `body` and `script` as the providers' answers.
    fn admin_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        script: Vec<Scripted>,
    ) -> (u16, Value) {
        let (s, v, _) = self.call_with_token(method, path, Some(ADMIN.into()), body, script);
        (s, v)
    }
}

/// A second valid key, for rotations.
const KEY2: &str = "sk_1111222233334444555566667777888899990000aaaabbbb";

/// What the fake ElevenLabs answers to a good key: the subscription, then the models.
fn valid() -> Vec<Scripted> {
    vec![respond(200, SUBSCRIPTION), respond(200, MODELS)]
}

impl World {
    /// Adds `key` for `user` as an ElevenLabs credential labelled Personal.
    fn add_key(&self, user: &str, key: &str, script: Vec<Scripted>) -> (u16, Value, Response) {
        self.call(
            "POST",
            "/v1/credentials",
            Some(user),
            Some(json!({"provider":"elevenlabs","api_key":key,"label":"Personal"})),
            script,
        )
    }

    /// `u_a` adds the test key; its credential id.
    fn added(&self) -> String {
        let (s, body) = self.add("u_a");
        assert_eq!(s, 201, "{body}");
        body["credential"]["id"].as_str().unwrap().to_owned()
    }

    /// `u_a` patches credential `id`.
    fn patch(&self, id: &str, body: Value, script: Vec<Scripted>) -> (u16, Value) {
        let (s, b, _) = self.call(
            "PATCH",
            &format!("/v1/credentials/{id}"),
            Some("u_a"),
            Some(body),
            script,
        );
        (s, b)
    }

    /// `u_a` deletes credential `id`; the status.
    fn delete(&self, id: &str) -> u16 {
        let path = format!("/v1/credentials/{id}");
        self.call("DELETE", &path, Some("u_a"), None, vec![]).0
    }

    /// Lands `change` on the stored rows in the window between the next write's read and
    /// the write itself, as a concurrent request would.
    fn race(&self, change: impl FnOnce(&mut Vec<Credential>) + 'static) {
        *self.store.before_write.borrow_mut() = Some(Box::new(change));
    }

    /// The first stored row, as the store holds it.
    fn stored(&self) -> Credential {
        self.store.rows.borrow()[0].clone()
    }

    /// `user`'s audit trail, oldest first: (action, outcome, reason).
    fn actions(&self, user: &str) -> Vec<(String, String, Option<String>)> {
        actions(self, user)
    }
}

/// A verification answer without the members that say how its ends were sealed (`sealed`,
/// `head`, `broken_reason`): what it said before they were added.
fn verdict(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        for added in ["sealed", "head", "broken_reason"] {
            o.remove(added);
        }
    }
    v
}

fn actions(w: &World, user: &str) -> Vec<(String, String, Option<String>)> {
    let (_, body, _) = w.call("GET", "/v1/audit?limit=200", Some(user), None, vec![]);
    let mut events: Vec<_> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
                e["reason"].as_str().map(str::to_owned),
            )
        })
        .collect();
    events.reverse();
    events
}

mod anchors;
mod audit;
mod credentials;
mod hardening;
mod import;
mod lifecycle;
mod metered;
mod realtime;
mod requests;
mod rotation;
mod sweep;
mod usage;
