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
mod websocket;

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
        let mut handled = api::handle(&app, &request).await;
        if let Some(up) = handled.response.upgrade.take() {
            // A realtime session: the provider's socket is open; the caller's 101, then
            // the frames, then the session's record.
            let up = *up;
            let started = worker::Date::now().as_millis();
            let mut session = up.session;
            let (closed_by, code) = match up.socket.0.downcast::<worker::WebSocket>() {
                Ok(upstream) => {
                    websocket::pipe(
                        *upstream,
                        up.protocol,
                        up.max_seconds,
                        &mut session.tally,
                        |r| answer.send(r).is_ok(),
                    )
                    .await
                }
                Err(_) => {
                    let _ = answer.send(websocket::refuse(1011, "internal", up.protocol));
                    ("error", 1011)
                }
            };
            let end = api::realtime::End {
                duration_ms: worker::Date::now().as_millis().saturating_sub(started),
                closed_by,
                code,
            };
            api::realtime::ended(&app, handled.uses, session, end).await;
            jobs::wake_deliverer(app.jobs, app.audit_log, &app::log_at).await;
            return;
        }
        let path = request.url.path();
        if is_websocket(&req)
            && handled.response.status >= 400
            && (path.starts_with("/v1/realtime/") || path.starts_with("/v1/proxy/"))
        {
            // A refusal before the upstream opens: the contract's close code.
            let code = serde_json::from_slice::<Value>(&handled.response.body)
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let close = api::realtime::close_code(handled.response.status, &code);
            let offered = req.headers().get("sec-websocket-protocol").ok().flatten();
            let protocol = offered
                .is_some_and(|p| p.split(',').any(|p| p.trim() == api::realtime::WS_PROTOCOL))
                .then_some(api::realtime::WS_PROTOCOL);
            let _ = answer.send(websocket::refuse(close, &code, protocol));
        } else {
            // A caller who hung up gets nothing; the rest still runs.
            let _ = answer.send(runtime::write_response(handled.response));
        }
        api::finish(&app, handled.uses, handled.metering).await;
        jobs::wake_deliverer(app.jobs, app.audit_log, &app::log_at).await;
    });
    answered
        .await
        .unwrap_or_else(|_| Err(worker::Error::RustError("the request was dropped".into())))
}

/// Whether the caller asks for a WebSocket.
fn is_websocket(req: &worker::Request) -> bool {
    req.headers()
        .get("upgrade")
        .ok()
        .flatten()
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
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
