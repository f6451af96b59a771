//! Waiting before trying again: exponential backoff with jitter, for everything in Pyron
//! that retries. pyron-api waits for its stores at start-up; the worker waits out a store's
//! outage and spaces a failing job's attempts; the reconciler waits for Redis.
//!
//! Each wait doubles the one before, up to a ceiling, and is then jittered ("equal
//! jitter": somewhere between half of it and all of it), so that many clients that failed
//! together do not all come back at the same instant.

use std::time::Duration;

use rand::Rng;

/// A sequence of waits: `first`, then doubling up to `max`, each jittered.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        let first = first.min(max);
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The wait before the next attempt; the one after it is twice as long, up to the
    /// ceiling.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        jitter(wait)
    }

    /// Back to the first wait, after a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// The wait before attempt `attempt + 1` after `attempt` failures (1 or more), without
    /// keeping state: `first · 2^(attempt - 1)`, capped at `max`, jittered. For a job's
    /// attempts, whose count is kept elsewhere.
    pub fn after_failures(first: Duration, max: Duration, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(20);
        jitter(first.saturating_mul(1 << doublings).min(max))
    }
}

/// "Equal jitter": somewhere between half the wait and the whole of it.
pub fn jitter(wait: Duration) -> Duration {
    let half = wait / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn within(wait: Duration, full: Duration) -> bool {
        wait >= full / 2 && wait <= full
    }

    #[test]
    fn waits_double_up_to_the_ceiling_and_reset() {
        let mut backoff = Backoff::new(100 * MS, 500 * MS);
        for full in [100, 200, 400, 500, 500] {
            let wait = backoff.next_wait();
            assert!(within(wait, full * MS), "{wait:?} for {full} ms");
        }
        backoff.reset();
        assert!(within(backoff.next_wait(), 100 * MS));
    }

    #[test]
    fn a_first_wait_above_the_ceiling_is_the_ceiling() {
        let mut backoff = Backoff::new(Duration::from_secs(10), Duration::from_secs(1));
        assert!(within(backoff.next_wait(), Duration::from_secs(1)));
    }

    #[test]
    fn waits_after_failures_follow_the_count() {
        for (attempt, full) in [(1, 500), (2, 1000), (3, 2000), (7, 30_000), (99, 30_000)] {
            let wait = Backoff::after_failures(500 * MS, 30_000 * MS, attempt);
            assert!(within(wait, full * MS), "attempt {attempt}: {wait:?}");
        }
    }

    #[test]
    fn jitter_spreads_waits_over_the_upper_half() {
        let waits: Vec<Duration> = (0..200).map(|_| jitter(1000 * MS)).collect();
        assert!(waits.iter().all(|w| within(*w, 1000 * MS)));
        let (min, max) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
        assert!(*max - *min > 250 * MS, "not spread: {min:?}..{max:?}");
    }
}
