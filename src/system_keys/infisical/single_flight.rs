//! One fetch at a time within an isolate: the request that finds none under way takes off
//! and fetches; the others that arrive meanwhile wait for it to land, then read what it
//! brought. A cold isolate that gets many requests at once makes one login and one list.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// At most one fetch at a time; the others wait for it to land.
#[derive(Default)]
pub(super) struct Flight {
    busy: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

/// Held by the fetching request; lands the flight even if that request is dropped (its
/// waiters then serve what the cache holds).
pub(super) struct Landing<'a>(&'a Flight);

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        self.0.busy.set(false);
        for waker in self.0.waiters.take() {
            waker.wake();
        }
    }
}

impl Flight {
    /// The flight, if none is under way; it lands when the `Landing` is dropped.
    pub(super) fn take_off(&self) -> Option<Landing<'_>> {
        // Lazily: a `Landing` made and dropped would land the flight under way.
        (!self.busy.replace(true)).then(|| Landing(self))
    }

    /// Waits until no flight is under way.
    pub(super) async fn landed(&self) {
        poll_fn(|cx| {
            if self.busy.get() {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Wake};

    use super::*;

    /// A waker that records that it was woken.
    #[derive(Default)]
    struct Woken(AtomicBool);

    impl Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn one_flight_at_a_time_and_its_waiters_go_on_when_it_lands() {
        let flight = Flight::default();
        let landing = flight.take_off().expect("none under way");
        assert!(flight.take_off().is_none(), "a second flight took off");

        let woken = Arc::new(Woken::default());
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut waiting = pin!(flight.landed());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        assert!(!woken.0.load(Ordering::SeqCst));

        // Landing (here: the fetching request dropped) wakes the waiter, which goes on.
        drop(landing);
        assert!(woken.0.load(Ordering::SeqCst));
        assert!(waiting.as_mut().poll(&mut cx).is_ready());
        assert!(flight.take_off().is_some(), "the next flight may take off");
    }

    #[test]
    fn with_no_flight_under_way_nobody_waits() {
        let flight = Flight::default();
        let waker = Waker::from(Arc::new(Woken::default()));
        let mut cx = Context::from_waker(&waker);
        assert!(pin!(flight.landed()).poll(&mut cx).is_ready());
    }
}
