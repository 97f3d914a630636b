//! A realtime WebSocket session (`/v1/realtime/…/ws/…`): the upstream socket opened with
//! the key, the caller's socket accepted, frames piped both ways unchanged, and a close on
//! either side closing the other. Also the contract's close codes for a refusal.

use futures::{select, StreamExt};
use worker::js_sys::Reflect;
use worker::wasm_bindgen::JsValue;
use worker::{web_sys, Fetch, Headers, WebSocket, WebSocketPair, WebsocketEvent};

use crate::api::realtime::Upgrade;

/// What a session came to, for its `credential.used` event.
pub(super) struct Session {
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub closed_by: &'static str,
    pub code: u16,
}

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

/// Opens the upstream socket; `Err` says what the provider did instead. The request is
/// built with `web_sys`, as `fetch.rs` builds its own (worker's `RequestInit` costs size).
pub(super) async fn connect(up: &Upgrade) -> Result<WebSocket, String> {
    let built = (|| -> Result<worker::Request, JsValue> {
        let headers = web_sys::Headers::new()?;
        headers.set("upgrade", "websocket")?;
        headers.set(up.header, up.value.expose())?;
        let init = web_sys::RequestInit::new();
        init.set_method("GET");
        init.set_headers(&headers);
        web_sys::Request::new_with_str_and_init(&up.url, &init).map(worker::Request::from)
    })();
    let request = built.map_err(|_| "the upstream request could not be built".to_string())?;
    let response = Fetch::Request(request)
        .send()
        .await
        .map_err(|_| "the provider could not be reached".to_string())?;
    let status = response.status_code();
    response
        .websocket()
        .ok_or_else(|| format!("the provider answered {status}"))
}

/// A close code one side may send on: the reserved ones (1005, 1006, 1015) become 1000.
fn sendable(code: u16) -> u16 {
    match code {
        1000..=1003 | 1007..=1014 | 3000..=4999 => code,
        _ => 1000,
    }
}

/// Accepts the caller's socket and pipes it to `upstream` until either closes; `respond`
/// gets the 101 before the first frame moves.
pub(super) async fn pipe(
    upstream: WebSocket,
    protocol: Option<&str>,
    respond: impl FnOnce(worker::Result<worker::Response>),
) -> Session {
    let mut session = Session {
        bytes_up: 0,
        bytes_down: 0,
        closed_by: "error",
        code: 1011,
    };
    let pair = match WebSocketPair::new() {
        Ok(p) => p,
        Err(e) => {
            respond(Err(e));
            let _ = upstream.close(Some(1011), Some("the vault could not accept"));
            return session;
        }
    };
    let (client, server) = (pair.client, pair.server);
    array_buffers(&server);
    array_buffers(&upstream);
    let (Ok(from_client), Ok(from_upstream)) = (server.events(), upstream.events()) else {
        respond(Err(worker::Error::RustError("no event stream".into())));
        return session;
    };
    if server.accept().is_err() || upstream.accept().is_err() {
        respond(Err(worker::Error::RustError("could not accept".into())));
        return session;
    }
    respond(answer(client, protocol));
    let (mut from_client, mut from_upstream) = (from_client.fuse(), from_upstream.fuse());
    loop {
        let (event, from, to, up) = select! {
            e = from_client.next() => (e, &server, &upstream, true),
            e = from_upstream.next() => (e, &upstream, &server, false),
        };
        match event {
            Some(Ok(WebsocketEvent::Message(m))) => {
                let sent = if let Some(text) = m.text() {
                    let n = text.len() as u64;
                    if up {
                        session.bytes_up += n
                    } else {
                        session.bytes_down += n
                    }
                    to.send_with_str(text)
                } else if let Some(bytes) = m.bytes() {
                    let n = bytes.len() as u64;
                    if up {
                        session.bytes_up += n
                    } else {
                        session.bytes_down += n
                    }
                    to.send_with_bytes(bytes)
                } else {
                    Ok(())
                };
                if sent.is_err() {
                    let _ = server.close(Some(1011), Some("send failed"));
                    let _ = upstream.close(Some(1011), Some("send failed"));
                    return session;
                }
            }
            Some(Ok(WebsocketEvent::Close(c))) => {
                session.code = c.code();
                session.closed_by = if up { "client" } else { "provider" };
                let _ = to.close(Some(sendable(c.code())), Some(c.reason()));
                let _ = from.close(Some(sendable(c.code())), Some(c.reason()));
                return session;
            }
            Some(Err(_)) | None => {
                let _ = server.close(Some(1011), Some("connection error"));
                let _ = upstream.close(Some(1011), Some("connection error"));
                return session;
            }
        }
    }
}
