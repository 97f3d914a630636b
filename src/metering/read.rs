//! Reading what a call used from the provider's answer as it streams past: each provider's
//! dialect puts its usage somewhere of its own (OpenAI-style `usage`, Anthropic's
//! `message_start` and cumulative `message_delta`, Gemini's last `usageMetadata`, Deepgram's
//! `metadata.duration`, …). A reader keeps only small state: the event being read of a
//! stream, or at most [`MAX_JSON_BYTES`] of a plain answer.

use serde_json::Value;

use super::sse::{Event, Events};
use super::Usage;

/// The most of a plain (not streamed) answer kept to read its usage: more is not usage
/// (audio, a long transcript), and such an answer is recorded incomplete.
pub const MAX_JSON_BYTES: usize = 1024 * 1024;

crate::wire_enum! {
    /// Where a provider's answers carry their usage.
    pub enum Dialect {
        /// `usage.{prompt_tokens,completion_tokens}` (chat, embeddings; OpenRouter, Groq,
        /// Mistral alike), `usage.{input_tokens,output_tokens}` (Responses), `duration` or
        /// `usage.seconds` (transcriptions).
        OpenAi = "openai",
        /// `usage.{input_tokens,output_tokens}`; streamed: `message_start`, then
        /// `message_delta`s whose `output_tokens` is cumulative.
        Anthropic = "anthropic",
        /// `usageMetadata.{promptTokenCount,candidatesTokenCount}`, the last one seen.
        Gemini = "gemini",
        /// `metadata.duration` (seconds of audio transcribed).
        Deepgram = "deepgram",
        /// Speech to text: the last word's `end` (seconds).
        ElevenLabs = "elevenlabs",
        /// Speech to text: `Duration` in 100-nanosecond ticks.
        Azure = "azure",
        /// `prompt_eval_count` and `eval_count` on the final object.
        Ollama = "ollama",
    }
}

/// Reads one answer's usage as its bytes go by.
pub struct Reader {
    dialect: Dialect,
    /// The answer is a stream of server-sent events.
    streamed: bool,
    events: Events,
    /// A plain answer, kept up to [`MAX_JSON_BYTES`].
    json: Vec<u8>,
    overflow: bool,
    usage: Usage,
    /// A token count (or a duration) was read.
    counted: bool,
    /// The stream said it was complete (`[DONE]`, `message_stop`, a finish reason).
    done: bool,
}

impl Reader {
    /// A reader for an answer in `dialect` whose content type is `content_type`.
    pub fn new(dialect: Dialect, content_type: Option<&str>) -> Self {
        let streamed = content_type.is_some_and(|t| {
            t.trim()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        });
        Self {
            dialect,
            streamed,
            events: Events::default(),
            json: Vec::new(),
            overflow: false,
            usage: Usage::default(),
            counted: false,
            done: false,
        }
    }

    /// The next bytes of the answer.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.streamed {
            for event in self.events.feed(chunk) {
                self.event(&event);
            }
        } else if self.json.len() + chunk.len() <= MAX_JSON_BYTES {
            self.json.extend_from_slice(chunk);
        } else {
            self.overflow = true;
        }
    }

    /// What the answer used. `ended`: its body arrived to its end (false when the caller
    /// or the provider cut it short); a usage that never arrived is incomplete, never zero.
    pub fn finish(mut self, ended: bool) -> Usage {
        if self.streamed {
            if let Some(event) = self.events.finish() {
                self.event(&event);
            }
        } else if ended && !self.overflow {
            if let Ok(v) = serde_json::from_slice::<Value>(&self.json) {
                self.plain(&v);
            }
        }
        let complete = ended
            && self.counted
            && (!self.streamed || self.done || self.dialect == Dialect::Gemini);
        self.usage.incomplete = !complete;
        self.usage
    }

    fn event(&mut self, event: &Event) {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.done = true;
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(data.as_bytes()) else {
            return;
        };
        match self.dialect {
            Dialect::Anthropic => self.anthropic_event(&v),
            Dialect::Gemini => {
                self.gemini(&v);
                let finished = v
                    .pointer("/candidates/0/finishReason")
                    .is_some_and(|r| r.is_string());
                self.done |= finished;
            }
            _ => {
                // OpenAI-style: any chunk carrying usage (with `stream_options.include_usage`,
                // the one before `[DONE]`); the Responses API's `response.completed`.
                if v.get("type").and_then(Value::as_str) == Some("response.completed") {
                    self.done = true;
                    if let Some(r) = v.get("response") {
                        self.openai(r);
                    }
                } else {
                    self.openai(&v);
                    if let Some(x) = v.pointer("/x_groq") {
                        self.openai(x);
                    }
                }
            }
        }
    }

    fn plain(&mut self, v: &Value) {
        match self.dialect {
            Dialect::OpenAi => self.openai(v),
            Dialect::Anthropic => {
                self.model(v);
                self.anthropic_usage(v.get("usage"));
            }
            Dialect::Gemini => self.gemini(v),
            Dialect::Deepgram => {
                if let Some(d) = v.pointer("/metadata/duration").and_then(Value::as_f64) {
                    self.seconds(d);
                }
            }
            Dialect::ElevenLabs => {
                let end = v.get("words").and_then(Value::as_array).and_then(|w| {
                    w.iter()
                        .filter_map(|x| x.get("end")?.as_f64())
                        .reduce(f64::max)
                });
                if let Some(end) = end {
                    self.seconds(end);
                }
            }
            Dialect::Azure => {
                if let Some(ticks) = v.get("Duration").and_then(Value::as_f64) {
                    self.seconds(ticks / 10_000_000.0);
                }
            }
            Dialect::Ollama => {
                self.model(v);
                let input = v.get("prompt_eval_count").and_then(Value::as_u64);
                let output = v.get("eval_count").and_then(Value::as_u64);
                if input.is_some() || output.is_some() {
                    self.tokens(input, output);
                } else {
                    self.openai(v);
                }
            }
        }
    }

    fn openai(&mut self, v: &Value) {
        self.model(v);
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            let input = u
                .get("prompt_tokens")
                .or_else(|| u.get("input_tokens"))
                .and_then(Value::as_u64);
            let output = u
                .get("completion_tokens")
                .or_else(|| u.get("output_tokens"))
                .and_then(Value::as_u64);
            if input.is_some() || output.is_some() {
                self.tokens(input, output);
            }
            if let Some(s) = u.get("seconds").and_then(Value::as_f64) {
                self.seconds(s);
            }
        }
        if let Some(d) = v.get("duration").and_then(Value::as_f64) {
            self.seconds(d);
        }
    }

    fn anthropic_event(&mut self, v: &Value) {
        match v.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                if let Some(m) = v.get("message") {
                    self.model(m);
                    self.anthropic_usage(m.get("usage"));
                }
            }
            // Cumulative: the last one holds the count (summing would count twice).
            Some("message_delta") => {
                if let Some(out) = v.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                    self.usage.output_tokens = out;
                    self.counted = true;
                }
            }
            Some("message_stop") => self.done = true,
            _ => {}
        }
    }

    fn anthropic_usage(&mut self, u: Option<&Value>) {
        let Some(u) = u else { return };
        let input = u.get("input_tokens").and_then(Value::as_u64);
        let output = u.get("output_tokens").and_then(Value::as_u64);
        if input.is_some() || output.is_some() {
            self.tokens(input, output);
        }
    }

    /// Gemini: the last `usageMetadata` seen holds the whole count.
    fn gemini(&mut self, v: &Value) {
        if let Some(m) = v.get("modelVersion").and_then(Value::as_str) {
            self.usage.model = Some(clip(m));
        }
        if let Some(u) = v.get("usageMetadata") {
            let input = u.get("promptTokenCount").and_then(Value::as_u64);
            let output = u.get("candidatesTokenCount").and_then(Value::as_u64);
            if input.is_some() || output.is_some() {
                self.tokens(input, output);
            }
        }
    }

    fn model(&mut self, v: &Value) {
        if let Some(m) = v.get("model").and_then(Value::as_str) {
            self.usage.model = Some(clip(m));
        }
    }

    /// Token counts as the answer states them (each the whole so far, never added up).
    fn tokens(&mut self, input: Option<u64>, output: Option<u64>) {
        if let Some(i) = input {
            self.usage.input_tokens = i;
        }
        if let Some(o) = output {
            self.usage.output_tokens = o;
        }
        self.counted = true;
    }

    fn seconds(&mut self, s: f64) {
        if s.is_finite() && s >= 0.0 {
            self.usage.audio_seconds = s;
            self.counted = true;
        }
    }
}

/// A model name as a provider reports it, bounded (it is stored per usage row).
fn clip(m: &str) -> String {
    m.chars()
        .filter(|c| !crate::redact::is_hidden(*c))
        .take(128)
        .collect()
}

/// The characters a text-to-speech request asks to be spoken (what TTS bills): the text
/// field of its JSON body, or the text of an SSML body with its markup left out.
pub fn spoken_characters(dialect: Dialect, body: &[u8]) -> Option<u64> {
    if dialect == Dialect::Azure {
        let ssml = std::str::from_utf8(body).ok()?;
        let mut inside = false;
        let mut n = 0u64;
        for c in ssml.chars() {
            match c {
                '<' => inside = true,
                '>' => inside = false,
                _ if !inside => n += 1,
                _ => {}
            }
        }
        return Some(n);
    }
    let v: Value = serde_json::from_slice(body).ok()?;
    let field = match dialect {
        Dialect::OpenAi => "input",
        _ => "text",
    };
    v.get(field)
        .and_then(Value::as_str)
        .map(|t| t.chars().count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dialect: Dialect, streamed: bool, chunks: &[&str], ended: bool) -> Usage {
        let mut r = Reader::new(
            dialect,
            Some(if streamed {
                "text/event-stream; charset=utf-8"
            } else {
                "application/json"
            }),
        );
        for c in chunks {
            r.feed(c.as_bytes());
        }
        r.finish(ended)
    }

    #[test]
    fn openai_chat_counts_plain_and_streamed_with_its_usage_chunk() {
        let plain = read(
            Dialect::OpenAi,
            false,
            &[
                r#"{"id":"c","model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}"#,
            ],
            true,
        );
        assert_eq!(
            (plain.input_tokens, plain.output_tokens, plain.incomplete),
            (9, 12, false)
        );
        assert_eq!(plain.model.as_deref(), Some("gpt-4o-mini"));
        let stream = [
            "data: {\"model\":\"gpt-4o-mini\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n",
        ];
        let streamed = read(Dialect::OpenAi, true, &stream, true);
        assert_eq!(
            (
                streamed.input_tokens,
                streamed.output_tokens,
                streamed.incomplete
            ),
            (5, 2, false)
        );
        // Cut before its usage chunk: incomplete, never zero taken for the count.
        let cut = read(Dialect::OpenAi, true, &stream[..1], false);
        assert!(cut.incomplete);
        // Usage seen but no [DONE] and the body never ended: still incomplete.
        let no_done = read(
            Dialect::OpenAi,
            true,
            &["data: {\"usage\":{\"prompt_tokens\":5}}\n\n"],
            false,
        );
        assert!(no_done.incomplete);
    }

    #[test]
    fn the_responses_api_counts_from_response_completed() {
        let s = "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-5\",\"usage\":{\"input_tokens\":4,\"output_tokens\":7}}}\n\n";
        let u = read(Dialect::OpenAi, true, &[s], true);
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.incomplete),
            (4, 7, false)
        );
    }

    #[test]
    fn anthropic_takes_the_last_cumulative_message_delta() {
        let stream = [
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":10}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ];
        let u = read(Dialect::Anthropic, true, &stream, true);
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.incomplete),
            (25, 15, false)
        );
        let cut = read(Dialect::Anthropic, true, &stream[..2], false);
        assert!(cut.incomplete);
        assert_eq!(cut.input_tokens, 25);
        let plain = read(
            Dialect::Anthropic,
            false,
            &[
                r#"{"type":"message","model":"claude-x","usage":{"input_tokens":3,"output_tokens":4}}"#,
            ],
            true,
        );
        assert_eq!((plain.input_tokens, plain.output_tokens), (3, 4));
    }

    #[test]
    fn gemini_takes_the_last_usage_metadata() {
        let stream = [
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}]}}],\"usageMetadata\":{\"promptTokenCount\":3,\"candidatesTokenCount\":1}}\r\n\r\n",
            "data: {\"candidates\":[{\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":3,\"candidatesTokenCount\":8},\"modelVersion\":\"gemini-2.0-flash\"}\r\n\r\n",
        ];
        let u = read(Dialect::Gemini, true, &stream, true);
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.incomplete),
            (3, 8, false)
        );
        assert_eq!(u.model.as_deref(), Some("gemini-2.0-flash"));
        assert!(read(Dialect::Gemini, true, &stream[..1], false).incomplete);
    }

    #[test]
    fn speech_to_text_counts_seconds_of_audio() {
        let dg = read(
            Dialect::Deepgram,
            false,
            &[r#"{"metadata":{"duration":12.5},"results":{}}"#],
            true,
        );
        assert_eq!((dg.audio_seconds, dg.incomplete), (12.5, false));
        let el = read(
            Dialect::ElevenLabs,
            false,
            &[r#"{"text":"hi","words":[{"text":"hi","start":0.1,"end":0.9}]}"#],
            true,
        );
        assert_eq!(el.audio_seconds, 0.9);
        let az = read(
            Dialect::Azure,
            false,
            &[r#"{"RecognitionStatus":"Success","DisplayText":"Hi","Duration":25000000}"#],
            true,
        );
        assert_eq!(az.audio_seconds, 2.5);
        let oa = read(
            Dialect::OpenAi,
            false,
            &[r#"{"text":"hi","duration":3.25}"#],
            true,
        );
        assert_eq!(oa.audio_seconds, 3.25);
    }

    #[test]
    fn an_answer_without_usage_or_too_long_is_incomplete() {
        assert!(read(Dialect::OpenAi, false, &[r#"{"choices":[]}"#], true).incomplete);
        let mut r = Reader::new(Dialect::OpenAi, Some("application/json"));
        r.feed(&vec![b' '; MAX_JSON_BYTES + 1]);
        assert!(r.finish(true).incomplete);
    }

    #[test]
    fn text_to_speech_counts_the_characters_asked_for() {
        assert_eq!(
            spoken_characters(Dialect::ElevenLabs, br#"{"text":"Hello"}"#),
            Some(5)
        );
        assert_eq!(
            spoken_characters(
                Dialect::OpenAi,
                r#"{"model":"tts-1","input":"Grüße"}"#.as_bytes()
            ),
            Some(5)
        );
        assert_eq!(
            spoken_characters(
                Dialect::Azure,
                b"<speak><voice name='x'>Hi there</voice></speak>"
            ),
            Some(8)
        );
        assert_eq!(spoken_characters(Dialect::ElevenLabs, b"not json"), None);
    }
}
