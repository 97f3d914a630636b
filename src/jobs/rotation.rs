//! Master-key rotation as a job: every row sealed under another version is sealed again
//! under the active one, a chunk per message, and so is every anchor of the audit chains.
//! Resumable and idempotent: a chunk selects rows still under an old version after the
//! job's cursor, and moves the cursor and the counts on only after its writes, and only
//! from the cursor it started at; a row already under the active version is left alone.
//! So a step that runs twice (a resumed job while the first message was only delayed)
//! re-seals nothing twice, writes one `master_key.rotated` event per row and never counts
//! past the total, and a row is never written under a key that cannot open it (the vault
//! checks each one).

use super::{Job, JobOutcome, Workers};
use crate::audit::{settle, Actor, ActorType, Origin, Sealer};
use crate::credentials::CredentialStore;
use crate::crypto::random_bytes;
use crate::domain::StoreError;
use crate::domain::{hex_bytes, CredentialId, Timestamp};
use crate::jobs::{JobQueue, JobRecord, JobStore};
use crate::rewrap::Rewrapped;

/// Rows one message re-encrypts (each is one conditional write: with the chunk's read,
/// the anchors' pass and its progress, 27 D1 queries at most, leaving room in the
/// invocation's 50 for the other messages of its batch).
pub const REWRAP_CHUNK: u32 = 20;

/// Audit anchors one message re-seals (one read, one batch of writes).
pub const ANCHOR_CHUNK: u32 = 200;

fn origin() -> Origin {
    Origin {
        actor: Actor {
            kind: ActorType::Service,
            id: "master-key-rotation".into(),
        },
        request_id: None,
    }
}

/// Starts a rotation to `active`: a `jobs` row counting the credentials to re-encrypt,
/// and its first message (sent even when there are none: the audit anchors may need
/// re-sealing). `Err` only when the row cannot be written; a message that could not be sent
/// is picked up by the stall check (`GET /v1/admin/jobs/{id}`, the cron).
pub async fn start_rotation(
    store: &dyn CredentialStore,
    progress: &dyn JobStore,
    queue: &dyn JobQueue,
    active: u32,
    now: Timestamp,
    log: &dyn Fn(&str),
) -> Result<JobRecord, StoreError> {
    let total = store.count_stale(active).await?;
    let random: [u8; 16] = random_bytes().unwrap_or_default();
    let job = JobRecord {
        id: format!("job_{}", hex_bytes(&random)),
        kind: "rewrap".into(),
        // Running even with no row to re-encrypt: the audit anchors may still need it.
        state: "running".into(),
        total,
        done: 0,
        failed: 0,
        cursor: None,
        created_at: now,
        updated_at: now,
    };
    progress.create_job(&job).await?;
    if let Err(e) = queue
        .send(&[Job::Rewrap {
            job_id: job.id.clone(),
        }])
        .await
    {
        log(&format!("rotation: job {} queued late ({e})", job.id));
    }
    Ok(job)
}

/// One chunk of job `job_id`; how many rows it re-encrypted (each with an event).
pub(super) async fn step(w: &Workers<'_>, job_id: &str, log: &dyn Fn(&str)) -> (JobOutcome, usize) {
    match try_step(w, job_id, log).await {
        Ok(r) => r,
        Err(e) => {
            log(&format!("rotation: job {job_id} paused ({e}); retrying"));
            (JobOutcome::RetryAfter(10), 0)
        }
    }
}

async fn try_step(
    w: &Workers<'_>,
    job_id: &str,
    log: &dyn Fn(&str),
) -> Result<(JobOutcome, usize), String> {
    let rewrap = &w.rewrap;
    let Some(job) = w.progress.job(job_id).await.map_err(|e| e.to_string())? else {
        log(&format!("rotation: no job {job_id}; dropped"));
        return Ok((JobOutcome::Ack, 0));
    };
    if job.state != "running" {
        return Ok((JobOutcome::Ack, 0));
    }
    let keys = rewrap
        .config
        .master_keys
        .as_ref()
        .map_err(|e| e.to_string())?;
    let active = keys.active().get();
    let from = job.cursor.as_deref();
    let after = from.and_then(CredentialId::parse);
    let chunk = rewrap
        .store
        .stale_keys(active, after.as_ref(), REWRAP_CHUNK)
        .await
        .map_err(|e| e.to_string())?;
    let origin = origin();
    let (mut done, mut failed) = (0u64, 0u64);
    for read in &chunk {
        let mut outcome = rewrap
            .rewrap(read, &origin)
            .await
            .map_err(|e| e.to_string())?;
        if outcome == Rewrapped::Moved {
            // Changed meanwhile (a label, a re-check): once more on what is there now.
            if let Some(now) = rewrap
                .store
                .get(&read.user_id, &read.id)
                .await
                .map_err(|e| e.to_string())?
            {
                outcome = rewrap
                    .rewrap(&now, &origin)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        match outcome {
            Rewrapped::Done => done += 1,
            Rewrapped::Unreadable => failed += 1,
            Rewrapped::Moved | Rewrapped::Current => {}
        }
    }
    // The audit chains' heads and checkpoints under an old version, re-sealed (after
    // their seal is checked) under the active one. The cron's pass moves the legacy
    // window; this one leaves it alone.
    let sealer = Sealer::new(keys, rewrap.clock.now());
    let anchors = settle(w.audit, &sealer, ANCHOR_CHUNK, false)
        .await
        .map_err(|e| e.to_string())?;
    let finished = chunk.len() < REWRAP_CHUNK as usize && !anchors.more;
    let cursor = chunk.last().map(|c| c.id.as_str().to_owned());
    let advanced = w
        .progress
        .advance_job(
            job_id,
            from,
            done,
            failed,
            cursor.as_deref(),
            if finished { "done" } else { "running" },
            rewrap.clock.now(),
        )
        .await
        .map_err(|e| e.to_string())?;
    if !advanced {
        // Another step of this job started at the same cursor and recorded its chunk
        // first, and queued what follows: this one's rows are counted, and it stops.
        log(&format!(
            "rotation: job {job_id} was advanced by another step meanwhile; this one stops"
        ));
        return Ok((JobOutcome::Ack, done as usize));
    }
    if finished {
        log(&format!("rotation: job {job_id} finished"));
    } else if let Err(e) = w
        .queue
        .send(&[Job::Rewrap {
            job_id: job_id.to_owned(),
        }])
        .await
    {
        // Progress is saved: this same message, retried, carries on from the cursor.
        log(&format!(
            "rotation: job {job_id}'s next step not queued ({e}); retrying"
        ));
        return Ok((JobOutcome::RetryAfter(5), done as usize));
    }
    Ok((JobOutcome::Ack, done as usize))
}
