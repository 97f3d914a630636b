//! Typed configuration, parsed once per isolate from the Worker's vars and secrets.
//!
//! Each section is parsed by the module that owns it, through one reader
//! ([`Vars`]) that keeps every problem in one list, so they are all reported together:
//!
//! | section | variables | parsed in |
//! |---|---|---|
//! | environment | `ENVIRONMENT` | `domain::Environment::parse` |
//! | keys | `MASTER_KEYS`, `MASTER_KEY_ACTIVE`, `MASTER_KEY` | `crypto::MasterKeys::from_vars` |
//! | auth | `AUTH_*`, `SERVICE_TOKENS` | `auth/settings.rs` |
//! | providers | `<PROVIDER>_BASE_URL`, `ALLOW_PRIVATE_BASE_URLS`, `SANDBOX`, `VALIDATION_DEADLINE_MS`, `PROBE_ATTEMPT_TIMEOUT_MS` | `providers/settings.rs` |
//! | limits | `RATE_LIMITS`, `MAX_CREDENTIALS_PER_USER`, `PROXY_MAX_BODY_BYTES`, `PROXY_MAX_ATTEMPTS` | `limits.rs` |
//! | jobs | `REVALIDATE_AFTER_HOURS`, `AUDIT_RETENTION_DAYS`, `JOB_STALL_SECONDS` | here ([`JobSettings`]) |
//! | API | `CORS_ALLOWED_ORIGINS` | here |
//! | notify | `NOTIFY_*` | `notify::WebhookSettings::parse` |
//! | budgets | `SYSTEM_KEY_BUDGETS` | `budgets/settings.rs` |
//! | metering | `METERING` | `metering::MeteringSettings::parse` |
//! | realtime | `REALTIME_TOKEN_MAX_SECONDS` | `realtime/mod.rs` |
//! | system keys | `FALLBACK_POLICY`, `SYSTEM_KEYS_SOURCE`, `SYSTEM_KEY_*`, `INFISICAL_*` | `system_keys/settings.rs`, `system_keys/infisical/settings.rs` |
//!
//! The jobs' and the API's sections are parsed here because their readers (`jobs/`,
//! `api/`) sit on the floor above this one, which may not be imported from here.
//!
//! A missing or malformed value is a [`ConfigError`] that names the variable (never its
//! value); `/v1/health` reports it and the API answers 503 `not_configured`. The master
//! key ring is kept apart: without it the service still answers health and listings.

use std::collections::BTreeMap;

use url::Url;

use crate::auth::{AuthSettings, JwtSettings, ServiceToken};
use crate::crypto::{MasterKeyError, MasterKeys, SecretKey};
use crate::domain::{ConfigError, CredentialParams, Environment, ProviderId, Vars};
use crate::limits::LimitSettings;
use crate::notify::WebhookSettings;
use crate::providers::ProviderSettings;
use crate::system_keys::{FallbackPolicy, InfisicalSettings, SystemKeySettings, SystemKeysSource};

/// Every section's values, gathered for the requests and the jobs to read.
pub struct Config {
    pub environment: Environment,
    /// `Err` when no usable master key is configured: nothing may be written then.
    pub master_keys: Result<MasterKeys, MasterKeyError>,
    pub jwt: JwtSettings,
    /// Each provider's base URLs, in the order of its `endpoints` (may hold `{region}`).
    pub provider_endpoints: BTreeMap<ProviderId, Vec<String>>,
    pub allow_private_base_urls: bool,
    pub validation_deadline_ms: u64,
    pub probe_attempt_timeout_ms: u64,
    pub revalidate_after_hours: u64,
    pub audit_retention_days: u64,
    pub fallback_policy: FallbackPolicy,
    pub system_keys_source: SystemKeysSource,
    pub cors_allowed_origins: Vec<String>,
    /// Whether live provider checks are rate limited (`RATE_LIMITS`; off only outside
    /// production).
    pub rate_limits: bool,
    /// The provider base URLs point at stand-ins (`SANDBOX`, set by `scripts/dev.sh
    /// --sandbox`; never in production): health says so, and the settings page shows it.
    pub sandbox: bool,
    /// The most credentials one user may hold (`MAX_CREDENTIALS_PER_USER`).
    pub max_credentials_per_user: u32,
    /// The backend services let in (`SERVICE_TOKENS`, hashes only).
    pub service_tokens: Vec<ServiceToken>,
    /// System keys from the Worker's secrets (`SYSTEM_KEY_<PROVIDER>`).
    pub system_keys_env: BTreeMap<ProviderId, SecretKey>,
    /// Where a provider's system key is used, for providers that need a region or a base
    /// URL (`SYSTEM_KEY_AZURE_SPEECH_REGION`, `SYSTEM_KEY_OLLAMA_BASE_URL`), whichever
    /// source serves the key.
    pub system_key_params: BTreeMap<ProviderId, CredentialParams>,
    /// The largest request body the proxy forwards (`PROXY_MAX_BODY_BYTES`).
    pub proxy_max_body_bytes: usize,
    /// How many of a user's keys one proxied call may try (`PROXY_MAX_ATTEMPTS`).
    pub proxy_max_attempts: u32,
    /// When a running job counts as stalled (`JOB_STALL_SECONDS`, in ms).
    pub job_stall_ms: u64,
    /// Where Infisical's secrets are read (`SYSTEM_KEYS_SOURCE = "infisical"`); the isolate
    /// takes it to build its cache.
    pub infisical: Option<InfisicalSettings>,
    /// Key-health webhooks (`NOTIFY_WEBHOOK_URL`); `None` is off.
    pub webhooks: Option<WebhookSettings>,
    /// Each user's default budgets on system-key use (`SYSTEM_KEY_BUDGETS`).
    pub system_key_budgets: crate::budgets::SystemBudgets,
    /// Whether the proxy meters its answers (`METERING`; off only outside production).
    pub metering: bool,
    /// The longest lifetime a minted realtime credential is asked for
    /// (`REALTIME_TOKEN_MAX_SECONDS`).
    pub realtime_token_max_seconds: u64,
    /// The longest a proxied realtime session lasts (`REALTIME_MAX_SECONDS`).
    pub realtime_max_seconds: u64,
}

impl Config {
    /// Reads every variable through `get` (vars and secrets alike; blank means unset) and
    /// returns either a whole configuration or every problem found.
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Config, Vec<ConfigError>> {
        let mut vars = Vars::new(&get);
        let environment = Environment::parse(&mut vars);
        let master_keys = MasterKeys::from_vars(&vars);
        let auth = AuthSettings::parse(&mut vars, environment);
        let providers = ProviderSettings::parse(&mut vars, environment);
        let limits = LimitSettings::parse(&mut vars, environment);
        let jobs = JobSettings::parse(&mut vars, environment);
        let cors_allowed_origins = cors_allowed_origins(&mut vars);
        let webhooks = WebhookSettings::parse(&mut vars, providers.allow_private_base_urls);
        let system_keys = SystemKeySettings::parse(&mut vars, environment);
        let budgets = crate::budgets::BudgetSettings::parse(&mut vars);
        let metering = crate::metering::MeteringSettings::parse(&mut vars, environment);
        let realtime = crate::realtime::RealtimeSettings::parse(&mut vars);

        let errors = vars.finish();
        if errors.is_empty() {
            Ok(Config {
                environment,
                master_keys,
                jwt: auth.jwt,
                provider_endpoints: providers.endpoints,
                allow_private_base_urls: providers.allow_private_base_urls,
                validation_deadline_ms: providers.validation_deadline_ms,
                probe_attempt_timeout_ms: providers.probe_attempt_timeout_ms,
                revalidate_after_hours: jobs.revalidate_after_hours,
                audit_retention_days: jobs.audit_retention_days,
                job_stall_ms: jobs.job_stall_seconds * 1000,
                fallback_policy: system_keys.fallback_policy,
                system_keys_source: system_keys.source,
                cors_allowed_origins,
                rate_limits: limits.rate_limits,
                sandbox: providers.sandbox,
                max_credentials_per_user: limits.max_credentials_per_user,
                service_tokens: auth.service_tokens,
                system_keys_env: system_keys.env,
                system_key_params: system_keys.params,
                proxy_max_body_bytes: limits.proxy_max_body_bytes,
                proxy_max_attempts: limits.proxy_max_attempts,
                infisical: system_keys.infisical,
                webhooks,
                system_key_budgets: budgets.system,
                metering: metering.on,
                realtime_token_max_seconds: realtime.token_max_seconds,
                realtime_max_seconds: realtime.session_max_seconds,
            })
        } else {
            Err(errors)
        }
    }

    pub fn endpoints(&self, provider: ProviderId) -> &[String] {
        self.provider_endpoints
            .get(&provider)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// The jobs section: what the hourly cron does.
pub struct JobSettings {
    /// A key unchecked for this long is re-checked by the sweep (0: every hour, only
    /// outside production).
    pub revalidate_after_hours: u64,
    /// Audit events older than this are removed.
    pub audit_retention_days: u64,
    /// A running job whose progress has not moved for this long has lost its message
    /// and is set going again when its progress is asked for (`JOB_STALL_SECONDS`).
    pub job_stall_seconds: u64,
}

impl JobSettings {
    pub fn parse(vars: &mut Vars, environment: Environment) -> JobSettings {
        let revalidate_after_hours = vars.number("REVALIDATE_AFTER_HOURS", 24, 0, 24 * 365);
        let audit_retention_days = vars.number("AUDIT_RETENTION_DAYS", 365, 1, 36_500);
        let job_stall_seconds = vars.number("JOB_STALL_SECONDS", 30, 2, 3600);
        if job_stall_seconds < 30 && environment == Environment::Production {
            vars.problem(
                "JOB_STALL_SECONDS",
                "may not be under 30 in production (a slow chunk would be taken for a lost one)",
            );
        }
        if revalidate_after_hours == 0 && environment == Environment::Production {
            vars.problem(
                "REVALIDATE_AFTER_HOURS",
                "may not be 0 in production (every key would be probed every hour)",
            );
        }
        JobSettings {
            revalidate_after_hours,
            audit_retention_days,
            job_stall_seconds,
        }
    }
}

/// The API's section: the origins whose pages may call it from a browser
/// (`CORS_ALLOWED_ORIGINS`, comma-separated), without a trailing slash.
fn cors_allowed_origins(vars: &mut Vars) -> Vec<String> {
    let mut origins = Vec::new();
    for origin in vars
        .get("CORS_ALLOWED_ORIGINS")
        .unwrap_or_default()
        .split(',')
    {
        let origin = origin.trim();
        if origin.is_empty() {
            continue;
        }
        match Url::parse(origin) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.path() == "/"
                    && u.query().is_none() =>
            {
                origins.push(origin.trim_end_matches('/').to_owned());
            }
            _ => vars.problem(
                "CORS_ALLOWED_ORIGINS",
                "must be a comma-separated list of origins like https://app.example",
            ),
        }
    }
    origins
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::providers;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const SECRET: (&str, &str) = ("AUTH_JWT_SECRET", "0123456789abcdef0123456789abcdef");
    const AUDIENCE: (&str, &str) = ("AUTH_AUDIENCE", "https://app.example");

    #[test]
    fn defaults_are_production_safe() {
        let c = Config::parse(vars(&[SECRET, AUDIENCE])).unwrap();
        assert!(c.rate_limits);
        assert_eq!(c.max_credentials_per_user, 100);
        assert_eq!(c.environment, Environment::Production);
        assert!(!c.allow_private_base_urls);
        assert_eq!(c.validation_deadline_ms, 10_000);
        assert_eq!(c.fallback_policy, FallbackPolicy::UserThenSystem);
        assert!(c.cors_allowed_origins.is_empty());
        assert_eq!(c.master_keys.as_ref().err(), Some(&MasterKeyError::Missing));
        let eleven = providers::find("elevenlabs").unwrap().info().id;
        assert_eq!(c.endpoints(eleven), ["https://api.elevenlabs.io"]);
    }

    #[test]
    fn a_sweep_of_every_key_every_hour_is_for_development_only() {
        let hours = ("REVALIDATE_AFTER_HOURS", "0");
        let errors = Config::parse(vars(&[SECRET, AUDIENCE, hours]))
            .err()
            .unwrap();
        assert_eq!(errors[0].var, "REVALIDATE_AFTER_HOURS");
        let dev = ("ENVIRONMENT", "development");
        assert_eq!(
            Config::parse(vars(&[SECRET, hours, dev]))
                .unwrap()
                .revalidate_after_hours,
            0
        );
    }

    #[test]
    fn a_short_stall_wait_for_jobs_is_for_development_only() {
        let stall = ("JOB_STALL_SECONDS", "5");
        let errors = Config::parse(vars(&[SECRET, AUDIENCE, stall]))
            .err()
            .unwrap();
        assert_eq!(errors[0].var, "JOB_STALL_SECONDS");
        let dev = ("ENVIRONMENT", "development");
        assert_eq!(
            Config::parse(vars(&[SECRET, stall, dev]))
                .unwrap()
                .job_stall_ms,
            5000
        );
        assert_eq!(
            Config::parse(vars(&[SECRET, AUDIENCE]))
                .unwrap()
                .job_stall_ms,
            30_000
        );
    }

    #[test]
    fn every_bad_value_is_reported_by_name_without_its_value() {
        let errors = Config::parse(vars(&[
            ("AUTH_JWT_SECRET", "short-secret-value"),
            ("ENVIRONMENT", "prod"),
            ("VALIDATION_DEADLINE_MS", "ten"),
            ("ALLOW_PRIVATE_BASE_URLS", "yes"),
            ("ELEVENLABS_BASE_URL", "ftp://x"),
            ("CORS_ALLOWED_ORIGINS", "https://ok.example, not an origin"),
            ("FALLBACK_POLICY", "random"),
        ]))
        .err()
        .unwrap();
        let vars: Vec<_> = errors.iter().map(|e| e.var).collect();
        for want in [
            "AUTH_JWT_SECRET",
            "ENVIRONMENT",
            "VALIDATION_DEADLINE_MS",
            "ALLOW_PRIVATE_BASE_URLS",
            "ELEVENLABS_BASE_URL",
            "CORS_ALLOWED_ORIGINS",
            "FALLBACK_POLICY",
        ] {
            assert!(vars.contains(&want), "{want} not reported: {vars:?}");
        }
        assert!(errors
            .iter()
            .all(|e| !e.to_string().contains("short-secret-value")));
    }
}
