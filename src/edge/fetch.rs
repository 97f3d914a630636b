//! The core's HTTP client over the Workers Fetch API, with a per-attempt timeout that
//! aborts the subrequest.

use std::time::Duration;

use async_trait::async_trait;
use futures::future::{select, Either};
use worker::wasm_bindgen::JsValue;
use worker::{AbortController, Delay, Fetch, Headers, Method as WMethod, RequestInit};

use crate::ports::{HttpClient, HttpError, HttpRequest, HttpResponse, Method};

pub struct FetchClient;

#[async_trait(?Send)]
impl HttpClient for FetchClient {
    async fn send(&self, req: HttpRequest, timeout_ms: u64) -> Result<HttpResponse, HttpError> {
        let headers = Headers::new();
        for (name, value) in &req.headers {
            // The error would quote the value, which may be a key: report only the name.
            headers
                .set(name, value)
                .map_err(|_| HttpError::Network(format!("header {name} is not valid")))?;
        }
        let mut init = RequestInit::new();
        init.with_method(match req.method {
            Method::Get => WMethod::Get,
            Method::Post => WMethod::Post,
        })
        .with_headers(headers);
        if let Some(body) = &req.body {
            init.with_body(Some(JsValue::from(js_sys_bytes(body))));
        }
        let request = worker::Request::new_with_init(&req.url, &init)
            .map_err(|_| HttpError::Network("the request could not be built".into()))?;

        let controller = AbortController::default();
        let signal = controller.signal();
        let deadline = Delay::from(Duration::from_millis(timeout_ms));
        let fetch = Fetch::Request(request);
        let call = Box::pin(async {
            let mut response = fetch.send_with_signal(&signal).await?;
            let status = response.status_code();
            let headers = response
                .headers()
                .entries()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            let body = response.bytes().await?;
            Ok::<_, worker::Error>(HttpResponse {
                status,
                headers,
                body,
            })
        });
        let outcome = match select(call, Box::pin(deadline)).await {
            Either::Left((Ok(response), _)) => Ok(response),
            Either::Left((Err(e), _)) => Err(HttpError::Network(network_reason(&e))),
            Either::Right(_) => {
                controller.abort();
                Err(HttpError::Timeout(timeout_ms))
            }
        };
        outcome
    }
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
