//! A realtime WebSocket session (`/v1/realtime/…/ws/…`): the caller's socket accepted and
//! piped to the provider's (opened by the core through `Upstream::connect`), frames both
//! ways unchanged and shown to the session's tally, a close on either side closing the
//! other, and the session's time limit. Also the contract's close codes for a refusal.

use std::time::Duration;

use futures::{select, FutureExt, StreamExt};
use worker::js_sys::Reflect;
use worker::wasm_bindgen::JsValue;
use worker::{Delay, Headers, WebSocket, WebSocketPair, WebsocketEvent};

use crate::realtime::socket::{Pass, Tally};

/// Binary frames as ArrayBuffers (the compatibility date would give Blobs), so they go
/// through byte for byte.
fn array_buffers(ws: &WebSocket) {
    let _ = Reflect::set(
        ws.as_ref(),
        &JsValue::from_str("binaryType"),
        &JsValue::from_str("arraybuffer"),
    );
}

/// A 101 with the caller's end of a pair, answering the subprotocol the vault speaks.
fn answer(client: WebSocket, protocol: Option<&str>) -> worker::Result<worker::Response> {
    let headers = Headers::new();
    if let Some(p) = protocol {
        headers.set("sec-websocket-protocol", p)?;
    }
    Ok(worker::Response::from_websocket(client)?.with_headers(headers))
}

/// A refusal as the contract gives it: the socket accepted, then closed with `code`.
pub(super) fn refuse(
    code: u16,
    reason: &str,
    protocol: Option<&str>,
) -> worker::Result<worker::Response> {
    let pair = WebSocketPair::new()?;
    pair.server.accept()?;
    pair.server.close(Some(code), Some(reason))?;
    answer(pair.client, protocol)
}

/// The code to close the other side with when one closed with `code`: the ones that may
/// not be sent (1005 no status, 1006 and 1015 a broken connection) become 1000 for a
/// caller who just went, and 1011 for a provider whose connection broke.
fn sendable(code: u16, from_caller: bool) -> u16 {
    match code {
        1000..=1003 | 1007..=1014 | 3000..=4999 => code,
        1005 => 1000,
        _ if from_caller => 1001,
        _ => 1011,
    }
}

/// Closes `ws` with `code` and `reason`, or, when the runtime refuses that (a reason too
/// long, say), with the code alone: a side is never left open.
fn close(ws: &WebSocket, code: u16, reason: &str) {
    if ws.close(Some(code), Some(reason)).is_err() {
        let _ = ws.close(Some(code), None::<&str>);
    }
}

/// Accepts the caller's socket and pipes it to `upstream` until either closes or
/// `max_seconds` pass, showing every frame to `tally`; `respond` gets the 101 before the
/// first frame moves, and says whether the caller is still there to take it (one who hung
/// up ends the session at once: the provider's socket is not left open for nobody). Idle,
/// it only awaits: no CPU.
pub(super) async fn pipe(
    upstream: WebSocket,
    protocol: Option<&str>,
    max_seconds: u64,
    tally: &mut Tally,
    respond: impl FnOnce(worker::Result<worker::Response>) -> bool,
) -> (&'static str, u16) {
    let pair = match WebSocketPair::new() {
        Ok(p) => p,
        Err(e) => {
            respond(Err(e));
            let _ = upstream.close(Some(1011), Some("the vault could not accept"));
            return ("error", 1011);
        }
    };
    let (client, server) = (pair.client, pair.server);
    array_buffers(&server);
    array_buffers(&upstream);
    let (Ok(from_client), Ok(from_upstream)) = (server.events(), upstream.events()) else {
        respond(Err(worker::Error::RustError("no event stream".into())));
        let _ = upstream.close(Some(1011), Some("the vault could not accept"));
        return ("error", 1011);
    };
    if server.accept().is_err() || upstream.accept().is_err() {
        respond(Err(worker::Error::RustError("could not accept".into())));
        let _ = upstream.close(Some(1011), Some("the vault could not accept"));
        return ("error", 1011);
    }
    if !respond(answer(client, protocol)) {
        let _ = upstream.close(Some(1001), Some("the caller went away"));
        return ("client", 1001);
    }
    let (mut from_client, mut from_upstream) = (from_client.fuse(), from_upstream.fuse());
    let mut deadline = Delay::from(Duration::from_secs(max_seconds)).fuse();
    loop {
        let (event, from, to, up) = select! {
            e = from_client.next() => (e, &server, &upstream, true),
            e = from_upstream.next() => (e, &upstream, &server, false),
            _ = deadline => {
                let reason = "the session reached its time limit";
                close(&server, 1000, reason);
                close(&upstream, 1000, reason);
                return ("timeout", 1000);
            }
        };
        match event {
            Some(Ok(WebsocketEvent::Message(m))) => {
                let (pass, sent) = if let Some(text) = m.text() {
                    let pass = if up {
                        tally.up_text(&text)
                    } else {
                        tally.down_text(&text)
                    };
                    (pass, (pass == Pass::On).then(|| to.send_with_str(text)))
                } else if let Some(bytes) = m.bytes() {
                    let pass = if up {
                        tally.up_binary(bytes.len())
                    } else {
                        tally.down_binary(bytes.len())
                    };
                    (pass, (pass == Pass::On).then(|| to.send_with_bytes(bytes)))
                } else {
                    (Pass::On, None)
                };
                if let Pass::End(code, reason) = pass {
                    close(&server, code, reason);
                    close(&upstream, code, reason);
                    return (if up { "client" } else { "provider" }, code);
                }
                if let Some(Err(_)) = sent {
                    close(&server, 1011, "send failed");
                    close(&upstream, 1011, "send failed");
                    return ("error", 1011);
                }
            }
            Some(Ok(WebsocketEvent::Close(c))) => {
                let reason = if up {
                    c.reason()
                } else {
                    tally.provider_closed(c.code(), &c.reason())
                };
                close(to, sendable(c.code(), up), &reason);
                close(from, sendable(c.code(), up), &reason);
                return (if up { "client" } else { "provider" }, c.code());
            }
            Some(Err(_)) | None => {
                close(&server, 1011, "connection error");
                close(&upstream, 1011, "connection error");
                return ("error", 1011);
            }
        }
    }
}
