//! `/v1/admin/*` (service scope `admin`): operations on the whole vault.

use serde_json::json;

use super::router::{Outcome, ServiceCtx};
use super::Response;
use crate::error::ApiError;
use crate::jobs::{start_rotation, sweep, Job, SWEEP_FANOUT};
use crate::ports::JobRecord;

/// A running job not advanced for this long has lost its message: it is sent again.
const STALLED_MS: u64 = 30_000;

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

/// `POST /v1/admin/master-key/rotate`: re-encrypts every stored key under the active
/// master key version, in the background; 202 with the job to follow.
pub(super) async fn rotate(ctx: &ServiceCtx<'_>) -> Outcome {
    let app = ctx.app;
    let result = async {
        let keys = ctx
            .config
            .master_keys
            .as_ref()
            .map_err(|e| ApiError::not_configured(format!("No usable master key: {e}")))?;
        let active = keys.active().get();
        let job = start_rotation(
            app.store,
            app.job_store,
            app.jobs,
            active,
            app.clock.now(),
            app.log,
        )
        .await?;
        let mut body = view(&job);
        body["job_id"] = json!(job.id);
        body["active_version"] = json!(active);
        Ok(Response::json(202, &body))
    }
    .await;
    Outcome::unaudited(result)
}

/// `GET /v1/admin/jobs/{id}`: a job's progress. A running job whose message was lost
/// (a restart, a failed send) is set going again.
pub(super) async fn job(ctx: &ServiceCtx<'_>) -> Outcome {
    let app = ctx.app;
    let result = async {
        let id = ctx.param(0);
        let job = app
            .job_store
            .job(id)
            .await?
            .ok_or_else(ApiError::not_found)?;
        let now = app.clock.now();
        if job.state == "running" && job.updated_at.millis_until(now) > STALLED_MS {
            match app
                .jobs
                .send(&[Job::Rewrap {
                    job_id: job.id.clone(),
                }])
                .await
            {
                Ok(()) => (app.log)(&format!("jobs: {} had stalled; resumed", job.id)),
                Err(e) => (app.log)(&format!(
                    "jobs: {} stalled and could not be resumed ({e})",
                    job.id
                )),
            }
        }
        Ok(Response::json(200, &view(&job)))
    }
    .await;
    Outcome::unaudited(result)
}

fn view(job: &JobRecord) -> serde_json::Value {
    json!({
        "id": job.id, "kind": job.kind, "state": job.state,
        "total": job.total, "done": job.done, "failed": job.failed,
        "created_at": job.created_at.to_rfc3339(), "updated_at": job.updated_at.to_rfc3339(),
    })
}
