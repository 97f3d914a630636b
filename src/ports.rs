//! The seams between the pure core and the platform. The Worker glue implements these
//! over Fetch, D1 and `Date`; tests implement them in memory.

use std::fmt;

use async_trait::async_trait;

use crate::audit::{Action, AuditEvent, ChainHead, ChainedEvent};
use crate::domain::{Capability, Credential, CredentialId, ProviderId, Timestamp, UserId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// An outbound request to a provider.
pub struct HttpRequest {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

impl HttpRequest {
    pub fn get(url: String) -> Self {
        Self {
            method: Method::Get,
            url,
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

impl fmt::Debug for HttpRequest {
    // Header values carry API keys: only their names are ever printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        write!(f, "{} {} headers={names:?}", self.method.as_str(), self.url)
    }
}

/// A provider's answer, whatever its status.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("no answer within {0} ms")]
    Timeout(u64),
    #[error("could not connect: {0}")]
    Network(String),
}

#[async_trait(?Send)]
pub trait HttpClient {
    /// Sends one request and gives up after `timeout_ms`. Any status is `Ok`.
    async fn send(&self, request: HttpRequest, timeout_ms: u64) -> Result<HttpResponse, HttpError>;
}

#[async_trait(?Send)]
pub trait Clock {
    fn now(&self) -> Timestamp;
    async fn sleep(&self, ms: u64);
}

/// Randomness for back-off jitter (not for keys: those use the CSPRNG in `crypto`).
pub trait Jitter {
    /// A uniform value in `[0, 1)`.
    fn unit(&self) -> f64;
}

/// Jitter from the platform CSPRNG.
pub struct SystemJitter;

impl Jitter for SystemJitter {
    fn unit(&self) -> f64 {
        let bytes: [u8; 8] = crate::crypto::random_bytes().unwrap_or([0; 8]);
        (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("a stored row is not readable: {0}")]
    Corrupt(String),
}

/// Where credentials live. Every method is scoped to one user: another user's row is
/// never returned, changed or deleted.
#[async_trait(?Send)]
pub trait CredentialStore {
    async fn insert(&self, credential: &Credential) -> Result<(), StoreError>;
    async fn get(&self, user: &UserId, id: &CredentialId)
        -> Result<Option<Credential>, StoreError>;
    /// The user's credentials, newest first.
    async fn list(
        &self,
        user: &UserId,
        provider: Option<ProviderId>,
    ) -> Result<Vec<Credential>, StoreError>;
    /// Writes every mutable column of an existing row; `false` if the user has no such row.
    async fn update(&self, credential: &Credential) -> Result<bool, StoreError>;
    /// Removes the row (and its ciphertext) and the preferences that pointed at it, and
    /// returns its provider; `None` if the user has no such credential.
    async fn delete(
        &self,
        user: &UserId,
        id: &CredentialId,
    ) -> Result<Option<ProviderId>, StoreError>;
    /// The user's credential whose fingerprint is one of `fingerprints`, if any.
    async fn find_by_fingerprint(
        &self,
        user: &UserId,
        fingerprints: &[String],
    ) -> Result<Option<CredentialId>, StoreError>;
    /// Proves the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
    async fn preferences(&self, user: &UserId) -> Result<Vec<Preference>, StoreError>;
    async fn set_preference(
        &self,
        user: &UserId,
        preference: &Preference,
    ) -> Result<(), StoreError>;
}

/// The user's default credential (and model) for one capability.
#[derive(Clone, Debug, PartialEq)]
pub struct Preference {
    pub capability: Capability,
    pub credential_id: CredentialId,
    pub provider: ProviderId,
    pub model: Option<String>,
}

/// Where a request's audit events go. It never fails the request: an implementation
/// that cannot deliver falls back (queue → direct write → error log) on its own.
#[async_trait(?Send)]
pub trait AuditSink {
    async fn record(&self, event: &AuditEvent);
}

/// Which of a user's events to list, newest first.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub action: Option<Action>,
    pub credential_id: Option<CredentialId>,
    /// Only events with a smaller `seq` (the cursor).
    pub before_seq: Option<u64>,
    pub limit: u32,
}

/// The stored audit log.
#[async_trait(?Send)]
pub trait AuditStore {
    /// Chains `events` onto their users' chains and stores them, atomically per user.
    /// An event whose id is already stored is skipped, so redelivery is harmless.
    /// Returns how many events were new.
    async fn append(&self, events: &[AuditEvent]) -> Result<usize, StoreError>;
    async fn list(
        &self,
        user: &UserId,
        query: &AuditQuery,
    ) -> Result<Vec<ChainedEvent>, StoreError>;
    /// Events with `seq > after`, in `seq` order, at most `limit`.
    async fn chain_page(
        &self,
        user: &UserId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<ChainedEvent>, StoreError>;
    /// The retention checkpoint (where the stored chain starts) and the recorded head.
    async fn anchors(
        &self,
        user: &UserId,
    ) -> Result<(Option<ChainHead>, Option<ChainHead>), StoreError>;
    /// Keeps a message that could not be processed, as received.
    async fn store_dead_letter(&self, body: &str, reason: &str) -> Result<(), StoreError>;
    /// Removes events older than `cutoff`, moving each affected user's checkpoint to the
    /// last removed event. Returns how many events were removed.
    async fn apply_retention(&self, cutoff: Timestamp) -> Result<u64, StoreError>;
}

/// An issuer's public key from its JWKS, already checked for shape and size: RSA (at
/// least 2048 bits) or P-256, with base64url components as in the JWK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicJwk {
    Rsa { n: String, e: String },
    P256 { x: String, y: String },
}

/// Checks JWS signatures: RS256 (RSASSA-PKCS1-v1_5 with SHA-256) and ES256 (ECDSA P-256
/// with SHA-256, signature as r‖s). The Worker uses WebCrypto; host tests, RustCrypto.
#[async_trait(?Send)]
pub trait SignatureVerifier {
    async fn verify(&self, alg: &str, key: &PublicJwk, input: &[u8], signature: &[u8]) -> bool;
}
