//! The worker loop: read a batch of jobs, normalize each alert into a `Signal`, record the
//! outcomes in MongoDB, and only then acknowledge the entries.
//!
//! Acknowledging after the write makes processing at-least-once; the `jobs` upsert keyed by
//! event id makes a second delivery rewrite the same record, so every alert still ends
//! with exactly one. A failed write leaves the batch pending: the loop waits, re-reads its
//! pending entries, and tries again. An alert that can never be processed goes to the
//! dead-letter stream with its reason.

use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use tokio::sync::watch;

use crate::{
    config::Config,
    domain::AlertKind,
    ingest::Alert,
    queue::{Consumer, Delivery, QueueError},
    signal::Signal,
    store::{Outcome, Processed, Store, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Longest wait between attempts while a store is down.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct Worker {
    consumer: Consumer,
    store: Store,
    batch_size: usize,
    block: Duration,
}

impl Worker {
    pub async fn connect(config: &Config) -> Result<Self, WorkerError> {
        let consumer = Consumer::connect(
            config.redis_url.expose(),
            &config.worker.consumer,
            config.store_timeout,
            config.worker.block,
        )
        .await?;
        consumer.ensure_group().await?;
        let store = Store::connect(
            config.mongo_uri.expose(),
            &config.mongo_db,
            config.worker.write_timeout,
        )
        .await?;
        store.ping().await?;
        Ok(Worker {
            consumer,
            store,
            batch_size: config.worker.batch_size,
            block: config.worker.block,
        })
    }

    /// Runs until `shutdown` turns true; the batch in hand is finished and acknowledged
    /// first.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let mut pending = true;
        let mut backoff = Duration::from_millis(100);
        while !*shutdown.borrow() {
            let read = tokio::select! {
                read = self.consumer.read(self.batch_size, self.block, pending) => read,
                _ = shutdown.changed() => break,
            };
            let result = match read {
                Ok(batch) if batch.is_empty() => {
                    pending = false;
                    continue;
                }
                Ok(batch) => self.process(&batch).await,
                Err(err) => Err(err.into()),
            };
            match result {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(err) => {
                    tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "batch not recorded; will retry");
                    pending = true;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => break,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        tracing::info!(consumer = self.consumer.name(), "worker stopped");
    }

    async fn process(&self, batch: &[Delivery]) -> Result<(), WorkerError> {
        let processed_at = Utc::now();
        let mut records: Vec<Processed> = Vec::with_capacity(batch.len());
        let mut unreadable = Vec::new();
        for delivery in batch {
            match &delivery.alert {
                Ok(alert) => records.push(self.outcome(delivery, alert.clone(), processed_at)),
                Err(reason) => unreadable.push((delivery, reason)),
            }
        }
        self.store.record(&records).await?;

        let mut done: Vec<&str> = Vec::with_capacity(records.len());
        for (record, delivery) in records.iter().zip(batch.iter().filter(|d| d.alert.is_ok())) {
            let o = &record.outcome;
            match &o.result {
                Err(error) => {
                    tracing::warn!(event_id = %o.id, error, "alert cannot be processed; moved to dead letters");
                    self.consumer.dead_letter(delivery, error).await?;
                }
                Ok(signal) => {
                    tracing::info!(
                        event_id = %o.id,
                        ticker = signal.ticker.as_deref(),
                        lag_ms = (o.processed_at - o.received_at).num_milliseconds(),
                        "alert processed"
                    );
                    done.push(&delivery.entry);
                }
            }
        }
        for (delivery, reason) in unreadable {
            tracing::error!(entry = %delivery.entry, reason = %reason, "unreadable stream entry moved to dead letters");
            self.consumer.dead_letter(delivery, reason).await?;
        }
        self.consumer.ack(&done).await?;
        Ok(())
    }

    fn outcome(
        &self,
        delivery: &Delivery,
        mut alert: Alert,
        processed_at: chrono::DateTime<Utc>,
    ) -> Processed {
        let result = match alert.kind {
            AlertKind::Text => Ok(Signal::from_text(&alert.body)),
            AlertKind::Json => match serde_json::from_str::<Value>(&alert.body) {
                Ok(value) => {
                    let signal = Signal::from_json(&value).map_err(|e| e.to_string());
                    alert.json = Some(value);
                    signal
                }
                Err(e) => Err(format!("stored body is not JSON: {e}")),
            },
        };
        Processed {
            outcome: Outcome {
                id: alert.id,
                result,
                received_at: alert.received_at,
                processed_at,
                entry: delivery.entry.clone(),
                worker: self.consumer.name().to_owned(),
            },
            alert,
        }
    }
}
