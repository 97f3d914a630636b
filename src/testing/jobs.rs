//! The jobs' seams (`jobs::JobStore`, `jobs::JobQueue`) in memory.

use std::cell::{Cell, RefCell};

use async_trait::async_trait;

use crate::domain::StoreError;
use crate::domain::Timestamp;

use super::*;

#[async_trait(?Send)]
impl crate::jobs::JobStore for MemoryStore {
    async fn create_job(&self, job: &crate::jobs::JobRecord) -> Result<(), StoreError> {
        self.check()?;
        self.jobs.borrow_mut().push(job.clone());
        Ok(())
    }

    async fn job(&self, id: &str) -> Result<Option<crate::jobs::JobRecord>, StoreError> {
        self.check()?;
        if let Some(read_earlier) = self.job_read.borrow_mut().take() {
            return Ok(Some(read_earlier));
        }
        Ok(self.jobs.borrow().iter().find(|j| j.id == id).cloned())
    }

    async fn advance_job(
        &self,
        id: &str,
        from: Option<&str>,
        done: u64,
        failed: u64,
        cursor: Option<&str>,
        state: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.check()?;
        let mut advanced = false;
        for j in self.jobs.borrow_mut().iter_mut().filter(|j| j.id == id) {
            j.done += done;
            if j.state != "running" || j.cursor.as_deref() != from {
                continue;
            }
            j.failed += failed;
            if let Some(c) = cursor {
                j.cursor = Some(c.to_owned());
            }
            j.state = state.to_owned();
            j.updated_at = now;
            advanced = true;
        }
        Ok(advanced)
    }

    async fn stalled_jobs(&self, before: Timestamp, limit: u32) -> Result<Vec<String>, StoreError> {
        Ok(self
            .jobs
            .borrow()
            .iter()
            .filter(|j| j.state == "running" && j.updated_at < before)
            .take(limit as usize)
            .map(|j| j.id.clone())
            .collect())
    }
}

/// A jobs queue that keeps what it is sent (or refuses, when `down`).
#[derive(Default)]
pub(crate) struct MemoryJobs {
    pub sent: RefCell<Vec<crate::jobs::Job>>,
    pub down: Cell<bool>,
}

#[async_trait(?Send)]
impl crate::jobs::JobQueue for MemoryJobs {
    async fn send(&self, jobs: &[crate::jobs::Job]) -> Result<(), String> {
        if self.down.get() {
            return Err("test queue is down".into());
        }
        self.sent.borrow_mut().extend_from_slice(jobs);
        Ok(())
    }
}
