//! The seams between the pure core and the platform. The Worker glue implements these
//! over Fetch, D1 and `Date`; tests implement them in memory.

use std::fmt;

use async_trait::async_trait;

use crate::audit::{
    Action, Anchors, AuditEvent, ChainPlan, ChainedEvent, Heads, LegacyWindow, PendingEvent,
    Resealed, Sealer, Unsettled,
};
use crate::auth::Algorithm;
use crate::domain::{
    BatchId, Capability, Credential, CredentialId, Preference, ProviderId, Timestamp, UserId,
};

crate::wire_enum! {
    /// An outbound request's method.
    pub enum Method {
        Get = "GET",
        Post = "POST",
    }
}

/// The most of an answer's body any outbound call reads (a model list of a thousand
/// entries is a few hundred KB): a hostile or broken upstream cannot make the vault hold
/// more.
pub const MAX_RESPONSE_BYTES: usize = 2 * 1024 * 1024;

/// An outbound request to a provider.
pub struct HttpRequest {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    /// Answers with a longer body fail with [`HttpError::TooLarge`].
    pub max_response_bytes: usize,
}

impl HttpRequest {
    pub fn get(url: String) -> Self {
        Self {
            method: Method::Get,
            url,
            headers: Vec::new(),
            body: None,
            max_response_bytes: MAX_RESPONSE_BYTES,
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
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    /// A forwarded request body passed its limit (the call was cut off).
    #[error("the request body is larger than {0} bytes")]
    RequestTooLarge(usize),
}

#[async_trait(?Send)]
pub trait HttpClient {
    /// Sends one request and gives up after `timeout_ms`. Any status is `Ok`, and a
    /// redirect is never followed: a 3xx comes back as it is, so a destination that passed
    /// the endpoint guard cannot bounce the call somewhere that would not. Reads at most
    /// `request.max_response_bytes` of the body.
    async fn send(&self, request: HttpRequest, timeout_ms: u64) -> Result<HttpResponse, HttpError>;

    /// Sends one request for its status alone (a webhook delivery): reads at most
    /// `request.max_response_bytes` of the body and drops the rest, so a long answer is
    /// never an error. This default asks [`send`](Self::send), which does fail on a long
    /// body: a client that reads from a network overrides it.
    async fn send_for_status(
        &self,
        request: HttpRequest,
        timeout_ms: u64,
    ) -> Result<u16, HttpError> {
        self.send(request, timeout_ms).await.map(|r| r.status)
    }
}

/// An answer's body left unread: the Worker pipes it to the client as it arrives (the
/// glue knows what is inside; the core only hands it on or asks for a bounded read).
pub struct BodyStream(pub Box<dyn std::any::Any>);

impl fmt::Debug for BodyStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BodyStream")
    }
}

/// An answer whose head has arrived and whose body has not been read.
#[derive(Debug)]
pub struct Streamed {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: BodyStream,
}

/// Calls whose answers are streamed back to the caller (the proxy).
#[async_trait(?Send)]
pub trait Upstream {
    /// Sends `request` and waits at most `timeout_ms` for the answer's head; never follows
    /// a redirect; leaves the body unread. `body`, the caller's own (from
    /// [`Request::forward_body`](crate::api::Request)), flows into the call as it arrives
    /// and replaces `request.body`.
    async fn open(
        &self,
        request: HttpRequest,
        body: Option<BodyStream>,
        timeout_ms: u64,
    ) -> Result<Streamed, HttpError>;
    /// Reads at most `limit` bytes of a body that is not passed on as it is (an error the
    /// vault must judge), within `timeout_ms`; more is [`HttpError::TooLarge`], later
    /// [`HttpError::Timeout`].
    async fn read(
        &self,
        body: BodyStream,
        limit: usize,
        timeout_ms: u64,
    ) -> Result<Vec<u8>, HttpError>;
}

/// The static files deployed beside the Worker (Workers static assets).
#[async_trait(?Send)]
pub trait Assets {
    /// The file at `path` (such as `/openapi.json`), if it was deployed.
    async fn read(&self, path: &str) -> Option<Vec<u8>>;
}

/// What the vault's own rate limits count, and against whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitScope {
    /// Live checks of keys with their provider, per user.
    User,
    /// Live checks, per client address.
    ClientAddress,
    /// Uses of the operator's system keys (proxy, resolve), per user.
    SystemKeyUser,
    /// Uses of the operator's system keys, per client address.
    SystemKeyAddress,
}

impl LimitScope {
    /// Whom the limit counts, for a message.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::User | LimitScope::SystemKeyUser => "user",
            LimitScope::ClientAddress | LimitScope::SystemKeyAddress => "client address",
        }
    }

    /// Whether the limit is on system-key use (not on live checks).
    pub fn is_system_key_use(self) -> bool {
        matches!(
            self,
            LimitScope::SystemKeyUser | LimitScope::SystemKeyAddress
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the rate limiter is unavailable: {0}")]
pub struct LimiterError(pub String);

/// Counts live provider checks and system-key uses (the Workers Rate Limiting bindings in
/// the Worker).
#[async_trait(?Send)]
pub trait RateLimiter {
    /// Counts one for `key` in `scope`; `false` when that is over the limit.
    async fn allow(&self, scope: LimitScope, key: &str) -> Result<bool, LimiterError>;
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

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("a stored row is not readable: {0}")]
    Corrupt(String),
    /// A uniqueness rule refused the write: another request wrote the same thing first.
    #[error("a concurrent write got there first: {0}")]
    Conflict(String),
}

/// What a conditional write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Written, with its audit event; the row's version moved on by one.
    Done,
    /// The row changed since it was read (its version moved on): nothing was written.
    Conflict,
    /// The user has no such row (any more): nothing was written.
    Missing,
}

/// What stands between a user and one more stored key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// The user's credential that already holds this key, if any.
    pub duplicate: Option<CredentialId>,
    /// How many credentials the user holds.
    pub count: u32,
}

/// What an insert did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// Stored, with its audit event.
    Done,
    /// The user already holds this key (perhaps stored a moment ago by a parallel request).
    Duplicate(CredentialId),
    /// The user holds as many credentials as they may.
    LimitReached,
}

/// Where credentials live. Every method is scoped to one user: another user's row is
/// never returned, changed or deleted. Every write carries the audit event of the
/// operation and stores it in the same transaction (the outbox): an event exists exactly
/// when its write happened.
#[async_trait(?Send)]
pub trait CredentialStore {
    /// Inserts `credential` and `event` together, unless the user already holds a key with
    /// one of `fingerprints` or holds `limit` credentials (checked in the same transaction,
    /// so parallel inserts cannot both pass).
    async fn insert(
        &self,
        credential: &Credential,
        fingerprints: &[String],
        limit: u32,
        event: &AuditEvent,
    ) -> Result<Inserted, StoreError>;
    async fn get(&self, user: &UserId, id: &CredentialId)
        -> Result<Option<Credential>, StoreError>;
    /// The user's credentials, newest first, without their model lists (`models` is
    /// `None`: a listing does not show them), with `seen` (the listing's event) put into
    /// the audit outbox in the same transaction: a read is one round trip. A
    /// [`StoreError::Corrupt`] from this or [`view`](Self::view) means the transaction ran
    /// (the event is written) and a row could not be read; any other error, that nothing
    /// was written.
    async fn list(
        &self,
        user: &UserId,
        provider: Option<ProviderId>,
        seen: &AuditEvent,
    ) -> Result<Vec<Credential>, StoreError>;
    /// The user's credential `id` (as [`get`](Self::get)), its viewing put into the audit
    /// outbox in the same transaction: `seen`, with the row's provider, when the row is
    /// there; `missing` when it is not.
    async fn view(
        &self,
        user: &UserId,
        id: &CredentialId,
        seen: &AuditEvent,
        missing: &AuditEvent,
    ) -> Result<Option<Credential>, StoreError>;
    /// Which of the user's credentials holds one of `fingerprints`, and how many they hold.
    async fn occupancy(
        &self,
        user: &UserId,
        fingerprints: &[String],
    ) -> Result<Occupancy, StoreError>;
    /// Writes what the user may change (label, model, the key and where it is used) and
    /// the result of the check that came with it, if the row is still at
    /// `credential.version`.
    async fn update(
        &self,
        credential: &Credential,
        event: &AuditEvent,
    ) -> Result<Written, StoreError>;
    /// Writes a re-check's result (status, detail, warnings, quota, models, failure count,
    /// times) and nothing else, if the row is still at `credential.version`. Never
    /// touches the key. A scheduled check that changed no status writes no event.
    async fn record_check(
        &self,
        credential: &Credential,
        event: Option<&AuditEvent>,
    ) -> Result<Written, StoreError>;
    /// Removes the row (and its ciphertext) and the preferences that pointed at it, with
    /// `event` (its provider filled in from the row), and returns its provider; `None` if
    /// the user has no such credential (then nothing is written).
    async fn delete(
        &self,
        user: &UserId,
        id: &CredentialId,
        event: &AuditEvent,
    ) -> Result<Option<ProviderId>, StoreError>;
    /// What decides which key a call for `capability` uses, in ONE read (the path of
    /// every use): the user's credentials of `providers` (newest first, without model
    /// lists) and the user's default for the capability, if it points at one of them.
    async fn holdings(
        &self,
        user: &UserId,
        capability: Capability,
        providers: &[ProviderId],
    ) -> Result<(Vec<Credential>, Option<Preference>), StoreError>;
    /// Claims for the revalidation sweep, in one statement, the credentials never
    /// validated or last validated at or before `cutoffs[n]`, where `n` is the row's
    /// `dead_checks` (a row past the list is not due), oldest first, at most `limit`,
    /// leaving out those claimed after `requeue_before`; marks them claimed at `now`
    /// (without moving their version). `cutoffs[0]` is the latest of them.
    async fn claim_due(
        &self,
        cutoffs: &[Timestamp],
        requeue_before: Timestamp,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<(UserId, CredentialId, ProviderId)>, StoreError>;
    /// Proves the database answers, at constant cost (one indexed row at most): returns a
    /// master key version some row is sealed under that is not in `configured`, if any.
    async fn ping(&self, configured: &[u32]) -> Result<Option<u32>, StoreError>;
    /// Credentials sealed under a version other than `active`, whole (model lists
    /// included), in id order after `after`, at most `limit`: a rewrap's next chunk.
    async fn stale_keys(
        &self,
        active: u32,
        after: Option<&CredentialId>,
        limit: u32,
    ) -> Result<Vec<Credential>, StoreError>;
    /// How many credentials are sealed under a version other than `active`.
    async fn count_stale(&self, active: u32) -> Result<u64, StoreError>;
    async fn preferences(&self, user: &UserId) -> Result<Vec<Preference>, StoreError>;
    /// Sets the preference with its event, if the user still holds the credential it names;
    /// `false` (and nothing written) if that credential is gone.
    async fn set_preference(
        &self,
        user: &UserId,
        preference: &Preference,
        event: &AuditEvent,
    ) -> Result<bool, StoreError>;
}

/// A credential an import creates: the row (its `import_batch` set), the fingerprints
/// (under every master key version) its duplicates are found by, and its event.
pub struct ImportRow {
    pub credential: Credential,
    pub prints: Vec<String>,
    pub event: AuditEvent,
}

/// A row an import batch created that no user has changed since.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchRow {
    pub user: UserId,
    pub id: CredentialId,
    pub provider: ProviderId,
}

/// What a rollback finds of a batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchRows {
    /// Rows still as the import made them, at most the limit asked for, in id order.
    pub removable: Vec<BatchRow>,
    /// Rows still as imported that their user has made a default since: kept.
    pub defaults: Vec<BatchRow>,
}

/// Where imports write (`POST /v1/admin/import`) and what their rollback removes. Each
/// method is one D1 statement or one transaction, whatever the number of rows: an import
/// of hundreds of keys costs a handful of queries.
#[async_trait(?Send)]
pub trait ImportStore {
    /// For each (user, fingerprints), in order: the user's credential that holds one of
    /// the fingerprints, and how many credentials the user holds. One read.
    async fn occupancies(
        &self,
        wanted: &[(UserId, Vec<String>)],
    ) -> Result<Vec<Occupancy>, StoreError>;
    /// Stores `rows` under `batch`, each with its event, in one transaction, leaving out
    /// any whose user meanwhile holds one of its fingerprints or would pass `limit`
    /// credentials (counted with the rows before it in `rows`); records the batch (as a
    /// `jobs` row of kind `import`, its total the rows stored). `refused` (the events of
    /// entries skipped because their user holds the key) go into the outbox in the same
    /// transaction. Returns the ids stored.
    async fn insert_batch(
        &self,
        batch: &BatchId,
        rows: &[ImportRow],
        refused: &[AuditEvent],
        limit: u32,
        now: Timestamp,
    ) -> Result<Vec<CredentialId>, StoreError>;
    /// The rows of `batch` that no user has changed since it was imported.
    async fn batch_rows(&self, batch: &BatchId, limit: u32) -> Result<BatchRows, StoreError>;
    /// Removes each of `rows` that is still in `batch` and still nobody's default, with
    /// its event, in one transaction. Returns the ids removed.
    async fn remove_batch_rows(
        &self,
        batch: &BatchId,
        rows: &[(CredentialId, AuditEvent)],
    ) -> Result<Vec<CredentialId>, StoreError>;
}

/// Where a request's audit events go. It never fails the request.
#[async_trait(?Send)]
pub trait AuditSink {
    /// Keeps the event of an operation that wrote nothing else (a view, a refusal) as an
    /// outbox row of its own, so every event enters the chain in the order it happened,
    /// and nudges the chainer. If the outbox cannot be written, the whole event travels on
    /// the queue (the consumer files it into the outbox, by id); if even that fails, an
    /// error log line keeps it (events hold no secret).
    async fn record(&self, event: &AuditEvent);
    /// Tells the chainer that `event_id`, written with its operation's change, waits in
    /// the outbox. If nobody can be told (the queue is missing or failing), chains what
    /// waits now; the cron sweeps whatever is left.
    async fn nudge(&self, event_id: &str);
    /// Sends an event that goes with no change of its own (a key's use) whole on the
    /// queue, so the request path writes nothing to D1; the consumer files it into the
    /// outbox by id, in arrival order. Records it when the queue is out of reach.
    async fn send(&self, event: &AuditEvent);
}

/// A key-health notice as stored: its id (the webhook id), its body and how many
/// deliveries failed so far.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredNotice {
    pub id: String,
    pub body: String,
    pub attempts: u32,
}

/// Where key-health notices wait for delivery (written by the audit chainer).
#[async_trait(?Send)]
pub trait NotificationStore {
    /// The notices due at `now`, at most `limit`, each leased until `lease_until` (no other
    /// deliverer takes them meanwhile).
    async fn claim(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<StoredNotice>, StoreError>;
    /// Delivered (or given up): removed.
    async fn delivered(&self, id: &str) -> Result<(), StoreError>;
    /// Not delivered: tried again at `next_at`.
    async fn failed(
        &self,
        id: &str,
        attempts: u32,
        next_at: Timestamp,
        problem: &str,
    ) -> Result<(), StoreError>;
    /// When the earliest waiting notice is due.
    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError>;
}

/// A background job's progress, as `GET /v1/admin/jobs/{id}` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub kind: String,
    /// `running` or `done`.
    pub state: String,
    pub total: u64,
    pub done: u64,
    pub failed: u64,
    /// Where the next chunk starts (the last credential id handled).
    pub cursor: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Where job progress is kept (`jobs`).
#[async_trait(?Send)]
pub trait JobStore {
    async fn create_job(&self, job: &JobRecord) -> Result<(), StoreError>;
    async fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError>;
    /// Records one chunk that started at cursor `from`: `done` is always added (each row
    /// is re-sealed by one step only, whichever counts it); the failures, the cursor and
    /// the state only if the job is still running at `from` (`false` when another step of
    /// the same job got there first).
    #[allow(clippy::too_many_arguments)]
    async fn advance_job(
        &self,
        id: &str,
        from: Option<&str>,
        done: u64,
        failed: u64,
        cursor: Option<&str>,
        state: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError>;
    /// Running jobs not advanced since `before` (their message was lost), at most `limit`.
    async fn stalled_jobs(&self, before: Timestamp, limit: u32) -> Result<Vec<String>, StoreError>;
}

/// Where background jobs go (`JOBS_QUEUE`).
#[async_trait(?Send)]
pub trait JobQueue {
    /// Sends `jobs` in one call; says why not when it cannot.
    async fn send(&self, jobs: &[crate::jobs::Job]) -> Result<(), String>;
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

/// The stored audit log: the outbox of pending events and the chained log.
#[async_trait(?Send)]
pub trait AuditStore {
    /// Puts events that arrived some other way (a queue message carrying a whole event)
    /// into the outbox, skipping any whose id is already pending or chained.
    async fn enqueue(&self, events: &[AuditEvent]) -> Result<(), StoreError>;
    /// The oldest pending events, at most `limit`, in outbox order.
    async fn pending(&self, limit: u32) -> Result<Vec<PendingEvent>, StoreError>;
    /// Where each of `users`' chains ends now, sealed as stored (users without events are
    /// left out), and the legacy window, in one query.
    async fn heads(&self, users: &[String]) -> Result<Heads, StoreError>;
    /// Carries out a chaining plan in one transaction: the chained rows, the moved heads,
    /// the dead letters, and the outbox rows they came from removed. Fails whole, with
    /// [`StoreError::Conflict`], when another chainer got there first.
    async fn commit(&self, plan: &ChainPlan) -> Result<(), StoreError>;
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
    /// The retention checkpoint (where the stored chain starts) and the recorded head, as
    /// stored, with the legacy window (and, when it is not closed, whether a strict seal
    /// exists under one of `configured`) and what shows that a chain must exist, in one
    /// query.
    async fn anchors(&self, user: &UserId, configured: &[u32]) -> Result<Anchors, StoreError>;
    /// Keeps messages that could not be processed, as received: (body, reason), in one
    /// statement.
    async fn store_dead_letters(&self, letters: &[(String, String)]) -> Result<(), StoreError>;
    /// Removes events older than `cutoff`, moving each affected user's checkpoint to the
    /// last removed event, sealed by `sealer` after the checkpoint it replaces (a user
    /// whose checkpoint is sealed under a version not configured is left as it is).
    /// Returns how many events were removed.
    async fn apply_retention(&self, cutoff: Timestamp, sealer: &Sealer) -> Result<u64, StoreError>;
    /// In one query, what [`crate::audit::settle`] needs: the legacy window, since when,
    /// whether a strict seal exists (under one of `configured`), and the anchors that may
    /// need sealing, at most `limit`, in this order: unsealed ones while the stored window
    /// is not closed, those sealed under a `configured` version other than `active`, and
    /// those trusted on first use (under `active`) once it is closed.
    async fn unsettled(
        &self,
        active: u32,
        configured: &[u32],
        limit: u32,
    ) -> Result<Unsettled, StoreError>;
    /// Writes re-sealed anchors, each only if the stored one is still as it was read, and
    /// the legacy window (as of now) when `window` is given, in one transaction.
    async fn settle(
        &self,
        resealed: &[Resealed],
        window: Option<LegacyWindow>,
    ) -> Result<(), StoreError>;
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
    async fn verify(&self, alg: Algorithm, key: &PublicJwk, input: &[u8], signature: &[u8])
        -> bool;
}
