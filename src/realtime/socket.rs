//! A proxied realtime WebSocket session as the vault sees it go by: the bytes each way, the
//! usage the provider reports on the socket (or, for speech, the text the caller asked to
//! be spoken), whether the provider said on the socket that it refused the key, and what
//! must not pass: a message over [`MAX_MESSAGE_BYTES`], a caller's message that carries a
//! key of its own (the vault adds the key), a provider's error that quotes the key. Fed
//! frame by frame by the Worker's pipe; it never changes a frame, it only says whether the
//! frame passes. A provider's message is parsed only when it may hold what is read (a
//! cheap substring test first) and is at most [`MAX_READ_BYTES`], so audio and long
//! transcripts cost no parse; a caller's text to be spoken is always read, and counted
//! whole when it cannot be (never taken for less).

use serde_json::Value;

use crate::metering::Usage;
use crate::providers::realtime::SocketDialect;
use crate::redact::ProviderText;

/// The longest text message read for usage or a refusal (usage events are small; a
/// transcript or an audio chunk in base64 is passed on unread).
pub const MAX_READ_BYTES: usize = 64 * 1024;
/// The longest message passed either way (the runtime's own limit is 32 MiB): a session
/// holds at most one message at a time, and no more than this.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// The longest refusal message kept.
const MAX_MESSAGE_CHARS: usize = 300;

/// What the provider said on the socket about the key it was opened with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The account is out of quota or credit (the key is good).
    pub quota: bool,
    /// The provider's words, cut short; may quote the key: clean before showing.
    pub message: String,
}

/// Whether a frame goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    On,
    /// It does not: the session ends, both sides closed with this code and reason.
    End(u16, &'static str),
}

const TOO_BIG: Pass = Pass::End(1009, "a message is larger than the vault passes on");
const OWN_KEY: Pass = Pass::End(
    4400,
    "a message may not carry a key: the vault adds the key",
);
const QUOTES_KEY: Pass = Pass::End(1011, "the provider's message quoted the key");

/// One session's tally.
pub struct Tally {
    dialect: SocketDialect,
    /// What recognises the key in the provider's words.
    text: ProviderText,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub usage: Usage,
    /// Some usage was read (else the session is recorded as its bytes and duration only).
    pub metered: bool,
    /// The provider refused the key on the socket (after accepting the upgrade).
    pub refused: Option<Refusal>,
    /// Deepgram: its closing `Metadata` was read; the seconds its `Results` covered.
    metadata: bool,
    results_seconds: f64,
    /// ElevenLabs Scribe: the audio's bytes a second (its `audio_format`).
    audio_rate: f64,
}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tally")
            .field("dialect", &self.dialect)
            .field("bytes_up", &self.bytes_up)
            .field("bytes_down", &self.bytes_down)
            .finish_non_exhaustive()
    }
}

impl Tally {
    /// A tally for a session in `dialect` opened with the key `text` recognises.
    pub fn new(dialect: SocketDialect, text: ProviderText) -> Self {
        Self {
            dialect,
            text,
            bytes_up: 0,
            bytes_down: 0,
            usage: Usage::default(),
            metered: false,
            refused: None,
            metadata: false,
            results_seconds: 0.0,
            audio_rate: 32_000.0,
        }
    }

    /// ElevenLabs Scribe's `audio_format` (`pcm_<rate>`, 16-bit; `ulaw_8000`, 8-bit), as
    /// the session's query gives it; its default is `pcm_16000`.
    pub fn audio_format(mut self, format: Option<&str>) -> Self {
        let rate = match format {
            Some("ulaw_8000") => Some(8_000.0),
            Some(f) => f
                .strip_prefix("pcm_")
                .and_then(|r| r.parse::<u32>().ok())
                .filter(|r| (8_000..=48_000).contains(r))
                .map(|r| f64::from(r) * 2.0),
            None => None,
        };
        if let Some(r) = rate {
            self.audio_rate = r;
        }
        self
    }

    /// What recognises the key in the provider's words.
    pub fn provider_text(&self) -> &ProviderText {
        &self.text
    }

    /// A binary frame from the caller to the provider (audio).
    pub fn up_binary(&mut self, len: usize) -> Pass {
        self.bytes_up += len as u64;
        if len > MAX_MESSAGE_BYTES {
            return TOO_BIG;
        }
        Pass::On
    }

    /// A binary frame from the provider to the caller (audio).
    pub fn down_binary(&mut self, len: usize) -> Pass {
        self.bytes_down += len as u64;
        if len > MAX_MESSAGE_BYTES {
            return TOO_BIG;
        }
        Pass::On
    }

    /// A text message from the caller: the text a speech session was asked to speak.
    pub fn up_text(&mut self, text: &str) -> Pass {
        self.bytes_up += text.len() as u64;
        if text.len() > MAX_MESSAGE_BYTES {
            return TOO_BIG;
        }
        if self.dialect == SocketDialect::ElevenLabsStt {
            self.scribe_audio(text);
            return Pass::On;
        }
        let speech = matches!(
            self.dialect,
            SocketDialect::ElevenLabsTts | SocketDialect::DeepgramSpeak
        );
        if !speech {
            return Pass::On;
        }
        let read = (text.len() <= MAX_READ_BYTES)
            .then(|| serde_json::from_slice::<Value>(text.as_bytes()).ok())
            .flatten();
        let Some(v) = read else {
            // Not read: what it asks to be spoken is not known, and is never taken for
            // less than all of it. A key of its own would hide in it as well.
            if self.dialect == SocketDialect::ElevenLabsTts && text.contains("xi_api_key") {
                return OWN_KEY;
            }
            self.spoken(text.chars().count() as u64);
            return Pass::On;
        };
        if self.dialect == SocketDialect::ElevenLabsTts {
            // ElevenLabs takes a key in the first message too: the vault's is in the header,
            // and one here (a vault token, pasted as ElevenLabs' examples show) goes nowhere.
            if v.get("xi_api_key").is_some() || v.get("authorization").is_some() {
                return OWN_KEY;
            }
        } else if v["type"] != "Speak" {
            return Pass::On;
        }
        if let Some(t) = v.get("text").and_then(Value::as_str) {
            // ElevenLabs' opening message is a single space that speaks nothing.
            self.spoken(t.trim().chars().count() as u64);
        }
        Pass::On
    }

    /// The seconds of audio in a Scribe `input_audio_chunk` (its base64 measured, not
    /// decoded: no copy of the audio is made).
    fn scribe_audio(&mut self, text: &str) {
        const FIELD: &str = "\"audio_base_64\":\"";
        let Some(at) = text.find(FIELD) else {
            return;
        };
        let b64 = &text[at + FIELD.len()..];
        let len = b64.find('"').unwrap_or(b64.len());
        let padding = b64[..len].bytes().rev().take_while(|b| *b == b'=').count();
        let bytes = (len / 4 * 3).saturating_sub(padding);
        if bytes > 0 {
            self.usage.audio_seconds += bytes as f64 / self.audio_rate;
            self.metered = true;
        }
    }

    fn spoken(&mut self, n: u64) {
        if n > 0 {
            self.usage.characters += n;
            self.metered = true;
        }
    }

    /// A text message from the provider: usage, the model, or a refusal of the key (a
    /// refusal that quotes the key in a form the provider did not mask ends the session:
    /// the caller never sees the key).
    pub fn down_text(&mut self, text: &str) -> Pass {
        self.bytes_down += text.len() as u64;
        if text.len() > MAX_MESSAGE_BYTES {
            return TOO_BIG;
        }
        if text.len() > MAX_READ_BYTES {
            return Pass::On;
        }
        let interesting = match self.dialect {
            SocketDialect::OpenAi => {
                text.contains("\"usage\"")
                    || text.contains("\"error\"")
                    || text.contains("session.created")
            }
            SocketDialect::Deepgram => text.contains("Metadata") || text.contains("\"Results\""),
            SocketDialect::DeepgramSpeak => false,
            SocketDialect::ElevenLabsStt | SocketDialect::ElevenLabsTts => {
                text.contains("error") || text.contains("quota") || text.contains("auth")
            }
        };
        if !interesting {
            return Pass::On;
        }
        let Ok(v) = serde_json::from_slice::<Value>(text.as_bytes()) else {
            return Pass::On;
        };
        let refused = self.refused.is_some();
        match self.dialect {
            SocketDialect::OpenAi => self.openai(&v),
            SocketDialect::Deepgram | SocketDialect::DeepgramSpeak => self.deepgram(&v),
            SocketDialect::ElevenLabsStt | SocketDialect::ElevenLabsTts => self.elevenlabs(&v),
        }
        let error = v.get("error").is_some()
            || v["message_type"]
                .as_str()
                .is_some_and(|t| t.contains("error"));
        if (error || self.refused.is_some() != refused) && self.text.quotes_key(text) {
            return QUOTES_KEY;
        }
        Pass::On
    }

    /// The provider closed the socket with `code` and `reason`: a close whose reason names
    /// a bad key is a refusal too (OpenAI closes 3000 `invalid_request_error.invalid_api_key`,
    /// ElevenLabs 1008 "Invalid API key"), even when no message said so first. Gives the
    /// reason to pass on: none when it quotes the key.
    pub fn provider_closed(&mut self, code: u16, reason: &str) -> String {
        if self.text.quotes_key(reason) {
            return String::new();
        }
        if self.refused.is_some() || code == 1000 {
            return reason.to_owned();
        }
        let lower = reason.to_ascii_lowercase();
        let quota = lower.contains("insufficient_quota") || lower.contains("quota_exceeded");
        if quota || lower.contains("invalid_api_key") || lower.contains("invalid api key") {
            self.refused = Some(Refusal {
                quota,
                message: cut(reason),
            });
        }
        reason.to_owned()
    }

    /// The usage to record: Deepgram's final `Metadata` when it came, else the seconds its
    /// transcripts covered (a session cut before `CloseStream` never gets `Metadata`).
    pub fn usage(&self) -> Usage {
        let mut usage = self.usage.clone();
        if self.dialect == SocketDialect::Deepgram && !self.metadata {
            usage.audio_seconds += self.results_seconds;
        }
        usage
    }

    fn openai(&mut self, v: &Value) {
        match v["type"].as_str() {
            Some("session.created") => {
                if let Some(m) = v["session"]["model"].as_str() {
                    self.usage.model = Some(cut(m));
                }
            }
            Some("response.done") => self.tokens(&v["response"]["usage"]),
            Some("error") => {
                let code = v["error"]["code"].as_str().unwrap_or_default();
                let quota = code == "insufficient_quota";
                if quota || code == "invalid_api_key" {
                    self.refused = Some(Refusal {
                        quota,
                        message: cut(v["error"]["message"].as_str().unwrap_or(code)),
                    });
                }
            }
            // Transcription: tokens, or seconds of audio.
            Some(t) if t.ends_with("input_audio_transcription.completed") => {
                let usage = &v["usage"];
                if let Some(s) = usage["seconds"].as_f64() {
                    self.usage.audio_seconds += s.max(0.0);
                    self.metered = true;
                } else {
                    self.tokens(usage);
                }
            }
            _ => {}
        }
    }

    fn tokens(&mut self, usage: &Value) {
        let (i, o) = (
            usage["input_tokens"].as_u64(),
            usage["output_tokens"].as_u64(),
        );
        if i.is_some() || o.is_some() {
            self.usage.input_tokens += i.unwrap_or(0);
            self.usage.output_tokens += o.unwrap_or(0);
            self.metered = true;
        }
    }

    fn deepgram(&mut self, v: &Value) {
        // Interim results repeat the same audio: only a final one counts.
        if v["type"] == "Results" && v["is_final"] == true {
            if let Some(d) = v["duration"].as_f64() {
                self.results_seconds += d.max(0.0);
                self.metered = true;
            }
        }
        if v["type"] == "Metadata" {
            if let Some(d) = v["duration"].as_f64() {
                self.usage.audio_seconds += d.max(0.0);
                self.metadata = true;
                self.metered = true;
            }
            if let Some(m) = v["model_info"]
                .as_object()
                .and_then(|o| o.values().next())
                .and_then(|m| m["name"].as_str())
            {
                self.usage.model = Some(cut(m));
            }
        }
    }

    fn elevenlabs(&mut self, v: &Value) {
        let kind = v["message_type"].as_str().unwrap_or_default();
        let error = v["error"].as_str().unwrap_or_default();
        let quota = kind == "quota_exceeded" || error.contains("quota");
        let auth =
            kind == "auth_error" || error.contains("api_key") || error.contains("unauthorized");
        if quota || auth {
            let message = v["message"]
                .as_str()
                .or(v["error"].as_str())
                .unwrap_or(kind);
            self.refused = Some(Refusal {
                quota,
                message: cut(message),
            });
        }
    }
}

fn cut(s: &str) -> String {
    s.chars().take(MAX_MESSAGE_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;
    use crate::providers::realtime::{RealtimeKind, SocketEndpoint};

    const KEY: &str = "sk_live_9f8e7d6c5b4a39281706f5e4d3c2b1a0";

    fn tally(dialect: SocketDialect) -> Tally {
        Tally::new(dialect, ProviderText::new(&SecretKey::new(KEY.into())))
    }

    #[test]
    fn openai_usage_adds_up_and_a_bad_key_is_a_refusal_by_message_or_by_close() {
        let mut t = tally(SocketDialect::OpenAi);
        t.down_text(
            r#"{"type":"response.done","response":{"usage":{"input_tokens":7,"output_tokens":3}}}"#,
        );
        t.down_text(r#"{"type":"conversation.item.input_audio_transcription.completed","usage":{"type":"duration","seconds":2.5}}"#);
        t.down_text(r#"{"type":"response.audio.delta","delta":"usage"}"#);
        assert_eq!(
            (
                t.usage().input_tokens,
                t.usage().output_tokens,
                t.usage().audio_seconds
            ),
            (7, 3, 2.5)
        );
        assert!(t.metered && t.refused.is_none());
        let masked = r#"{"type":"error","error":{"type":"invalid_request_error","code":"invalid_api_key","message":"Incorrect API key provided: sk_li***b1a0."}}"#;
        assert_eq!(t.down_text(masked), Pass::On);
        assert_eq!(t.refused.as_ref().map(|r| r.quota), Some(false));
        let mut t = tally(SocketDialect::OpenAi);
        assert_eq!(
            t.provider_closed(3000, "invalid_request_error.invalid_api_key"),
            "invalid_request_error.invalid_api_key"
        );
        assert!(t.refused.is_some());
        // Other errors and a normal close refuse nothing.
        let mut t = tally(SocketDialect::OpenAi);
        t.down_text(r#"{"type":"error","error":{"code":"session_expired","message":"Your session hit the maximum duration of 60 minutes."}}"#);
        t.provider_closed(1000, "invalid_api_key");
        t.provider_closed(4000, "beta_api_shape_disabled");
        assert!(t.refused.is_none());
    }

    #[test]
    fn a_provider_error_or_close_that_quotes_the_key_does_not_pass() {
        let mut t = tally(SocketDialect::OpenAi);
        let quoting = format!(
            r#"{{"type":"error","error":{{"code":"invalid_api_key","message":"Incorrect API key provided: {KEY}."}}}}"#
        );
        assert_eq!(t.down_text(&quoting), QUOTES_KEY);
        assert_eq!(t.provider_closed(1008, &format!("bad key {KEY}")), "");
        let mut t = tally(SocketDialect::ElevenLabsTts);
        let quoting = format!(r#"{{"message":"Invalid API key {KEY}","error":"invalid_api_key"}}"#);
        assert_eq!(t.down_text(&quoting), QUOTES_KEY);
        // Audio and ordinary messages are not searched.
        assert_eq!(t.down_text(&format!(r#"{{"audio":"{KEY}"}}"#)), Pass::On);
    }

    #[test]
    fn deepgram_counts_its_metadata_or_else_its_final_results() {
        let mut t = tally(SocketDialect::Deepgram);
        t.down_text(r#"{"type":"Results","is_final":false,"duration":1.0}"#);
        t.down_text(r#"{"type":"Results","is_final":true,"duration":1.25}"#);
        t.down_text(r#"{"type":"Results","is_final":true,"duration":0.5}"#);
        assert_eq!(t.usage().audio_seconds, 1.75);
        t.down_text(
            r#"{"type":"Metadata","duration":2.0,"model_info":{"m":{"name":"2-general-nova"}}}"#,
        );
        assert_eq!(t.usage().audio_seconds, 2.0);
        assert_eq!(t.usage().model.as_deref(), Some("2-general-nova"));
        // Listen's control messages speak nothing.
        t.up_text(r#"{"type":"KeepAlive"}"#);
        assert_eq!(t.usage().characters, 0);
        // Speak: the characters asked for, however the JSON writes them; flushes and
        // binary audio count bytes only.
        let mut t = tally(SocketDialect::DeepgramSpeak);
        t.up_text(r#"{"type":"Speak","text":"Grüße"}"#);
        t.up_text(r#"{"type":"Sp\u0065ak","\u0074ext":"Hi"}"#);
        t.up_text(r#"{"type":"Flush"}"#);
        assert_eq!(t.down_binary(100), Pass::On);
        assert_eq!((t.usage().characters, t.bytes_down), (7, 100));
    }

    #[test]
    fn elevenlabs_counts_spoken_text_and_reads_its_refusals() {
        let mut t = tally(SocketDialect::ElevenLabsTts);
        assert_eq!(
            t.up_text(r#"{"text":" ","voice_settings":{"stability":0.5}}"#),
            Pass::On
        );
        t.up_text(r#"{"text":"Hello "}"#);
        t.up_text(r#"{"\u0074ext":"Hi"}"#);
        t.up_text(r#"{"text":""}"#);
        assert_eq!(t.usage().characters, 7);
        // What cannot be read is counted whole: never taken for less.
        let long = format!(r#"{{"text":"{}"}}"#, "a".repeat(MAX_READ_BYTES));
        t.up_text(&long);
        assert_eq!(t.usage().characters, 7 + long.chars().count() as u64);
        t.down_text(r#"{"message":"Invalid API key","error":"invalid_api_key","code":1008}"#);
        assert_eq!(t.refused.as_ref().map(|r| r.quota), Some(false));
        let mut t = tally(SocketDialect::ElevenLabsStt);
        t.down_text(r#"{"message_type":"quota_exceeded","error":"Quota exceeded"}"#);
        assert_eq!(t.refused.as_ref().map(|r| r.quota), Some(true));
        let mut t = tally(SocketDialect::ElevenLabsStt);
        t.down_text(r#"{"message_type":"partial_transcript","text":"an error in auth"}"#);
        assert!(t.refused.is_none());
    }

    #[test]
    fn scribe_audio_is_measured_by_its_format() {
        let chunk = |bytes: usize| {
            let b64 = base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                vec![7u8; bytes],
            );
            format!(
                r#"{{"message_type":"input_audio_chunk","audio_base_64":"{b64}","commit":false}}"#
            )
        };
        let mut t = tally(SocketDialect::ElevenLabsStt);
        t.up_text(&chunk(32_000));
        t.up_text(&chunk(16_001));
        assert!(
            (t.usage().audio_seconds - 48_001.0 / 32_000.0).abs() < 1e-9,
            "{}",
            t.usage().audio_seconds
        );
        let mut t = tally(SocketDialect::ElevenLabsStt).audio_format(Some("ulaw_8000"));
        t.up_text(&chunk(8_000));
        assert_eq!(t.usage().audio_seconds, 1.0);
        let mut t = tally(SocketDialect::ElevenLabsStt).audio_format(Some("pcm_48000"));
        t.up_text(&chunk(96_000));
        t.up_text(r#"{"message_type":"commit"}"#);
        assert_eq!(t.usage().audio_seconds, 1.0);
    }

    #[test]
    fn a_callers_own_key_in_a_message_ends_the_session() {
        let mut t = tally(SocketDialect::ElevenLabsTts);
        assert_eq!(
            t.up_text(r#"{"text":" ","xi_api_key":"eyJhbGciOi.vault.token"}"#),
            OWN_KEY
        );
        assert_eq!(
            t.up_text(r#"{"text":" ","authorization":"Bearer x"}"#),
            OWN_KEY
        );
        let long = format!(
            r#"{{"text":"{}","xi_api_key":"x"}}"#,
            "a".repeat(MAX_READ_BYTES)
        );
        assert_eq!(t.up_text(&long), OWN_KEY);
    }

    #[test]
    fn a_message_too_large_ends_the_session_and_a_long_one_goes_by_unread() {
        let mut t = tally(SocketDialect::OpenAi);
        let pad = "x".repeat(MAX_READ_BYTES);
        t.down_text(&format!(r#"{{"type":"response.done","pad":"{pad}","response":{{"usage":{{"input_tokens":7}}}}}}"#));
        assert!(!t.metered);
        assert!(t.bytes_down > MAX_READ_BYTES as u64);
        assert_eq!(t.up_binary(MAX_MESSAGE_BYTES), Pass::On);
        assert_eq!(t.up_binary(MAX_MESSAGE_BYTES + 1), TOO_BIG);
        assert_eq!(t.down_binary(MAX_MESSAGE_BYTES + 1), TOO_BIG);
    }

    #[test]
    fn an_endpoint_path_takes_one_id_where_it_has_braces() {
        let e = SocketEndpoint {
            path: "/v1/text-to-speech/{}/stream-input",
            kind: RealtimeKind::Tts,
            dialect: SocketDialect::ElevenLabsTts,
        };
        assert!(e.matches("/v1/text-to-speech/JBFqnCBsd6RMkjVDRZzb/stream-input"));
        for bad in [
            "/v1/text-to-speech//stream-input",
            "/v1/text-to-speech/a/b/stream-input",
            "/v1/text-to-speech/../stream-input",
            "/v1/text-to-speech/a%2F/stream-input",
            "/v1/text-to-speech/x/stream-input/",
            "/v1/text-to-speech/x",
        ] {
            assert!(!e.matches(bad), "{bad}");
        }
    }
}
