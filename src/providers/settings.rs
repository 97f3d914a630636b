//! The providers section of the configuration: where each provider is reached (its
//! `<PROVIDER>_BASE_URL` variables, or stand-ins with `SANDBOX`), whether user-supplied
//! base URLs may be private (`ALLOW_PRIVATE_BASE_URLS`), and how long a live check may
//! take (`VALIDATION_DEADLINE_MS`, `PROBE_ATTEMPT_TIMEOUT_MS`).

use std::collections::BTreeMap;

use url::Url;

use crate::domain::{Environment, ProviderId, Vars};

pub struct ProviderSettings {
    /// Each provider's base URLs, in the order of its `endpoints` (may hold `{region}`).
    pub endpoints: BTreeMap<ProviderId, Vec<String>>,
    pub allow_private_base_urls: bool,
    /// The provider base URLs point at stand-ins (`SANDBOX`; never in production).
    pub sandbox: bool,
    pub validation_deadline_ms: u64,
    pub probe_attempt_timeout_ms: u64,
}

impl ProviderSettings {
    /// Private addresses and the sandbox are refused in production.
    pub fn parse(vars: &mut Vars, environment: Environment) -> ProviderSettings {
        let mut endpoints = BTreeMap::new();
        for p in super::all() {
            let info = p.info();
            let mut bases = Vec::new();
            for endpoint in info.endpoints {
                let raw = vars
                    .get(endpoint.var)
                    .unwrap_or_else(|| endpoint.default.to_owned());
                match parse_base_url(&raw) {
                    Some(base) => bases.push(base),
                    None => vars.problem(endpoint.var, "must be an absolute http(s) URL"),
                }
            }
            endpoints.insert(info.id, bases);
        }

        let allow_private_base_urls = vars.flag("ALLOW_PRIVATE_BASE_URLS", false);
        let validation_deadline_ms = vars.number("VALIDATION_DEADLINE_MS", 10_000, 500, 60_000);
        let probe_attempt_timeout_ms = vars.number("PROBE_ATTEMPT_TIMEOUT_MS", 4_000, 100, 60_000);
        let sandbox = vars.switch("SANDBOX", false);
        if sandbox && environment == Environment::Production {
            vars.problem("SANDBOX", "may not be on in production");
        }
        if allow_private_base_urls && environment == Environment::Production {
            vars.problem("ALLOW_PRIVATE_BASE_URLS", "may not be true in production");
        }
        ProviderSettings {
            endpoints,
            allow_private_base_urls,
            sandbox,
            validation_deadline_ms,
            probe_attempt_timeout_ms,
        }
    }
}

/// An absolute http(s) base URL without credentials, query or fragment; `{region}` may
/// stand in a host label. Returned without a trailing slash.
fn parse_base_url(raw: &str) -> Option<String> {
    let raw = raw.trim().trim_end_matches('/');
    let url = Url::parse(&raw.replace("{region}", "region")).ok()?;
    let ok = matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty()
        && url.password().is_none();
    ok.then(|| raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{read_vars, ConfigError};

    /// The providers section of a deployment whose ENVIRONMENT is in `pairs` (production
    /// if not).
    fn parse(pairs: &[(&str, &str)]) -> Result<ProviderSettings, Vec<ConfigError>> {
        let (providers, errors) = read_vars(pairs, |v| {
            let environment = Environment::parse(v);
            ProviderSettings::parse(v, environment)
        });
        if errors.is_empty() {
            Ok(providers)
        } else {
            Err(errors)
        }
    }

    #[test]
    fn base_urls_can_be_redirected() {
        let c = parse(&[("ELEVENLABS_BASE_URL", "http://127.0.0.1:9999/")]).unwrap();
        let eleven = super::super::find("elevenlabs").unwrap().info().id;
        assert_eq!(c.endpoints[&eleven], ["http://127.0.0.1:9999"]);
    }

    #[test]
    fn private_base_urls_are_never_allowed_in_production() {
        let errors = parse(&[("ALLOW_PRIVATE_BASE_URLS", "true")]).err().unwrap();
        assert_eq!(errors[0].var, "ALLOW_PRIVATE_BASE_URLS");
        let dev = parse(&[
            ("ALLOW_PRIVATE_BASE_URLS", "true"),
            ("ENVIRONMENT", "development"),
        ]);
        assert!(dev.is_ok());
    }

    #[test]
    fn the_sandbox_is_off_by_default_and_never_on_in_production() {
        assert!(!parse(&[]).unwrap().sandbox);
        let dev = parse(&[("SANDBOX", "on"), ("ENVIRONMENT", "development")]);
        assert!(dev.unwrap().sandbox);
        let errors = parse(&[("SANDBOX", "on")]).err().unwrap();
        assert_eq!(errors[0].var, "SANDBOX");
        let errors = parse(&[("SANDBOX", "yes"), ("ENVIRONMENT", "development")])
            .err()
            .unwrap();
        assert_eq!(errors[0].var, "SANDBOX");
    }
}
