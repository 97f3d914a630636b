//! The metering seam (`metering::UsageStore`) in memory: the usage table as a map from a
//! row's keys to its counters, summed and ordered as the D1 listing does.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::audit::Source;
use crate::domain::StoreError;
use crate::metering::{Kept, Metered, UsageQuery, UsageRow, UsageStore, NO_MODEL, SYSTEM_KEY};

/// A row's keys as stored: user, day, provider, credential (or `SYSTEM_KEY`), source,
/// model (or `NO_MODEL`).
pub(crate) type UsageKey = (String, String, String, String, String, String);

/// The usage table (or, when `down`, a database that refuses).
#[derive(Default)]
pub(crate) struct MemoryUsage {
    pub rows: RefCell<BTreeMap<UsageKey, UsageRow>>,
    pub down: Cell<bool>,
}

impl MemoryUsage {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.get() {
            Err(StoreError::Unavailable("test usage table is down".into()))
        } else {
            Ok(())
        }
    }
}

fn add_to(row: &mut UsageRow, more: &UsageRow) {
    row.requests += more.requests;
    row.input_tokens += more.input_tokens;
    row.output_tokens += more.output_tokens;
    row.characters += more.characters;
    row.audio_seconds += more.audio_seconds;
    row.incomplete += more.incomplete;
}

#[async_trait(?Send)]
impl UsageStore for MemoryUsage {
    async fn add(&self, call: &Metered) -> Result<(), StoreError> {
        self.check()?;
        let key = (
            call.user_id.as_str().to_owned(),
            call.day(),
            call.provider.as_str().to_owned(),
            call.credential_column().to_owned(),
            call.source.as_str().to_owned(),
            call.model_column().to_owned(),
        );
        let u = &call.usage;
        let counts = UsageRow {
            requests: 1,
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            characters: u.characters,
            audio_seconds: call.audio_seconds(),
            incomplete: call.incomplete(),
            ..Default::default()
        };
        add_to(self.rows.borrow_mut().entry(key).or_default(), &counts);
        Ok(())
    }

    async fn list(&self, q: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        self.check()?;
        let kept = Kept::by(q.group_by);
        let keep = |on: bool, v: &str| on.then(|| v.to_owned());
        let mut groups: BTreeMap<UsageKey, UsageRow> = BTreeMap::new();
        for ((user, day, provider, credential, source, model), counts) in self.rows.borrow().iter()
        {
            let wanted = (q.from.as_str()..=q.to.as_str()).contains(&day.as_str())
                && q.user.as_ref().is_none_or(|u| u.as_str() == user)
                && q.source.is_none_or(|s| s.as_str() == source);
            if !wanted {
                continue;
            }
            let row = (
                user.clone(),
                keep(kept.day, day),
                keep(kept.provider, provider),
                keep(kept.credential, credential),
                keep(kept.source, source),
                keep(kept.model, model),
            );
            // Grouped as the SQL groups: by the kept keys (a key not kept is the same in
            // every row, so the map orders as `ORDER BY` the kept ones).
            let key = (
                row.0.clone(),
                row.1.clone().unwrap_or_default(),
                row.2.clone().unwrap_or_default(),
                row.3.clone().unwrap_or_default(),
                row.4.clone().unwrap_or_default(),
                row.5.clone().unwrap_or_default(),
            );
            let sum = groups.entry(key).or_insert_with(|| UsageRow {
                user_id: row.0,
                day: row.1,
                provider: row.2,
                credential_id: row.3.filter(|c| c != SYSTEM_KEY),
                source: row.4.as_deref().and_then(Source::parse),
                model: row.5.filter(|m| m != NO_MODEL),
                ..Default::default()
            });
            add_to(sum, counts);
        }
        Ok(groups.into_values().take(q.limit as usize).collect())
    }
}
