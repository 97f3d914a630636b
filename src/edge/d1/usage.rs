//! The usage repository over D1 (the `usage` table): the only place that knows its SQL.
//! A call is counted with one statement, an upsert whose counters add to what the row
//! holds, so concurrent calls never lose a count (no read before the write).

use async_trait::async_trait;
use worker::wasm_bindgen::JsValue;

use crate::audit::Source;
use crate::domain::StoreError;
use crate::metering::{Kept, Metered, UsageQuery, UsageRow, UsageStore, NO_MODEL, SYSTEM_KEY};

use super::db::{num, text, Db};

pub(in crate::edge) struct D1Usage<'a> {
    db: &'a Db,
}

impl<'a> D1Usage<'a> {
    pub(in crate::edge) fn new(db: &'a Db) -> Self {
        Self { db }
    }
}

/// One call counted: its row is created at zero or added to, in one statement. (The
/// end-to-end test `tests/e2e/usage_store.test.mjs` runs this very text, read from this
/// file, in parallel on the local D1: keep it one string literal named `ADD`.)
const ADD: &str = "INSERT INTO usage (user_id, day, provider, credential_id, source, model, requests, input_tokens, output_tokens, characters, audio_seconds, incomplete) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?8, ?9, ?10, ?11) \
     ON CONFLICT (user_id, day, provider, credential_id, source, model) DO UPDATE SET \
     requests = requests + excluded.requests, \
     input_tokens = input_tokens + excluded.input_tokens, \
     output_tokens = output_tokens + excluded.output_tokens, \
     characters = characters + excluded.characters, \
     audio_seconds = audio_seconds + excluded.audio_seconds, \
     incomplete = incomplete + excluded.incomplete";

/// The listing's statement for `kept` keys, over every user or one (`?3`), every source or
/// one (`?4`): a key not kept reads as null and is summed over.
fn list_sql(kept: Kept, one_user: bool, one_source: bool) -> String {
    let keys = [
        ("day", kept.day),
        ("provider", kept.provider),
        ("credential_id", kept.credential),
        ("source", kept.source),
        ("model", kept.model),
    ];
    let mut columns = vec!["user_id".to_owned()];
    let mut group = vec!["user_id"];
    for (key, keep) in keys {
        if keep {
            columns.push(key.to_owned());
            group.push(key);
        } else {
            columns.push(format!("NULL AS {key}"));
        }
    }
    // Every parameter appears in the text (D1 wants as many as are bound); one not used
    // for a filter is null, a constant condition the planner drops.
    let filter = format!(
        "day >= ?1 AND day <= ?2 AND {} AND {}",
        if one_user {
            "user_id = ?3"
        } else {
            "?3 IS NULL"
        },
        if one_source {
            "source = ?4"
        } else {
            "?4 IS NULL"
        },
    );
    let group = group.join(", ");
    format!(
        "SELECT {}, SUM(requests) AS requests, SUM(input_tokens) AS input_tokens, \
         SUM(output_tokens) AS output_tokens, SUM(characters) AS characters, \
         SUM(audio_seconds) AS audio_seconds, SUM(incomplete) AS incomplete \
         FROM usage WHERE {filter} GROUP BY {group} ORDER BY {group} LIMIT ?5",
        columns.join(", ")
    )
}

/// A stored key column as the listing gives it: the system key's credential and an
/// unknown model are no value.
fn value(column: Option<String>, none: &str) -> Option<String> {
    column.filter(|v| v != none)
}

#[async_trait(?Send)]
impl UsageStore for D1Usage<'_> {
    async fn add(&self, call: &Metered) -> Result<(), StoreError> {
        let u = &call.usage;
        self.db
            .run(
                ADD,
                &[
                    text(call.user_id.as_str()),
                    text(&call.day()),
                    text(call.provider.as_str()),
                    text(call.credential_column()),
                    text(call.source.as_str()),
                    text(call.model_column()),
                    num(u.input_tokens),
                    num(u.output_tokens),
                    num(u.characters),
                    JsValue::from(call.audio_seconds()),
                    num(call.incomplete()),
                ],
            )
            .await
            .map(|_| ())
    }

    async fn list(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let kept = Kept::by(query.group_by);
        let sql = list_sql(kept, query.user.is_some(), query.source.is_some());
        let args = [
            text(&query.from),
            text(&query.to),
            query
                .user
                .as_ref()
                .map_or(JsValue::NULL, |u| text(u.as_str())),
            query.source.map_or(JsValue::NULL, |s| text(s.as_str())),
            num(u64::from(query.limit)),
        ];
        self.db.all(&sql, &args).await?.read(|r| {
            let mut c = r.columns();
            let source = c.opt_text("source");
            let row = UsageRow {
                user_id: c.text("user_id"),
                day: c.opt_text("day"),
                provider: c.opt_text("provider"),
                credential_id: value(c.opt_text("credential_id"), SYSTEM_KEY),
                source: source.as_deref().and_then(Source::parse),
                model: value(c.opt_text("model"), NO_MODEL),
                requests: c.num("requests") as u64,
                input_tokens: c.num("input_tokens") as u64,
                output_tokens: c.num("output_tokens") as u64,
                characters: c.num("characters") as u64,
                audio_seconds: c.num("audio_seconds"),
                incomplete: c.num("incomplete") as u64,
            };
            c.finish(row)
        })
    }
}
