//! What the cron and the queue consumers work with: the configuration and the platform
//! behind the core's seams. The Worker builds it in the same place, from the same bindings,
//! as a request's [`App`](crate::api::App).

use crate::audit::{AuditSink, AuditStore, Sealer};
use crate::config::Config;
use crate::credentials::CredentialStore;
use crate::crypto::MasterKeys;
use crate::domain::{Clock, ConfigError};
use crate::http::HttpClient;
use crate::limits::RateLimiter;
use crate::notify::NotificationStore;
use crate::probe::Jitter;
use crate::system_keys::InfisicalCache;

use super::{Job, JobQueue, JobStore};

/// How loud a log line is: the Worker writes it at that console level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// Everything a cron run or a queue batch may use.
pub struct Background<'a> {
    pub config: Result<&'a Config, &'a [ConfigError]>,
    /// The master keys the audit chain is sealed with, when any are usable: also when the
    /// rest of the configuration has problems, so events keep being chained.
    pub chain_keys: Option<&'a MasterKeys>,
    pub credentials: &'a dyn CredentialStore,
    /// Where background jobs' progress is kept.
    pub progress: &'a dyn JobStore,
    /// Where background jobs go (`JOBS_QUEUE`).
    pub queue: &'a dyn JobQueue,
    /// The stored audit log: the outbox, the chains, their anchors.
    pub audit: &'a dyn AuditStore,
    /// How the chainer is told that events wait (`AUDIT_QUEUE`).
    pub sink: &'a dyn AuditSink,
    /// Where key-health notices wait for the deliverer.
    pub notices: &'a dyn NotificationStore,
    pub http: &'a dyn HttpClient,
    pub clock: &'a dyn Clock,
    pub jitter: &'a dyn Jitter,
    pub limiter: &'a dyn RateLimiter,
    pub infisical: Option<&'a InfisicalCache>,
    /// Where log lines go, at their level. Never given a secret.
    pub log: &'a dyn Fn(Level, &str),
}

impl Background<'_> {
    /// A sealer for the audit chain's anchors, writing now; none without a master key (then
    /// nothing is chained: an unsealed head would later read as tampered).
    pub(super) fn sealer(&self) -> Option<Sealer> {
        self.chain_keys.map(|k| Sealer::new(k, self.clock.now()))
    }

    pub(super) fn info(&self, line: &str) {
        (self.log)(Level::Info, line);
    }

    pub(super) fn warn(&self, line: &str) {
        (self.log)(Level::Warn, line);
    }

    pub(super) fn error(&self, line: &str) {
        (self.log)(Level::Error, line);
    }
}

/// After a chaining that wrote key-health notices, wakes the deliverer on `JOBS_QUEUE` (the
/// hourly cron wakes it anyway, for a wake-up that was lost). Requests call it too, after
/// their audit I/O.
pub async fn wake_deliverer(
    queue: &dyn JobQueue,
    audit: &dyn AuditStore,
    log: &dyn Fn(Level, &str),
) {
    if audit.notices_written() == 0 {
        return;
    }
    if let Err(e) = queue.send(&[Job::Notify]).await {
        log(
            Level::Error,
            &format!("webhooks: the deliverer could not be woken ({e}); the cron will"),
        );
    }
}
