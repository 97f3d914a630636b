//! Background work: the cron's run and its policy (`cron.rs`), the queue consumers' entry
//! point (`queues.rs`), and the jobs on `JOBS_QUEUE` (here): the scheduled revalidation
//! sweep (the cron claims what is due and fans it out; the consumer checks a bounded number
//! per invocation), key-health deliveries and master-key rotation's steps. Pure: the
//! queues and the stores are seams, the checks are `revalidation`'s.

mod background;
mod cron;
mod queues;
mod rotation;
mod store;
#[cfg(test)]
mod testing;

pub use background::{wake_deliverer, Background, Level};
pub use cron::{
    cron, CronRun, Step, ANCHORS_PER_RUN, CHAIN_ROUNDS, STALLED_PER_RUN, STALL_WINDOW_MS,
};
pub use queues::{consume, Batch, QueueRole, Settle, MAX_RETRY_DELAY_SECONDS};
pub use rotation::{start_rotation, ANCHOR_CHUNK, REWRAP_CHUNK};
pub use store::{JobQueue, JobRecord, JobStore};

use serde::Serialize;
use serde_json::Value;

use crate::audit::{Actor, ActorType, Origin};
use crate::credentials::CredentialStore;
use crate::domain::Clock;
use crate::domain::StoreError;
use crate::domain::{CredentialId, Timestamp, UserId};
use crate::http::HttpClient;
use crate::notify::NotificationStore;
use crate::notify::{deliver, Delivered, WebhookSettings};
use crate::revalidation::{Revalidated, Revalidation};
use crate::rewrap::Rewrap;

/// One message on `JOBS_QUEUE`: written with serde, read back with [`Job::from_json`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Job {
    /// Check one stored credential, queued by a sweep at `queued_at` (ms).
    Revalidate {
        user_id: String,
        credential_id: String,
        provider: String,
        queued_at: u64,
    },
    /// Deliver the key-health notices that are due.
    Notify,
    /// Re-encrypt the next chunk of a master-key rotation (`jobs` row `job_id`).
    Rewrap { job_id: String },
}

impl Job {
    /// A job from the JSON object serde writes for it: `kind` names the variant, the other
    /// members are its fields, members it does not know are ignored. Read by hand: serde's
    /// internally tagged enums buffer every member first, with a deserialiser of their own
    /// in the wasm (several KB) for this one type. Shapes the vault never writes (an
    /// integer `kind`, an array) are no job; a repeated member counts with its last value.
    pub fn from_json(value: &Value) -> Option<Job> {
        let text = |name: &str| value.get(name)?.as_str().map(str::to_owned);
        match value.get("kind")?.as_str()? {
            "revalidate" => Some(Job::Revalidate {
                user_id: text("user_id")?,
                credential_id: text("credential_id")?,
                provider: text("provider")?,
                queued_at: value.get("queued_at")?.as_u64()?,
            }),
            "notify" => Some(Job::Notify),
            "rewrap" => Some(Job::Rewrap {
                job_id: text("job_id")?,
            }),
            _ => None,
        }
    }
}

/// What to do with one message once its job ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    Ack,
    /// Deliver it again after this many seconds (a provider's back-off, a busy provider).
    RetryAfter(u64),
}

/// Credentials one cron run (or one admin request) fans out at most; the rest are due
/// next time. One D1 statement claims them, one queue call sends each hundred.
pub const SWEEP_FANOUT: u32 = 1000;
/// Messages per queue send (the platform's batch limit).
const SEND_CHUNK: usize = 100;
/// A claim older than this is due again (its messages were lost or are still failing).
pub const CLAIM_TTL_MS: u64 = 3_600_000;
/// Checks of one provider in one consumer invocation; more wait a little, so one
/// provider's many keys do not meet its rate limit at once.
pub const PER_PROVIDER_PER_BATCH: usize = 2;
/// How long a message spread to a later batch waits.
const SPREAD_DELAY_SECONDS: u64 = 5;
/// Scheduled checks in a row that may find a key dead before the sweep stops checking it
/// until its user acts (see [`due_cutoffs`]).
pub const DEAD_CHECKS_MAX: u32 = 6;
const DAY_MS: u64 = 86_400_000;

/// The waits of the sweep's schedule, by a row's `dead_checks`: a key not found dead is
/// due `after_hours` after its last check; one the sweep found dead `n` times in a row
/// waits 2ⁿ⁻¹ days (at least `after_hours`): 1, 2, 4, 8 and 16 days, so a dead key is
/// asked five more times over about a month after the sweep first found it dead, then no
/// more until its user re-checks, rotates or changes it (or it is found working). A key
/// refused at the provider stays refused; asking every day forever only spends the
/// provider's goodwill.
pub fn due_waits_ms(after_hours: u64) -> Vec<u64> {
    let after = after_hours.saturating_mul(3_600_000);
    (0..DEAD_CHECKS_MAX)
        .map(|n| match n {
            0 => after,
            n => after.max(DAY_MS << (n - 1)),
        })
        .collect()
}

/// The actor of the sweep's events.
pub fn sweep_origin() -> Origin {
    Origin {
        actor: Actor {
            kind: ActorType::Service,
            id: "revalidation".into(),
        },
        request_id: None,
    }
}

/// Claims the credentials not validated for `after_hours` (a dead key: as
/// [`due_waits_ms`] says; oldest first, at most `SWEEP_FANOUT`, none claimed within the
/// last hour) and queues one check each. Returns
/// how many were queued. A failed send leaves its claims to expire and be swept again.
pub async fn sweep(
    store: &dyn CredentialStore,
    queue: &dyn JobQueue,
    now: Timestamp,
    after_hours: u64,
) -> Result<usize, SweepError> {
    let cutoffs: Vec<Timestamp> = due_waits_ms(after_hours)
        .into_iter()
        .map(|wait| Timestamp::from_millis(now.as_millis().saturating_sub(wait)))
        .collect();
    let requeue_before = Timestamp::from_millis(now.as_millis().saturating_sub(CLAIM_TTL_MS));
    let due = store
        .claim_due(&cutoffs, requeue_before, now, SWEEP_FANOUT)
        .await
        .map_err(SweepError::Store)?;
    let jobs: Vec<Job> = due
        .into_iter()
        .map(|(user, id, provider)| Job::Revalidate {
            user_id: user.as_str().to_owned(),
            credential_id: id.as_str().to_owned(),
            provider: provider.as_str().to_owned(),
            queued_at: now.as_millis(),
        })
        .collect();
    let mut sent = 0;
    for chunk in jobs.chunks(SEND_CHUNK) {
        queue.send(chunk).await.map_err(SweepError::Queue)?;
        sent += chunk.len();
    }
    Ok(sent)
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("claiming due credentials failed: {0}")]
    Store(StoreError),
    #[error("queueing the checks failed: {0}")]
    Queue(String),
}

/// What one batch did: an outcome per message, in order, and how many audit events it
/// wrote into the outbox (the chainer is to be told when there are any).
#[derive(Debug, Default)]
pub struct Ran {
    pub outcomes: Vec<JobOutcome>,
    pub events: usize,
}

/// Where key-health notices wait, and where they go (when webhooks are on).
pub struct Notifier<'a> {
    pub store: &'a dyn NotificationStore,
    pub settings: &'a WebhookSettings,
    pub http: &'a dyn HttpClient,
    pub clock: &'a dyn Clock,
}

/// What the jobs consumer works with.
pub struct Workers<'a> {
    /// The sweep's checks.
    pub revalidation: Revalidation<'a>,
    /// Master-key rotation, row by row.
    pub rewrap: Rewrap<'a>,
    pub notifier: Option<Notifier<'a>>,
    pub progress: &'a dyn JobStore,
    /// For a job's next step.
    pub queue: &'a dyn JobQueue,
    /// The audit chains, whose anchors a rotation re-seals.
    pub audit: &'a dyn crate::audit::AuditStore,
}

/// Runs one batch of job messages. A message that is not a job is acknowledged (and
/// logged): retrying it cannot make it one.
pub async fn run(w: &Workers<'_>, bodies: &[Value], log: &dyn Fn(&str)) -> Ran {
    let origin = sweep_origin();
    let mut per_provider: Vec<(String, usize)> = Vec::new();
    let mut out = Vec::with_capacity(bodies.len());
    let mut events = 0;
    let mut delivered = false;
    for body in bodies {
        let job = match body {
            Value::String(text) => serde_json::from_slice::<Value>(text.as_bytes())
                .ok()
                .and_then(|v| Job::from_json(&v)),
            other => Job::from_json(other),
        };
        let (user_id, credential_id, provider, queued_at) = match job {
            Some(Job::Revalidate {
                user_id,
                credential_id,
                provider,
                queued_at,
            }) => (user_id, credential_id, provider, queued_at),
            // One delivery run per invocation; another wake-up in the batch adds nothing.
            Some(Job::Notify) if delivered => {
                out.push(JobOutcome::Ack);
                continue;
            }
            Some(Job::Notify) => {
                delivered = true;
                out.push(notify(w.notifier.as_ref(), log).await);
                continue;
            }
            Some(Job::Rewrap { job_id }) => {
                let (outcome, rewrapped) = rotation::step(w, &job_id, log).await;
                events += rewrapped;
                out.push(outcome);
                continue;
            }
            // A kind this build does not know (a newer one, mid-deploy) waits for one that
            // does; what is no job at all is dropped.
            None if kind_of(body).is_some() => {
                log("jobs: a job of an unknown kind; retrying later");
                out.push(JobOutcome::RetryAfter(300));
                continue;
            }
            None => {
                log("jobs: a message that is no job was dropped");
                out.push(JobOutcome::Ack);
                continue;
            }
        };
        let seen = per_provider
            .iter()
            .find(|(p, _)| *p == provider)
            .map_or(0, |(_, n)| *n);
        if seen >= PER_PROVIDER_PER_BATCH {
            out.push(JobOutcome::RetryAfter(SPREAD_DELAY_SECONDS));
            continue;
        }
        per_provider.retain(|(p, _)| *p != provider);
        per_provider.push((provider.clone(), seen + 1));
        let (Some(user), Some(id)) = (UserId::parse(&user_id), CredentialId::parse(&credential_id))
        else {
            log("jobs: a revalidation names no valid credential; dropped");
            out.push(JobOutcome::Ack);
            continue;
        };
        let queued_at = Timestamp::from_millis(queued_at);
        out.push(
            match w
                .revalidation
                .revalidate(&user, &id, queued_at, &origin)
                .await
            {
                Ok(
                    Revalidated::Deferred {
                        retry_after_seconds,
                    }
                    | Revalidated::Limited {
                        retry_after_seconds,
                    },
                ) => JobOutcome::RetryAfter(retry_after_seconds),
                Ok(Revalidated::Changed { from, to }) => {
                    events += 1;
                    log(&format!("revalidation: {id} ({provider}) {from} -> {to}"));
                    JobOutcome::Ack
                }
                Ok(_) => JobOutcome::Ack,
                Err(e) => {
                    log(&format!("revalidation: {id} failed ({e}); retrying"));
                    JobOutcome::RetryAfter(30)
                }
            },
        );
    }
    Ran {
        outcomes: out,
        events,
    }
}

/// Delivers what is due; while notices still wait, the message comes back when the
/// earliest is due (the cron sends a fresh one every hour in case it is lost).
async fn notify(notifier: Option<&Notifier<'_>>, log: &dyn Fn(&str)) -> JobOutcome {
    let Some(n) = notifier else {
        return JobOutcome::Ack;
    };
    let now = n.clock.now();
    match deliver(n.store, n.http, now, n.settings, log).await {
        Ok(Delivered { next_due: None, .. }) => JobOutcome::Ack,
        Ok(Delivered {
            next_due: Some(at), ..
        }) => JobOutcome::RetryAfter(now.millis_until(at).div_ceil(1000).max(1)),
        Err(e) => {
            log(&format!("webhooks: delivery failed ({e}); retrying"));
            JobOutcome::RetryAfter(30)
        }
    }
}

/// The `kind` a message names, if it is a JSON object with one.
fn kind_of(body: &Value) -> Option<String> {
    let value = match body {
        Value::String(text) => serde_json::from_slice::<Value>(text.as_bytes()).ok()?,
        other => other.clone(),
    };
    value.get("kind")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_dead_key_is_asked_less_and_less_often_then_not_at_all() {
        let day = DAY_MS;
        assert_eq!(
            due_waits_ms(24),
            [day, day, 2 * day, 4 * day, 8 * day, 16 * day]
        );
        // A sweep interval longer than the back-off's step is never shortened by it.
        let week = 7 * day;
        assert_eq!(
            due_waits_ms(168),
            [week, week, week, week, 8 * day, 16 * day]
        );
        assert_eq!(due_waits_ms(0)[0], 0);
        assert_eq!(due_waits_ms(0).len() as u32, DEAD_CHECKS_MAX);
    }

    #[test]
    fn every_job_reads_back_as_written() {
        let jobs = [
            Job::Revalidate {
                user_id: "u1".into(),
                credential_id: "cred_1".into(),
                provider: "openai".into(),
                queued_at: 1_700_000_000_000,
            },
            Job::Notify,
            Job::Rewrap {
                job_id: "job_1".into(),
            },
        ];
        for job in jobs {
            let text = serde_json::to_string(&job).unwrap();
            let value: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(Job::from_json(&value), Some(job));
        }
    }

    #[test]
    fn unknown_members_are_ignored_and_a_bad_field_is_no_job() {
        let read = |v: Value| Job::from_json(&v);
        assert_eq!(
            read(json!({"kind": "rewrap", "job_id": "j", "extra": [1]})),
            Some(Job::Rewrap { job_id: "j".into() })
        );
        assert_eq!(
            read(json!({"kind": "notify", "extra": 1})),
            Some(Job::Notify)
        );
        let revalidate = json!({"kind": "revalidate", "user_id": "u", "credential_id": "c",
            "provider": "p", "queued_at": 5});
        assert!(read(revalidate.clone()).is_some());
        for (member, bad) in [
            ("queued_at", json!(-1)),
            ("queued_at", json!(1.5)),
            ("queued_at", json!("5")),
            ("user_id", json!(7)),
            ("provider", Value::Null),
            ("kind", json!("sweep")),
            ("kind", json!(0)),
        ] {
            let mut v = revalidate.clone();
            v[member] = bad;
            assert_eq!(read(v), None, "{member}");
        }
        let mut missing = revalidate;
        missing.as_object_mut().unwrap().remove("credential_id");
        assert_eq!(read(missing), None);
        assert_eq!(read(json!(["revalidate"])), None);
        assert_eq!(read(json!("notify")), None);
    }
}
