//! The application, built in one place from the environment for a request, a cron run and
//! a queue batch alike: the isolate's configuration, the D1 repositories, the queues, the
//! limiter, the clock and the log. A request sees it as an [`App`], the cron and the queue
//! consumers as a [`Background`].

use worker::wasm_bindgen::JsValue;
use worker::web_sys::console;
use worker::Env;

use super::assets::AssetsBinding;
use super::d1::audit::D1AuditStore;
use super::d1::budgets::D1Budgets;
use super::d1::credentials::D1Credentials;
use super::d1::imports::D1Imports;
use super::d1::jobs::D1Jobs;
use super::d1::notices::D1Notices;
use super::d1::usage::D1Usage;
use super::d1::Db;
use super::isolate::{isolate, Isolate};
use super::limits::BindingLimiter;
use super::queues::audit::OutboxAuditSink;
use super::queues::jobs::QueueJobs;
use super::runtime::{env_string, WorkerClock};
use super::{fetch, webcrypto};
use crate::api::App;
use crate::jobs::{Background, Level};
use crate::probe::SystemJitter;

/// The platform behind the core's seams, for one invocation.
pub(super) struct Platform<'a> {
    isolate: &'static Isolate,
    credentials: D1Credentials<'a>,
    imports: D1Imports<'a>,
    progress: D1Jobs<'a>,
    notices: D1Notices<'a>,
    usage: D1Usage<'a>,
    budgets: D1Budgets<'a>,
    /// The audit sink, holding the audit log it chains into.
    audit: OutboxAuditSink<'a>,
    jobs: QueueJobs,
    limiter: BindingLimiter,
    assets: AssetsBinding<'a>,
    upstream: fetch::FetchUpstream,
}

impl<'a> Platform<'a> {
    pub(super) fn new(env: &'a Env, db: &'a Db) -> Self {
        let isolate = isolate(env);
        Self {
            isolate,
            credentials: D1Credentials::new(db),
            imports: D1Imports::new(db),
            progress: D1Jobs::new(db),
            notices: D1Notices::new(db),
            usage: D1Usage::new(db),
            budgets: D1Budgets::new(db),
            audit: OutboxAuditSink {
                queue: env.queue("AUDIT_QUEUE").ok(),
                db,
                store: D1AuditStore::new(db).notifying(webhooks_on(env)),
                keys: isolate.chain_keys(),
            },
            jobs: QueueJobs::new(env),
            limiter: BindingLimiter::new(env),
            assets: AssetsBinding(env),
            upstream: fetch::FetchUpstream::default(),
        }
    }

    /// For a request: the caller's signal, which tells a watched answer the caller left.
    pub(super) fn for_caller(mut self, signal: Option<worker::web_sys::AbortSignal>) -> Self {
        self.upstream.caller = signal;
        self
    }

    /// What a request may use.
    pub(super) fn app(&self) -> App<'_> {
        App {
            config: self.isolate.config(),
            store: &self.credentials,
            http: &fetch::FetchClient,
            upstream: &self.upstream,
            jobs: &self.jobs,
            job_store: &self.progress,
            imports: &self.imports,
            usage: &self.usage,
            budgets: &self.budgets,
            assets: &self.assets,
            clock: &WorkerClock,
            jitter: &SystemJitter,
            audit: &self.audit,
            audit_log: &self.audit.store,
            jwks: self.isolate.jwks.as_ref(),
            signatures: &webcrypto::WebCryptoVerifier,
            limiter: &self.limiter,
            log: &log,
            infisical: self.isolate.infisical.as_ref(),
        }
    }

    /// What the cron and the queue consumers may use.
    pub(super) fn background(&self) -> Background<'_> {
        Background {
            config: self.isolate.config(),
            chain_keys: self.isolate.chain_keys(),
            credentials: &self.credentials,
            progress: &self.progress,
            queue: &self.jobs,
            audit: &self.audit.store,
            sink: &self.audit,
            notices: &self.notices,
            http: &fetch::FetchClient,
            clock: &WorkerClock,
            jitter: &SystemJitter,
            limiter: &self.limiter,
            infisical: self.isolate.infisical.as_ref(),
            log: &log_at,
        }
    }
}

/// Whether chaining writes key-health notices: decided by the variable itself, so an
/// isolate whose configuration has an unrelated problem still writes them (a notice not
/// written with its event's commit is never written).
fn webhooks_on(env: &Env) -> bool {
    env_string(env, "NOTIFY_WEBHOOK_URL").is_some_and(|u| !u.trim().is_empty())
}

/// An operational log line. The core writes the request's one structured line here.
fn log(line: &str) {
    console::log_1(&JsValue::from_str(line));
}

/// A background log line, at its level (as `console_log!` and its siblings write it).
pub(super) fn log_at(level: Level, line: &str) {
    let line = JsValue::from_str(line);
    match level {
        Level::Info => console::log_1(&line),
        Level::Warn => console::warn_1(&line),
        Level::Error => console::error_1(&line),
    }
}
