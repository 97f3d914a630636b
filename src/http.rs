//! The outbound HTTP seam: requests to providers (and to Infisical, a JWKS, a webhook
//! receiver), their answers, and the client that sends them; the proxy's calls whose answers
//! stream back unread. The Worker implements it over Fetch (`edge/fetch.rs`); tests over a
//! script (`testing/http.rs`).

use std::fmt;

use async_trait::async_trait;

crate::wire_enum! {
    /// An outbound request's method.
    pub enum Method {
        Get = "GET",
        Post = "POST",
    }
}

/// The most of an answer's body any outbound call reads (a model list of a thousand
/// entries is a few hundred KB): a hostile or broken upstream cannot make the vault hold
/// more.
pub const MAX_RESPONSE_BYTES: usize = 2 * 1024 * 1024;

/// An outbound request to a provider.
pub struct HttpRequest {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    /// Answers with a longer body fail with [`HttpError::TooLarge`].
    pub max_response_bytes: usize,
}

impl HttpRequest {
    pub fn get(url: String) -> Self {
        Self {
            method: Method::Get,
            url,
            headers: Vec::new(),
            body: None,
            max_response_bytes: MAX_RESPONSE_BYTES,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

impl fmt::Debug for HttpRequest {
    // Header values carry API keys: only their names are ever printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        write!(f, "{} {} headers={names:?}", self.method.as_str(), self.url)
    }
}

/// A provider's answer, whatever its status.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("no answer within {0} ms")]
    Timeout(u64),
    #[error("could not connect: {0}")]
    Network(String),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    /// A forwarded request body passed its limit (the call was cut off).
    #[error("the request body is larger than {0} bytes")]
    RequestTooLarge(usize),
}

#[async_trait(?Send)]
pub trait HttpClient {
    /// Sends one request and gives up after `timeout_ms`. Any status is `Ok`, and a
    /// redirect is never followed: a 3xx comes back as it is, so a destination that passed
    /// the endpoint guard cannot bounce the call somewhere that would not. Reads at most
    /// `request.max_response_bytes` of the body.
    async fn send(&self, request: HttpRequest, timeout_ms: u64) -> Result<HttpResponse, HttpError>;

    /// Sends one request for its status alone (a webhook delivery): reads at most
    /// `request.max_response_bytes` of the body and drops the rest, so a long answer is
    /// never an error. This default asks [`send`](Self::send), which does fail on a long
    /// body: a client that reads from a network overrides it.
    async fn send_for_status(
        &self,
        request: HttpRequest,
        timeout_ms: u64,
    ) -> Result<u16, HttpError> {
        self.send(request, timeout_ms).await.map(|r| r.status)
    }
}

/// An answer's body left unread: the Worker pipes it to the client as it arrives (the
/// glue knows what is inside; the core only hands it on or asks for a bounded read).
pub struct BodyStream(pub Box<dyn std::any::Any>);

impl fmt::Debug for BodyStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BodyStream")
    }
}

/// An answer whose head has arrived and whose body has not been read.
#[derive(Debug)]
pub struct Streamed {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: BodyStream,
}

/// Calls whose answers are streamed back to the caller (the proxy).
#[async_trait(?Send)]
pub trait Upstream {
    /// Sends `request` and waits at most `timeout_ms` for the answer's head; never follows
    /// a redirect; leaves the body unread. `body`, the caller's own (from
    /// [`Request::forward_body`](crate::api::Request)), flows into the call as it arrives
    /// and replaces `request.body`.
    async fn open(
        &self,
        request: HttpRequest,
        body: Option<BodyStream>,
        timeout_ms: u64,
    ) -> Result<Streamed, HttpError>;
    /// Reads at most `limit` bytes of a body that is not passed on as it is (an error the
    /// vault must judge), within `timeout_ms`; more is [`HttpError::TooLarge`], later
    /// [`HttpError::Timeout`].
    async fn read(
        &self,
        body: BodyStream,
        limit: usize,
        timeout_ms: u64,
    ) -> Result<Vec<u8>, HttpError>;
    /// Passes `body` on as fast as the caller takes it, showing each chunk to `tap` as it
    /// goes by (which may say to pass on other bytes in its place); [`Ended`] resolves once
    /// the body has gone on whole (`true`) or was cut off (`false`: the caller hung up, the
    /// provider broke off).
    fn watch(&self, body: BodyStream, tap: Box<dyn Tap>) -> (BodyStream, Ended);
    /// Asks for a WebSocket at `request.url` (`http(s)`; the runtime upgrades a GET with
    /// `Upgrade: websocket`), waiting at most `timeout_ms` for the provider's answer; never
    /// follows a redirect.
    async fn connect(&self, request: HttpRequest, timeout_ms: u64) -> Result<Connected, HttpError>;
}

/// What a watched body's chunks are shown to ([`Upstream::watch`]).
pub trait Tap {
    /// The next chunk; `None` passes it on as it is, `Some(bytes)` passes `bytes` instead
    /// (none at all when empty).
    fn chunk(&mut self, chunk: &[u8]) -> Option<Vec<u8>>;
    /// The body ended whole: any bytes still to pass on.
    fn end(&mut self) -> Option<Vec<u8>> {
        None
    }
}

/// Whether a watched body went on whole ([`Upstream::watch`]).
pub type Ended = futures::future::LocalBoxFuture<'static, bool>;

/// A WebSocket the provider opened ([`Upstream::connect`]): the glue's own socket, which
/// the core only hands back to it.
pub struct Socket(pub Box<dyn std::any::Any>);

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Socket")
    }
}

/// What a provider made of a WebSocket upgrade ([`Upstream::connect`]).
#[derive(Debug)]
pub enum Connected {
    /// It switched protocols: the session is open.
    Open(Socket),
    /// It answered instead (a refused key's 401, a 429, …), its body read up to the
    /// request's `max_response_bytes`.
    Answered(HttpResponse),
}
