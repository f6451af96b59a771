//! The worker loop: read a batch of jobs, normalize each alert into a `Signal`, record the
//! outcomes in MongoDB, and only then acknowledge the entries.
//!
//! Acknowledging after the write makes processing at-least-once; the `jobs` record keyed
//! by event id makes a second delivery rewrite the same record, so every alert still ends
//! with exactly one. Failures come in three kinds:
//!
//! - MongoDB or Redis unreachable (an outage): nothing is the job's fault, so nothing is
//!   counted. The batch stays pending; the loop waits (exponential backoff with jitter,
//!   up to five seconds) and re-reads its pending entries until the stores are back.
//! - MongoDB refuses one job's write (a transient failure of that job): the job's record
//!   says `retrying` with the error and the next attempt's time, and the entry stays
//!   pending until then (backoff doubling from `PYRON_WORKER_RETRY_BASE_MS`, with jitter).
//!   After `PYRON_WORKER_MAX_ATTEMPTS` the job is dead-lettered.
//! - An alert that can never be processed (a price that is not a number, an unreadable
//!   entry) is dead-lettered at once, with its reason.
//!
//! Entries left pending by a consumer that died are claimed (`XAUTOCLAIM`) once they have
//! been idle for `PYRON_WORKER_CLAIM_IDLE_MS`.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::Backoff,
    config::Config,
    domain::AlertKind,
    ingest::{self, Alert},
    queue::{Consumer, Delivery, QueueError},
    signal::Signal,
    startup::wait_for,
    stats::Event,
    store::{Arrival, Failure, Outcome, Record, Store, StoreError},
    systemd::Heartbeat,
};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// First and longest wait while a store is down.
const OUTAGE_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// How often the worker writes its heartbeat to Redis, for the dashboard.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// Longest wait between two attempts at a failing job.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

pub struct Worker {
    consumer: Consumer,
    store: Store,
    done: Done,
    /// Beats once per loop turn; the systemd watchdog is fed only while it is recent.
    pub heartbeat: Heartbeat,
    batch_size: usize,
    block: Duration,
    max_attempts: u32,
    retry_base: Duration,
    claim_idle: Duration,
    /// The JSON field that carries the webhook secret (`PYRON_PASSPHRASE_FIELD`).
    passphrase_field: String,
}

/// What this worker has done since it started, for its status line.
#[derive(Debug, Default)]
struct Done {
    processed: AtomicU64,
    failed_attempts: AtomicU64,
    dead: AtomicU64,
    waiting: AtomicU64,
}

impl Done {
    /// Adds a settled batch's outcomes.
    fn absorb(&self, batch: &Counted) {
        for (event, n) in &batch.events {
            match event {
                Event::Processed => self.processed.fetch_add(*n, Ordering::Relaxed),
                Event::Dead => self.dead.fetch_add(*n, Ordering::Relaxed),
                _ => 0,
            };
        }
    }
}

/// What one batch did, for the status line and the activity counts.
#[derive(Default)]
struct Counted {
    events: std::collections::BTreeMap<Event, u64>,
    lags: Vec<i64>,
}

impl Counted {
    fn add(&mut self, event: Event) {
        *self.events.entry(event).or_default() += 1;
    }
}

/// Jobs that failed and wait for their next attempt, by stream entry.
#[derive(Default)]
struct Retries {
    attempts: HashMap<String, u32>,
    waiting: HashMap<String, (Delivery, Instant)>,
}

impl Retries {
    fn take_due(&mut self, now: Instant, limit: usize) -> Vec<Delivery> {
        let due: Vec<String> = self
            .waiting
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(entry, _)| entry.clone())
            .take(limit)
            .collect();
        due.iter()
            .filter_map(|entry| self.waiting.remove(entry).map(|(d, _)| d))
            .collect()
    }

    fn next_due(&self) -> Option<Instant> {
        self.waiting.values().map(|(_, at)| *at).min()
    }
}

impl Worker {
    /// Connects to Redis (creating the group if needed) and MongoDB, waiting for them
    /// as long as it takes.
    pub async fn connect(config: &Config) -> Self {
        let consumer = wait_for("Redis", async || {
            let consumer = Consumer::connect(
                config.redis_url.expose(),
                &config.worker.consumer,
                config.store_timeout,
                config.worker.block,
            )
            .await?;
            consumer.ensure_group().await?;
            Ok::<_, QueueError>(consumer)
        })
        .await;
        let store = wait_for("MongoDB", async || {
            let store = Store::connect(
                config.mongo_uri.expose(),
                &config.mongo_db,
                config.worker.write_timeout,
            )
            .await?;
            store.ping().await?;
            Ok::<_, StoreError>(store)
        })
        .await;
        let heartbeat = Heartbeat::default();
        heartbeat.beat();
        Worker {
            consumer,
            store,
            done: Done::default(),
            heartbeat,
            batch_size: config.worker.batch_size,
            block: config.worker.block,
            max_attempts: config.worker.max_attempts,
            retry_base: config.worker.retry_base,
            claim_idle: config.worker.claim_idle,
            passphrase_field: config.passphrase_field.clone(),
        }
    }

    pub fn consumer(&self) -> &str {
        self.consumer.name()
    }

    /// pyron-worker's line for `systemctl status`: what it did, and the queue.
    pub async fn status_line(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let s = &self.done;
        let queue = match self.consumer.depth().await {
            Ok((length, pending)) => format!(
                "queue: {} waiting, {pending} pending",
                length.saturating_sub(pending)
            ),
            Err(err) => format!("queue unavailable: {err}"),
        };
        format!(
            "{} processed, {} retrying, {} dead, {} failed attempts; {queue}; consumer {}",
            get(&s.processed),
            get(&s.waiting),
            get(&s.dead),
            get(&s.failed_attempts),
            self.consumer.name()
        )
    }

    /// Runs until `shutdown` is cancelled; the batch in hand is finished and acknowledged
    /// first. Jobs waiting for a retry stay pending, for this consumer's next run or for
    /// another consumer to claim.
    pub async fn run(&self, shutdown: CancellationToken) {
        // Entries given to this consumer name before and never acknowledged come first.
        let mut pending: Option<String> = Some("0".into());
        let claim_every = (self.claim_idle / 2).max(Duration::from_millis(500));
        let mut next_claim = Instant::now();
        let mut retries = Retries::default();
        let mut outage = Backoff::new(OUTAGE_BACKOFF.0, OUTAGE_BACKOFF.1);
        let mut last_beat: Option<Instant> = None;
        while !shutdown.is_cancelled() {
            self.heartbeat.beat();
            if last_beat.is_none_or(|at| at.elapsed() >= HEARTBEAT_EVERY) {
                last_beat = Some(Instant::now());
                if let Err(err) = self.consumer.stats().heartbeat(self.consumer.name()).await {
                    tracing::debug!(error = %err, "heartbeat not written");
                }
            }
            self.done
                .waiting
                .store(retries.waiting.len() as u64, Ordering::Relaxed);
            let now = Instant::now();
            let read = if let Some(after) = &pending {
                self.consumer
                    .read(self.batch_size, self.block, Some(after))
                    .await
            } else if now >= next_claim {
                next_claim = now + claim_every;
                self.consumer.claim(self.claim_idle, self.batch_size).await
            } else {
                let due = retries.take_due(now, self.batch_size);
                if due.is_empty() {
                    let until = retries.next_due().unwrap_or(next_claim).min(next_claim);
                    let block = until.saturating_duration_since(now).min(self.block);
                    if block < Duration::from_millis(1) {
                        continue;
                    }
                    let read = self.consumer.read(self.batch_size, block, None);
                    tokio::pin!(read);
                    tokio::select! {
                        read = &mut read => read,
                        // Redis may have handed this read its entries already: cutting
                        // it off would leave them pending until this consumer's next
                        // start. It ends within `block`; its batch is processed, and the
                        // loop stops at its top.
                        () = shutdown.cancelled() => read.await,
                    }
                } else {
                    Ok(due)
                }
            };
            let result = match read {
                Ok(batch) if batch.is_empty() => {
                    pending = None;
                    continue;
                }
                Ok(batch) => {
                    if pending.is_some() {
                        pending = batch.last().map(|d| d.entry.clone());
                    }
                    self.process(batch, &mut retries).await
                }
                Err(err) => Err(err.into()),
            };
            match result {
                Ok(()) => outage.reset(),
                Err(err) => {
                    let wait = outage.next_wait();
                    tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64, "batch not recorded; will retry");
                    pending = Some("0".into());
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
        }
        tracing::info!(consumer = self.consumer.name(), "worker stopped");
    }

    /// Records a batch and settles each entry: acknowledged, dead-lettered, or kept
    /// pending for a retry. `Err` when a store is unreachable: then the whole batch is
    /// read again later.
    async fn process(
        &self,
        batch: Vec<Delivery>,
        retries: &mut Retries,
    ) -> Result<(), WorkerError> {
        let processed_at = Utc::now();
        let mut records: Vec<Record> = Vec::with_capacity(batch.len());
        let mut deliveries: Vec<Delivery> = Vec::with_capacity(batch.len());
        let mut unreadable = Vec::new();
        for delivery in batch {
            if retries.waiting.contains_key(&delivery.entry) {
                continue; // its retry is scheduled; a pending re-read does not hasten it
            }
            match &delivery.alert {
                Ok(alert) => {
                    records.push(self.record(&delivery, alert.clone(), processed_at));
                    deliveries.push(delivery);
                }
                Err(reason) => unreadable.push((delivery.clone(), reason.clone())),
            }
        }
        let refused = self.write(&records).await?;

        let mut done: Vec<&str> = Vec::with_capacity(records.len());
        let mut counted = Counted::default();
        for (index, (record, delivery)) in records.iter().zip(&deliveries).enumerate() {
            if let Some((_, error)) = refused.iter().find(|(i, _)| *i == index) {
                let dead = self.failed(delivery, &record.alert, error, retries).await?;
                counted.add(if dead { Event::Dead } else { Event::Retrying });
                continue;
            }
            let attempts = retries.attempts.remove(&delivery.entry).unwrap_or(0) + 1;
            match record.outcome.as_ref().map(|o| (o, &o.result)) {
                None => done.push(&delivery.entry),
                Some((o, Err(error))) => {
                    counted.add(Event::Dead);
                    tracing::warn!(event_id = %o.id, status = "dead", error, "alert cannot be processed; moved to dead letters");
                    self.consumer.dead_letter(delivery, error, attempts).await?;
                }
                Some((o, Ok(signal))) => {
                    counted.add(Event::Processed);
                    counted
                        .lags
                        .push((o.processed_at - o.received_at).num_milliseconds());
                    tracing::info!(
                        event_id = %o.id,
                        status = "processed",
                        ticker = signal.ticker.as_deref(),
                        attempts,
                        lag_ms = (o.processed_at - o.received_at).num_milliseconds(),
                        "alert processed"
                    );
                    done.push(&delivery.entry);
                }
            }
        }
        for (delivery, reason) in &unreadable {
            counted.add(Event::Dead);
            tracing::error!(entry = %delivery.entry, reason = %reason, "unreadable stream entry moved to dead letters");
            self.consumer.dead_letter(delivery, reason, 1).await?;
        }
        // Markers go with the entries settled here; a job waiting for a retry keeps its own.
        let settled: Vec<&Alert> = records
            .iter()
            .zip(&deliveries)
            .filter(|(_, d)| !retries.waiting.contains_key(&d.entry))
            .map(|(r, _)| &r.alert)
            .collect();
        self.consumer.ack(&done, &settled).await?;
        self.done.absorb(&counted);
        let events: Vec<(Event, u64)> = counted.events.into_iter().collect();
        if let Err(err) = self.consumer.stats().count(&events, &counted.lags).await {
            tracing::debug!(error = %err, "activity not counted");
        }
        Ok(())
    }

    /// Writes a batch's `jobs` records, then the audit records pyron-api has not marked
    /// as written. The markers are read after the jobs write, which gives the api's audit
    /// writer, racing this worker for fresh alerts, the time to finish its batch.
    async fn write(&self, records: &[Record]) -> Result<Vec<(usize, String)>, WorkerError> {
        let mut refused = self.store.record_jobs(records).await?;
        let alerts: Vec<&Alert> = records.iter().map(|r| &r.alert).collect();
        let marked = match self.consumer.audited(&alerts).await {
            Ok(marked) => marked,
            Err(err) => {
                tracing::debug!(error = %err, "audit markers not read; writing every audit record");
                vec![false; records.len()]
            }
        };
        let unmarked: Vec<usize> = (0..records.len()).filter(|&i| !marked[i]).collect();
        refused.extend(self.store.record_audits(records, &unmarked).await?);
        Ok(crate::store::finish(refused))
    }

    /// A job whose write MongoDB refused: schedule its next attempt, or dead-letter it
    /// after the last (then true).
    async fn failed(
        &self,
        delivery: &Delivery,
        alert: &Alert,
        error: &str,
        retries: &mut Retries,
    ) -> Result<bool, WorkerError> {
        self.done.failed_attempts.fetch_add(1, Ordering::Relaxed);
        let attempts = retries.attempts.entry(delivery.entry.clone()).or_insert(0);
        *attempts += 1;
        let attempts = *attempts;
        let last = attempts >= self.max_attempts;
        let delay = (!last).then(|| self.retry_delay(attempts));
        let failure = Failure {
            id: alert.id,
            received_at: alert.received_at,
            entry: &delivery.entry,
            worker: self.consumer.name(),
            error,
            next_attempt_at: delay.map(|d| Utc::now() + d),
        };
        // The job's record says what happened when MongoDB lets it; Redis keeps the job
        // either way.
        if let Err(err) = self.store.record_failure(&failure).await {
            tracing::warn!(event_id = %alert.id, error = %err, "failure not recorded in jobs");
        }
        match delay {
            Some(delay) => {
                tracing::warn!(event_id = %alert.id, status = "retrying", attempts, error, retry_in_ms = delay.as_millis() as u64, "alert not recorded; will retry");
                retries.waiting.insert(
                    delivery.entry.clone(),
                    (delivery.clone(), Instant::now() + delay),
                );
                Ok(false)
            }
            None => {
                let reason = format!("gave up after {attempts} attempts: {error}");
                tracing::error!(event_id = %alert.id, status = "dead", attempts, error, "alert not recorded after the last attempt; moved to dead letters");
                self.consumer
                    .dead_letter(delivery, &reason, attempts)
                    .await?;
                retries.attempts.remove(&delivery.entry);
                Ok(true)
            }
        }
    }

    /// Exponential from the base, capped below the claim time so that no other worker
    /// takes a job that is merely waiting, with jitter so that retries spread out.
    fn retry_delay(&self, attempts: u32) -> Duration {
        let cap = MAX_RETRY_DELAY.min(self.claim_idle / 2);
        Backoff::after_failures(self.retry_base, cap, attempts)
    }

    /// What to write for one entry. The audit record is built from the job exactly as
    /// pyron-api builds it from the request (`ingest::stored_json` of the stored body),
    /// so whoever writes it, an alert has one record.
    fn record(
        &self,
        delivery: &Delivery,
        mut alert: Alert,
        processed_at: chrono::DateTime<Utc>,
    ) -> Record {
        alert.json = ingest::stored_json(alert.kind, &alert.body, &self.passphrase_field);
        if let Some(first) = &delivery.duplicate_of {
            return Record {
                alert,
                arrival: Arrival::Duplicate {
                    first: first.clone(),
                },
                outcome: None,
            };
        }
        let result = match (&alert.json, alert.kind) {
            (Some(json), _) => Signal::from_json(json).map_err(|e| e.to_string()),
            (None, AlertKind::Text) => Ok(Signal::from_text(&alert.body)),
            (None, AlertKind::Json) => Err("stored body is not JSON".to_owned()),
        };
        Record {
            outcome: Some(Outcome {
                id: alert.id,
                result,
                received_at: alert.received_at,
                processed_at,
                entry: delivery.entry.clone(),
                worker: self.consumer.name().to_owned(),
            }),
            arrival: Arrival::Queued {
                entry: Some(delivery.entry.clone()),
            },
            alert,
        }
    }
}
