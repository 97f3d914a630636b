//! The Worker glue (wasm32 only): entry points that build the core's seams from the
//! environment and hand over to [`crate::api::handle`]. No business logic lives here.

mod audit_queue;
mod audit_store;
mod credential_store;
mod db;
mod fetch;
mod limits;
mod runtime;
mod webcrypto;

use serde_json::Value;
use worker::{event, Context, Env, MessageBatch, MessageExt, ScheduleContext, ScheduledEvent};

use crate::api::{self, App};
use crate::audit::{drain, Disposition};
use crate::auth::JwksCache;
use crate::config::{Config, ConfigError};
use crate::domain::Timestamp;
use crate::ports::AuditStore;
use crate::probe::SystemJitter;
use crate::queues::QueueRole;

/// The configuration, parsed on the first request of each isolate and kept for its life.
fn config(env: &Env) -> Result<&'static Config, &'static [ConfigError]> {
    thread_local! {
        static CONFIG: std::cell::OnceCell<&'static Result<Config, Vec<ConfigError>>> =
            const { std::cell::OnceCell::new() };
    }
    let parsed = CONFIG.with(|cell| {
        *cell.get_or_init(|| {
            let parsed = Config::parse(|name| runtime::env_string(env, name));
            if let Err(errors) = &parsed {
                for e in errors {
                    worker::console_error!("configuration: {e}");
                }
            }
            // Leaked once per isolate on purpose: every request borrows it.
            Box::leak(Box::new(parsed))
        })
    });
    parsed.as_ref().map_err(Vec::as_slice)
}

/// The issuer's key set, cached for the isolate's life (see `auth::JwksCache`).
fn jwks() -> &'static JwksCache {
    thread_local! {
        static JWKS: &'static JwksCache = Box::leak(Box::new(JwksCache::new()));
    }
    JWKS.with(|j| *j)
}

#[event(fetch)]
async fn fetch(req: worker::Request, env: Env, _ctx: Context) -> worker::Result<worker::Response> {
    let started = runtime::now_ms();
    let method = req.method().to_string();
    let path = req.path();
    let request = runtime::read_request(req).await?;
    let db = db::Db::new(&env);
    let store = credential_store::D1Store::new(&db);
    let audit_log = audit_store::D1AuditStore::new(&db);
    let sink = audit_queue::OutboxAuditSink {
        queue: env.queue("AUDIT_QUEUE").ok(),
        db: &db,
        store: &audit_log,
    };
    let limiter = limits::BindingLimiter::new(&env);
    let log = |line: &str| worker::console_log!("{line}");
    let app = App {
        config: config(&env),
        store: &store,
        http: &fetch::FetchClient,
        clock: &runtime::WorkerClock,
        jitter: &SystemJitter,
        audit: &sink,
        audit_log: &audit_log,
        jwks: jwks(),
        signatures: &webcrypto::WebCryptoVerifier,
        limiter: &limiter,
        log: &log,
    };
    let response = api::handle(&app, &request).await;
    worker::console_log!(
        "{method} {path} {} {}ms {}",
        response.status,
        runtime::now_ms().saturating_sub(started),
        response.header("x-request-id").unwrap_or("-")
    );
    runtime::write_response(response)
}

/// Chaining rounds one cron run sweeps at most (three D1 queries each; with retention the
/// run stays within the free plan's 50 queries).
const CRON_CHAIN_ROUNDS: usize = 8;

#[event(scheduled)]
async fn scheduled(event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    let db = db::Db::new(&env);
    let store = audit_store::D1AuditStore::new(&db);
    // The sweeper: whatever a lost nudge left in the outbox is chained now.
    match drain(&store, CRON_CHAIN_ROUNDS).await {
        Ok(n) => worker::console_log!(
            "cron '{}': chained {n} pending audit event(s)",
            event.cron()
        ),
        Err(e) => worker::console_error!(
            "cron '{}': chaining the audit outbox failed: {e}",
            event.cron()
        ),
    }
    let Ok(config) = config(&env) else {
        worker::console_error!("scheduled retention skipped: the configuration has problems");
        return;
    };
    let days = config.audit_retention_days;
    let cutoff = Timestamp::from_millis(runtime::now_ms().saturating_sub(days * 86_400_000));
    match store.apply_retention(cutoff).await {
        Ok(n) => worker::console_log!(
            "cron '{}': audit retention removed {n} event(s) older than {days} days",
            event.cron()
        ),
        Err(e) => worker::console_error!("cron '{}': audit retention failed: {e}", event.cron()),
    }
}

/// One handler for every queue; the queue's name says which consumer it is.
#[event(queue)]
async fn queue(batch: MessageBatch<Value>, env: Env, _ctx: Context) -> worker::Result<()> {
    let name = batch.queue();
    let messages: Vec<_> = batch.raw_iter().collect();
    let bodies: Vec<Value> = messages
        .iter()
        .map(|m| runtime::message_body(&m.body()))
        .collect();
    let log = |line: &str| worker::console_log!("{line}");
    let db = db::Db::new(&env);
    let store = audit_store::D1AuditStore::new(&db);
    let dispositions = match QueueRole::of(&name) {
        Some(QueueRole::Audit) => crate::audit::consume(&store, &bodies, &log).await,
        Some(QueueRole::AuditDeadLetters) => {
            crate::audit::consume_dead_letters(&store, &bodies, &log).await
        }
        // No job consumer exists yet, and an unknown queue is nobody's: keep the messages
        // rather than drop them.
        Some(QueueRole::Jobs | QueueRole::JobsDeadLetters) | None => {
            worker::console_warn!(
                "queue {name}: no consumer yet, retrying {} message(s)",
                bodies.len()
            );
            vec![Disposition::Retry; bodies.len()]
        }
    };
    for (m, d) in messages.iter().zip(dispositions) {
        match d {
            Disposition::Ack => m.ack(),
            Disposition::Retry => m.retry(),
        }
    }
    // Returning an error would redeliver the whole batch: every message is settled above.
    Ok(())
}
