//! Master-key rotation as a job: every row sealed under another version is sealed again
//! under the active one, a chunk per message. Resumable and idempotent: a chunk selects
//! rows still under an old version after the job's cursor, and moves the cursor and the
//! counts on only after its writes; a redelivery redoes nothing that landed, and a row
//! is never written under a key that cannot open it (the vault checks each one).

use super::{Job, JobOutcome, Workers};
use crate::audit::{Actor, ActorType, Origin};
use crate::crypto::random_bytes;
use crate::domain::{hex_bytes, CredentialId, Timestamp};
use crate::ports::{CredentialStore, JobQueue, JobRecord, JobStore, StoreError};
use crate::vault::Rewrap;

/// Rows one message re-encrypts (each is one conditional write: with the chunk's read
/// and its progress, 23 D1 queries, leaving room in the invocation's 50 for the other
/// messages of its batch).
pub const REWRAP_CHUNK: u32 = 20;

fn origin() -> Origin {
    Origin {
        actor: Actor {
            kind: ActorType::Service,
            id: "master-key-rotation".into(),
        },
        request_id: None,
    }
}

/// Starts a rotation to `active`: a `jobs` row counting what is to do, and its first
/// message. `Err` only when the row cannot be written; a message that could not be sent
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
        state: if total == 0 { "done" } else { "running" }.into(),
        total,
        done: 0,
        failed: 0,
        cursor: None,
        created_at: now,
        updated_at: now,
    };
    progress.create_job(&job).await?;
    if total > 0 {
        if let Err(e) = queue
            .send(&[Job::Rewrap {
                job_id: job.id.clone(),
            }])
            .await
        {
            log(&format!("rotation: job {} queued late ({e})", job.id));
        }
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
    let vault = w.vault;
    let Some(job) = w.progress.job(job_id).await.map_err(|e| e.to_string())? else {
        log(&format!("rotation: no job {job_id}; dropped"));
        return Ok((JobOutcome::Ack, 0));
    };
    if job.state != "running" {
        return Ok((JobOutcome::Ack, 0));
    }
    let keys = vault
        .config
        .master_keys
        .as_ref()
        .map_err(|e| e.to_string())?;
    let active = keys.active().get();
    let after = job.cursor.as_deref().and_then(CredentialId::parse);
    let chunk = vault
        .store
        .stale_keys(active, after.as_ref(), REWRAP_CHUNK)
        .await
        .map_err(|e| e.to_string())?;
    let origin = origin();
    let (mut done, mut failed) = (0u64, 0u64);
    for read in &chunk {
        let mut outcome = vault.rewrap(read, &origin).await.map_err(|e| e.code)?;
        if outcome == Rewrap::Moved {
            // Changed meanwhile (a label, a re-check): once more on what is there now.
            if let Some(now) = vault
                .store
                .get(&read.user_id, &read.id)
                .await
                .map_err(|e| e.to_string())?
            {
                outcome = vault.rewrap(&now, &origin).await.map_err(|e| e.code)?;
            }
        }
        match outcome {
            Rewrap::Done => done += 1,
            Rewrap::Unreadable => failed += 1,
            Rewrap::Moved => {}
        }
    }
    let finished = chunk.len() < REWRAP_CHUNK as usize;
    let cursor = chunk.last().map(|c| c.id.as_str().to_owned());
    w.progress
        .advance_job(
            job_id,
            done,
            failed,
            cursor.as_deref(),
            if finished { "done" } else { "running" },
            vault.clock.now(),
        )
        .await
        .map_err(|e| e.to_string())?;
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
