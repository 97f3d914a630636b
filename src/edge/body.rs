//! A caller's request body in the Worker: a stream the core reads (bounded, stopping as
//! soon as it passes its limit) or forwards unread into an upstream call, counted in JS so
//! that no byte of it is copied into the wasm.

use std::cell::Cell;
use std::rc::Rc;

use async_trait::async_trait;
use futures::future::{select, Either, FutureExt, LocalBoxFuture, Shared};
use worker::js_sys::{Reflect, Uint8Array};
use worker::wasm_bindgen::closure::Closure;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::{spawn_local, JsFuture};
use worker::web_sys::{self, ReadableStreamDefaultReader};

use crate::api::{BodyError, IncomingBody};
use crate::http::BodyStream;

/// A request's body as the runtime hands it over: a stream, read only when the core asks.
pub(super) struct WorkerBody {
    stream: Option<web_sys::ReadableStream>,
    /// Framed by a Content-Length (which the router held to the route's limit).
    framed: bool,
}

impl WorkerBody {
    pub(super) fn new(stream: Option<web_sys::ReadableStream>, framed: bool) -> Self {
        Self { stream, framed }
    }
}

/// The next chunk of `reader`; `None` at the end.
async fn next_chunk(reader: &ReadableStreamDefaultReader) -> Result<Option<Uint8Array>, String> {
    let why = |e: JsValue| {
        e.as_string()
            .unwrap_or_else(|| "the stream failed".to_owned())
    };
    let result = JsFuture::from(reader.read()).await.map_err(why)?;
    if Reflect::get(&result, &"done".into())
        .map_err(why)?
        .as_bool()
        .unwrap_or(true)
    {
        return Ok(None);
    }
    let value = Reflect::get(&result, &"value".into()).map_err(why)?;
    value
        .dyn_into::<Uint8Array>()
        .map(Some)
        .map_err(|_| "a body chunk is not bytes".to_owned())
}

#[async_trait(?Send)]
impl IncomingBody for WorkerBody {
    async fn read(self: Box<Self>, limit: usize) -> Result<Vec<u8>, BodyError> {
        let Some(stream) = self.stream else {
            return Ok(Vec::new());
        };
        let reader: ReadableStreamDefaultReader = stream.get_reader().unchecked_into();
        let mut body = Vec::new();
        while let Some(chunk) = next_chunk(&reader).await.map_err(BodyError::Broken)? {
            let n = chunk.length() as usize;
            if body.len() + n > limit {
                // Refused now: the rest is never waited for, nor read.
                let _ = reader.cancel();
                return Err(BodyError::TooLarge(limit));
            }
            let start = body.len();
            body.resize(start + n, 0);
            chunk.copy_to(&mut body[start..]);
        }
        Ok(body)
    }

    fn forward(self: Box<Self>, limit: usize) -> BodyStream {
        let outgoing = match self.stream {
            None => Outgoing::Empty,
            // Framed by a Content-Length within the limit: it goes on as it is, and the
            // upstream call gets the same length.
            Some(stream) if self.framed => Outgoing::Stream(stream),
            // Chunked, of unknown length: it goes on through a stream that counts it and
            // cuts the call off past the limit.
            Some(stream) => match (
                web_sys::TransformStream::new(),
                web_sys::AbortController::new(),
            ) {
                (Ok(counted), Ok(call)) => {
                    let over = Rc::new(Cell::new(false));
                    let cut = Cut {
                        over: over.clone(),
                        call: call.clone(),
                    };
                    spawn_local(pump(stream, counted.writable(), limit, cut));
                    Outgoing::Counted {
                        stream: counted.readable(),
                        over,
                        limit,
                        call,
                    }
                }
                _ => Outgoing::Broken,
            },
        };
        BodyStream(Box::new(outgoing))
    }
}

/// A caller's body on its way upstream (see [`super::fetch`]).
pub(super) enum Outgoing {
    Empty,
    Stream(web_sys::ReadableStream),
    /// Through a counting stream; `over` once it passed `limit` and cut the call off
    /// (through `call`, the call's abort controller).
    Counted {
        stream: web_sys::ReadableStream,
        over: Rc<Cell<bool>>,
        limit: usize,
        call: web_sys::AbortController,
    },
    /// The counting stream could not be made: the call is not sent.
    Broken,
}

/// How a pump cuts its call off: the flag the call's failure is read by, and the call.
struct Cut {
    over: Rc<Cell<bool>>,
    call: web_sys::AbortController,
}

/// Moves `from` into `to` chunk by chunk (JS values, never copied into the wasm), as fast as
/// the upstream call takes them. Past `limit` bytes it aborts the call (ending the stream
/// alone would let the runtime finish the upload cleanly, and the provider would take a
/// cut-off body for a whole one) and stops reading the caller's body.
async fn pump(from: web_sys::ReadableStream, to: web_sys::WritableStream, limit: usize, cut: Cut) {
    let reader: ReadableStreamDefaultReader = from.get_reader().unchecked_into();
    let Ok(writer) = to.get_writer() else {
        let _ = reader.cancel();
        return;
    };
    let mut total = 0usize;
    loop {
        match next_chunk(&reader).await {
            Ok(None) => {
                let _ = JsFuture::from(writer.close()).await;
                return;
            }
            Ok(Some(chunk)) => {
                total = total.saturating_add(chunk.length() as usize);
                if total > limit {
                    cut.over.set(true);
                    cut.call.abort();
                    let _ = reader.cancel();
                    let reason = JsValue::from_str("the request body is over its limit");
                    let _ = JsFuture::from(writer.abort_with_reason(&reason)).await;
                    return;
                }
                // The call is gone (answered, failed): stop reading the caller's body.
                if JsFuture::from(writer.write_with_chunk(&chunk))
                    .await
                    .is_err()
                {
                    let _ = reader.cancel();
                    return;
                }
            }
            Err(why) => {
                let _ = JsFuture::from(writer.abort_with_reason(&JsValue::from_str(&why))).await;
                return;
            }
        }
    }
}

/// A provider's answer passed on through a stream of its own, each chunk shown to `tap`
/// (copied into the wasm to be read) on its way: the caller's pace sets the pace (each
/// write waits for the caller to take the one before), and the answer's end, or its
/// cutting off, is told through the returned future.
pub(super) fn watched(
    body: worker::ResponseBody,
    mut tap: Box<dyn crate::http::Tap>,
    caller: Option<web_sys::AbortSignal>,
) -> (worker::ResponseBody, crate::http::Ended) {
    let stream = match body {
        worker::ResponseBody::Stream(s) => s,
        // Held whole (or empty): shown at once.
        worker::ResponseBody::Body(bytes) => {
            let mut passed = tap.chunk(&bytes).unwrap_or(bytes);
            passed.extend(tap.end().unwrap_or_default());
            return (
                worker::ResponseBody::Body(passed),
                Box::pin(futures::future::ready(true)),
            );
        }
        worker::ResponseBody::Empty => {
            let rest = tap.end().unwrap_or_default();
            let body = if rest.is_empty() {
                worker::ResponseBody::Empty
            } else {
                worker::ResponseBody::Body(rest)
            };
            return (body, Box::pin(futures::future::ready(true)));
        }
    };
    let Some(passed) = pass_through() else {
        // Not watched rather than not answered: its usage is recorded incomplete.
        return (
            worker::ResponseBody::Stream(stream),
            Box::pin(futures::future::ready(false)),
        );
    };
    let (ended, done) = futures::channel::oneshot::channel();
    let writable = passed.writable();
    spawn_local(async move {
        let whole = pass_watching(stream, writable, tap, gone(caller)).await;
        let _ = ended.send(whole);
    });
    (
        worker::ResponseBody::Stream(passed.readable()),
        Box::pin(async move { done.await.unwrap_or(false) }),
    )
}

/// Resolves when the caller has gone away (its request signal aborted; never without one):
/// every wait of the pass-through is raced against it.
fn gone(caller: Option<web_sys::AbortSignal>) -> Shared<LocalBoxFuture<'static, ()>> {
    let Some(signal) = caller else {
        return futures::future::pending::<()>().boxed_local().shared();
    };
    if signal.aborted() {
        return futures::future::ready(()).boxed_local().shared();
    }
    let (tx, rx) = futures::channel::oneshot::channel::<()>();
    let tx = std::cell::RefCell::new(Some(tx));
    let on_abort = Closure::<dyn FnMut()>::new(move || {
        if let Some(tx) = tx.borrow_mut().take() {
            let _ = tx.send(());
        }
    });
    let _ = signal.add_event_listener_with_callback("abort", on_abort.as_ref().unchecked_ref());
    async move {
        // The listener lives as long as the wait for it.
        let _keep = on_abort;
        if rx.await.is_err() {
            futures::future::pending::<()>().await;
        }
    }
    .boxed_local()
    .shared()
}

/// The runtime's own pass-through stream (`IdentityTransformStream`): a write completes when
/// the caller has taken its bytes, and fails as soon as the caller has gone, which the
/// runtime knows (a stream made in JS would leave the write waiting, and the task would be
/// cancelled as hung before the call's use is recorded). A plain `TransformStream` where
/// the runtime has none.
fn pass_through() -> Option<web_sys::TransformStream> {
    let global = worker::js_sys::global();
    if let Ok(ctor) = Reflect::get(&global, &JsValue::from_str("IdentityTransformStream")) {
        if let Ok(ctor) = ctor.dyn_into::<worker::js_sys::Function>() {
            if let Ok(stream) = Reflect::construct(&ctor, &worker::js_sys::Array::new()) {
                return Some(stream.unchecked_into());
            }
        }
    }
    web_sys::TransformStream::new().ok()
}

/// `wait`, unless the caller goes away first (`None`).
async fn unless_gone<T>(
    wait: impl std::future::Future<Output = T>,
    gone: &Shared<LocalBoxFuture<'static, ()>>,
) -> Option<T> {
    match select(Box::pin(wait), gone.clone()).await {
        Either::Left((v, _)) => Some(v),
        Either::Right(_) => None,
    }
}

/// Moves `from` into `to` chunk by chunk as `tap` lets it; whether it all went on. The
/// caller going away (`gone`) ends it at once, whatever it was waiting for.
async fn pass_watching(
    from: web_sys::ReadableStream,
    to: web_sys::WritableStream,
    mut tap: Box<dyn crate::http::Tap>,
    gone: Shared<LocalBoxFuture<'static, ()>>,
) -> bool {
    let reader: ReadableStreamDefaultReader = from.get_reader().unchecked_into();
    let Ok(writer) = to.get_writer() else {
        let _ = reader.cancel();
        return false;
    };
    let cut = || {
        let _ = reader.cancel();
        let _ = writer.abort_with_reason(&JsValue::from_str("the caller went away"));
        false
    };
    let mut copy = Vec::new();
    loop {
        let Some(read) = unless_gone(next_chunk(&reader), &gone).await else {
            return cut();
        };
        let next = match read {
            Ok(None) => {
                if let Some(rest) = tap.end().filter(|r| !r.is_empty()) {
                    let rest = Uint8Array::from(rest.as_slice());
                    match unless_gone(JsFuture::from(writer.write_with_chunk(&rest)), &gone).await {
                        Some(Ok(_)) => {}
                        Some(Err(_)) => return false,
                        None => return cut(),
                    }
                }
                return matches!(
                    unless_gone(JsFuture::from(writer.close()), &gone).await,
                    Some(Ok(_))
                );
            }
            Ok(Some(chunk)) => {
                copy.resize(chunk.length() as usize, 0);
                chunk.copy_to(&mut copy);
                match tap.chunk(&copy) {
                    None => Some(chunk),
                    Some(other) if other.is_empty() => None,
                    Some(other) => Some(Uint8Array::from(other.as_slice())),
                }
            }
            Err(why) => {
                let _ = JsFuture::from(writer.abort_with_reason(&JsValue::from_str(&why))).await;
                return false;
            }
        };
        // The caller hung up (the write fails, or the signal says so): stop reading the
        // provider's answer.
        if let Some(chunk) = next {
            match unless_gone(JsFuture::from(writer.write_with_chunk(&chunk)), &gone).await {
                Some(Ok(_)) => {}
                Some(Err(_)) => {
                    let _ = reader.cancel();
                    return false;
                }
                None => return cut(),
            }
        }
    }
}
