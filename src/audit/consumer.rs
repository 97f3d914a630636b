//! The queue consumers' logic: what to do with each message of a batch.
//!
//! A message is a nudge (`{"nudge":"<event id>"}`: an event waits in the outbox) or, from
//! a producer that could not write the outbox, a whole event. The consumer files whole
//! events into the outbox, by id, then chains what waits; its cost in D1 queries is
//! bounded by the number of rounds, not by the number of messages or users in the batch.
//! Without a usable master key nothing is chained (a head could not be sealed): events are
//! still filed, and wait in the outbox for a chainer that has one.

use serde_json::Value;

use super::{drain, drain_rounds, AuditEvent, Sealer};
use crate::audit::AuditStore;

/// Chaining rounds one consumer invocation runs at most (three D1 queries each).
pub const CONSUMER_ROUNDS: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    Ack,
    Retry,
}

/// What a queue message says.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// Events wait in the outbox.
    Nudge,
    /// A whole event, sent because the outbox could not be written.
    Event(Box<AuditEvent>),
    Unreadable,
}

/// The body of a nudge for `event_id`.
pub fn nudge_body(event_id: &str) -> String {
    serde_json::json!({ "nudge": event_id }).to_string()
}

/// Reads a message body (the producers send JSON text).
pub fn parse_message(body: &Value) -> Message {
    let value = match body {
        Value::String(text) => match serde_json::from_slice::<Value>(text.as_bytes()) {
            Ok(v) => v,
            Err(_) => return Message::Unreadable,
        },
        other => other.clone(),
    };
    if value.get("nudge").is_some_and(Value::is_string) {
        return Message::Nudge;
    }
    match AuditEvent::from_json(&value) {
        Some(e) => Message::Event(Box::new(e)),
        None => Message::Unreadable,
    }
}

fn text_of(body: &Value) -> String {
    match body {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What the main consumer decided for a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumed {
    /// One per message, in order.
    pub dispositions: Vec<Disposition>,
    /// Chaining stopped at its bound with events still waiting: the glue puts a fresh
    /// nudge on the queue, so a backlog larger than one invocation's rounds (a large
    /// import, a burst) keeps moving instead of waiting for the hourly cron.
    pub more_waiting: bool,
}

/// The main consumer. Whole events go into the outbox (in order of time: that is the
/// order they happened in), then the outbox is chained. A message is acknowledged once
/// what it carries is safe: an event once it is in the outbox, a nudge once the outbox
/// was chained (or, without a `sealer`, once there is nothing this consumer can do for it:
/// its event waits in the outbox). Unreadable messages are retried, and reach the
/// dead-letter queue.
pub async fn consume(
    store: &dyn AuditStore,
    sealer: Option<&Sealer>,
    bodies: &[Value],
    log: &dyn Fn(&str),
) -> Consumed {
    let mut out = vec![Disposition::Retry; bodies.len()];
    let mut nudges = Vec::new();
    let mut events: Vec<(usize, AuditEvent)> = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        match parse_message(body) {
            Message::Nudge => nudges.push(i),
            Message::Event(e) => events.push((i, *e)),
            Message::Unreadable => log(&format!(
                "audit: message {i} is neither a nudge nor an event; retrying it"
            )),
        }
    }
    if !events.is_empty() {
        crate::small_sort::sort_by(&mut events, |(_, a), (_, b)| {
            a.at.cmp(&b.at).then_with(|| a.id.cmp(&b.id))
        });
        let batch: Vec<AuditEvent> = events.iter().map(|(_, e)| e.clone()).collect();
        match store.enqueue(&batch).await {
            Ok(()) => events.iter().for_each(|(i, _)| out[*i] = Disposition::Ack),
            Err(e) => log(&format!(
                "audit: {} event(s) could not be put in the outbox ({e}); retrying them",
                batch.len()
            )),
        }
    }
    let mut more_waiting = false;
    let Some(sealer) = sealer else {
        if !nudges.is_empty() {
            log("audit: no usable master key; events wait in the outbox until one is configured");
            nudges.iter().for_each(|i| out[*i] = Disposition::Ack);
        }
        return Consumed {
            dispositions: out,
            more_waiting,
        };
    };
    if !nudges.is_empty() || out.contains(&Disposition::Ack) {
        match drain_rounds(store, sealer, CONSUMER_ROUNDS).await {
            Ok(drained) => {
                nudges.iter().for_each(|i| out[*i] = Disposition::Ack);
                more_waiting = drained.more;
            }
            // The events are safe in the outbox; the nudges are retried (and the cron sweeps).
            Err(e) => log(&format!(
                "audit: chaining the outbox failed ({e}); retrying the nudges"
            )),
        }
    }
    Consumed {
        dispositions: out,
        more_waiting,
    }
}

/// The dead-letter consumer: one more try at what the messages carry, else each message is
/// kept as it came in. Bounded like the main consumer: one enqueue for every event of the
/// batch, one write for every dead letter of it, and the chaining rounds. Only if even the
/// dead letters cannot be written are messages retried (explicitly, up to the dead-letter
/// queue's own `max_retries`); a nudge that is finally dropped loses nothing, since its
/// event waits in the outbox for the cron.
pub async fn consume_dead_letters(
    store: &dyn AuditStore,
    sealer: Option<&Sealer>,
    bodies: &[Value],
    log: &dyn Fn(&str),
) -> Vec<Disposition> {
    let mut out = vec![Disposition::Ack; bodies.len()];
    let mut nudges = Vec::new();
    let mut events: Vec<(usize, AuditEvent)> = Vec::new();
    let mut dead: Vec<(usize, String)> = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        match parse_message(body) {
            Message::Nudge => nudges.push(i),
            Message::Event(e) => events.push((i, *e)),
            Message::Unreadable => dead.push((i, "not an audit event".to_owned())),
        }
    }
    if !events.is_empty() {
        let batch: Vec<AuditEvent> = events.iter().map(|(_, e)| e.clone()).collect();
        if let Err(e) = store.enqueue(&batch).await {
            dead.extend(
                events
                    .iter()
                    .map(|(i, _)| (*i, format!("enqueue failed: {e}"))),
            );
        }
    }
    if !dead.is_empty() {
        let letters: Vec<(String, String)> = dead
            .iter()
            .map(|(i, reason)| (text_of(&bodies[*i]), reason.clone()))
            .collect();
        if let Err(e) = store.store_dead_letters(&letters).await {
            log(&format!(
                "audit: {} dead letter(s) could not be stored ({e}); retrying",
                letters.len()
            ));
            dead.iter().for_each(|(i, _)| out[*i] = Disposition::Retry);
        }
    }
    let Some(sealer) = sealer else {
        if nudges.len() + events.len() > 0 {
            log("audit: no usable master key; events wait in the outbox until one is configured");
        }
        return out;
    };
    if nudges.len() + events.len() > 0 {
        if let Err(e) = drain(store, sealer, CONSUMER_ROUNDS).await {
            log(&format!(
                "audit: chaining the outbox failed ({e}); retrying the nudges"
            ));
            nudges.iter().for_each(|i| out[*i] = Disposition::Retry);
        }
    }
    out
}
