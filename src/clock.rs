//! An instant that tasks share without a lock: pyron-api's circuit breaker keeps when it
//! closes again, its hand-off when the last alert arrived, both read on every request.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// An instant to the millisecond, stored as the time since the value was made (which it
/// holds at first).
#[derive(Debug)]
pub struct SharedInstant {
    base: Instant,
    since_base_ms: AtomicU64,
}

impl SharedInstant {
    pub fn new() -> SharedInstant {
        SharedInstant {
            base: Instant::now(),
            since_base_ms: AtomicU64::new(0),
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_millis() as u64
    }

    pub fn get(&self) -> Instant {
        self.base + Duration::from_millis(self.since_base_ms.load(Ordering::Relaxed))
    }

    pub fn set(&self, at: Instant) {
        self.since_base_ms.store(self.ms(at), Ordering::Relaxed);
    }

    /// Sets it, returning what it was.
    pub fn replace(&self, at: Instant) -> Instant {
        let before = self.since_base_ms.swap(self.ms(at), Ordering::Relaxed);
        self.base + Duration::from_millis(before)
    }
}

impl Default for SharedInstant {
    fn default() -> Self {
        SharedInstant::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_holds_the_instant_set_to_the_millisecond() {
        let shared = SharedInstant::new();
        let start = shared.get();
        assert!(start <= Instant::now(), "it starts at its making");
        let later = Instant::now() + Duration::from_millis(1_500);
        shared.set(later);
        let got = shared.get();
        assert!(got <= later && later - got < Duration::from_millis(1));
        let before = shared.replace(start);
        assert_eq!(before, got);
        assert_eq!(shared.get(), start);
        // Before its making it cannot go: it holds its start.
        shared.set(start - Duration::from_secs(1));
        assert_eq!(shared.get(), start);
    }
}
