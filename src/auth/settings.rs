//! The auth section of the configuration: how user tokens are checked (`AUTH_JWT_SECRET`,
//! `AUTH_JWKS_URL` and its cache, `AUTH_ISSUER`, `AUTH_AUDIENCE`) and which backend
//! services are let in (`SERVICE_TOKENS`).

use url::Url;
use zeroize::Zeroizing;

use super::service::{parse_service_tokens, ServiceToken};
use super::token::JwtSettings;
use crate::domain::{Environment, Vars};

/// Who may call: end users' tokens and the backend services' tokens.
pub struct AuthSettings {
    pub jwt: JwtSettings,
    pub service_tokens: Vec<ServiceToken>,
}

impl AuthSettings {
    /// Some user authentication is required; production also requires an audience, and an
    /// issuer with a JWKS.
    pub fn parse(vars: &mut Vars, environment: Environment) -> AuthSettings {
        let hs256_secret = vars
            .get("AUTH_JWT_SECRET")
            .map(|s| Zeroizing::new(s.into_bytes()));
        if hs256_secret.as_ref().is_some_and(|s| s.len() < 32) {
            vars.problem("AUTH_JWT_SECRET", "must be at least 32 bytes");
        }
        if hs256_secret.is_none() && vars.get("AUTH_JWKS_URL").is_none() {
            vars.problem(
                "AUTH_JWT_SECRET",
                "no user authentication is configured (set AUTH_JWT_SECRET or AUTH_JWKS_URL)",
            );
        }
        let jwks_url = vars
            .get("AUTH_JWKS_URL")
            .and_then(|raw| match Url::parse(raw.trim()) {
                Ok(u)
                    if u.scheme() == "https"
                        || (u.scheme() == "http" && environment == Environment::Development) =>
                {
                    Some(raw.trim().to_owned())
                }
                _ => {
                    vars.problem(
                        "AUTH_JWKS_URL",
                        "must be an https URL (http only in development)",
                    );
                    None
                }
            });
        let jwks_ttl_ms = vars.number("AUTH_JWKS_CACHE_SECONDS", 600, 10, 86_400) * 1000;
        let jwks_max_stale_ms =
            vars.number("AUTH_JWKS_MAX_STALE_SECONDS", 3_600, 0, 7 * 86_400) * 1000;
        let issuer = vars.get("AUTH_ISSUER");
        let audience = vars.get("AUTH_AUDIENCE");
        // A token minted for another app of the same issuer must not open this vault.
        if environment == Environment::Production {
            if audience.is_none() {
                vars.problem(
                    "AUTH_AUDIENCE",
                    "is required in production (the aud every user token must carry)",
                );
            }
            if jwks_url.is_some() && issuer.is_none() {
                vars.problem(
                    "AUTH_ISSUER",
                    "is required in production when AUTH_JWKS_URL is set",
                );
            }
        }
        let jwt = JwtSettings {
            hs256_secret,
            issuer,
            audience,
            jwks_url,
            jwks_ttl_ms,
            jwks_max_stale_ms,
        };

        let service_tokens = match vars.get("SERVICE_TOKENS") {
            None => Vec::new(),
            Some(raw) => parse_service_tokens(&raw).unwrap_or_else(|problem| {
                vars.problem("SERVICE_TOKENS", problem);
                Vec::new()
            }),
        };
        AuthSettings {
            jwt,
            service_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{read_vars, ConfigError};

    const SECRET: (&str, &str) = ("AUTH_JWT_SECRET", "0123456789abcdef0123456789abcdef");
    const AUDIENCE: (&str, &str) = ("AUTH_AUDIENCE", "https://app.example");

    /// The auth section of a deployment whose ENVIRONMENT is in `pairs` (production if not).
    fn parse(pairs: &[(&str, &str)]) -> Result<AuthSettings, Vec<ConfigError>> {
        let (auth, errors) = read_vars(pairs, |v| {
            let environment = Environment::parse(v);
            AuthSettings::parse(v, environment)
        });
        if errors.is_empty() {
            Ok(auth)
        } else {
            Err(errors)
        }
    }

    #[test]
    fn some_user_authentication_is_required() {
        let errors = parse(&[]).err().unwrap();
        assert_eq!(errors[0].var, "AUTH_JWT_SECRET");
    }

    #[test]
    fn production_requires_an_audience_and_with_a_jwks_an_issuer() {
        let errors = parse(&[SECRET]).err().unwrap();
        assert_eq!(
            errors.iter().map(|e| e.var).collect::<Vec<_>>(),
            ["AUTH_AUDIENCE"]
        );
        let errors = parse(&[
            AUDIENCE,
            ("AUTH_JWKS_URL", "https://issuer.example/jwks.json"),
        ])
        .err()
        .unwrap();
        assert_eq!(
            errors.iter().map(|e| e.var).collect::<Vec<_>>(),
            ["AUTH_ISSUER"]
        );
        let ok = parse(&[
            AUDIENCE,
            ("AUTH_JWKS_URL", "https://issuer.example/jwks.json"),
            ("AUTH_ISSUER", "https://issuer.example/"),
        ]);
        assert!(ok.is_ok());
        // Outside production both stay optional.
        assert!(parse(&[SECRET, ("ENVIRONMENT", "staging")]).is_ok());
    }
}
