//! In-memory implementations of the core's seams, for host tests.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use async_trait::async_trait;

use crate::audit::{chain, AuditEvent, ChainHead, ChainedEvent};
use crate::domain::{Credential, CredentialId, ProviderId, Timestamp, UserId};
use crate::ports::{
    AuditQuery, AuditSink, AuditStore, Clock, CredentialStore, HttpClient, HttpError, HttpRequest,
    HttpResponse, Jitter, Preference, StoreError,
};

/// A clock that only moves when the code under test sleeps (or an HTTP call takes time).
pub struct FakeClock {
    now: Cell<u64>,
    pub sleeps: RefCell<Vec<u64>>,
}

impl FakeClock {
    pub fn at(ms: u64) -> Self {
        Self {
            now: Cell::new(ms),
            sleeps: RefCell::new(Vec::new()),
        }
    }

    pub fn advance(&self, ms: u64) {
        self.now.set(self.now.get() + ms);
    }

    pub fn elapsed_since(&self, start: u64) -> u64 {
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
pub enum Scripted {
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

pub fn respond(status: u16, body: &str) -> Scripted {
    Scripted::Respond {
        status,
        headers: vec![],
        body: body.to_owned(),
        takes_ms: 20,
    }
}

pub fn respond_with(status: u16, headers: &[(&str, &str)], body: &str) -> Scripted {
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
pub type Sent = (String, Vec<(String, String)>, u64);

/// Answers requests from a script, in order, and remembers what was sent.
pub struct FakeHttp<'c> {
    clock: &'c FakeClock,
    script: RefCell<VecDeque<Scripted>>,
    pub sent: RefCell<Vec<Sent>>,
}

impl<'c> FakeHttp<'c> {
    pub fn new(clock: &'c FakeClock, script: Vec<Scripted>) -> Self {
        Self {
            clock,
            script: RefCell::new(script.into()),
            sent: RefCell::new(Vec::new()),
        }
    }

    pub fn calls(&self) -> usize {
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
}

/// Jitter that always returns the same point of the interval.
pub struct FixedJitter(pub f64);

impl Jitter for FixedJitter {
    fn unit(&self) -> f64 {
        self.0
    }
}

/// Credentials in a vector, with the same per-user scoping as the D1 store.
#[derive(Default)]
pub struct MemoryStore {
    pub rows: RefCell<Vec<Credential>>,
    pub prefs: RefCell<Vec<(UserId, Preference)>>,
    pub down: Cell<bool>,
}

impl MemoryStore {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.get() {
            Err(StoreError::Unavailable("test database is down".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait(?Send)]
impl CredentialStore for MemoryStore {
    async fn insert(&self, credential: &Credential) -> Result<(), StoreError> {
        self.check()?;
        self.rows.borrow_mut().push(credential.clone());
        Ok(())
    }

    async fn get(
        &self,
        user: &UserId,
        id: &CredentialId,
    ) -> Result<Option<Credential>, StoreError> {
        self.check()?;
        Ok(self
            .rows
            .borrow()
            .iter()
            .find(|c| &c.user_id == user && &c.id == id)
            .cloned())
    }

    async fn list(
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
            .cloned()
            .collect();
        out.reverse();
        Ok(out)
    }

    async fn update(&self, credential: &Credential) -> Result<bool, StoreError> {
        self.check()?;
        let mut rows = self.rows.borrow_mut();
        match rows
            .iter_mut()
            .find(|c| c.user_id == credential.user_id && c.id == credential.id)
        {
            Some(row) => {
                *row = credential.clone();
                Ok(true)
            }
            None => Ok(false),
        }
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
    ) -> Result<(), StoreError> {
        self.check()?;
        let mut prefs = self.prefs.borrow_mut();
        prefs.retain(|(u, p)| !(u == user && p.capability == preference.capability));
        prefs.push((user.clone(), preference.clone()));
        Ok(())
    }

    async fn delete(
        &self,
        user: &UserId,
        id: &CredentialId,
    ) -> Result<Option<ProviderId>, StoreError> {
        self.check()?;
        self.prefs
            .borrow_mut()
            .retain(|(u, p)| !(u == user && &p.credential_id == id));
        let mut rows = self.rows.borrow_mut();
        let found = rows.iter().position(|c| &c.user_id == user && &c.id == id);
        Ok(found.map(|i| rows.remove(i).provider))
    }

    async fn find_by_fingerprint(
        &self,
        user: &UserId,
        fingerprints: &[String],
    ) -> Result<Option<CredentialId>, StoreError> {
        self.check()?;
        Ok(self
            .rows
            .borrow()
            .iter()
            .find(|c| {
                &c.user_id == user
                    && c.fingerprint
                        .as_ref()
                        .is_some_and(|f| fingerprints.contains(f))
            })
            .map(|c| c.id.clone()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.check()
    }
}

/// An audit log in memory, chained by the same core logic as the D1 store.
#[derive(Default)]
pub struct MemoryAudit {
    pub rows: RefCell<Vec<ChainedEvent>>,
    pub heads: RefCell<std::collections::BTreeMap<String, ChainHead>>,
    pub checkpoints: RefCell<std::collections::BTreeMap<String, ChainHead>>,
    pub dead_letters: RefCell<Vec<(String, String)>>,
    pub down: Cell<bool>,
}

impl MemoryAudit {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.get() {
            Err(StoreError::Unavailable("test audit store is down".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait(?Send)]
impl AuditStore for MemoryAudit {
    async fn append(&self, events: &[AuditEvent]) -> Result<usize, StoreError> {
        self.check()?;
        let mut by_user: std::collections::BTreeMap<String, Vec<AuditEvent>> = Default::default();
        for e in events {
            let seen = self.rows.borrow().iter().any(|r| r.event.id == e.id)
                || by_user.values().flatten().any(|x| x.id == e.id);
            if !seen {
                by_user
                    .entry(e.user_id.clone())
                    .or_default()
                    .push(e.clone());
            }
        }
        let mut added = 0;
        for (user, group) in by_user {
            let head = self
                .heads
                .borrow()
                .get(&user)
                .cloned()
                .unwrap_or_else(ChainHead::genesis);
            let linked = chain(&head, group);
            if let Some(last) = linked.last() {
                self.heads.borrow_mut().insert(
                    user,
                    ChainHead {
                        seq: last.seq,
                        hash: last.hash.clone(),
                    },
                );
            }
            added += linked.len();
            self.rows.borrow_mut().extend(linked);
        }
        Ok(added)
    }

    async fn list(&self, user: &UserId, q: &AuditQuery) -> Result<Vec<ChainedEvent>, StoreError> {
        self.check()?;
        let mut out: Vec<ChainedEvent> = self
            .rows
            .borrow()
            .iter()
            .filter(|r| r.event.user_id == user.as_str())
            .filter(|r| q.action.is_none_or(|a| r.event.action == a))
            .filter(|r| {
                q.credential_id
                    .as_ref()
                    .is_none_or(|c| r.event.credential_id.as_deref() == Some(c.as_str()))
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
            .filter(|r| r.event.user_id == user.as_str() && r.seq > after)
            .cloned()
            .collect();
        out.sort_by_key(|r| r.seq);
        out.truncate(limit as usize);
        Ok(out)
    }

    async fn anchors(
        &self,
        user: &UserId,
    ) -> Result<(Option<ChainHead>, Option<ChainHead>), StoreError> {
        self.check()?;
        Ok((
            self.checkpoints.borrow().get(user.as_str()).cloned(),
            self.heads.borrow().get(user.as_str()).cloned(),
        ))
    }

    async fn store_dead_letter(&self, body: &str, reason: &str) -> Result<(), StoreError> {
        self.check()?;
        self.dead_letters
            .borrow_mut()
            .push((body.to_owned(), reason.to_owned()));
        Ok(())
    }

    async fn apply_retention(&self, cutoff: Timestamp) -> Result<u64, StoreError> {
        self.check()?;
        let mut rows = self.rows.borrow_mut();
        let mut last_old: std::collections::BTreeMap<String, ChainHead> = Default::default();
        for r in rows.iter().filter(|r| r.event.at < cutoff.as_millis()) {
            let e = last_old
                .entry(r.event.user_id.clone())
                .or_insert_with(ChainHead::genesis);
            if r.seq > e.seq {
                *e = ChainHead {
                    seq: r.seq,
                    hash: r.hash.clone(),
                };
            }
        }
        let before = rows.len();
        rows.retain(|r| {
            last_old
                .get(&r.event.user_id)
                .is_none_or(|cp| r.seq > cp.seq)
        });
        self.checkpoints.borrow_mut().extend(last_old);
        Ok((before - rows.len()) as u64)
    }
}

/// As a sink, the in-memory log stores events at once, as the direct path does.
#[async_trait(?Send)]
impl AuditSink for MemoryAudit {
    async fn record(&self, event: &AuditEvent) {
        // A test that takes the store down sees the event missing, as it would be.
        let _ = self.append(std::slice::from_ref(event)).await;
    }
}

/// RS256/ES256 checks with RustCrypto, standing in for the Worker's WebCrypto.
pub struct RustCryptoVerifier;

#[async_trait(?Send)]
impl crate::ports::SignatureVerifier for RustCryptoVerifier {
    async fn verify(
        &self,
        alg: &str,
        key: &crate::ports::PublicJwk,
        input: &[u8],
        signature: &[u8],
    ) -> bool {
        use crate::ports::PublicJwk;
        use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
        let d = |s: &str| URL_SAFE_NO_PAD.decode(s).unwrap_or_default();
        match (alg, key) {
            ("RS256", PublicJwk::Rsa { n, e }) => {
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
            ("ES256", PublicJwk::P256 { x, y }) => {
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
