//! The Worker glue (wasm32 only): entry points that build the core's seams from the
//! environment and hand over to [`crate::api::handle`]. No business logic lives here.

mod assets;
mod audit_queue;
mod body;
mod d1;
mod fetch;
mod jobs_queue;
mod limits;
mod queue_send;
mod runtime;
mod webcrypto;

use serde_json::Value;
use worker::{event, Context, Env, MessageBatch, MessageExt, ScheduleContext, ScheduledEvent};

use crate::api::{self, App};
use crate::audit::AuditStore;
use crate::audit::{drain, settle, Disposition, Sealer};
use crate::auth::JwksCache;
use crate::config::Config;
use crate::crypto::MasterKeys;
use crate::domain::ConfigError;
use crate::domain::Timestamp;
use crate::probe::SystemJitter;
use crate::queues::QueueRole;
use crate::system_keys::InfisicalCache;

/// What an isolate parses once and keeps for its life: the configuration and, when
/// it names an issuer's JWKS, the cache of that key set.
struct Isolate {
    config: Result<Config, Vec<ConfigError>>,
    jwks: Option<JwksCache>,
    infisical: Option<InfisicalCache>,
    /// The master keys when the configuration has other problems: the audit chainer
    /// still seals with them, so events keep being chained.
    keys_alone: Option<MasterKeys>,
}

impl Isolate {
    fn config(&self) -> Result<&Config, &[ConfigError]> {
        self.config.as_ref().map_err(Vec::as_slice)
    }

    /// The master keys the audit chain is sealed with, if any are usable.
    fn chain_keys(&self) -> Option<&MasterKeys> {
        match &self.config {
            Ok(c) => c.master_keys.as_ref().ok(),
            Err(_) => self.keys_alone.as_ref(),
        }
    }

    /// A sealer for the audit chain's anchors, writing now; none without a master key
    /// (then nothing is chained: an unsealed head would later read as tampered).
    fn sealer(&self) -> Option<Sealer> {
        self.chain_keys()
            .map(|k| Sealer::new(k, Timestamp::from_millis(runtime::now_ms())))
    }
}

fn isolate(env: &Env) -> &'static Isolate {
    thread_local! {
        static ISOLATE: std::cell::OnceCell<&'static Isolate> = const { std::cell::OnceCell::new() };
    }
    ISOLATE.with(|cell| {
        *cell.get_or_init(|| {
            let mut config = Config::parse(|name| runtime::env_string(env, name));
            if let Err(errors) = &config {
                for e in errors {
                    worker::console_error!("configuration: {e}");
                }
            }
            let jwks = config
                .as_ref()
                .ok()
                .and_then(|c| JwksCache::for_settings(&c.jwt));
            let infisical = config
                .as_mut()
                .ok()
                .and_then(|c| c.infisical.take())
                .map(InfisicalCache::new);
            let keys_alone = config.is_err().then(|| {
                let var = |name| runtime::env_string(env, name);
                MasterKeys::from_config(
                    var("MASTER_KEYS").as_deref(),
                    var("MASTER_KEY_ACTIVE").as_deref(),
                    var("MASTER_KEY").as_deref(),
                )
                .ok()
            });
            // Leaked once per isolate on purpose: every request borrows it.
            Box::leak(Box::new(Isolate {
                config,
                jwks,
                infisical,
                keys_alone: keys_alone.flatten(),
            }))
        })
    })
}

#[event(fetch)]
async fn fetch(req: worker::Request, env: Env, ctx: Context) -> worker::Result<worker::Response> {
    // The whole request runs under `waitUntil` and hands its answer back here: when the
    // caller hangs up, the runtime cancels this function but lets the task finish, so a
    // call that already reached a provider still records its use. What the request left
    // for after its answer (its audit I/O) runs there too, off the answer's path.
    let (answer, answered) = futures::channel::oneshot::channel();
    ctx.wait_until(async move {
        let request = match runtime::read_request(&req) {
            Ok(r) => r,
            Err(e) => {
                let _ = answer.send(Err(e));
                return;
            }
        };
        let isolate = isolate(&env);
        let db = d1::Db::new(&env);
        let store = d1::credentials::D1Credentials::new(&db);
        let job_store = d1::jobs::D1Jobs::new(&db);
        let imports = d1::imports::D1Imports::new(&db);
        let audit_log = d1::audit::D1AuditStore::new(&db).notifying(webhooks_on(&env));
        let sink = audit_queue::OutboxAuditSink {
            queue: env.queue("AUDIT_QUEUE").ok(),
            db: &db,
            store: &audit_log,
            keys: isolate.chain_keys(),
        };
        let limiter = limits::BindingLimiter::new(&env);
        let jobs = jobs_queue::QueueJobs::new(&env);
        let log = |line: &str| worker::console_log!("{line}");
        let app = App {
            config: isolate.config(),
            store: &store,
            http: &fetch::FetchClient,
            upstream: &fetch::FetchUpstream,
            jobs: &jobs,
            job_store: &job_store,
            imports: &imports,
            assets: &assets::AssetsBinding(&env),
            clock: &runtime::WorkerClock,
            jitter: &SystemJitter,
            audit: &sink,
            audit_log: &audit_log,
            jwks: isolate.jwks.as_ref(),
            signatures: &webcrypto::WebCryptoVerifier,
            limiter: &limiter,
            log: &log,
            infisical: isolate.infisical.as_ref(),
        };
        // The core writes the request's one structured log line.
        let handled = api::handle(&app, &request).await;
        // A caller who hung up gets nothing; the rest still runs.
        let _ = answer.send(runtime::write_response(handled.response));
        api::finish(&app, handled.after).await;
        wake_deliverer(&jobs, &audit_log).await;
    });
    answered
        .await
        .unwrap_or_else(|_| Err(worker::Error::RustError("the request was dropped".into())))
}

/// Whether chaining writes key-health notices: decided by the variable itself, so an
/// isolate whose configuration has an unrelated problem still writes them (a notice not
/// written with its event's commit is never written).
fn webhooks_on(env: &Env) -> bool {
    runtime::env_string(env, "NOTIFY_WEBHOOK_URL").is_some_and(|u| !u.trim().is_empty())
}

/// After a chaining that wrote key-health notices, the deliverer is woken on JOBS_QUEUE
/// (the hourly cron wakes it anyway, for a wake-up that was lost).
async fn wake_deliverer(jobs: &jobs_queue::QueueJobs, store: &d1::audit::D1AuditStore<'_>) {
    if store.notices_written.get() == 0 {
        return;
    }
    if let Err(e) = crate::jobs::JobQueue::send(jobs, &[crate::jobs::Job::Notify]).await {
        worker::console_error!("webhooks: the deliverer could not be woken ({e}); the cron will");
    }
}

/// Chaining rounds one cron run sweeps at most (three D1 queries each; with retention, the
/// anchors' pass and the revalidation claim the run stays within the free plan's 50
/// queries).
const CRON_CHAIN_ROUNDS: usize = 7;

/// Audit anchors one cron run seals or re-seals at most (two D1 queries).
const CRON_ANCHORS: u32 = 500;

#[event(scheduled)]
async fn scheduled(event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    let db = d1::Db::new(&env);
    let store = d1::audit::D1AuditStore::new(&db).notifying(webhooks_on(&env));
    let jobs = jobs_queue::QueueJobs::new(&env);
    let isolate = isolate(&env);
    let sealer = isolate.sealer();
    // The sweeper: whatever a lost nudge left in the outbox is chained now (not without a
    // master key to seal the heads: the events wait).
    match &sealer {
        Some(sealer) => match drain(&store, sealer, CRON_CHAIN_ROUNDS).await {
            Ok(n) => worker::console_log!(
                "cron '{}': chained {n} pending audit event(s)",
                event.cron()
            ),
            Err(e) => worker::console_error!(
                "cron '{}': chaining the audit outbox failed: {e}",
                event.cron()
            ),
        },
        None => worker::console_error!(
            "cron '{}': no usable master key; audit events wait in the outbox",
            event.cron()
        ),
    }
    // The anchors' pass: legacy anchors sealed, anchors under an old version re-sealed.
    if let Some(sealer) = &sealer {
        if let Err(e) = settle(&store, sealer, CRON_ANCHORS, true).await {
            worker::console_error!("cron: sealing the audit anchors failed: {e}");
        }
    }
    let Ok(config) = isolate.config() else {
        worker::console_error!("scheduled retention skipped: the configuration has problems");
        return;
    };
    // Notices whose wake-up was lost (or that wait for a retry) are delivered.
    if config.webhooks.is_some() {
        if let Err(e) = crate::jobs::JobQueue::send(&jobs, &[crate::jobs::Job::Notify]).await {
            worker::console_error!(
                "cron '{}': waking the webhook deliverer failed: {e}",
                event.cron()
            );
        }
    }
    // Jobs whose message was lost (a restart mid-rotation) carry on.
    let now = Timestamp::from_millis(runtime::now_ms());
    let credentials = d1::credentials::D1Credentials::new(&db);
    let job_store = d1::jobs::D1Jobs::new(&db);
    let stalled_before = Timestamp::from_millis(now.as_millis().saturating_sub(300_000));
    match crate::jobs::JobStore::stalled_jobs(&job_store, stalled_before, 5).await {
        Ok(stalled) => {
            for job_id in stalled {
                let job = [crate::jobs::Job::Rewrap { job_id }];
                if let Err(e) = crate::jobs::JobQueue::send(&jobs, &job).await {
                    worker::console_error!("cron: resuming a stalled job failed: {e}");
                }
            }
        }
        Err(e) => worker::console_error!("cron: looking for stalled jobs failed: {e}"),
    }
    // The revalidation sweep: one claim, one queue call per hundred credentials due
    // (none without a master key: nothing could be opened).
    if config.master_keys.is_err() {
        worker::console_error!(
            "cron '{}': no usable master key; no revalidation sweep",
            event.cron()
        );
    } else {
        match crate::jobs::sweep(&credentials, &jobs, now, config.revalidate_after_hours).await {
            Ok(n) => worker::console_log!(
                "cron '{}': queued {n} credential(s) for revalidation",
                event.cron()
            ),
            Err(e) => {
                worker::console_error!("cron '{}': revalidation sweep failed: {e}", event.cron())
            }
        }
    }
    let days = config.audit_retention_days;
    let cutoff = Timestamp::from_millis(runtime::now_ms().saturating_sub(days * 86_400_000));
    // Retention moves checkpoints, which are sealed: not without a master key.
    let Some(sealer) = &sealer else {
        return;
    };
    match store.apply_retention(cutoff, sealer).await {
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
    let db = d1::Db::new(&env);
    let store = d1::audit::D1AuditStore::new(&db).notifying(webhooks_on(&env));
    let jobs = jobs_queue::QueueJobs::new(&env);
    if QueueRole::of(&name) == Some(QueueRole::Jobs) {
        return run_jobs(&env, &db, &store, &jobs, &messages, &bodies).await;
    }
    let mut more_waiting = false;
    let keys = isolate(&env).chain_keys();
    let sealer = isolate(&env).sealer();
    let dispositions = match QueueRole::of(&name) {
        Some(QueueRole::Audit) => {
            let consumed = crate::audit::consume(&store, sealer.as_ref(), &bodies, &log).await;
            more_waiting = consumed.more_waiting;
            consumed.dispositions
        }
        Some(QueueRole::AuditDeadLetters) => {
            crate::audit::consume_dead_letters(&store, sealer.as_ref(), &bodies, &log).await
        }
        // A job that kept failing: its claim expires and a later sweep queues it again.
        Some(QueueRole::JobsDeadLetters) => {
            worker::console_warn!(
                "queue {name}: dropping {} job(s) that kept failing (a later sweep retries them)",
                bodies.len()
            );
            vec![Disposition::Ack; bodies.len()]
        }
        // An unknown queue is nobody's: keep the messages rather than drop them.
        Some(QueueRole::Jobs) | None => {
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
    if more_waiting {
        // A backlog larger than one invocation's rounds: another pass, now, not at the cron
        // (the sink chains a round at once if the queue cannot take the nudge).
        let sink = audit_queue::OutboxAuditSink {
            queue: env.queue("AUDIT_QUEUE").ok(),
            db: &db,
            store: &store,
            keys,
        };
        crate::audit::AuditSink::nudge(&sink, "backlog").await;
    }
    wake_deliverer(&jobs, &store).await;
    // Returning an error would redeliver the whole batch: every message is settled above.
    Ok(())
}

/// The jobs consumer: the sweep's checks, each message acknowledged or retried with the
/// delay its job asked for; the audit chainer runs once if any status changed.
async fn run_jobs(
    env: &Env,
    db: &d1::Db,
    audit: &d1::audit::D1AuditStore<'_>,
    jobs: &jobs_queue::QueueJobs,
    messages: &[worker::RawMessage],
    bodies: &[Value],
) -> worker::Result<()> {
    let isolate = isolate(env);
    let Ok(config) = isolate.config() else {
        worker::console_error!("jobs: the configuration has problems; retrying in 5 minutes");
        for m in messages {
            m.retry_with_options(
                &worker::QueueRetryOptionsBuilder::new()
                    .with_delay_seconds(300)
                    .build(),
            );
        }
        return Ok(());
    };
    let log = |line: &str| worker::console_log!("{line}");
    let store = d1::credentials::D1Credentials::new(db);
    let job_store = d1::jobs::D1Jobs::new(db);
    let notices = d1::notices::D1Notices::new(db);
    let limiter = limits::BindingLimiter::new(env);
    let vault = crate::vault::Vault {
        config,
        store: &store,
        http: &fetch::FetchClient,
        clock: &runtime::WorkerClock,
        jitter: &SystemJitter,
        limiter: &limiter,
        log: &log,
        infisical: isolate.infisical.as_ref(),
    };
    let workers = crate::jobs::Workers {
        vault: &vault,
        notifier: config
            .webhooks
            .as_ref()
            .map(|settings| crate::jobs::Notifier {
                store: &notices,
                settings,
            }),
        progress: &job_store,
        queue: jobs,
        audit,
    };
    let ran = crate::jobs::run(&workers, bodies, &log).await;
    for (m, outcome) in messages.iter().zip(ran.outcomes) {
        match outcome {
            crate::jobs::JobOutcome::Ack => m.ack(),
            crate::jobs::JobOutcome::RetryAfter(s) => m.retry_with_options(
                &worker::QueueRetryOptionsBuilder::new()
                    .with_delay_seconds(s.min(43_200) as u32)
                    .build(),
            ),
        }
    }
    if ran.events > 0 {
        // The audit consumer (one at a time) chains them; chaining here could lose a race
        // with it and leave them for the cron. The sink chains at once if it cannot nudge.
        let sink = audit_queue::OutboxAuditSink {
            queue: env.queue("AUDIT_QUEUE").ok(),
            db,
            store: audit,
            keys: isolate.chain_keys(),
        };
        crate::audit::AuditSink::nudge(&sink, "jobs").await;
    }
    wake_deliverer(jobs, audit).await;
    Ok(())
}
