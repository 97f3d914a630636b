//! The transactional outbox, chained. An operation writes its event into the outbox in
//! the same D1 transaction as the change it describes, so an event exists exactly when
//! its operation happened. Chainers (the queue consumer on a nudge, the cron as a
//! sweeper, a request whose nudge could not be sent) turn pending events into links of
//! their users' chains: [`plan`] decides, [`ChainPlan::seal`] seals the heads it moves,
//! the store carries the plan out in one transaction, and a chainer that lost a race to
//! another simply reads again. Chaining needs the master key (a head is sealed under it):
//! without one, events wait in the outbox.

use super::{
    link, Action, Anchor, AnchorKind, AuditEvent, ChainHead, ChainedEvent, Heads, Outcome, Sealer,
    Source,
};
use crate::audit::AuditStore;
use crate::domain::StoreError;

/// Pending events one round reads and chains. A round costs three D1 queries (pending,
/// heads, one batch) whatever the number of users in it.
pub const ROUND_SIZE: u32 = 100;

/// An event waiting in the outbox to be chained, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingEvent {
    /// The outbox position: the order in which the writes committed.
    pub pos: u64,
    pub user_id: String,
    /// The event's JSON.
    pub body: String,
}

/// What one chaining round writes, in one transaction.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChainPlan {
    /// The new links, in order, per user.
    pub rows: Vec<ChainedEvent>,
    /// Where each touched user's chain ends afterwards.
    pub heads: Vec<(String, ChainHead)>,
    /// Those heads as written: sealed ([`ChainPlan::seal`]).
    pub anchors: Vec<(String, Anchor)>,
    /// Outbox rows that cannot be chained (unreadable), kept as dead letters:
    /// (body, reason).
    pub dead: Vec<(String, String)>,
    /// The outbox positions this plan consumes.
    pub done: Vec<u64>,
    /// Keys these events used: (user, credential, when), for `credentials.last_used_at`.
    pub used: Vec<(String, String, u64)>,
    /// Key-health notices these events make (changes of status), for the webhooks.
    pub notices: Vec<crate::notify::Notice>,
}

impl ChainPlan {
    pub fn is_empty(&self) -> bool {
        self.done.is_empty()
    }

    /// Seals the heads this plan moves, each after the head it replaces in `before` (one
    /// HMAC to check it, one to seal the new one). `Err(version)`: a head is sealed under
    /// a master key version that is not configured; nothing may be written until it is.
    pub fn seal(&mut self, before: &Heads, sealer: &Sealer) -> Result<(), u32> {
        let mut anchors = Vec::with_capacity(self.heads.len());
        for (user, head) in &self.heads {
            let prev = before
                .heads
                .iter()
                .rev()
                .find(|(u, _)| u == user)
                .map(|(_, a)| a);
            let anchor = sealer.successor(AnchorKind::Head, user, prev, head, before.window)?;
            anchors.push((user.clone(), anchor));
        }
        self.anchors = anchors;
        Ok(())
    }
}

/// An outbox row's event. Read through a `Value`, as the queue consumer and the store read
/// theirs, so the wasm holds one `AuditEvent` reader, not a second for JSON text.
fn read_event(body: &str) -> Option<AuditEvent> {
    let value = serde_json::from_slice::<serde_json::Value>(body.as_bytes()).ok()?;
    AuditEvent::from_json(&value)
}

/// Where `user`'s chain ends in `ends`; a user not there yet starts at genesis.
fn end_of<'a>(ends: &'a mut Vec<(String, ChainHead)>, user: &str) -> &'a mut ChainHead {
    let i = match ends.iter().position(|(u, _)| u == user) {
        Some(i) => i,
        None => {
            ends.push((user.to_owned(), ChainHead::genesis()));
            ends.len() - 1
        }
    };
    &mut ends[i].1
}

/// Links `pending` (in outbox order, which is commit order) onto their users' chains,
/// which end at `heads` (a user not named there starts at genesis).
pub fn plan(pending: &[PendingEvent], heads: &[(String, ChainHead)]) -> ChainPlan {
    // Where each user's chain ends: a short list (one round's users), scanned, not a map
    // compiled for this one entry type. The last head of a repeated user counts.
    let mut ends: Vec<(String, ChainHead)> = Vec::new();
    for (user, head) in heads {
        *end_of(&mut ends, user) = head.clone();
    }
    let mut touched: Vec<String> = Vec::new();
    let mut out = ChainPlan::default();
    let mut ordered: Vec<&PendingEvent> = pending.iter().collect();
    crate::small_sort::sort_by(&mut ordered, |a, b| a.pos.cmp(&b.pos));
    for p in ordered {
        out.done.push(p.pos);
        let event = match read_event(&p.body) {
            Some(e) if e.user_id.as_str() == p.user_id => e,
            Some(_) => {
                out.dead
                    .push((p.body.clone(), "outbox row filed under another user".into()));
                continue;
            }
            None => {
                out.dead
                    .push((p.body.clone(), "unreadable outbox row".into()));
                continue;
            }
        };
        if let (Action::CredentialUsed, Outcome::Success, Some(Source::User), Some(id)) = (
            event.action,
            event.outcome,
            event.source,
            &event.credential_id,
        ) {
            out.used
                .push((p.user_id.clone(), id.as_str().to_owned(), event.at));
        }
        out.notices.extend(crate::notify::notice_of(&event));
        let prev = end_of(&mut ends, &p.user_id);
        let linked = link(prev, event);
        *prev = linked.head();
        if !touched.contains(&p.user_id) {
            touched.push(p.user_id.clone());
        }
        out.rows.push(linked);
    }
    out.heads = touched
        .into_iter()
        .filter_map(|u| {
            let (_, head) = ends.iter().find(|(e, _)| *e == u)?;
            Some((u, head.clone()))
        })
        .collect();
    out
}

/// Chains what waits in the outbox, at most `rounds` rounds of [`ROUND_SIZE`] events,
/// sealing the heads it moves with `sealer`. Returns how many events were chained. A round
/// that loses a race with another chainer (its batch fails on the chain's uniqueness rules
/// and changes nothing) is read again.
pub async fn drain(
    store: &dyn AuditStore,
    sealer: &Sealer,
    rounds: usize,
) -> Result<usize, StoreError> {
    drain_rounds(store, sealer, rounds).await.map(|d| d.chained)
}

/// What a bounded drain did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drained {
    pub chained: usize,
    /// Its last round committed a full round and the bound stopped it: more events may
    /// wait. A round that lost a race chained nothing and never sets it, so a conflict that
    /// does not clear cannot keep asking for passes.
    pub more: bool,
}

/// [`drain`], also saying whether it stopped at its bound with events left behind, so a
/// queue consumer can ask for another pass instead of leaving them to the cron.
pub async fn drain_rounds(
    store: &dyn AuditStore,
    sealer: &Sealer,
    rounds: usize,
) -> Result<Drained, StoreError> {
    let mut chained = 0;
    // Whether the last round committed a full round: only then may more wait.
    let mut full = false;
    for _ in 0..rounds {
        let pending = store.pending(ROUND_SIZE).await?;
        if pending.is_empty() {
            return Ok(Drained {
                chained,
                more: false,
            });
        }
        let mut users: Vec<String> = pending.iter().map(|p| p.user_id.clone()).collect();
        crate::small_sort::sort_by(&mut users, String::cmp);
        users.dedup();
        let heads = store.heads(&users).await?;
        let mut plan = plan(&pending, &heads.points());
        plan.seal(&heads, sealer).map_err(|v| {
            StoreError::Corrupt(format!(
                "a chain's head is sealed under master key version {v}, which is not configured; \
                 its events wait in the outbox until the version is back"
            ))
        })?;
        match store.commit(&plan).await {
            Ok(()) => chained += plan.rows.len(),
            Err(StoreError::Conflict(_)) => {
                full = false;
                continue;
            }
            Err(e) => return Err(e),
        }
        if pending.len() < ROUND_SIZE as usize {
            return Ok(Drained {
                chained,
                more: false,
            });
        }
        full = true;
    }
    Ok(Drained {
        chained,
        more: full,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Action, Actor, ActorType, Verifier, GENESIS_HASH};
    use crate::domain::{Timestamp, UserId};

    fn event(user: &str, n: u64) -> AuditEvent {
        AuditEvent::new(
            format!("ev_{n:04}"),
            Timestamp::from_millis(1_800_000_000_000 + n),
            &UserId::parse(user).unwrap(),
            Action::CredentialViewed,
            Actor {
                kind: ActorType::User,
                id: user.into(),
            },
        )
    }

    fn pending(pos: u64, e: &AuditEvent) -> PendingEvent {
        PendingEvent {
            pos,
            user_id: e.user_id.as_str().to_owned(),
            body: serde_json::to_string(e).unwrap(),
        }
    }

    #[test]
    fn a_use_of_a_users_key_moves_its_last_use_and_nothing_else_does() {
        let mut used = event("u_a", 1);
        used.action = Action::CredentialUsed;
        used.credential_id =
            crate::domain::CredentialId::parse("c_0123456789abcdef0123456789abcdef");
        used.source = Some(crate::audit::Source::User);
        let mut system = used.clone();
        system.id = "ev_sys".into();
        system.source = Some(crate::audit::Source::System);
        let mut failed = used.clone();
        failed.id = "ev_failed".into();
        failed.outcome = crate::audit::Outcome::Failure;
        let p = plan(
            &[pending(1, &used), pending(2, &system), pending(3, &failed)],
            &[],
        );
        assert_eq!(
            p.used,
            [(
                "u_a".to_string(),
                "c_0123456789abcdef0123456789abcdef".to_string(),
                used.at
            )]
        );
    }

    #[test]
    fn events_are_chained_per_user_in_outbox_order_after_their_heads() {
        let (a1, b1, a2) = (event("u_a", 3), event("u_b", 1), event("u_a", 2));
        let bob_head = ChainHead {
            seq: 7,
            hash: "ab".repeat(32),
        };
        let p = plan(
            &[pending(12, &a2), pending(10, &a1), pending(11, &b1)],
            &[("u_b".into(), bob_head.clone())],
        );
        let order: Vec<_> = p
            .rows
            .iter()
            .map(|r| (r.event.id.as_str(), r.seq))
            .collect();
        // Outbox order (commit order), not event time.
        assert_eq!(order, [("ev_0003", 1), ("ev_0001", 8), ("ev_0002", 2)]);
        assert_eq!(p.rows[0].prev_hash, GENESIS_HASH);
        assert_eq!(p.rows[1].prev_hash, bob_head.hash);
        assert_eq!(p.rows[2].prev_hash, p.rows[0].hash);
        assert_eq!(p.done, [10, 11, 12]);
        assert_eq!(
            p.heads,
            [
                ("u_a".to_string(), p.rows[2].head()),
                ("u_b".to_string(), p.rows[1].head())
            ]
        );
        // What is planned verifies.
        let mut v = Verifier::new(ChainHead::genesis());
        v.push(&p.rows[0]);
        v.push(&p.rows[2]);
        assert!(v.finish(Some(&p.rows[2].head())).ok);
    }

    #[test]
    fn unreadable_rows_become_dead_letters_and_are_consumed() {
        let good = event("u_a", 1);
        let p = plan(
            &[
                PendingEvent {
                    pos: 1,
                    user_id: "u_a".into(),
                    body: "{not json".into(),
                },
                PendingEvent {
                    pos: 2,
                    user_id: "u_b".into(),
                    body: serde_json::to_string(&good).unwrap(),
                },
                pending(3, &good),
            ],
            &[],
        );
        assert_eq!(p.rows.len(), 1);
        assert_eq!(p.rows[0].seq, 1);
        assert_eq!(p.dead.len(), 2);
        assert_eq!(p.done, [1, 2, 3]);
    }
}
