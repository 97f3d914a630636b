//! The rate limiter (`limits::RateLimiter`), counting in memory.

use std::cell::{Cell, RefCell};

use async_trait::async_trait;

use crate::limits::{LimitScope, LimiterError, RateLimiter};

/// Counts checks per (scope, key) and allows `limit` of each.
pub(crate) struct CountingLimiter {
    pub limit: u32,
    pub seen: RefCell<std::collections::BTreeMap<(String, String), u32>>,
    pub down: Cell<bool>,
}

impl CountingLimiter {
    pub(crate) fn new(limit: u32) -> Self {
        Self {
            limit,
            seen: RefCell::default(),
            down: Cell::new(false),
        }
    }
}

#[async_trait(?Send)]
impl RateLimiter for CountingLimiter {
    async fn allow(&self, scope: LimitScope, key: &str) -> Result<bool, LimiterError> {
        if self.down.get() {
            return Err(LimiterError("test limiter is down".into()));
        }
        let mut seen = self.seen.borrow_mut();
        let n = seen
            .entry((format!("{scope:?}"), key.to_owned()))
            .or_default();
        *n += 1;
        Ok(*n <= self.limit)
    }
}
