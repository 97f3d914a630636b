//! The cron's entry point and its policy: what one scheduled run does, in what order, with
//! which limits and windows. The Worker's `#[event(scheduled)]` only hands over to [`cron`].
//!
//! In order: the outbox swept (what a lost nudge left is chained), the audit anchors
//! sealed, and, with a configuration without problems, the webhook deliverer woken, stalled
//! jobs resumed, the revalidation sweep fanned out and audit retention applied. A step that
//! fails is logged and the next one runs; the next hour's run tries again. Its bounds keep
//! one run within the free plan's 50 D1 queries (see [`CHAIN_ROUNDS`]).

use super::background::Background;
use super::{sweep, Job};
use crate::audit::{drain, settle};
use crate::domain::Timestamp;

/// Chaining rounds one cron run sweeps at most (three D1 queries each; with retention, the
/// anchors' pass and the revalidation claim the run stays within the free plan's 50
/// queries).
pub const CHAIN_ROUNDS: usize = 7;

/// Audit anchors one cron run seals or re-seals at most (two D1 queries).
pub const ANCHORS_PER_RUN: u32 = 500;

/// A running job not advanced for this long lost its message (a restart mid-rotation): the
/// cron sends it again.
pub const STALL_WINDOW_MS: u64 = 300_000;

/// Stalled jobs one cron run resumes at most.
pub const STALLED_PER_RUN: u32 = 5;

const DAY_MS: u64 = 86_400_000;

/// What one step of a cron run came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// It ran, and did this many things (events chained, anchors sealed, wake-ups sent,
    /// jobs resumed, credentials queued, events removed).
    Done(u64),
    /// It failed (logged); the next run tries again.
    Failed,
    /// It did not run (the reason is logged): no master key, a configuration with
    /// problems, webhooks off.
    Skipped,
}

/// What a cron run did, step by step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CronRun {
    pub chained: Step,
    pub anchors: Step,
    pub deliverer: Step,
    pub resumed: Step,
    pub revalidation: Step,
    pub retention: Step,
}

/// One scheduled run (`schedule` is the cron expression that fired, for the log).
pub async fn cron(bg: &Background<'_>, schedule: &str) -> CronRun {
    let mut run = CronRun {
        chained: Step::Skipped,
        anchors: Step::Skipped,
        deliverer: Step::Skipped,
        resumed: Step::Skipped,
        revalidation: Step::Skipped,
        retention: Step::Skipped,
    };
    let sealer = bg.sealer();
    // The sweeper: whatever a lost nudge left in the outbox is chained now (not without a
    // master key to seal the heads: the events wait).
    run.chained = match &sealer {
        Some(sealer) => match drain(bg.audit, sealer, CHAIN_ROUNDS).await {
            Ok(n) => {
                bg.info(&format!(
                    "cron '{schedule}': chained {n} pending audit event(s)"
                ));
                Step::Done(n as u64)
            }
            Err(e) => {
                bg.error(&format!(
                    "cron '{schedule}': chaining the audit outbox failed: {e}"
                ));
                Step::Failed
            }
        },
        None => {
            bg.error(&format!(
                "cron '{schedule}': no usable master key; audit events wait in the outbox"
            ));
            Step::Skipped
        }
    };
    // The anchors' pass: legacy anchors sealed, anchors under an old version re-sealed.
    if let Some(sealer) = &sealer {
        run.anchors = match settle(bg.audit, sealer, ANCHORS_PER_RUN, true).await {
            Ok(settled) => Step::Done(settled.resealed as u64),
            Err(e) => {
                bg.error(&format!("cron: sealing the audit anchors failed: {e}"));
                Step::Failed
            }
        };
    }
    let Ok(config) = bg.config else {
        bg.error("scheduled retention skipped: the configuration has problems");
        return run;
    };
    // Notices whose wake-up was lost (or that wait for a retry) are delivered.
    if config.webhooks.is_some() {
        run.deliverer = match bg.queue.send(&[Job::Notify]).await {
            Ok(()) => Step::Done(1),
            Err(e) => {
                bg.error(&format!(
                    "cron '{schedule}': waking the webhook deliverer failed: {e}"
                ));
                Step::Failed
            }
        };
    }
    // Jobs whose message was lost (a restart mid-rotation) carry on.
    let now = bg.clock.now();
    let stalled_before = Timestamp::from_millis(now.as_millis().saturating_sub(STALL_WINDOW_MS));
    run.resumed = match bg
        .progress
        .stalled_jobs(stalled_before, STALLED_PER_RUN)
        .await
    {
        Ok(stalled) => {
            let mut resumed = 0;
            for job_id in stalled {
                match bg.queue.send(&[Job::Rewrap { job_id }]).await {
                    Ok(()) => resumed += 1,
                    Err(e) => bg.error(&format!("cron: resuming a stalled job failed: {e}")),
                }
            }
            Step::Done(resumed)
        }
        Err(e) => {
            bg.error(&format!("cron: looking for stalled jobs failed: {e}"));
            Step::Failed
        }
    };
    // The revalidation sweep: one claim, one queue call per hundred credentials due
    // (none without a master key: nothing could be opened).
    run.revalidation = if config.master_keys.is_err() {
        bg.error(&format!(
            "cron '{schedule}': no usable master key; no revalidation sweep"
        ));
        Step::Skipped
    } else {
        match sweep(bg.credentials, bg.queue, now, config.revalidate_after_hours).await {
            Ok(n) => {
                bg.info(&format!(
                    "cron '{schedule}': queued {n} credential(s) for revalidation"
                ));
                Step::Done(n as u64)
            }
            Err(e) => {
                bg.error(&format!(
                    "cron '{schedule}': revalidation sweep failed: {e}"
                ));
                Step::Failed
            }
        }
    };
    let days = config.audit_retention_days;
    let cutoff = Timestamp::from_millis(bg.clock.now().as_millis().saturating_sub(days * DAY_MS));
    // Retention moves checkpoints, which are sealed: not without a master key.
    let Some(sealer) = &sealer else {
        return run;
    };
    run.retention = match bg.audit.apply_retention(cutoff, sealer).await {
        Ok(n) => {
            bg.info(&format!(
                "cron '{schedule}': audit retention removed {n} event(s) older than {days} days"
            ));
            Step::Done(n)
        }
        Err(e) => {
            bg.error(&format!("cron '{schedule}': audit retention failed: {e}"));
            Step::Failed
        }
    };
    run
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::testing::{Bed, SCHEDULE};
    use crate::jobs::Level;

    const DAY: u64 = DAY_MS;

    #[test]
    fn a_run_chains_seals_wakes_resumes_sweeps_and_retains_in_that_order() {
        let bed = Bed::with(&[
            ("NOTIFY_WEBHOOK_URL", "https://hooks.example/vault"),
            ("NOTIFY_WEBHOOK_SECRET", "0123456789abcdef01234567"),
            ("AUDIT_RETENTION_DAYS", "30"),
        ]);
        // One event older than the retention, one recent: both chained, the old one then
        // removed in the same run.
        bed.pending_event("u1", 31 * DAY, None);
        bed.pending_event("u1", 1000, None);
        bed.job("job_lost", "running", STALL_WINDOW_MS + 1);
        let run = bed.cron();
        assert_eq!(
            run,
            CronRun {
                chained: Step::Done(2),
                anchors: Step::Done(0),
                deliverer: Step::Done(1),
                resumed: Step::Done(1),
                revalidation: Step::Done(0),
                retention: Step::Done(1),
            }
        );
        assert_eq!(
            *bed.jobs.sent.borrow(),
            [
                Job::Notify,
                Job::Rewrap {
                    job_id: "job_lost".into()
                }
            ]
        );
        assert_eq!(bed.audit.rows.borrow().len(), 1);
        assert_eq!(
            bed.logged(Level::Info),
            [
                format!("cron '{SCHEDULE}': chained 2 pending audit event(s)"),
                format!("cron '{SCHEDULE}': queued 0 credential(s) for revalidation"),
                format!("cron '{SCHEDULE}': audit retention removed 1 event(s) older than 30 days"),
            ]
        );
        assert!(bed.logged(Level::Error).is_empty());
    }

    #[test]
    fn only_jobs_stalled_past_the_window_are_resumed_and_at_most_five_a_run() {
        let bed = Bed::with(&[]);
        for i in 0..7 {
            bed.job(&format!("job_stalled_{i}"), "running", STALL_WINDOW_MS + 1);
        }
        bed.job("job_busy", "running", STALL_WINDOW_MS);
        bed.job("job_done", "done", 3_600_000);
        let run = bed.cron();
        assert_eq!(run.resumed, Step::Done(u64::from(STALLED_PER_RUN)));
        let resumed: Vec<String> = bed
            .jobs
            .sent
            .borrow()
            .iter()
            .map(|j| match j {
                Job::Rewrap { job_id } => job_id.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(resumed.len(), 5);
        assert!(resumed.iter().all(|id| id.starts_with("job_stalled_")));
        // Webhooks are off: no wake-up.
        assert_eq!(run.deliverer, Step::Skipped);
    }

    #[test]
    fn without_a_master_key_nothing_is_chained_swept_or_retained() {
        let bed = Bed::without_master_key();
        bed.pending_event("u1", 1000, None);
        bed.job("job_lost", "running", STALL_WINDOW_MS + 1);
        // A database that fails every claim: the sweep is not even tried.
        bed.store.down.set(true);
        let run = bed.cron();
        assert_eq!(
            run,
            CronRun {
                chained: Step::Skipped,
                anchors: Step::Skipped,
                deliverer: Step::Skipped,
                resumed: Step::Done(1),
                revalidation: Step::Skipped,
                retention: Step::Skipped,
            }
        );
        assert_eq!(bed.audit.outbox.rows.borrow().len(), 1, "the event waits");
        assert_eq!(
            bed.logged(Level::Error),
            [
                format!("cron '{SCHEDULE}': no usable master key; audit events wait in the outbox"),
                format!("cron '{SCHEDULE}': no usable master key; no revalidation sweep"),
            ]
        );
    }

    #[test]
    fn with_a_master_key_a_failing_claim_is_logged_and_the_run_goes_on() {
        let bed = Bed::with(&[]);
        bed.store.down.set(true);
        let run = bed.cron();
        assert_eq!(run.revalidation, Step::Failed);
        assert_eq!(run.retention, Step::Done(0));
        assert_eq!(bed.logged(Level::Error).len(), 1);
        assert!(bed.logged(Level::Error)[0].contains("revalidation sweep failed"));
    }

    #[test]
    fn a_configuration_with_problems_still_chains_but_runs_nothing_else() {
        let bed = Bed::with_config_problems();
        bed.pending_event("u1", 1000, None);
        bed.job("job_lost", "running", STALL_WINDOW_MS + 1);
        let run = bed.cron();
        assert_eq!(run.chained, Step::Done(1));
        assert_eq!(
            [run.deliverer, run.resumed, run.revalidation, run.retention],
            [Step::Skipped; 4]
        );
        assert!(bed.jobs.sent.borrow().is_empty());
        assert_eq!(
            bed.logged(Level::Error),
            ["scheduled retention skipped: the configuration has problems"]
        );
    }

    #[test]
    fn the_outbox_sweep_stops_at_its_rounds() {
        let bed = Bed::with(&[]);
        let round = crate::audit::ROUND_SIZE as usize;
        for _ in 0..CHAIN_ROUNDS * round + 1 {
            bed.pending_event("u1", 1000, None);
        }
        let run = bed.cron();
        assert_eq!(run.chained, Step::Done((CHAIN_ROUNDS * round) as u64));
        assert_eq!(
            bed.audit.outbox.rows.borrow().len(),
            1,
            "left for the next run"
        );
    }
}
