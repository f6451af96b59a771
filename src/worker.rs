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
    queue::{Consumer, Delivery, Job, QueueError},
    signal::Signal,
    store::{JobStatus, Outcome, Processed, Store, StoreError},
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
            config.store_timeout,
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
        let mut records: Vec<Processed<'_>> = Vec::with_capacity(batch.len());
        let mut unreadable = Vec::new();
        for delivery in batch {
            match &delivery.job {
                Ok(job) => records.push(self.outcome(delivery, job, processed_at)),
                Err(reason) => unreadable.push((delivery, reason)),
            }
        }
        self.store.record(&records).await?;
        for record in &records {
            let o = &record.outcome;
            match o.status {
                JobStatus::Processed => tracing::info!(
                    event_id = %o.id,
                    ticker = o.signal.as_ref().and_then(|s| s.ticker.as_deref()),
                    lag_ms = (o.processed_at - o.received_at).num_milliseconds(),
                    "alert processed"
                ),
                JobStatus::Dead => tracing::warn!(
                    event_id = %o.id,
                    error = o.error.as_deref(),
                    "alert cannot be processed; moved to dead letters"
                ),
            }
        }
        for record in records
            .iter()
            .filter(|r| r.outcome.status == JobStatus::Dead)
        {
            let delivery = batch
                .iter()
                .find(|d| d.entry == record.outcome.entry)
                .expect("from batch");
            self.consumer
                .dead_letter(delivery, record.outcome.error.as_deref().unwrap_or(""))
                .await?;
        }
        for (delivery, reason) in unreadable {
            tracing::error!(entry = %delivery.entry, reason = %reason, "unreadable stream entry moved to dead letters");
            self.consumer.dead_letter(delivery, reason).await?;
        }
        let done: Vec<&str> = records
            .iter()
            .filter(|r| r.outcome.status == JobStatus::Processed)
            .map(|r| r.outcome.entry.as_str())
            .collect();
        self.consumer.ack(&done).await?;
        Ok(())
    }

    fn outcome<'a>(
        &self,
        delivery: &Delivery,
        job: &'a Job,
        processed_at: chrono::DateTime<Utc>,
    ) -> Processed<'a> {
        let (json, signal) = match job.kind {
            AlertKind::Text => (None, Ok(Signal::from_text(&job.body))),
            AlertKind::Json => match serde_json::from_str::<Value>(&job.body) {
                Ok(value) => {
                    let signal = Signal::from_json(&value).map_err(|e| e.to_string());
                    (Some(value), signal)
                }
                Err(e) => (None, Err(format!("stored body is not JSON: {e}"))),
            },
        };
        let (status, signal, error) = match signal {
            Ok(signal) => (JobStatus::Processed, Some(signal), None),
            Err(error) => (JobStatus::Dead, None, Some(error)),
        };
        Processed {
            outcome: Outcome {
                id: job.id,
                status,
                signal,
                error,
                received_at: job.received_at,
                processed_at,
                entry: delivery.entry.clone(),
                worker: self.consumer.name().to_owned(),
            },
            job,
            json,
        }
    }
}
