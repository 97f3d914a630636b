//! `GET /v1/health`: whether the configuration, the master key and D1 are usable.
//! Says which check failed, never a value.

use serde_json::json;

use super::problem::ApiError;
use super::{App, Response};
use crate::config::Config;
use crate::crypto::MasterKeyError;
use crate::system_keys::SystemKeys;

pub(super) async fn health(app: &App<'_>) -> Response {
    let configured: Vec<u32> = match app.config {
        Ok(Config {
            master_keys: Ok(keys),
            ..
        }) => keys.versions().map(|v| v.get()).collect(),
        _ => Vec::new(),
    };
    let (database_ok, orphan) = match app.store.ping(&configured).await {
        Ok(orphan) => (true, orphan),
        Err(e) => {
            (app.log)(&format!("health: database check failed: {e}"));
            (false, None)
        }
    };
    // A configuration problem is reported before a database one.
    let (config, master_key, problem) = match app.config {
        Err(errors) => {
            let problems: Vec<String> = errors.iter().map(ToString::to_string).collect();
            let e = ApiError::not_configured("The configuration has problems.")
                .with("problems", json!(problems));
            ("error", "unknown", Some(e))
        }
        Ok(c) => match &c.master_keys {
            // A version configured away while rows still use it: those keys cannot be read.
            Ok(_) if orphan.is_some() => (
                "ok",
                "version_missing",
                Some(ApiError::not_configured(format!(
                    "Master key version {} seals stored keys but is not in MASTER_KEYS; put it back until a rotation has moved every row off it.",
                    orphan.unwrap_or_default()
                ))),
            ),
            Ok(_) => ("ok", "ok", None),
            Err(e) => {
                let check = if *e == MasterKeyError::Missing {
                    "missing"
                } else {
                    "invalid"
                };
                ("ok", check, Some(ApiError::not_configured(e.to_string())))
            }
        },
    };
    let mut checks = json!({"config": config, "master_key": master_key, "database": if database_ok { "ok" } else { "error" }});
    // Which source and tier serves system keys (and its last problem), never a value.
    if let Ok(c) = app.config {
        let keys = SystemKeys {
            env: &c.system_keys_env,
            infisical: app.infisical,
            http: app.http,
            clock: app.clock,
            log: app.log,
        };
        checks["system_keys"] = keys.health().await;
        // Whether the providers are the real ones or the sandbox's stand-ins.
        checks["providers"] = json!(if c.sandbox { "sandbox" } else { "live" });
    }
    let problem = problem.or_else(|| {
        (!database_ok).then(|| ApiError::unavailable("The database is not answering."))
    });
    match problem {
        None => Response::json(200, &json!({"status": "ok", "checks": checks})),
        Some(e) => Response::problem(&e.with("checks", checks)),
    }
}
