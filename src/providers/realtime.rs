//! What a provider's short-lived browser credential is: which kinds of realtime session it
//! mints, its lifetime limits, the minting call, how its answer is read, and where and how
//! a browser then connects. Each provider that has one declares it beside its catalog
//! entry (`ProviderInfo::realtime`); `crate::realtime` carries the minting out.

use serde::Serialize;
use serde_json::Value;

use super::Target;
use crate::domain::{Capability, Timestamp};
use crate::http::HttpResponse;

crate::wire_enum! {
    /// What a realtime session does: speech in, speech out, or both with a model between.
    pub enum RealtimeKind {
        Stt = "stt",
        Tts = "tts",
        Conversation = "conversation",
    }
}

impl RealtimeKind {
    /// The capability whose key serves the kind (a conversation is a model's: `llm`).
    pub fn capability(self) -> Capability {
        match self {
            RealtimeKind::Stt => Capability::Stt,
            RealtimeKind::Tts => Capability::Tts,
            RealtimeKind::Conversation => Capability::Llm,
        }
    }
}

/// A provider's realtime credential.
#[derive(Debug)]
pub struct Realtime {
    pub kinds: &'static [RealtimeKind],
    /// The shortest and longest lifetime the provider grants, in seconds.
    pub min_seconds: u64,
    pub max_seconds: u64,
    /// The provider sets the lifetime itself (`max_seconds`); the request cannot shorten it.
    pub fixed: bool,
    /// Kinds that need a `voice_id` (the voice is in the URL the browser connects to).
    pub needs_voice: &'static [RealtimeKind],
    /// The minting call for one session.
    pub mint: fn(&Minting<'_>) -> MintCall,
    /// The credential in the provider's answer (a 2xx), if it is there.
    pub read: fn(&HttpResponse) -> Option<Token>,
    /// Where the browser takes the credential.
    pub connect: fn(&Minting<'_>, &str) -> Connect,
    /// The realtime WebSockets the vault's own proxy opens with the stored key
    /// (`/v1/realtime/{provider}/ws/…`): the allow-list.
    pub sockets: &'static [SocketEndpoint],
}

/// A realtime WebSocket endpoint of a provider, which the vault opens with the key in the
/// header the provider's REST calls carry it in.
#[derive(Debug)]
pub struct SocketEndpoint {
    /// The path under the provider's base URL; a `{}` segment is one id (a voice): letters,
    /// digits, `-` and `_`, at most 100.
    pub path: &'static str,
    /// The kind of session, whose capability's key it takes.
    pub kind: RealtimeKind,
    /// How its messages report usage and a refused key.
    pub dialect: SocketDialect,
}

/// The message shapes of a provider's realtime socket, as far as the vault reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketDialect {
    /// OpenAI Realtime: `response.done` and transcription events carry `usage`; `error`
    /// events carry `error.code`.
    OpenAi,
    /// Deepgram listen: `Metadata` (and each final `Results`) carries the audio's
    /// `duration`.
    Deepgram,
    /// Deepgram speak: the caller's `Speak` messages carry the text.
    DeepgramSpeak,
    /// ElevenLabs realtime speech to text: `message_type`s, errors among them.
    ElevenLabsStt,
    /// ElevenLabs text to speech stream-input: the caller's `text` messages.
    ElevenLabsTts,
}

impl SocketEndpoint {
    /// Whether `path` (no query) is this endpoint.
    pub fn matches(&self, path: &str) -> bool {
        let (mut want, mut got) = (self.path.split('/'), path.split('/'));
        loop {
            match (want.next(), got.next()) {
                (None, None) => return true,
                (Some("{}"), Some(id)) => {
                    let ok = !id.is_empty()
                        && id.len() <= 100
                        && id
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                    if !ok {
                        return false;
                    }
                }
                (Some(w), Some(g)) if w == g => {}
                _ => return false,
            }
        }
    }
}

/// One minting, as asked for and bounded.
pub struct Minting<'a> {
    pub kind: RealtimeKind,
    pub model: Option<&'a str>,
    pub voice_id: Option<&'a str>,
    /// The lifetime asked of the provider, already within its limits and the vault's.
    pub ttl_seconds: u64,
    pub now: Timestamp,
    pub target: &'a Target<'a>,
}

/// The provider's minting call: a POST to `path` on endpoint `endpoint`, with this body
/// (none: an empty body).
pub struct MintCall {
    pub endpoint: usize,
    pub path: String,
    pub body: Option<Value>,
}

/// A minted credential as the provider answered it.
pub struct Token {
    pub value: String,
    /// When it expires, when the answer says (Unix seconds, or seconds from now).
    pub expires_at_unix: Option<u64>,
    pub expires_in: Option<u64>,
}

/// Where and how a browser uses the credential.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Connect {
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<String>>,
    /// The query parameter of `url` that carries the credential, where that is how.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_parameter: Option<&'static str>,
    /// The region a regional SDK is given beside the credential (Azure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

impl Connect {
    pub fn url(url: String) -> Self {
        Self {
            url,
            protocols: None,
            query_parameter: None,
            region: None,
        }
    }
}

/// `path` under endpoint `index` as a WebSocket URL (`https`→`wss`, `http`→`ws`), so a
/// redirected base (a test's fake, a regional host) is where the browser goes too.
pub fn ws_url(target: &Target<'_>, index: usize, path: &str) -> String {
    let url = target.url_at(index, path);
    if let Some(rest) = url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        url
    }
}

/// `value` percent-encoded for a query string.
pub fn query_value(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// The string at `field` of a JSON answer, if it is a non-empty one.
pub fn json_field(answer: &HttpResponse, field: &str) -> Option<String> {
    answer
        .json()?
        .get(field)?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}
