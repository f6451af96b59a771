//! The worker loop: read a batch of jobs and have `delivery::Settler` settle it; claim what
//! dead consumers left; bring back the jobs whose retry is due; wait out outages.
//!
//! Failures come in three kinds (their handling is the settler's):
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
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use crate::{
    backoff::Backoff,
    config::Config,
    delivery::settle::{Retries, SettleError, Settler, Totals},
    queue::{Consumer, QueueError},
    startup::{wait_for, wait_for_mongo},
    systemd::Heartbeat,
};

/// First and longest wait while a store is down.
const OUTAGE_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// How often the worker writes its heartbeat to Redis, for the dashboard.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// Under load, how long a batch gathers from one read to the next. Each batch costs the
/// worker some fixed work (a read, two writes, acknowledgements); at 3,000 alerts/s a 50 ms
/// window (100 a batch) costs 22 µs of CPU per alert where 20 ms (60 a batch) cost 26,
/// for some 15 ms more lag at the median, and with batches of up to 200 (150 a batch) 19.
/// One alert at a time is still read at once.
const BATCH_WINDOW: Duration = Duration::from_millis(50);

pub struct Worker {
    consumer: Consumer,
    settler: Settler,
    /// Beats once per loop turn; the systemd watchdog is fed only while it is recent.
    pub heartbeat: Heartbeat,
    batch_size: usize,
    block: Duration,
    claim_idle: Duration,
}

impl Worker {
    /// Connects to Redis (creating the group if needed) and MongoDB, waiting for them
    /// as long as it takes.
    pub async fn connect(config: &Config) -> Self {
        let consumer = wait_for("Redis", async || {
            let consumer = Consumer::connect(
                config.redis.url.expose(),
                &config.worker.consumer,
                config.intake.store_timeout,
                config.worker.block,
            )
            .await?;
            consumer.ensure_group().await?;
            Ok::<_, QueueError>(consumer)
        })
        .await;
        let store = wait_for_mongo(config).await;
        let heartbeat = Heartbeat::default();
        heartbeat.beat();
        Worker {
            consumer,
            settler: Settler {
                store,
                max_attempts: config.worker.max_attempts,
                retry_base: config.worker.retry_base,
                claim_idle: config.worker.claim_idle,
                passphrase_field: config.intake.passphrase_field.clone(),
                routing: std::sync::Arc::new(config.routing.clone()),
                totals: Totals::default(),
            },
            heartbeat,
            batch_size: config.worker.batch_size,
            block: config.worker.block,
            claim_idle: config.worker.claim_idle,
        }
    }

    pub fn consumer(&self) -> &str {
        self.consumer.name()
    }

    /// pyron-worker's line for `systemctl status`: what it did, and the queue.
    pub async fn status_line(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let s = &self.settler.totals;
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
        // When the last read was made, and how many entries it brought.
        let mut last_read: Option<(Instant, usize)> = None;
        while !shutdown.is_cancelled() {
            self.heartbeat.beat();
            if last_beat.is_none_or(|at| at.elapsed() >= HEARTBEAT_EVERY) {
                last_beat = Some(Instant::now());
                if let Err(err) = self.consumer.stats().heartbeat(self.consumer.name()).await {
                    tracing::debug!(error = %err, "heartbeat not written");
                }
            }
            self.settler
                .totals
                .waiting
                .store(retries.waiting() as u64, Ordering::Relaxed);
            if let Err(err) = self
                .settler
                .settle_held(&self.consumer, &mut retries, false)
                .await
            {
                let wait = outage.next_wait();
                tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64, "held jobs not settled; will retry");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled() => break,
                }
                continue;
            }
            // Under load (the last read brought several entries but not a full batch),
            // the next batch gathers for a moment: MongoDB takes a few large writes
            // rather than many small ones. One entry at a time is read at once.
            if let Some((at, read)) = last_read
                && read > 1
                && read < self.batch_size
            {
                tokio::select! {
                    _ = tokio::time::sleep_until((at + BATCH_WINDOW).into()) => {}
                    () = shutdown.cancelled() => break,
                }
            }
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
                    let until = [retries.next_due(), retries.next_held_due()]
                        .into_iter()
                        .flatten()
                        .fold(next_claim, Instant::min);
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
            last_read = Some((now, read.as_ref().map_or(0, Vec::len)));
            let result = match read {
                Ok(batch) if batch.is_empty() => {
                    pending = None;
                    continue;
                }
                Ok(batch) => {
                    if pending.is_some() {
                        pending = batch.last().map(|d| d.entry.clone());
                    }
                    self.settler
                        .settle(&self.consumer, batch, &mut retries)
                        .await
                }
                Err(err) => Err(SettleError::from(err)),
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
        // Jobs held for their audit records are recorded: settle them before leaving
        // (those that cannot be stay pending, for this consumer's next start).
        if let Err(err) = self
            .settler
            .settle_held(&self.consumer, &mut retries, true)
            .await
        {
            tracing::warn!(error = %err, "held jobs left pending");
        }
        tracing::info!(consumer = self.consumer.name(), "worker stopped");
    }
}
