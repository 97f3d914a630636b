//! In-memory implementations of the core's seams, for host tests.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use async_trait::async_trait;

use crate::audit::{
    Anchor, AnchorKind, Anchors, AuditEvent, ChainHead, ChainPlan, ChainedEvent, Heads,
    LegacyWindow, PendingEvent, Resealed, Sealer, Unsettled,
};
use crate::audit::{AuditQuery, AuditSink, AuditStore};
use crate::credentials::{CredentialStore, Inserted, Occupancy, Written};
use crate::domain::{
    Capability, Credential, CredentialId, Preference, ProviderId, Timestamp, UserId,
};
use crate::domain::{Clock, StoreError};
use crate::http::{HttpClient, HttpError, HttpRequest, HttpResponse};
use crate::limits::{LimitScope, LimiterError, RateLimiter};
use crate::probe::Jitter;

/// A clock that only moves when the code under test sleeps (or an HTTP call takes time).
pub(crate) struct FakeClock {
    now: Cell<u64>,
    pub sleeps: RefCell<Vec<u64>>,
}

impl FakeClock {
    pub(crate) fn at(ms: u64) -> Self {
        Self {
            now: Cell::new(ms),
            sleeps: RefCell::new(Vec::new()),
        }
    }

    pub(crate) fn advance(&self, ms: u64) {
        self.now.set(self.now.get() + ms);
    }

    pub(crate) fn elapsed_since(&self, start: u64) -> u64 {
        self.now.get() - start
    }
}

#[async_trait(?Send)]
impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.now.get())
    }
    async fn sleep(&self, ms: u64) {
        self.sleeps.borrow_mut().push(ms);
        self.advance(ms);
    }
}

/// What the fake network does with the next request.
pub(crate) enum Scripted {
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
        takes_ms: u64,
    },
    /// The provider never answers: the attempt's whole timeout passes.
    Hang,
    Refuse,
}

pub(crate) fn respond(status: u16, body: &str) -> Scripted {
    Scripted::Respond {
        status,
        headers: vec![],
        body: body.to_owned(),
        takes_ms: 20,
    }
}

pub(crate) fn respond_with(status: u16, headers: &[(&str, &str)], body: &str) -> Scripted {
    Scripted::Respond {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_lowercase(), v.to_string()))
            .collect(),
        body: body.to_owned(),
        takes_ms: 20,
    }
}

/// What the fake network saw: URL, headers, and the timeout it was given.
pub(crate) type Sent = (String, Vec<(String, String)>, u64);

/// Answers requests from a script, in order, and remembers what was sent.
pub(crate) struct FakeHttp<'c> {
    clock: &'c FakeClock,
    script: RefCell<VecDeque<Scripted>>,
    pub sent: RefCell<Vec<Sent>>,
    /// The bodies of proxied requests, in order.
    pub bodies: RefCell<Vec<Vec<u8>>>,
}

impl<'c> FakeHttp<'c> {
    pub(crate) fn new(clock: &'c FakeClock, script: Vec<Scripted>) -> Self {
        Self {
            clock,
            script: RefCell::new(script.into()),
            sent: RefCell::new(Vec::new()),
            bodies: RefCell::new(Vec::new()),
        }
    }

    pub(crate) fn calls(&self) -> usize {
        self.sent.borrow().len()
    }
}

#[async_trait(?Send)]
impl HttpClient for FakeHttp<'_> {
    async fn send(&self, req: HttpRequest, timeout_ms: u64) -> Result<HttpResponse, HttpError> {
        self.sent
            .borrow_mut()
            .push((req.url.clone(), req.headers.clone(), timeout_ms));
        let next = self.script.borrow_mut().pop_front();
        match next {
            Some(Scripted::Respond {
                status,
                headers,
                body,
                takes_ms,
            }) => {
                self.clock.advance(takes_ms.min(timeout_ms));
                if body.len() > req.max_response_bytes {
                    return Err(HttpError::TooLarge(req.max_response_bytes));
                }
                Ok(HttpResponse {
                    status,
                    headers,
                    body: body.into_bytes(),
                })
            }
            Some(Scripted::Hang) => {
                self.clock.advance(timeout_ms);
                Err(HttpError::Timeout(timeout_ms))
            }
            Some(Scripted::Refuse) => Err(HttpError::Network("connection refused".into())),
            None => panic!("unscripted request to {}", req.url),
        }
    }

    /// As the Worker's client: the body past the bound is dropped, never an error.
    async fn send_for_status(
        &self,
        mut req: HttpRequest,
        timeout_ms: u64,
    ) -> Result<u16, HttpError> {
        req.max_response_bytes = usize::MAX;
        self.send(req, timeout_ms).await.map(|r| r.status)
    }
}

/// A request body in host tests: bytes, read or forwarded within the limit asked for.
pub(crate) struct Bytes(pub Vec<u8>);

/// A body [`Bytes`] forwarded: the bytes and the limit the forwarding stream would hold
/// them to.
pub(crate) struct Forwarded {
    pub bytes: Vec<u8>,
    pub limit: usize,
}

#[async_trait(?Send)]
impl crate::api::IncomingBody for Bytes {
    async fn read(self: Box<Self>, limit: usize) -> Result<Vec<u8>, crate::api::BodyError> {
        if self.0.len() > limit {
            return Err(crate::api::BodyError::TooLarge(limit));
        }
        Ok(self.0)
    }

    fn forward(self: Box<Self>, limit: usize) -> crate::http::BodyStream {
        crate::http::BodyStream(Box::new(Forwarded {
            bytes: self.0,
            limit,
        }))
    }
}

/// A body that says whether anything read or forwarded it; otherwise [`Bytes`].
pub(crate) struct Watched {
    bytes: Vec<u8>,
    touched: Rc<Cell<bool>>,
}

impl Watched {
    /// The body, and the flag that turns true when it is touched.
    pub(crate) fn new(bytes: Vec<u8>) -> (Self, Rc<Cell<bool>>) {
        let touched = Rc::new(Cell::new(false));
        (
            Self {
                bytes,
                touched: touched.clone(),
            },
            touched,
        )
    }
}

#[async_trait(?Send)]
impl crate::api::IncomingBody for Watched {
    async fn read(self: Box<Self>, limit: usize) -> Result<Vec<u8>, crate::api::BodyError> {
        self.touched.set(true);
        Box::new(Bytes(self.bytes)).read(limit).await
    }

    fn forward(self: Box<Self>, limit: usize) -> crate::http::BodyStream {
        self.touched.set(true);
        Box::new(Bytes(self.bytes)).forward(limit)
    }
}

/// The proxy's path over the same script: the body comes back whole, as the "stream".
#[async_trait(?Send)]
impl crate::http::Upstream for FakeHttp<'_> {
    async fn open(
        &self,
        mut req: HttpRequest,
        body: Option<crate::http::BodyStream>,
        timeout_ms: u64,
    ) -> Result<crate::http::Streamed, HttpError> {
        if let Some(body) = body {
            let forwarded = *body
                .0
                .downcast::<Forwarded>()
                .expect("a forwarded test body");
            if forwarded.bytes.len() > forwarded.limit {
                return Err(HttpError::RequestTooLarge(forwarded.limit));
            }
            req.body = Some(forwarded.bytes);
        }
        if let Some(body) = &req.body {
            self.bodies.borrow_mut().push(body.clone());
        }
        req.max_response_bytes = usize::MAX;
        let r = HttpClient::send(self, req, timeout_ms).await?;
        Ok(crate::http::Streamed {
            status: r.status,
            headers: r.headers,
            body: crate::http::BodyStream(Box::new(r.body)),
        })
    }

    async fn read(
        &self,
        body: crate::http::BodyStream,
        limit: usize,
        _timeout_ms: u64,
    ) -> Result<Vec<u8>, HttpError> {
        let bytes = *body.0.downcast::<Vec<u8>>().expect("a fake body");
        if bytes.len() > limit {
            return Err(HttpError::TooLarge(limit));
        }
        Ok(bytes)
    }
}

/// Jitter that always returns the same point of the interval.
pub(crate) struct FixedJitter(pub f64);

impl Jitter for FixedJitter {
    fn unit(&self) -> f64 {
        self.0
    }
}

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
    fn forget_notices(&self, user: &UserId, id: &CredentialId) {
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

/// A change another request lands between a read and a write.
pub(crate) type Race = Box<dyn FnOnce(&mut Vec<Credential>)>;

/// Credentials in a vector, with the same per-user scoping, versions and conditional
/// writes as the D1 store.
#[derive(Default)]
pub(crate) struct MemoryStore {
    pub rows: RefCell<Vec<Credential>>,
    pub prefs: RefCell<Vec<(UserId, Preference)>>,
    pub down: Cell<bool>,
    pub outbox: Rc<MemoryOutbox>,
    /// Runs once, just before the next conditional write reads the row: lets a test land
    /// a concurrent change in the window between a read and a write.
    pub before_write: RefCell<Option<Race>>,
    /// How many `holdings` reads were made (the path of every use must make one).
    pub reads: Cell<u32>,
    /// The sweep's claims: credential and when.
    pub claims: RefCell<Vec<(CredentialId, Timestamp)>>,
    /// Background jobs' progress.
    pub jobs: RefCell<Vec<crate::jobs::JobRecord>>,
    /// The audit log's heads and checkpoints, which health's check of master key versions
    /// reads with the credentials (as the D1 query reads both tables).
    pub anchors: [AnchorTable; 2],
    /// What the next `stale_keys` and `job` read instead of what is stored, once: a step
    /// that read them before another step wrote (a delayed message racing a resumed one).
    pub stale_read: RefCell<Option<Vec<Credential>>>,
    pub job_read: RefCell<Option<crate::jobs::JobRecord>>,
}

/// A table of audit anchors by user, shared by the two in-memory stores.
pub(crate) type AnchorTable = Rc<RefCell<std::collections::BTreeMap<String, Anchor>>>;

/// The master key ring the in-memory chainer seals with by default: the API tests' version 1.
pub(crate) fn test_ring() -> crate::crypto::MasterKeys {
    let key: [u8; 32] = std::array::from_fn(|i| i as u8);
    crate::crypto::MasterKeys::for_tests(&[(1, key)], 1)
}

/// A sealer over [`test_ring`], writing at the API tests' time.
pub(crate) fn test_sealer() -> Sealer {
    Sealer::new(&test_ring(), Timestamp::from_millis(1_800_000_000_000))
}

impl MemoryStore {
    /// The user's rows as a listing shows them: newest first, without model lists.
    fn listing(
        &self,
        user: &UserId,
        provider: Option<ProviderId>,
    ) -> Result<Vec<Credential>, StoreError> {
        self.check()?;
        let mut out: Vec<_> = self
            .rows
            .borrow()
            .iter()
            .filter(|c| &c.user_id == user && provider.is_none_or(|p| c.provider == p))
            .map(|c| Credential {
                models: None,
                ..c.clone()
            })
            .collect();
        out.reverse();
        Ok(out)
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.down.get() {
            Err(StoreError::Unavailable("test database is down".into()))
        } else {
            Ok(())
        }
    }

    /// The conditional write both `update` and `record_check` are: `apply` runs on the
    /// stored row only if it is still at `c.version`.
    fn write_if_current(
        &self,
        c: &Credential,
        event: Option<&AuditEvent>,
        apply: impl FnOnce(&mut Credential),
    ) -> Result<Written, StoreError> {
        self.check()?;
        let mut rows = self.rows.borrow_mut();
        if let Some(race) = self.before_write.borrow_mut().take() {
            race(&mut rows);
        }
        let Some(row) = rows
            .iter_mut()
            .find(|r| r.user_id == c.user_id && r.id == c.id)
        else {
            return Ok(Written::Missing);
        };
        if row.version != c.version {
            return Ok(Written::Conflict);
        }
        apply(row);
        row.version += 1;
        if let Some(event) = event {
            self.outbox.push(event);
        }
        Ok(Written::Done)
    }
}

#[async_trait(?Send)]
impl CredentialStore for MemoryStore {
    async fn insert(
        &self,
        credential: &Credential,
        fingerprints: &[String],
        limit: u32,
        event: &AuditEvent,
    ) -> Result<Inserted, StoreError> {
        if let Some(race) = self.before_write.borrow_mut().take() {
            race(&mut self.rows.borrow_mut());
        }
        let occupancy = self.occupancy(&credential.user_id, fingerprints).await?;
        if let Some(existing) = occupancy.duplicate {
            return Ok(Inserted::Duplicate(existing));
        }
        if occupancy.count >= limit {
            return Ok(Inserted::LimitReached);
        }
        self.rows.borrow_mut().push(credential.clone());
        self.outbox.push(event);
        Ok(Inserted::Done)
    }

    async fn get(
        &self,
        user: &UserId,
        id: &CredentialId,
    ) -> Result<Option<Credential>, StoreError> {
        self.check()?;
        let claim = self
            .claims
            .borrow()
            .iter()
            .find(|(c, _)| c == id)
            .map(|(_, at)| *at);
        Ok(self
            .rows
            .borrow()
            .iter()
            .find(|c| &c.user_id == user && &c.id == id)
            .cloned()
            .map(|c| Credential {
                revalidation_queued_at: claim,
                ..c
            }))
    }

    async fn view(
        &self,
        user: &UserId,
        id: &CredentialId,
        seen: &AuditEvent,
        missing: &AuditEvent,
    ) -> Result<Option<Credential>, StoreError> {
        let found = self.get(user, id).await?;
        match &found {
            Some(c) => {
                let mut event = seen.clone();
                event.provider = Some(c.provider.as_str().to_owned());
                self.outbox.push(&event);
            }
            None => self.outbox.push(missing),
        }
        Ok(found)
    }

    async fn list(
        &self,
        user: &UserId,
        provider: Option<ProviderId>,
        seen: &AuditEvent,
    ) -> Result<Vec<Credential>, StoreError> {
        let out = self.listing(user, provider)?;
        self.outbox.push(seen);
        Ok(out)
    }

    async fn holdings(
        &self,
        user: &UserId,
        capability: Capability,
        providers: &[ProviderId],
    ) -> Result<(Vec<Credential>, Option<Preference>), StoreError> {
        self.reads.set(self.reads.get() + 1);
        let mut held = self.listing(user, None)?;
        held.retain(|c| providers.contains(&c.provider));
        let default = self
            .prefs
            .borrow()
            .iter()
            .find(|(u, p)| u == user && p.capability == capability)
            .map(|(_, p)| p.clone())
            .filter(|p| held.iter().any(|c| c.id == p.credential_id));
        Ok((held, default))
    }

    async fn claim_due(
        &self,
        cutoffs: &[Timestamp],
        requeue_before: Timestamp,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<(UserId, CredentialId, ProviderId)>, StoreError> {
        self.check()?;
        let mut claims = self.claims.borrow_mut();
        let mut due: Vec<Credential> = self
            .rows
            .borrow()
            .iter()
            .filter(|c| match c.last_validated_at {
                None => true,
                Some(at) => cutoffs
                    .get(c.dead_checks as usize)
                    .is_some_and(|cutoff| at <= *cutoff),
            })
            .filter(|c| {
                claims
                    .iter()
                    .find(|(id, _)| *id == c.id)
                    .is_none_or(|(_, at)| *at < requeue_before)
            })
            .cloned()
            .collect();
        // The least recently attempted first: a check that keeps failing goes to the back.
        let attempted = |c: &Credential| {
            let queued = claims
                .iter()
                .find(|(id, _)| *id == c.id)
                .map_or(0, |(_, at)| at.as_millis());
            c.last_validated_at
                .map_or(0, Timestamp::as_millis)
                .max(queued)
        };
        due.sort_by_key(|c| attempted(c));
        due.truncate(limit as usize);
        claims.retain(|(id, _)| !due.iter().any(|c| &c.id == id));
        claims.extend(due.iter().map(|c| (c.id.clone(), now)));
        Ok(due
            .into_iter()
            .map(|c| (c.user_id, c.id, c.provider))
            .collect())
    }

    async fn occupancy(
        &self,
        user: &UserId,
        fingerprints: &[String],
    ) -> Result<Occupancy, StoreError> {
        self.check()?;
        let rows = self.rows.borrow();
        let mine = rows.iter().filter(|c| &c.user_id == user);
        Ok(Occupancy {
            duplicate: mine
                .clone()
                .find(|c| {
                    c.fingerprint
                        .as_ref()
                        .is_some_and(|f| fingerprints.contains(f))
                })
                .map(|c| c.id.clone()),
            count: mine.count() as u32,
        })
    }

    async fn update(
        &self,
        credential: &Credential,
        event: &AuditEvent,
    ) -> Result<Written, StoreError> {
        // The unique index on (user, fingerprint), as D1 enforces it.
        let clash = self.rows.borrow().iter().any(|r| {
            r.user_id == credential.user_id
                && r.id != credential.id
                && r.fingerprint.is_some()
                && r.fingerprint == credential.fingerprint
        });
        if clash {
            return Err(StoreError::Conflict("UNIQUE constraint failed".into()));
        }
        self.write_if_current(credential, Some(event), |row| *row = credential.clone())
    }

    async fn record_check(
        &self,
        c: &Credential,
        event: Option<&AuditEvent>,
    ) -> Result<Written, StoreError> {
        self.write_if_current(c, event, |row| {
            row.status = c.status;
            row.status_detail = c.status_detail.clone();
            row.warnings = c.warnings.clone();
            row.quota = c.quota.clone();
            row.models = c.models.clone();
            row.models_fetched_at = c.models_fetched_at;
            row.consecutive_failures = c.consecutive_failures;
            row.dead_checks = c.dead_checks;
            row.last_validated_at = c.last_validated_at;
            row.updated_at = c.updated_at;
        })
    }

    async fn preferences(&self, user: &UserId) -> Result<Vec<Preference>, StoreError> {
        self.check()?;
        Ok(self
            .prefs
            .borrow()
            .iter()
            .filter(|(u, _)| u == user)
            .map(|(_, p)| p.clone())
            .collect())
    }

    async fn set_preference(
        &self,
        user: &UserId,
        preference: &Preference,
        event: &AuditEvent,
    ) -> Result<bool, StoreError> {
        self.check()?;
        if let Some(race) = self.before_write.borrow_mut().take() {
            race(&mut self.rows.borrow_mut());
        }
        let held = self
            .rows
            .borrow()
            .iter()
            .any(|c| &c.user_id == user && c.id == preference.credential_id);
        if !held {
            return Ok(false);
        }
        let mut prefs = self.prefs.borrow_mut();
        prefs.retain(|(u, p)| !(u == user && p.capability == preference.capability));
        prefs.push((user.clone(), preference.clone()));
        self.outbox.push(event);
        Ok(true)
    }

    async fn delete(
        &self,
        user: &UserId,
        id: &CredentialId,
        event: &AuditEvent,
    ) -> Result<Option<ProviderId>, StoreError> {
        self.check()?;
        let mut rows = self.rows.borrow_mut();
        let Some(i) = rows.iter().position(|c| &c.user_id == user && &c.id == id) else {
            return Ok(None);
        };
        self.prefs
            .borrow_mut()
            .retain(|(u, p)| !(u == user && &p.credential_id == id));
        let provider = rows.remove(i).provider;
        self.outbox.forget_notices(user, id);
        let mut event = event.clone();
        event.provider = Some(provider.as_str().to_owned());
        self.outbox.push(&event);
        Ok(Some(provider))
    }

    async fn ping(&self, configured: &[u32]) -> Result<Option<u32>, StoreError> {
        self.check()?;
        let anchors: Vec<u32> = self
            .anchors
            .iter()
            .flat_map(|t| {
                t.borrow()
                    .values()
                    .filter_map(|a| a.mac_version)
                    .collect::<Vec<_>>()
            })
            .collect();
        Ok(self
            .rows
            .borrow()
            .iter()
            .filter_map(|c| c.secret.as_ref().map(|s| s.key_version.get()))
            .chain(anchors)
            .find(|v| !configured.contains(v)))
    }

    async fn stale_keys(
        &self,
        active: u32,
        after: Option<&CredentialId>,
        limit: u32,
    ) -> Result<Vec<Credential>, StoreError> {
        self.check()?;
        if let Some(read_earlier) = self.stale_read.borrow_mut().take() {
            return Ok(read_earlier);
        }
        let mut rows: Vec<Credential> = self
            .rows
            .borrow()
            .iter()
            .filter(|c| {
                c.secret
                    .as_ref()
                    .is_some_and(|s| s.key_version.get() != active)
            })
            .filter(|c| after.is_none_or(|a| c.id.as_str() > a.as_str()))
            .cloned()
            .collect();
        rows.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        rows.truncate(limit as usize);
        Ok(rows)
    }

    async fn count_stale(&self, active: u32) -> Result<u64, StoreError> {
        Ok(self.stale_keys(active, None, u32::MAX).await?.len() as u64)
    }
}

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
    fn strict_seal(&self, configured: &[u32]) -> bool {
        let strict = |t: &AnchorTable| {
            t.borrow().values().any(|a| {
                a.mac.as_deref().is_some_and(|m| m.starts_with("s:"))
                    && a.mac_version.is_some_and(|v| configured.contains(&v))
            })
        };
        strict(&self.heads) || strict(&self.checkpoints)
    }

    /// The anchor table of `kind`.
    fn table(&self, kind: AnchorKind) -> &AnchorTable {
        match kind {
            AnchorKind::Head => &self.heads,
            AnchorKind::Checkpoint => &self.checkpoints,
        }
    }

    fn check(&self) -> Result<(), StoreError> {
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

/// Counts checks per (scope, key) and allows `limit` of each.
pub(crate) struct CountingLimiter {
    pub limit: u32,
    pub seen: RefCell<std::collections::BTreeMap<(String, String), u32>>,
    pub down: Cell<bool>,
}

impl CountingLimiter {
    pub(crate) fn new(limit: u32) -> Self {
        Self {
            limit,
            seen: RefCell::default(),
            down: Cell::new(false),
        }
    }
}

#[async_trait(?Send)]
impl RateLimiter for CountingLimiter {
    async fn allow(&self, scope: LimitScope, key: &str) -> Result<bool, LimiterError> {
        if self.down.get() {
            return Err(LimiterError("test limiter is down".into()));
        }
        let mut seen = self.seen.borrow_mut();
        let n = seen
            .entry((format!("{scope:?}"), key.to_owned()))
            .or_default();
        *n += 1;
        Ok(*n <= self.limit)
    }
}

/// RS256/ES256 checks with RustCrypto, standing in for the Worker's WebCrypto.
pub(crate) struct RustCryptoVerifier;

#[async_trait(?Send)]
impl crate::auth::SignatureVerifier for RustCryptoVerifier {
    async fn verify(
        &self,
        alg: crate::auth::Algorithm,
        key: &crate::auth::PublicJwk,
        input: &[u8],
        signature: &[u8],
    ) -> bool {
        use crate::auth::PublicJwk;
        use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
        let d = |s: &str| URL_SAFE_NO_PAD.decode(s).unwrap_or_default();
        match (alg, key) {
            (crate::auth::Algorithm::Rs256, PublicJwk::Rsa { n, e }) => {
                use rsa::signature::Verifier as _;
                let Ok(k) = rsa::RsaPublicKey::new(
                    rsa::BigUint::from_bytes_be(&d(n)),
                    rsa::BigUint::from_bytes_be(&d(e)),
                ) else {
                    return false;
                };
                let Ok(sig) = rsa::pkcs1v15::Signature::try_from(signature) else {
                    return false;
                };
                rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(k)
                    .verify(input, &sig)
                    .is_ok()
            }
            (crate::auth::Algorithm::Es256, PublicJwk::P256 { x, y }) => {
                use p256::ecdsa::signature::Verifier as _;
                let (x, y) = (d(x), d(y));
                let point = p256::EncodedPoint::from_affine_coordinates(
                    x.as_slice().into(),
                    y.as_slice().into(),
                    false,
                );
                let Ok(k) = p256::ecdsa::VerifyingKey::from_encoded_point(&point) else {
                    return false;
                };
                let Ok(sig) = p256::ecdsa::Signature::from_slice(signature) else {
                    return false;
                };
                k.verify(input, &sig).is_ok()
            }
            _ => false,
        }
    }
}

/// A deployment without static assets (the end-to-end tests serve the real ones).
pub(crate) struct NoAssets;

#[async_trait(?Send)]
impl crate::api::Assets for NoAssets {
    async fn read(&self, _path: &str) -> Option<Vec<u8>> {
        None
    }
}
