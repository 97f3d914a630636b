//! The D1 binding, shared by the repositories for one invocation: statements, result
//! reading and value conversion in one place. Integers are bound as f64 (D1 rejects
//! BigInt); timestamps are Unix milliseconds.
//!
//! Rows are read by column name ([`Row`]), not through a serde `Deserialize` per row type:
//! one reader in the wasm instead of one per shape. Each row object D1 returns crosses into
//! the wasm once, as JSON text, and is read there: reading it column by column across the
//! JS boundary (a call and a string copy per column) was a third of a 500-row listing's
//! time in the benchmark's profile.

use serde::Deserialize;
use serde_json::{Map, Value};
use worker::js_sys::JSON;
use worker::wasm_bindgen::JsValue;
use worker::{D1Database, D1PreparedStatement, D1Result, Env};

use crate::domain::StoreError;
use crate::domain::Timestamp;

pub(in crate::edge) struct Db(Result<D1Database, String>);

/// A value D1 returned, handed over untouched (a row object, or one column's value).
#[derive(Deserialize)]
struct Raw(#[serde(with = "serde_wasm_bindgen::preserve")] JsValue);

/// One result row, read by column name. Each reader accepts what serde read into the
/// same Rust type: text is a string, a number a number, and an `opt_` column may also be
/// null or missing. Anything else fails the query with the message worker gave a row that
/// did not deserialise.
pub(super) struct Row(Map<String, Value>);

fn mistyped() -> StoreError {
    StoreError::Unavailable("wasm-bindgen serialization error".into())
}

/// A column value read as an optional number (`None` for null or undefined).
fn opt_number(v: &JsValue) -> Result<Option<f64>, StoreError> {
    if v.loose_eq(&JsValue::NULL) {
        return Ok(None);
    }
    v.as_f64().map(Some).ok_or_else(mistyped)
}

impl Row {
    /// A column's value; a missing column reads as null.
    fn get(&self, column: &str) -> &Value {
        self.0.get(column).unwrap_or(&Value::Null)
    }

    pub(super) fn text(&self, column: &str) -> Result<String, StoreError> {
        self.get(column)
            .as_str()
            .map(str::to_owned)
            .ok_or_else(mistyped)
    }

    pub(super) fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError> {
        match self.get(column) {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            _ => Err(mistyped()),
        }
    }

    pub(super) fn num(&self, column: &str) -> Result<f64, StoreError> {
        self.get(column).as_f64().ok_or_else(mistyped)
    }

    pub(super) fn opt_num(&self, column: &str) -> Result<Option<f64>, StoreError> {
        match self.get(column) {
            Value::Null => Ok(None),
            v => v.as_f64().map(Some).ok_or_else(mistyped),
        }
    }

    /// Its columns, for reading many of them.
    pub(super) fn columns(&self) -> Columns<'_> {
        Columns {
            row: self,
            mistyped: false,
        }
    }
}

/// A row's columns read one after another, a mistyped one remembered instead of returned
/// at once: one check at the end ([`Columns::finish`]) rather than a return, and the
/// clean-up of every column read before it, after each. The error is the same either way.
pub(super) struct Columns<'r> {
    row: &'r Row,
    mistyped: bool,
}

impl Columns<'_> {
    fn note<T: Default>(&mut self, read: Result<T, StoreError>) -> T {
        read.unwrap_or_else(|_| {
            self.mistyped = true;
            T::default()
        })
    }

    pub(super) fn text(&mut self, column: &str) -> String {
        let read = self.row.text(column);
        self.note(read)
    }

    pub(super) fn opt_text(&mut self, column: &str) -> Option<String> {
        let read = self.row.opt_text(column);
        self.note(read)
    }

    pub(super) fn num(&mut self, column: &str) -> f64 {
        let read = self.row.num(column);
        self.note(read)
    }

    pub(super) fn opt_num(&mut self, column: &str) -> Option<f64> {
        let read = self.row.opt_num(column);
        self.note(read)
    }

    /// `value`, read from the row, unless a column was mistyped.
    pub(super) fn finish<T>(self, value: T) -> Result<T, StoreError> {
        if self.mistyped {
            Err(mistyped())
        } else {
            Ok(value)
        }
    }
}

/// The rows a statement returned.
pub(super) struct Rows(Vec<Row>);

impl Rows {
    /// Every row read with `read`, all of them before any is used: the first that fails
    /// fails the query.
    pub(super) fn read<T>(
        &self,
        read: impl Fn(&Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::with_capacity(self.0.len());
        for row in &self.0 {
            out.push(read(row)?);
        }
        Ok(out)
    }
}

/// Rows as D1 returned them; each must be an object. Each crosses as its JSON text (D1's
/// values are strings, numbers and nulls: JSON carries them exactly).
fn rows(raw: Vec<Raw>) -> Result<Rows, StoreError> {
    let mut out = Vec::with_capacity(raw.len());
    for Raw(v) in raw {
        if !v.is_object() {
            return Err(mistyped());
        }
        let text = JSON::stringify(&v)
            .ok()
            .and_then(|t| t.as_string())
            .ok_or_else(mistyped)?;
        match serde_json::from_slice(text.as_bytes()) {
            Ok(Value::Object(columns)) => out.push(Row(columns)),
            _ => return Err(mistyped()),
        }
    }
    Ok(Rows(out))
}

/// A D1 error as the core sees it: a uniqueness rule that refused a write means another
/// request got there first; anything else means the database is not usable now.
pub(super) fn unavailable(e: worker::Error) -> StoreError {
    let text = e.to_string();
    if text.contains("UNIQUE constraint failed") {
        StoreError::Conflict(text)
    } else {
        StoreError::Unavailable(text)
    }
}

impl Db {
    /// The `DB` binding; a missing binding makes every query fail as unavailable.
    pub(in crate::edge) fn new(env: &Env) -> Self {
        Self(env.d1("DB").map_err(|e| format!("binding DB: {e}")))
    }

    fn database(&self) -> Result<&D1Database, StoreError> {
        self.0
            .as_ref()
            .map_err(|e| StoreError::Unavailable(e.clone()))
    }

    pub(super) fn prepare(
        &self,
        sql: &str,
        args: &[JsValue],
    ) -> Result<D1PreparedStatement, StoreError> {
        self.database()?
            .prepare(sql)
            .bind(args)
            .map_err(unavailable)
    }

    pub(super) async fn all(&self, sql: &str, args: &[JsValue]) -> Result<Rows, StoreError> {
        let raw = self
            .prepare(sql, args)?
            .all()
            .await
            .map_err(unavailable)?
            .results()
            .map_err(unavailable)?;
        rows(raw)
    }

    /// The first row, if any.
    pub(super) async fn first(
        &self,
        sql: &str,
        args: &[JsValue],
    ) -> Result<Option<Row>, StoreError> {
        let raw: Option<Raw> = self
            .prepare(sql, args)?
            .first(None)
            .await
            .map_err(unavailable)?;
        Ok(rows(raw.into_iter().collect())?.0.pop())
    }

    /// `column` of the first row, as a number (`None` if there is no row or it is null).
    pub(super) async fn first_num(
        &self,
        sql: &str,
        args: &[JsValue],
        column: &str,
    ) -> Result<Option<f64>, StoreError> {
        let raw: Option<Raw> = self
            .prepare(sql, args)?
            .first(Some(column))
            .await
            .map_err(unavailable)?;
        raw.map_or(Ok(None), |Raw(v)| opt_number(&v))
    }

    /// Runs a statement and returns how many rows it changed.
    pub(super) async fn run(&self, sql: &str, args: &[JsValue]) -> Result<u64, StoreError> {
        let result = self.prepare(sql, args)?.run().await.map_err(unavailable)?;
        Ok(result
            .meta()
            .map_err(unavailable)?
            .and_then(|m| m.changes)
            .unwrap_or(0) as u64)
    }

    /// Runs statements as one transaction: all of them or none.
    pub(super) async fn batch(
        &self,
        statements: Vec<D1PreparedStatement>,
    ) -> Result<Vec<D1Result>, StoreError> {
        self.database()?
            .batch(statements)
            .await
            .map_err(unavailable)
    }
}

/// The rows statement `i` of a batch returned (none if the batch has no such statement).
pub(super) fn rows_of(results: &[D1Result], i: usize) -> Result<Rows, StoreError> {
    match results.get(i) {
        Some(r) => rows(r.results().map_err(unavailable)?),
        None => Ok(Rows(Vec::new())),
    }
}

/// How many rows statement `i` of a batch changed (0 if the batch has no such statement).
pub(super) fn changes(results: &[D1Result], i: usize) -> u64 {
    results
        .get(i)
        .and_then(|r| r.meta().ok().flatten())
        .and_then(|m| m.changes)
        .unwrap_or(0) as u64
}

pub(super) fn text(s: &str) -> JsValue {
    JsValue::from(s)
}

pub(super) fn opt_text(s: Option<&str>) -> JsValue {
    s.map(JsValue::from).unwrap_or(JsValue::NULL)
}

pub(super) fn num(n: u64) -> JsValue {
    JsValue::from(n as f64)
}

pub(super) fn millis(t: Timestamp) -> JsValue {
    num(t.as_millis())
}

pub(super) fn json<T: serde::Serialize>(v: &T) -> JsValue {
    JsValue::from(serde_json::to_string(v).unwrap_or_else(|_| "null".into()))
}

/// The JSON text of `rows`, bound as one parameter and read with `json_each`: a statement
/// over hundreds of rows binds one value (D1 allows 100 per statement).
pub(super) fn json_rows(rows: Vec<Value>) -> JsValue {
    text(&Value::Array(rows).to_string())
}
