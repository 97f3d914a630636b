//! The core's HTTP client over the Workers Fetch API: a per-attempt timeout that aborts
//! the subrequest, redirects never followed, and a bounded read of the answer.

use std::time::Duration;

use async_trait::async_trait;
use futures::future::{select, Either};
use futures::StreamExt;
use worker::wasm_bindgen::JsValue;
use worker::{web_sys, AbortController, Delay, Fetch};

use super::body::Outgoing;
use crate::http::{
    BodyStream, Connected, Ended, HttpClient, HttpError, HttpRequest, HttpResponse, Method, Socket,
    Streamed, Upstream,
};

pub(super) struct FetchClient;

/// The Fetch request for `req` (with `forwarded`, a caller's body, instead of its own):
/// redirects come back as they are. Built with web_sys's `RequestInit`: worker's own
/// converts its `cf` properties too, code none of this uses.
fn build(req: &HttpRequest, forwarded: Option<&Outgoing>) -> Result<worker::Request, HttpError> {
    let init = web_sys::RequestInit::new();
    if !req.headers.is_empty() {
        let headers = web_sys::Headers::new()
            .map_err(|_| HttpError::Network("the request could not be built".into()))?;
        for (name, value) in &req.headers {
            // The error would quote the value, which may be a key: report only the name.
            headers
                .set(name, value)
                .map_err(|_| HttpError::Network(format!("header {name} is not valid")))?;
        }
        init.set_headers(&headers);
    }
    init.set_method(match req.method {
        Method::Get => "GET",
        Method::Post => "POST",
    });
    // A redirect comes back as it is: its target never passed the endpoint guard.
    init.set_redirect(web_sys::RequestRedirect::Manual);
    match forwarded {
        Some(Outgoing::Stream(stream) | Outgoing::Counted { stream, .. }) => init.set_body(stream),
        Some(Outgoing::Broken) => {
            return Err(HttpError::Network(
                "the request body could not be forwarded".into(),
            ))
        }
        Some(Outgoing::Empty) => {}
        None => {
            if let Some(body) = &req.body {
                init.set_body(&JsValue::from(js_sys_bytes(body)));
            }
        }
    }
    web_sys::Request::new_with_str_and_init(&req.url, &init)
        .map(worker::Request::from)
        .map_err(|_| HttpError::Network("the request could not be built".into()))
}

#[async_trait(?Send)]
impl HttpClient for FetchClient {
    async fn send(&self, req: HttpRequest, timeout_ms: u64) -> Result<HttpResponse, HttpError> {
        let request = build(&req, None)?;
        let controller = AbortController::default();
        let signal = controller.signal();
        let deadline = Delay::from(Duration::from_millis(timeout_ms));
        let fetch = Fetch::Request(request);
        let limit = req.max_response_bytes;
        let call = Box::pin(async {
            let mut response = fetch
                .send_with_signal(&signal)
                .await
                .map_err(|e| HttpError::Network(network_reason(&e)))?;
            let status = response.status_code();
            let headers = header_list(&response);
            let declared = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.trim().parse::<usize>().ok());
            if declared.is_some_and(|n| n > limit) {
                return Err(HttpError::TooLarge(limit));
            }
            let body = read_at_most(&mut response, limit).await?;
            Ok(HttpResponse {
                status,
                headers,
                body,
            })
        });
        let outcome = match select(call, Box::pin(deadline)).await {
            Either::Left((Err(HttpError::TooLarge(n)), _)) => {
                // Stop the rest of the body from arriving.
                controller.abort();
                Err(HttpError::TooLarge(n))
            }
            Either::Left((outcome, _)) => outcome,
            Either::Right(_) => {
                controller.abort();
                Err(HttpError::Timeout(timeout_ms))
            }
        };
        outcome
    }

    async fn send_for_status(&self, req: HttpRequest, timeout_ms: u64) -> Result<u16, HttpError> {
        let request = build(&req, None)?;
        let controller = AbortController::default();
        let signal = controller.signal();
        let deadline = Delay::from(Duration::from_millis(timeout_ms));
        let fetch = Fetch::Request(request);
        let head = Box::pin(fetch.send_with_signal(&signal));
        let outcome = match select(head, Box::pin(deadline)).await {
            Either::Left((Ok(mut response), deadline)) => {
                let status = response.status_code();
                // At most `limit` bytes of the body are read, within what is left of the
                // timeout; past them (or past the timeout) the answer stands as it is.
                let limit = req.max_response_bytes;
                let drain = Box::pin(async move {
                    if let Ok(mut stream) = response.stream() {
                        let mut read = 0;
                        while read < limit {
                            match stream.next().await {
                                Some(Ok(chunk)) => read += chunk.len(),
                                _ => break,
                            }
                        }
                    }
                });
                let _ = select(drain, deadline).await;
                Ok(status)
            }
            Either::Left((Err(e), _)) => Err(HttpError::Network(network_reason(&e))),
            Either::Right(_) => Err(HttpError::Timeout(timeout_ms)),
        };
        // Whatever of the body is still coming is not wanted.
        controller.abort();
        outcome
    }
}

/// The proxy's calls: the answer's head within the timeout, its body left to stream.
/// `caller`: the caller's request signal (aborted when the caller goes away, the
/// `enable_request_signal` flag), which ends a watched answer's pass-through.
#[derive(Default)]
pub(super) struct FetchUpstream {
    pub(super) caller: Option<web_sys::AbortSignal>,
}

#[async_trait(?Send)]
impl Upstream for FetchUpstream {
    async fn open(
        &self,
        req: HttpRequest,
        body: Option<BodyStream>,
        timeout_ms: u64,
    ) -> Result<Streamed, HttpError> {
        let forwarded = match body {
            Some(b) => Some(
                *b.0.downcast::<Outgoing>()
                    .map_err(|_| HttpError::Network("not a forwarded body".into()))?,
            ),
            None => None,
        };
        let request = build(&req, forwarded.as_ref())?;
        // A counted body cuts its call off through the call's own controller.
        let controller = match &forwarded {
            Some(Outgoing::Counted { call, .. }) => call.clone(),
            _ => web_sys::AbortController::new()
                .map_err(|_| HttpError::Network("the request could not be built".into()))?,
        };
        let signal = worker::AbortSignal::from(controller.signal());
        let fetch = Fetch::Request(request);
        let call = Box::pin(fetch.send_with_signal(&signal));
        let deadline = Delay::from(Duration::from_millis(timeout_ms));
        let outcome = match select(call, Box::pin(deadline)).await {
            Either::Left((Ok(response), _)) => Ok(Streamed {
                status: response.status_code(),
                headers: header_list(&response),
                body: BodyStream(Box::new(response)),
            }),
            Either::Left((Err(e), _)) => Err(match &forwarded {
                // The counting stream cut the call off: the caller sent too much.
                Some(Outgoing::Counted { over, limit, .. }) if over.get() => {
                    HttpError::RequestTooLarge(*limit)
                }
                _ => HttpError::Network(network_reason(&e)),
            }),
            Either::Right(_) => {
                controller.abort();
                Err(HttpError::Timeout(timeout_ms))
            }
        };
        outcome
    }

    async fn read(
        &self,
        body: BodyStream,
        limit: usize,
        timeout_ms: u64,
    ) -> Result<Vec<u8>, HttpError> {
        let mut response = body
            .0
            .downcast::<worker::Response>()
            .map_err(|_| HttpError::Network("not a fetched body".into()))?;
        let read = Box::pin(read_at_most(&mut response, limit));
        let deadline = Delay::from(Duration::from_millis(timeout_ms));
        let outcome = match select(read, Box::pin(deadline)).await {
            Either::Left((outcome, _)) => outcome,
            Either::Right(_) => Err(HttpError::Timeout(timeout_ms)),
        };
        outcome
    }

    async fn connect(&self, req: HttpRequest, timeout_ms: u64) -> Result<Connected, HttpError> {
        connect(req, timeout_ms).await
    }

    fn watch(&self, body: BodyStream, tap: Box<dyn crate::http::Tap>) -> (BodyStream, Ended) {
        let response = match body.0.downcast::<worker::Response>() {
            Ok(r) => r,
            Err(other) => return (BodyStream(other), Box::pin(futures::future::ready(false))),
        };
        let (body, ended) = super::body::watched(response.into_parts().1, tap, self.caller.clone());
        match worker::Response::from_body(body) {
            Ok(r) => (BodyStream(Box::new(r)), ended),
            Err(_) => (
                BodyStream(Box::new(())),
                Box::pin(futures::future::ready(false)),
            ),
        }
    }
}

/// The upgrade's answer within `timeout_ms`: the socket, or the provider's refusal read
/// up to `limit` bytes.
async fn connect(req: HttpRequest, timeout_ms: u64) -> Result<Connected, HttpError> {
    let limit = req.max_response_bytes;
    let req = req.header("upgrade", "websocket");
    let request = build(&req, None)?;
    let controller = AbortController::default();
    let signal = controller.signal();
    let fetch = Fetch::Request(request);
    let call = Box::pin(fetch.send_with_signal(&signal));
    let deadline = Delay::from(Duration::from_millis(timeout_ms));
    let mut response = match select(call, Box::pin(deadline)).await {
        Either::Left((Ok(response), _)) => response,
        Either::Left((Err(e), _)) => return Err(HttpError::Network(network_reason(&e))),
        Either::Right(_) => {
            controller.abort();
            return Err(HttpError::Timeout(timeout_ms));
        }
    };
    let status = response.status_code();
    let headers = header_list(&response);
    if status == 101 {
        return match response.websocket() {
            Some(socket) => Ok(Connected::Open(Socket(Box::new(socket)))),
            None => Err(HttpError::Network(
                "the provider's 101 held no socket".into(),
            )),
        };
    }
    let read = Box::pin(read_at_most(&mut response, limit));
    let deadline = Delay::from(Duration::from_millis(timeout_ms));
    let body = match select(read, Box::pin(deadline)).await {
        Either::Left((Ok(body), _)) => body,
        // A refusal whose body is too long or too slow is judged by its status alone.
        Either::Left((Err(_), _)) | Either::Right(_) => Vec::new(),
    };
    Ok(Connected::Answered(HttpResponse {
        status,
        headers,
        body,
    }))
}

/// An answer's headers, their names in lower case.
fn header_list(response: &worker::Response) -> Vec<(String, String)> {
    response
        .headers()
        .entries()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

/// The body of a fetched answer, to pipe to the client unread.
pub(super) fn into_body(stream: BodyStream) -> Option<worker::ResponseBody> {
    let response = stream.0.downcast::<worker::Response>().ok()?;
    Some(response.into_parts().1)
}

/// The body, read chunk by chunk; more than `limit` bytes is an error, not a truncation
/// (a cut JSON document would only fail later, less clearly).
async fn read_at_most(response: &mut worker::Response, limit: usize) -> Result<Vec<u8>, HttpError> {
    let mut stream = match response.stream() {
        Ok(s) => s,
        // A body held whole (or none at all).
        Err(_) => {
            let body = response
                .bytes()
                .await
                .map_err(|e| HttpError::Network(network_reason(&e)))?;
            return if body.len() > limit {
                Err(HttpError::TooLarge(limit))
            } else {
                Ok(body)
            };
        }
    };
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| HttpError::Network(network_reason(&e)))?;
        if body.len() + chunk.len() > limit {
            return Err(HttpError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn js_sys_bytes(bytes: &[u8]) -> worker::js_sys::Uint8Array {
    worker::js_sys::Uint8Array::from(bytes)
}

/// A short reason for a failed subrequest, without echoing request details.
fn network_reason(e: &worker::Error) -> String {
    let text = e.to_string();
    let first_line = text.lines().next().unwrap_or("network error");
    first_line.chars().take(200).collect()
}
