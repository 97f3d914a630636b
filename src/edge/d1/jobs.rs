//! Background jobs' progress over D1 (the `jobs` table): a rotation's chunks, and the
//! running jobs whose message was lost.

use async_trait::async_trait;

use crate::domain::StoreError;
use crate::domain::Timestamp;
use crate::jobs::{JobRecord, JobStore};

use super::db::{changes, millis, num, opt_text, text, Db};

pub(in crate::edge) struct D1Jobs<'a> {
    db: &'a Db,
}

impl<'a> D1Jobs<'a> {
    pub(in crate::edge) fn new(db: &'a Db) -> Self {
        Self { db }
    }
}

struct JobRow {
    id: String,
    kind: String,
    state: String,
    total: f64,
    done: f64,
    failed: f64,
    cursor: Option<String>,
    created_at: f64,
    updated_at: f64,
}

#[async_trait(?Send)]
impl JobStore for D1Jobs<'_> {
    async fn create_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        self.db
            .run(
                "INSERT INTO jobs (id, kind, state, total, done, failed, cursor, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                &[
                    text(&job.id),
                    text(&job.kind),
                    text(&job.state),
                    num(job.total),
                    num(job.done),
                    num(job.failed),
                    opt_text(job.cursor.as_deref()),
                    millis(job.created_at),
                    millis(job.updated_at),
                ],
            )
            .await
            .map(|_| ())
    }

    async fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let row = self
            .db
            .first(
                "SELECT id, kind, state, total, done, failed, cursor, created_at, updated_at \
                 FROM jobs WHERE id = ?1",
                &[text(id)],
            )
            .await?;
        let row = row
            .map(|r| -> Result<JobRow, StoreError> {
                Ok(JobRow {
                    id: r.text("id")?,
                    kind: r.text("kind")?,
                    state: r.text("state")?,
                    total: r.num("total")?,
                    done: r.num("done")?,
                    failed: r.num("failed")?,
                    cursor: r.opt_text("cursor")?,
                    created_at: r.num("created_at")?,
                    updated_at: r.num("updated_at")?,
                })
            })
            .transpose()?;
        Ok(row.map(|r| JobRecord {
            id: r.id,
            kind: r.kind,
            state: r.state,
            total: r.total as u64,
            done: r.done as u64,
            failed: r.failed as u64,
            cursor: r.cursor,
            created_at: Timestamp::from_millis(r.created_at as u64),
            updated_at: Timestamp::from_millis(r.updated_at as u64),
        }))
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
        // One transaction: the step's own rows always count; the cursor, the failures and
        // the state move only from where the step started.
        let results = self
            .db
            .batch(vec![
                self.db.prepare(
                    "UPDATE jobs SET failed = failed + ?2, cursor = COALESCE(?3, cursor), \
                     state = ?4, updated_at = ?5 WHERE id = ?1 AND state = 'running' AND cursor IS ?6",
                    &[
                        text(id),
                        num(failed),
                        opt_text(cursor),
                        text(state),
                        millis(now),
                        opt_text(from),
                    ],
                )?,
                self.db.prepare(
                    "UPDATE jobs SET done = done + ?2 WHERE id = ?1",
                    &[text(id), num(done)],
                )?,
            ])
            .await?;
        Ok(changes(&results, 0) > 0)
    }

    async fn stalled_jobs(&self, before: Timestamp, limit: u32) -> Result<Vec<String>, StoreError> {
        self.db
            .all(
                "SELECT id FROM jobs WHERE state = 'running' AND updated_at < ?1 LIMIT ?2",
                &[millis(before), num(u64::from(limit))],
            )
            .await?
            .read(|r| r.text("id"))
    }
}
