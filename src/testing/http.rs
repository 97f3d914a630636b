//! The outbound HTTP seam (`http.rs`): a scripted network that remembers what it was sent,
//! for probes and for the proxy's streamed calls.

use std::cell::RefCell;
use std::collections::VecDeque;

use async_trait::async_trait;

use crate::http::{HttpClient, HttpError, HttpRequest, HttpResponse};

use super::*;

/// What the fake network does with the next request.
pub(crate) enum Scripted {
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
        takes_ms: u64,
    },
    /// The provider never answers: the attempt's whole timeout passes.
    Hang,
    Refuse,
}

pub(crate) fn respond(status: u16, body: &str) -> Scripted {
    Scripted::Respond {
        status,
        headers: vec![],
        body: body.to_owned(),
        takes_ms: 20,
    }
}

pub(crate) fn respond_with(status: u16, headers: &[(&str, &str)], body: &str) -> Scripted {
    Scripted::Respond {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_lowercase(), v.to_string()))
            .collect(),
        body: body.to_owned(),
        takes_ms: 20,
    }
}

/// What the fake network saw: URL, headers, and the timeout it was given.
pub(crate) type Sent = (String, Vec<(String, String)>, u64);

/// Answers requests from a script, in order, and remembers what was sent.
pub(crate) struct FakeHttp<'c> {
    clock: &'c FakeClock,
    script: RefCell<VecDeque<Scripted>>,
    pub sent: RefCell<Vec<Sent>>,
    /// The bodies of proxied requests, in order.
    pub bodies: RefCell<Vec<Vec<u8>>>,
    /// The bodies of the requests sent whole (`send`), in order.
    pub sent_bodies: RefCell<Vec<Vec<u8>>>,
}

impl<'c> FakeHttp<'c> {
    pub(crate) fn new(clock: &'c FakeClock, script: Vec<Scripted>) -> Self {
        Self {
            clock,
            script: RefCell::new(script.into()),
            sent: RefCell::new(Vec::new()),
            bodies: RefCell::new(Vec::new()),
            sent_bodies: RefCell::new(Vec::new()),
        }
    }

    pub(crate) fn calls(&self) -> usize {
        self.sent.borrow().len()
    }
}

#[async_trait(?Send)]
impl HttpClient for FakeHttp<'_> {
    async fn send(&self, req: HttpRequest, timeout_ms: u64) -> Result<HttpResponse, HttpError> {
        self.sent
            .borrow_mut()
            .push((req.url.clone(), req.headers.clone(), timeout_ms));
        self.sent_bodies
            .borrow_mut()
            .push(req.body.clone().unwrap_or_default());
        let next = self.script.borrow_mut().pop_front();
        match next {
            Some(Scripted::Respond {
                status,
                headers,
                body,
                takes_ms,
            }) => {
                self.clock.advance(takes_ms.min(timeout_ms));
                if body.len() > req.max_response_bytes {
                    return Err(HttpError::TooLarge(req.max_response_bytes));
                }
                Ok(HttpResponse {
                    status,
                    headers,
                    body: body.into_bytes(),
                })
            }
            Some(Scripted::Hang) => {
                self.clock.advance(timeout_ms);
                Err(HttpError::Timeout(timeout_ms))
            }
            Some(Scripted::Refuse) => Err(HttpError::Network("connection refused".into())),
            None => panic!("unscripted request to {}", req.url),
        }
    }

    /// As the Worker's client: the body past the bound is dropped, never an error.
    async fn send_for_status(
        &self,
        mut req: HttpRequest,
        timeout_ms: u64,
    ) -> Result<u16, HttpError> {
        req.max_response_bytes = usize::MAX;
        self.send(req, timeout_ms).await.map(|r| r.status)
    }
}

/// The proxy's path over the same script: the body comes back whole, as the "stream".
#[async_trait(?Send)]
impl crate::http::Upstream for FakeHttp<'_> {
    async fn open(
        &self,
        mut req: HttpRequest,
        body: Option<crate::http::BodyStream>,
        timeout_ms: u64,
    ) -> Result<crate::http::Streamed, HttpError> {
        if let Some(body) = body {
            let forwarded = *body
                .0
                .downcast::<Forwarded>()
                .expect("a forwarded test body");
            if forwarded.bytes.len() > forwarded.limit {
                return Err(HttpError::RequestTooLarge(forwarded.limit));
            }
            req.body = Some(forwarded.bytes);
        }
        if let Some(body) = &req.body {
            self.bodies.borrow_mut().push(body.clone());
        }
        req.max_response_bytes = usize::MAX;
        let r = HttpClient::send(self, req, timeout_ms).await?;
        Ok(crate::http::Streamed {
            status: r.status,
            headers: r.headers,
            body: crate::http::BodyStream(Box::new(r.body)),
        })
    }

    async fn read(
        &self,
        body: crate::http::BodyStream,
        limit: usize,
        _timeout_ms: u64,
    ) -> Result<Vec<u8>, HttpError> {
        let bytes = *body.0.downcast::<Vec<u8>>().expect("a fake body");
        if bytes.len() > limit {
            return Err(HttpError::TooLarge(limit));
        }
        Ok(bytes)
    }

    /// A scripted 101 opens a socket (nothing inside: the glue owns sockets); any other
    /// answer is the provider's refusal.
    async fn connect(
        &self,
        req: HttpRequest,
        timeout_ms: u64,
    ) -> Result<crate::http::Connected, HttpError> {
        let r = HttpClient::send(self, req, timeout_ms).await?;
        Ok(if r.status == 101 {
            crate::http::Connected::Open(crate::http::Socket(Box::new(())))
        } else {
            crate::http::Connected::Answered(r)
        })
    }

    /// The whole body goes by at once, in chunks of 7 bytes (so a reader meets events
    /// split across chunks), as the tap lets it, and it always ends whole.
    fn watch(
        &self,
        body: crate::http::BodyStream,
        mut tap: Box<dyn crate::http::Tap>,
    ) -> (crate::http::BodyStream, crate::http::Ended) {
        let bytes = *body.0.downcast::<Vec<u8>>().expect("a fake body");
        let mut passed = Vec::new();
        for chunk in bytes.chunks(7) {
            match tap.chunk(chunk) {
                None => passed.extend_from_slice(chunk),
                Some(other) => passed.extend(other),
            }
        }
        passed.extend(tap.end().unwrap_or_default());
        (
            crate::http::BodyStream(Box::new(passed)),
            Box::pin(futures::future::ready(true)),
        )
    }
}
