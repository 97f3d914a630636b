//! Metering: what each call a key serves uses, read from the provider's answer as it
//! streams past (never holding it back), in the units budgets count: requests, input and
//! output tokens, characters spoken, seconds of audio transcribed; and where it is kept
//! (`store.rs`: the usage table's seam, and [`record`], a call's hand-off to it); and its
//! setting, `METERING` ([`MeteringSettings`]).

mod read;
mod sse;
mod store;
mod strip;

use std::cell::RefCell;
use std::rc::Rc;

use crate::audit::Source;
use crate::domain::{Capability, CredentialId, Environment, ProviderId, Timestamp, UserId, Vars};
use crate::http::{BodyStream, Ended, Tap, Upstream};

pub use read::{spoken_characters, Dialect, Reader, MAX_JSON_BYTES};
pub use store::{
    record, GroupBy, Kept, Metered, UsageQuery, UsageRow, UsageStore, NO_MODEL, SYSTEM_KEY,
};

/// Whether the proxy meters its answers (`METERING`: `on` by default; `off`, only outside
/// production, passes answers on untapped and keeps no usage, for measuring what the tap
/// costs).
pub struct MeteringSettings {
    pub on: bool,
}

impl MeteringSettings {
    pub fn parse(vars: &mut Vars, environment: Environment) -> MeteringSettings {
        let on = vars.switch("METERING", true);
        if !on && environment == Environment::Production {
            vars.problem("METERING", "may not be off in production");
        }
        MeteringSettings { on }
    }
}

/// What one call used. A count the answer did not state stays 0 with `incomplete` set: a
/// usage that never arrived is never taken for none.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub characters: u64,
    pub audio_seconds: f64,
    /// The model the provider says served, when it says.
    pub model: Option<String>,
    /// The answer ended (or was cut) before its usage was read whole.
    pub incomplete: bool,
}

/// Whose call a metered answer served, and what its request already says.
#[derive(Clone, Debug)]
pub struct Call {
    pub user: UserId,
    pub at: Timestamp,
    pub provider: ProviderId,
    pub source: Source,
    /// The user's credential that served; `None` for a system key.
    pub credential_id: Option<CredentialId>,
    /// The model the call was resolved with (the answer's own, when it names one, wins).
    pub model: Option<String>,
    /// What the call is billed by.
    pub capability: Capability,
    /// Text to speech: the characters the request asked to be spoken, when its body was
    /// read (`None`: not known).
    pub characters: Option<u64>,
    /// Whether the answer carries a usage to read (a completion, a transcript); not a
    /// model list, whose call alone is counted.
    pub usage_in_answer: bool,
}

/// One proxied answer's usage, read as it is passed on ([`Watch::start`]) and told once it
/// has gone on whole or was cut ([`Watch::finish`]), after the answer.
pub struct Watch {
    ended: Ended,
    reader: Rc<RefCell<Reader>>,
    /// What recognises the key in the provider's text (a model name that echoes it is
    /// never kept).
    text: Option<crate::redact::ProviderText>,
    pub call: Call,
}

impl Watch {
    /// Passes `body` (an answer in `dialect`, of `content_type`) through `upstream`'s tap;
    /// with `strip`, the usage chunk the vault asked for is left out of what passes.
    pub fn start(
        upstream: &dyn Upstream,
        body: BodyStream,
        dialect: Dialect,
        content_type: Option<&str>,
        call: Call,
        strip: bool,
    ) -> (BodyStream, Watch) {
        let reader = Rc::new(RefCell::new(Reader::new(dialect, content_type)));
        let tap = Meter {
            reader: reader.clone(),
            strip: strip.then(strip::Strip::default),
        };
        let (body, ended) = upstream.watch(body, Box::new(tap));
        (
            body,
            Watch {
                ended,
                reader,
                text: None,
                call,
            },
        )
    }

    /// Model names from the answer that quote the key recognised by `text` are withheld.
    pub fn redacting(mut self, text: crate::redact::ProviderText) -> Self {
        self.text = Some(text);
        self
    }

    /// Waits for the answer to have gone on (or been cut), and says what the call used.
    pub async fn finish(self) -> (Call, Usage) {
        let ended = self.ended.await;
        let reader = std::mem::replace(
            &mut *self.reader.borrow_mut(),
            Reader::new(Dialect::OpenAi, None),
        );
        let mut usage = reader.finish(ended);
        let call = self.call;
        match call.capability {
            // Speech is billed by the characters asked for, whatever the audio's bytes.
            Capability::Tts => {
                usage.characters = call.characters.unwrap_or(0);
                usage.incomplete = !ended || call.characters.is_none();
            }
            // An answer that carries no usage of its own (a model list) is complete once
            // it has gone on whole: the call itself is what is counted.
            _ if !call.usage_in_answer => usage.incomplete = !ended,
            _ => {}
        }
        if let (Some(text), Some(model)) = (&self.text, &usage.model) {
            if text.quotes_key(model) {
                usage.model = None;
            }
        }
        if usage.model.is_none() {
            usage.model = call.model.clone();
        }
        (call, usage)
    }
}

/// The tap on a metered answer: the reader sees every byte the provider sent.
struct Meter {
    reader: Rc<RefCell<Reader>>,
    strip: Option<strip::Strip>,
}

impl Tap for Meter {
    fn chunk(&mut self, chunk: &[u8]) -> Option<Vec<u8>> {
        self.reader.borrow_mut().feed(chunk);
        self.strip.as_mut().map(|s| s.chunk(chunk))
    }

    fn end(&mut self) -> Option<Vec<u8>> {
        self.strip.as_mut().map(strip::Strip::end)
    }
}

/// The dialect of a provider's answers.
pub fn dialect_of(provider: ProviderId) -> Dialect {
    match provider.as_str() {
        "anthropic" => Dialect::Anthropic,
        "gemini" => Dialect::Gemini,
        "deepgram" => Dialect::Deepgram,
        "elevenlabs" => Dialect::ElevenLabs,
        "azure_speech" => Dialect::Azure,
        "ollama" => Dialect::Ollama,
        _ => Dialect::OpenAi,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::read_vars;

    /// `METERING` of a deployment whose ENVIRONMENT is in `pairs` (production if not).
    fn parse(pairs: &[(&str, &str)]) -> (bool, Vec<&'static str>) {
        let (settings, errors) = read_vars(pairs, |v| {
            let environment = Environment::parse(v);
            MeteringSettings::parse(v, environment)
        });
        (settings.on, errors.iter().map(|e| e.var).collect())
    }

    #[test]
    fn metering_is_on_by_default_and_may_be_off_only_outside_production() {
        assert_eq!(parse(&[]), (true, vec![]));
        assert_eq!(parse(&[("METERING", "off")]).1, vec!["METERING"]);
        assert_eq!(
            parse(&[("METERING", "off"), ("ENVIRONMENT", "development")]),
            (false, vec![])
        );
        assert_eq!(parse(&[("METERING", "maybe")]).1, vec!["METERING"]);
    }
}
