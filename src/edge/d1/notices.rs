//! Key-health notices over D1 (the `notifications` table), as the webhook deliverer sees
//! them: leased, delivered, tried again later. The audit chainer writes them
//! (`audit.rs`, with the events that make them).

use async_trait::async_trait;

use crate::domain::StoreError;
use crate::domain::Timestamp;
use crate::notify::{NotificationStore, StoredNotice};

use super::db::{num, text, Db};

pub(in crate::edge) struct D1Notices<'a> {
    db: &'a Db,
}

impl<'a> D1Notices<'a> {
    pub(in crate::edge) fn new(db: &'a Db) -> Self {
        Self { db }
    }
}

#[async_trait(?Send)]
impl NotificationStore for D1Notices<'_> {
    async fn claim(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<StoredNotice>, StoreError> {
        self.db
            .all(
                "UPDATE notifications SET next_attempt_at = ?2 WHERE id IN ( \
                   SELECT id FROM notifications WHERE next_attempt_at <= ?1 \
                   ORDER BY next_attempt_at LIMIT ?3) \
                 RETURNING id, body, attempts",
                &[
                    num(now.as_millis()),
                    num(lease_until.as_millis()),
                    num(u64::from(limit)),
                ],
            )
            .await?
            .read(|r| {
                Ok(StoredNotice {
                    id: r.text("id")?,
                    body: r.text("body")?,
                    attempts: r.num("attempts")? as u32,
                })
            })
    }

    async fn delivered(&self, id: &str) -> Result<(), StoreError> {
        self.db
            .run("DELETE FROM notifications WHERE id = ?1", &[text(id)])
            .await
            .map(|_| ())
    }

    async fn failed(
        &self,
        id: &str,
        attempts: u32,
        next_at: Timestamp,
        problem: &str,
    ) -> Result<(), StoreError> {
        self.db
            .run(
                "UPDATE notifications SET attempts = ?2, next_attempt_at = ?3, last_error = ?4 \
                 WHERE id = ?1",
                &[
                    text(id),
                    num(u64::from(attempts)),
                    num(next_at.as_millis()),
                    text(problem),
                ],
            )
            .await
            .map(|_| ())
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let next = self
            .db
            .first("SELECT MIN(next_attempt_at) AS at FROM notifications", &[])
            .await?;
        let at = match next {
            Some(n) => n.opt_num("at")?,
            None => None,
        };
        Ok(at.map(|at| Timestamp::from_millis(at as u64)))
    }
}
