//! The queue consumers' entry point: which consumer a batch goes to and what each of its
//! messages gets. The Worker's `#[event(queue)]` only hands over to [`consume`] and tells
//! the runtime what it decided.
//!
//! One Worker consumes every queue of its environment; a queue's name
//! (`byok-vault-audit-staging-dlq`, …) says what it carries (its `audit` or `jobs` segment)
//! and whether it is a dead-letter queue (its last segment, `dlq`). wrangler.toml names
//! them so in every environment.

use serde_json::Value;

use super::background::{wake_deliverer, Background};
use super::{run, JobOutcome, Notifier, Workers};
use crate::audit::{consume_dead_letters, Disposition};
use crate::checks::LiveChecks;
use crate::config::Config;
use crate::revalidation::Revalidation;
use crate::rewrap::Rewrap;

/// What a queue carries, read from its name: which consumer its messages go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueRole {
    /// Nudges and whole audit events: chain the outbox.
    Audit,
    /// What the audit consumer gave up on: one more try, then keep it.
    AuditDeadLetters,
    /// Background jobs: the revalidation sweep's checks.
    Jobs,
    /// Jobs that kept failing: logged and dropped (a sweep's claim expires and the
    /// credential is queued again).
    JobsDeadLetters,
}

impl QueueRole {
    /// The role of the queue named `name`; `None` for a queue this Worker does not know.
    pub fn of(name: &str) -> Option<Self> {
        let segments: Vec<&str> = name.split('-').collect();
        let dead_letters = segments.last() == Some(&"dlq");
        let carries = |what: &str| segments.contains(&what);
        match (carries("audit"), carries("jobs"), dead_letters) {
            (true, false, false) => Some(Self::Audit),
            (true, false, true) => Some(Self::AuditDeadLetters),
            (false, true, false) => Some(Self::Jobs),
            (false, true, true) => Some(Self::JobsDeadLetters),
            _ => None,
        }
    }
}

/// The longest delay a retried message may ask for (the platform's limit, 12 hours).
pub const MAX_RETRY_DELAY_SECONDS: u64 = 43_200;

/// How long job messages wait when the configuration has problems.
const CONFIG_RETRY_SECONDS: u32 = 300;

/// What the runtime is told about one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    Ack,
    /// Delivered again, after the queue's own retry delay.
    Retry,
    /// Delivered again after this many seconds.
    RetryAfter(u32),
}

/// What a batch came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// One per message, in order.
    pub settle: Vec<Settle>,
    /// The chainer was told again that events wait, and why: `backlog` (the audit consumer
    /// stopped at its bound with more waiting) or `jobs` (the jobs wrote events).
    pub nudged: Option<&'static str>,
}

impl Batch {
    fn all(settle: Settle, n: usize) -> Self {
        Self {
            settle: vec![settle; n],
            nudged: None,
        }
    }
}

/// One batch from the queue named `queue`: its consumer runs, a backlog or the jobs'
/// events get the chainer another pass, and the deliverer is woken if chaining wrote
/// key-health notices. Every message is settled in the answer (an error would redeliver
/// the whole batch).
pub async fn consume(bg: &Background<'_>, queue: &str, bodies: &[Value]) -> Batch {
    let info = |line: &str| bg.info(line);
    let batch = match QueueRole::of(queue) {
        Some(QueueRole::Jobs) => match bg.config {
            Ok(config) => jobs(bg, config, bodies).await,
            Err(_) => {
                bg.error("jobs: the configuration has problems; retrying in 5 minutes");
                return Batch::all(Settle::RetryAfter(CONFIG_RETRY_SECONDS), bodies.len());
            }
        },
        Some(QueueRole::Audit) => {
            let sealer = bg.sealer();
            let consumed = crate::audit::consume(bg.audit, sealer.as_ref(), bodies, &info).await;
            Batch {
                settle: settled(&consumed.dispositions),
                // A backlog larger than one invocation's rounds: another pass, now, not at
                // the cron (the sink chains a round at once if the queue cannot take it).
                nudged: consumed.more_waiting.then_some("backlog"),
            }
        }
        Some(QueueRole::AuditDeadLetters) => {
            let sealer = bg.sealer();
            let settle = consume_dead_letters(bg.audit, sealer.as_ref(), bodies, &info).await;
            Batch {
                settle: settled(&settle),
                nudged: None,
            }
        }
        // A job that kept failing: its claim expires and a later sweep queues it again.
        Some(QueueRole::JobsDeadLetters) => {
            bg.warn(&format!(
                "queue {queue}: dropping {} job(s) that kept failing (a later sweep retries them)",
                bodies.len()
            ));
            Batch::all(Settle::Ack, bodies.len())
        }
        // An unknown queue is nobody's: keep the messages rather than drop them.
        None => {
            bg.warn(&format!(
                "queue {queue}: no consumer yet, retrying {} message(s)",
                bodies.len()
            ));
            Batch::all(Settle::Retry, bodies.len())
        }
    };
    if let Some(why) = batch.nudged {
        bg.sink.nudge(why).await;
    }
    wake_deliverer(bg.queue, bg.audit, bg.log).await;
    batch
}

fn settled(dispositions: &[Disposition]) -> Vec<Settle> {
    let mut out = Vec::with_capacity(dispositions.len());
    for d in dispositions {
        out.push(match d {
            Disposition::Ack => Settle::Ack,
            Disposition::Retry => Settle::Retry,
        });
    }
    out
}

/// The jobs consumer: the sweep's checks, deliveries and rotation steps, each message
/// acknowledged or retried with the delay its job asked for (at most the platform's).
async fn jobs(bg: &Background<'_>, config: &Config, bodies: &[Value]) -> Batch {
    let log = |line: &str| bg.info(line);
    let workers = Workers {
        revalidation: Revalidation {
            config,
            store: bg.credentials,
            checks: LiveChecks {
                config,
                http: bg.http,
                clock: bg.clock,
                jitter: bg.jitter,
                limiter: bg.limiter,
            },
            log: &log,
        },
        rewrap: Rewrap {
            config,
            store: bg.credentials,
            clock: bg.clock,
        },
        notifier: config.webhooks.as_ref().map(|settings| Notifier {
            store: bg.notices,
            settings,
            http: bg.http,
            clock: bg.clock,
        }),
        progress: bg.progress,
        queue: bg.queue,
        audit: bg.audit,
    };
    let ran = run(&workers, bodies, &log).await;
    Batch {
        settle: ran
            .outcomes
            .iter()
            .map(|outcome| match *outcome {
                JobOutcome::Ack => Settle::Ack,
                JobOutcome::RetryAfter(s) => {
                    Settle::RetryAfter(s.min(MAX_RETRY_DELAY_SECONDS) as u32)
                }
            })
            .collect(),
        // The audit consumer (one at a time) chains them; chaining here could lose a race
        // with it and leave them for the cron. The sink chains at once if it cannot nudge.
        nudged: (ran.events > 0).then_some("jobs"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::testing::{Bed, NOW_MS};
    use crate::jobs::{Job, Level};
    use serde_json::json;

    fn nudge() -> Value {
        Value::String(crate::audit::nudge_body("ev_1"))
    }

    #[test]
    fn a_batch_from_a_queue_nobody_consumes_is_kept_for_later() {
        let bed = Bed::with(&[]);
        let batch = bed.consume("byok-vault-auditlog", &[nudge(), nudge()]);
        assert_eq!(batch.settle, [Settle::Retry, Settle::Retry]);
        assert_eq!(batch.nudged, None);
        assert_eq!(
            bed.logged(Level::Warn),
            ["queue byok-vault-auditlog: no consumer yet, retrying 2 message(s)"]
        );
    }

    #[test]
    fn jobs_that_kept_failing_are_dropped() {
        let bed = Bed::with(&[]);
        let job = Value::String(serde_json::to_string(&Job::Notify).unwrap());
        let batch = bed.consume("byok-vault-jobs-dlq", &[job.clone(), job]);
        assert_eq!(batch.settle, [Settle::Ack, Settle::Ack]);
        assert!(bed.jobs.sent.borrow().is_empty());
        assert_eq!(
            bed.logged(Level::Warn),
            ["queue byok-vault-jobs-dlq: dropping 2 job(s) that kept failing (a later sweep retries them)"]
        );
    }

    #[test]
    fn a_backlog_past_the_consumers_rounds_gets_another_pass_at_once() {
        let round = crate::audit::ROUND_SIZE as usize;
        let backlog = crate::audit::CONSUMER_ROUNDS * round + 1;
        let bed = Bed::with(&[]);
        for _ in 0..backlog {
            bed.pending_event("u1", 1000, None);
        }
        let batch = bed.consume("byok-vault-audit", &[nudge()]);
        assert_eq!(batch.settle, [Settle::Ack]);
        assert_eq!(batch.nudged, Some("backlog"));
        // The in-memory sink chains a round at once when nudged, as the Worker's does
        // when its queue is out of reach: the last event is chained too.
        assert_eq!(bed.audit.rows.borrow().len(), backlog);
        assert!(bed.audit.outbox.rows.borrow().is_empty());

        // A batch that chains everything within its rounds asks for nothing more.
        let bed = Bed::with(&[]);
        bed.pending_event("u1", 1000, None);
        let batch = bed.consume("byok-vault-audit-staging", &[nudge()]);
        assert_eq!(batch.nudged, None);
        assert_eq!(bed.audit.rows.borrow().len(), 1);
    }

    #[test]
    fn without_a_master_key_the_audit_consumer_acks_nudges_and_the_events_wait() {
        let bed = Bed::without_master_key();
        // The sink's own chaining has no key either.
        bed.audit
            .use_master(None, crate::domain::Timestamp::from_millis(NOW_MS));
        bed.pending_event("u1", 1000, None);
        let batch = bed.consume("byok-vault-audit", &[nudge()]);
        assert_eq!(batch.settle, [Settle::Ack]);
        assert_eq!(bed.audit.outbox.rows.borrow().len(), 1);
    }

    #[test]
    fn unreadable_dead_letters_are_kept_and_acknowledged() {
        let bed = Bed::with(&[]);
        let batch = bed.consume("byok-vault-audit-dlq", &[json!("not json"), nudge()]);
        assert_eq!(batch.settle, [Settle::Ack, Settle::Ack]);
        assert_eq!(bed.audit.dead_letters.borrow().len(), 1);
        // Their store down: both kinds come back.
        let bed = Bed::with(&[]);
        bed.audit.down.set(true);
        let batch = bed.consume("byok-vault-audit-dlq", &[json!("not json"), nudge()]);
        assert_eq!(batch.settle, [Settle::Retry, Settle::Retry]);
    }

    #[test]
    fn a_chaining_that_writes_a_key_health_notice_wakes_the_deliverer() {
        let bed = Bed::with(&[]);
        bed.pending_event(
            "u1",
            1000,
            Some(json!({"previous_status": "valid", "new_status": "invalid"})),
        );
        bed.consume("byok-vault-audit", &[nudge()]);
        assert_eq!(*bed.jobs.sent.borrow(), [Job::Notify]);
        // An event that changes nothing wakes nobody.
        let bed = Bed::with(&[]);
        bed.pending_event("u1", 1000, None);
        bed.consume("byok-vault-audit", &[nudge()]);
        assert!(bed.jobs.sent.borrow().is_empty());
    }

    #[test]
    fn job_messages_wait_five_minutes_while_the_configuration_has_problems() {
        let bed = Bed::with_config_problems();
        let job = Value::String(serde_json::to_string(&Job::Notify).unwrap());
        let batch = bed.consume("byok-vault-jobs", &[job.clone(), job]);
        assert_eq!(batch.settle, [Settle::RetryAfter(300); 2]);
        assert_eq!(
            bed.logged(Level::Error),
            ["jobs: the configuration has problems; retrying in 5 minutes"]
        );
    }

    #[test]
    fn a_job_asks_to_come_back_at_most_twelve_hours_later() {
        let bed = Bed::with(&[
            ("NOTIFY_WEBHOOK_URL", "https://hooks.example/vault"),
            ("NOTIFY_WEBHOOK_SECRET", "0123456789abcdef01234567"),
        ]);
        let job = Value::String(serde_json::to_string(&Job::Notify).unwrap());
        // The earliest notice is due in two days, then in a minute.
        bed.notices
            .due
            .set(Some(crate::domain::Timestamp::from_millis(
                NOW_MS + 2 * 86_400_000,
            )));
        let batch = bed.consume("byok-vault-jobs", std::slice::from_ref(&job));
        assert_eq!(
            batch.settle,
            [Settle::RetryAfter(MAX_RETRY_DELAY_SECONDS as u32)]
        );
        bed.notices
            .due
            .set(Some(crate::domain::Timestamp::from_millis(NOW_MS + 60_000)));
        let batch = bed.consume("byok-vault-jobs", &[job]);
        assert_eq!(batch.settle, [Settle::RetryAfter(60)]);
        assert_eq!(batch.nudged, None);
    }

    #[test]
    fn every_queue_in_wrangler_toml_has_its_role() {
        let toml = include_str!("../../wrangler.toml");
        let mut seen = 0;
        for line in toml.lines() {
            for part in line.split("queue = \"").skip(1) {
                let name = part.split('"').next().unwrap();
                let role = QueueRole::of(name).unwrap_or_else(|| panic!("{name}"));
                let expected = match (name.contains("audit"), name.ends_with("-dlq")) {
                    (true, false) => QueueRole::Audit,
                    (true, true) => QueueRole::AuditDeadLetters,
                    (false, false) => QueueRole::Jobs,
                    (false, true) => QueueRole::JobsDeadLetters,
                };
                assert_eq!(role, expected, "{name}");
                seen += 1;
            }
        }
        // Producers and consumers, in three environments.
        assert!(seen >= 18, "read only {seen} queue names");
    }

    #[test]
    fn names_are_read_by_segment_not_by_substring() {
        assert_eq!(QueueRole::of("byok-vault-audit"), Some(QueueRole::Audit));
        assert_eq!(
            QueueRole::of("byok-vault-jobs-dlq"),
            Some(QueueRole::JobsDeadLetters)
        );
        for unknown in [
            "byok-vault-auditlog",
            "byok-vault-audit-jobs",
            "other",
            "dlq",
            "",
        ] {
            assert_eq!(QueueRole::of(unknown), None, "{unknown}");
        }
    }
}
