//! `GET /v1/health`: whether the configuration, the master key and D1 are usable.
//! Says which check failed, never a value.

use serde_json::json;

use super::{App, Response};
use crate::crypto::MasterKeyError;
use crate::error::ApiError;

pub(super) async fn health(app: &App<'_>) -> Response {
    let (config, master_key, problems) = match app.config {
        Ok(c) => {
            let mk = match &c.master_keys {
                Ok(_) => "ok",
                Err(MasterKeyError::Missing) => "missing",
                Err(_) => "invalid",
            };
            ("ok", mk, Vec::new())
        }
        Err(errors) => (
            "error",
            "unknown",
            errors.iter().map(|e| e.to_string()).collect(),
        ),
    };
    let database = match app.store.ping().await {
        Ok(()) => "ok",
        Err(e) => {
            (app.log)(&format!("health: database check failed: {e}"));
            "error"
        }
    };
    let checks = json!({"config": config, "master_key": master_key, "database": database});
    if config == "ok" && master_key == "ok" && database == "ok" {
        return Response::json(200, &json!({"status": "ok", "checks": checks}));
    }
    let error = if database != "ok" && config == "ok" && master_key == "ok" {
        ApiError::unavailable("The database is not answering.")
    } else if master_key != "ok" && config == "ok" {
        let why = match app.config.map(|c| c.master_keys.as_ref().err()) {
            Ok(Some(e)) => e.to_string(),
            _ => String::new(),
        };
        ApiError::not_configured(why)
    } else {
        ApiError::not_configured("The configuration has problems.")
            .with("problems", json!(problems))
    };
    Response::problem(&error.with("checks", checks))
}
