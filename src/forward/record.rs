//! The recorder: writes each delivery's attempts and outcome to MongoDB `deliveries`, and
//! only then settles its stream entry (acknowledged, or moved to the dead letters).
//!
//! Writes go in batches, as the lanes finish, so that a busy forwarder makes one
//! round trip for many deliveries; under load the batch gathers for `WINDOW` first.
//! Outcomes are written with the journaled write concern (they end the entry); a failed
//! attempt's `retrying` record is written without it (the entry is still pending, and the
//! next write supersedes it). While MongoDB is down the batch is kept and retried, and
//! the entries stay pending in Redis.

use std::time::Duration;

use bson::{Document, RawDocumentBuf, doc};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::{
    Job,
    outbox::{Entry, Outbox},
};
use crate::{
    backoff::Backoff,
    store::{Store, StoreError},
};

/// How a delivery ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// `at`: when the answer came, milliseconds since the epoch.
    Delivered {
        attempts: u32,
        code: u16,
        took: Duration,
        at: i64,
    },
    Expired {
        attempts: u32,
        code: Option<u16>,
        error: String,
    },
    Dead {
        attempts: u32,
        code: Option<u16>,
        error: String,
    },
    /// The entry held no readable job: dead-lettered, with no record (no id to key it).
    Unreadable { reason: String },
}

impl Outcome {
    fn status(&self) -> &'static str {
        match self {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Expired { .. } => "expired",
            Outcome::Dead { .. } | Outcome::Unreadable { .. } => "dead",
        }
    }
}

/// A failed attempt, with the next one planned.
#[derive(Debug, Clone)]
pub struct Update {
    pub job: Job,
    pub attempts: u32,
    pub code: Option<u16>,
    pub error: String,
    pub next_attempt_at: i64,
}

enum Message {
    Finished(
        Entry,
        Outcome,
        OwnedSemaphorePermit,
        chrono::DateTime<chrono::Utc>,
    ),
    /// Read again after a restart, and already recorded as delivered: acknowledge only.
    Recorded(Entry, OwnedSemaphorePermit),
    Retrying(Update, chrono::DateTime<chrono::Utc>),
    Breaker(String, &'static str, Option<String>),
}

/// The lanes' handle on the recorder.
pub struct Recorder {
    tx: mpsc::UnboundedSender<Message>,
}

/// Most outcomes written in one command.
const BATCH: usize = 500;
/// Under load (the last batch held more than one message), how long outcomes gather
/// before they are written: MongoDB then takes a few large inserts rather than many
/// small ones, and Redis a few settling pipelines. The deliveries themselves are not
/// held: only their records and acknowledgements wait.
const WINDOW: Duration = Duration::from_millis(20);

impl Recorder {
    pub fn spawn(outbox: Outbox, store: Store, in_hand: InHand) -> Recorder {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, outbox, store, in_hand));
        Recorder { tx }
    }

    pub fn finish(&self, entry: Entry, outcome: Outcome, permit: OwnedSemaphorePermit) {
        let _ = self.tx.send(Message::Finished(
            entry,
            outcome,
            permit,
            chrono::Utc::now(),
        ));
    }

    pub fn settle_recorded(&self, entry: Entry, permit: OwnedSemaphorePermit) {
        let _ = self.tx.send(Message::Recorded(entry, permit));
    }

    pub fn update(&self, update: Update) {
        let _ = self.tx.send(Message::Retrying(update, chrono::Utc::now()));
    }

    pub fn breaker(&self, destination: &str, state: &'static str, error: Option<String>) {
        let _ = self
            .tx
            .send(Message::Breaker(destination.to_owned(), state, error));
    }
}

/// The stream entries a forwarder holds.
pub type InHand = std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>;

async fn run(
    mut rx: mpsc::UnboundedReceiver<Message>,
    outbox: Outbox,
    store: Store,
    in_hand: InHand,
) {
    let mut buffer = Vec::with_capacity(BATCH);
    let latency_fields: Vec<String> = crate::stats::LAG_BUCKETS
        .iter()
        .map(|bound| format!("~latency:le_{bound}"))
        .collect();
    let mut loaded = false;
    while rx.recv_many(&mut buffer, BATCH).await > 0 {
        if loaded {
            let until = tokio::time::Instant::now() + WINDOW;
            crate::batch::gather(&mut rx, &mut buffer, BATCH, until).await;
        }
        loaded = buffer.len() > 1;
        let mut finished = Vec::new();
        let mut progress = Vec::new();
        let mut breakers = Vec::new();
        for message in buffer.drain(..) {
            match message {
                Message::Finished(entry, outcome, permit, at) => {
                    finished.push((entry, Some((outcome, at)), permit))
                }
                Message::Recorded(entry, permit) => finished.push((entry, None, permit)),
                Message::Retrying(update, at) => progress.push(retry_statement(&update, at)),
                Message::Breaker(destination, state, error) => {
                    breakers.push((destination, state, error))
                }
            }
        }
        if !breakers.is_empty() {
            let mut conn = outbox.connection();
            let mut pipe = redis::pipe();
            for (destination, state, error) in &breakers {
                let value = serde_json::json!({
                    "state": state,
                    "since": chrono::Utc::now().timestamp_millis(),
                    "error": error,
                });
                pipe.hset(crate::stats::BREAKERS, destination, value.to_string())
                    .ignore();
            }
            if let Err(err) = pipe.query_async::<()>(&mut conn).await {
                tracing::debug!(error = %err, "breaker state not published");
            }
        }
        if !progress.is_empty()
            && let Err(err) = store.record_deliveries(progress, false).await
        {
            tracing::debug!(error = %err, "retrying deliveries not recorded");
        }
        if finished.is_empty() {
            continue;
        }
        // Outcomes are the promise: written, then settled, however long MongoDB and
        // Redis take to come back.
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let outcomes: Vec<(&Job, &Outcome, chrono::DateTime<chrono::Utc>)> = finished
            .iter()
            .filter_map(|(entry, outcome, _)| match (&entry.job, outcome) {
                (Ok(job), Some((outcome, at)))
                    if !matches!(outcome, Outcome::Unreadable { .. }) =>
                {
                    Some((job, outcome, *at))
                }
                _ => None,
            })
            .collect();
        let records: Vec<RawDocumentBuf> = outcomes
            .iter()
            .map(|(job, outcome, at)| outcome_record(job, outcome, *at))
            .collect();
        while let Err(err) = write_outcomes(&store, &outcomes, &records).await {
            tracing::warn!(error = %err, "delivery outcomes not recorded; retrying");
            tokio::time::sleep(backoff.next_wait()).await;
        }
        let finished: Vec<_> = finished
            .into_iter()
            .map(|(entry, outcome, permit)| (entry, outcome.map(|(outcome, _)| outcome), permit))
            .collect();
        let delivered: Vec<&str> = finished
            .iter()
            .filter(|(_, o, _)| matches!(o, None | Some(Outcome::Delivered { .. })))
            .map(|(e, _, _)| e.entry.as_str())
            .collect();
        let dead: Vec<(&Entry, &str, &str, u32)> = finished
            .iter()
            .filter_map(|(entry, outcome, _)| match outcome {
                Some(Outcome::Expired {
                    attempts, error, ..
                }) => Some((entry, "expired", error.as_str(), *attempts)),
                Some(Outcome::Dead {
                    attempts, error, ..
                }) => Some((entry, "dead", error.as_str(), *attempts)),
                Some(Outcome::Unreadable { reason }) => Some((entry, "dead", reason.as_str(), 0)),
                _ => None,
            })
            .collect();
        let mut counts: std::collections::BTreeMap<String, i64> = Default::default();
        let mut latency = crate::stats::LagCounts::default();
        for (entry, outcome, _) in &finished {
            if let (Ok(job), Some(outcome)) = (&entry.job, outcome) {
                *counts
                    .entry(format!("{}:{}", job.destination, outcome.status()))
                    .or_default() += 1;
                let attempts = match outcome {
                    Outcome::Delivered { attempts, .. }
                    | Outcome::Expired { attempts, .. }
                    | Outcome::Dead { attempts, .. } => *attempts,
                    Outcome::Unreadable { .. } => 0,
                };
                *counts
                    .entry(format!("{}:attempts", job.destination))
                    .or_default() += i64::from(attempts);
                if let Outcome::Delivered { at, .. } = outcome {
                    latency.add(at - job.received_at);
                }
            }
        }
        if latency.count > 0 {
            counts.insert("~latency:count".to_owned(), latency.count);
            counts.insert("~latency:sum_ms".to_owned(), latency.sum_ms);
            for (field, n) in latency_fields.iter().zip(latency.at_or_below) {
                if n > 0 {
                    counts.insert(field.clone(), n);
                }
            }
        }
        let counts: Vec<(String, i64)> = counts.into_iter().collect();
        while let Err(err) = outbox.settle(&delivered, &dead, &counts).await {
            tracing::warn!(error = %err, "deliveries recorded but not settled in Redis; retrying");
            tokio::time::sleep(backoff.next_wait()).await;
        }
        let mut held = in_hand.lock().expect("in-hand lock");
        for (entry, outcome, _permit) in &finished {
            held.remove(&entry.entry);
            log(entry, outcome.as_ref());
        }
    }
}

fn log(entry: &Entry, outcome: Option<&Outcome>) {
    let Ok(job) = &entry.job else {
        return;
    };
    match outcome {
        Some(Outcome::Delivered {
            attempts,
            code,
            took,
            at,
        }) => {
            tracing::debug!(target: crate::telemetry::ALERTS, delivery = %job.id, destination = %job.destination, status = "delivered", attempts, code, took_ms = took.as_millis() as u64, lag_ms = at - job.received_at, "delivered");
        }
        Some(Outcome::Expired {
            attempts, error, ..
        }) => {
            tracing::warn!(delivery = %job.id, destination = %job.destination, status = "expired", attempts, error, "delivery expired: not sent late");
        }
        Some(Outcome::Dead {
            attempts, error, ..
        }) => {
            tracing::error!(delivery = %job.id, destination = %job.destination, status = "dead", attempts, error, "delivery dead");
        }
        _ => {}
    }
}

/// Writes a batch's outcomes: `records[i]` is `outcomes[i]` as a new record; those that
/// have a record already are updated instead.
async fn write_outcomes(
    store: &Store,
    outcomes: &[(&Job, &Outcome, chrono::DateTime<chrono::Utc>)],
    records: &[RawDocumentBuf],
) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let existing = store.insert_outcomes(records).await?;
    if existing.is_empty() {
        return Ok(());
    }
    let updates = existing
        .into_iter()
        .map(|i| {
            let (job, outcome, at) = outcomes[i];
            outcome_update(job, outcome, at)
        })
        .collect();
    store.record_deliveries(updates, true).await
}

/// The fields every record of the delivery holds from the start.
fn fixed(job: &Job) -> RawDocumentBuf {
    let mut fields = RawDocumentBuf::new();
    fields.append_ref("event", job.event.as_str());
    fields.append_ref("route", job.route.as_str());
    fields.append_ref("destination", job.destination.as_str());
    fields.append_ref("source", job.source.as_str());
    fields.append_ref("received_at", bson::DateTime::from_millis(job.received_at));
    if let Some(ticker) = &job.ticker {
        fields.append_ref("ticker", ticker.as_str());
    }
    if let Some(deadline) = job.deadline {
        fields.append_ref("deadline", bson::DateTime::from_millis(deadline));
    }
    fields
}

fn document(raw: &RawDocumentBuf) -> Document {
    raw.to_document().expect("a document built here reads back")
}

/// What an outcome sets on the delivery's record, and what it removes of a retry's.
fn outcome_fields(
    job: &Job,
    outcome: &Outcome,
    at: chrono::DateTime<chrono::Utc>,
) -> (RawDocumentBuf, Document) {
    let at = bson::DateTime::from_chrono(at);
    let mut set = RawDocumentBuf::new();
    set.append_ref("status", outcome.status());
    set.append_ref("finished_at", at);
    let mut unset = doc! { "next_attempt_at": "" };
    let attempts = match outcome {
        Outcome::Delivered {
            attempts,
            code,
            took,
            at: answered,
        } => {
            set.append_ref("last_code", i32::from(*code));
            set.append_ref("send_ms", took.as_millis() as i64);
            set.append_ref("latency_ms", answered - job.received_at);
            unset.insert("last_error", "");
            *attempts
        }
        Outcome::Expired {
            attempts,
            code,
            error,
        }
        | Outcome::Dead {
            attempts,
            code,
            error,
        } => {
            set.append_ref("last_error", error.as_str());
            if let Some(code) = code {
                set.append_ref("last_code", i32::from(*code));
            }
            *attempts
        }
        Outcome::Unreadable { .. } => 0,
    };
    set.append_ref("attempts", i64::from(attempts));
    if attempts > 0 {
        set.append_ref("last_attempt_at", at);
    }
    if let Some(replay) = job.replay {
        set.append_ref("replay", replay.as_str());
    }
    (set, unset)
}

/// An outcome as a new record.
fn outcome_record(
    job: &Job,
    outcome: &Outcome,
    at: chrono::DateTime<chrono::Utc>,
) -> RawDocumentBuf {
    let mut record = fixed(job);
    record.append_ref("_id", job.id.as_str());
    let (set, _) = outcome_fields(job, outcome, at);
    for element in set.iter() {
        let (key, value) = element.expect("a document built here reads back");
        record.append_ref(key, value);
    }
    record
}

/// An outcome as the update of the record a retry or an earlier outcome left.
fn outcome_update(job: &Job, outcome: &Outcome, at: chrono::DateTime<chrono::Utc>) -> Document {
    let (set, unset) = outcome_fields(job, outcome, at);
    doc! {
        "q": { "_id": &job.id },
        "u": { "$set": document(&set), "$unset": unset, "$setOnInsert": document(&fixed(job)) },
        "upsert": true,
    }
}

fn retry_statement(update: &Update, at: chrono::DateTime<chrono::Utc>) -> Document {
    let mut set = doc! {
        "status": "retrying",
        "attempts": i64::from(update.attempts),
        "last_error": &update.error,
        "last_attempt_at": bson::DateTime::from_chrono(at),
        "next_attempt_at": bson::DateTime::from_millis(update.next_attempt_at),
    };
    if let Some(code) = update.code {
        set.insert("last_code", i32::from(code));
    }
    doc! {
        "q": { "_id": &update.job.id },
        "u": { "$set": set, "$setOnInsert": document(&fixed(&update.job)) },
        "upsert": true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            id: "0193a8d2-7c1e-7000-8000-000000000001:btc:sink".into(),
            event: "0193a8d2-7c1e-7000-8000-000000000001".into(),
            route: "btc".into(),
            destination: "sink".into(),
            source: "tradingview".into(),
            ticker: Some("BTCUSDT".into()),
            received_at: 1_764_400_000_000,
            deadline: Some(1_764_400_060_000),
            signal: serde_json::json!({"ticker": "BTCUSDT"}).into(),
            alert: serde_json::json!({"ticker": "BTCUSDT"}).into(),
            replay: None,
        }
    }

    /// The record an insert writes is the record the upsert would write on an empty
    /// collection: the two ways an outcome is recorded say the same.
    #[test]
    fn a_new_record_holds_what_the_upsert_would_write() {
        let at = chrono::DateTime::from_timestamp_millis(1_764_400_000_250).unwrap();
        let mut replayed = job();
        replayed.replay = Some(super::super::Replay::Now);
        let outcomes = [
            (
                job(),
                Outcome::Delivered {
                    attempts: 2,
                    code: 202,
                    took: Duration::from_millis(12),
                    at: 1_764_400_000_240,
                },
            ),
            (
                replayed,
                Outcome::Expired {
                    attempts: 0,
                    code: None,
                    error: "not sent within its maximum age".into(),
                },
            ),
            (
                job(),
                Outcome::Dead {
                    attempts: 5,
                    code: Some(500),
                    error: "answered 500".into(),
                },
            ),
        ];
        for (job, outcome) in &outcomes {
            let record = outcome_record(job, outcome, at).to_document().unwrap();
            let update = outcome_update(job, outcome, at);
            let u = update.get_document("u").unwrap();
            let mut upserted = Document::new();
            upserted.insert(
                "_id",
                update.get_document("q").unwrap().get_str("_id").unwrap(),
            );
            upserted.extend(u.get_document("$setOnInsert").unwrap().clone());
            upserted.extend(u.get_document("$set").unwrap().clone());
            let sorted = |d: &Document| {
                let mut pairs: Vec<(String, bson::Bson)> = d.clone().into_iter().collect();
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
                pairs
            };
            assert_eq!(sorted(&record), sorted(&upserted), "{outcome:?}");
            assert_eq!(record.get_str("status").unwrap(), outcome.status());
            for unset in u.get_document("$unset").unwrap().keys() {
                assert!(!record.contains_key(unset), "{unset} in {record}");
            }
        }
    }
}
