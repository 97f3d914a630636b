//! `/v1/admin/*` (service scope `admin`): operations on the whole vault.

use serde_json::json;

use super::router::{Outcome, ServiceCtx};
use super::Response;
use crate::error::ApiError;
use crate::jobs::{sweep, SWEEP_FANOUT};

/// `POST /v1/admin/revalidate`: a revalidation sweep now (what the hourly cron does):
/// the credentials due are claimed and queued, up to `SWEEP_FANOUT` per request.
pub(super) async fn revalidate(ctx: &ServiceCtx<'_>) -> Outcome {
    let app = ctx.app;
    let result = sweep(
        app.store,
        app.jobs,
        app.clock.now(),
        ctx.config.revalidate_after_hours,
    )
    .await
    .map(|queued| {
        Response::json(
            202,
            &json!({"queued": queued, "more": queued as u32 >= SWEEP_FANOUT}),
        )
    })
    .map_err(|e| ApiError::unavailable("The sweep could not be started; try again.").caused_by(e));
    Outcome::unaudited(result)
}
