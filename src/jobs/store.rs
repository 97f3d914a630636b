//! Background jobs' seams: where their progress is kept and where their messages go.

use async_trait::async_trait;

use crate::domain::{StoreError, Timestamp};

/// A background job's progress, as `GET /v1/admin/jobs/{id}` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub kind: String,
    /// `running` or `done`.
    pub state: String,
    pub total: u64,
    pub done: u64,
    pub failed: u64,
    /// Where the next chunk starts (the last credential id handled).
    pub cursor: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Where job progress is kept (`jobs`).
#[async_trait(?Send)]
pub trait JobStore {
    async fn create_job(&self, job: &JobRecord) -> Result<(), StoreError>;
    async fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError>;
    /// Records one chunk that started at cursor `from`: `done` is always added (each row
    /// is re-sealed by one step only, whichever counts it); the failures, the cursor and
    /// the state only if the job is still running at `from` (`false` when another step of
    /// the same job got there first).
    #[allow(clippy::too_many_arguments)]
    async fn advance_job(
        &self,
        id: &str,
        from: Option<&str>,
        done: u64,
        failed: u64,
        cursor: Option<&str>,
        state: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError>;
    /// Running jobs not advanced since `before` (their message was lost), at most `limit`.
    async fn stalled_jobs(&self, before: Timestamp, limit: u32) -> Result<Vec<String>, StoreError>;
}

/// Where background jobs go (`JOBS_QUEUE`).
#[async_trait(?Send)]
pub trait JobQueue {
    /// Sends `jobs` in one call; says why not when it cannot.
    async fn send(&self, jobs: &[crate::jobs::Job]) -> Result<(), String>;
}
