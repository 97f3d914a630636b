//! Deepgram (STT, TTS). Probe: `GET /v1/projects` with `Authorization: Token <key>`;
//! balance: `GET /v1/projects/{id}/balances`; models: `GET /v1/models`.

use async_trait::async_trait;
use serde_json::Value;

use super::realtime::{
    json_field, query_value, ws_url, Connect, MintCall, Realtime, RealtimeKind, SocketDialect,
    SocketEndpoint, Token,
};
use super::{
    json_str, Accepted, Auth, Endpoint, KeyCarrier, Operation, Provider, ProviderInfo, Target,
    API_KEY,
};
use crate::crypto::SecretKey;
use crate::domain::{Capability, Model, ProviderId, Quota};
use crate::http::{HttpRequest, HttpResponse};
use crate::json_read;
use crate::probe::{classify_status, Failure, Prober, Verdict};

pub(super) struct Deepgram;

/// Realtime: temporary grants (`POST /v1/auth/grant`, the key needs Member or higher), 1 s
/// to an hour; the browser connects to listen or speak with the subprotocols `bearer` and
/// the grant.
static REALTIME: Realtime = Realtime {
    kinds: &[RealtimeKind::Stt, RealtimeKind::Tts],
    min_seconds: 1,
    max_seconds: 3600,
    fixed: false,
    needs_voice: &[],
    mint: |m| MintCall {
        endpoint: 0,
        path: "/v1/auth/grant".into(),
        body: Some(serde_json::json!({"ttl_seconds": m.ttl_seconds})),
    },
    read: |r| {
        Some(Token {
            value: json_field(r, "access_token")?,
            expires_at_unix: None,
            expires_in: r.json().and_then(|v| v.get("expires_in")?.as_u64()),
        })
    },
    connect: |m, token| {
        let path = match m.kind {
            RealtimeKind::Tts => "/v1/speak",
            _ => "/v1/listen",
        };
        let mut url = ws_url(m.target, 0, path);
        if let Some(model) = m.model {
            url = format!("{url}?model={}", query_value(model));
        }
        Connect {
            protocols: Some(vec!["bearer".into(), token.to_owned()]),
            ..Connect::url(url)
        }
    },
    sockets: &[
        SocketEndpoint {
            path: "/v1/listen",
            kind: RealtimeKind::Stt,
            dialect: SocketDialect::Deepgram,
        },
        SocketEndpoint {
            path: "/v1/speak",
            kind: RealtimeKind::Tts,
            dialect: SocketDialect::DeepgramSpeak,
        },
    ],
};

static INFO: ProviderInfo = ProviderInfo {
    id: ProviderId::new("deepgram"),
    name: "Deepgram",
    capabilities: &[Capability::Stt, Capability::Tts],
    fields: &[API_KEY],
    supports_model_listing: true,
    supports_quota: true,
    check_calls: 3,
    auth: Auth::Token,
    classify,
    call_headers: &[],
    realtime: Some(&REALTIME),
    sdk_key: &[KeyCarrier::Authorization("Token")],
    #[rustfmt::skip]
    operations: &[
        // Options (`?model=nova-3&smart_format=true`) travel in the query, which is kept.
        Operation::post("/v1/listen", Capability::Stt),
        Operation::post("/v1/speak", Capability::Tts),
        Operation::get("/v1/models", Capability::Stt),
        Operation::get("/v1/models/{}", Capability::Stt),
    ],
    endpoints: &[Endpoint {
        var: "DEEPGRAM_BASE_URL",
        default: "https://api.deepgram.com",
    }],
};

const NAME: &str = "Deepgram";

fn classify(r: &HttpResponse) -> Verdict {
    let body = r.json().unwrap_or(Value::Null);
    let message = json_str(&body, &["err_msg"])
        .or_else(|| json_str(&body, &["message"]))
        .unwrap_or("no reason given");
    let says = || format!("{NAME} says: {message}");
    match r.status {
        200..=299 => Verdict::Accept,
        401 => Verdict::Reject(Failure::InvalidKey(says())),
        402 => Verdict::Reject(Failure::QuotaExhausted(says())),
        403 => Verdict::Reject(Failure::InsufficientScope(says())),
        status => classify_status(status, NAME, message),
    }
}

/// The first of `GET /v1/projects`' `projects` (absent: none); every one must have its id.
fn first_project(body: &[u8]) -> Option<String> {
    let o = json_read::object(body)?;
    let ids = json_read::items(json_read::list_or_empty(&o, "projects")?, |p| {
        json_read::text(p, "project_id")
    })?;
    ids.into_iter().next()
}

struct Balance {
    amount: f64,
    units: Option<String>,
}

/// `balances` (absent: none).
fn balances(body: &[u8]) -> Option<Vec<Balance>> {
    let o = json_read::object(body)?;
    json_read::items(json_read::list_or_empty(&o, "balances")?, |b| {
        Some(Balance {
            amount: json_read::number(b, "amount")?,
            units: json_read::opt_text(b, "units")?,
        })
    })
}

#[derive(Default)]
struct ModelLists {
    stt: Vec<ApiModel>,
    tts: Vec<ApiModel>,
}

struct ApiModel {
    name: String,
    canonical_name: Option<String>,
}

fn model_lists(body: &[u8]) -> Option<ModelLists> {
    let o = json_read::object(body)?;
    let list = |key| {
        json_read::items(json_read::list_or_empty(&o, key)?, |m| {
            Some(ApiModel {
                name: json_read::text(m, "name")?,
                canonical_name: json_read::opt_text(m, "canonical_name")?,
            })
        })
    };
    Some(ModelLists {
        stt: list("stt")?,
        tts: list("tts")?,
    })
}

#[async_trait(?Send)]
impl Provider for Deepgram {
    fn info(&self) -> &'static ProviderInfo {
        &INFO
    }

    async fn validate(
        &self,
        prober: &Prober<'_>,
        target: &Target<'_>,
        key: &SecretKey,
    ) -> Result<Accepted, Failure> {
        let auth = format!("Token {}", key.expose());
        let get = |path: String| {
            let url = target.url(&path);
            let auth = auth.clone();
            move || HttpRequest::get(url.clone()).header("authorization", &auth)
        };
        let projects = prober
            .call(NAME, get("/v1/projects".into()), classify)
            .await?;
        let mut accepted = Accepted::default();
        if let Some(project_id) = first_project(&projects.body) {
            let path = format!(
                "/v1/projects/{}/balances",
                url::form_urlencoded::byte_serialize(project_id.as_bytes()).collect::<String>()
            );
            match prober.call(NAME, get(path), classify).await {
                Ok(r) => {
                    let balances = balances(&r.body).unwrap_or_default();
                    if let Some(unit) = balances
                        .first()
                        .map(|b| b.units.clone().unwrap_or_else(|| "usd".into()))
                    {
                        accepted.quota = Some(Quota {
                            used: None,
                            limit: None,
                            remaining: Some(balances.iter().map(|b| b.amount).sum()),
                            unit,
                            resets_at: None,
                        });
                    }
                }
                Err(f) => accepted.unavailable("balance", &f),
            }
        }
        match prober.call(NAME, get("/v1/models".into()), classify).await {
            Ok(r) => {
                let lists = model_lists(&r.body).unwrap_or_default();
                let model = |m: ApiModel, cap: Capability| Model {
                    id: m.canonical_name.unwrap_or_else(|| m.name.clone()),
                    name: m.name,
                    capabilities: vec![cap],
                };
                let mut models: Vec<Model> = lists
                    .stt
                    .into_iter()
                    .map(|m| model(m, Capability::Stt))
                    .collect();
                models.extend(lists.tts.into_iter().map(|m| model(m, Capability::Tts)));
                accepted.models = Some(models);
            }
            Err(f) => accepted.unavailable("model list", &f),
        }
        Ok(accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::{run, Run};
    use crate::testing::respond;

    #[test]
    fn a_valid_key_reports_its_balance_and_models() {
        let projects = r#"{"projects":[{"project_id":"3dc6c6e1-5e36-4f5d-9b2f-0c0b3b1b5c1a","name":"Default","company":"Acme"}]}"#;
        let balances = r#"{"balances":[{"balance_id":"b1","amount":187.5,"units":"usd","purchase_order_id":"p1"}]}"#;
        let models = r#"{"stt":[{"name":"nova-3","canonical_name":"nova-3-general","architecture":"nova-3","languages":["en"],"version":"2025-01-01","uuid":"u1","batch":true,"streaming":true}],"tts":[{"name":"aura-2-thalia-en","canonical_name":"aura-2-thalia-en","architecture":"aura-2","languages":["en"],"version":"2025-01-01","uuid":"u2","metadata":{}}]}"#;
        let Run { out, requests } = run(
            &Deepgram,
            vec![
                respond(200, projects),
                respond(200, balances),
                respond(200, models),
            ],
        );
        let a = out.unwrap();
        assert_eq!(
            a.quota,
            Some(Quota {
                used: None,
                limit: None,
                remaining: Some(187.5),
                unit: "usd".into(),
                resets_at: None
            })
        );
        let caps: Vec<_> = a
            .models
            .unwrap()
            .into_iter()
            .map(|m| (m.id, m.capabilities))
            .collect();
        assert_eq!(
            caps,
            [
                ("nova-3-general".to_owned(), vec![Capability::Stt]),
                ("aura-2-thalia-en".to_owned(), vec![Capability::Tts])
            ]
        );
        assert_eq!(
            requests[1].0,
            "https://api.deepgram.com/v1/projects/3dc6c6e1-5e36-4f5d-9b2f-0c0b3b1b5c1a/balances"
        );
        assert!(requests[0]
            .1
            .contains(&("authorization".into(), "Token sk-test-key".into())));
    }

    #[test]
    fn refusals_are_classified() {
        let invalid =
            r#"{"err_code":"INVALID_AUTH","err_msg":"Invalid credentials.","request_id":"r1"}"#;
        assert_eq!(
            run(&Deepgram, vec![respond(401, invalid)]).out,
            Err(Failure::InvalidKey(
                "Deepgram says: Invalid credentials.".into()
            ))
        );
        let broke = r#"{"err_code":"ASR_PAYMENT_REQUIRED","err_msg":"Project does not have enough credits for an ASR request.","request_id":"r2"}"#;
        assert!(matches!(
            run(&Deepgram, vec![respond(402, broke)]).out,
            Err(Failure::QuotaExhausted(_))
        ));
    }
}
