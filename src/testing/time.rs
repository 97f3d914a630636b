//! The clock (`domain::Clock`) and back-off jitter (`probe::Jitter`) under the tests' control.

use std::cell::{Cell, RefCell};

use async_trait::async_trait;

use crate::domain::Clock;
use crate::domain::Timestamp;
use crate::probe::Jitter;

/// A clock that only moves when the code under test sleeps (or an HTTP call takes time).
pub(crate) struct FakeClock {
    now: Cell<u64>,
    pub sleeps: RefCell<Vec<u64>>,
}

impl FakeClock {
    pub(crate) fn at(ms: u64) -> Self {
        Self {
            now: Cell::new(ms),
            sleeps: RefCell::new(Vec::new()),
        }
    }

    pub(crate) fn advance(&self, ms: u64) {
        self.now.set(self.now.get() + ms);
    }

    pub(crate) fn elapsed_since(&self, start: u64) -> u64 {
        self.now.get() - start
    }
}

#[async_trait(?Send)]
impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.now.get())
    }
    async fn sleep(&self, ms: u64) {
        self.sleeps.borrow_mut().push(ms);
        self.advance(ms);
    }
}

/// Jitter that always returns the same point of the interval.
pub(crate) struct FixedJitter(pub f64);

impl Jitter for FixedJitter {
    fn unit(&self) -> f64 {
        self.0
    }
}
