//! `GET /v1/openapi.json`: the API description. Its one source is `docs/openapi.yaml`;
//! the build writes it as a static asset beside the Worker (it is not in the wasm), and
//! this route serves it with the API's own headers.

use async_trait::async_trait;

use super::problem::ApiError;
use super::{App, Response};

/// The static files deployed beside the Worker (Workers static assets).
#[async_trait(?Send)]
pub trait Assets {
    /// The file at `path` (such as `/openapi.json`), if it was deployed.
    async fn read(&self, path: &str) -> Option<Vec<u8>>;
}

/// Where the build puts the description among the static assets.
pub(super) const ASSET: &str = "/openapi.json";

pub(super) async fn openapi(app: &App<'_>) -> Response {
    match app.assets.read(ASSET).await {
        Some(body) => Response {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body,
            stream: None,
            upgrade: None,
        },
        None => Response::problem(&ApiError::not_configured(
            "The API description was not deployed with this build (scripts/build.sh writes it).",
        )),
    }
}
