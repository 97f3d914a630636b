//! The audit producer over `AUDIT_QUEUE`: a request's events go into the outbox and a
//! nudge onto the queue; the chaining happens at once when the queue is missing or
//! failing, and the whole event travels on the queue when the outbox is out of reach.

use async_trait::async_trait;
use worker::Queue;

use super::send;
use crate::audit::AuditSink;
use crate::audit::{drain, nudge_body, AuditEvent, Sealer};
use crate::crypto::MasterKeys;
use crate::domain::Timestamp;
use crate::edge::d1::audit::{outbox_insert, D1AuditStore};
use crate::edge::d1::Db;

/// A request's audit path: events into the outbox, nudges onto `AUDIT_QUEUE`; chaining at
/// once when the queue is missing or failing, the whole event on the queue when the
/// outbox is.
pub(in crate::edge) struct OutboxAuditSink<'a> {
    pub queue: Option<Queue>,
    pub db: &'a Db,
    /// The audit log the sink chains into when it cannot nudge (the invocation's one, so
    /// the notices its commits write are counted there).
    pub store: D1AuditStore<'a>,
    /// What chaining at once seals heads with; without it events wait in the outbox.
    pub keys: Option<&'a MasterKeys>,
}

impl OutboxAuditSink<'_> {
    /// Sends `body` on the queue; says why not when it cannot.
    async fn send_body(&self, body: String) -> Result<(), String> {
        match &self.queue {
            Some(queue) => send::send(queue, body)
                .await
                .map_err(|e| format!("queue send failed ({e})")),
            None => Err("AUDIT_QUEUE is not bound".to_owned()),
        }
    }

    /// Chains what waits in the outbox now, for a request whose queue is out of reach.
    async fn chain_now(&self, event_id: &str) {
        let Some(keys) = self.keys else {
            worker::console_error!(
                "audit: no usable master key to seal the chain; event {event_id} waits in the outbox"
            );
            return;
        };
        let sealer = Sealer::new(keys, Timestamp::from_millis(crate::edge::runtime::now_ms()));
        if let Err(e) = drain(&self.store, &sealer, 1).await {
            worker::console_error!(
                "audit: chaining failed ({e}); event {event_id} waits in the outbox for the cron"
            );
        }
    }
}

#[async_trait(?Send)]
impl AuditSink for OutboxAuditSink<'_> {
    async fn record(&self, event: &AuditEvent) {
        let stored = match outbox_insert(self.db, event, "", Vec::new()) {
            Ok(statement) => statement.run().await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if stored.is_ok() {
            return self.nudge(&event.id).await;
        }
        // The outbox is out of reach: the whole event travels on the queue and the consumer
        // files it; failing that, the log keeps it (events hold no secret).
        let body = serde_json::to_string(event).unwrap_or_default();
        if let Err(why) = self.send_body(body.clone()).await {
            worker::console_error!(
                "audit: event could not be stored ({}; {why}): {body}",
                stored.err().unwrap_or_default()
            );
        }
    }

    async fn send(&self, event: &AuditEvent) {
        let body = serde_json::to_string(event).unwrap_or_default();
        if let Err(why) = self.send_body(body).await {
            worker::console_warn!("audit: {why}; writing event {} to the outbox", event.id);
            self.record(event).await;
        }
    }

    async fn nudge(&self, event_id: &str) {
        let Err(why) = self.send_body(nudge_body(event_id)).await else {
            return;
        };
        worker::console_warn!("audit: {why}; writing event {event_id} directly");
        self.chain_now(event_id).await;
    }
}
