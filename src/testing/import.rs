//! The import store (`import::ImportStore`) in memory, over the same rows as the credential
//! store.

use async_trait::async_trait;

use crate::audit::AuditEvent;
use crate::credentials::{CredentialStore, Occupancy};
use crate::domain::StoreError;
use crate::domain::{Credential, CredentialId, Timestamp, UserId};

use super::*;

#[async_trait(?Send)]
impl crate::import::ImportStore for MemoryStore {
    async fn occupancies(
        &self,
        wanted: &[(UserId, Vec<String>)],
    ) -> Result<Vec<Occupancy>, StoreError> {
        self.reads.set(self.reads.get() + 1);
        let mut out = Vec::with_capacity(wanted.len());
        for (user, prints) in wanted {
            out.push(self.occupancy(user, prints).await?);
        }
        Ok(out)
    }

    async fn insert_batch(
        &self,
        batch: &crate::domain::BatchId,
        rows: &[crate::import::ImportRow],
        refused: &[AuditEvent],
        limit: u32,
        now: Timestamp,
    ) -> Result<Vec<CredentialId>, StoreError> {
        self.check()?;
        if let Some(race) = self.before_write.borrow_mut().take() {
            race(&mut self.rows.borrow_mut());
        }
        for event in refused {
            self.outbox.push(event);
        }
        // As the D1 statement does: every row's condition is judged against the table as
        // it was before the statement, its count plus the rows before it in `rows`.
        let before: Vec<Occupancy> = {
            let mut out = Vec::new();
            for r in rows {
                out.push(self.occupancy(&r.credential.user_id, &r.prints).await?);
            }
            out
        };
        let mut stored = Vec::new();
        let mut gained: Vec<(UserId, u32)> = Vec::new();
        for (row, occupancy) in rows.iter().zip(before) {
            let user = &row.credential.user_id;
            let rank = gained
                .iter()
                .find(|(u, _)| u == user)
                .map_or(0, |(_, n)| *n);
            let clash = self.rows.borrow().iter().any(|c| {
                &c.user_id == user
                    && c.fingerprint.is_some()
                    && c.fingerprint == row.credential.fingerprint
            });
            match gained.iter_mut().find(|(u, _)| u == user) {
                Some((_, n)) => *n += 1,
                None => gained.push((user.clone(), 1)),
            }
            if occupancy.duplicate.is_some() || clash || occupancy.count + rank >= limit {
                continue;
            }
            self.rows.borrow_mut().push(row.credential.clone());
            self.outbox.push(&row.event);
            stored.push(row.credential.id.clone());
        }
        let mut jobs = self.jobs.borrow_mut();
        match jobs.iter_mut().find(|j| j.id == batch.as_str()) {
            Some(j) => {
                j.total += stored.len() as u64;
                j.done += stored.len() as u64;
                j.updated_at = now;
            }
            None => jobs.push(crate::jobs::JobRecord {
                id: batch.as_str().to_owned(),
                kind: "import".into(),
                state: "done".into(),
                total: stored.len() as u64,
                done: stored.len() as u64,
                failed: 0,
                cursor: None,
                created_at: now,
                updated_at: now,
            }),
        }
        Ok(stored)
    }

    async fn batch_rows(
        &self,
        batch: &crate::domain::BatchId,
        limit: u32,
    ) -> Result<crate::import::BatchRows, StoreError> {
        self.check()?;
        let prefs = self.prefs.borrow();
        let mut rows: Vec<Credential> = self
            .rows
            .borrow()
            .iter()
            .filter(|c| c.import_batch.as_ref() == Some(batch))
            .cloned()
            .collect();
        rows.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        let row = |c: Credential| crate::import::BatchRow {
            user: c.user_id,
            id: c.id,
            provider: c.provider,
        };
        let (defaults, removable): (Vec<Credential>, Vec<Credential>) = rows
            .into_iter()
            .partition(|c| prefs.iter().any(|(_, p)| p.credential_id == c.id));
        Ok(crate::import::BatchRows {
            removable: removable
                .into_iter()
                .take(limit as usize)
                .map(row)
                .collect(),
            defaults: defaults.into_iter().take(limit as usize).map(row).collect(),
        })
    }

    async fn remove_batch_rows(
        &self,
        batch: &crate::domain::BatchId,
        rows: &[(CredentialId, AuditEvent)],
    ) -> Result<Vec<CredentialId>, StoreError> {
        self.check()?;
        if let Some(race) = self.before_write.borrow_mut().take() {
            race(&mut self.rows.borrow_mut());
        }
        let prefs = self.prefs.borrow();
        let mut removed = Vec::new();
        for (id, event) in rows {
            let mut table = self.rows.borrow_mut();
            let Some(i) = table.iter().position(|c| {
                &c.id == id
                    && c.import_batch.as_ref() == Some(batch)
                    && !prefs.iter().any(|(_, p)| &p.credential_id == id)
            }) else {
                continue;
            };
            let gone = table.remove(i);
            self.outbox.forget_notices(&gone.user_id, id);
            self.outbox.push(event);
            removed.push(id.clone());
        }
        Ok(removed)
    }
}
