//! Where and as whom Infisical is read: the `INFISICAL_*` variables, checked against the
//! deployment (a development identity never reads production's secrets).

use url::Url;
use zeroize::Zeroizing;

use crate::domain::{Environment, Vars};
use crate::redact::is_hidden;

const DEFAULT_HOST: &str = "https://app.infisical.com";

/// Where and as whom to read the secrets.
pub struct InfisicalSettings {
    /// Without a trailing slash.
    pub host: String,
    pub client_id: String,
    pub client_secret: Zeroizing<String>,
    pub project_id: String,
    pub environment: String,
    pub secret_path: String,
    pub cache_ttl_ms: u64,
    pub max_stale_ms: u64,
}

impl InfisicalSettings {
    /// The settings of `SYSTEM_KEYS_SOURCE = "infisical"`, or `None` with every problem
    /// noted in `vars` (each names its variable, never its value).
    pub fn parse(vars: &mut Vars, environment: Environment) -> Option<InfisicalSettings> {
        let before = vars.problems();
        let get = |vars: &Vars, name: &str| vars.get(name).map(|v| v.trim().to_owned());
        let required = |vars: &mut Vars, var: &'static str| {
            let v = get(vars, var);
            if v.is_none() {
                vars.problem(var, "is required when SYSTEM_KEYS_SOURCE is infisical");
            }
            v.unwrap_or_default()
        };

        let host = get(vars, "INFISICAL_HOST").unwrap_or_else(|| DEFAULT_HOST.into());
        let host = host.trim_end_matches('/').to_owned();
        let host_ok = Url::parse(&host).is_ok_and(|u| {
            (u.scheme() == "https"
                || (u.scheme() == "http" && environment == Environment::Development))
                && u.host().is_some()
                && u.query().is_none()
                && u.fragment().is_none()
                && u.username().is_empty()
                && u.password().is_none()
        });
        if !host_ok {
            vars.problem(
                "INFISICAL_HOST",
                "must be an https URL (http only in development)",
            );
        }
        let client_id = required(vars, "INFISICAL_CLIENT_ID");
        let client_secret = Zeroizing::new(required(vars, "INFISICAL_CLIENT_SECRET"));
        let project_id = required(vars, "INFISICAL_PROJECT_ID");

        let (deployment, expected) = match environment {
            Environment::Development => ("development", "dev"),
            Environment::Staging => ("staging", "staging"),
            Environment::Production => ("production", "prod"),
        };
        let slug = required(vars, "INFISICAL_ENVIRONMENT");
        if !slug.is_empty() && slug != expected {
            let text = if ["dev", "staging", "prod"].contains(&slug.as_str()) {
                format!(
                    "is {slug} but ENVIRONMENT is {deployment}: a {expected} identity must not read {slug} secrets"
                )
            } else {
                format!(
                    "must be {expected} (the Infisical environment of ENVIRONMENT {deployment})"
                )
            };
            vars.problem("INFISICAL_ENVIRONMENT", text);
        }

        let secret_path = get(vars, "INFISICAL_SECRET_PATH").unwrap_or_else(|| "/".into());
        if !secret_path.starts_with('/') || secret_path.chars().any(is_hidden) {
            vars.problem(
                "INFISICAL_SECRET_PATH",
                "must be a folder path starting with /",
            );
        }

        let cache_ttl_ms = vars.number("INFISICAL_CACHE_TTL_SECONDS", 60, 1, 3600) * 1000;
        let max_stale_ms = vars.number("INFISICAL_MAX_STALE_SECONDS", 3600, 0, 86_400) * 1000;

        (vars.problems() == before).then(|| InfisicalSettings {
            host,
            client_id,
            client_secret,
            project_id,
            environment: slug,
            secret_path,
            cache_ttl_ms,
            max_stale_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{CLIENT_ID, CLIENT_SECRET, PROJECT};
    use super::*;
    use crate::domain::{read_vars, ConfigError};

    fn parse(
        pairs: &[(&str, &str)],
        env: Environment,
    ) -> (Option<InfisicalSettings>, Vec<ConfigError>) {
        read_vars(pairs, |v| InfisicalSettings::parse(v, env))
    }

    const REQUIRED: [(&str, &str); 4] = [
        ("INFISICAL_CLIENT_ID", CLIENT_ID),
        ("INFISICAL_CLIENT_SECRET", CLIENT_SECRET),
        ("INFISICAL_PROJECT_ID", PROJECT),
        ("INFISICAL_ENVIRONMENT", "prod"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = REQUIRED
            .iter()
            .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
            .copied()
            .collect();
        v.extend_from_slice(extra);
        v
    }

    #[test]
    fn settings_have_safe_defaults() {
        let (s, errors) = parse(&REQUIRED, Environment::Production);
        assert!(errors.is_empty(), "{errors:?}");
        let s = s.unwrap();
        assert_eq!(s.host, "https://app.infisical.com");
        assert_eq!(
            (s.client_id.as_str(), s.client_secret.as_str()),
            (CLIENT_ID, CLIENT_SECRET)
        );
        assert_eq!(
            (s.project_id.as_str(), s.environment.as_str()),
            (PROJECT, "prod")
        );
        assert_eq!(s.secret_path, "/");
        assert_eq!((s.cache_ttl_ms, s.max_stale_ms), (60_000, 3_600_000));

        let (s, errors) = parse(
            &with(&[
                ("INFISICAL_HOST", "http://127.0.0.1:8080/"),
                ("INFISICAL_ENVIRONMENT", "dev"),
                ("INFISICAL_SECRET_PATH", "/vault"),
                ("INFISICAL_CACHE_TTL_SECONDS", "5"),
                ("INFISICAL_MAX_STALE_SECONDS", "0"),
            ]),
            Environment::Development,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let s = s.unwrap();
        assert_eq!(
            (s.host.as_str(), s.secret_path.as_str()),
            ("http://127.0.0.1:8080", "/vault")
        );
        assert_eq!((s.cache_ttl_ms, s.max_stale_ms), (5_000, 0));
        let (s, errors) = parse(
            &with(&[("INFISICAL_ENVIRONMENT", "staging")]),
            Environment::Staging,
        );
        assert!(s.is_some() && errors.is_empty());
    }

    #[test]
    fn the_infisical_environment_must_be_the_deployments_own() {
        let (s, errors) = parse(&REQUIRED, Environment::Development);
        assert!(s.is_none());
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].var, "INFISICAL_ENVIRONMENT");
        assert_eq!(
            errors[0].problem,
            "is prod but ENVIRONMENT is development: a dev identity must not read prod secrets"
        );
        let (_, errors) = parse(
            &with(&[("INFISICAL_ENVIRONMENT", "dev")]),
            Environment::Production,
        );
        assert_eq!(
            errors[0].problem,
            "is dev but ENVIRONMENT is production: a prod identity must not read dev secrets"
        );
        let (_, errors) = parse(
            &with(&[("INFISICAL_ENVIRONMENT", "production")]),
            Environment::Production,
        );
        assert_eq!(
            errors[0].problem,
            "must be prod (the Infisical environment of ENVIRONMENT production)"
        );
    }

    #[test]
    fn every_bad_setting_is_named_without_its_value() {
        let (s, errors) = parse(&[], Environment::Production);
        assert!(s.is_none());
        let vars: Vec<_> = errors.iter().map(|e| e.var).collect();
        assert_eq!(
            vars,
            [
                "INFISICAL_CLIENT_ID",
                "INFISICAL_CLIENT_SECRET",
                "INFISICAL_PROJECT_ID",
                "INFISICAL_ENVIRONMENT"
            ]
        );
        let (s, errors) = parse(
            &with(&[
                ("INFISICAL_HOST", "http://infisical.internal.example"),
                ("INFISICAL_SECRET_PATH", "vault"),
                ("INFISICAL_CACHE_TTL_SECONDS", "0"),
                ("INFISICAL_MAX_STALE_SECONDS", "86401"),
            ]),
            Environment::Production,
        );
        assert!(s.is_none());
        let vars: Vec<_> = errors.iter().map(|e| e.var).collect();
        assert_eq!(
            vars,
            [
                "INFISICAL_HOST",
                "INFISICAL_SECRET_PATH",
                "INFISICAL_CACHE_TTL_SECONDS",
                "INFISICAL_MAX_STALE_SECONDS"
            ]
        );
        for e in &errors {
            let text = e.to_string();
            for value in [
                "infisical.internal",
                "vault",
                "86401",
                CLIENT_SECRET,
                CLIENT_ID,
            ] {
                assert!(!text.contains(value), "{text}");
            }
        }
        // Blank is unset.
        let (_, errors) = parse(
            &with(&[("INFISICAL_CLIENT_SECRET", "  ")]),
            Environment::Production,
        );
        assert_eq!(errors[0].var, "INFISICAL_CLIENT_SECRET");
    }
}
