//! Platform basics: env lookup, time, and conversion of requests and responses.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use worker::{Date, Delay, Env, Headers};

use crate::api::{Request, Response};
use crate::domain::Timestamp;
use crate::ports::Clock;

/// A var or secret as text (both are plain strings to the Worker).
pub(super) fn env_string(env: &Env, name: &str) -> Option<String> {
    env.var(name)
        .map(|v| v.to_string())
        .or_else(|_| env.secret(name).map(|s| s.to_string()))
        .ok()
}

/// A queue message body as JSON: the producer sends text, anything else is converted.
pub(super) fn message_body(body: &worker::wasm_bindgen::JsValue) -> serde_json::Value {
    match body.as_string() {
        Some(text) => serde_json::Value::String(text),
        None => worker::js_sys::JSON::stringify(body)
            .ok()
            .and_then(|s| s.as_string())
            .and_then(|s| serde_json::from_slice(s.as_bytes()).ok())
            .unwrap_or(serde_json::Value::Null),
    }
}

pub(super) fn now_ms() -> u64 {
    Date::now().as_millis()
}

pub(super) struct WorkerClock;

#[async_trait(?Send)]
impl Clock for WorkerClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(now_ms())
    }

    async fn sleep(&self, ms: u64) {
        Delay::from(Duration::from_millis(ms)).await;
    }
}

/// Reads a request into the core's type. At most `limit + 1` bytes of body are kept (the
/// core says how much its route takes): enough for the core to answer 413 without
/// holding a huge body in memory.
pub(super) async fn read_request(
    mut req: worker::Request,
    limit: impl FnOnce(&str, Option<&str>) -> usize,
) -> worker::Result<Request> {
    let url = req.url()?;
    // The method as sent: workers-rs's `Method` reads any method it does not know (QUERY,
    // PROPFIND, …) as GET, which would run a GET route for it. Fetch has already
    // normalised the standard ones (`get` → `GET`).
    let method = req.inner().method();
    let headers: Vec<(String, String)> = req
        .headers()
        .entries()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let limit = limit(url.path(), header("authorization"));
    // A body declared too large is not read at all: the core answers 413.
    let oversized = header("content-length")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|n| n > limit);
    let mut body = Vec::new();
    if !oversized && !matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS" | "DELETE") {
        if let Ok(mut stream) = req.stream() {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                // Past the limit the rest is read and dropped: leaving a body half-read
                // breaks the connection for the caller's next request.
                if body.len() <= limit {
                    let room = limit + 1 - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
            }
        }
    }
    Ok(Request {
        method,
        url,
        headers,
        body,
        oversized,
    })
}

pub(super) fn write_response(response: Response) -> worker::Result<worker::Response> {
    let headers = Headers::new();
    for (name, value) in &response.headers {
        headers.append(name, value)?;
    }
    let streamed = response.stream.and_then(super::fetch::into_body);
    let out = if let Some(body) = streamed {
        // A proxied answer: its body goes through as it arrives, never read here.
        worker::Response::from_body(body)?
    } else if response.body.is_empty() {
        worker::Response::empty()?
    } else {
        worker::Response::from_bytes(response.body)?
    };
    Ok(out.with_status(response.status).with_headers(headers))
}
