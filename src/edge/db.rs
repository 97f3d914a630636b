//! The D1 binding, shared by the repositories for one invocation: statements, result
//! reading and value conversion in one place. Integers are bound as f64 (D1 rejects
//! BigInt); timestamps are Unix milliseconds.

use serde::de::DeserializeOwned;
use worker::wasm_bindgen::JsValue;
use worker::{D1Database, D1PreparedStatement, D1Result, Env};

use crate::domain::Timestamp;
use crate::ports::StoreError;

pub(super) struct Db(Result<D1Database, String>);

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
    pub(super) fn new(env: &Env) -> Self {
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

    pub(super) async fn all<T: DeserializeOwned>(
        &self,
        sql: &str,
        args: &[JsValue],
    ) -> Result<Vec<T>, StoreError> {
        self.prepare(sql, args)?
            .all()
            .await
            .map_err(unavailable)?
            .results()
            .map_err(unavailable)
    }

    /// The first row (or, with `column`, that column of it).
    pub(super) async fn first<T: DeserializeOwned>(
        &self,
        sql: &str,
        args: &[JsValue],
        column: Option<&str>,
    ) -> Result<Option<T>, StoreError> {
        self.prepare(sql, args)?
            .first(column)
            .await
            .map_err(unavailable)
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
pub(super) fn rows_of<T: DeserializeOwned>(
    results: &[D1Result],
    i: usize,
) -> Result<Vec<T>, StoreError> {
    match results.get(i) {
        Some(r) => r.results().map_err(unavailable),
        None => Ok(Vec::new()),
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
