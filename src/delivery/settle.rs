//! pyron-worker's side of the protocol: `Settler::settle` takes a batch read from the
//! stream and leaves every entry settled, or the whole batch pending.
//!
//! Each entry's alert is normalized into a `Signal` (or the reason it never can be). The
//! deliveries its routes ask for are queued first (`forward`: they rest on the job, not
//! on the record, and MongoDB's write is the slowest step of a batch), then the batch's
//! `jobs` records are written, then the audit records pyron-api did not mark as
//! written, and only then are the entries acknowledged and their markers cleared. A job
//! that arrived less than `AUDIT_GRACE` ago is held instead (its `jobs` record written,
//! its deliveries queued), its marker not even read: the api's writer gathers records for
//! a moment before each insert under load, and would otherwise race the worker to write
//! the same record. Once the grace is over, the worker reads the held jobs' markers,
//! writes what is still unmarked and acknowledges the held entries (`settle_held`).
//! Acknowledging after the writes makes processing at-least-once; the `jobs` record keyed
//! by event id makes a second delivery rewrite the same record.
//!
//! A store that cannot be reached fails the whole batch (`Err`): nothing is the jobs'
//! fault, and the worker reads them again once it is back. MongoDB refusing one job's
//! record makes that job `retrying` until its attempts run out, then `dead`; an alert that
//! can never be processed is `dead` at once. Dead jobs move to `webhook-jobs:dead`.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use chrono::Utc;

use crate::{
    backoff::Backoff,
    domain::AlertKind,
    ingest::{self, Alert},
    queue::{Consumer, Delivery, QueueError},
    signal::Signal,
    stats::Tallied,
    store::{Arrival, Failure, Outcome, Record, Store, StoreError, Verdicts},
};

/// A store could not be reached: the batch stays pending.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Longest wait between two attempts at a failing job.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// How long after its arrival a job's audit record is left to pyron-api: its writer's
/// gathering window, and time for the insert. A job younger than this that would be
/// settled is held (not acknowledged) until it is this old.
pub const AUDIT_GRACE: Duration = Duration::from_millis(250);

/// How a worker settles batches.
pub struct Settler {
    pub store: Store,
    pub max_attempts: u32,
    pub retry_base: Duration,
    /// After this long unacknowledged, another worker may claim an entry: a retry is
    /// never scheduled later than half of it.
    pub claim_idle: Duration,
    /// The JSON field that carries the webhook secret (`PYRON_PASSPHRASE_FIELD`).
    pub passphrase_field: String,
    /// Where processed alerts are delivered: their deliveries are queued before their
    /// jobs are acknowledged.
    pub routing: std::sync::Arc<crate::route::Routing>,
    pub totals: Totals,
}

/// What this worker has settled since it started, for its status line.
#[derive(Debug, Default)]
pub struct Totals {
    pub processed: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub dead: AtomicU64,
    pub waiting: AtomicU64,
}

impl Totals {
    /// Adds a settled batch's outcomes.
    fn absorb(&self, batch: &BatchCounts) {
        for (event, n) in &batch.events {
            match event {
                Tallied::Processed => self.processed.fetch_add(*n, Ordering::Relaxed),
                Tallied::Dead => self.dead.fetch_add(*n, Ordering::Relaxed),
                _ => 0,
            };
        }
    }
}

/// What one batch did, for the status line and the activity counts.
#[derive(Default)]
struct BatchCounts {
    events: std::collections::BTreeMap<Tallied, u64>,
    lags: Vec<i64>,
}

impl BatchCounts {
    fn add(&mut self, event: Tallied) {
        *self.events.entry(event).or_default() += 1;
    }
}

/// Jobs the worker holds between batches, by stream entry: those that failed and wait
/// for their next attempt, and those whose audit record pyron-api may still be writing.
#[derive(Default)]
pub struct Retries {
    attempts: HashMap<String, u32>,
    waiting: HashMap<String, (Delivery, Instant)>,
    held: HashMap<String, Held>,
}

/// A recorded job, not yet acknowledged: its audit record is not marked written yet.
struct Held {
    delivery: Delivery,
    record: Record,
    /// When its grace is over.
    due: Instant,
}

/// What a delivery holds in place of the alert its record took.
const TAKEN: &str = "the alert is in its record";

impl Retries {
    /// How many jobs wait for a retry.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Whether the entry is in hand already: waiting for a retry, or held.
    fn in_hand(&self, entry: &str) -> bool {
        self.waiting.contains_key(entry) || self.held.contains_key(entry)
    }

    /// Holds a recorded job until `due`.
    fn hold(&mut self, delivery: Delivery, record: Record, due: Instant) {
        let entry = delivery.entry.clone();
        self.held.insert(
            entry,
            Held {
                delivery,
                record,
                due,
            },
        );
    }

    /// When the first held job's grace is over.
    pub fn next_held_due(&self) -> Option<Instant> {
        self.held.values().map(|h| h.due).min()
    }

    pub fn take_due(&mut self, now: Instant, limit: usize) -> Vec<Delivery> {
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

    pub fn next_due(&self) -> Option<Instant> {
        self.waiting.values().map(|(_, at)| *at).min()
    }
}

impl Settler {
    /// Records a batch and settles each entry: acknowledged, dead-lettered, or kept
    /// pending for a retry. `Err` when a store is unreachable: then the whole batch is
    /// read again later.
    pub async fn settle(
        &self,
        consumer: &Consumer,
        batch: Vec<Delivery>,
        retries: &mut Retries,
    ) -> Result<(), SettleError> {
        let processed_at = Utc::now();
        let mut records: Vec<Record> = Vec::with_capacity(batch.len());
        let mut deliveries: Vec<Delivery> = Vec::with_capacity(batch.len());
        let mut unreadable = Vec::new();
        for mut delivery in batch {
            if retries.in_hand(&delivery.entry) {
                continue; // its retry is scheduled, or it is held: a re-read does not hasten it
            }
            // The alert moves to its record; a retry puts it back (`failed`).
            match std::mem::replace(&mut delivery.alert, Err(TAKEN.to_owned())) {
                Ok(alert) => {
                    records.push(self.record(consumer, &delivery, alert, processed_at));
                    deliveries.push(delivery);
                }
                Err(reason) => {
                    delivery.alert = Err(reason.clone());
                    unreadable.push((delivery, reason));
                }
            }
        }
        // Deliveries go out before the records are written: they rest on the job, which
        // Redis keeps until the batch is acknowledged, not on the record, and MongoDB's
        // write is the slowest step of a batch. Queued once each, so a batch read again
        // after a failure queues none twice.
        let fan_out: Vec<crate::forward::Queued> = records
            .iter()
            .filter_map(|record| match &record.outcome {
                Some(Outcome {
                    result: Ok(signal), ..
                }) => Some(crate::forward::Job::queue(
                    &record.alert,
                    signal,
                    &self.routing.matches(&record.alert.source, signal),
                )),
                _ => None,
            })
            .flatten()
            .collect();
        consumer.fan_out(&fan_out).await?;
        let (verdicts, held_until) = self.write(consumer, &records).await?;

        let mut done: Vec<&str> = Vec::with_capacity(records.len());
        let mut counted = BatchCounts::default();
        for (((record, delivery), refused), until) in records
            .iter()
            .zip(&deliveries)
            .zip(&verdicts)
            .zip(&held_until)
        {
            let held = until.is_some();
            if let Some(error) = refused {
                let dead = self
                    .failed(consumer, delivery, &record.alert, error, retries)
                    .await?;
                counted.add(if dead {
                    Tallied::Dead
                } else {
                    Tallied::Retrying
                });
                continue;
            }
            let attempts = retries.attempts.remove(&delivery.entry).unwrap_or(0) + 1;
            match record.outcome.as_ref().map(|o| (o, &o.result)) {
                None if held => {}
                None => done.push(&delivery.entry),
                Some((o, Err(error))) => {
                    counted.add(Tallied::Dead);
                    tracing::warn!(event_id = %o.id, status = "dead", error, "alert cannot be processed; moved to dead letters");
                    consumer
                        .dead_letter(&delivery.with_alert(&record.alert), error, attempts)
                        .await?;
                }
                Some((o, Ok(signal))) => {
                    counted.add(Tallied::Processed);
                    counted
                        .lags
                        .push((o.processed_at - o.received_at).num_milliseconds());
                    tracing::debug!(
                        target: crate::telemetry::ALERTS,
                        event_id = %o.id,
                        status = "processed",
                        ticker = signal.ticker.as_deref(),
                        attempts,
                        lag_ms = (o.processed_at - o.received_at).num_milliseconds(),
                        "alert processed"
                    );
                    if !held {
                        done.push(&delivery.entry);
                    }
                }
            }
        }
        for (delivery, reason) in &unreadable {
            counted.add(Tallied::Dead);
            tracing::error!(entry = %delivery.entry, reason = %reason, "unreadable stream entry moved to dead letters");
            consumer.dead_letter(delivery, reason, 1).await?;
        }
        // Markers go with the entries settled here; a job waiting for a retry, or held,
        // keeps its own.
        let settled: Vec<&Alert> = records
            .iter()
            .zip(&deliveries)
            .zip(&held_until)
            .filter(|((_, d), until)| until.is_none() && !retries.waiting.contains_key(&d.entry))
            .map(|((r, _), _)| &r.alert)
            .collect();
        consumer.ack(&done, &settled).await?;
        for ((record, delivery), due) in records.into_iter().zip(deliveries).zip(held_until) {
            if let Some(due) = due {
                retries.hold(delivery, record, due);
            }
        }
        self.totals.absorb(&counted);
        let events: Vec<(Tallied, u64)> = counted.events.into_iter().collect();
        if let Err(err) = consumer.stats().count(&events, &counted.lags).await {
            tracing::debug!(error = %err, "activity not counted");
        }
        Ok(())
    }

    /// Writes a batch's `jobs` records, then the audit records pyron-api has not marked
    /// as written, except those of jobs younger than `AUDIT_GRACE` that would be settled
    /// now (processed, or duplicates): the api's writer may be gathering them still, so
    /// they are held without asking (their markers are read when the grace is over).
    /// Answers the verdicts, and for each record so young (to be held) when its grace is
    /// over.
    async fn write(
        &self,
        consumer: &Consumer,
        records: &[Record],
    ) -> Result<(Verdicts, Vec<Option<Instant>>), SettleError> {
        let jobs = self.store.record_jobs(records).await?;
        let (now, clock) = (Utc::now(), Instant::now());
        let held_until: Vec<Option<Instant>> = records
            .iter()
            .zip(&jobs)
            .map(|(record, refused)| {
                let holdable =
                    refused.is_none() && record.outcome.as_ref().is_none_or(|o| o.result.is_ok());
                let age = (now - record.alert.received_at).to_std().ok()?;
                (holdable && age < AUDIT_GRACE).then(|| clock + (AUDIT_GRACE - age))
            })
            .collect();
        // Only the markers of the jobs settled now are read.
        let settled_now: Vec<&Alert> = records
            .iter()
            .zip(&held_until)
            .filter(|(_, until)| until.is_none())
            .map(|(r, _)| &r.alert)
            .collect();
        let marked = match consumer.audited(&settled_now).await {
            Ok(marked) => marked,
            Err(err) => {
                tracing::debug!(error = %err, "audit markers not read; writing every audit record");
                vec![false; settled_now.len()]
            }
        };
        let mut marked = marked.into_iter();
        let unmarked: Vec<bool> = held_until
            .iter()
            .map(|until| until.is_none() && !marked.next().unwrap_or(false))
            .collect();
        let audits = self.store.record_audits(records, &unmarked).await?;
        let verdicts = jobs.into_iter().zip(audits).map(|(j, a)| j.or(a)).collect();
        Ok((verdicts, held_until))
    }

    /// Settles the held jobs once the first one's grace is over, with those whose grace
    /// is nearly over (all of them with `all`, at shutdown): writes the audit records
    /// pyron-api has still not marked, then acknowledges them.
    /// `Err` when a store is unreachable: they stay held, and pending in the stream.
    pub async fn settle_held(
        &self,
        consumer: &Consumer,
        retries: &mut Retries,
        all: bool,
    ) -> Result<(), SettleError> {
        let now = Instant::now();
        if !all && retries.next_held_due().is_none_or(|due| due > now) {
            return Ok(());
        }
        // Those due soon go with it: a few large writes rather than many small ones.
        let soon = now + AUDIT_GRACE / 2;
        let due: Vec<String> = retries
            .held
            .iter()
            .filter(|(_, held)| all || held.due <= soon)
            .map(|(entry, _)| entry.clone())
            .collect();
        let (records, rest): (Vec<Record>, Vec<(Delivery, Instant)>) = due
            .iter()
            .filter_map(|entry| retries.held.remove(entry))
            .map(|held| (held.record, (held.delivery, held.due)))
            .unzip();
        let written = async {
            let alerts: Vec<&Alert> = records.iter().map(|r| &r.alert).collect();
            let marked = consumer.audited(&alerts).await?;
            let unmarked: Vec<bool> = marked.iter().map(|m| !m).collect();
            let verdicts = self.store.record_audits(&records, &unmarked).await?;
            tracing::debug!(
                held = records.len(),
                written_here = unmarked.iter().filter(|u| **u).count(),
                "held jobs settled; the audit records pyron-api had not marked written here"
            );
            Ok(verdicts)
        };
        let verdicts = match written.await {
            Ok(verdicts) => verdicts,
            Err(err) => {
                for (record, (delivery, due)) in records.into_iter().zip(rest) {
                    retries.hold(delivery, record, due);
                }
                return Err(err);
            }
        };
        let mut done: Vec<&str> = Vec::with_capacity(records.len());
        let mut settled: Vec<&Alert> = Vec::with_capacity(records.len());
        for ((record, (delivery, _)), refused) in records.iter().zip(&rest).zip(&verdicts) {
            match refused {
                // Its audit record refused: the job is tried again, as any refused write.
                Some(error) => {
                    self.failed(consumer, delivery, &record.alert, error, retries)
                        .await?;
                }
                None => {
                    done.push(&delivery.entry);
                    settled.push(&record.alert);
                }
            }
        }
        consumer.ack(&done, &settled).await?;
        Ok(())
    }

    /// A job whose write MongoDB refused: schedule its next attempt, or dead-letter it
    /// after the last (then true).
    async fn failed(
        &self,
        consumer: &Consumer,
        delivery: &Delivery,
        alert: &Alert,
        error: &str,
        retries: &mut Retries,
    ) -> Result<bool, SettleError> {
        self.totals.failed_attempts.fetch_add(1, Ordering::Relaxed);
        let attempts = retries.attempts.entry(delivery.entry.clone()).or_insert(0);
        *attempts += 1;
        let attempts = *attempts;
        let last = attempts >= self.max_attempts;
        let delay = (!last).then(|| self.retry_delay(attempts));
        let failure = Failure {
            id: alert.id,
            received_at: alert.received_at,
            entry: &delivery.entry,
            worker: consumer.name(),
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
                    (delivery.with_alert(alert), Instant::now() + delay),
                );
                Ok(false)
            }
            None => {
                let reason = format!("gave up after {attempts} attempts: {error}");
                tracing::error!(event_id = %alert.id, status = "dead", attempts, error, "alert not recorded after the last attempt; moved to dead letters");
                consumer
                    .dead_letter(&delivery.with_alert(alert), &reason, attempts)
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
        consumer: &Consumer,
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
                source: alert.source.clone(),
                result,
                received_at: alert.received_at,
                processed_at,
                entry: delivery.entry.clone(),
                worker: consumer.name().to_owned(),
            }),
            arrival: Arrival::Queued {
                entry: Some(delivery.entry.clone()),
            },
            alert,
        }
    }
}
