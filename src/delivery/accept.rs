//! pyron-api's side of the protocol: `Acceptor::accept` takes an alert that passed
//! `ingest` and answers with a receipt once one store holds it, or `Unavailable`.

use std::{
    task::Poll,
    time::{Duration, Instant},
};

use tokio_util::task::TaskTracker;

use crate::{
    audit::{AuditWriter, KeptWriter},
    domain::EventId,
    http::Breaker,
    ingest::Alert,
    queue::{Enqueued, Queue},
    reconcile::{Enqueuing, Handoff},
    store::{Arrival, Store},
};

/// How an accepted alert is held: what the 202 says, and what the counters count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    /// In the stream.
    Queued { id: EventId },
    /// A repeat of `first` under the same idempotency key.
    Duplicate { id: EventId, first: String },
    /// Redis could not take it: MongoDB alone keeps it until the reconciler queues it.
    /// (Answered `queued`: it will be; it may turn out a duplicate then.)
    KeptInMongo { id: EventId },
}

impl Receipt {
    pub fn id(&self) -> EventId {
        match self {
            Receipt::Queued { id }
            | Receipt::Duplicate { id, .. }
            | Receipt::KeptInMongo { id } => *id,
        }
    }
}

/// Neither store took the alert within the budget: nothing of it is kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("neither Redis nor MongoDB could take the alert; it was not accepted, send it again")]
pub struct Unavailable;

/// Everything acknowledging an alert needs.
pub struct Acceptor {
    pub queue: Queue,
    /// MongoDB for the request path: bounded by half the budget.
    pub store: Store,
    /// MongoDB for writes no answer waits on (withdrawals).
    pub background_store: Store,
    /// How long storing one alert may take, Redis and MongoDB together.
    pub budget: Duration,
    pub dedup_ttl: Duration,
    /// Open after Redis failed an alert: those that follow for a moment go to MongoDB
    /// directly instead of each waiting for Redis to fail again.
    pub breaker: Breaker,
    /// Hands the reconciler each alert kept in MongoDB alone, to queue once Redis is back.
    pub reconcile: Handoff,
    /// Writes that outlive their request; shutdown waits for them.
    pub tasks: TaskTracker,
    /// Writes queued alerts' audit records in batches.
    pub audit: AuditWriter,
    /// Writes kept alerts' audit records in batches, each request waiting for its own.
    pub kept: KeptWriter,
}

impl Acceptor {
    /// Makes the alert durable in one store, or says it could not, within the budget.
    pub async fn accept(&self, alert: Alert) -> Result<Receipt, Unavailable> {
        let deadline = Instant::now() + self.budget;
        self.reconcile.arrived();
        if self.breaker.is_open() {
            return self.keep_in_mongo(alert, deadline, None).await;
        }
        // Alerts take their turn for the stream in the order they came: one that waits
        // (below) is not overtaken by one that arrives as the wait ends.
        let turn = self.reconcile.turn().await;
        if self.breaker.is_open() {
            drop(turn);
            return self.keep_in_mongo(alert, deadline, None).await;
        }
        // An older alert kept in MongoDB alone is not in the stream yet: this one may not
        // get there first. The reconciler queues it at once when Redis takes it; if it
        // cannot, Redis is still out, and this one follows it into MongoDB.
        if self.reconcile.owes()
            && !self
                .reconcile
                .drained((Instant::now() + self.budget / 4).into())
                .await
        {
            if self.breaker.trip() {
                tracing::warn!(
                    skip_ms = self.breaker.window.as_millis() as u64,
                    "alerts kept in MongoDB are not queued yet; alerts go to MongoDB alone until they are"
                );
            }
            // The breaker is open: the alerts of later turns follow this one into MongoDB.
            drop(turn);
            return self.keep_in_mongo(alert, deadline, None).await;
        }
        // The turn ends once the job is in the pipeline's queue, at the enqueue's first
        // step: the jobs of later turns follow it there, and so into the stream.
        let enqueuing = self.reconcile.enqueuing();
        let enqueued = {
            let mut enqueue = std::pin::pin!(self.queue.enqueue(&alert, self.dedup_ttl));
            let first = std::future::poll_fn(|cx| Poll::Ready(enqueue.as_mut().poll(cx))).await;
            drop(turn);
            match first {
                Poll::Ready(enqueued) => enqueued,
                Poll::Pending => enqueue.await,
            }
        };
        let arrival = match enqueued {
            Ok(Enqueued::Queued { entry }) => Arrival::Queued { entry: Some(entry) },
            Ok(Enqueued::AlreadyQueued) => Arrival::Queued { entry: None },
            Ok(Enqueued::Duplicate { first }) => Arrival::Duplicate { first },
            Err(err) => {
                if self.breaker.trip() {
                    tracing::warn!(
                        error = %err,
                        skip_ms = self.breaker.window.as_millis() as u64,
                        "queue unavailable; alerts go to MongoDB alone until it answers again"
                    );
                }
                return self.keep_in_mongo(alert, deadline, Some(enqueuing)).await;
            }
        };
        drop(enqueuing);
        let receipt = match &arrival {
            Arrival::Duplicate { first } => Receipt::Duplicate {
                id: alert.id,
                first: first.clone(),
            },
            _ => Receipt::Queued { id: alert.id },
        };
        tracing::debug!(
            target: crate::telemetry::ALERTS,
            event_id = %alert.id,
            kind = alert.kind.as_str(),
            status = arrival.status(),
            sender = alert.sender.as_deref(),
            "alert accepted"
        );
        // The job is durable in Redis and carries the whole alert: the answer need not
        // wait for MongoDB. Should the writer be full or its write fail, the worker writes
        // the record from the job.
        if !self.audit.offer(alert, arrival) {
            tracing::debug!("audit writer full; the worker writes this audit record");
        }
        Ok(receipt)
    }

    /// Redis could not take the alert: MongoDB alone keeps it, marked `unqueued`, and the
    /// reconciler queues it once Redis is back. Neither store: `Unavailable` before
    /// `deadline`.
    /// `enqueuing` (the alert's job, which Redis did not take) ends once it is owed.
    async fn keep_in_mongo(
        &self,
        alert: Alert,
        deadline: Instant,
        enqueuing: Option<Enqueuing>,
    ) -> Result<Receipt, Unavailable> {
        let id = alert.id;
        // Owed to the stream from now on; for the reconciler, should the write succeed in
        // time (dropped on any other way out).
        let keeping = self.reconcile.keeping();
        drop(enqueuing);
        let kept = alert.clone();
        // Once begun, the write runs to its end even if the answer cannot wait for it, so
        // that it is never cut off half-way; if it lands after a 503, it is withdrawn
        // (below). One not begun by the deadline is not begun at all.
        let mut write = self.kept.write(alert, deadline.into());
        match tokio::time::timeout_at(deadline.into(), &mut write).await {
            Ok(Ok(Ok(()))) => {
                keeping.hand(kept);
                // The outage is logged once per breaker window, and the reconciler logs
                // how many it queued: a line per alert would be thousands a second.
                tracing::debug!(target: crate::telemetry::ALERTS, event_id = %id, status = "unqueued", "alert accepted; it waits in MongoDB for the queue");
                Ok(Receipt::KeptInMongo { id })
            }
            Ok(Ok(Err(err))) => {
                tracing::error!(event_id = %id, error = %err, "alert not accepted: no store took it");
                Err(Unavailable)
            }
            Ok(Err(_)) => {
                tracing::error!(event_id = %id, "alert not accepted: the audit writer stopped");
                Err(Unavailable)
            }
            Err(_) => {
                // Still in flight. The sender was told the alert was not taken, so should
                // the write land, it is withdrawn; it is not handed to the reconciler, whose
                // sweeps leave records alone until they are older than any request's budget.
                let store = self.background_store.clone();
                self.tasks.spawn(async move {
                    if let Ok(Ok(())) = write.await {
                        match store.withdraw_unqueued(&id.to_string()).await {
                            Ok(true) => tracing::warn!(event_id = %id, "audit record written after its 503; withdrawn"),
                            Ok(false) => tracing::warn!(event_id = %id, "audit record written after its 503 was queued already; the alert will be processed"),
                            Err(err) => tracing::error!(event_id = %id, error = %err, "audit record written after its 503 could not be withdrawn; the alert will be processed"),
                        }
                    }
                });
                tracing::error!(event_id = %id, "alert not accepted: MongoDB did not answer in time");
                Err(Unavailable)
            }
        }
    }
}
