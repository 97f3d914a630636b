//! The queue consumers' logic: what to do with each message of a batch.

use std::collections::BTreeMap;

use serde_json::Value;

use super::AuditEvent;
use crate::ports::AuditStore;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    Ack,
    Retry,
}

/// A message body as an event: the producer sends the event's JSON text.
pub fn parse_message(body: &Value) -> Option<AuditEvent> {
    match body {
        Value::String(text) => serde_json::from_str(text).ok(),
        other => serde_json::from_value(other.clone()).ok(),
    }
}

/// The main consumer: stores each user's events as one atomic append. A message that
/// cannot be read, or whose user's append fails, is retried on its own (and reaches the
/// dead-letter queue after the retries); the rest of the batch is acknowledged.
pub async fn consume(
    store: &dyn AuditStore,
    bodies: &[Value],
    log: &dyn Fn(&str),
) -> Vec<Disposition> {
    let mut out = vec![Disposition::Retry; bodies.len()];
    let mut by_user: BTreeMap<String, Vec<(usize, AuditEvent)>> = BTreeMap::new();
    for (i, body) in bodies.iter().enumerate() {
        match parse_message(body) {
            Some(e) => by_user.entry(e.user_id.clone()).or_default().push((i, e)),
            None => log(&format!(
                "audit: message {i} is not an audit event; retrying it"
            )),
        }
    }
    for (user_index, group) in by_user.into_values().enumerate() {
        let events: Vec<AuditEvent> = group.iter().map(|(_, e)| e.clone()).collect();
        match store.append(&events).await {
            Ok(_) => group.iter().for_each(|(i, _)| out[*i] = Disposition::Ack),
            Err(e) => log(&format!(
                "audit: storing a group of {} event(s) failed ({e}); retrying (group {user_index})",
                events.len()
            )),
        }
    }
    out
}

/// The dead-letter consumer: one more try at the chain, else the message is kept as it
/// came in. Only if even that fails is it retried.
pub async fn consume_dead_letters(
    store: &dyn AuditStore,
    bodies: &[Value],
    log: &dyn Fn(&str),
) -> Vec<Disposition> {
    let mut out = Vec::with_capacity(bodies.len());
    for body in bodies {
        let reason = match parse_message(body) {
            Some(event) => match store.append(std::slice::from_ref(&event)).await {
                Ok(_) => {
                    out.push(Disposition::Ack);
                    continue;
                }
                Err(e) => format!("append failed: {e}"),
            },
            None => "not an audit event".to_owned(),
        };
        let text = match body {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match store.store_dead_letter(&text, &reason).await {
            Ok(()) => out.push(Disposition::Ack),
            Err(e) => {
                log(&format!(
                    "audit: a dead letter could not be stored ({e}); retrying"
                ));
                out.push(Disposition::Retry);
            }
        }
    }
    out
}
