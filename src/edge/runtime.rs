//! Platform basics: env lookup, time, and conversion of requests and responses.

use std::time::Duration;

use async_trait::async_trait;
use worker::{Date, Delay, Env, Headers};

use crate::api::{Request, Response};
use crate::domain::Clock;
use crate::domain::Timestamp;

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

/// Takes a request into the core's type, its body left unread: the core reads it (or
/// forwards it) only once the route and the caller are known.
pub(super) fn read_request(req: &worker::Request) -> worker::Result<Request> {
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
    // A body framed by its Content-Length cannot grow past what it declared (the router
    // refuses a declared length past the route's limit before reading anything).
    let framed = headers.iter().any(|(k, _)| k == "content-length");
    let body = super::body::WorkerBody::new(req.inner().body(), framed);
    Ok(Request::new(method, url, headers, Box::new(body)))
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
