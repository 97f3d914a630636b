//! The core's jobs queue over `JOBS_QUEUE`.

use async_trait::async_trait;
use worker::Queue;

use crate::jobs::Job;
use crate::jobs::JobQueue;

pub(in crate::edge) struct QueueJobs {
    pub queue: Option<Queue>,
}

impl QueueJobs {
    /// `JOBS_QUEUE`, if it is bound.
    pub(in crate::edge) fn new(env: &worker::Env) -> Self {
        Self {
            queue: env.queue("JOBS_QUEUE").ok(),
        }
    }
}

#[async_trait(?Send)]
impl JobQueue for QueueJobs {
    async fn send(&self, jobs: &[Job]) -> Result<(), String> {
        let Some(queue) = &self.queue else {
            return Err("JOBS_QUEUE is not bound".into());
        };
        let bodies: Vec<String> = jobs
            .iter()
            .map(|j| serde_json::to_string(j).unwrap_or_default())
            .collect();
        super::send::send_batch(queue, bodies)
            .await
            .map_err(|e| format!("queue send failed ({e})"))
    }
}
