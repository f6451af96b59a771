//! The reconciler: queues the alerts that only MongoDB took while Redis was down.
//!
//! pyron-api marks such an alert's audit record `unqueued` and wakes the reconciler, which
//! pages through those records, queues each (`Queue::requeue`, safe to repeat), and marks
//! it `queued`, or `duplicate` when its idempotency key turns out to belong to an earlier
//! alert. While Redis is still down it retries every second. It also runs once both stores
//! have first answered after start-up, for records an earlier process left behind.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::Backoff,
    queue::{Enqueued, Queue, QueueError},
    store::{Store, StoreError},
};

/// Records handled per page.
const PAGE: i64 = 100;

/// Shortest wait before sweeping again for records still in their grace.
const MIN_WAIT: Duration = Duration::from_millis(10);

/// Wait between attempts while a store is down (jittered: half of it to all of it).
const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Reconciler {
    /// A record younger than this may belong to a request still deciding its answer (and
    /// withdrawn if that answer is 503), so it is left for the next sweep.
    pub grace: Duration,
    pub queue: Queue,
    /// Not the request path's store: a sweep may scan, and has no answer to hurry for.
    pub store: Store,
    pub dedup_ttl: Duration,
    pub wake: Arc<Notify>,
    /// The stores pyron-api has reached; the reconciler waits for both.
    pub reached: watch::Receiver<crate::http::Reached>,
}

/// How long to wait after a failed sweep: about a second (a store still down), or, when
/// MongoDB did not answer within its budget, at least that budget. A wire server that
/// cannot use the `status` index for the look for unqueued records (FerretDB) scans all
/// of `audit`: a sweep begun again at once would keep it scanning, and slow every other
/// write, for as long as the records stay unqueued.
fn wait_after(err: &ReconcileError, retry: &mut Backoff) -> Duration {
    let wait = retry.next_wait();
    match err {
        ReconcileError::Store(StoreError::Timeout(budget)) => wait.max(*budget),
        _ => wait,
    }
}

impl Reconciler {
    /// Sweeps at start, then whenever woken, until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tokio::select! {
            _ = self.reached.wait_for(|r| r.redis && r.mongo) => {}
            () = shutdown.cancelled() => return,
        }
        let mut retry = Backoff::new(RETRY, RETRY);
        loop {
            match self.sweep().await {
                Ok(None) => {}
                Ok(Some(wait)) => {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue,
                        () = shutdown.cancelled() => return,
                    }
                }
                Err(err) => {
                    let wait = wait_after(&err, &mut retry);
                    tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64, "reconciler cannot queue yet; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue,
                        () = shutdown.cancelled() => return,
                    }
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Queues every unqueued alert past its grace, then marks their audit records;
    /// returns how long until the youngest one left is old enough, if any is left.
    ///
    /// All are queued before any is marked, so that the alerts flow to the worker as fast
    /// as Redis takes them; marking (an update per hundred records) comes after.
    pub async fn sweep(&self) -> Result<Option<Duration>, ReconcileError> {
        let cutoff = Utc::now() - self.grace;
        let mut after: Option<String> = None;
        let mut queued: Vec<String> = Vec::new();
        let mut duplicates: Vec<(String, String)> = Vec::new();
        let mut wait = None;
        loop {
            let mut alerts = self.store.unqueued(after.as_deref(), PAGE).await?;
            let full = alerts.len() as i64 == PAGE;
            // Oldest first (event ids are time-ordered): stop at the first too young.
            if let Some(young) = alerts.iter().position(|a| a.received_at > cutoff) {
                let left = alerts[young].received_at - cutoff;
                wait = Some(left.to_std().unwrap_or_default().max(MIN_WAIT));
                alerts.truncate(young);
            }
            let Some(last) = alerts.last() else { break };
            after = Some(last.id.to_string());
            let answers = self.queue.requeue(&alerts, self.dedup_ttl).await?;
            for (alert, answer) in alerts.iter().zip(answers) {
                match answer {
                    Enqueued::Queued { .. } | Enqueued::AlreadyQueued => {
                        queued.push(alert.id.to_string());
                    }
                    Enqueued::Duplicate { first } => {
                        duplicates.push((alert.id.to_string(), first));
                    }
                }
            }
            if wait.is_some() || !full {
                break;
            }
        }
        if queued.is_empty() && duplicates.is_empty() {
            return Ok(wait);
        }
        tracing::info!(
            queued = queued.len(),
            duplicates = duplicates.len(),
            "reconciler queued alerts that only MongoDB held"
        );
        for (id, first) in &duplicates {
            self.store.mark_duplicate(id, first).await?;
        }
        self.store.mark_queued(&queued).await?;
        tracing::info!(
            records = queued.len() + duplicates.len(),
            "reconciler marked their audit records"
        );
        Ok(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_mongodb_gave_up_on_waits_as_long_as_its_budget() {
        let mut retry = Backoff::new(RETRY, RETRY);
        let budget = Duration::from_secs(10);
        let slow = ReconcileError::Store(StoreError::Timeout(budget));
        assert!(wait_after(&slow, &mut retry) >= budget);
        let down = ReconcileError::Queue(QueueError::Timeout(Duration::from_secs(2)));
        assert!(wait_after(&down, &mut retry) <= RETRY);
        let refused = ReconcileError::Store(StoreError::Refused("no".into()));
        assert!(wait_after(&refused, &mut retry) <= RETRY);
    }
}
