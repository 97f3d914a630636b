//! The Worker glue (wasm32 only): the runtime's entry points, each a hand-over to the core.
//! The application is built in `app.rs` (from the isolate's configuration in `isolate.rs`
//! and the environment's bindings); a request goes to [`crate::api::handle`], a cron run to
//! [`crate::jobs::cron`], a queue batch to [`crate::jobs::consume`]. No business logic
//! lives here.

mod app;
mod assets;
mod body;
mod d1;
mod fetch;
mod isolate;
mod limits;
mod queues;
mod runtime;
mod webcrypto;

use serde_json::Value;
use worker::{event, Context, Env, MessageBatch, MessageExt, ScheduleContext, ScheduledEvent};

use crate::api;
use crate::jobs::{self, Settle};
use app::Platform;

#[event(fetch)]
async fn fetch(req: worker::Request, env: Env, ctx: Context) -> worker::Result<worker::Response> {
    // The whole request runs under `waitUntil` and hands its answer back here: when the
    // caller hangs up, the runtime cancels this function but lets the task finish, so a
    // call that already reached a provider still records its use. The uses it leaves are
    // sent there too, after the answer, off the time to its first byte.
    let (answer, answered) = futures::channel::oneshot::channel();
    ctx.wait_until(async move {
        let request = match runtime::read_request(&req) {
            Ok(r) => r,
            Err(e) => {
                let _ = answer.send(Err(e));
                return;
            }
        };
        let db = d1::Db::new(&env);
        let platform = Platform::new(&env, &db).for_caller(Some(req.inner().signal()));
        let app = platform.app();
        // The core writes the request's one structured log line.
        let handled = api::handle(&app, &request).await;
        // A caller who hung up gets nothing; the rest still runs.
        let _ = answer.send(runtime::write_response(handled.response));
        api::finish(&app, handled.uses, handled.metering).await;
        jobs::wake_deliverer(app.jobs, app.audit_log, &app::log_at).await;
    });
    answered
        .await
        .unwrap_or_else(|_| Err(worker::Error::RustError("the request was dropped".into())))
}

#[event(scheduled)]
async fn scheduled(event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    let db = d1::Db::new(&env);
    jobs::cron(&Platform::new(&env, &db).background(), &event.cron()).await;
}

/// One handler for every queue; the queue's name says which consumer it is.
#[event(queue)]
async fn queue(batch: MessageBatch<Value>, env: Env, _ctx: Context) -> worker::Result<()> {
    let messages: Vec<_> = batch.raw_iter().collect();
    let bodies: Vec<Value> = messages
        .iter()
        .map(|m| runtime::message_body(&m.body()))
        .collect();
    let db = d1::Db::new(&env);
    let platform = Platform::new(&env, &db);
    let done = jobs::consume(&platform.background(), &batch.queue(), &bodies).await;
    for (m, settle) in messages.iter().zip(done.settle) {
        match settle {
            Settle::Ack => m.ack(),
            Settle::Retry => m.retry(),
            Settle::RetryAfter(seconds) => m.retry_with_options(
                &worker::QueueRetryOptionsBuilder::new()
                    .with_delay_seconds(seconds)
                    .build(),
            ),
        }
    }
    // Returning an error would redeliver the whole batch: every message is settled above.
    Ok(())
}
