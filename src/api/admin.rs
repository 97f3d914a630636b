//! `/v1/admin/*` (service scope `admin`): operations on the whole vault.

use serde_json::json;

use super::commands::{import_command, json_body};
use super::context::{Outcome, ServiceCtx};
use super::problem::ApiError;
use super::Response;
use crate::domain::BatchId;
use crate::error::FieldError;
use crate::import::{BatchRow, EntryOutcome, ImportReport, RollbackReport};
use crate::jobs::JobRecord;
use crate::jobs::{start_rotation, sweep, Job, SWEEP_FANOUT};

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
        // A running job not advanced for `JOB_STALL_SECONDS` has lost its message: it is
        // sent again.
        if job.state == "running" && job.updated_at.millis_until(now) > ctx.config.job_stall_ms {
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

/// The kind of `jobs` row an import batch is recorded as.
const IMPORT_KIND: &str = "import";

/// `POST /v1/admin/import`: keys an operator already holds, for the users they belong
/// to; a report per entry of what was created, skipped as a duplicate or rejected (and
/// why). `dry_run` reports and changes nothing.
pub(super) async fn import(ctx: &ServiceCtx<'_>) -> Outcome {
    let app = ctx.app;
    let result = async {
        let command = import_command(ctx.config, json_body(ctx.request)?)?;
        if let Some(batch) = &command.batch {
            // A new id starts a batch; a known one must be an import's.
            let known = app.job_store.job(batch.as_str()).await?;
            if known.is_some_and(|j| j.kind != IMPORT_KIND) {
                return Err(ApiError::invalid_request(vec![FieldError::new(
                    "batch_id",
                    "names a job that is not an import",
                )]));
            }
        }
        let report = ctx
            .imports()
            .import(&ctx.origin, &ctx.network, command)
            .await?;
        if let Some(event) = &report.committed {
            app.audit.nudge(event).await;
        }
        let view = import_view(&report);
        (app.log)(&format!("import: {}", view["summary"]));
        Ok(Response::json(200, &view))
    }
    .await;
    Outcome::unaudited(result)
}

/// `POST /v1/admin/import/{batch_id}/rollback`: removes what the batch created, except
/// rows their users have changed or made a default since; 404 for a batch never made.
pub(super) async fn rollback(ctx: &ServiceCtx<'_>) -> Outcome {
    let app = ctx.app;
    let result = async {
        let batch = BatchId::parse(ctx.param(0)).ok_or_else(ApiError::not_found)?;
        let record = app
            .job_store
            .job(batch.as_str())
            .await?
            .filter(|j| j.kind == IMPORT_KIND)
            .ok_or_else(ApiError::not_found)?;
        let report = ctx.imports().rollback(&ctx.origin, &batch).await?;
        if let Some(event) = &report.committed {
            app.audit.nudge(event).await;
        }
        Ok(Response::json(
            200,
            &rollback_view(&batch, &record, &report),
        ))
    }
    .await;
    Outcome::unaudited(result)
}

fn summary(report: &ImportReport) -> serde_json::Value {
    let count =
        |f: fn(&EntryOutcome) -> bool| report.entries.iter().filter(|e| f(&e.outcome)).count();
    json!({
        "entries": report.entries.len(),
        "created": count(|o| matches!(o, EntryOutcome::Created { .. })),
        "skipped": count(|o| matches!(o, EntryOutcome::Skipped { .. })),
        "rejected": count(|o| matches!(o, EntryOutcome::Rejected(_))),
    })
}

fn import_view(report: &ImportReport) -> serde_json::Value {
    let entries: Vec<serde_json::Value> = report
        .entries
        .iter()
        .enumerate()
        .map(|(index, e)| {
            let mut line = json!({"index": index, "user_id": e.user, "provider": e.provider});
            let more = match &e.outcome {
                EntryOutcome::Created {
                    id,
                    key_hint,
                    status,
                    checked,
                } => json!({
                    "outcome": "created", "credential_id": id, "key_hint": key_hint,
                    "status": status, "validated": checked,
                }),
                EntryOutcome::Skipped { existing, same_as } => json!({
                    "outcome": "skipped", "reason": "duplicate",
                    "credential_id": existing, "same_as_entry": same_as,
                }),
                EntryOutcome::Rejected(refusal) => {
                    let problem = ApiError::from(refusal.clone());
                    let mut body = problem.body();
                    if let Some(b) = body.as_object_mut() {
                        for member in ["type", "title", "status", "code", "detail"] {
                            b.remove(member);
                        }
                        b.insert("outcome".into(), json!("rejected"));
                        b.insert("reason".into(), json!(problem.code));
                        b.insert(
                            "message".into(),
                            json!(problem.detail.as_deref().unwrap_or(problem.title)),
                        );
                    }
                    body
                }
            };
            if let (Some(l), Some(m)) = (line.as_object_mut(), more.as_object()) {
                l.extend(m.clone());
            }
            line
        })
        .collect();
    json!({
        "batch_id": report.batch,
        "dry_run": report.dry_run,
        "validated": report.validated,
        "summary": summary(report),
        "entries": entries,
    })
}

fn rollback_view(
    batch: &BatchId,
    record: &JobRecord,
    report: &RollbackReport,
) -> serde_json::Value {
    let rows = |rows: &[BatchRow]| -> Vec<serde_json::Value> {
        rows.iter()
            .map(|r| json!({"credential_id": r.id, "user_id": r.user, "provider": r.provider}))
            .collect()
    };
    json!({
        "batch_id": batch,
        "created": record.total,
        "removed": report.removed.len(),
        "removed_credentials": rows(&report.removed),
        "kept": rows(&report.kept).into_iter().map(|mut k| {
            k["reason"] = json!("default_for_capability");
            k
        }).collect::<Vec<_>>(),
        "more": report.more,
    })
}
