//! In-memory implementations of the core's seams, for host tests.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use async_trait::async_trait;

use crate::domain::{Credential, CredentialId, ProviderId, Timestamp, UserId};
use crate::ports::{
    Clock, CredentialStore, HttpClient, HttpError, HttpRequest, HttpResponse, Jitter, StoreError,
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

    async fn delete(&self, user: &UserId, id: &CredentialId) -> Result<bool, StoreError> {
        self.check()?;
        let mut rows = self.rows.borrow_mut();
        let before = rows.len();
        rows.retain(|c| !(&c.user_id == user && &c.id == id));
        Ok(rows.len() < before)
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
