//! The Worker glue (wasm32 only): entry points that build the core's seams from the
//! environment and hand over to [`crate::api::handle`]. No business logic lives here.

mod d1;
mod fetch;
mod runtime;

use worker::{event, Context, Env, MessageBatch, ScheduleContext, ScheduledEvent};

use crate::api::{self, App};
use crate::config::{Config, ConfigError};
use crate::ports::SystemJitter;

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

#[event(fetch)]
async fn fetch(req: worker::Request, env: Env, _ctx: Context) -> worker::Result<worker::Response> {
    let started = runtime::now_ms();
    let method = req.method().to_string();
    let path = req.path();
    let request = runtime::read_request(req).await?;
    let store = d1::D1Store::new(env.d1("DB"));
    let log = |line: &str| worker::console_log!("{line}");
    let app = App {
        config: config(&env),
        store: &store,
        http: &fetch::FetchClient,
        clock: &runtime::WorkerClock,
        jitter: &SystemJitter,
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

#[event(scheduled)]
async fn scheduled(event: ScheduledEvent, _env: Env, _ctx: ScheduleContext) {
    // Revalidation sweeps and audit retention hang off this trigger in later issues.
    worker::console_log!(
        "scheduled run for cron '{}': no periodic jobs are registered",
        event.cron()
    );
}

#[event(queue)]
async fn queue(
    batch: MessageBatch<serde_json::Value>,
    _env: Env,
    _ctx: Context,
) -> worker::Result<()> {
    // No producer sends messages yet. Anything that arrives is retried, never dropped,
    // so a consumer added later still receives it.
    worker::console_warn!(
        "queue {}: no consumer yet, retrying {} message(s)",
        batch.queue(),
        batch.messages()?.len()
    );
    batch.retry_all();
    Ok(())
}
