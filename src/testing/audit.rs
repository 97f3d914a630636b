//! The audit log's seams (`audit::AuditStore`, `audit::AuditSink`) in memory: the outbox and
//! the chained log, chained by the same core logic as the D1 store.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use async_trait::async_trait;

use crate::audit::{
    AnchorKind, Anchors, AuditEvent, ChainHead, ChainPlan, ChainedEvent, Heads, LegacyWindow,
    PendingEvent, Resealed, Sealer, Unsettled,
};
use crate::audit::{AuditQuery, AuditSink, AuditStore};
use crate::domain::StoreError;
use crate::domain::{CredentialId, Timestamp, UserId};

use super::*;

/// The outbox both in-memory stores write to, as both D1 repositories write one table.
#[derive(Default)]
pub(crate) struct MemoryOutbox {
    pub rows: RefCell<Vec<PendingEvent>>,
    next: Cell<u64>,
    /// Key-health notices the chainer wrote and no delete has removed (the
    /// `notifications` table).
    pub notices: RefCell<Vec<crate::notify::Notice>>,
}

impl MemoryOutbox {
    /// A credential's delete takes its notices with it, as the D1 store's does.
    pub(super) fn forget_notices(&self, user: &UserId, id: &CredentialId) {
        self.notices.borrow_mut().retain(|n| {
            !(n.user_id == user.as_str() && n.credential_id.as_deref() == Some(id.as_str()))
        });
    }
}

impl MemoryOutbox {
    pub(crate) fn push(&self, event: &AuditEvent) {
        let pos = self.next.get() + 1;
        self.next.set(pos);
        self.rows.borrow_mut().push(PendingEvent {
            pos,
            user_id: event.user_id.as_str().to_owned(),
            body: serde_json::to_string(event).unwrap(),
        });
    }
}

/// An audit log in memory: the outbox and the chained log, chained by the same core logic
/// as the D1 store.
pub(crate) struct MemoryAudit {
    pub rows: RefCell<Vec<ChainedEvent>>,
    pub heads: AnchorTable,
    pub checkpoints: AnchorTable,
    pub dead_letters: RefCell<Vec<(String, String)>>,
    pub down: Cell<bool>,
    pub outbox: Rc<MemoryOutbox>,
    /// Queries made of the outbox and the chain (enqueue, pending, heads, commit), as D1
    /// would count them.
    pub queries: Cell<u32>,
    /// The `audit_legacy` row (none: closed) and when it was written.
    pub legacy: Cell<LegacyWindow>,
    pub legacy_since: Cell<u64>,
    /// What `settle` takes as now when it writes the window (Unix ms).
    pub clock: Cell<u64>,
    /// Users who hold a credential (D1 reads the credentials table).
    pub holders: RefCell<Vec<String>>,
    /// What the sink's own chaining seals with; `None`: no usable master key.
    pub sealer: RefCell<Option<Rc<Sealer>>>,
    /// Key-health notices the commits wrote.
    pub notices_written: Cell<usize>,
}

impl Default for MemoryAudit {
    fn default() -> Self {
        Self {
            rows: RefCell::default(),
            heads: AnchorTable::default(),
            checkpoints: AnchorTable::default(),
            dead_letters: RefCell::default(),
            down: Cell::new(false),
            outbox: Rc::default(),
            queries: Cell::new(0),
            legacy: Cell::new(LegacyWindow::Closed),
            legacy_since: Cell::new(0),
            clock: Cell::new(1_800_000_000_000),
            holders: RefCell::default(),
            sealer: RefCell::new(Some(Rc::new(test_sealer()))),
            notices_written: Cell::new(0),
        }
    }
}

impl MemoryAudit {
    /// Seals with `keys` (none: no usable master key) from now on, writing at `now`.
    pub(crate) fn use_master(&self, keys: Option<&crate::crypto::MasterKeys>, now: Timestamp) {
        *self.sealer.borrow_mut() = keys.map(|k| Rc::new(Sealer::new(k, now)));
    }

    /// Records `point` as `user`'s head, sealed as a chainer seals a new chain's head.
    pub(crate) fn set_head(&self, user: &str, point: &ChainHead) {
        let sealer = self.sealer.borrow();
        let sealer = sealer.as_ref().expect("a sealer");
        let head = sealer
            .successor(AnchorKind::Head, user, None, point, self.legacy.get())
            .expect("a new head");
        self.heads.borrow_mut().insert(user.to_owned(), head);
    }

    /// Whether any anchor carries a strict seal under one of `configured`.
    pub(super) fn strict_seal(&self, configured: &[u32]) -> bool {
        let strict = |t: &AnchorTable| {
            t.borrow().values().any(|a| {
                a.mac.as_deref().is_some_and(|m| m.starts_with("s:"))
                    && a.mac_version.is_some_and(|v| configured.contains(&v))
            })
        };
        strict(&self.heads) || strict(&self.checkpoints)
    }

    /// The anchor table of `kind`.
    pub(super) fn table(&self, kind: AnchorKind) -> &AnchorTable {
        match kind {
            AnchorKind::Head => &self.heads,
            AnchorKind::Checkpoint => &self.checkpoints,
        }
    }

    pub(super) fn check(&self) -> Result<(), StoreError> {
        self.queries.set(self.queries.get() + 1);
        if self.down.get() {
            Err(StoreError::Unavailable("test audit store is down".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait(?Send)]
impl AuditStore for MemoryAudit {
    async fn enqueue(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        self.check()?;
        for e in events {
            let pending =
                self.outbox.rows.borrow().iter().any(|p| {
                    serde_json::from_str::<AuditEvent>(&p.body).is_ok_and(|x| x.id == e.id)
                });
            let chained = self.rows.borrow().iter().any(|r| r.event.id == e.id);
            if !pending && !chained {
                self.outbox.push(e);
            }
        }
        Ok(())
    }

    async fn pending(&self, limit: u32) -> Result<Vec<PendingEvent>, StoreError> {
        self.check()?;
        Ok(self
            .outbox
            .rows
            .borrow()
            .iter()
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn heads(&self, users: &[String]) -> Result<Heads, StoreError> {
        self.check()?;
        Ok(Heads {
            heads: self
                .heads
                .borrow()
                .iter()
                .filter(|(u, _)| users.contains(u))
                .map(|(u, h)| (u.clone(), h.clone()))
                .collect(),
            window: self.legacy.get(),
        })
    }

    async fn commit(&self, plan: &ChainPlan) -> Result<(), StoreError> {
        self.check()?;
        let clash = plan.rows.iter().any(|new| {
            self.rows.borrow().iter().any(|r| {
                r.event.id == new.event.id
                    || (r.event.user_id == new.event.user_id && r.seq == new.seq)
            })
        });
        if clash {
            return Err(StoreError::Conflict("UNIQUE constraint failed".into()));
        }
        self.rows.borrow_mut().extend(plan.rows.iter().cloned());
        self.outbox
            .notices
            .borrow_mut()
            .extend(plan.notices.iter().cloned());
        self.notices_written
            .set(self.notices_written.get() + plan.notices.len());
        self.heads.borrow_mut().extend(plan.anchors.iter().cloned());
        self.dead_letters
            .borrow_mut()
            .extend(plan.dead.iter().cloned());
        self.outbox
            .rows
            .borrow_mut()
            .retain(|p| !plan.done.contains(&p.pos));
        Ok(())
    }

    async fn list(&self, user: &UserId, q: &AuditQuery) -> Result<Vec<ChainedEvent>, StoreError> {
        self.check()?;
        let mut out: Vec<ChainedEvent> = self
            .rows
            .borrow()
            .iter()
            .filter(|r| &r.event.user_id == user)
            .filter(|r| q.action.is_none_or(|a| r.event.action == a))
            .filter(|r| {
                q.credential_id
                    .as_ref()
                    .is_none_or(|c| r.event.credential_id.as_ref() == Some(c))
            })
            .filter(|r| q.before_seq.is_none_or(|s| r.seq < s))
            .cloned()
            .collect();
        out.sort_by_key(|r| std::cmp::Reverse(r.seq));
        out.truncate(q.limit as usize);
        Ok(out)
    }

    async fn chain_page(
        &self,
        user: &UserId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<ChainedEvent>, StoreError> {
        self.check()?;
        let mut out: Vec<ChainedEvent> = self
            .rows
            .borrow()
            .iter()
            .filter(|r| &r.event.user_id == user && r.seq > after)
            .cloned()
            .collect();
        out.sort_by_key(|r| r.seq);
        out.truncate(limit as usize);
        Ok(out)
    }

    async fn anchors(&self, user: &UserId, configured: &[u32]) -> Result<Anchors, StoreError> {
        self.check()?;
        Ok(Anchors {
            checkpoint: self.checkpoints.borrow().get(user.as_str()).cloned(),
            head: self.heads.borrow().get(user.as_str()).cloned(),
            window: self.legacy.get(),
            strict_seal: self.legacy.get() != LegacyWindow::Closed && self.strict_seal(configured),
            holds_credentials: self.holders.borrow().iter().any(|h| h == user.as_str()),
            pending: self
                .outbox
                .rows
                .borrow()
                .iter()
                .any(|p| p.user_id == user.as_str()),
        })
    }

    async fn store_dead_letters(&self, letters: &[(String, String)]) -> Result<(), StoreError> {
        self.check()?;
        self.dead_letters
            .borrow_mut()
            .extend(letters.iter().cloned());
        Ok(())
    }

    async fn apply_retention(&self, cutoff: Timestamp, sealer: &Sealer) -> Result<u64, StoreError> {
        self.check()?;
        let mut rows = self.rows.borrow_mut();
        let mut last_old: std::collections::BTreeMap<String, ChainHead> = Default::default();
        for r in rows.iter().filter(|r| r.event.at < cutoff.as_millis()) {
            let e = last_old
                .entry(r.event.user_id.as_str().to_owned())
                .or_insert_with(ChainHead::genesis);
            if r.seq > e.seq {
                *e = r.head();
            }
        }
        let mut checkpoints = self.checkpoints.borrow_mut();
        let mut moved = std::collections::BTreeMap::new();
        for (user, point) in last_old {
            let prev = checkpoints.get(&user);
            let window = self.legacy.get();
            if let Ok(cp) = sealer.successor(AnchorKind::Checkpoint, &user, prev, &point, window) {
                moved.insert(user, cp);
            }
        }
        let before = rows.len();
        rows.retain(|r| {
            moved
                .get(r.event.user_id.as_str())
                .is_none_or(|cp| r.seq > cp.seq)
        });
        checkpoints.extend(moved);
        Ok((before - rows.len()) as u64)
    }

    async fn unsettled(
        &self,
        active: u32,
        configured: &[u32],
        limit: u32,
    ) -> Result<Unsettled, StoreError> {
        self.check()?;
        let stored = self.legacy.get();
        let unsealed_left = AnchorKind::ALL.iter().any(|k| {
            self.table(*k)
                .borrow()
                .values()
                .any(|a| a.mac.is_none() && a.mac_version.is_none())
        });
        let mut anchors = Vec::new();
        for kind in AnchorKind::ALL {
            for (user, a) in self.table(*kind).borrow().iter() {
                let rank = match (a.mac.as_deref(), a.mac_version) {
                    (None, None) if stored != LegacyWindow::Closed => 0,
                    (Some(_), Some(v)) if configured.contains(&v) && v != active => 1,
                    (Some(mac), Some(v))
                        if v == active
                            && mac.starts_with("t:")
                            && stored == LegacyWindow::Closed =>
                    {
                        2
                    }
                    _ => continue,
                };
                anchors.push((rank, *kind, user.clone(), a.clone()));
            }
        }
        anchors.sort_by_key(|(rank, ..)| *rank);
        anchors.truncate(limit as usize);
        Ok(Unsettled {
            window: stored,
            since: self.legacy_since.get(),
            strict_seal: self.strict_seal(configured),
            unsealed_left,
            anchors: anchors.into_iter().map(|(_, k, u, a)| (k, u, a)).collect(),
        })
    }

    async fn settle(
        &self,
        resealed: &[Resealed],
        window: Option<LegacyWindow>,
    ) -> Result<(), StoreError> {
        self.check()?;
        for r in resealed {
            let mut table = self.table(r.kind).borrow_mut();
            if let Some(stored) = table.get_mut(&r.user).filter(|a| **a == r.from) {
                *stored = r.to.clone();
            }
        }
        if let Some(w) = window {
            self.legacy.set(w);
            self.legacy_since.set(self.clock.get());
        }
        Ok(())
    }
    fn notices_written(&self) -> usize {
        self.notices_written.get()
    }
}

/// As a sink, the in-memory log is the path without a queue: an event goes into the
/// outbox, and a nudge chains what waits at once.
#[async_trait(?Send)]
impl AuditSink for MemoryAudit {
    async fn record(&self, event: &AuditEvent) {
        // A test that takes the store down sees the event missing, as it would be.
        if self.check().is_ok() {
            self.outbox.push(event);
            self.nudge(&event.id).await;
        }
    }

    async fn nudge(&self, _event_id: &str) {
        let sealer = self.sealer.borrow().clone();
        if let Some(sealer) = sealer {
            let _ = crate::audit::drain(self, &sealer, 1).await;
        }
    }

    async fn send(&self, event: &AuditEvent) {
        self.record(event).await;
    }
}
