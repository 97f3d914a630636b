//! Azure AI Speech (TTS, STT), regional. Probe: `POST /sts/v1.0/issueToken` on the
//! region's cognitive-services host; voices (its "models"): `GET
//! /cognitiveservices/voices/list` on the region's TTS host. No quota API.

use async_trait::async_trait;
use serde_json::Value;

use super::realtime::{ws_url, Connect, MintCall, Realtime, RealtimeKind, Token};
use super::{
    json_str, Accepted, Auth, Endpoint, Field, KeyCarrier, Operation, Provider, ProviderInfo,
    Target, API_KEY,
};
use crate::crypto::SecretKey;
use crate::domain::{Capability, Model, ProviderId};
use crate::http::{HttpRequest, HttpResponse, Method};
use crate::json_read;
use crate::probe::{classify_status, message_retry_delay_ms, Failure, Prober, Verdict};

pub(super) struct AzureSpeech;

/// Realtime: the region's `issueToken` (the probe's own call), a JWT valid 10 minutes; the
/// browser SDK takes it with the region (`SpeechConfig.fromAuthorizationToken(token,
/// region)`) and must be given a fresh one before it expires.
static REALTIME: Realtime = Realtime {
    kinds: &[RealtimeKind::Stt, RealtimeKind::Tts],
    min_seconds: 600,
    max_seconds: 600,
    fixed: true,
    needs_voice: &[],
    mint: |_| MintCall {
        endpoint: 0,
        path: "/sts/v1.0/issueToken".into(),
        body: None,
    },
    // The body is the JWT itself, as text.
    read: |r| {
        let text = std::str::from_utf8(&r.body).ok()?.trim();
        (text.split('.').count() == 3).then(|| Token {
            value: text.to_owned(),
            expires_at_unix: None,
            expires_in: None,
        })
    },
    connect: |m, _| {
        let url = match m.kind {
            RealtimeKind::Tts => ws_url(m.target, 1, "/cognitiveservices/websocket/v1"),
            _ => ws_url(
                m.target,
                2,
                "/speech/recognition/conversation/cognitiveservices/v1",
            ),
        };
        Connect {
            region: m.target.params.region.clone(),
            ..Connect::url(url)
        }
    },
    sockets: &[],
};

static INFO: ProviderInfo = ProviderInfo {
    id: ProviderId::new("azure_speech"),
    name: "Azure AI Speech",
    capabilities: &[Capability::Tts, Capability::Stt],
    fields: &[
        API_KEY,
        Field {
            name: "region",
            required: true,
            secret: false,
        },
    ],
    supports_model_listing: true,
    supports_quota: false,
    check_calls: 2,
    auth: Auth::Header("Ocp-Apim-Subscription-Key"),
    classify,
    call_headers: &[],
    realtime: Some(&REALTIME),
    sdk_key: &[KeyCarrier::Header("Ocp-Apim-Subscription-Key")],
    #[rustfmt::skip]
    operations: &[
        // Endpoint 1 is the region's TTS host, 2 its STT host, 0 its cognitive-services
        // host (where the fast transcription API lives).
        Operation::post("/cognitiveservices/v1", Capability::Tts).at(1),
        Operation::get("/cognitiveservices/voices/list", Capability::Tts).at(1),
        Operation::post("/speech/recognition/conversation/cognitiveservices/v1", Capability::Stt).at(2),
        Operation::post("/speech/recognition/interactive/cognitiveservices/v1", Capability::Stt).at(2),
        Operation::post("/speech/recognition/dictation/cognitiveservices/v1", Capability::Stt).at(2),
        Operation::post("/speechtotext/transcriptions:transcribe", Capability::Stt),
    ],
    endpoints: &[
        Endpoint {
            var: "AZURE_SPEECH_STS_BASE_URL",
            default: "https://{region}.api.cognitive.microsoft.com",
        },
        Endpoint {
            var: "AZURE_SPEECH_TTS_BASE_URL",
            default: "https://{region}.tts.speech.microsoft.com",
        },
        Endpoint {
            var: "AZURE_SPEECH_STT_BASE_URL",
            default: "https://{region}.stt.speech.microsoft.com",
        },
    ],
};

const NAME: &str = "Azure AI Speech";
const KEY_HEADER: &str = "Ocp-Apim-Subscription-Key";

fn classify(r: &HttpResponse) -> Verdict {
    let body = r.json().unwrap_or(Value::Null);
    let message = json_str(&body, &["error", "message"])
        .or_else(|| json_str(&body, &["message"]))
        .unwrap_or("no reason given");
    match r.status {
        200..=299 => Verdict::Accept,
        // Azure cannot tell a bad key from a key of another region.
        401 => Verdict::Reject(Failure::InvalidKey(format!(
            "{NAME} says the key is invalid or belongs to another region: {message}"
        ))),
        403 => Verdict::Reject(Failure::InsufficientScope(format!(
            "{NAME} says: {message}"
        ))),
        429 => Verdict::Retry {
            hint_ms: message_retry_delay_ms(message),
            failure: Failure::RateLimited {
                retry_after_ms: 0,
                message: format!("{NAME} says: {message}"),
            },
        },
        status => classify_status(status, NAME, message),
    }
}

struct Voice {
    short_name: String,
    display_name: Option<String>,
    locale: Option<String>,
}

fn voices(body: &[u8]) -> Option<Vec<Voice>> {
    json_read::items(&json_read::array(body)?, |v| {
        Some(Voice {
            short_name: json_read::text(v, "ShortName")?,
            display_name: json_read::opt_text(v, "DisplayName")?,
            locale: json_read::opt_text(v, "Locale")?,
        })
    })
}

#[async_trait(?Send)]
impl Provider for AzureSpeech {
    fn info(&self) -> &'static ProviderInfo {
        &INFO
    }

    async fn validate(
        &self,
        prober: &Prober<'_>,
        target: &Target<'_>,
        key: &SecretKey,
    ) -> Result<Accepted, Failure> {
        let sts = target.url_at(0, "/sts/v1.0/issueToken");
        let issue = || HttpRequest {
            method: Method::Post,
            body: Some(Vec::new()),
            ..HttpRequest::get(sts.clone()).header(KEY_HEADER, key.expose())
        };
        prober.call(NAME, issue, classify).await?;

        let voices_url = target.url_at(1, "/cognitiveservices/voices/list");
        let list = || HttpRequest::get(voices_url.clone()).header(KEY_HEADER, key.expose());
        let mut accepted = Accepted::default();
        match prober.call(NAME, list, classify).await {
            Ok(r) => {
                let voices = voices(&r.body).unwrap_or_default();
                accepted.models = Some(
                    voices
                        .into_iter()
                        .map(|v| Model {
                            name: match (&v.display_name, &v.locale) {
                                (Some(d), Some(l)) => format!("{d} ({l})"),
                                _ => v.short_name.clone(),
                            },
                            id: v.short_name,
                            capabilities: vec![Capability::Tts],
                        })
                        .collect(),
                );
            }
            Err(f) => accepted.unavailable("voice list", &f),
        }
        Ok(accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::{run, Run};
    use crate::testing::respond;

    const VOICES: &str = r#"[{"Name":"Microsoft Server Speech Text to Speech Voice (en-US, JennyNeural)","DisplayName":"Jenny","LocalName":"Jenny","ShortName":"en-US-JennyNeural","Gender":"Female","Locale":"en-US","LocaleName":"English (United States)","StyleList":["assistant","chat"],"SampleRateHertz":"24000","VoiceType":"Neural","Status":"GA"}]"#;

    #[test]
    fn a_valid_key_issues_a_token_then_lists_voices_in_its_region() {
        let Run { out, requests } = run(
            &AzureSpeech,
            vec![
                respond(200, "eyJhbGciOiJIUzI1NiJ9.e30.x"),
                respond(200, VOICES),
            ],
        );
        let models = out.unwrap().models.unwrap();
        assert_eq!(
            (models[0].id.as_str(), models[0].name.as_str()),
            ("en-US-JennyNeural", "Jenny (en-US)")
        );
        assert_eq!(
            requests[0].0,
            "https://eastus.api.cognitive.microsoft.com/sts/v1.0/issueToken"
        );
        assert_eq!(
            requests[1].0,
            "https://eastus.tts.speech.microsoft.com/cognitiveservices/voices/list"
        );
        assert!(requests[0]
            .1
            .contains(&(KEY_HEADER.into(), "sk-test-key".into())));
    }

    #[test]
    fn a_bad_key_or_region_is_reported_as_both() {
        let body = r#"{"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource."}}"#;
        match run(&AzureSpeech, vec![respond(401, body)]).out {
            Err(Failure::InvalidKey(m)) => assert!(
                m.contains("invalid or belongs to another region") && m.contains("Access denied")
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_wait_in_the_message_is_honoured() {
        let body = r#"{"error":{"code":"429","message":"Requests to the Speech API have exceeded the rate limit of your current pricing tier. Please retry after 1 seconds."}}"#;
        let Run { out, requests } = run(
            &AzureSpeech,
            vec![
                respond(429, body),
                respond(200, "token"),
                respond(200, VOICES),
            ],
        );
        assert!(out.is_ok());
        assert_eq!(requests.len(), 3);
    }
}
