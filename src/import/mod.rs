//! Importing keys an operator already holds (a deployment's `.env`, another store's
//! export) and taking an import back.
//!
//! An import decides every entry the way adding it would (refused input, a key the user
//! already holds, the user's limit, optionally the provider's word), with the same
//! checks, seal and fingerprints, but in bulk: one read finds every duplicate and count,
//! one transaction stores every new row with its `credential.imported` event. A dry run
//! decides the same way and writes nothing, so the real run creates what it promised
//! (unless the data changed in between). A rollback removes the rows the batch created
//! that no user has changed or chosen as a default since.
//!
//! A row stored without a live check is `unverified` until one succeeds: the resolution
//! rule never prefers it over a key its user added or confirmed (nor calls an endpoint it
//! names), and the sweep's check of it counts against the live-check limits. Whether a
//! user holds a given key is never told unaudited: a dry run (which writes nothing) does
//! not name the credential that holds it, and a real run that finds it held names it and
//! writes a `credential.imported` failure (`duplicate_credential`) on that user's chain.

use std::cell::Cell;

use async_trait::async_trait;
use serde_json::json;

mod store;

pub use store::{BatchRow, BatchRows, ImportRow, ImportStore};

use crate::audit::{Action, AuditEvent, Caller, Facts, Origin};
use crate::checks::LiveChecks;
use crate::config::Config;
use crate::credentials::keys::{key_prints, master_keys, seal_for_row};
use crate::credentials::rows::{apply_accepted, check_model, fresh_id, new_row};
use crate::credentials::{NewCredential, Occupancy};
use crate::crypto::{random_bytes, Binding};
use crate::domain::{BatchId, CredentialId, CredentialStatus, ProviderId, UserId};
use crate::error::Error;
use crate::http::{HttpClient, HttpError, HttpRequest, HttpResponse};
use crate::providers::Accepted;

/// One entry of an import: a key for a user, as adding it would take it.
pub struct ImportEntry {
    pub user: UserId,
    pub credential: NewCredential,
}

/// `POST /v1/admin/import`: the entries in the order sent, each parsed or refused as it
/// was read (a refused entry is reported, the others still go ahead).
pub struct ImportCommand {
    /// Report what would happen; change nothing.
    pub dry_run: bool,
    /// Check every key live with its provider first (rate-limited like any check).
    pub validate: bool,
    /// The batch the rows go into (an earlier one to add to, or one the caller named in
    /// advance, so a request retried after a lost answer lands in the same batch);
    /// otherwise a new one.
    pub batch: Option<BatchId>,
    pub entries: Vec<Result<ImportEntry, Error>>,
}

/// Entries one import request takes at most. Sealing and fingerprinting one costs about
/// 9 µs natively (measured: 500 in 4.4 ms, release build); a few times that in wasm keeps
/// 200 inside the free plan's 10 ms of CPU per request.
pub const MAX_IMPORT_ENTRIES: usize = 200;
/// Entries one import request takes at most when each is checked live.
pub const MAX_VALIDATED_ENTRIES: usize = 25;
/// Provider calls one import request makes at most, inside the free plan's 50
/// subrequests per invocation. A check starts only while the most it can cost (its
/// provider's `check_calls`) still fits.
pub const IMPORT_CALL_BUDGET: u32 = 45;
/// Rows one rollback request removes at most; `more` says when to call again.
pub const ROLLBACK_CHUNK: u32 = 500;

/// What a stored key that was imported unchecked says until its first check.
pub const UNCHECKED_WARNING: &str =
    "Imported without a live check: the next scheduled revalidation checks it.";

/// What happened (or, in a dry run, would happen) to one entry.
#[derive(Debug)]
pub enum EntryOutcome {
    /// Stored (in a dry run: would be). The id and status are those of the new row; a dry
    /// run has no id.
    Created {
        id: Option<CredentialId>,
        key_hint: Option<String>,
        status: CredentialStatus,
        checked: bool,
    },
    /// Not stored: the user already holds this key, as `existing` (named in a real run
    /// only, where the finding is audited), or an earlier entry of this request
    /// (`same_as`) carries it.
    Skipped {
        existing: Option<CredentialId>,
        same_as: Option<usize>,
    },
    /// Not stored, for the reason the error gives.
    Rejected(Error),
}

/// One entry's line in the report: whose, which provider, and what happened.
#[derive(Debug)]
pub struct EntryReport {
    pub user: Option<UserId>,
    pub provider: Option<ProviderId>,
    pub outcome: EntryOutcome,
}

/// What an import did (or would do).
#[derive(Debug)]
pub struct ImportReport {
    /// The batch the rows went into; `None` for a dry run.
    pub batch: Option<BatchId>,
    pub dry_run: bool,
    pub validated: bool,
    /// In the order sent.
    pub entries: Vec<EntryReport>,
    /// One of the events written, for the audit chainer to be told.
    pub committed: Option<String>,
}

/// What a rollback did.
#[derive(Debug)]
pub struct RollbackReport {
    pub removed: Vec<BatchRow>,
    /// Rows of the batch their users have chosen as a default since: kept.
    pub kept: Vec<BatchRow>,
    /// More rows of the batch wait: call again.
    pub more: bool,
    pub committed: Option<String>,
}

/// The vault's HTTP client, counted: how many calls an import's checks made.
struct Counted<'a> {
    inner: &'a dyn HttpClient,
    calls: Cell<u32>,
}

#[async_trait(?Send)]
impl HttpClient for Counted<'_> {
    async fn send(&self, request: HttpRequest, timeout_ms: u64) -> Result<HttpResponse, HttpError> {
        self.calls.set(self.calls.get() + 1);
        self.inner.send(request, timeout_ms).await
    }
}

/// An entry that passed every check, ready to be sealed and stored.
struct Planned<'e> {
    index: usize,
    entry: &'e ImportEntry,
    prints: Vec<String>,
    accepted: Option<Accepted>,
}

/// Importing keys for users and taking an import back: what it needs (the settings, the
/// import store, live checks for a validating import, the time).
pub struct Imports<'a> {
    pub config: &'a Config,
    pub store: &'a dyn ImportStore,
    pub checks: LiveChecks<'a>,
}

impl Imports<'_> {
    /// Imports `command`'s entries for the operator `origin` (whose network `network` the
    /// live checks are counted against, with each entry's user).
    pub async fn import(
        &self,
        origin: &Origin,
        network: &str,
        command: ImportCommand,
    ) -> Result<ImportReport, Error> {
        let keys = master_keys(self.config)?;
        let limit = self.config.max_credentials_per_user;
        let imports = self.store;
        let ImportCommand {
            dry_run,
            validate,
            batch,
            entries,
        } = command;

        // Every duplicate and every user's count, in one read.
        let prints: Vec<Option<Vec<String>>> = entries
            .iter()
            .map(|e| {
                e.as_ref().ok().map(|e| {
                    let c = &e.credential;
                    key_prints(keys, &e.user, c.provider.info().id, &c.api_key, &c.params)
                })
            })
            .collect();
        let wanted: Vec<(UserId, Vec<String>)> = entries
            .iter()
            .zip(&prints)
            .filter_map(|(e, p)| Some((e.as_ref().ok()?.user.clone(), p.clone()?)))
            .collect();
        let mut found = if wanted.is_empty() {
            Vec::new()
        } else {
            imports.occupancies(&wanted).await?
        }
        .into_iter();

        let counted = Counted {
            inner: self.checks.http,
            calls: Cell::new(0),
        };
        let checker = Imports {
            checks: LiveChecks {
                http: &counted,
                ..self.checks
            },
            ..*self
        };
        let mut outcomes: Vec<Option<EntryOutcome>> = Vec::with_capacity(entries.len());
        let mut planned: Vec<Planned<'_>> = Vec::new();
        // Entries skipped because their user holds the key: (index, holder).
        let mut held: Vec<(usize, CredentialId)> = Vec::new();
        // The first entry of this request carrying each (user, key), and how many rows
        // each user gains. Scanned rather than hashed: a request holds a few hundred
        // entries at most, and a map per key type costs the bundle more than the scan
        // costs the CPU.
        let mut seen: Vec<(&UserId, &str, usize)> = Vec::new();
        let mut gains: Vec<(&UserId, u32)> = Vec::new();
        for (index, (entry, prints)) in entries.iter().zip(&prints).enumerate() {
            let (entry, prints) = match (entry, prints) {
                (Ok(e), Some(p)) => (e, p),
                (Err(e), _) => {
                    outcomes.push(Some(EntryOutcome::Rejected(e.clone())));
                    continue;
                }
                (Ok(_), None) => {
                    outcomes.push(Some(EntryOutcome::Rejected(Error::internal(
                        "an entry without fingerprints",
                    ))));
                    continue;
                }
            };
            let occupancy: Occupancy = found.next().unwrap_or_default();
            // Every print of one key is made under the same versions: the first stands for all.
            let print = prints.first().map(String::as_str).unwrap_or_default();
            if let Some(existing) = occupancy.duplicate {
                // Named below, in a real run, with its event.
                held.push((index, existing));
                outcomes.push(Some(EntryOutcome::Skipped {
                    existing: None,
                    same_as: None,
                }));
                continue;
            }
            if let Some((_, _, first)) = seen
                .iter()
                .find(|(u, p, _)| *u == &entry.user && *p == print)
            {
                outcomes.push(Some(EntryOutcome::Skipped {
                    existing: None,
                    same_as: Some(*first),
                }));
                continue;
            }
            let gained = gains
                .iter()
                .find(|(u, _)| *u == &entry.user)
                .map_or(0, |(_, n)| *n);
            if occupancy.count + gained >= limit {
                outcomes.push(Some(EntryOutcome::Rejected(Error::LimitReached(limit))));
                continue;
            }
            let accepted = if validate {
                let most = entry.credential.provider.info().check_calls;
                if counted.calls.get() + most > IMPORT_CALL_BUDGET {
                    outcomes.push(Some(EntryOutcome::Rejected(Error::NotChecked)));
                    continue;
                }
                match checker.check_entry(entry, origin, network).await {
                    Ok(accepted) => Some(accepted),
                    Err(e) => {
                        outcomes.push(Some(EntryOutcome::Rejected(e)));
                        continue;
                    }
                }
            } else {
                None
            };
            seen.push((&entry.user, print, index));
            match gains.iter_mut().find(|(u, _)| *u == &entry.user) {
                Some((_, n)) => *n += 1,
                None => gains.push((&entry.user, 1)),
            }
            outcomes.push(None);
            planned.push(Planned {
                index,
                entry,
                prints: prints.clone(),
                accepted,
            });
        }

        let batch = match (dry_run, batch) {
            (true, _) => None,
            (false, Some(b)) => Some(b),
            (false, None) => Some(BatchId::from_random(
                random_bytes().map_err(Error::internal)?,
            )),
        };
        let mut committed = None;
        match &batch {
            None => {
                for p in &planned {
                    outcomes[p.index] = Some(EntryOutcome::Created {
                        id: None,
                        key_hint: None,
                        status: if p.accepted.is_some() {
                            CredentialStatus::Valid
                        } else {
                            CredentialStatus::Unverified
                        },
                        checked: p.accepted.is_some(),
                    });
                }
            }
            // Recorded even when it stores nothing, so the batch id it answers with can
            // be added to and rolled back like any other.
            Some(batch) => {
                let rows = self.rows_for(batch, origin, &planned)?;
                let refused: Vec<AuditEvent> = held
                    .iter()
                    .filter_map(|(index, existing)| {
                        let e = entries[*index].as_ref().ok()?;
                        Some(held_event(
                            batch,
                            origin,
                            e,
                            existing,
                            self.checks.clock.now(),
                        ))
                    })
                    .collect();
                let stored = imports
                    .insert_batch(batch, &rows, &refused, limit, self.checks.clock.now())
                    .await?;
                for (index, existing) in held.drain(..) {
                    outcomes[index] = Some(EntryOutcome::Skipped {
                        existing: Some(existing),
                        same_as: None,
                    });
                }
                committed = rows
                    .iter()
                    .find(|r| stored.contains(&r.credential.id))
                    .map(|r| r.event.id.clone())
                    .or_else(|| refused.first().map(|e| e.id.clone()));
                // What a parallel request stored meanwhile, for the rows that lost to it.
                let lost: Vec<&ImportRow> = rows
                    .iter()
                    .filter(|r| !stored.contains(&r.credential.id))
                    .collect();
                let mut now_held = if lost.is_empty() {
                    Vec::new()
                } else {
                    let again: Vec<(UserId, Vec<String>)> = lost
                        .iter()
                        .map(|r| (r.credential.user_id.clone(), r.prints.clone()))
                        .collect();
                    imports.occupancies(&again).await?
                }
                .into_iter();
                // What lost to a key stored meanwhile is named, and audited, too.
                let mut lost_to: Vec<AuditEvent> = Vec::new();
                for (p, row) in planned.iter().zip(&rows) {
                    let c = &row.credential;
                    outcomes[p.index] = Some(if stored.contains(&c.id) {
                        EntryOutcome::Created {
                            id: Some(c.id.clone()),
                            key_hint: c.key_hint.clone(),
                            status: c.status,
                            checked: p.accepted.is_some(),
                        }
                    } else {
                        match now_held.next().and_then(|o| o.duplicate) {
                            Some(existing) => {
                                let now = self.checks.clock.now();
                                lost_to.push(held_event(batch, origin, p.entry, &existing, now));
                                EntryOutcome::Skipped {
                                    existing: Some(existing),
                                    same_as: None,
                                }
                            }
                            None => EntryOutcome::Rejected(Error::LimitReached(limit)),
                        }
                    });
                }
                if !lost_to.is_empty() {
                    imports
                        .insert_batch(batch, &[], &lost_to, limit, self.checks.clock.now())
                        .await?;
                    committed = committed.or_else(|| lost_to.first().map(|e| e.id.clone()));
                }
            }
        }

        let entries = entries
            .iter()
            .zip(outcomes)
            .map(|(entry, outcome)| EntryReport {
                user: entry.as_ref().ok().map(|e| e.user.clone()),
                provider: entry.as_ref().ok().map(|e| e.credential.provider.info().id),
                outcome: outcome.unwrap_or(EntryOutcome::Rejected(Error::internal(
                    "an entry without an outcome",
                ))),
            })
            .collect();
        Ok(ImportReport {
            batch,
            dry_run,
            validated: validate,
            entries,
            committed,
        })
    }

    /// The provider's word on an entry's key: counted against the entry's user and the
    /// operator's network like any live check (refused when either is over its limit),
    /// and asked once: a provider's back-off is reported for the entry, not waited out,
    /// so the request's provider calls stay bounded.
    async fn check_entry(
        &self,
        entry: &ImportEntry,
        origin: &Origin,
        network: &str,
    ) -> Result<Accepted, Error> {
        let caller = Caller {
            user: &entry.user,
            network,
            origin,
        };
        let c = &entry.credential;
        let info = c.provider.info();
        self.checks.count(&caller).await?;
        let prober = self.checks.prober().once();
        let accepted = self
            .checks
            .check_with(&prober, c.provider, &c.params, &c.api_key)
            .await
            .map_err(|failure| Error::Refused {
                provider: info.id,
                failure,
            })?;
        if let Some(model) = &c.model {
            check_model(c.provider, model, accepted.models.as_deref())?;
        }
        Ok(accepted)
    }

    /// The rows (sealed for their ids) and events of what an import stores.
    fn rows_for(
        &self,
        batch: &BatchId,
        origin: &Origin,
        planned: &[Planned<'_>],
    ) -> Result<Vec<ImportRow>, Error> {
        let keys = master_keys(self.config)?;
        let now = self.checks.clock.now();
        planned
            .iter()
            .map(|p| {
                let new = &p.entry.credential;
                let provider = new.provider.info().id;
                let id = fresh_id()?;
                let sealed = seal_for_row(
                    keys,
                    &Binding::new(&p.entry.user, &id, provider),
                    &new.api_key,
                    &new.params,
                )?;
                let mut credential = new_row(id, &p.entry.user, new, sealed, now);
                // No check has confirmed it (yet): see the module's doc.
                credential.status = CredentialStatus::Unverified;
                credential.warnings = vec![UNCHECKED_WARNING.to_owned()];
                credential.import_batch = Some(batch.clone());
                if let Some(accepted) = &p.accepted {
                    apply_accepted(&mut credential, accepted.clone(), now);
                }
                let mut facts = Facts::new(Action::CredentialImported);
                facts.about(&credential.id, Some(provider));
                facts.detail = Some(json!({
                    "import_batch_id": batch,
                    "checked": p.accepted.is_some(),
                }));
                let event = facts.event(origin, &credential.user_id, now, None);
                Ok(ImportRow {
                    credential,
                    prints: p.prints.clone(),
                    event,
                })
            })
            .collect()
    }

    /// Takes back what `batch` created: every row of it that no user has changed or made
    /// a default since, each with a `credential.deleted` event, up to [`ROLLBACK_CHUNK`]
    /// per call.
    pub async fn rollback(
        &self,
        origin: &Origin,
        batch: &BatchId,
    ) -> Result<RollbackReport, Error> {
        let imports = self.store;
        let mut found = imports.batch_rows(batch, ROLLBACK_CHUNK + 1).await?;
        let more = found.removable.len() > ROLLBACK_CHUNK as usize;
        found.removable.truncate(ROLLBACK_CHUNK as usize);
        let now = self.checks.clock.now();
        let doomed: Vec<(CredentialId, crate::audit::AuditEvent)> = found
            .removable
            .iter()
            .map(|row| {
                let mut facts = Facts::new(Action::CredentialDeleted);
                facts.about(&row.id, Some(row.provider));
                facts.detail = Some(json!({"import_batch_id": batch, "rolled_back": true}));
                (row.id.clone(), facts.event(origin, &row.user, now, None))
            })
            .collect();
        let removed = if doomed.is_empty() {
            Vec::new()
        } else {
            imports.remove_batch_rows(batch, &doomed).await?
        };
        let committed = doomed
            .iter()
            .find(|(id, _)| removed.contains(id))
            .map(|(_, e)| e.id.clone());
        Ok(RollbackReport {
            removed: found
                .removable
                .into_iter()
                .filter(|r| removed.contains(&r.id))
                .collect(),
            kept: found.defaults,
            more,
            committed,
        })
    }
}

/// The event an entry refused because its user holds the key writes on that user's chain:
/// an import tried this key, and `existing` holds it.
fn held_event(
    batch: &BatchId,
    origin: &Origin,
    entry: &ImportEntry,
    existing: &CredentialId,
    now: crate::domain::Timestamp,
) -> AuditEvent {
    let mut facts = Facts::new(Action::CredentialImported);
    facts.about(existing, Some(entry.credential.provider.info().id));
    facts.detail = Some(json!({"import_batch_id": batch, "skipped": "duplicate"}));
    facts.event(origin, &entry.user, now, Some("duplicate_credential"))
}
