//! Infisical's API as the vault speaks it: a machine identity's Universal Auth login, its
//! access token reused until shortly before it expires, and the list of one folder's
//! secrets with its imports, of which the usable `SYSTEM_KEY_*` ones are kept. A failed
//! answer becomes a [`Failure`] (an outage, a refusal or an expired token) in words that
//! hold no secret; what to do about it is the cache's call.

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use zeroize::Zeroizing;

use super::settings::InfisicalSettings;
use crate::crypto::SecretKey;
use crate::domain::Clock;
use crate::domain::Timestamp;
use crate::http::{HttpClient, HttpRequest, HttpResponse, Method};
use crate::json_read;
use crate::redact::{is_hidden, ProviderText};

const FETCH_TIMEOUT_MS: u64 = 3_000;
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
const MAX_LOGIN_RESPONSE_BYTES: usize = 64 * 1024;
/// A longer value is no API key.
const MAX_VALUE_CHARS: usize = 1024;
const MAX_PROBLEM_CHARS: usize = 200;
/// A token is renewed this long (at most a tenth of its lifetime) before it expires.
const TOKEN_MARGIN_MS: u64 = 60_000;
/// Only secrets of this prefix are kept (see `crate::system_keys::secret_name`).
const NAME_PREFIX: &str = "SYSTEM_KEY_";

/// Secret name → value.
pub type Secrets = BTreeMap<String, Zeroizing<String>>;

struct Token {
    value: Zeroizing<String>,
    renew_at: Timestamp,
}

pub(super) enum Failure {
    /// Infisical is down or busy: the last good set may serve. `retry_after_ms` is how
    /// long the answer asked not to be asked again (its `retry-after`; 0 without one).
    Outage {
        problem: String,
        retry_after_ms: u64,
    },
    /// Infisical refused: nothing it served before may serve.
    Refused(String),
    /// The access token expired (403 `TokenError`): worth one new login.
    TokenExpired(String),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Login<'a> {
    client_id: &'a str,
    client_secret: &'a str,
}

struct LoginAnswer {
    access_token: String,
    expires_in: f64,
}

/// The login's answer: `accessToken` (moved out of the tree, not copied), `expiresIn`
/// (absent: 0).
fn login_answer(body: &[u8]) -> Option<LoginAnswer> {
    let mut o = json_read::object(body)?;
    Some(LoginAnswer {
        expires_in: json_read::number_or_zero(&o, "expiresIn")?,
        access_token: json_read::take_text(&mut o, "accessToken")?,
    })
}

struct RawList {
    secrets: Vec<RawSecret>,
    imports: Vec<RawImport>,
}

struct RawImport {
    secrets: Vec<RawSecret>,
}

struct RawSecret {
    secret_key: String,
    secret_value: String,
    secret_value_hidden: bool,
}

/// Secrets read from the tree, each value moved out of it (not copied).
fn raw_secrets(items: Vec<Value>) -> Option<Vec<RawSecret>> {
    items
        .into_iter()
        .map(|v| {
            let Value::Object(mut s) = v else {
                return None;
            };
            Some(RawSecret {
                secret_key: json_read::take_text(&mut s, "secretKey")?,
                secret_value: json_read::take_text_or_empty(&mut s, "secretValue")?,
                secret_value_hidden: json_read::flag_or_false(&s, "secretValueHidden")?,
            })
        })
        .collect()
}

/// The list's answer: `secrets` (required) and `imports` (absent: none), each import's
/// `secrets` (absent: none).
fn raw_list(body: &[u8]) -> Option<RawList> {
    let mut o = json_read::object(body)?;
    let Some(Value::Array(secrets)) = o.remove("secrets") else {
        return None;
    };
    let imports = json_read::take_list_or_empty(&mut o, "imports")?
        .into_iter()
        .map(|i| {
            let Value::Object(mut i) = i else {
                return None;
            };
            Some(RawImport {
                secrets: raw_secrets(json_read::take_list_or_empty(&mut i, "secrets")?)?,
            })
        })
        .collect::<Option<_>>()?;
    Some(RawList {
        secrets: raw_secrets(secrets)?,
        imports,
    })
}

/// The usable `SYSTEM_KEY_*` secrets of a list: direct secrets first, then imports, the
/// last import first (as Infisical's CLI merges them). A name whose first entry is hidden,
/// empty or too long is left out, not served from a lower one.
fn collect(list: RawList) -> Secrets {
    let imported = list.imports.into_iter().rev().flat_map(|i| i.secrets);
    let mut seen: BTreeMap<String, Option<Zeroizing<String>>> = BTreeMap::new();
    for s in list.secrets.into_iter().chain(imported) {
        let raw = Zeroizing::new(s.secret_value);
        if !s.secret_key.starts_with(NAME_PREFIX) || seen.contains_key(&s.secret_key) {
            continue;
        }
        let value = Zeroizing::new(raw.trim().to_owned());
        let usable = !s.secret_value_hidden
            && !value.is_empty()
            && value.chars().count() <= MAX_VALUE_CHARS
            && !value.chars().any(is_hidden);
        seen.insert(s.secret_key, usable.then_some(value));
    }
    // Inserted one by one: collecting into a BTreeMap sorts first, with a sort of its own
    // in the wasm.
    let mut secrets = Secrets::new();
    for (k, v) in seen {
        if let Some(v) = v {
            secrets.insert(k, v);
        }
    }
    secrets
}

/// How long a failed answer asks not to be asked again: its `retry-after` (seconds), or 0.
fn retry_after_ms(r: &HttpResponse) -> u64 {
    r.header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(0, |s| s.saturating_mul(1000))
}

#[derive(Clone, Copy)]
enum Call {
    Login,
    List,
}

/// One machine identity's access to Infisical: where and as whom, and the token it holds.
pub(super) struct Client {
    settings: InfisicalSettings,
    token: RefCell<Option<Token>>,
}

impl Client {
    pub(super) fn new(settings: InfisicalSettings) -> Self {
        Self {
            settings,
            token: RefCell::new(None),
        }
    }

    /// Drops the access token: the next fetch logs in again.
    pub(super) fn forget_token(&self) {
        *self.token.borrow_mut() = None;
    }

    /// The usable secrets of the configured folder, with the token held while it lives,
    /// else after a new login (and one more, should Infisical say the token expired).
    pub(super) async fn fetch(
        &self,
        http: &dyn HttpClient,
        clock: &dyn Clock,
    ) -> Result<Secrets, Failure> {
        let mut relogged = false;
        loop {
            let now = clock.now();
            let kept = self
                .token
                .borrow()
                .as_ref()
                .filter(|t| now < t.renew_at)
                .map(|t| t.value.clone());
            let token = match kept {
                Some(t) => t,
                None => self.login(http, clock).await?,
            };
            match self.list(http, &token).await {
                Err(Failure::TokenExpired(_)) if !relogged => {
                    self.forget_token();
                    relogged = true;
                }
                Err(Failure::TokenExpired(detail)) => {
                    return Err(Failure::Refused(format!(
                        "Infisical refused a new access token ({detail})"
                    )))
                }
                other => return other,
            }
        }
    }

    async fn login(
        &self,
        http: &dyn HttpClient,
        clock: &dyn Clock,
    ) -> Result<Zeroizing<String>, Failure> {
        let s = &self.settings;
        let body = serde_json::to_vec(&Login {
            client_id: &s.client_id,
            client_secret: &s.client_secret,
        })
        .unwrap_or_default();
        let request = HttpRequest {
            method: Method::Post,
            body: Some(body),
            max_response_bytes: MAX_LOGIN_RESPONSE_BYTES,
            ..HttpRequest::get(format!("{}/api/v1/auth/universal-auth/login", s.host))
        }
        .header("content-type", "application/json")
        .header("accept", "application/json");
        let started = clock.now();
        let r = self.send(http, request, Call::Login).await?;
        if r.status != 200 {
            return Err(self.failure(Call::Login, &r, None));
        }
        let body = Zeroizing::new(r.body);
        let answer = login_answer(&body)
            .filter(|a| !a.access_token.is_empty())
            .ok_or(Failure::Outage {
                problem: "Infisical's login answered without an access token".into(),
                retry_after_ms: 0,
            })?;
        let value = Zeroizing::new(answer.access_token);
        let lifetime = (answer.expires_in.max(0.0) * 1000.0) as u64;
        let renew_at =
            started.plus_millis(lifetime.saturating_sub((lifetime / 10).min(TOKEN_MARGIN_MS)));
        *self.token.borrow_mut() = Some(Token {
            value: value.clone(),
            renew_at,
        });
        Ok(value)
    }

    async fn list(&self, http: &dyn HttpClient, token: &str) -> Result<Secrets, Failure> {
        let s = &self.settings;
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("workspaceId", &s.project_id)
            .append_pair("environment", &s.environment)
            .append_pair("secretPath", &s.secret_path)
            .append_pair("include_imports", "true")
            .finish();
        let request = HttpRequest {
            max_response_bytes: MAX_RESPONSE_BYTES,
            ..HttpRequest::get(format!("{}/api/v3/secrets/raw?{query}", s.host))
        }
        .header("authorization", &Zeroizing::new(format!("Bearer {token}")))
        .header("accept", "application/json");
        let r = self.send(http, request, Call::List).await?;
        if r.status != 200 {
            return Err(self.failure(Call::List, &r, Some(token)));
        }
        let body = Zeroizing::new(r.body);
        raw_list(&body).map(collect).ok_or_else(|| Failure::Outage {
            problem: "Infisical's list of secrets was not readable".into(),
            retry_after_ms: 0,
        })
    }

    async fn send(
        &self,
        http: &dyn HttpClient,
        request: HttpRequest,
        call: Call,
    ) -> Result<HttpResponse, Failure> {
        http.send(request, FETCH_TIMEOUT_MS)
            .await
            .map_err(|e| Failure::Outage {
                problem: format!(
                    "{} ({})",
                    match call {
                        Call::Login => "Infisical's login failed",
                        Call::List => "Infisical did not list the secrets",
                    },
                    self.clean(&e.to_string(), None)
                ),
                retry_after_ms: 0,
            })
    }

    /// What a non-200 answer means, in words: its status and Infisical's message.
    fn failure(&self, call: Call, r: &HttpResponse, token: Option<&str>) -> Failure {
        let body = r.json();
        let field = |name: &str| {
            body.as_ref()
                .and_then(|b| b.get(name))
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .filter(|v| !v.is_empty())
        };
        let error = field("error");
        let message = self.clean(
            &field("message").or(error.clone()).unwrap_or_default(),
            token,
        );
        let detail = format!("{} {message}", r.status).trim_end().to_owned();
        if r.status == 408 || r.status == 429 || r.status >= 500 {
            return Failure::Outage {
                problem: match call {
                    Call::Login => format!("Infisical's login failed ({detail})"),
                    Call::List => format!("Infisical did not list the secrets ({detail})"),
                },
                retry_after_ms: retry_after_ms(r),
            };
        }
        match (call, r.status) {
            (Call::List, 403) if error.as_deref() == Some("TokenError") => {
                Failure::TokenExpired(detail)
            }
            (Call::Login, _) => Failure::Refused(format!(
                "Infisical refused the machine identity's login ({detail})"
            )),
            (Call::List, 404) => Failure::Refused(format!(
                "Infisical has no such environment or secret path ({detail})"
            )),
            (Call::List, 400 | 422) => Failure::Refused(format!(
                "Infisical refused the list request as malformed ({detail})"
            )),
            (Call::List, _) => Failure::Refused(format!(
                "Infisical refused to list the secrets to the machine identity ({detail})"
            )),
        }
    }

    /// Infisical's text made safe to log and show: cut short, without hidden characters,
    /// the client secret or the access token.
    fn clean(&self, text: &str, token: Option<&str>) -> String {
        let secret = SecretKey::new(self.settings.client_secret.to_string());
        let mut out = ProviderText::new(&secret).clean(text, MAX_PROBLEM_CHARS);
        if let Some(token) = token {
            out =
                ProviderText::new(&SecretKey::new(token.to_owned())).clean(&out, MAX_PROBLEM_CHARS);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};
    use zeroize::Zeroizing;

    use super::super::testing::*;
    use super::super::InfisicalSettings;
    use super::*;
    use crate::system_keys::Tier;

    #[test]
    fn fresh_secrets_are_served_then_reused_for_the_ttl_without_a_request() {
        let clock = clock();
        let i = Isolate::new(&clock, settings());
        i.fake
            .set_secret("DATABASE_URL", "postgres://not-a-system-key");
        let s = i.current();
        assert_eq!(s.tier, Tier::Infisical);
        assert_eq!(value(&s, ELEVEN).as_deref(), Some(KEY_A));
        assert_eq!(value(&s, OPENAI).as_deref(), Some(KEY_B));
        // Only system keys are kept.
        assert_eq!(s.secrets.as_ref().unwrap().len(), 2);
        assert!(s.problem.is_none());
        assert_eq!(i.fake.counts(), (1, 1));

        let sent = i.fake.sent.borrow();
        let (login, list) = (&sent[0].0, &sent[1].0);
        assert_eq!(
            login.url,
            format!("{HOST}/api/v1/auth/universal-auth/login")
        );
        let body: Value = serde_json::from_slice(login.body.as_deref().unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET})
        );
        assert!(login
            .headers
            .contains(&("content-type".into(), "application/json".into())));
        assert_eq!(
            list.url,
            format!("{HOST}/api/v3/secrets/raw?workspaceId={PROJECT}&environment=dev&secretPath=%2F&include_imports=true")
        );
        let bearer = format!("Bearer {}", i.fake.last_token());
        assert!(list.headers.contains(&("authorization".into(), bearer)));
        assert_eq!(list.max_response_bytes, MAX_RESPONSE_BYTES);
        assert!(sent.iter().all(|(_, timeout)| *timeout == FETCH_TIMEOUT_MS));
        drop(sent);

        clock.advance(MIN - 1_000);
        let s = i.current();
        assert_eq!(
            (s.tier, value(&s, ELEVEN).as_deref()),
            (Tier::Infisical, Some(KEY_A))
        );
        assert_eq!(i.fake.counts(), (1, 1));
        assert!(i.logs.borrow().is_empty());
    }

    #[test]
    fn a_rotated_secret_is_picked_up_after_the_ttl_and_the_token_is_reused_until_it_expires() {
        let clock = clock();
        let i = Isolate::new(&clock, settings());
        i.fake.expires_in.set(600);
        i.current();
        i.fake.set_secret(ELEVEN, "sk_eleven_rotated_1234567890");
        clock.advance(30_000);
        assert_eq!(value(&i.current(), ELEVEN).as_deref(), Some(KEY_A));
        clock.advance(31_000);
        let s = i.current();
        assert_eq!(
            value(&s, ELEVEN).as_deref(),
            Some("sk_eleven_rotated_1234567890")
        );
        assert_eq!(s.tier, Tier::Infisical);
        // One login served both lists.
        assert_eq!(i.fake.counts(), (1, 2));
        // The token (600 s) is renewed a minute before it expires, not after.
        clock.advance(540_000 - 61_000 - 1);
        i.current();
        assert_eq!(i.fake.counts(), (1, 3));
        clock.advance(MIN);
        i.current();
        assert_eq!(i.fake.counts(), (2, 4));
    }

    #[test]
    fn an_expired_token_gets_one_new_login_and_then_fails() {
        let clock = clock();
        let i = Isolate::new(&clock, settings());
        i.current();
        clock.advance(MIN);
        i.fake.expire_tokens();
        let s = i.current();
        assert_eq!(
            (s.tier, value(&s, ELEVEN).as_deref()),
            (Tier::Infisical, Some(KEY_A))
        );
        assert_eq!(i.fake.counts(), (2, 3));

        clock.advance(MIN);
        i.fake.go_down(
            Down::Status(
                403,
                "TokenError",
                "Your token has expired. Please re-authenticate.".into(),
            ),
            true,
        );
        let s = i.current();
        assert!(s.secrets.is_none());
        assert_eq!(i.fake.counts(), (3, 5));
        assert_eq!(
            s.problem.as_deref(),
            Some("Infisical refused a new access token (403 Your token has expired. Please re-authenticate.)")
        );
    }

    #[test]
    fn a_wrong_client_secret_or_path_is_named_and_serves_nothing() {
        let clock = clock();
        let wrong = InfisicalSettings {
            client_secret: Zeroizing::new("ua_secret_wrong_000000000000".into()),
            ..settings()
        };
        let i = Isolate::new(&clock, wrong);
        let s = i.current();
        assert_eq!((s.tier, s.secrets.is_none()), (Tier::Env, true));
        assert_eq!(
            s.problem.as_deref(),
            Some("Infisical refused the machine identity's login (401 Invalid credentials)")
        );
        assert_eq!(i.fake.counts(), (1, 0));
        // Failed logins are not repeated within the TTL (Infisical locks the identity).
        clock.advance(MIN - 1);
        i.current();
        assert_eq!(i.fake.counts(), (1, 0));

        let i = Isolate::new(
            &clock,
            InfisicalSettings {
                secret_path: "/vault keys".into(),
                ..settings()
            },
        );
        let s = i.current();
        assert!(s.secrets.is_none());
        assert_eq!(
            s.problem.as_deref(),
            Some("Infisical has no such environment or secret path (404 Folder with path '/vault keys' in environment with slug 'dev' not found)")
        );
        assert!(i.fake.sent.borrow()[1]
            .0
            .url
            .contains("secretPath=%2Fvault+keys"));
    }

    #[test]
    fn hidden_empty_and_oversized_values_are_skipped_and_imports_rank_below_direct_secrets() {
        let clock = clock();
        let i = Isolate::new(&clock, settings());
        let hidden = |k: &str| {
            let mut s = secret(k, "<hidden-by-infisical>");
            s["secretValueHidden"] = json!(true);
            s
        };
        *i.fake.secrets.borrow_mut() = vec![
            secret("SYSTEM_KEY_A", "direct-a-value"),
            hidden("SYSTEM_KEY_HIDDEN"),
            secret("SYSTEM_KEY_EMPTY", ""),
            secret("SYSTEM_KEY_LONG", &"x".repeat(MAX_VALUE_CHARS + 1)),
            secret("SYSTEM_KEY_PADDED", "  padded-value\n"),
        ];
        *i.fake.imports.borrow_mut() = vec![
            json!({"secretPath": "/shared", "environment": "dev", "secrets": [
                secret("SYSTEM_KEY_A", "imported-a"), secret("SYSTEM_KEY_B", "first-import-b"),
                secret("SYSTEM_KEY_C", "first-import-c")]}),
            json!({"secretPath": "/more", "environment": "dev", "secrets": [
                secret("SYSTEM_KEY_C", "last-import-c"), secret("SYSTEM_KEY_HIDDEN", "visible-elsewhere"),
                hidden("SYSTEM_KEY_D")]}),
        ];
        let s = i.current();
        let got: Vec<(String, String)> = s
            .secrets
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        let want = [
            ("SYSTEM_KEY_A", "direct-a-value"),
            ("SYSTEM_KEY_B", "first-import-b"),
            ("SYSTEM_KEY_C", "last-import-c"),
            ("SYSTEM_KEY_PADDED", "padded-value"),
        ];
        assert_eq!(got, want.map(|(k, v)| (k.to_owned(), v.to_owned())));
    }

    #[test]
    fn problems_never_hold_the_client_secret_the_token_or_a_value() {
        let clock = clock();
        let i = Isolate::new(&clock, settings());
        i.current();
        let token = i.fake.last_token();
        clock.advance(MIN);
        let echo = format!(
            "failed for {CLIENT_SECRET} with token {token}\u{202e} {}",
            "and much more ".repeat(40)
        );
        i.fake
            .go_down(Down::Status(500, "InternalServerError", echo), true);
        let s = i.current();
        let problem = s.problem.unwrap();
        assert!(!problem.contains(CLIENT_SECRET) && !problem.contains(&token));
        assert!(!problem.contains('\u{202e}'));
        assert!(problem.contains("[redacted]"));
        assert!(
            problem.chars().count() < MAX_PROBLEM_CHARS + 60,
            "{problem}"
        );
        for line in i.logs.borrow().iter().chain([&problem]) {
            for secret in [CLIENT_SECRET, &token, KEY_A, KEY_B] {
                assert!(!line.contains(secret), "{line}");
            }
        }
    }
}
